//! Recovery: moving dead letters back to delivery, and re-delivering history from the event log.
//!
//! Both publish with confirms before anything is removed, so an interrupted
//! run (a killed process) loses nothing: what was not yet acknowledged in the
//! dead-letter queue goes back there, what was already published gets
//! delivered (at worst twice, with the same `webhook-id`).

use std::sync::Arc;

use anika_shared::{
    amqp::{Broker, BrokerError, DELIVER_EXCHANGE, dead_letter_queue},
    changes::Change,
    domain::{EventId, PartnerId, SubscriptionId, TopicId},
    envelope::{Envelope, Meta, properties, with_attempts},
};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueuePurgeOptions},
};
use serde_json::{Value, value::RawValue};
use sqlx::{PgPool, types::Json as SqlJson};
use uuid::Uuid;

/// Messages moved or published per confirm round.
const BATCH: usize = 500;

/// Why a recovery stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// RabbitMQ failed; what was not confirmed stays where it was.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The subscription does not exist.
    #[error("no subscription {0}")]
    NoSubscription(SubscriptionId),
    /// The subscription's partner may not read the topic any more.
    #[error(
        "the subscription's partner no longer owns or is granted the topic; nothing can be replayed"
    )]
    NotAllowed,
}

impl From<lapin::Error> for RecoveryError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(e))
    }
}

/// Moves up to `limit` dead letters back to delivery with a fresh attempt budget.
///
/// Each batch is published to `anika.deliver` and confirmed before its messages
/// are acknowledged in the dead-letter queue and their records deleted.
/// `progress` is told how many were moved so far.
pub async fn replay_dead_letters(
    pool: &PgPool,
    broker: &Arc<Broker>,
    subscription: SubscriptionId,
    limit: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, RecoveryError> {
    ensure_subscription(pool, subscription).await?;
    let get = broker.channel().await?;
    let publish = broker.confirm_channel().await?;
    let queue = dead_letter_queue(subscription);
    let routing_key = subscription.to_string();
    let mut moved = 0u64;
    loop {
        let want = limit.map_or(BATCH as u64, |l| (l - moved).min(BATCH as u64));
        if want == 0 {
            break;
        }
        let mut batch = Vec::new();
        while (batch.len() as u64) < want {
            // no_ack false: a message is removed only by the ack after its copy is confirmed.
            match get
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await?
            {
                Some(message) => batch.push(message),
                None => break,
            }
        }
        let Some(last) = batch.last() else { break };
        let last_tag = last.delivery.delivery_tag;
        let mut events = Vec::with_capacity(batch.len());
        for message in &batch {
            let delivery = &message.delivery;
            if let Some(meta) = Meta::read(&delivery.properties) {
                events.push(meta.event.uuid());
            }
            publish
                .basic_publish(
                    DELIVER_EXCHANGE.into(),
                    routing_key.as_str().into(),
                    // mandatory: if the subscription queue is gone, keep the dead letter.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    // A fresh attempt budget: the count starts over.
                    with_attempts(&delivery.properties, 0),
                )
                .await?;
        }
        let returned = publish.wait_for_confirms().await?;
        if !returned.is_empty() {
            return Err(BrokerError::NotConfirmed(
                "the subscription queue is missing; dead letters kept",
            )
            .into());
        }
        // multiple: acknowledges every message fetched on this channel up to the last one.
        get.basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await?;
        sqlx::query("DELETE FROM dead_letters WHERE subscription_id = $1 AND event_id = ANY($2)")
            .bind(subscription.uuid())
            .bind(&events)
            .execute(pool)
            .await?;
        moved += batch.len() as u64;
        progress(moved);
    }
    // Records whose message is no longer in the queue (an interrupted earlier replay) are stale.
    let left = get
        .queue_declare(
            queue.as_str().into(),
            // passive: only read the count.
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?
        .message_count();
    if left == 0 {
        sqlx::query("DELETE FROM dead_letters WHERE subscription_id = $1")
            .bind(subscription.uuid())
            .execute(pool)
            .await?;
    }
    close(get).await;
    close(publish).await;
    if moved > 0 {
        announce(pool, subscription).await;
    }
    metrics::counter!("anika_dead_letters_replayed_total").increment(moved);
    Ok(moved)
}

/// Tells every dispatcher that the operator expects this endpoint to answer again.
/// The messages are already moved, so a failure here only delays them: it is logged.
async fn announce(pool: &PgPool, subscription: SubscriptionId) {
    let sent = async {
        let mut conn = pool.acquire().await?;
        Change::Recovered {
            subscription_id: subscription,
        }
        .notify(&mut conn)
        .await
    }
    .await;
    if let Err(e) = sent {
        tracing::warn!(subscription = %subscription, error = %e, "could not announce the replay; deliveries may wait for the circuit breaker's next probe");
    }
}

/// Empties the dead-letter queue and its records; returns how many messages were dropped.
pub async fn purge_dead_letters(
    pool: &PgPool,
    broker: &Arc<Broker>,
    subscription: SubscriptionId,
) -> Result<u64, RecoveryError> {
    ensure_subscription(pool, subscription).await?;
    let channel = broker.channel().await?;
    let purged = channel
        .queue_purge(
            dead_letter_queue(subscription).into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    sqlx::query("DELETE FROM dead_letters WHERE subscription_id = $1")
        .bind(subscription.uuid())
        .execute(pool)
        .await?;
    close(channel).await;
    Ok(u64::from(purged))
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    publisher_partner_id: Uuid,
    key: Option<String>,
    data: SqlJson<Box<RawValue>>,
}

/// Re-delivers the events of `[since, until)` that the subscription may read now:
/// its partner must own or be granted the topic, and its filter must match.
pub async fn replay_log(
    pool: &PgPool,
    broker: &Arc<Broker>,
    subscription: SubscriptionId,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, RecoveryError> {
    let row: Option<(Uuid, String, Option<SqlJson<Value>>, bool)> = sqlx::query_as(
        "SELECT s.topic_id, t.name, s.filter, \
                (t.owner_partner_id = s.partner_id OR EXISTS \
                    (SELECT 1 FROM grants g WHERE g.topic_id = s.topic_id AND g.partner_id = s.partner_id)) \
         FROM subscriptions s JOIN topics t ON t.id = s.topic_id WHERE s.id = $1",
    )
    .bind(subscription.uuid())
    .fetch_optional(pool)
    .await?;
    let (topic, topic_name, filter, allowed) =
        row.ok_or(RecoveryError::NoSubscription(subscription))?;
    if !allowed {
        return Err(RecoveryError::NotAllowed);
    }
    let topic = TopicId::from(topic);
    let channel = broker.confirm_channel().await?;
    let routing_key = subscription.to_string();
    // The same containment the dispatcher applies, done by PostgreSQL with the GIN index.
    let mut rows = sqlx::query_as::<_, EventRow>(
        "SELECT id, publisher_partner_id, key, data FROM events \
         WHERE topic_id = $1 AND received_at >= $2 AND received_at < $3 \
           AND ($4::jsonb IS NULL OR data @> $4) \
         ORDER BY received_at, id",
    )
    .bind(topic.uuid())
    .bind(since)
    .bind(until)
    .bind(filter)
    .fetch(pool);
    let mut enqueued = 0u64;
    let mut pending = 0usize;
    while let Some(event) = rows.try_next().await? {
        let id = EventId::from(event.id);
        let body = Envelope::encode(
            id,
            topic,
            &topic_name,
            PartnerId::from(event.publisher_partner_id),
            event.key.as_deref(),
            id.timestamp(),
            &event.data.0,
        );
        channel
            .basic_publish(
                DELIVER_EXCHANGE.into(),
                routing_key.as_str().into(),
                // mandatory: a missing queue is an error, not a silent loss.
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                properties(id, topic, 0),
            )
            .await?;
        pending += 1;
        enqueued += 1;
        if pending == BATCH {
            confirm(&channel).await?;
            pending = 0;
            progress(enqueued);
        }
    }
    confirm(&channel).await?;
    progress(enqueued);
    close(channel).await;
    if enqueued > 0 {
        announce(pool, subscription).await;
    }
    metrics::counter!("anika_log_replayed_total").increment(enqueued);
    Ok(enqueued)
}

async fn confirm(channel: &Channel) -> Result<(), RecoveryError> {
    if channel.wait_for_confirms().await?.is_empty() {
        Ok(())
    } else {
        Err(BrokerError::NotConfirmed("the subscription queue is missing").into())
    }
}

async fn ensure_subscription(
    pool: &PgPool,
    subscription: SubscriptionId,
) -> Result<(), RecoveryError> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM subscriptions WHERE id = $1")
        .bind(subscription.uuid())
        .fetch_optional(pool)
        .await?;
    exists
        .map(|_| ())
        .ok_or(RecoveryError::NoSubscription(subscription))
}

async fn close(channel: Channel) {
    let _ = channel.close(200, "done".into()).await;
}
