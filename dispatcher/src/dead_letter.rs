//! Moving a message to its subscription's dead-letter queue: a confirmed publish with the
//! last error in a header, then the `dead_letters` row and the partner's `dead_letter.added`
//! count, then the ack.

use anika_shared::{
    amqp::{DEAD_EXCHANGE, LAST_ERROR_HEADER, long_string},
    domain::{EventId, SubscriptionId},
    envelope::with_attempts,
    store,
};
use bytes::Bytes;

use crate::{ack::Ticket, deps::Deps, meters, system, writer::Settle};

/// The message to dead-letter, as it came from its queue.
pub struct Message<'a> {
    /// Its subscription.
    pub subscription: SubscriptionId,
    /// Its event.
    pub event: EventId,
    /// The delivery envelope, byte for byte.
    pub body: &'a Bytes,
    /// Its AMQP properties.
    pub properties: &'a lapin::BasicProperties,
    /// Settles it.
    pub acker: &'a Ticket,
}

/// Dead-letters `message` after `attempts` attempts, the last of which failed with `error`.
/// Whatever step fails, the message is requeued (so nothing is lost; a copy in the
/// dead-letter queue may be doubled).
pub async fn dead_letter(deps: &Deps, message: Message<'_>, attempts: u32, error: &str) {
    let (sub, event) = (message.subscription, message.event);
    let mut props = with_attempts(message.properties, attempts);
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(LAST_ERROR_HEADER.into(), long_string(error));
    props = props.with_headers(headers);
    let published = deps
        .publisher
        .publish(DEAD_EXCHANGE, &sub.to_string(), message.body, props)
        .await;
    if let Err(e) = published {
        tracing::warn!(subscription = %sub, event = %event, error = %e, "cannot dead-letter; requeued");
        deps.writer.settle(Settle::Requeue(message.acker.clone()));
        return;
    }
    match record(deps, sub, event, attempts, error).await {
        Ok(()) => {
            metrics::counter!(meters::DELIVERIES, "outcome" => "dead_lettered").increment(1);
            tracing::warn!(subscription = %sub, event = %event, attempts, error, "dead-lettered");
            deps.writer.settle(Settle::Ack(message.acker.clone()));
        }
        Err(e) => {
            // The copy in the dead-letter queue stays; the original comes back and
            // is dead-lettered again once PostgreSQL answers (a duplicate there, nothing lost).
            tracing::warn!(subscription = %sub, event = %event, error = %e, "cannot record a dead letter; requeued");
            deps.writer.settle(Settle::Requeue(message.acker.clone()));
        }
    }
}

/// The record and the partner's `dead_letter.added` count commit together; the notice, if
/// due, is published after.
async fn record(
    deps: &Deps,
    sub: SubscriptionId,
    event: EventId,
    attempts: u32,
    error: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = deps.pool.begin().await?;
    let last_error = crate::deliver::text(error.as_bytes());
    store::attempts::record_dead_letter(
        &mut *tx,
        sub.uuid(),
        event.uuid(),
        attempts as i32,
        &last_error,
    )
    .await?;
    let written =
        system::dead_lettered(&mut tx, sub, deps.config.dispatcher.system_notice_interval).await?;
    tx.commit().await?;
    system::publish_all(deps, written).await;
    Ok(())
}
