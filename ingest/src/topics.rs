//! The topics ingest posts into, cached in memory with their compiled schemas.
//!
//! The hot path must not pay a database round trip per request just to learn
//! a topic's owner, name and schema. The catalog announces every change of a
//! topic (`Change::Topic`) over `NOTIFY`; a listener drops the cached entry, so
//! the next request reloads it. A lost listener connection may have missed
//! notifications, so the whole cache is dropped when it reconnects.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anika_shared::{
    changes::{CHANNEL, Change},
    domain::{PartnerId, TopicId},
    store,
};
use backon::{ExponentialBuilder, Retryable};
use sqlx::{PgPool, postgres::PgListener, types::Json as SqlJson};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    quotas::Quotas,
};

/// Entries kept before the cache starts over (topics are few; this only bounds a pathological case).
const CAPACITY: usize = 100_000;

/// What posting into a topic needs to know.
pub(crate) struct Topic {
    /// The topic.
    pub(crate) id: TopicId,
    /// The partner that owns it (the only one allowed to post).
    pub(crate) owner: PartnerId,
    /// Its name, copied into every envelope.
    pub(crate) name: String,
    /// The compiled schema `data` must satisfy, if the topic has one.
    pub(crate) validator: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("has_schema", &self.validator.is_some())
            .finish_non_exhaustive()
    }
}

/// Topic id → topic, filled on demand and emptied by catalog notifications.
#[derive(Debug, Default)]
pub(crate) struct TopicCache {
    entries: RwLock<HashMap<TopicId, Arc<Topic>>>,
    /// Bumped by every invalidation: a load that started before one must not be cached.
    epoch: AtomicU64,
    /// False while the change listener is down: without notifications nothing may be cached.
    following: AtomicBool,
}

impl TopicCache {
    /// The topic, from memory or (once) from PostgreSQL; `None` if it does not exist.
    pub(crate) async fn get(&self, pool: &PgPool, id: TopicId) -> Result<Option<Arc<Topic>>> {
        if let Some(topic) = self.entries.read().expect("topic cache lock").get(&id) {
            return Ok(Some(Arc::clone(topic)));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let row = store::topics::get_topic_definition(pool, id.uuid()).await?;
        let Some(row) = row else {
            // Not cached: topics are created without a notification, so a miss must look again next time.
            return Ok(None);
        };
        let validator = row
            .schema
            .map(|SqlJson(schema)| jsonschema::draft202012::new(&schema))
            .transpose()
            .map_err(|e| Error::Schema(format!("topic {id}: {e}")))?;
        let topic = Arc::new(Topic {
            id,
            owner: row.owner_partner_id.into(),
            name: row.name,
            validator,
        });
        let mut entries = self.entries.write().expect("topic cache lock");
        // Checked under the write lock: an invalidation bumps the epoch under the same lock.
        if self.epoch.load(Ordering::Acquire) == epoch && self.following.load(Ordering::Acquire) {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(id, Arc::clone(&topic));
        }
        Ok(Some(topic))
    }

    /// Forgets one topic (its name, schema or existence changed).
    pub(crate) fn invalidate(&self, id: TopicId) {
        let mut entries = self.entries.write().expect("topic cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(&id);
    }

    /// Forgets everything (notifications may have been missed) and says whether to cache from now on.
    pub(crate) fn reset(&self, following: bool) {
        let mut entries = self.entries.write().expect("topic cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.following.store(following, Ordering::Release);
        entries.clear();
    }
}

/// Subscribes to catalog changes; done before the first request is served so no change is missed.
pub(crate) async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Applies catalog changes to the topic cache and the partner quotas until `shutdown`.
///
/// While the listener is down the cache is empty and stays empty (every request
/// reads the topic from PostgreSQL) and quotas are reloaded every second; once
/// it listens again, caching resumes.
pub(crate) async fn follow_changes(
    pool: PgPool,
    listener: PgListener,
    cache: Arc<TopicCache>,
    quotas: Arc<Quotas>,
    shutdown: CancellationToken,
) {
    let reset = |following: bool| {
        cache.reset(following);
        quotas.reset(following);
    };
    reset(true);
    let mut listener = Some(listener);
    loop {
        let mut current = match listener.take() {
            Some(current) => current,
            None => {
                let reconnect = || listen(&pool);
                let retrying = reconnect
                    .retry(
                        ExponentialBuilder::default()
                            .with_min_delay(Duration::from_millis(100))
                            .with_max_delay(Duration::from_secs(5))
                            .with_jitter()
                            .without_max_times(),
                    )
                    .notify(|e, wait| tracing::warn!(error = %e, ?wait, "cannot listen for catalog changes; retrying"));
                let current = tokio::select! {
                    current = retrying => current,
                    () = shutdown.cancelled() => return,
                };
                match current {
                    Ok(current) => {
                        tracing::info!(
                            "listening for catalog changes again; topic cache re-enabled"
                        );
                        reset(true);
                        current
                    }
                    Err(_) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                next = current.try_recv() => next,
                () = shutdown.cancelled() => return,
            };
            match next {
                Ok(Some(notification)) => match Change::parse(notification.payload()) {
                    Some(Change::Topic { topic_id }) => cache.invalidate(topic_id),
                    Some(Change::Partner { partner_id }) => quotas.invalidate(partner_id),
                    Some(_) => {}
                    None => tracing::debug!(
                        payload = notification.payload(),
                        "unknown catalog change; ignored"
                    ),
                },
                // Reconnected by sqlx: whatever changed meanwhile went unheard.
                Ok(None) => reset(true),
                Err(e) => {
                    tracing::warn!(error = %e, "catalog change listener failed; topic cache disabled until it is back");
                    reset(false);
                    break;
                }
            }
        }
    }
}
