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
//! requests sharing the cores, each waits for all the others. So requests are
//! also admitted by Little's law: the process measures how many requests it
//! completes per second, and past [`ADMIT_FLOOR`] in flight it admits a new
//! one only while the requests already in flight would be done within
//! [`ADMIT_SOJOURN`] at that rate (in flight < rate × sojourn). Past it the
//! request gets a 503 with `Retry-After` at once, before anything else is done
//! for it (no request id, no trace span, no metrics labels), so that a refusal
//! costs a small fraction of an accepted request and the cores keep serving
//! what was admitted. Below the floor nothing is ever refused, so a burst of
//! a few hundred requests (or a few slow ones) never is. When the process
//! stalls (PostgreSQL flushing a checkpoint), the rate falls, the bound falls
//! to the floor with it, and callers are told to come back instead of queueing.
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

/// Requests in flight that are never refused for load: a burst of a few hundred requests
/// is not an overload (the closed-loop benchmarks run 64 clients, a test posts 200 at once),
/// and at ~5,000 events/s on 2 cores 256 in flight are ~50 ms of queue.
pub const ADMIT_FLOOR: usize = 256;
/// How long the requests in flight may take to finish, at the measured rate, for a new one
/// to be admitted: the queueing a caller may meet before it is told to come back instead.
pub const ADMIT_SOJOURN: Duration = Duration::from_millis(50);
/// The interval over which completions are counted to measure the rate.
pub const RATE_INTERVAL: Duration = Duration::from_millis(100);

/// The process-wide bounds, shared by every request.
#[derive(Clone, Debug)]
pub struct EdgeLimits {
    read_timeout: Duration,
    requests: Arc<Semaphore>,
    max_requests: usize,
    body_bytes: Arc<AtomicUsize>,
    max_body_bytes: usize,
    admission: Arc<Admission>,
}

/// The completion rate of `/v1` requests, and from it the admission bound (module docs).
#[derive(Debug)]
struct Admission {
    epoch: std::time::Instant,
    /// Start of the current interval, in microseconds since `epoch`.
    interval_start: AtomicU64,
    /// Requests completed in the current interval.
    completed: AtomicU64,
    /// Completions per second, smoothed over the last intervals (EWMA, weight ¼ per interval).
    rate: AtomicU64,
}

impl Admission {
    fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            interval_start: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            rate: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Closes the current interval when it is over; called on every arrival and completion,
    /// so a process that completes nothing (a stall) sees its rate fall as requests arrive.
    fn tick(&self) {
        let now = self.now_us();
        let start = self.interval_start.load(Ordering::Acquire);
        let elapsed = now.saturating_sub(start);
        if elapsed < RATE_INTERVAL.as_micros() as u64
            || self
                .interval_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let completed = self.completed.swap(0, Ordering::AcqRel);
        let measured = completed.saturating_mul(1_000_000) / elapsed.max(1);
        let old = self.rate.load(Ordering::Acquire);
        self.rate
            .store(smoothed_rate(old, measured), Ordering::Release);
    }

    /// A request was done.
    fn finished(&self) {
        self.completed.fetch_add(1, Ordering::AcqRel);
        self.tick();
    }

    /// How many requests may be in flight for one more to be admitted.
    fn bound(&self) -> usize {
        self.tick();
        admission_bound(self.rate.load(Ordering::Acquire))
    }
}

/// The next smoothed rate from the last one and an interval's measurement.
fn smoothed_rate(old: u64, measured: u64) -> u64 {
    (old * 3 + measured) / 4
}

/// Little's law: the requests that finish within [`ADMIT_SOJOURN`] at `rate` per second,
/// never fewer than [`ADMIT_FLOOR`].
fn admission_bound(rate_per_s: u64) -> usize {
    let within = rate_per_s.saturating_mul(ADMIT_SOJOURN.as_millis() as u64) / 1000;
    ADMIT_FLOOR.max(usize::try_from(within).unwrap_or(usize::MAX))
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
            admission: Arc::new(Admission::new()),
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

/// The outermost middleware: a request slot, or a 503 at once (see the module docs).
///
/// It runs before the request id, tracing and metrics layers, so that refusing costs as
/// little as possible; the refusal is counted in `anika_http_requests_refused_total`.
pub async fn admit(State(limits): State<EdgeLimits>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let in_flight = limits.max_requests - limits.requests.available_permits();
    if in_flight >= limits.admission.bound() {
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
    let response = next.run(request).await;
    limits.admission.finished();
    response
}

/// The inner middleware: the body under its deadline and a share of the byte budget.
pub async fn guard_body(
    State(limits): State<EdgeLimits>,
    request: Request,
    next: Next,
) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
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
    let mut response = next.run(Request::from_parts(parts, body)).await;
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
    fn below_the_floor_nothing_is_refused_whatever_the_rate() {
        assert_eq!(admission_bound(0), ADMIT_FLOOR);
        assert_eq!(admission_bound(1_000), ADMIT_FLOOR);
    }

    #[test]
    fn past_the_floor_the_bound_is_what_finishes_within_the_sojourn() {
        // 20,000 requests/s × 50 ms = 1,000 in flight.
        assert_eq!(admission_bound(20_000), 1_000);
        assert!(admission_bound(u64::MAX) > 1_000_000, "no overflow");
    }

    #[test]
    fn the_rate_follows_the_measurements_and_falls_in_a_stall() {
        let mut rate = 0;
        for _ in 0..20 {
            rate = smoothed_rate(rate, 8_000);
        }
        assert!((7_500..=8_000).contains(&rate), "{rate}");
        for _ in 0..10 {
            rate = smoothed_rate(rate, 0);
        }
        assert!(
            rate < 500,
            "a stall brings the bound back to the floor: {rate}"
        );
    }

    #[test]
    fn an_interval_closes_on_arrivals_too() {
        let admission = Admission::new();
        for _ in 0..100 {
            admission.finished();
        }
        std::thread::sleep(RATE_INTERVAL);
        admission.finished();
        assert!(admission.rate.load(Ordering::Acquire) > 0);
        let before = admission.rate.load(Ordering::Acquire);
        std::thread::sleep(RATE_INTERVAL);
        assert_eq!(admission.bound(), ADMIT_FLOOR);
        assert!(
            admission.rate.load(Ordering::Acquire) < before,
            "no completions: the rate falls"
        );
    }
}
