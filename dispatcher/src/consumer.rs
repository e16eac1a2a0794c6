//! One consumer per active subscription queue, and what happens to each message.
//!
//! A message leaves its queue only after it was delivered, moved to a retry or
//! dead-letter queue (with a confirmed publish), or skipped with a recorded
//! reason — and after that record is committed (see `writer`). Unordered
//! subscriptions deliver up to their prefetch in parallel; ordered ones one at
//! a time, retrying in place so nothing overtakes a failing event.

use std::{sync::Arc, time::Duration};

use anika_shared::{
    amqp::{DEAD_EXCHANGE, LAST_ERROR_HEADER, long_string, retry_name, subscription_queue},
    changes::Change,
    envelope::{Envelope, Meta, with_attempts},
};
use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Deps,
    ack::{Ticket, Unsettled},
    deliver::Outcome,
    registry::{Status, Sub, SubConfig},
    writer::{AttemptRow, Settle, SkipRow},
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

async fn consume(
    sub: &Arc<Sub>,
    deps: &Arc<Deps>,
    stop: &CancellationToken,
) -> Result<Ended, Box<dyn std::error::Error + Send + Sync>> {
    // The queue may have been deleted with its subscription: never resurrect it.
    let exists: Option<String> =
        sqlx::query_scalar("SELECT status FROM subscriptions WHERE id = $1")
            .bind(sub.id.uuid())
            .fetch_optional(&deps.pool)
            .await?;
    if exists.is_none() {
        return Ok(Ended::Gone);
    }
    let Some(conn) = deps.broker.connection_with_retry(stop).await else {
        return Ok(Ended::Stopped);
    };
    let config = sub.config();
    let channel = conn.create_channel().await?;
    // Repair drift (a queue deleted by hand, a binding lost): declaring is idempotent.
    deps.broker
        .topology()
        .declare_subscription(
            &channel,
            sub.id,
            config.topic,
            config.ordered,
            config.allowed,
        )
        .await?;
    if !config.allowed {
        deps.broker
            .topology()
            .unbind_from_topic(&channel, sub.id, config.topic)
            .await?;
    }
    let prefetch = if config.ordered {
        deps.config.prefetch.min(50)
    } else {
        deps.config.prefetch
    };
    // prefetch bounds the unacknowledged messages this consumer holds (its parallelism).
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            subscription_queue(sub.id).into(),
            "".into(),
            // no_ack false: manual acks, so a crash returns every unsettled message to the queue.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let tag = consumer.tag();
    let unsettled = Arc::new(Unsettled::default());
    // The deliveries in progress, driven by this task: a task per message cost a fifth
    // of the consumer's CPU in scheduling, and one subscription needs well under a core.
    let mut in_flight = FuturesUnordered::new();
    let ended = loop {
        tokio::select! {
            // Stop first: an ordered consumer that requeued its head at shutdown must not
            // go on to the next message.
            biased;
            () = stop.cancelled() => break Ended::Stopped,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let ticket = unsettled.track(delivery.delivery_tag, delivery.acker.clone());
                    let work = process(Arc::clone(sub), Arc::clone(deps), delivery, ticket, stop.clone());
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
    let _ = channel
        .basic_cancel(tag, BasicCancelOptions::default())
        .await;
    let drained = async { while in_flight.next().await.is_some() {} };
    if tokio::time::timeout(deps.config.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(subscription = %sub.id, "deliveries still in flight at the end of the grace period; they will be redelivered");
    }
    drop(in_flight);
    deps.writer.flushed().await;
    let _ = channel.close(200, "consumer stopped".into()).await;
    Ok(ended)
}

/// Handles one message from check to settlement.
///
/// The rare branches (database writes, retries, dead letters) are boxed: thousands of these
/// futures are in flight at once, and inline they made each one 16 KiB instead of 2.4 KiB.
async fn process(
    sub: Arc<Sub>,
    deps: Arc<Deps>,
    delivery: Delivery,
    acker: Ticket,
    stop: CancellationToken,
) {
    let Delivery {
        data,
        properties,
        redelivered,
        ..
    } = delivery;
    let Some(meta) = Meta::read(&properties) else {
        tracing::warn!(subscription = %sub.id, "a message without anika metadata was dropped");
        deps.writer.settle(Settle::Ack(acker));
        return;
    };
    let config = sub.config();
    let skip = |reason: &str| {
        metrics::counter!("anika_deliveries_total", "outcome" => "skipped").increment(1);
        tracing::info!(subscription = %sub.id, event = %meta.event, reason, "skipped");
        SkipRow {
            subscription: sub.id,
            event: meta.event,
            reason: reason.to_owned(),
        }
    };
    if !config.allowed {
        deps.writer
            .skip(skip("the partner's grant on the topic was revoked"), acker);
        return;
    }
    if config.status != Status::Active {
        // Paused or disabled while this message was on its way: keep it queued.
        deps.writer.settle(Settle::Requeue(acker));
        return;
    }
    if let Some(filter) = &config.filter {
        let matches = Envelope::decode(&data)
            .is_ok_and(|e| crate::filter::Filter::from_value(filter).matches(e.data.get()));
        if !matches {
            deps.writer.skip(
                skip("the event does not match the subscription's filter"),
                acker,
            );
            return;
        }
    }
    let mut attempt = meta.attempts + 1;
    if config.ordered && redelivered {
        // Retries in place leave no trace in the message: count them from the log.
        attempt = attempt.max(Box::pin(recorded_attempts(&deps, &sub, meta.event)).await + 1);
    }
    let body = Bytes::from(data);
    let event_id = meta.event.to_string();
    loop {
        let pass = sub.breaker.pass().await;
        sub.rate_limit().await;
        let permit = deps
            .http_slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        metrics::gauge!("anika_deliveries_in_flight").increment(1.0);
        let config = sub.config();
        let (outcome, duration) = match &config.url {
            Ok(url) => {
                deps.sender
                    .send(url, &config.signing_secrets(), &event_id, body.clone())
                    .await
            }
            // Today's policy refuses the stored URL: a failed attempt, no request made.
            Err(reason) => (
                Outcome::Failed {
                    status: None,
                    error: format!("blocked by the SSRF guard: {reason}"),
                    excerpt: None,
                    retry_after: None,
                },
                Duration::ZERO,
            ),
        };
        metrics::gauge!("anika_deliveries_in_flight").decrement(1.0);
        drop(permit);
        let row = AttemptRow {
            subscription: sub.id,
            event: meta.event,
            attempt,
            succeeded: matches!(outcome, Outcome::Delivered { .. }),
            http_status: outcome.status(),
            error: match &outcome {
                Outcome::Failed { error, .. } => Some(error.clone()),
                Outcome::Delivered { .. } => None,
            },
            duration,
            response_excerpt: match &outcome {
                Outcome::Delivered { excerpt, .. } => Some(excerpt.clone()),
                Outcome::Failed { excerpt, .. } => excerpt.clone(),
            },
            at: Utc::now(),
        };
        match outcome {
            Outcome::Delivered { .. } => {
                sub.breaker.succeeded();
                drop(pass);
                healthy(&sub, &deps).await;
                metrics::counter!("anika_deliveries_total", "outcome" => "delivered").increment(1);
                let latency = (Utc::now() - meta.event.timestamp())
                    .to_std()
                    .unwrap_or_default();
                metrics::histogram!("anika_delivery_latency_seconds").record(latency.as_secs_f64());
                tracing::debug!(subscription = %sub.id, event = %meta.event, attempt, "delivered");
                deps.writer.attempt(row, Settle::Ack(acker));
                return;
            }
            Outcome::Failed {
                ref error,
                retry_after,
                ..
            } => {
                sub.breaker.failed();
                drop(pass);
                metrics::counter!("anika_deliveries_total", "outcome" => "failed").increment(1);
                tracing::info!(subscription = %sub.id, event = %meta.event, attempt, error = %error, "delivery failed");
                if row.http_status == Some(410) {
                    Box::pin(disable(&deps, &sub, "the endpoint answered 410 Gone")).await;
                    deps.writer.attempt(row, Settle::Requeue(acker));
                    return;
                }
                if Box::pin(failing_too_long(&sub, &deps)).await {
                    deps.writer.attempt(row, Settle::Requeue(acker));
                    return;
                }
                let error = error.clone();
                deps.writer.attempt(row, Settle::Keep);
                if !Box::pin(fail_or_retry(
                    &sub,
                    &deps,
                    &config,
                    &body,
                    &properties,
                    &mut attempt,
                    acker.clone(),
                    &stop,
                    error,
                    retry_after,
                ))
                .await
                {
                    return;
                }
                // Ordered: retry in place.
            }
        }
    }
}

/// After a failed attempt: dead-letter, schedule a retry, or (ordered) wait in place.
/// Returns true when the caller should try again now (ordered retry in place).
#[allow(clippy::too_many_arguments)]
async fn fail_or_retry(
    sub: &Arc<Sub>,
    deps: &Arc<Deps>,
    config: &SubConfig,
    body: &Bytes,
    properties: &lapin::BasicProperties,
    attempt: &mut u32,
    acker: Ticket,
    stop: &CancellationToken,
    error: String,
    retry_after: Option<Duration>,
) -> bool {
    let meta_event = Meta::read(properties).map(|m| m.event);
    if *attempt >= config.max_attempts {
        dead_letter(sub, deps, body, properties, *attempt, &error, acker).await;
        return false;
    }
    let scheduled = deps.config.retry_schedule.delay_before(*attempt + 1);
    let wanted = retry_after.map_or(scheduled, |r| r.max(scheduled));
    if config.ordered {
        tokio::select! {
            () = stop.cancelled() => {
                deps.writer.settle(Settle::Requeue(acker));
                false
            }
            () = tokio::time::sleep(wanted) => {
                *attempt += 1;
                true
            }
        }
    } else {
        let tier = deps.config.retry_schedule.tier_at_least(wanted);
        let name = retry_name(tier);
        match deps
            .publisher
            .publish(
                &name,
                &sub.id.to_string(),
                body,
                with_attempts(properties, *attempt),
            )
            .await
        {
            Ok(()) => deps.writer.settle(Settle::Ack(acker)),
            Err(e) => {
                // Not confirmed: keep the message; it comes back and this attempt is made again.
                tracing::warn!(subscription = %sub.id, event = ?meta_event, error = %e, "cannot schedule a retry; requeued");
                deps.writer.settle(Settle::Requeue(acker));
            }
        }
        false
    }
}

async fn dead_letter(
    sub: &Arc<Sub>,
    deps: &Arc<Deps>,
    body: &Bytes,
    properties: &lapin::BasicProperties,
    attempts: u32,
    error: &str,
    acker: Ticket,
) {
    let Some(meta) = Meta::read(properties) else {
        return;
    };
    let mut props = with_attempts(properties, attempts);
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(LAST_ERROR_HEADER.into(), long_string(error));
    props = props.with_headers(headers);
    let published = deps
        .publisher
        .publish(DEAD_EXCHANGE, &sub.id.to_string(), body, props)
        .await;
    if let Err(e) = published {
        tracing::warn!(subscription = %sub.id, event = %meta.event, error = %e, "cannot dead-letter; requeued");
        deps.writer.settle(Settle::Requeue(acker));
        return;
    }
    let recorded = sqlx::query(
        "INSERT INTO dead_letters (subscription_id, event_id, attempts, last_error) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (subscription_id, event_id) DO UPDATE \
         SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, dead_at = now()",
    )
    .bind(sub.id.uuid())
    .bind(meta.event.uuid())
    .bind(attempts as i32)
    .bind(crate::deliver::text(error.as_bytes()))
    .execute(&deps.pool)
    .await;
    match recorded {
        Ok(_) => {
            metrics::counter!("anika_deliveries_total", "outcome" => "dead_lettered").increment(1);
            tracing::warn!(subscription = %sub.id, event = %meta.event, attempts, error, "dead-lettered");
            deps.writer.settle(Settle::Ack(acker));
        }
        Err(e) => {
            // The copy in the dead-letter queue stays; the original comes back and
            // is dead-lettered again once PostgreSQL answers (a duplicate there, nothing lost).
            tracing::warn!(subscription = %sub.id, event = %meta.event, error = %e, "cannot record a dead letter; requeued");
            deps.writer.settle(Settle::Requeue(acker));
        }
    }
}

async fn recorded_attempts(deps: &Deps, sub: &Sub, event: anika_shared::domain::EventId) -> u32 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM attempts WHERE subscription_id = $1 AND event_id = $2",
    )
    .bind(sub.id.uuid())
    .bind(event.uuid())
    .fetch_one(&deps.pool)
    .await
    .map_or(0, |n| n as u32)
}

/// A success after failures: the endpoint is healthy again.
async fn healthy(sub: &Sub, deps: &Deps) {
    let was_failing = sub
        .failing_since
        .lock()
        .expect("health lock")
        .take()
        .is_some();
    if was_failing {
        // Boxed: a rare path whose future would otherwise widen every delivery's.
        let cleared = sqlx::query("UPDATE subscriptions SET failing_since = NULL WHERE id = $1")
            .bind(sub.id.uuid())
            .execute(&deps.pool);
        let _ = Box::pin(cleared).await;
    }
}

/// Notes a failure; disables the subscription once it has failed for `ANIKA_DISABLE_AFTER`.
async fn failing_too_long(sub: &Sub, deps: &Deps) -> bool {
    let now = Utc::now();
    let since = {
        let mut since = sub.failing_since.lock().expect("health lock");
        match *since {
            Some(t) => Some(t),
            None => {
                *since = Some(now);
                None
            }
        }
    };
    match since {
        None => {
            let _ = sqlx::query("UPDATE subscriptions SET failing_since = coalesce(failing_since, $2) WHERE id = $1")
                .bind(sub.id.uuid())
                .bind(now)
                .execute(&deps.pool)
                .await;
            false
        }
        Some(t) if (now - t).to_std().unwrap_or_default() >= deps.config.disable_after => {
            disable(
                deps,
                sub,
                &format!(
                    "every delivery failed since {}",
                    anika_shared::envelope::format_time(t)
                ),
            )
            .await;
            true
        }
        Some(_) => false,
    }
}

/// Sets the subscription to `disabled` and tells every dispatcher.
async fn disable(deps: &Deps, sub: &Sub, reason: &str) {
    sub.disable_locally();
    let result = async {
        let mut tx = deps.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE subscriptions SET status = 'disabled', disabled_reason = $2, updated_at = now() \
             WHERE id = $1 AND status = 'active'",
        )
        .bind(sub.id.uuid())
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed > 0 {
            Change::Subscription { subscription_id: sub.id }.notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(changed > 0)
    }
    .await;
    match result {
        Ok(true) => {
            metrics::counter!("anika_subscriptions_disabled_total").increment(1);
            tracing::warn!(subscription = %sub.id, reason, "subscription disabled");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(subscription = %sub.id, error = %e, "cannot disable the subscription")
        }
    }
}
