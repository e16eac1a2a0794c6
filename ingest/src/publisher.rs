//! Publishing committed events to RabbitMQ with many confirms in flight.
//!
//! One long-lived confirm channel (recreated after an error) publishes every
//! envelope handed over by the writers without waiting for the previous
//! confirm: each `PublisherConfirm` is a future collected in a set, so up to
//! [`MAX_IN_FLIGHT`] publishes await their confirm at once. Confirmed events'
//! outbox rows are deleted in batches by a separate task, so a slow `DELETE`
//! never stalls publishing. Anything not confirmed — a nack, a broken channel,
//! RabbitMQ down, a full hand-over queue — keeps its outbox row and is
//! published by the relay.
//!
//! The relay takes outbox rows older than `outbox_relay_after`. So that it and
//! the publisher do not both publish an event the publisher is slow to reach
//! (a broker slower than ingest, a backlog in the hand-over queue), the
//! publisher publishes only events committed less than half that long ago and
//! leaves older ones to the relay: an event then goes out twice only if its
//! confirm and outbox delete take longer than the other half.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anika_shared::{
    amqp::{Broker, EVENTS_EXCHANGE},
    domain::{EventId, TopicId},
    envelope,
    store::events,
};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{Channel, Confirmation, options::BasicPublishOptions};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{backlog::Backlog, meters as m};

/// Publishes awaiting their confirm at most (bounds memory while RabbitMQ is slow).
const MAX_IN_FLIGHT: usize = 20_000;
/// Hand-overs (each one group's events) waiting for the publisher before new ones are left to the relay…
const HAND_OVER_DEPTH: usize = 4096;
/// …and the envelope bytes they may hold, so a slow broker cannot make ingest hoard memory.
const HAND_OVER_BYTES: usize = 64 << 20;
/// A confirm that takes longer than this counts as lost; the relay republishes the event.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often confirmed ids are passed on for deletion, at the latest.
const DELETE_EVERY: Duration = Duration::from_millis(20);
/// Confirmed ids passed on for deletion at once, at the latest.
const DELETE_BATCH: usize = 2_000;
/// At shutdown, how long publishes in flight may take to be confirmed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One committed event to publish.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The event.
    pub(crate) id: EventId,
    /// Its topic: the routing key.
    pub(crate) topic: TopicId,
    /// The message body.
    pub(crate) envelope: Vec<u8>,
    /// Taken before its transaction began: its outbox row's `created_at` is no earlier.
    pub(crate) written_from: Instant,
}

/// Whether the publisher may still publish an event written from `written_from`,
/// or must leave it to the relay, which may already be taking its row.
fn fresh(written_from: Instant, fresh_for: Duration) -> bool {
    written_from.elapsed() < fresh_for
}

/// The writers' end of the publisher.
#[derive(Clone, Debug)]
pub(crate) struct PublishQueue {
    sender: mpsc::Sender<Vec<Outgoing>>,
    /// Envelope bytes handed over and not yet taken by the publisher.
    queued: Arc<AtomicUsize>,
}

fn envelope_bytes(events: &[Outgoing]) -> usize {
    events.iter().map(|e| e.envelope.len()).sum()
}

impl PublishQueue {
    /// Hands committed events over without waiting; if the publisher is behind they stay for the relay.
    pub(crate) fn hand_over(&self, events: Vec<Outgoing>) {
        let (n, bytes) = (events.len(), envelope_bytes(&events));
        let fits = self.queued.fetch_add(bytes, Ordering::AcqRel) + bytes <= HAND_OVER_BYTES;
        if !fits || self.sender.try_send(events).is_err() {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            tracing::debug!(
                events = n,
                "publisher busy or down; leaving events to the outbox relay"
            );
            metrics::counter!(m::LEFT_TO_RELAY).increment(n as u64);
        }
    }
}

/// Starts the publisher and the outbox deleter; they stop once every [`PublishQueue`] is dropped.
///
/// `relay_after` is the relay's `outbox_relay_after`: events older than half of it are left to the relay.
pub(crate) fn start(
    broker: &Arc<Broker>,
    pool: &PgPool,
    relay_after: Duration,
    backlog: &Arc<Backlog>,
    running: crate::Running<'_>,
) -> PublishQueue {
    let crate::Running { tasks, shutdown } = running;
    let (sender, receiver) = mpsc::channel(HAND_OVER_DEPTH);
    let queued = Arc::new(AtomicUsize::new(0));
    let (done, confirmed) = mpsc::channel(256);
    tasks.spawn(delete_confirmed(
        pool.clone(),
        Arc::clone(backlog),
        confirmed,
    ));
    tasks.spawn(
        Publisher {
            broker: Arc::clone(broker),
            receiver,
            done,
            shutdown: shutdown.clone(),
            pending: Vec::new(),
            queued: Arc::clone(&queued),
            fresh_for: relay_after / 2,
        }
        .run(),
    );
    PublishQueue { sender, queued }
}

/// The options of every event publish.
pub(crate) fn publish_options() -> BasicPublishOptions {
    BasicPublishOptions {
        // mandatory: RabbitMQ returns what no queue is bound for, so "routed nowhere" is seen, not guessed.
        mandatory: true,
        // immediate: unsupported by RabbitMQ 3.x and meaningless for durable queues.
        immediate: false,
    }
}

/// Publishes one envelope; the returned future resolves with the broker's confirm.
pub(crate) async fn publish(
    channel: &Channel,
    id: EventId,
    topic: TopicId,
    body: &[u8],
) -> Result<lapin::PublisherConfirm, lapin::Error> {
    channel
        .basic_publish(
            EVENTS_EXCHANGE.into(),
            topic.to_string().into(),
            publish_options(),
            body,
            envelope::properties(id, topic, 0),
        )
        .await
}

/// What a confirm says about the event: may its outbox row go?
pub(crate) fn confirmed(id: EventId, confirmation: &Confirmation) -> bool {
    match confirmation {
        Confirmation::Ack(None) => true,
        Confirmation::Ack(Some(_)) => {
            // No subscription is bound to the topic: nobody is to receive it, which is fine.
            tracing::debug!(event = %id, "event routed to no queue (the topic has no subscriptions)");
            true
        }
        Confirmation::Nack(_) => {
            tracing::warn!(event = %id, "RabbitMQ refused the event (nack); the relay will retry it");
            false
        }
        Confirmation::NotRequested => {
            tracing::warn!(event = %id, "publish without confirm mode; the relay will republish it");
            false
        }
    }
}

type Pending = Pin<
    Box<dyn Future<Output = (EventId, Instant, Option<Result<Confirmation, lapin::Error>>)> + Send>,
>;

struct Publisher {
    broker: Arc<Broker>,
    receiver: mpsc::Receiver<Vec<Outgoing>>,
    done: mpsc::Sender<Vec<Uuid>>,
    shutdown: CancellationToken,
    /// Events taken from the queue when the channel turned out to be closed: tried first on the next one.
    pending: Vec<Outgoing>,
    /// Shared with [`PublishQueue`]: bytes waiting in the hand-over queue.
    queued: Arc<AtomicUsize>,
    /// Events written longer ago than this are left to the relay.
    fresh_for: Duration,
}

/// Why a channel's run ended.
enum End {
    /// Every writer is gone: nothing more will come.
    Finished,
    /// The channel broke; open another.
    Broken(String),
}

impl Publisher {
    async fn run(mut self) {
        let mut backoff = backoff();
        loop {
            let channel = match self.broker.confirm_channel().await {
                Ok(channel) => channel,
                Err(e) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?wait, "cannot publish events; they wait in the outbox");
                    self.leave_pending();
                    if !self.idle(wait).await {
                        break;
                    }
                    continue;
                }
            };
            backoff = self::backoff();
            match self.publish_on(&channel).await {
                End::Finished => {
                    anika_shared::amqp::close_channel(&channel, "ingest publisher stopping").await;
                    break;
                }
                End::Broken(e) => {
                    tracing::warn!(error = %e, "publishing channel failed; events not confirmed wait in the outbox");
                }
            }
        }
        self.leave_pending();
        tracing::debug!("event publisher stopped");
    }

    /// Gives up on the pending events: they keep their outbox rows, and the relay publishes them.
    fn leave_pending(&mut self) {
        if !self.pending.is_empty() {
            metrics::counter!(m::LEFT_TO_RELAY).increment(self.pending.len() as u64);
            self.pending.clear();
        }
    }

    /// Waits `wait` while disconnected, dropping hand-overs (the relay publishes them);
    /// false when nothing more will come.
    async fn idle(&mut self, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                next = self.receiver.recv() => match next {
                    Some(events) => {
                        self.queued.fetch_sub(envelope_bytes(&events), Ordering::AcqRel);
                        metrics::counter!(m::LEFT_TO_RELAY).increment(events.len() as u64);
                    }
                    None => return false,
                },
            }
        }
    }

    /// Publishes `events` without waiting for confirms; on failure the rest are left to the relay,
    /// and so are events too old to be published without racing it.
    async fn publish_all(
        channel: &Channel,
        mut events: Vec<Outgoing>,
        in_flight: &mut FuturesUnordered<Pending>,
        fresh_for: Duration,
    ) -> Result<(), String> {
        let before = events.len();
        events.retain(|e| fresh(e.written_from, fresh_for));
        if events.len() < before {
            metrics::counter!(m::LEFT_TO_RELAY).increment((before - events.len()) as u64);
        }
        let total = events.len();
        for (n, event) in events.into_iter().enumerate() {
            match publish(channel, event.id, event.topic, &event.envelope).await {
                Ok(confirm) => {
                    let started = Instant::now();
                    let id = event.id;
                    in_flight.push(Box::pin(async move {
                        (
                            id,
                            started,
                            tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await.ok(),
                        )
                    }));
                }
                Err(e) => {
                    metrics::counter!(m::LEFT_TO_RELAY).increment((total - n) as u64);
                    return Err(e.to_string());
                }
            }
        }
        Ok(())
    }

    async fn publish_on(&mut self, channel: &Channel) -> End {
        let mut in_flight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut confirmed_ids: Vec<Uuid> = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        let first = Self::publish_all(channel, pending, &mut in_flight, self.fresh_for).await;
        let end = if let Err(e) = first {
            End::Broken(e)
        } else {
            self.run_channel(channel, &mut in_flight, &mut confirmed_ids)
                .await
        };
        // Whatever is still in flight may yet be confirmed: wait a little (bounded at shutdown).
        let limit = if matches!(end, End::Finished) || self.shutdown.is_cancelled() {
            DRAIN_TIMEOUT
        } else {
            Duration::ZERO
        };
        let drained = tokio::time::timeout(limit, async {
            while let Some((id, _, result)) = in_flight.next().await {
                if let Some(Ok(confirmation)) = result
                    && confirmed(id, &confirmation)
                {
                    confirmed_ids.push(id.uuid());
                }
            }
        })
        .await;
        if drained.is_err() && !in_flight.is_empty() {
            tracing::debug!(
                unconfirmed = in_flight.len(),
                "confirms still outstanding; those events stay in the outbox for the relay"
            );
        }
        if !confirmed_ids.is_empty() {
            self.pass_on(&mut confirmed_ids).await;
        }
        end
    }

    /// Publishes hand-overs and collects confirms until the channel breaks or nothing more will come.
    async fn run_channel(
        &mut self,
        channel: &Channel,
        in_flight: &mut FuturesUnordered<Pending>,
        confirmed_ids: &mut Vec<Uuid>,
    ) -> End {
        let mut flush = tokio::time::interval(DELETE_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some((id, started, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    match result {
                        Some(Ok(confirmation)) => {
                            metrics::histogram!(m::CONFIRM_SECONDS).record(started.elapsed().as_secs_f64());
                            if confirmed(id, &confirmation) {
                                confirmed_ids.push(id.uuid());
                            }
                        }
                        Some(Err(e)) => break End::Broken(e.to_string()),
                        None => tracing::warn!(event = %id, "no confirm within {CONFIRM_TIMEOUT:?}; the relay will republish it"),
                    }
                    if confirmed_ids.len() >= DELETE_BATCH {
                        self.pass_on(confirmed_ids).await;
                    }
                }
                next = self.receiver.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let Some(events) = next else { break End::Finished };
                    self.queued.fetch_sub(envelope_bytes(&events), Ordering::AcqRel);
                    if !channel.status().connected() {
                        // Noticed before publishing: these go first on the next channel.
                        self.pending = events;
                        break End::Broken("the channel is closed".to_owned());
                    }
                    if let Err(e) = Self::publish_all(channel, events, in_flight, self.fresh_for).await {
                        break End::Broken(e);
                    }
                }
                _ = flush.tick() => {
                    if !confirmed_ids.is_empty() {
                        self.pass_on(confirmed_ids).await;
                    }
                }
            }
        }
    }

    async fn pass_on(&self, ids: &mut Vec<Uuid>) {
        let batch = std::mem::take(ids);
        // Waiting here is back-pressure from a slow database; the deleter only stops when we do.
        if let Err(e) = self.done.send(batch).await {
            tracing::debug!(
                rows = e.0.len(),
                "the outbox deleter stopped; these confirmed events keep their outbox rows and the relay publishes them again"
            );
        }
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Deletes the outbox rows of confirmed events, many at once.
///
/// Rows the relay holds locked are skipped, not waited for: the relay deletes
/// them itself once it has republished them.
async fn delete_confirmed(
    pool: PgPool,
    backlog: Arc<Backlog>,
    mut confirmed: mpsc::Receiver<Vec<Uuid>>,
) {
    while let Some(mut ids) = confirmed.recv().await {
        while ids.len() < 10 * DELETE_BATCH {
            match confirmed.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        match events::delete_confirmed_outbox_rows(&pool, &ids).await {
            Ok(deleted) => backlog.removed(deleted),
            // The events are published; their rows stay and the relay publishes them once more.
            Err(e) => {
                tracing::warn!(error = %e, events = ids.len(), "cannot delete confirmed outbox rows");
            }
        }
    }
    tracing::debug!("outbox deleter stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_older_than_half_the_relay_delay_is_left_to_the_relay() {
        let fresh_for = Duration::from_millis(2500);
        assert!(fresh(Instant::now(), fresh_for));
        let old = Instant::now() - Duration::from_millis(2600);
        assert!(!fresh(old, fresh_for));
    }
}
