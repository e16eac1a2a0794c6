//! The dispatcher's view of the catalog: every subscription, its ACL standing, and its consumer.
//!
//! It follows the catalog live through `LISTEN anika_catalog` (a change reloads
//! just the affected subscriptions) and re-reads everything periodically and
//! after a lost listener connection, so a missed notification heals itself.
//! An active subscription has a running consumer; any other has none.
//!
//! A cached "revoked" or "paused" is never trusted on its own for a message
//! the cache may predate: `Sub::refresh` asks PostgreSQL first (see
//! `job::Job::admit`), so a grant the dispatcher has not heard of yet is
//! never answered with a skip.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use anika_shared::{
    changes::{CHANNEL, Change},
    domain::{SubscriptionId, SubscriptionStatus},
};
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    consumer,
    deps::Deps,
    meters,
    subscription::{Sub, SubConfig},
    subscription_rows::{self, Scope},
};

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
        let mut reconcile = tokio::time::interval(self.deps.config.dispatcher.reconcile_interval);
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
        let configs: Vec<SubConfig> = subscription_rows::load(&self.deps, scope).await?;
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
            let active = config.status == SubscriptionStatus::Active;
            let id = config.id;
            let entry = match entries.get_mut(&id) {
                Some(entry) => {
                    entry.sub.update(config);
                    entry
                }
                None => entries.entry(id).or_insert(Entry {
                    sub: Arc::new(Sub::new(
                        config,
                        self.deps.config.dispatcher.circuit_breaker_after,
                    )),
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
        metrics::gauge!(meters::CONSUMERS)
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
