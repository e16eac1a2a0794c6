//! Resource bounds at the HTTP edge: how long a body may take, and how much the process holds at once.
//!
//! Without them a client decides how much of the server it occupies: a body
//! sent a byte at a time keeps a request (and its memory) alive for ever, and
//! a flood of requests or large bodies grows memory until the process dies.
//! With them, past a bound the server answers at once — 408 for a body that
//! did not arrive in time, 503 with `Retry-After` past the in-flight caps — and
//! keeps serving everyone else.
//!
//! A cap on requests in flight bounds memory, not latency: with thousands of
//! requests sharing the cores, each waits for all the others. So the edge also
//! sheds load the way CoDel drops packets: when even the fastest request of
//! the last [`SHED_INTERVAL`] took longer than [`SHED_TARGET`], a queue has
//! formed that does not drain by itself, and new requests beyond
//! [`SHED_FLOOR`] in flight get a 503 with `Retry-After` at once, until the
//! fastest are fast again. Below the floor nothing is ever shed, so a few slow
//! requests (a subscription's RabbitMQ round trips) never trigger it.
//!
//! The caps apply to `/v1` routes only: `/healthz`, `/readyz` and `/metrics`
//! must still answer when the API is saturated, or an orchestrator would kill
//! a process that is merely busy.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::Semaphore;

use crate::{config::Config, problem::Problem};

/// Why a request body stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// It did not arrive whole within `ANIKA_REQUEST_READ_TIMEOUT`.
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The process holds `ANIKA_MAX_BODY_BYTES_IN_FLIGHT` body bytes already.
    #[error("the server holds as many request bodies as it may")]
    Overloaded,
    /// The connection failed while the body was being read.
    #[error("the request body could not be read (the connection failed)")]
    Broken,
}

impl BodyError {
    /// The problem a handler answers when reading the body failed this way.
    pub fn problem(self) -> Problem {
        match self {
            Self::TimedOut(limit) => Problem::request_timeout(format!(
                "the request body did not arrive within {} s (ANIKA_REQUEST_READ_TIMEOUT); send it at once",
                limit.as_secs_f64()
            )),
            Self::Broken => Problem::bad_request("the request body could not be read"),
            Self::Overloaded => Problem::overloaded(
                "the server is reading as many request bodies as it may (ANIKA_MAX_BODY_BYTES_IN_FLIGHT); \
                 nothing was stored, retry shortly",
                1,
            ),
        }
    }

    /// Finds a `BodyError` in an error's chain of causes (bodies are wrapped by axum and hyper).
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<Self>() {
                return Some(*found);
            }
            current = e.source();
        }
        None
    }
}

/// A standing queue is declared when the fastest request of an interval took longer than this.
pub const SHED_TARGET: Duration = Duration::from_millis(25);
/// The interval over which the fastest request is taken.
pub const SHED_INTERVAL: Duration = Duration::from_millis(100);
/// Requests in flight that are never shed: a burst of a few hundred requests is not an
/// overload (the closed-loop benchmarks run 64 clients, a test posts 200 at once), and at
/// ~5,000 events/s on 2 cores 256 in flight are ~50 ms of queue.
pub const SHED_FLOOR: usize = 256;

/// The process-wide bounds, shared by every request.
#[derive(Clone, Debug)]
pub struct EdgeLimits {
    read_timeout: Duration,
    requests: Arc<Semaphore>,
    max_requests: usize,
    body_bytes: Arc<AtomicUsize>,
    max_body_bytes: usize,
    queue: Arc<QueueWatch>,
}

/// CoDel's test for a standing queue, over request durations (see the module docs).
#[derive(Debug)]
struct QueueWatch {
    epoch: std::time::Instant,
    /// Start of the current interval, in microseconds since `epoch`.
    interval_start: AtomicU64,
    /// The fastest request of the current interval, in microseconds.
    fastest: AtomicU64,
    /// Whether the last complete interval showed a standing queue.
    standing: AtomicBool,
}

impl QueueWatch {
    fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            interval_start: AtomicU64::new(0),
            fastest: AtomicU64::new(u64::MAX),
            standing: AtomicBool::new(false),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A request took `took`; closes the interval when it is over.
    fn finished(&self, took: Duration) {
        self.fastest
            .fetch_min(took.as_micros() as u64, Ordering::AcqRel);
        let now = self.now_us();
        let start = self.interval_start.load(Ordering::Acquire);
        if now.saturating_sub(start) >= SHED_INTERVAL.as_micros() as u64
            && self
                .interval_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let fastest = self.fastest.swap(u64::MAX, Ordering::AcqRel);
            let standing = fastest != u64::MAX && fastest > SHED_TARGET.as_micros() as u64;
            if standing != self.standing.swap(standing, Ordering::AcqRel) {
                tracing::info!(
                    fastest_ms = fastest as f64 / 1000.0,
                    "{}",
                    if standing {
                        "requests queue up: shedding new ones beyond the floor"
                    } else {
                        "the request queue drained: no longer shedding"
                    }
                );
            }
        }
    }

    fn standing(&self) -> bool {
        self.standing.load(Ordering::Acquire)
    }
}

impl EdgeLimits {
    /// The bounds the configuration sets.
    pub fn new(config: &Config) -> Self {
        Self {
            read_timeout: config.request_read_timeout,
            requests: Arc::new(Semaphore::new(config.max_requests_in_flight)),
            max_requests: config.max_requests_in_flight,
            body_bytes: Arc::new(AtomicUsize::new(0)),
            max_body_bytes: config.max_body_bytes_in_flight,
            queue: Arc::new(QueueWatch::new()),
        }
    }
}

/// Body bytes one request holds; given back when the request is done (its last holder drops).
#[derive(Debug)]
struct Reservation {
    global: Arc<AtomicUsize>,
    max: usize,
    held: AtomicUsize,
    /// The body failed (timed out or over budget): the connection must not be reused.
    failed: AtomicBool,
}

impl Reservation {
    fn take(&self, n: usize) -> bool {
        let before = self.global.fetch_add(n, Ordering::AcqRel);
        if before + n > self.max {
            self.global.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.held.fetch_add(n, Ordering::AcqRel);
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.global
            .fetch_sub(self.held.load(Ordering::Acquire), Ordering::AcqRel);
    }
}

/// A request body with a deadline for the whole of it and a share of the byte budget.
struct GuardedBody {
    inner: Body,
    /// When the whole body must have arrived.
    deadline: tokio::time::Instant,
    /// A timer for the deadline, made only once the body has to be waited for: most bodies
    /// arrive with their headers, and a timer per request is a cost every request would pay.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    reservation: Arc<Reservation>,
    done: bool,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // Checked before each frame, so a client trickling bytes cannot keep the deadline away.
        if tokio::time::Instant::now() >= this.deadline {
            return this.fail(BodyError::TimedOut(this.timeout));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !this.reservation.take(data.len())
                {
                    return this.fail(BodyError::Overloaded);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            // An error of the connection itself (the client went away): the handler sees it as such.
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                tracing::debug!(error = %e, "request body failed");
                Poll::Ready(Some(Err(BodyError::Broken)))
            }
            Poll::Pending => {
                // Waiting for the client: wake at the deadline if nothing else comes first.
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyError::TimedOut(this.timeout));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl GuardedBody {
    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        self.reservation.failed.store(true, Ordering::Release);
        metrics::counter!(crate::meters::HTTP_BODIES_REFUSED, "reason" => match error {
            BodyError::TimedOut(_) => "timeout",
            BodyError::Overloaded => "body_bytes",
            BodyError::Broken => "broken",
        })
        .increment(1);
        Poll::Ready(Some(Err(error)))
    }
}

/// The middleware: a request slot, then the body under deadline and budget.
pub async fn enforce(State(limits): State<EdgeLimits>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let in_flight = limits.max_requests - limits.requests.available_permits();
    if in_flight >= SHED_FLOOR && limits.queue.standing() {
        metrics::counter!(crate::meters::HTTP_REQUESTS_REFUSED, "reason" => "queue").increment(1);
        return Problem::overloaded(
            "the server is past its capacity: requests queue up; nothing was done, retry shortly",
            1,
        )
        .into_response();
    }
    let Ok(_slot) = Arc::clone(&limits.requests).try_acquire_owned() else {
        metrics::counter!(crate::meters::HTTP_REQUESTS_REFUSED, "reason" => "in_flight")
            .increment(1);
        return Problem::overloaded(
            format!(
                "the server is handling as many requests as it may ({}, ANIKA_MAX_REQUESTS_IN_FLIGHT); \
                 nothing was done, retry shortly",
                limits.max_requests
            ),
            1,
        )
        .into_response();
    };
    let reservation = Arc::new(Reservation {
        global: Arc::clone(&limits.body_bytes),
        max: limits.max_body_bytes,
        held: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
    });
    let (parts, body) = request.into_parts();
    let body = Body::new(GuardedBody {
        inner: body,
        deadline: tokio::time::Instant::now() + limits.read_timeout,
        timer: None,
        timeout: limits.read_timeout,
        reservation: Arc::clone(&reservation),
        done: false,
    });
    let started = std::time::Instant::now();
    let mut response = next.run(Request::from_parts(parts, body)).await;
    limits.queue.finished(started.elapsed());
    if reservation.failed.load(Ordering::Acquire) {
        // The rest of the body is still on the wire: the connection cannot carry another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    drop(reservation);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_stands_only_while_even_the_fastest_request_is_slow() {
        let watch = QueueWatch::new();
        watch.finished(Duration::from_millis(80));
        assert!(!watch.standing(), "judged only once an interval is over");
        std::thread::sleep(SHED_INTERVAL);
        watch.finished(Duration::from_millis(60));
        assert!(watch.standing(), "every request of the interval was slow");
        watch.finished(Duration::from_millis(1));
        std::thread::sleep(SHED_INTERVAL);
        watch.finished(Duration::from_millis(90));
        assert!(!watch.standing(), "one fast request: the queue drains");
    }
}
