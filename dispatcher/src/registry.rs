//! The dispatcher's view of the catalog: every subscription, its ACL standing, and its consumer.
//!
//! It follows the catalog live through `LISTEN anika_catalog` (a change reloads
//! just the affected subscriptions) and re-reads everything periodically and
//! after a lost listener connection, so a missed notification heals itself.
//! An active subscription has a running consumer; any other has none.
//!
//! A cached "revoked" or "paused" is never trusted on its own for a message
//! the cache may predate: [`Sub::refresh`] asks PostgreSQL first (see
//! `consumer::admit`), so a grant the dispatcher has not heard of yet is
//! never answered with a skip.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use anika_shared::{
    changes::{CHANNEL, Change},
    domain::{MaxInFlight, PartnerId, SubscriptionId, TopicId, WebhookSecret},
    net::WebhookUrl,
    secrets::{Column, Slot},
};
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Deps, breaker::Breaker, consumer, filter::Filter, in_flight::InFlight};

/// The state of a subscription, as the catalog says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Deliver.
    Active,
    /// Let events queue up.
    Paused,
    /// Disabled by the server.
    Disabled,
}

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
    pub status: Status,
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
        } else if self.status != Status::Active {
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
    fn new(config: SubConfig, breaker_after: u32) -> Self {
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
        config.status = Status::Disabled;
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

    /// The standing as of a catalog read that started after `received`, reading it if needed.
    ///
    /// `Ok(None)`: the subscription no longer exists.
    pub async fn refresh(
        &self,
        deps: &Deps,
        received: Instant,
    ) -> Result<Option<Arc<SubConfig>>, sqlx::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        // A read made while we waited for the lock may already be recent enough.
        let cached = self.config();
        if cached.read_at >= received {
            return Ok(Some(cached));
        }
        let Some(config) = load_one(deps, self.id).await? else {
            return Ok(None);
        };
        self.update(config);
        Ok(Some(self.config()))
    }

    fn update(&self, config: SubConfig) {
        let config = Arc::new(config);
        let before = {
            // Held throughout: the check against a newer read and the swap are one step.
            let mut current = self.config.write().expect("config lock");
            if config.read_at < current.read_at {
                // A reload that started before a refresh (or a local disable) finished later.
                return;
            }
            let reactivated = current.status != Status::Active && config.status == Status::Active;
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

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    partner_id: Uuid,
    topic_id: Uuid,
    url: String,
    /// As text: numbers keep every digit (`serde_json` would round them to `f64`).
    filter: Option<String>,
    status: String,
    max_attempts: i32,
    rate_limit_per_s: Option<i32>,
    max_in_flight: Option<i32>,
    ordered: bool,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    failing_since: Option<DateTime<Utc>>,
    allowed: bool,
}

const SELECT: &str = "SELECT s.id, s.partner_id, s.topic_id, s.url, s.filter::text AS filter, s.status, s.max_attempts, \
        s.rate_limit_per_s, s.max_in_flight, s.ordered, s.secret, s.previous_secret, s.previous_secret_expires_at, s.failing_since, \
        (t.owner_partner_id = s.partner_id OR EXISTS \
            (SELECT 1 FROM grants g WHERE g.topic_id = s.topic_id AND g.partner_id = s.partner_id)) AS allowed \
     FROM subscriptions s JOIN topics t ON t.id = s.topic_id";

impl Row {
    /// The configuration; `read_at` is when the query that read this row started.
    fn into_config(self, deps: &Deps, read_at: Instant) -> Option<SubConfig> {
        let row = self.id.to_string();
        // Without its secret a subscription is not consumed: its events wait in the queue
        // rather than go out unsigned (or signed with a secret moved from another row).
        let secret = open_logged(
            deps,
            &self.secret,
            Slot::new(Column::SubscriptionSecret, &row),
        )?;
        let previous_secret = match (self.previous_secret, self.previous_secret_expires_at) {
            (Some(s), Some(until)) if until > Utc::now() => open_logged(
                deps,
                &s,
                Slot::new(Column::SubscriptionPreviousSecret, &row),
            )
            .map(|s| (s, until)),
            _ => None,
        };
        Some(SubConfig {
            id: self.id.into(),
            partner: self.partner_id.into(),
            topic: self.topic_id.into(),
            url: WebhookUrl::parse(&self.url, &deps.policy),
            secret,
            previous_secret,
            filter: match self.filter.as_deref().map(Filter::parse) {
                None => None,
                Some(Ok(filter)) => Some(filter),
                Some(Err(e)) => {
                    // PostgreSQL prints jsonb as valid JSON; this would be a bug worth seeing.
                    tracing::error!(subscription = %self.id, error = %e, "a stored filter does not parse; the subscription is not consumed");
                    return None;
                }
            },
            status: match self.status.as_str() {
                "active" => Status::Active,
                "paused" => Status::Paused,
                _ => Status::Disabled,
            },
            allowed: self.allowed,
            max_attempts: self.max_attempts.max(1) as u32,
            rate_limit: self.rate_limit_per_s.map(|r| r.max(1) as u32),
            max_in_flight: self
                .max_in_flight
                .and_then(|m| MaxInFlight::try_from(i64::from(m)).ok())
                .unwrap_or(deps.config.subscription_max_in_flight),
            ordered: self.ordered,
            failing_since: self.failing_since,
            read_at,
        })
    }
}

/// Opens a stored webhook secret; logs and counts one that does not open.
fn open_logged(deps: &Deps, stored: &str, slot: Slot<'_>) -> Option<WebhookSecret> {
    match WebhookSecret::open(stored, &deps.secrets, slot) {
        Ok(secret) => Some(secret),
        Err(e) => {
            metrics::counter!("anika_secrets_unopenable_total", "column" => slot.column().name())
                .increment(1);
            tracing::error!(%slot, error = %e, "a stored webhook secret does not open; the subscription is not delivered to");
            None
        }
    }
}

/// Reads one subscription's configuration from the catalog; `None` if it was deleted.
pub(crate) async fn load_one(
    deps: &Deps,
    id: SubscriptionId,
) -> Result<Option<SubConfig>, sqlx::Error> {
    let read_at = Instant::now();
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE s.id = $1")))
        .bind(id.uuid())
        .fetch_optional(&deps.pool)
        .await?;
    Ok(row.and_then(|r| r.into_config(deps, read_at)))
}

/// Which subscriptions a reload covers.
#[derive(Debug)]
enum Scope {
    All,
    Subscription(SubscriptionId),
    /// Every subscription of a topic (its name, existence or grants changed).
    Topic(TopicId),
}

struct Entry {
    sub: Arc<Sub>,
    consumer: Option<(CancellationToken, JoinHandle<()>)>,
}

/// All subscriptions of the installation and their consumers.
pub struct Registry {
    deps: Arc<Deps>,
    entries: tokio::sync::Mutex<HashMap<SubscriptionId, Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry; [`Registry::run`] fills it.
    pub fn new(deps: Arc<Deps>) -> Arc<Self> {
        Arc::new(Self {
            deps,
            entries: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// One subscription, if this process runs it.
    pub async fn get(&self, id: SubscriptionId) -> Option<Arc<Sub>> {
        self.entries
            .lock()
            .await
            .get(&id)
            .map(|e| Arc::clone(&e.sub))
    }

    /// Every known subscription.
    pub async fn all(&self) -> Vec<Arc<Sub>> {
        self.entries
            .lock()
            .await
            .values()
            .map(|e| Arc::clone(&e.sub))
            .collect()
    }

    /// Follows the catalog until `shutdown`, then stops every consumer and waits for them.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut listener = self.listen(&shutdown).await;
        self.reload_logged(Scope::All).await;
        let mut reconcile = tokio::time::interval(self.deps.config.reconcile_interval);
        reconcile.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = reconcile.tick() => self.reload_logged(Scope::All).await,
                message = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await,
                        None => std::future::pending().await,
                    }
                } => match message {
                    Ok(Some(notification)) => {
                        let scope = match Change::parse(notification.payload()) {
                            Some(Change::Subscription { subscription_id }) => Scope::Subscription(subscription_id),
                            Some(Change::Topic { topic_id }) => Scope::Topic(topic_id),
                            Some(Change::Grant { topic_id, .. }) => Scope::Topic(topic_id),
                            // Ingest quotas: nothing a dispatcher holds.
                            Some(Change::Partner { .. }) => continue,
                            Some(Change::Recovered { subscription_id }) => {
                                self.recovered(subscription_id).await;
                                continue;
                            }
                            None => Scope::All,
                        };
                        self.reload_logged(scope).await;
                    }
                    // The listener reconnected: notifications may have been missed.
                    Ok(None) => self.reload_logged(Scope::All).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "catalog listener failed; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        listener = self.listen(&shutdown).await;
                        self.reload_logged(Scope::All).await;
                    }
                },
            }
        }
        self.stop_all().await;
    }

    /// Lets the replayed messages of a subscription through at once (see [`Change::Recovered`]).
    async fn recovered(&self, id: SubscriptionId) {
        if let Some(entry) = self.entries.lock().await.get(&id) {
            entry.sub.breaker.reset();
        }
    }

    async fn listen(&self, shutdown: &CancellationToken) -> Option<PgListener> {
        loop {
            let attempt = async {
                let mut listener = PgListener::connect_with(&self.deps.pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match attempt.await {
                Ok(listener) => return Some(listener),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for catalog changes; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn reload_logged(&self, scope: Scope) {
        if let Err(e) = self.reload(&scope).await {
            tracing::warn!(error = %e, ?scope, "cannot reload subscriptions; the next reconcile retries");
        }
    }

    async fn reload(&self, scope: &Scope) -> Result<(), sqlx::Error> {
        let pool = &self.deps.pool;
        let read_at = Instant::now();
        let rows: Vec<Row> = match scope {
            Scope::All => sqlx::query_as(SELECT).fetch_all(pool).await?,
            Scope::Subscription(id) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE s.id = $1")))
                    .bind(id.uuid())
                    .fetch_all(pool)
                    .await?
            }
            Scope::Topic(topic) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{SELECT} WHERE s.topic_id = $1"
                )))
                .bind(topic.uuid())
                .fetch_all(pool)
                .await?
            }
        };
        let configs: Vec<SubConfig> = rows
            .into_iter()
            .filter_map(|r| r.into_config(&self.deps, read_at))
            .collect();
        let seen: HashSet<SubscriptionId> = configs.iter().map(|c| c.id).collect();
        let mut entries = self.entries.lock().await;
        // What the scope covered but the database no longer has was deleted.
        let gone: Vec<SubscriptionId> = entries
            .iter()
            .filter(|(id, entry)| {
                !seen.contains(id)
                    && match scope {
                        Scope::All => true,
                        Scope::Subscription(s) => *id == s,
                        Scope::Topic(t) => entry.sub.config().topic == *t,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(entry) = entries.remove(&id)
                && let Some((stop, _)) = entry.consumer
            {
                stop.cancel();
            }
        }
        for config in configs {
            let active = config.status == Status::Active;
            let id = config.id;
            let entry = match entries.get_mut(&id) {
                Some(entry) => {
                    entry.sub.update(config);
                    entry
                }
                None => entries.entry(id).or_insert(Entry {
                    sub: Arc::new(Sub::new(config, self.deps.config.circuit_breaker_after)),
                    consumer: None,
                }),
            };
            // A finished consumer (it found its queue deleted) counts as stopped.
            if entry
                .consumer
                .as_ref()
                .is_some_and(|(_, handle)| handle.is_finished())
            {
                entry.consumer = None;
            }
            match (active, entry.consumer.is_some()) {
                (true, false) => {
                    let stop = CancellationToken::new();
                    let handle = tokio::spawn(consumer::run(
                        Arc::clone(&entry.sub),
                        Arc::clone(&self.deps),
                        stop.clone(),
                    ));
                    entry.consumer = Some((stop, handle));
                    tracing::debug!(subscription = %id, "consumer started");
                }
                (false, true) => {
                    if let Some((stop, _)) = entry.consumer.take() {
                        stop.cancel();
                    }
                    tracing::debug!(subscription = %id, "consumer stopped");
                }
                _ => {}
            }
        }
        metrics::gauge!("anika_dispatcher_consumers")
            .set(entries.values().filter(|e| e.consumer.is_some()).count() as f64);
        Ok(())
    }

    async fn stop_all(&self) {
        let handles: Vec<JoinHandle<()>> = {
            let mut entries = self.entries.lock().await;
            entries
                .values_mut()
                .filter_map(|e| e.consumer.take())
                .map(|(stop, handle)| {
                    stop.cancel();
                    handle
                })
                .collect()
        };
        futures::future::join_all(handles).await;
    }
}
