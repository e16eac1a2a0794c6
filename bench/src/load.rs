//! Load through the public API: open loop at a fixed rate, or closed loop with N clients.
//!
//! Every request goes through one pooled `reqwest` client; each in-flight request
//! is a tokio task (the overload scenario uses the leaner client of [`super::wire`]).
//! What a request got is kept per task and merged at the end, so the hot path shares
//! nothing but an atomic progress counter.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::{sync::Semaphore, task::JoinSet};
use uuid::Uuid;

use super::api::{Api, Credential};

/// Requests in flight at most in open loop (a server that stops answering must not get a million tasks).
pub const MAX_OPEN_IN_FLIGHT: usize = 8192;

/// One accepted event: its id, when its POST was sent and when the 202 came back.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// The event id.
    pub id: u128,
    /// Just before the request was handed to the client.
    pub sent: Instant,
    /// When the 202 was read.
    pub acked: Instant,
}

/// What a load phase produced.
#[derive(Debug, Default)]
pub struct Load {
    /// Every accepted event.
    pub accepted: Vec<Sent>,
    /// Requests that were not answered 202, by reason.
    pub failures: BTreeMap<String, u64>,
    /// How long the phase sent requests.
    pub elapsed: Duration,
    /// How late the bench's own runtime woke a probe task every 5 ms during an open-loop
    /// phase: the time the client itself added to each request (it shares the cores).
    pub client_lag: Vec<Duration>,
}

impl Load {
    /// Requests not answered 202.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn merge(&mut self, other: Part) {
        self.accepted.extend(other.accepted);
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
    }
}

#[derive(Default)]
struct Part {
    accepted: Vec<Sent>,
    failures: BTreeMap<String, u64>,
}

impl Part {
    fn record(&mut self, result: Result<Vec<Sent>, String>) {
        match result {
            Ok(sent) => self.accepted.extend(sent),
            Err(reason) => *self.failures.entry(reason).or_default() += 1,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct AcceptedOne {
    pub(crate) id: Uuid,
}

#[derive(Deserialize)]
struct AcceptedBatch {
    items: Vec<AcceptedOne>,
}

/// Posts events of one topic.
#[derive(Clone, Debug)]
pub struct Poster {
    http: reqwest::Client,
    /// The single-event URL of each ingest process; event `seq` goes to `seq % len`.
    singles: Arc<[String]>,
    /// The batch URL of each ingest process.
    batches: Arc<[String]>,
    token: Arc<Credential>,
    pad: Arc<str>,
    /// Counts events accepted, for the progress display.
    pub progress: Arc<AtomicU64>,
}

impl Poster {
    /// A poster into `topic` with `publisher`'s token; `data` carries about `payload_bytes` bytes.
    pub fn new(api: &Api, topic: Uuid, publisher: Arc<Credential>, payload_bytes: usize) -> Self {
        Self {
            http: api.http.clone(),
            singles: api
                .ingest_bases
                .iter()
                .map(|base| format!("{base}/v1/topics/{topic}/events"))
                .collect(),
            batches: api
                .ingest_bases
                .iter()
                .map(|base| format!("{base}/v1/topics/{topic}/events/batch"))
                .collect(),
            token: publisher,
            pad: Arc::from(pad(payload_bytes)),
            progress: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The single-event URL of each ingest process.
    pub fn single_urls(&self) -> &[String] {
        &self.singles
    }

    /// A valid access token of the publisher.
    pub async fn token(&self) -> Result<Arc<str>, crate::CliError> {
        self.token.get().await
    }

    /// The `pad` string of every event's `data`.
    pub fn pad(&self) -> &str {
        &self.pad
    }

    /// Posts one event; its id and timings if it was accepted.
    pub async fn one(&self, seq: u64) -> Result<Vec<Sent>, String> {
        let token = self.token.get().await.map_err(|e| e.to_string())?;
        let body = format!(r#"{{"data":{{"seq":{seq},"pad":"{}"}}}}"#, self.pad);
        let sent = Instant::now();
        let response = self
            .http
            .post(pick(&self.singles, seq))
            .bearer_auth(&token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| reason(&e))?;
        let status = response.status();
        let refusal = refusal(&response);
        let bytes = response.bytes().await.map_err(|e| reason(&e))?;
        let acked = Instant::now();
        if status != reqwest::StatusCode::ACCEPTED {
            return Err(refusal);
        }
        let one: AcceptedOne =
            serde_json::from_slice(&bytes).map_err(|e| format!("bad 202 body: {e}"))?;
        self.progress.fetch_add(1, Ordering::Relaxed);
        Ok(vec![Sent {
            id: one.id.as_u128(),
            sent,
            acked,
        }])
    }

    /// Posts `size` events in one batch request.
    pub async fn batch(&self, seq: u64, size: usize) -> Result<Vec<Sent>, String> {
        let token = self.token.get().await.map_err(|e| e.to_string())?;
        let mut body = String::with_capacity(size * (self.pad.len() + 40) + 16);
        body.push_str(r#"{"events":["#);
        for i in 0..size as u64 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"data":{{"seq":{},"pad":"{}"}}}}"#,
                seq + i,
                self.pad
            ));
        }
        body.push_str("]}");
        let sent = Instant::now();
        let response = self
            .http
            // Batches take `size` sequence numbers each: count batches, not events.
            .post(pick(&self.batches, seq / size.max(1) as u64))
            .bearer_auth(&token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| reason(&e))?;
        let status = response.status();
        let refusal = refusal(&response);
        let bytes = response.bytes().await.map_err(|e| reason(&e))?;
        let acked = Instant::now();
        if status != reqwest::StatusCode::ACCEPTED {
            return Err(refusal);
        }
        let batch: AcceptedBatch =
            serde_json::from_slice(&bytes).map_err(|e| format!("bad 202 body: {e}"))?;
        self.progress
            .fetch_add(batch.items.len() as u64, Ordering::Relaxed);
        Ok(batch
            .items
            .into_iter()
            .map(|a| Sent {
                id: a.id.as_u128(),
                sent,
                acked,
            })
            .collect())
    }
}

/// The URL of the ingest process whose turn event `seq` is.
fn pick(urls: &[String], seq: u64) -> &str {
    &urls[(seq % urls.len() as u64) as usize]
}

/// The `pad` string that makes an event's `data` about `bytes` long.
pub fn pad(bytes: usize) -> String {
    "x".repeat(bytes.saturating_sub(24))
}

/// Suffix of a failure reason whose answer carried a usable `Retry-After` (whole seconds, at least 1).
pub const WITH_RETRY_AFTER: &str = " with Retry-After";

/// The failure reason of an answer other than 202: its status, and whether it said when to retry.
fn refusal(response: &reqwest::Response) -> String {
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after_seconds);
    refusal_reason(response.status().as_u16(), retry_after.is_some())
}

/// A `Retry-After` value the bench counts as usable: whole seconds, at least 1.
pub(crate) fn retry_after_seconds(value: &str) -> Option<u64> {
    value.trim().parse().ok().filter(|&seconds| seconds >= 1)
}

/// The failure reason of a refusal with `status`, which said when to retry or not.
pub(crate) fn refusal_reason(status: u16, retry_after: bool) -> String {
    format!(
        "HTTP {status}{}",
        if retry_after { WITH_RETRY_AFTER } else { "" }
    )
}

fn reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    }
}

/// Sends single events at `rate` per second for `duration`, whatever the answers do (open loop),
/// with at most [`MAX_OPEN_IN_FLIGHT`] requests in flight.
pub async fn open_loop(poster: &Poster, rate: u32, duration: Duration) -> Load {
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let slots = Arc::new(Semaphore::new(MAX_OPEN_IN_FLIGHT));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = tokio::spawn(async move {
        let mut part = Part::default();
        while let Some(result) = rx.recv().await {
            part.record(result);
        }
        part
    });
    let schedule = Schedule::start(rate);
    for seq in 0..total {
        let asked = schedule.due(seq).await;
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        // Waiting for a free slot is the server's doing: it counts.
        let waited = asked.elapsed();
        let poster = poster.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = poster.one(seq).await.map(|mut sent| {
                for s in &mut sent {
                    s.sent = s.sent.checked_sub(waited).unwrap_or(s.sent);
                }
                sent
            });
            drop(permit);
            let _ = tx.send(result);
        });
    }
    let elapsed = schedule.elapsed();
    drop(tx);
    let mut load = Load {
        elapsed,
        ..Load::default()
    };
    if let Ok(part) = collector.await {
        load.merge(part);
    }
    load.client_lag = schedule.lag().await;
    load
}

/// An open loop's clock: event `seq` is due `seq / rate` seconds after the start, and a
/// probe measures meanwhile how late the bench's own runtime wakes a task.
pub(crate) struct Schedule {
    start: tokio::time::Instant,
    interval: Duration,
    probing: Arc<AtomicBool>,
    probe: tokio::task::JoinHandle<Vec<Duration>>,
}

impl Schedule {
    /// Starts the clock of `rate` events per second.
    pub(crate) fn start(rate: u32) -> Self {
        let probing = Arc::new(AtomicBool::new(true));
        Self {
            probe: tokio::spawn(probe_lag(Arc::clone(&probing))),
            probing,
            start: tokio::time::Instant::now(),
            interval: Duration::from_secs_f64(1.0 / f64::from(rate.max(1))),
        }
    }

    /// Waits until event `seq` is due; returns when it was asked for (the moment its
    /// latency counts from: any wait after it, for a slot or a connection, is the server's).
    pub(crate) async fn due(&self, seq: u64) -> Instant {
        let at = self.start + self.interval.mul_f64(seq as f64);
        if at > tokio::time::Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        Instant::now()
    }

    /// How long the loop has run.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the probe; its lateness samples.
    pub(crate) async fn lag(self) -> Vec<Duration> {
        self.probing.store(false, Ordering::Relaxed);
        self.probe.await.unwrap_or_else(|e| {
            eprintln!("the client's lag probe failed: {e}");
            Vec::new()
        })
    }
}

/// Every 5 ms, how late the runtime woke this task, while `on`.
async fn probe_lag(on: Arc<AtomicBool>) -> Vec<Duration> {
    const EVERY: Duration = Duration::from_millis(5);
    let mut lateness = Vec::new();
    while on.load(Ordering::Relaxed) {
        let asleep = tokio::time::Instant::now();
        tokio::time::sleep(EVERY).await;
        lateness.push(asleep.elapsed().saturating_sub(EVERY));
    }
    lateness
}

/// How long a closed loop runs.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// For this long.
    Elapsed(Duration),
    /// Until this many events were accepted.
    Accepted(u64),
}

/// `clients` tasks each post, wait for the answer, and post again (closed loop);
/// `batch` events per request (1 = the single-event endpoint).
pub async fn closed_loop(poster: &Poster, clients: usize, batch: usize, until: Until) -> Load {
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let poster = poster.clone();
        let seq = Arc::clone(&seq);
        tasks.spawn(async move {
            let mut part = Part::default();
            loop {
                let done = match until {
                    Until::Elapsed(d) => started.elapsed() >= d,
                    Until::Accepted(n) => poster.progress.load(Ordering::Relaxed) >= n,
                };
                if done {
                    break;
                }
                let first = seq.fetch_add(batch as u64, Ordering::Relaxed);
                let result = if batch <= 1 {
                    poster.one(first).await
                } else {
                    poster.batch(first, batch).await
                };
                part.record(result);
            }
            (part, started.elapsed())
        });
    }
    let mut load = Load::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((part, elapsed)) = joined {
            load.merge(part);
            load.elapsed = load.elapsed.max(elapsed);
        }
    }
    load
}
