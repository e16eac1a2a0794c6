//! The bounded backlog: how many committed events wait in the outbox, and the bound past which ingest refuses.
//!
//! "202 means durable" only holds while the outbox can be drained; an outbox
//! that grows without end (RabbitMQ away for hours, a broker slower than the
//! clients) would turn into an outage of its own. Past `ANIKA_MAX_BACKLOG`
//! ingest answers 503 with `Retry-After` before it reads a body, so nothing is
//! accepted that the server is not ready to hand on.
//!
//! The depth is an estimate kept in an atomic, never a `count(*)` per request:
//! the writers add what they commit, the publisher's deleter and the relay
//! subtract what they delete, and the relay's periodic (capped) count corrects
//! the drift and what other ingest processes did.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::{error::Error, meters as m};

/// Outbox depth estimate and bound, shared by the handlers and the background work.
#[derive(Debug)]
pub(crate) struct Backlog {
    depth: AtomicI64,
    max: u64,
    /// The gauge, looked up once: every commit and delete sets it.
    gauge: metrics::Gauge,
}

impl Backlog {
    /// An empty backlog bounded by `max` events.
    pub(crate) fn new(max: u64) -> Self {
        Self {
            depth: AtomicI64::new(0),
            max,
            gauge: metrics::gauge!(m::OUTBOX_BACKLOG),
        }
    }

    /// 503 once the outbox holds `max` events or more; a request in flight may overshoot by its own size.
    pub(crate) fn admit(&self) -> Result<(), Error> {
        if self.depth() >= self.max {
            return Err(Error::Backlog { max: self.max });
        }
        Ok(())
    }

    /// The bound.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The estimated number of unpublished events.
    pub(crate) fn depth(&self) -> u64 {
        self.depth.load(Ordering::Acquire).max(0) as u64
    }

    /// `n` events were committed with their outbox rows.
    pub(crate) fn added(&self, n: usize) {
        if n > 0 {
            let now = self.depth.fetch_add(n as i64, Ordering::AcqRel) + n as i64;
            self.gauge.set(now.max(0) as f64);
        }
    }

    /// `n` outbox rows were deleted (published, or dropped by the relay).
    pub(crate) fn removed(&self, n: u64) {
        if n > 0 {
            let now = self.depth.fetch_sub(n as i64, Ordering::AcqRel) - n as i64;
            self.gauge.set(now.max(0) as f64);
        }
    }

    /// The outbox was counted: the estimate starts over from the truth.
    pub(crate) fn measured(&self, count: u64) {
        self.depth.store(count as i64, Ordering::Release);
        self.gauge.set(count as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_reached_by_commits_and_left_by_deletes_or_a_count() {
        let backlog = Backlog::new(3);
        assert!(backlog.admit().is_ok());
        backlog.added(3);
        assert!(matches!(backlog.admit(), Err(Error::Backlog { max: 3 })));
        backlog.removed(1);
        assert!(backlog.admit().is_ok());
        backlog.measured(10);
        assert!(backlog.admit().is_err());
        // Deletes seen before their commits were counted never make it negative.
        backlog.measured(0);
        backlog.removed(5);
        assert_eq!(backlog.depth(), 0);
    }
}
