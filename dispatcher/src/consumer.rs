//! One consumer per active subscription queue: connects, repairs the queue's topology,
//! hands each message to `job`, and on the way out lets what is in flight finish.
//!
//! A message leaves its queue only after it was delivered, moved to a retry or
//! dead-letter queue (with a confirmed publish), or skipped with a recorded
//! reason — and after that record is committed (see `writer`). Unordered
//! subscriptions deliver up to their prefetch in parallel; ordered ones one at
//! a time, retrying in place so nothing overtakes a failing event.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anika_shared::amqp::{SubscriptionQueues, bounded, subscription_queue};
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    Channel, Consumer,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;

use crate::{
    ack::Unsettled,
    deps::Deps,
    job,
    subscription::{Sub, SubConfig},
    subscription_rows,
};

/// Consumes the subscription's queue until `stop`; reconnects when the broker goes away.
pub async fn run(sub: Arc<Sub>, deps: Arc<Deps>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        match consume(&sub, &deps, &stop).await {
            Ok(Ended::Stopped) | Ok(Ended::Gone) => return,
            Ok(Ended::Interrupted) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(subscription = %sub.id, error = %e, ?backoff, "consumer failed; reconnecting");
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
    }
}

enum Ended {
    /// Asked to stop.
    Stopped,
    /// The subscription no longer exists.
    Gone,
    /// The broker ended the consumer (connection lost, queue deleted).
    Interrupted,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// How often a consumer checks that its channel is still open.
const LIVENESS_CHECK: Duration = Duration::from_secs(2);

/// A consumer on a subscription's queue, and what it was started with.
struct Opened {
    channel: Channel,
    consumer: Consumer,
    config: Arc<SubConfig>,
}

async fn consume(
    sub: &Arc<Sub>,
    deps: &Arc<Deps>,
    stop: &CancellationToken,
) -> Result<Ended, Failure> {
    let opened = match open(sub, deps, stop).await? {
        Ok(opened) => opened,
        Err(ended) => return Ok(ended),
    };
    let Opened {
        channel,
        mut consumer,
        config,
    } = opened;
    let tag = consumer.tag();
    let unsettled = Arc::new(Unsettled::default());
    // The deliveries in progress, driven by this task: a task per message cost a fifth
    // of the consumer's CPU in scheduling, and one subscription needs well under a core.
    let mut in_flight = FuturesUnordered::new();
    // A consumer whose channel died must end even if lapin never ends its stream: this
    // check does not rely on the stream to notice.
    let mut liveness = tokio::time::interval(LIVENESS_CHECK);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            // Stop first: an ordered consumer that requeued its head at shutdown must not
            // go on to the next message.
            biased;
            () = stop.cancelled() => break Ended::Stopped,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            _ = liveness.tick() => if !channel.status().connected() {
                tracing::warn!(subscription = %sub.id, "the consumer's channel is closed; reconnecting");
                break Ended::Interrupted;
            },
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let ticket = unsettled.track(delivery.delivery_tag, delivery.acker.clone());
                    let work = job::process(Arc::clone(sub), Arc::clone(deps), delivery, ticket, stop.clone());
                    if config.ordered {
                        work.await;
                    } else {
                        in_flight.push(work);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(subscription = %sub.id, error = %e, "consumer interrupted");
                    break Ended::Interrupted;
                }
                None => break Ended::Interrupted,
            }
        }
    };
    // Stop taking new messages, let the ones in flight finish within the grace period,
    // wait until their outcomes are written and acked, then close: whatever is left
    // unacknowledged goes back to the queue.
    if let Err(e) = bounded(
        "basic.cancel",
        channel.basic_cancel(tag, BasicCancelOptions::default()),
    )
    .await
    {
        tracing::debug!(subscription = %sub.id, error = %e, "cannot cancel the consumer; closing its channel ends it");
    }
    let drained = async { while in_flight.next().await.is_some() {} };
    if tokio::time::timeout(deps.config.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(subscription = %sub.id, "deliveries still in flight at the end of the grace period; they will be redelivered");
    }
    drop(in_flight);
    deps.writer.flushed().await;
    anika_shared::amqp::close_channel(&channel, "consumer stopped").await;
    Ok(ended)
}

/// Connects, repairs the queue's topology and starts consuming; `Ok(Err(_))` when there is
/// nothing to consume (asked to stop, or the subscription is gone).
async fn open(
    sub: &Arc<Sub>,
    deps: &Arc<Deps>,
    stop: &CancellationToken,
) -> Result<Result<Opened, Ended>, Failure> {
    let Some(conn) = deps.broker.connection_with_retry(stop).await else {
        return Ok(Err(Ended::Stopped));
    };
    // Read once connected (waiting for the broker may take long). The queue may have been
    // deleted with its subscription: never resurrect it. And the standing comes fresh from
    // the catalog: a cached "revoked" whose grant is back (a notification not heard yet)
    // must not unbind the queue below.
    let Some(config) = subscription_rows::refresh(sub, deps, Instant::now()).await? else {
        return Ok(Err(Ended::Gone));
    };
    let channel = bounded("channel.open", conn.create_channel()).await?;
    // Repair drift (a queue deleted by hand, a binding lost): declaring is idempotent.
    let topology = deps.broker.topology();
    // Every step bounded (the topology's calls bound themselves): a node that is starting
    // or stopping may leave a request unanswered, and this consumer must then reconnect
    // rather than wait forever.
    topology
        .declare_subscription(
            &channel,
            SubscriptionQueues {
                id: sub.id,
                topic: config.topic,
                ordered: config.ordered,
                receive_topic: config.allowed,
            },
        )
        .await?;
    if !config.allowed {
        topology
            .unbind_from_topic(&channel, sub.id, config.topic)
            .await?;
    }
    let prefetch = if config.ordered {
        deps.config.dispatcher.prefetch.min(50)
    } else {
        deps.config.dispatcher.prefetch
    };
    // prefetch bounds the unacknowledged messages this consumer holds; of those, at most
    // max_in_flight are on the wire at once (the rest wait their turn here, not in the queue).
    bounded(
        "basic.qos",
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let consumer = bounded(
        "basic.consume",
        channel.basic_consume(
            subscription_queue(sub.id).into(),
            "".into(),
            // no_ack false: manual acks, so a crash returns every unsettled message to the queue.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(Ok(Opened {
        channel,
        consumer,
        config,
    }))
}
