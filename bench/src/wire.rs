//! A lean HTTP/1.1 client for the overload scenario: one task per connection, each request
//! written from a reused buffer and each answer read with `httparse`.
//!
//! Why: the bench shares the machine's two cores with the server. At twice the capacity a
//! general client (a pool checkout, a header map and a spawned task per request) spent about
//! half a core, much of it on the refused half of the requests, and that core was taken from
//! the server it measures. The overload scenario measures both its phases (the capacity and
//! the overload) with this client, so the ratio between them compares like with like.
//!
//! What it speaks: a request with `Content-Length`, an answer with `Content-Length` (axum's
//! and the edge's answers all have one), keep-alive unless the answer says `Connection:
//! close`. No pipelining: a connection carries one request at a time.

use std::{
    collections::BTreeMap,
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinSet,
};

use super::load::{Load, Poster, Schedule, Sent, refusal_reason, retry_after_seconds};

/// How long one request may take before it counts as a timeout (as the pooled client's).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers an answer may carry at most (ours carry about ten).
const MAX_HEADERS: usize = 32;

/// One ingest process's single-event endpoint, split for writing requests.
#[derive(Debug)]
struct Target {
    /// `host:port` to connect to.
    addr: String,
    /// The request line and the headers every request shares, ending in `\r\n`.
    head: String,
}

impl Target {
    /// The targets of `poster`'s single-event URLs (`http://` only: the bench's server is local).
    fn all(poster: &Poster) -> Result<Vec<Arc<Self>>, String> {
        if poster.single_urls().is_empty() {
            return Err("no ingest process to post to".to_owned());
        }
        poster
            .single_urls()
            .iter()
            .map(|raw| {
                let url = url::Url::parse(raw).map_err(|e| format!("{raw}: {e}"))?;
                if url.scheme() != "http" {
                    return Err(format!("{raw}: the lean client speaks plain http only"));
                }
                let host = url.host_str().ok_or_else(|| format!("{raw}: no host"))?;
                let port = url.port_or_known_default().unwrap_or(80);
                Ok(Arc::new(Self {
                    addr: format!("{host}:{port}"),
                    head: format!(
                        "POST {} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n",
                        url.path()
                    ),
                }))
            })
            .collect()
    }
}

/// What one request got.
enum Answer {
    /// 202, with the event's id.
    Accepted(u128),
    /// Any other status, and when it said to retry (whole seconds, at least 1).
    Refused {
        status: u16,
        retry_after: Option<u64>,
    },
}

/// One keep-alive connection and its buffers.
struct Conn {
    target: Arc<Target>,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    body: Vec<u8>,
    answer: Vec<u8>,
}

impl Conn {
    fn new(target: Arc<Target>) -> Self {
        Self {
            target,
            stream: None,
            request: Vec::with_capacity(1024),
            body: Vec::with_capacity(512),
            answer: Vec::with_capacity(1024),
        }
    }

    /// Opens the connection if it is not open.
    async fn connect(&mut self) -> Result<(), &'static str> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.target.addr)
                .await
                .map_err(|_| "connection failed")?;
            // Requests are small and each waits for its answer: Nagle would only delay them.
            stream.set_nodelay(true).map_err(|_| "connection failed")?;
            self.stream = Some(stream);
        }
        Ok(())
    }

    /// Posts event `seq`; on any failure the connection is dropped (the next request opens one).
    async fn post(&mut self, token: &str, seq: u64, pad: &str) -> Result<Answer, &'static str> {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(token, seq, pad))
            .await
            .unwrap_or(Err("timeout"));
        if outcome.is_err() {
            self.stream = None;
        }
        outcome
    }

    async fn exchange(&mut self, token: &str, seq: u64, pad: &str) -> Result<Answer, &'static str> {
        self.body.clear();
        write!(self.body, r#"{{"data":{{"seq":{seq},"pad":"{pad}"}}}}"#)
            .map_err(|_| "request failed")?;
        self.request.clear();
        write!(
            self.request,
            "{}Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            self.target.head,
            self.body.len()
        )
        .map_err(|_| "request failed")?;
        self.request.extend_from_slice(&self.body);

        // A kept-alive connection the server has since closed fails on first use, before any
        // answer: open a fresh one and send once more (as a pooled client does).
        let reused = self.stream.is_some();
        self.connect().await?;
        match self.send_and_read().await {
            Err(Failure::ClosedBeforeAnswer) if reused => {
                self.stream = None;
                self.connect().await?;
                self.send_and_read().await.map_err(Failure::reason)
            }
            other => other.map_err(Failure::reason),
        }
    }

    async fn send_and_read(&mut self) -> Result<Answer, Failure> {
        let stream = self.stream.as_mut().ok_or(Failure::ClosedBeforeAnswer)?;
        stream
            .write_all(&self.request)
            .await
            .map_err(|_| Failure::ClosedBeforeAnswer)?;
        self.answer.clear();
        let (head_len, framing) = loop {
            if self.answer.capacity() - self.answer.len() < 512 {
                self.answer.reserve(1024);
            }
            let read = stream
                .read_buf(&mut self.answer)
                .await
                .map_err(|_| Failure::Broken)?;
            if read == 0 {
                return Err(if self.answer.is_empty() {
                    Failure::ClosedBeforeAnswer
                } else {
                    Failure::Broken
                });
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut head = httparse::Response::new(&mut headers);
            match head.parse(&self.answer) {
                Ok(httparse::Status::Complete(len)) => break (len, Framing::of(&head)?),
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(Failure::Malformed),
            }
        };
        let end = head_len + framing.length;
        while self.answer.len() < end {
            self.answer.reserve(end - self.answer.len());
            if stream
                .read_buf(&mut self.answer)
                .await
                .map_err(|_| Failure::Broken)?
                == 0
            {
                return Err(Failure::Broken);
            }
        }
        if self.answer.len() > end {
            // Bytes after the answer: the server sent something nobody asked for.
            return Err(Failure::Malformed);
        }
        if framing.close {
            self.stream = None;
        }
        if framing.status != 202 {
            return Ok(Answer::Refused {
                status: framing.status,
                retry_after: framing.retry_after,
            });
        }
        let accepted: super::load::AcceptedOne =
            serde_json::from_slice(&self.answer[head_len..end]).map_err(|_| Failure::BadBody)?;
        Ok(Answer::Accepted(accepted.id.as_u128()))
    }
}

/// Why an exchange failed, as far as the retry and the failure reason care.
#[derive(Debug)]
enum Failure {
    /// The connection was closed before any byte of an answer: safe to send once more.
    ClosedBeforeAnswer,
    /// Closed or broken in the middle of an answer.
    Broken,
    /// Not an HTTP/1.1 answer this client can frame.
    Malformed,
    /// A 202 whose body is not the accepted event.
    BadBody,
}

impl Failure {
    /// The failure reason, in the words of the pooled client's reasons.
    fn reason(self) -> &'static str {
        match self {
            Self::ClosedBeforeAnswer | Self::Broken => "request failed",
            Self::Malformed => "malformed answer",
            Self::BadBody => "bad 202 body",
        }
    }
}

/// The parts of an answer's head this client acts on.
struct Framing {
    status: u16,
    length: usize,
    retry_after: Option<u64>,
    close: bool,
}

impl Framing {
    fn of(head: &httparse::Response<'_, '_>) -> Result<Self, Failure> {
        let mut framing = Self {
            status: head.code.ok_or(Failure::Malformed)?,
            length: 0,
            retry_after: None,
            close: false,
        };
        let mut framed = false;
        for header in head.headers.iter() {
            let value = std::str::from_utf8(header.value).map_err(|_| Failure::Malformed)?;
            if header.name.eq_ignore_ascii_case("content-length") {
                framing.length = value.trim().parse().map_err(|_| Failure::Malformed)?;
                framed = true;
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked answers are not ours to expect: say so rather than misread them.
                return Err(Failure::Malformed);
            } else if header.name.eq_ignore_ascii_case("retry-after") {
                framing.retry_after = retry_after_seconds(value);
            } else if header.name.eq_ignore_ascii_case("connection") {
                framing.close = value.trim().eq_ignore_ascii_case("close");
            }
        }
        if !framed {
            return Err(Failure::Malformed);
        }
        Ok(framing)
    }
}

/// What one connection's requests got; merged into a [`Load`] at the end.
#[derive(Default)]
struct Tally {
    accepted: Vec<Sent>,
    refused: BTreeMap<(u16, bool), u64>,
    failed: BTreeMap<&'static str, u64>,
}

impl Tally {
    /// Records one request, sent at `sent`; the `Retry-After` of a refusal that said one.
    fn record(
        &mut self,
        poster: &Poster,
        sent: Instant,
        answer: Result<Answer, &'static str>,
    ) -> Option<u64> {
        match answer {
            Ok(Answer::Accepted(id)) => {
                poster.progress.fetch_add(1, Ordering::Relaxed);
                self.accepted.push(Sent {
                    id,
                    sent,
                    acked: Instant::now(),
                });
                None
            }
            Ok(Answer::Refused {
                status,
                retry_after,
            }) => {
                *self
                    .refused
                    .entry((status, retry_after.is_some()))
                    .or_default() += 1;
                retry_after
            }
            Err(reason) => {
                *self.failed.entry(reason).or_default() += 1;
                None
            }
        }
    }

    /// Adds this tally to `load`, with the failure reasons the pooled client would give.
    fn into_load(self, load: &mut Load) {
        load.accepted.extend(self.accepted);
        for ((status, retry_after), n) in self.refused {
            *load
                .failures
                .entry(refusal_reason(status, retry_after))
                .or_default() += n;
        }
        for (reason, n) in self.failed {
            *load.failures.entry(reason.to_owned()).or_default() += n;
        }
    }
}

/// Posts one event over `conn` and records it; the `Retry-After` of a refusal that said one.
async fn post_one(
    conn: &mut Conn,
    poster: &Poster,
    tally: &mut Tally,
    seq: u64,
    sent: Instant,
) -> Option<u64> {
    let answer = match poster.token().await {
        Ok(token) => conn.post(&token, seq, poster.pad()).await,
        Err(_) => Err("no token"),
    };
    tally.record(poster, sent, answer)
}

/// The longest `Retry-After` a closed-loop client waits.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(5);

/// `clients` connections each post a single event, wait for the answer, and post again
/// (closed loop), for `duration`. A client told to retry later waits as long as it was told
/// (as a client that honours `Retry-After` does): retrying at once would turn a saturated
/// closed loop into a storm of refusals, and measure that storm rather than the capacity.
pub async fn closed_loop(
    poster: &Poster,
    clients: usize,
    duration: Duration,
) -> Result<Load, String> {
    let targets = Target::all(poster)?;
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let mut conn = Conn::new(Arc::clone(&targets[i % targets.len()]));
        let poster = poster.clone();
        let seq = Arc::clone(&seq);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while started.elapsed() < duration {
                let seq = seq.fetch_add(1, Ordering::Relaxed);
                if let Some(seconds) =
                    post_one(&mut conn, &poster, &mut tally, seq, Instant::now()).await
                {
                    let left = duration.saturating_sub(started.elapsed());
                    let told = Duration::from_secs(seconds).min(MAX_RETRY_AFTER_WAIT);
                    tokio::time::sleep(told.min(left)).await;
                }
            }
            tally
        });
    }
    let mut load = Load::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(tally) => tally.into_load(&mut load),
            Err(e) => eprintln!("a closed-loop connection task failed: {e}"),
        }
    }
    load.elapsed = started.elapsed();
    Ok(load)
}

/// Sends single events at `rate` per second for `duration`, whatever the answers do (open
/// loop), over `connections` connections opened before the first event, as a fleet of
/// clients already connected: each event goes to a free connection, or waits for one.
///
/// Without the bound, one client process that sees the server slow down opens a connection
/// for every request it cannot place, thousands within a second; the handshakes then queue
/// in the server's accept queue for seconds, which measures the client's connection storm
/// rather than the server. An event's wait for a free connection is part of its latency,
/// so that the bound hides no queue of the server's making (no coordinated omission).
pub async fn open_loop(
    poster: &Poster,
    rate: u32,
    duration: Duration,
    connections: usize,
) -> Result<Load, String> {
    let targets = Target::all(poster)?;
    let connections = connections.max(1);
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;

    // Each connection task takes one event at a time from its own channel and, once it is
    // answered, says it is free again; the generator hands events only to free connections.
    let (free_tx, mut free_rx) = mpsc::channel::<usize>(connections);
    let mut jobs = Vec::with_capacity(connections);
    let mut tasks = JoinSet::new();
    for i in 0..connections {
        let (job_tx, mut job_rx) = mpsc::channel::<(u64, Instant)>(1);
        jobs.push(job_tx);
        let mut conn = Conn::new(Arc::clone(&targets[i % targets.len()]));
        let poster = poster.clone();
        let free = free_tx.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            if let Err(reason) = conn.connect().await {
                eprintln!("opening connection {i}: {reason}; it opens on first use");
            }
            if free.send(i).await.is_err() {
                return tally;
            }
            while let Some((seq, sent)) = job_rx.recv().await {
                // An open loop offers its rate whatever `Retry-After` says: that is the overload.
                let _ignored = post_one(&mut conn, &poster, &mut tally, seq, sent).await;
                if free.send(i).await.is_err() {
                    break;
                }
            }
            tally
        });
    }
    drop(free_tx);
    // Every connection is open (or failed to open) before the clock starts.
    let mut idle = Vec::with_capacity(connections);
    while idle.len() < connections {
        match free_rx.recv().await {
            Some(i) => idle.push(i),
            None => break,
        }
    }

    let schedule = Schedule::start(rate);
    for seq in 0..total {
        let asked = schedule.due(seq).await;
        while let Ok(i) = free_rx.try_recv() {
            idle.push(i);
        }
        // The most recently freed connection first, as a pool hands them out.
        let i = match idle.pop() {
            Some(i) => i,
            // Waiting for a free connection is the server's doing: `asked` counts it.
            None => match free_rx.recv().await {
                Some(i) => i,
                None => break,
            },
        };
        if jobs[i].try_send((seq, asked)).is_err() {
            eprintln!("connection {i} was free but took no event; the open loop stops");
            break;
        }
    }
    let elapsed = schedule.elapsed();
    // Closing both channels ends each task once its last answer is in: no event was handed
    // to a connection after it said it was free, so none is left unsent.
    drop(jobs);
    drop(free_rx);
    let mut load = Load {
        elapsed,
        ..Load::default()
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(tally) => tally.into_load(&mut load),
            Err(e) => eprintln!("an open-loop connection task failed: {e}"),
        }
    }
    load.client_lag = schedule.lag().await;
    Ok(load)
}

#[cfg(test)]
mod tests {
    //! The lean client against a real axum server on a real socket.

    use std::{
        collections::BTreeSet,
        net::SocketAddr,
        sync::{Arc, Mutex},
    };

    use axum::{
        Router,
        extract::ConnectInfo,
        http::{HeaderMap, StatusCode, header},
        response::IntoResponse,
        routing::post,
    };

    use super::{Answer, Conn, Target};

    const ID: &str = "0190c3e0-7b4c-7cc2-9a51-6d0bb1a6b8a1";

    /// A server whose answer depends on the event's `seq` (0: 202, 1: 503 with `Retry-After`,
    /// 2: 202 with `Connection: close`); it records every peer it was called from.
    async fn server() -> (Arc<Target>, Arc<Mutex<BTreeSet<SocketAddr>>>) {
        let peers = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = Arc::clone(&peers);
        let app = Router::new().route(
            "/v1/topics/t/events",
            post(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      headers: HeaderMap,
                      body: String| {
                    let seen = Arc::clone(&seen);
                    async move {
                        seen.lock().expect("peers").insert(peer);
                        assert_eq!(headers[header::AUTHORIZATION], "Bearer tok");
                        let accepted = (StatusCode::ACCEPTED, format!(r#"{{"id":"{ID}"}}"#));
                        if body.contains(r#""seq":1,"#) {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                [(header::RETRY_AFTER, "1")],
                                "busy",
                            )
                                .into_response()
                        } else if body.contains(r#""seq":2,"#) {
                            ([(header::CONNECTION, "close")], accepted).into_response()
                        } else {
                            accepted.into_response()
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let target = Target {
            addr: addr.to_string(),
            head: format!(
                "POST /v1/topics/t/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
            ),
        };
        (Arc::new(target), peers)
    }

    fn id(answer: Result<Answer, &'static str>) -> u128 {
        match answer {
            Ok(Answer::Accepted(id)) => id,
            Ok(Answer::Refused { status, .. }) => panic!("refused with {status}"),
            Err(reason) => panic!("failed: {reason}"),
        }
    }

    #[tokio::test]
    async fn accepted_and_refused_answers_are_read_over_one_kept_alive_connection() {
        let (target, peers) = server().await;
        let mut conn = Conn::new(target);

        let first = id(conn.post("tok", 0, "x").await);
        let refused = conn.post("tok", 1, "x").await;
        let again = id(conn.post("tok", 0, "x").await);

        assert_eq!(first, uuid::Uuid::parse_str(ID).expect("uuid").as_u128());
        assert_eq!(again, first);
        assert!(matches!(
            refused,
            Ok(Answer::Refused {
                status: 503,
                retry_after: Some(1)
            })
        ));
        assert_eq!(peers.lock().expect("peers").len(), 1, "one connection");
    }

    #[tokio::test]
    async fn an_answer_that_closes_the_connection_is_read_and_the_next_request_opens_one() {
        let (target, peers) = server().await;
        let mut conn = Conn::new(target);

        id(conn.post("tok", 2, "x").await);
        id(conn.post("tok", 0, "x").await);

        assert_eq!(peers.lock().expect("peers").len(), 2, "two connections");
    }

    #[tokio::test]
    async fn a_server_that_is_gone_is_a_failed_connection_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let mut conn = Conn::new(Arc::new(Target {
            addr: addr.to_string(),
            head: String::new(),
        }));

        assert!(matches!(
            conn.post("tok", 0, "x").await,
            Err("connection failed")
        ));
    }

    #[tokio::test]
    async fn a_closed_loop_client_told_to_retry_after_a_second_waits_before_it_posts_again() {
        let posts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&posts);
        let app = Router::new()
            .route(
                "/v1/auth/token",
                post(|| async { axum::Json(serde_json::json!({"access_token": "tok"})) }),
            )
            .route(
                "/v1/topics/{topic}/events",
                post(move || {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [(header::RETRY_AFTER, "1")],
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let api = crate::api::Api::new(&base, 4).expect("client");
        let publisher = crate::api::Credential::login(&api, "key".to_owned())
            .await
            .expect("token");
        let poster = crate::load::Poster::new(&api, uuid::Uuid::new_v4(), publisher, 64);

        let load = super::closed_loop(&poster, 1, std::time::Duration::from_millis(1500))
            .await
            .expect("closed loop");

        // At once, then after the second it was told to wait; retrying at once would be thousands.
        assert_eq!(posts.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(load.failures["HTTP 503 with Retry-After"], 2);
        assert!(load.accepted.is_empty());
    }
}
