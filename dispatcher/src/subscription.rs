//! The runtime model of a subscription: its configuration as of the last catalog read,
//! what that standing allows ([`Verdict`]), and the delivery state kept beside it
//! (breaker, rate limit, requests in flight, failing since).
//!
//! No SQL here: `subscription_rows` reads the rows this is built from, and
//! [`Sub::refresh`] takes that read as an argument, so the model depends on nothing that
//! depends on it.

use std::{
    future::Future,
    num::NonZeroU32,
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use anika_shared::{
    domain::{MaxInFlight, PartnerId, SubscriptionId, SubscriptionStatus, TopicId, WebhookSecret},
    net::WebhookUrl,
};
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::{breaker::Breaker, filter::Filter, in_flight::InFlight};

/// What may happen to a message now, by the subscription's standing alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed and active: deliver.
    Send,
    /// The partner may not read the topic: skip, recording why.
    Skip(&'static str),
    /// Paused or disabled: leave it queued.
    Requeue,
}

/// Why a message of a partner without read access is skipped.
pub const REVOKED: &str = "the partner's grant on the topic was revoked";

/// Everything a delivery needs to know about its subscription, as of the last reload.
#[derive(Clone, Debug)]
pub struct SubConfig {
    /// The subscription.
    pub id: SubscriptionId,
    /// The partner it belongs to (whose share of the delivery slots it uses).
    pub partner: PartnerId,
    /// Its topic.
    pub topic: TopicId,
    /// Where to deliver; `Err` if today's policy refuses the stored URL.
    pub url: Result<WebhookUrl, String>,
    /// The current signing secret.
    pub secret: WebhookSecret,
    /// The previous secret and when it stops signing.
    pub previous_secret: Option<(WebhookSecret, DateTime<Utc>)>,
    /// JSON the event's data must contain.
    pub filter: Option<Filter>,
    /// active, paused or disabled.
    pub status: SubscriptionStatus,
    /// Whether the partner owns or is granted the topic right now.
    pub allowed: bool,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Deliveries per second, if limited.
    pub rate_limit: Option<u32>,
    /// Requests in flight at most (the subscription's own or the server's default).
    pub max_in_flight: MaxInFlight,
    /// One at a time, in order.
    pub ordered: bool,
    /// Since when every attempt failed, if they do.
    pub failing_since: Option<DateTime<Utc>>,
    /// When the query this was read by started: it reflects every commit before then.
    pub read_at: Instant,
}

impl SubConfig {
    /// What this standing says to do with a message.
    pub fn verdict(&self) -> Verdict {
        if !self.allowed {
            Verdict::Skip(REVOKED)
        } else if self.status != SubscriptionStatus::Active {
            Verdict::Requeue
        } else {
            Verdict::Send
        }
    }

    /// The secrets that sign a delivery now: the current one, and the previous one during its 24 h.
    pub fn signing_secrets(&self) -> Vec<&WebhookSecret> {
        let mut secrets = vec![&self.secret];
        if let Some((previous, until)) = &self.previous_secret
            && *until > Utc::now()
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// A subscription at run time: its latest configuration and its delivery state.
#[derive(Debug)]
pub struct Sub {
    /// The subscription.
    pub id: SubscriptionId,
    config: RwLock<Arc<SubConfig>>,
    limiter: RwLock<Option<(u32, Arc<DefaultDirectRateLimiter>)>>,
    /// Holds deliveries back while the endpoint fails every attempt.
    pub breaker: Breaker,
    /// At most `max_in_flight` requests to the endpoint at once.
    pub in_flight: InFlight,
    /// One catalog read at a time for [`Sub::refresh`]: a backlog needs one, not one each.
    refreshing: tokio::sync::Mutex<()>,
    /// Wakes deliveries waiting (for a slot, the rate limit, a retry) when the verdict changes.
    standing: tokio::sync::Notify,
    /// Since when the endpoint fails, kept in memory to write only on change.
    pub failing_since: Mutex<Option<DateTime<Utc>>>,
}

impl Sub {
    /// A subscription first seen with `config`; its breaker opens after `breaker_after` failures.
    pub fn new(config: SubConfig, breaker_after: u32) -> Self {
        let failing_since = config.failing_since;
        let sub = Self {
            id: config.id,
            in_flight: InFlight::new(config.max_in_flight.get()),
            config: RwLock::new(Arc::new(config)),
            limiter: RwLock::new(None),
            breaker: Breaker::new(breaker_after),
            refreshing: tokio::sync::Mutex::new(()),
            standing: tokio::sync::Notify::new(),
            failing_since: Mutex::new(failing_since),
        };
        sub.sync_limiter();
        sub
    }

    /// The latest configuration.
    pub fn config(&self) -> Arc<SubConfig> {
        Arc::clone(&self.config.read().expect("config lock"))
    }

    /// Marks the subscription disabled here at once, ahead of the catalog's notification,
    /// so no message slips out in between.
    pub fn disable_locally(&self) {
        let mut config = (*self.config()).clone();
        config.status = SubscriptionStatus::Disabled;
        // Newer than anything read before: a refresh racing the disabling commit must not undo it.
        config.read_at = Instant::now();
        *self.config.write().expect("config lock") = Arc::new(config);
        self.standing.notify_waiters();
    }

    /// Completes when the subscription's [`Verdict`] changes (revoked, paused, granted, resumed)
    /// after this call, polled or not.
    pub fn standing_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.standing.notified()
    }

    /// The standing as of a catalog read that started after `received`, reading it with
    /// `load` if needed (one read at a time; whoever waited reuses a recent enough one).
    ///
    /// `Ok(None)`: the subscription no longer exists.
    pub async fn refresh<E, F>(
        &self,
        received: Instant,
        load: impl FnOnce() -> F,
    ) -> Result<Option<Arc<SubConfig>>, E>
    where
        F: Future<Output = Result<Option<SubConfig>, E>>,
    {
        let _one_at_a_time = self.refreshing.lock().await;
        // A read made while we waited for the lock may already be recent enough.
        let cached = self.config();
        if cached.read_at >= received {
            return Ok(Some(cached));
        }
        let Some(config) = load().await? else {
            return Ok(None);
        };
        self.update(config);
        Ok(Some(self.config()))
    }

    /// Takes a newer read of the configuration (an older one is ignored) and wakes the
    /// deliveries waiting if the [`Verdict`] changed.
    pub fn update(&self, config: SubConfig) {
        let config = Arc::new(config);
        let before = {
            // Held throughout: the check against a newer read and the swap are one step.
            let mut current = self.config.write().expect("config lock");
            if config.read_at < current.read_at {
                // A reload that started before a refresh (or a local disable) finished later.
                return;
            }
            let reactivated = current.status != SubscriptionStatus::Active
                && config.status == SubscriptionStatus::Active;
            if reactivated {
                // The catalog clears `failing_since` on re-enabling; failures from before must
                // not disable it again at the first error.
                *self.failing_since.lock().expect("health lock") = config.failing_since;
            }
            if reactivated || current.url != config.url {
                // Resumed, re-enabled or moved: deliver at once instead of waiting out a cool-down.
                self.breaker.reset();
            }
            self.in_flight.resize(config.max_in_flight.get());
            std::mem::replace(&mut *current, Arc::clone(&config))
        };
        self.sync_limiter();
        if before.verdict() != config.verdict() {
            self.standing.notify_waiters();
        }
    }

    fn sync_limiter(&self) {
        let wanted = self.config().rate_limit;
        let mut limiter = self.limiter.write().expect("limiter lock");
        match (wanted, limiter.as_ref()) {
            (None, _) => *limiter = None,
            (Some(rate), Some((current, _))) if *current == rate => {}
            (Some(rate), _) => {
                let per_second = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
                *limiter = Some((
                    rate,
                    Arc::new(RateLimiter::direct(Quota::per_second(per_second))),
                ));
            }
        }
    }

    /// Waits for the subscription's rate limit, if it has one.
    pub async fn rate_limit(&self) {
        let limiter = self
            .limiter
            .read()
            .expect("limiter lock")
            .as_ref()
            .map(|(_, l)| Arc::clone(l));
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
    }
}
