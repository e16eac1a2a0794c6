//! Per-partner ingest quotas: one token bucket per partner, shared by all its principals in this process.
//!
//! A partner's `ingest_rate_per_s` and `ingest_burst` are read from PostgreSQL
//! once and cached with the partner's bucket (a `governor` rate limiter). The
//! catalog announces a changed quota (`Change::Partner`) over `NOTIFY`; the
//! listener that follows topic changes marks the entry stale, so the next
//! request reloads it. A reload that finds the same quota keeps the bucket (a
//! rename must not hand out a fresh burst); a new quota starts a full bucket.
//! While the listener is down, entries are reloaded once they are a second
//! old, so a change still applies promptly and the buckets keep their state.
//!
//! The check runs after a request was validated and before it joins a group
//! commit: a refused request has written nothing, and a batch counts each of
//! its events.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anika_shared::{Problem, domain::PartnerId};
use axum::http::{HeaderMap, HeaderValue};
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::{InMemoryState, NotKeyed},
};
use sqlx::PgPool;

use crate::error::{Error, Result};

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// What an accepted request left of its partner's quota, for the `RateLimit` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Allowance {
    /// Events per second.
    pub(crate) rate: u32,
    /// Events that may be posted at once right now.
    pub(crate) remaining: u32,
    /// Whole seconds until the bucket is full again.
    pub(crate) reset: u64,
}

/// The IETF httpapi draft's headers: the policy (`q` events per `w` = 1 second) and what is
/// left of it (`r` events now, the bucket full again in `t` seconds).
pub(crate) fn rate_limit_headers(headers: &mut HeaderMap, rate: u32, remaining: u32, reset: u64) {
    if let Ok(policy) = HeaderValue::from_str(&format!("\"default\";q={rate};w=1")) {
        headers.insert("ratelimit-policy", policy);
    }
    if let Ok(left) = HeaderValue::from_str(&format!("\"default\";r={remaining};t={reset}")) {
        headers.insert("ratelimit", left);
    }
}

/// How long an entry is trusted while catalog notifications cannot be heard.
const UNHEARD_TTL: Duration = Duration::from_secs(1);
/// Entries kept before the cache starts over (bounds a pathological number of partners).
const CAPACITY: usize = 100_000;

/// A partner's quota: events per second and the bucket size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    /// Events per second.
    pub(crate) rate: NonZeroU32,
    /// Events that may be posted at once.
    pub(crate) burst: NonZeroU32,
}

impl Limit {
    /// The quota from the partner's columns: no rate, no limit; no burst, one second's worth.
    fn from_columns(rate: Option<i32>, burst: Option<i32>) -> Option<Self> {
        let rate = NonZeroU32::new(u32::try_from(rate?).ok()?)?;
        let burst = burst
            .and_then(|b| u32::try_from(b).ok())
            .and_then(NonZeroU32::new)
            .unwrap_or(rate);
        Some(Self { rate, burst })
    }
}

#[derive(Debug)]
struct Entry {
    limit: Option<Limit>,
    bucket: Option<Arc<Bucket>>,
    loaded: Instant,
    /// Set by a catalog notification: reload before the next use.
    stale: AtomicBool,
}

/// Partner id → quota and bucket.
#[derive(Debug, Default)]
pub(crate) struct Quotas {
    entries: RwLock<HashMap<PartnerId, Arc<Entry>>>,
    /// Bumped by every invalidation: a load that started before one must not be cached.
    epoch: AtomicU64,
    /// Whether catalog notifications are being heard.
    following: AtomicBool,
}

impl Quotas {
    /// Takes `events` tokens from the partner's bucket, or says when to come back (429);
    /// `None` for a partner without a limit.
    pub(crate) async fn check(
        &self,
        pool: &PgPool,
        partner: PartnerId,
        events: usize,
    ) -> Result<Option<Allowance>> {
        let entry = self.entry(pool, partner).await?;
        let (Some(limit), Some(bucket)) = (entry.limit, &entry.bucket) else {
            return Ok(None);
        };
        let n = NonZeroU32::new(u32::try_from(events.max(1)).unwrap_or(u32::MAX))
            .expect("at least one event");
        match bucket.check_n(n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = f64::from(limit.burst.get().saturating_sub(remaining));
                Ok(Some(Allowance {
                    rate: limit.rate.get(),
                    remaining,
                    reset: (missing / f64::from(limit.rate.get())).ceil() as u64,
                }))
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(bucket.clock().now());
                Err(Error::RateLimited {
                    rate: limit.rate.get(),
                    burst: limit.burst.get(),
                    retry_after: (wait.as_secs_f64().ceil() as u64).max(1),
                })
            }
            // More events than the bucket holds: waiting would never help, so it is not a 429.
            Err(_) => Err(Problem::invalid_field(
                "/events",
                format!(
                    "this batch has {events} events but your partner may post at most {} at once \
                     (its ingest_burst); split it into smaller batches",
                    limit.burst
                ),
            )
            .into()),
        }
    }

    async fn entry(&self, pool: &PgPool, partner: PartnerId) -> Result<Arc<Entry>> {
        let previous = {
            let entries = self.entries.read().expect("quota cache lock");
            let previous = entries.get(&partner).cloned();
            if let Some(entry) = &previous
                && !entry.stale.load(Ordering::Acquire)
                && (self.following.load(Ordering::Acquire) || entry.loaded.elapsed() < UNHEARD_TTL)
            {
                return Ok(Arc::clone(entry));
            }
            previous
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let row = anika_shared::store::partners::get_ingest_quota(pool, partner.uuid())
            .await
            .map_err(Error::Db)?;
        let limit = row.and_then(|(rate, burst)| Limit::from_columns(rate, burst));
        let bucket = match &previous {
            Some(previous) if previous.limit == limit => previous.bucket.clone(),
            _ => limit.map(|l| {
                Arc::new(
                    RateLimiter::direct(Quota::per_second(l.rate).allow_burst(l.burst))
                        .with_middleware::<StateInformationMiddleware>(),
                )
            }),
        };
        let entry = Arc::new(Entry {
            limit,
            bucket,
            loaded: Instant::now(),
            stale: AtomicBool::new(false),
        });
        let mut entries = self.entries.write().expect("quota cache lock");
        // Checked under the write lock: an invalidation bumps the epoch under the same lock.
        if self.epoch.load(Ordering::Acquire) == epoch {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(partner, Arc::clone(&entry));
        }
        Ok(entry)
    }

    /// The partner's quota changed: reload it before its next event.
    pub(crate) fn invalidate(&self, partner: PartnerId) {
        let entries = self.entries.write().expect("quota cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entry) = entries.get(&partner) {
            entry.stale.store(true, Ordering::Release);
        }
    }

    /// Notifications may have been missed: every entry is reloaded before its next use
    /// (buckets whose quota did not change keep their state).
    pub(crate) fn reset(&self, following: bool) {
        let entries = self.entries.write().expect("quota cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.following.store(following, Ordering::Release);
        for entry in entries.values() {
            entry.stale.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_without_a_burst_holds_one_seconds_worth() {
        assert_eq!(Limit::from_columns(None, Some(5)), None);
        let limit = Limit::from_columns(Some(10), None).unwrap();
        assert_eq!((limit.rate.get(), limit.burst.get()), (10, 10));
        let limit = Limit::from_columns(Some(10), Some(50)).unwrap();
        assert_eq!(limit.burst.get(), 50);
    }
}
