//! A real webhook receiver: a loopback HTTP server that records every request and answers from a script.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use tokio::sync::Notify;

/// One request the [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// When it was answered (after any [`Reply::Delay`]).
    pub at: Instant,
    /// When it arrived, before any delay: when the sender had sent it.
    pub started: Instant,
    /// The path it was sent to.
    pub path: String,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the receiver got JSON")
    }
}

/// How the [`Receiver`] answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status, empty body.
    Status(u16),
    /// This status with a `Retry-After` header in seconds.
    RetryAfter(u16, u64),
    /// A redirect to this location.
    Redirect(String),
    /// Wait, then 200.
    Delay(Duration),
    /// This status and body.
    Body(u16, String),
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Option<Reply>>,
    poison: Mutex<Option<(String, u16)>>,
    notify: Notify,
    /// Requests being answered now, and the most there were at once.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one request as in flight until dropped (also when the client gives up on it).
struct Counted<'a>(&'a ReceiverState);

impl<'a> Counted<'a> {
    fn new(state: &'a ReceiverState) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A real HTTP server on a loopback port that records every request and
/// answers from a script (then with the fallback, 204 by default).
#[derive(Clone)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0`.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts a receiver on a given address (to come back on the same port after a stop).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(ReceiverState::default());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answers the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().expect("script").extend(replies);
    }

    /// Answers every request not covered by the script with `reply`.
    pub fn always(&self, reply: Reply) {
        *self.state.fallback.lock().expect("fallback") = Some(reply);
    }

    /// Answers `status` to every request whose body contains `pattern` (a poison event).
    pub fn poison(&self, pattern: &str, status: u16) {
        *self.state.poison.lock().expect("poison") = Some((pattern.to_owned(), status));
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at once (since the start or [`Receiver::reset_peak`]).
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    /// Starts counting the peak afresh from the requests in flight now.
    pub fn reset_peak(&self) {
        self.state.peak.store(
            self.state.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("received").clone()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(timeout, |received| received.len() >= n)
            .await
    }

    /// Waits until a request with `webhook-id: id` arrived; false if none did within `timeout`.
    pub async fn wait_for_webhook(&self, id: &str, timeout: Duration) -> bool {
        let has =
            |received: &[Received]| received.iter().any(|r| r.header("webhook-id") == Some(id));
        has(&self.wait_until(timeout, has).await)
    }

    /// Waits until what arrived satisfies `done` or `timeout` passed; returns what arrived.
    async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a request arriving in between still wakes us.
            notified.as_mut().enable();
            let received = self.received();
            if done(&received) {
                return received;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.received();
            }
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let _counted = Counted::new(&state);
    let poisoned = state
        .poison
        .lock()
        .expect("poison")
        .as_ref()
        .filter(|(pattern, _)| String::from_utf8_lossy(&body).contains(pattern.as_str()))
        .map(|(_, status)| Reply::Status(*status));
    let reply = if let Some(poisoned) = poisoned {
        poisoned
    } else {
        let next = state.script.lock().expect("script").pop_front();
        next.or_else(|| state.fallback.lock().expect("fallback").clone())
            .unwrap_or(Reply::Status(204))
    };
    if let Reply::Delay(delay) = &reply {
        tokio::time::sleep(*delay).await;
    }
    state.received.lock().expect("received").push(Received {
        headers,
        body,
        at: Instant::now(),
        started,
        path: uri.path().to_owned(),
    });
    state.notify.notify_waiters();
    match reply {
        Reply::Status(code) => status(code).into_response(),
        Reply::RetryAfter(code, seconds) => {
            (status(code), [("retry-after", seconds.to_string())]).into_response()
        }
        Reply::Redirect(location) => (StatusCode::FOUND, [("location", location)]).into_response(),
        Reply::Delay(_) => StatusCode::OK.into_response(),
        Reply::Body(code, body) => (status(code), body).into_response(),
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("valid status")
}
