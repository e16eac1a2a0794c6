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
//! sheds load: when more than a tenth of the requests that finished in the
//! last [`SHED_INTERVAL`] took longer than `ANIKA_SHED_TARGET` (25 ms) — their
//! 90th percentile is past the target — a queue has formed that does not drain
//! by itself. (CoDel's test, the fastest request of the interval, misses the
//! queue of a group commit: whoever arrives just before a commit is fast
//! however long the others wait, and under twice its capacity the process
//! accepted 1.5 times what 64 clients get, at a p99 near a second.) Then the
//! number of requests admitted at once is set to what the interval's rate
//! serves within the target — by Little's law, requests in flight = rate ×
//! latency, so 7,000/s within 25 ms are 175 — never below [`SHED_FLOOR`], and
//! new requests past it get a 503 with `Retry-After` at once ([`ShedLayer`]);
//! once the queue is gone it grows back by an eighth per interval. The cut
//! is one step, whatever the limit was: cutting by a quarter per interval
//! took 1.5 s from the cap of 4,096, and under twice the capacity those
//! seconds of queue made clients open thousands of connections. Bounding the
//! requests in flight to what the process serves within the target bounds
//! the latency of what is accepted, whatever the capacity of the machine, and
//! keeps the group commits as full as that latency allows. Nothing is refused before
//! an interval has shown a queue, nor while fewer than [`SHED_FLOOR`]
//! requests are in flight (a subscription's RabbitMQ round trips).
//! `ANIKA_SHED_TARGET=0s` turns shedding off (the test kit does: on a machine
//! shared by parallel tests, latency measures the machine, not the server).
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

/// The interval over which the share of slow requests is taken.
pub const SHED_INTERVAL: Duration = Duration::from_millis(100);
/// Requests in flight that are never shed: the closed-loop benchmarks run 64 clients. At
/// ~3,000–7,000 events/s on 2 cores, 64 in flight are 10–20 ms of queue; the former floor
/// of 256 held 40–80 ms of queue at every moment of an overload, and its p99 several times that.
pub const SHED_FLOOR: usize = 64;

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

/// CoDel's test for a standing queue, over request durations, and the admission limit it
/// steers (see the module docs).
#[derive(Debug)]
struct QueueWatch {
    epoch: std::time::Instant,
    /// Start of the current interval, in microseconds since `epoch`.
    interval_start: AtomicU64,
    /// Requests finished in the current interval.
    finished: AtomicU64,
    /// Those of them that took longer than the target.
    slow: AtomicU64,
    /// Whether the last complete interval showed a standing queue (for the log).
    standing: AtomicBool,
    /// Requests admitted at once, at most (never below [`SHED_FLOOR`]).
    limit: AtomicUsize,
    /// What the limit grows back to: the cap on requests in flight.
    max: usize,
    /// A request slower than this counts as slow (µs); 0: shedding is off.
    target_us: u64,
}

impl QueueWatch {
    fn new(max: usize, target: Duration) -> Self {
        Self {
            epoch: std::time::Instant::now(),
            interval_start: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            standing: AtomicBool::new(false),
            limit: AtomicUsize::new(max.max(SHED_FLOOR)),
            max: max.max(SHED_FLOOR),
            target_us: target.as_micros() as u64,
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A request took `took` with `in_flight` requests in flight; closes the interval when it is over.
    fn finished(&self, took: Duration, in_flight: usize) {
        if self.target_us == 0 {
            return; // shedding is off: the limit stays at the cap
        }
        self.finished.fetch_add(1, Ordering::AcqRel);
        if took.as_micros() as u64 > self.target_us {
            self.slow.fetch_add(1, Ordering::AcqRel);
        }
        let now = self.now_us();
        let start = self.interval_start.load(Ordering::Acquire);
        if now.saturating_sub(start) >= SHED_INTERVAL.as_micros() as u64
            && self
                .interval_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A request counted between the two swaps lands in the next interval: harmless.
            let finished = self.finished.swap(0, Ordering::AcqRel);
            let slow = self.slow.swap(0, Ordering::AcqRel);
            let elapsed = Duration::from_micros(now.saturating_sub(start));
            let standing = queue_stands(finished, slow, elapsed);
            let limit = self.limit.load(Ordering::Acquire);
            let rate = finished as f64 / elapsed.as_secs_f64().max(1e-6);
            self.limit.store(
                next_limit(limit, rate, self.target_us, standing, self.max),
                Ordering::Release,
            );
            if standing != self.standing.swap(standing, Ordering::AcqRel) {
                tracing::info!(
                    finished,
                    slow,
                    in_flight,
                    "{}",
                    if standing {
                        "requests queue up: admitting fewer at once"
                    } else {
                        "the request queue drained: admitting more again"
                    }
                );
            }
        }
    }

    /// Whether one more request may start with `in_flight` in flight.
    fn admits(&self, in_flight: usize) -> bool {
        in_flight < self.limit.load(Ordering::Acquire)
    }
}

/// Whether an interval that lasted `elapsed`, in which `finished` requests ended, `slow` of
/// them past the target, shows a standing queue: more than a tenth were slow (the 90th
/// percentile is past it). An interval closes only when a request ends, so one longer than
/// [`IDLE_INTERVAL`] was mostly idle: a standing queue ends requests all the time. Its rate
/// says nothing of the load, and one slow request after a quiet minute (a cold connection)
/// would otherwise cut the limit to the floor just as a burst arrives.
fn queue_stands(finished: u64, slow: u64, elapsed: Duration) -> bool {
    elapsed <= IDLE_INTERVAL && slow * 10 > finished
}

/// An interval longer than this was mostly idle (see [`queue_stands`]).
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// The admission limit after an interval in which requests finished at `rate` per second:
/// while a queue stands, what that rate serves within the target by Little's law
/// (`rate × target` in flight: a 7,000/s process with a 25 ms target admits 175), so that
/// the first interval of an overload cuts the queue at once rather than by a quarter per
/// interval (which, from the cap of 4,096, took seconds of second-long latencies);
/// once the queue drained, an eighth more per interval; within [`SHED_FLOOR`]..=`max`.
fn next_limit(limit: usize, rate: f64, target_us: u64, standing: bool, max: usize) -> usize {
    let next = if standing {
        (rate * target_us as f64 / 1e6) as usize
    } else {
        limit + (limit / 8).max(1)
    };
    next.clamp(SHED_FLOOR, max)
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
            queue: Arc::new(QueueWatch::new(
                config.max_requests_in_flight,
                config.shed_target,
            )),
        }
    }
}

impl EdgeLimits {
    /// `/v1` requests holding a slot now.
    fn in_flight(&self) -> usize {
        self.max_requests - self.requests.available_permits()
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

/// The admission limit, outside the router itself ([`crate::http::finish_with`]): a request
/// refused because a queue stands costs no routing, request id, span, metrics middleware or
/// body guard. Under twice its capacity the process refuses about as many requests as it
/// accepts, on the same cores, so what a refusal costs is taken from the accepted ones.
#[derive(Clone, Debug)]
pub struct ShedLayer {
    // Behind one `Arc`: hyper clones the service for every request.
    state: Arc<ShedState>,
}

/// What [`ShedLayer`] and its services share.
#[derive(Debug)]
struct ShedState {
    limits: EdgeLimits,
    refusal: Bytes,
    refused: metrics::Counter,
}

impl ShedLayer {
    /// Refuses `/v1` requests past the admission limit of `limits`.
    pub fn new(limits: EdgeLimits) -> Self {
        // Serialized once: the process may refuse thousands of requests a second.
        let refusal = serde_json::to_vec(&Problem::overloaded(
            "the server is past its capacity: requests queue up; nothing was done, retry shortly",
            1,
        ))
        .map(Bytes::from)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialize the refusal; it goes without a body");
            Bytes::new()
        });
        // Registered once: `counter!` looks the labelled key up (and allocates a handle) per call.
        let refused = metrics::counter!(crate::meters::HTTP_REQUESTS_REFUSED, "reason" => "queue");
        Self {
            state: Arc::new(ShedState {
                limits,
                refusal,
                refused,
            }),
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// The service of [`ShedLayer`].
#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    state: Arc<ShedState>,
}

impl<S> tower::Service<Request> for Shed<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<std::future::Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = &*self.state;
        if request.uri().path().starts_with("/v1/")
            && !state.limits.queue.admits(state.limits.in_flight())
        {
            state.refused.increment(1);
            // The same answer as `Problem::overloaded(…).into_response()`, from the bytes made once.
            let mut refused = Response::new(Body::from(state.refusal.clone()));
            *refused.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
            let headers = refused.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return futures::future::Either::Left(std::future::ready(Ok(refused)));
        }
        futures::future::Either::Right(self.inner.call(request))
    }
}

/// The middleware: a request slot, then the body under deadline and budget (the admission
/// limit is [`ShedLayer`]'s, outside every other layer).
pub async fn enforce(State(limits): State<EdgeLimits>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
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
    limits.queue.finished(started.elapsed(), limits.in_flight());
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
    fn a_standing_queue_cuts_the_limit_to_what_the_rate_serves_and_a_drained_one_raises_it() {
        let watch = QueueWatch::new(4096, Duration::from_millis(25));
        // 500 slow requests in an interval of at least 100 ms: at most 5,000/s, which
        // serves 125 in flight within 25 ms.
        for _ in 0..499 {
            watch.finished(Duration::from_millis(60), 1000);
        }
        assert!(watch.admits(4000), "judged only once an interval is over");
        std::thread::sleep(SHED_INTERVAL);
        watch.finished(Duration::from_millis(60), 1000);
        assert!(
            watch.standing.load(Ordering::Acquire),
            "every request of the interval was slow"
        );
        assert!(
            !watch.admits(126),
            "cut at once from 4,096 to what the rate serves within the target"
        );
        assert!(watch.admits(SHED_FLOOR - 1), "never below the floor");
        let limit = watch.limit.load(Ordering::Acquire);
        std::thread::sleep(SHED_INTERVAL);
        watch.finished(Duration::from_millis(1), 100);
        assert!(
            !watch.standing.load(Ordering::Acquire),
            "the interval's only request was fast: the queue drained"
        );
        assert_eq!(
            watch.limit.load(Ordering::Acquire),
            limit + limit / 8,
            "an eighth more per interval once drained"
        );
    }

    #[test]
    fn a_queue_stands_once_more_than_a_tenth_of_an_interval_was_slow() {
        let interval = SHED_INTERVAL;
        assert!(
            !queue_stands(0, 0, interval),
            "an interval without requests"
        );
        assert!(
            !queue_stands(10, 1, interval),
            "a tenth: the 90th percentile meets the target"
        );
        assert!(queue_stands(10, 2, interval));
        assert!(queue_stands(1, 1, interval), "the only request was slow");
        // The case CoDel's minimum misses: most wait, a few who came just before a commit don't.
        assert!(queue_stands(1000, 700, interval));
    }

    #[test]
    fn one_slow_request_after_a_quiet_spell_does_not_cut_the_limit() {
        assert!(
            !queue_stands(1, 1, Duration::from_secs(60)),
            "a minute with one request is no queue, however slow it was"
        );
        let watch = QueueWatch::new(4096, Duration::from_millis(25));
        std::thread::sleep(IDLE_INTERVAL + SHED_INTERVAL);
        watch.finished(Duration::from_millis(60), 1);
        assert!(!watch.standing.load(Ordering::Acquire));
        assert!(
            watch.admits(4095),
            "the limit stays at the cap for the burst that may follow"
        );
    }

    #[test]
    fn a_fast_few_do_not_hide_a_queue_the_rest_waited_in() {
        let watch = QueueWatch::new(4096, Duration::from_millis(25));
        std::thread::sleep(SHED_INTERVAL);
        // Those who arrived just before a group commit were fast; most waited.
        for _ in 0..5 {
            watch.finished(Duration::from_millis(2), 1000);
        }
        for _ in 0..45 {
            watch.finished(Duration::from_millis(60), 1000);
        }
        std::thread::sleep(SHED_INTERVAL);
        watch.finished(Duration::from_millis(60), 1000);
        assert!(
            watch.standing.load(Ordering::Acquire),
            "the fastest request of the interval met the target, yet nine in ten waited"
        );
        assert!(
            !watch.admits(750),
            "the limit fell to what the rate serves within the target"
        );
    }

    #[test]
    fn a_zero_target_never_sheds() {
        let watch = QueueWatch::new(4096, Duration::ZERO);
        watch.finished(Duration::from_millis(80), 1000);
        std::thread::sleep(SHED_INTERVAL);
        watch.finished(Duration::from_millis(60), 1000);
        assert!(!watch.standing.load(Ordering::Acquire));
        assert!(watch.admits(4095), "the limit stays at the cap");
    }

    /// `next_limit` with a 25 ms target and a cap of 4,096, for each `(limit, rate, standing,
    /// expected, why)`.
    fn check_next_limit(cases: &[(usize, f64, bool, usize, &str)]) {
        for &(limit, rate, standing, expected, why) in cases {
            assert_eq!(
                next_limit(limit, rate, 25_000, standing, 4096),
                expected,
                "{why}"
            );
        }
    }

    #[test]
    fn a_standing_queue_admits_what_its_rate_serves_within_the_target() {
        check_next_limit(&[
            (
                4096,
                7000.0,
                true,
                175,
                "Little's law: 7,000/s within 25 ms are 175 in flight, from the cap in one interval",
            ),
            (
                100,
                7000.0,
                true,
                175,
                "a limit below what the rate serves rises to it: the queue is not ours",
            ),
        ]);
    }

    #[test]
    fn the_limit_stays_between_the_floor_and_the_cap() {
        check_next_limit(&[
            (100, 1000.0, true, SHED_FLOOR, "never below the floor"),
            (4096, 7000.0, false, 4096, "never past the cap"),
            (4096, 1e9, true, 4096, "nor past it while a queue stands"),
            (
                SHED_FLOOR,
                0.0,
                false,
                SHED_FLOOR + 8,
                "an eighth more once drained",
            ),
        ]);
    }
}
