//! Recovery: moving dead letters back to delivery, and re-delivering history from the event log.
//!
//! Both publish with confirms before anything is removed, and each message's own
//! confirm decides its fate: a dead letter leaves its queue (and its record is
//! deleted) only once the broker confirmed its copy; one the broker refused
//! (a nack, say from a full queue with `overflow: reject-publish`) or returned
//! (no queue bound) stays dead-lettered. An interrupted run (a killed process)
//! loses nothing: what was not yet acknowledged in the dead-letter queue goes
//! back there, what was already published gets delivered (at worst twice, with
//! the same `webhook-id`).
//!
//! A replay from the log runs on a PostgreSQL connection of its own (a long
//! stream must not hold one of the pool that answers requests and writes
//! acks), at most one per subscription across every process (an advisory lock
//! on that connection), over a bounded window, at a paced rate.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use anika_shared::{
    amqp::{Broker, BrokerError, DELIVER_EXCHANGE, bounded, dead_letter_queue},
    audit::Changes,
    changes::Change,
    domain::{EventId, PartnerId, SubscriptionId, TopicId},
    envelope::{Envelope, EventHead, Meta, properties, with_attempts},
    store::{attempts, events, subscriptions},
};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use lapin::{
    Channel, Confirmation, PublisherConfirm,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueuePurgeOptions,
    },
};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, postgres::PgConnectOptions};

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
    /// Another replay from the log of this subscription is running (in any process).
    #[error("a replay from the log of this subscription is already running; wait until it ends")]
    Busy,
}

/// A window of the event log to re-deliver: `[since, until)`, not empty and at most as long
/// as the configured `ANIKA_MAX_REPLAY_WINDOW`; only [`Window::new`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
}

/// Why a window cannot be replayed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// `since` is not before `until`.
    #[error("`since` must be before `until`")]
    Empty,
    /// The window is longer than the limit.
    #[error("the window is longer than the limit of {limit}; replay it in parts")]
    TooLong {
        /// The limit, for people (`31days`).
        limit: String,
    },
}

impl Window {
    /// The window `[since, until)` if it is not empty and at most `max` long.
    pub fn new(
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        max: Duration,
    ) -> Result<Self, WindowError> {
        if since >= until {
            return Err(WindowError::Empty);
        }
        let length = (until - since).to_std().unwrap_or(Duration::MAX);
        if length > max {
            return Err(WindowError::TooLong {
                limit: humantime::format_duration(max).to_string(),
            });
        }
        Ok(Self { since, until })
    }

    /// The start (inclusive).
    pub fn since(&self) -> DateTime<Utc> {
        self.since
    }

    /// The end (exclusive).
    pub fn until(&self) -> DateTime<Utc> {
        self.until
    }
}

/// What a dead-letter replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeadLettersReplayed {
    /// Moved back to delivery (confirmed by the broker) and removed from the dead-letter queue.
    pub replayed: u64,
    /// Refused or returned by the broker: still in the dead-letter queue, with their records.
    pub kept: u64,
}

/// What a replay from the log did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogReplayed {
    /// Published and confirmed by the broker.
    pub enqueued: u64,
    /// Refused or returned by the broker (the replay stopped at the first): not enqueued.
    pub refused: u64,
}

impl DeadLettersReplayed {
    /// What its audit entry records: the counts and the limit asked for.
    pub fn audited(&self, limit: Option<u64>) -> Changes {
        Changes::new()
            .created("replayed", &self.replayed)
            .created("kept", &self.kept)
            .created("limit", &limit)
    }
}

impl LogReplayed {
    /// What its audit entry records: the window and the counts.
    pub fn audited(&self, window: &Window) -> Changes {
        Changes::new()
            .created("since", &window.since())
            .created("until", &window.until())
            .created("enqueued", &self.enqueued)
            .created("refused", &self.refused)
    }
}

/// What a purge's audit entry records: how many were dropped.
pub fn purge_audited(purged: u64) -> Changes {
    Changes::new().created("purged", &purged)
}

/// How a replay from the log runs: its own PostgreSQL connection, at a paced rate.
#[derive(Clone, Debug)]
pub struct LogReplay<'a> {
    /// The PostgreSQL URL for the replay's own connection.
    pub database_url: &'a str,
    /// Publishes per second at most (`ANIKA_REPLAY_RATE_PER_S`).
    pub rate_per_s: u32,
}

/// Whether the broker took a message: confirmed and routed to a queue.
fn taken(confirmation: &Confirmation) -> bool {
    matches!(confirmation, Confirmation::Ack(None))
}

impl From<lapin::Error> for RecoveryError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(e))
    }
}

/// Moves up to `limit` dead letters back to delivery with a fresh attempt budget.
///
/// Each batch is published to `anika.deliver`; each message whose copy the broker
/// confirmed is then acknowledged in the dead-letter queue and its record deleted,
/// and each one it refused is requeued there and keeps its record. The replay stops
/// after the first batch with a refusal (what the broker refuses now it would refuse
/// again at once). `progress` is told how many were moved so far.
pub async fn replay_dead_letters(
    pool: &PgPool,
    broker: &Arc<Broker>,
    subscription: SubscriptionId,
    limit: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<DeadLettersReplayed, RecoveryError> {
    ensure_subscription(pool, subscription).await?;
    let get = broker.channel().await?;
    let publish = broker.confirm_channel().await?;
    let channels = Channels {
        get: &get,
        publish: &publish,
    };
    let outcome = move_dead_letters(pool, channels, subscription, limit, progress).await;
    // Closing the channel returns whatever was fetched and not acknowledged to the queue.
    anika_shared::amqp::close_channel(&get, "replay").await;
    anika_shared::amqp::close_channel(&publish, "replay").await;
    let outcome = outcome?;
    if outcome.replayed > 0 {
        announce(pool, subscription).await;
    }
    metrics::counter!(crate::meters::DEAD_LETTERS_REPLAYED).increment(outcome.replayed);
    Ok(outcome)
}

/// The two channels a dead-letter replay uses: one to take messages from the dead-letter
/// queue (acked only once their copy is confirmed), one in confirm mode to publish copies.
#[derive(Clone, Copy)]
struct Channels<'a> {
    get: &'a Channel,
    publish: &'a Channel,
}

async fn move_dead_letters(
    pool: &PgPool,
    Channels { get, publish }: Channels<'_>,
    subscription: SubscriptionId,
    limit: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<DeadLettersReplayed, RecoveryError> {
    let queue = dead_letter_queue(subscription);
    let routing_key = subscription.to_string();
    let mut outcome = DeadLettersReplayed::default();
    while outcome.kept == 0 {
        let want = limit.map_or(BATCH as u64, |l| (l - outcome.replayed).min(BATCH as u64));
        if want == 0 {
            break;
        }
        let mut batch = Vec::new();
        while (batch.len() as u64) < want {
            // no_ack false: a message is removed only by the ack after its copy is confirmed.
            match bounded(
                "basic.get",
                get.basic_get(queue.as_str().into(), BasicGetOptions::default()),
            )
            .await?
            {
                Some(message) => batch.push(message),
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let mut confirms = Vec::with_capacity(batch.len());
        for message in &batch {
            let delivery = &message.delivery;
            let confirm = bounded(
                "basic.publish",
                publish.basic_publish(
                    DELIVER_EXCHANGE.into(),
                    routing_key.as_str().into(),
                    // mandatory: if the subscription queue is gone, the copy comes back and
                    // the dead letter is kept.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    // A fresh attempt budget: the count starts over.
                    with_attempts(&delivery.properties, 0),
                ),
            )
            .await?;
            confirms.push(confirm);
        }
        let mut moved = Vec::with_capacity(batch.len());
        for (message, confirm) in batch.iter().zip(confirms) {
            let tag = message.delivery.delivery_tag;
            // Unconfirmed in time: an error, so the channel closes and the message stays.
            if taken(&bounded("a replayed copy's confirm", confirm).await?) {
                // multiple false: this message alone; a refused one before it stays.
                bounded(
                    "basic.ack",
                    get.basic_ack(tag, BasicAckOptions { multiple: false }),
                )
                .await?;
                if let Some(meta) = Meta::read(&message.delivery.properties) {
                    moved.push(meta.event.uuid());
                }
                outcome.replayed += 1;
            } else {
                // requeue true: the refused copy is gone, so the dead letter must stay.
                bounded(
                    "basic.nack",
                    get.basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        },
                    ),
                )
                .await?;
                outcome.kept += 1;
            }
        }
        attempts::delete_dead_letters_of_events(pool, subscription.uuid(), &moved).await?;
        progress(outcome.replayed);
    }
    if outcome.kept > 0 {
        tracing::warn!(subscription = %subscription, kept = outcome.kept, replayed = outcome.replayed,
            "the broker refused some replayed dead letters; they stay in the dead-letter queue");
    } else {
        forget_stale_records(pool, get, subscription).await?;
    }
    Ok(outcome)
}

/// Deletes the records whose message is no longer in the dead-letter queue (an earlier
/// replay interrupted between its ack and its delete), once the queue is empty.
///
/// A dead letter is published before it is recorded, so a record older than the moment
/// the queue was seen empty has no message left; a newer one (recorded while the queue
/// was being counted) has, and is kept.
async fn forget_stale_records(
    pool: &PgPool,
    channel: &Channel,
    subscription: SubscriptionId,
) -> Result<(), RecoveryError> {
    let before = attempts::clock_now(pool).await?;
    let left = bounded(
        "a passive queue.declare",
        anika_shared::amqp::message_count(channel, &dead_letter_queue(subscription)),
    )
    .await?;
    if left == 0 {
        attempts::delete_dead_letters_before(pool, subscription.uuid(), before).await?;
    }
    Ok(())
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
    let purged = bounded(
        "queue.purge",
        channel.queue_purge(
            dead_letter_queue(subscription).into(),
            QueuePurgeOptions::default(),
        ),
    )
    .await?;
    attempts::delete_dead_letters(pool, subscription.uuid()).await?;
    anika_shared::amqp::close_channel(&channel, "replay").await;
    Ok(u64::from(purged))
}

/// What a replay from the log re-delivers: one subscription's events of a window.
#[derive(Clone, Copy, Debug)]
pub struct LogSlice {
    /// The subscription that receives them again.
    pub subscription: SubscriptionId,
    /// The events' receive times.
    pub window: Window,
}

/// Re-delivers the events of the slice's window that its subscription may read now:
/// its partner must own or be granted the topic, and its filter must match.
///
/// Counts only what the broker confirmed; stops at the first refusal. Refuses to
/// start while another replay of the same subscription runs ([`RecoveryError::Busy`]).
pub async fn replay_log(
    pool: &PgPool,
    broker: &Arc<Broker>,
    how: &LogReplay<'_>,
    slice: LogSlice,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<LogReplayed, RecoveryError> {
    let subscription = slice.subscription;
    let options = how
        .database_url
        .parse::<PgConnectOptions>()?
        // A paced stream runs for minutes by design: not a slow statement worth a warning.
        .disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    // Session-level: held until this connection closes, also when the process dies.
    let locked = events::try_advisory_lock(&mut conn, replay_lock_key(subscription)).await?;
    if !locked {
        close_connection(conn).await;
        return Err(RecoveryError::Busy);
    }
    let outcome = stream_window(&mut conn, broker, how, slice, progress).await;
    close_connection(conn).await;
    let outcome = outcome?;
    if outcome.enqueued > 0 {
        announce(pool, subscription).await;
    }
    metrics::counter!(crate::meters::LOG_REPLAYED).increment(outcome.enqueued);
    Ok(outcome)
}

/// The advisory-lock key of a subscription's log replay: its id's random half, in a
/// namespace of its own so that it meets no other lock.
fn replay_lock_key(subscription: SubscriptionId) -> i64 {
    const NAMESPACE: i64 = 0x616e_696b_6172_706c; // "anikarpl"
    let bytes = subscription.uuid().into_bytes();
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[8..]);
    i64::from_be_bytes(tail) ^ NAMESPACE
}

async fn close_connection(conn: PgConnection) {
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the replay's connection failed; the server drops it");
    }
}

async fn stream_window(
    conn: &mut PgConnection,
    broker: &Arc<Broker>,
    how: &LogReplay<'_>,
    LogSlice {
        subscription,
        window,
    }: LogSlice,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<LogReplayed, RecoveryError> {
    let source = subscriptions::get_replay_source(&mut *conn, subscription.uuid())
        .await?
        .ok_or(RecoveryError::NoSubscription(subscription))?;
    if !source.allowed {
        return Err(RecoveryError::NotAllowed);
    }
    let topic = TopicId::from(source.topic_id);
    let topic_name = source.topic_name;
    let channel = broker.confirm_channel().await?;
    let routing_key = subscription.to_string();
    let pace = Pace::new(how.rate_per_s);
    // The same containment the dispatcher applies, done by PostgreSQL with the GIN index.
    let mut rows = events::stream_replay_events(
        &mut *conn,
        topic.uuid(),
        window.since(),
        window.until(),
        source.filter,
    );
    let mut outcome = LogReplayed::default();
    let mut pending: VecDeque<PublisherConfirm> = VecDeque::with_capacity(BATCH);
    let mut published = 0u64;
    while outcome.refused == 0 {
        let Some(event) = rows.try_next().await? else {
            break;
        };
        let id = EventId::from(event.id);
        let body = Envelope::encode(
            &EventHead {
                id,
                topic_id: topic,
                topic: &topic_name,
                publisher: PartnerId::from(event.publisher_partner_id),
                key: event.key.as_deref(),
                received_at: id.timestamp(),
            },
            &event.data.0,
        );
        let confirm = bounded(
            "basic.publish",
            channel.basic_publish(
                DELIVER_EXCHANGE.into(),
                routing_key.as_str().into(),
                // mandatory: a missing queue is a refusal, not a silent loss.
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                properties(id, topic, 0),
            ),
        )
        .await?;
        pending.push_back(confirm);
        published += 1;
        if pending.len() == BATCH {
            settle(&mut pending, BATCH / 2, &mut outcome).await?;
            progress(outcome.enqueued);
        }
        pace.wait(published).await;
    }
    drop(rows);
    settle(&mut pending, 0, &mut outcome).await?;
    progress(outcome.enqueued);
    anika_shared::amqp::close_channel(&channel, "replay").await;
    if outcome.refused > 0 {
        tracing::warn!(subscription = %subscription, enqueued = outcome.enqueued, refused = outcome.refused,
            "the broker refused replayed events; the replay stopped");
    }
    Ok(outcome)
}

/// Awaits the oldest confirms until `keep` are left, counting each one's outcome.
async fn settle(
    pending: &mut VecDeque<PublisherConfirm>,
    keep: usize,
    outcome: &mut LogReplayed,
) -> Result<(), RecoveryError> {
    while pending.len() > keep {
        let confirm = pending.pop_front().expect("more than `keep` are pending");
        if taken(&bounded("a replayed event's confirm", confirm).await?) {
            outcome.enqueued += 1;
        } else {
            outcome.refused += 1;
        }
    }
    Ok(())
}

/// Keeps a replay at or under its rate, so that a large one cannot take the broker's
/// and the subscription's whole capacity at once.
struct Pace {
    started: tokio::time::Instant,
    per_message: Duration,
}

impl Pace {
    fn new(rate_per_s: u32) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            per_message: Duration::from_secs(1) / rate_per_s.max(1),
        }
    }

    /// Waits until `published` messages are due.
    async fn wait(&self, published: u64) {
        let due = self.started + self.per_message * u32::try_from(published).unwrap_or(u32::MAX);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    }
}

async fn ensure_subscription(
    pool: &PgPool,
    subscription: SubscriptionId,
) -> Result<(), RecoveryError> {
    if subscriptions::subscription_exists(pool, subscription.uuid()).await? {
        Ok(())
    } else {
        Err(RecoveryError::NoSubscription(subscription))
    }
}
