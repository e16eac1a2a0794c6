//! One consumer per active subscription queue, and what happens to each message.
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

use anika_shared::{
    amqp::{DEAD_EXCHANGE, LAST_ERROR_HEADER, long_string, retry_name, subscription_queue},
    audit::{self, Action, Actor, Changes, Target},
    changes::Change,
    domain::SubscriptionId,
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
use uuid::Uuid;

use crate::{
    Deps,
    ack::{Ticket, Unsettled},
    breaker::Pass,
    deliver::Outcome,
    fair::Slot,
    in_flight::Place,
    registry::{Sub, SubConfig, Verdict},
    system::{self, Notice},
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
    let Some(conn) = deps.broker.connection_with_retry(stop).await else {
        return Ok(Ended::Stopped);
    };
    // Read once connected (waiting for the broker may take long). The queue may have been
    // deleted with its subscription: never resurrect it. And the standing comes fresh from
    // the catalog: a cached "revoked" whose grant is back (a notification not heard yet)
    // must not unbind the queue below.
    let Some(config) = sub.refresh(deps, Instant::now()).await? else {
        return Ok(Ended::Gone);
    };
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
    // prefetch bounds the unacknowledged messages this consumer holds; of those, at most
    // max_in_flight are on the wire at once (the rest wait their turn here, not in the queue).
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
    let received = Instant::now();
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
    let job = Job {
        sub,
        deps,
        meta,
        body: Bytes::from(data),
        properties,
        acker,
        stop,
        received,
    };
    if let Err(refusal) = job.admit().await {
        job.refuse(refusal);
        return;
    }
    if !job.matches_filter() {
        job.skip("the event does not match the subscription's filter");
        return;
    }
    let mut attempt = meta.attempts + 1;
    if job.sub.config().ordered && redelivered {
        // Retries in place leave no trace in the message: count them from the log.
        let recorded = Box::pin(recorded_attempts(&job.deps, &job.sub, meta.event)).await;
        attempt = attempt.max(recorded + 1);
    }
    job.deliver(attempt).await;
}

/// Why a message is not sent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Never: acknowledge it with this reason recorded.
    Skip(&'static str),
    /// Not now: back to the queue.
    Requeue,
}

/// One message on its way, with everything each step of its handling needs.
struct Job {
    sub: Arc<Sub>,
    deps: Arc<Deps>,
    meta: Meta,
    body: Bytes,
    properties: lapin::BasicProperties,
    acker: Ticket,
    stop: CancellationToken,
    /// When the broker handed the message over: a catalog read started later reflects every
    /// commit made before the event was published (a grant given just before, say).
    received: Instant,
}

impl Job {
    /// The subscription's configuration if the message may be sent now.
    ///
    /// A "yes" from the cache is trusted (the catalog's change notification is what makes a
    /// revoke or pause reach it; see `docs/architecture.md`). A "no" is trusted only if it
    /// was read after the message arrived; otherwise PostgreSQL is asked, so a grant this
    /// dispatcher has not heard of yet never turns into a skip.
    async fn admit(&self) -> Result<Arc<SubConfig>, Refusal> {
        let cached = self.sub.config();
        match judge(cached.verdict(), cached.read_at, self.received) {
            Judgement::Send => Ok(cached),
            Judgement::Refuse(refusal) => Err(refusal),
            Judgement::AskCatalog => Box::pin(self.admit_from_catalog()).await,
        }
    }

    async fn admit_from_catalog(&self) -> Result<Arc<SubConfig>, Refusal> {
        match self.sub.refresh(&self.deps, self.received).await {
            Ok(Some(config)) => match config.verdict() {
                Verdict::Send => Ok(config),
                verdict => Err(refusal(verdict)),
            },
            // Deleted: its queue goes, and this message with it.
            Ok(None) => Err(Refusal::Requeue),
            Err(e) => {
                tracing::warn!(subscription = %self.sub.id, event = %self.meta.event, error = %e,
                    "cannot confirm the subscription's standing with the catalog; requeued");
                // Not at once: the message would be back in a hot loop while PostgreSQL is away.
                tokio::select! {
                    () = self.stop.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                Err(Refusal::Requeue)
            }
        }
    }

    /// Settles a message that is not sent.
    fn refuse(&self, refusal: Refusal) {
        match refusal {
            Refusal::Skip(reason) => self.skip(reason),
            // Paused or disabled while this message was on its way: keep it queued.
            Refusal::Requeue => self.deps.writer.settle(Settle::Requeue(self.acker.clone())),
        }
    }

    fn skip(&self, reason: &str) {
        metrics::counter!("anika_deliveries_total", "outcome" => "skipped").increment(1);
        tracing::info!(subscription = %self.sub.id, event = %self.meta.event, reason, "skipped");
        let row = SkipRow {
            subscription: self.sub.id,
            event: self.meta.event,
            reason: reason.to_owned(),
        };
        self.deps.writer.skip(row, self.acker.clone());
    }

    fn matches_filter(&self) -> bool {
        let config = self.sub.config();
        let Some(filter) = &config.filter else {
            return true;
        };
        // The data's own text: numbers are compared with every digit, as PostgreSQL does.
        Envelope::decode(&self.body).is_ok_and(|e| filter.matches(e.data.get()))
    }

    /// Waits for everything a request needs: the breaker, the rate limit, a place under
    /// `max_in_flight`, a delivery slot.
    async fn turn(&self) -> (Pass<'_>, Place<'_>, Slot<'_>) {
        let pass = self.sub.breaker.pass().await;
        self.sub.rate_limit().await;
        let place = self.sub.in_flight.acquire().await;
        let slot = self.deps.slots.acquire(self.sub.config().partner).await;
        (pass, place, slot)
    }

    /// Attempts the delivery until it is settled (ordered subscriptions retry in place).
    async fn deliver(&self, mut attempt: u32) {
        loop {
            // A revoke or pause wakes the wait at once instead of at its end.
            let changed = self.sub.standing_changed();
            let turn = tokio::select! {
                biased;
                () = changed => None,
                turn = self.turn() => Some(turn),
            };
            // After every wait, right before the request: a revoke or pause made meanwhile counts.
            let config = match self.admit().await {
                Ok(config) => config,
                Err(refusal) => {
                    drop(turn);
                    self.refuse(refusal);
                    return;
                }
            };
            let Some((pass, place, slot)) = turn else {
                // Changed, but still deliverable (resumed, say): wait again.
                continue;
            };
            metrics::gauge!("anika_deliveries_in_flight").increment(1.0);
            let (outcome, duration) = self.send(&config).await;
            metrics::gauge!("anika_deliveries_in_flight").decrement(1.0);
            drop((slot, place));
            let row = self.attempt_row(attempt, &outcome, duration);
            match outcome {
                Outcome::Delivered { .. } => {
                    self.sub.breaker.succeeded();
                    drop(pass);
                    self.delivered(row, attempt).await;
                    return;
                }
                Outcome::Failed {
                    error, retry_after, ..
                } => {
                    self.sub.breaker.failed();
                    drop(pass);
                    let failure = Failure { error, retry_after };
                    if !Box::pin(self.failed(row, &config, &mut attempt, failure)).await {
                        return;
                    }
                    // Ordered: retry in place.
                }
            }
        }
    }

    async fn send(&self, config: &SubConfig) -> (Outcome, Duration) {
        match &config.url {
            Ok(url) => {
                let event_id = self.meta.event.to_string();
                self.deps
                    .sender
                    .send(url, &config.signing_secrets(), &event_id, self.body.clone())
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
        }
    }

    fn attempt_row(&self, attempt: u32, outcome: &Outcome, duration: Duration) -> AttemptRow {
        AttemptRow {
            subscription: self.sub.id,
            event: self.meta.event,
            attempt,
            succeeded: matches!(outcome, Outcome::Delivered { .. }),
            http_status: outcome.status(),
            error: match outcome {
                Outcome::Failed { error, .. } => Some(error.clone()),
                Outcome::Delivered { .. } => None,
            },
            duration,
            response_excerpt: match outcome {
                Outcome::Delivered { excerpt, .. } => Some(excerpt.clone()),
                Outcome::Failed { excerpt, .. } => excerpt.clone(),
            },
            at: Utc::now(),
        }
    }

    async fn delivered(&self, row: AttemptRow, attempt: u32) {
        healthy(&self.sub, &self.deps).await;
        metrics::counter!("anika_deliveries_total", "outcome" => "delivered").increment(1);
        let latency = (Utc::now() - self.meta.event.timestamp())
            .to_std()
            .unwrap_or_default();
        metrics::histogram!("anika_delivery_latency_seconds").record(latency.as_secs_f64());
        tracing::debug!(subscription = %self.sub.id, event = %self.meta.event, attempt, "delivered");
        self.deps
            .writer
            .attempt(row, Settle::Ack(self.acker.clone()));
    }

    /// After a failed attempt. Returns true when the caller should try again now (ordered).
    async fn failed(
        &self,
        row: AttemptRow,
        config: &SubConfig,
        attempt: &mut u32,
        failure: Failure,
    ) -> bool {
        metrics::counter!("anika_deliveries_total", "outcome" => "failed").increment(1);
        tracing::info!(subscription = %self.sub.id, event = %self.meta.event, attempt = *attempt,
            error = %failure.error, "delivery failed");
        if row.http_status == Some(410) {
            disable(&self.deps, &self.sub, "the endpoint answered 410 Gone").await;
            self.deps
                .writer
                .attempt(row, Settle::Requeue(self.acker.clone()));
            return false;
        }
        if failing_too_long(&self.sub, &self.deps, &failure.error).await {
            self.deps
                .writer
                .attempt(row, Settle::Requeue(self.acker.clone()));
            return false;
        }
        self.deps.writer.attempt(row, Settle::Keep);
        self.fail_or_retry(config, attempt, failure).await
    }

    /// Dead-letters, schedules a retry, or (ordered) waits in place.
    /// Returns true when the caller should try again now (ordered retry in place).
    async fn fail_or_retry(&self, config: &SubConfig, attempt: &mut u32, failure: Failure) -> bool {
        if *attempt >= config.max_attempts {
            self.dead_letter(*attempt, &failure.error).await;
            return false;
        }
        let scheduled = self.deps.config.retry_schedule.delay_before(*attempt + 1);
        let wanted = retry_delay(
            scheduled,
            failure.retry_after,
            self.deps.config.max_retry_after,
        );
        if config.ordered {
            return self.retry_in_place(wanted, attempt).await;
        }
        let tier = self.deps.config.retry_schedule.tier_at_least(wanted);
        let published = self
            .deps
            .publisher
            .publish(
                &retry_name(tier),
                &self.sub.id.to_string(),
                &self.body,
                with_attempts(&self.properties, *attempt),
            )
            .await;
        match published {
            Ok(()) => self.deps.writer.settle(Settle::Ack(self.acker.clone())),
            Err(e) => {
                // Not confirmed: keep the message; it comes back and this attempt is made again.
                tracing::warn!(subscription = %self.sub.id, event = %self.meta.event, error = %e, "cannot schedule a retry; requeued");
                self.deps.writer.settle(Settle::Requeue(self.acker.clone()));
            }
        }
        false
    }

    /// Sleeps `wait` before the next attempt of an ordered subscription's head message; a
    /// revoke or pause during the sleep settles the message at once. True: try again now.
    async fn retry_in_place(&self, wait: Duration, attempt: &mut u32) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.sub.standing_changed();
            tokio::select! {
                () = self.stop.cancelled() => {
                    self.deps.writer.settle(Settle::Requeue(self.acker.clone()));
                    return false;
                }
                () = tokio::time::sleep_until(until) => {
                    *attempt += 1;
                    return true;
                }
                () = changed => {
                    if let Err(refusal) = self.admit().await {
                        self.refuse(refusal);
                        return false;
                    }
                }
            }
        }
    }

    async fn dead_letter(&self, attempts: u32, error: &str) {
        let (sub, deps, event) = (&self.sub, &self.deps, self.meta.event);
        let mut props = with_attempts(&self.properties, attempts);
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(LAST_ERROR_HEADER.into(), long_string(error));
        props = props.with_headers(headers);
        let published = deps
            .publisher
            .publish(DEAD_EXCHANGE, &sub.id.to_string(), &self.body, props)
            .await;
        if let Err(e) = published {
            tracing::warn!(subscription = %sub.id, event = %event, error = %e, "cannot dead-letter; requeued");
            deps.writer.settle(Settle::Requeue(self.acker.clone()));
            return;
        }
        // The record and the partner's `dead_letter.added` count commit together.
        let recorded = async {
            let mut tx = deps.pool.begin().await?;
            sqlx::query(
                "INSERT INTO dead_letters (subscription_id, event_id, attempts, last_error) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (subscription_id, event_id) DO UPDATE \
                 SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, dead_at = now()",
            )
            .bind(sub.id.uuid())
            .bind(event.uuid())
            .bind(attempts as i32)
            .bind(crate::deliver::text(error.as_bytes()))
            .execute(&mut *tx)
            .await?;
            let written =
                system::dead_lettered(&mut tx, sub.id, deps.config.system_notice_interval).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(written)
        }
        .await;
        let recorded = match recorded {
            Ok(written) => {
                system::publish_all(deps, written).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        match recorded {
            Ok(_) => {
                metrics::counter!("anika_deliveries_total", "outcome" => "dead_lettered")
                    .increment(1);
                tracing::warn!(subscription = %sub.id, event = %event, attempts, error, "dead-lettered");
                deps.writer.settle(Settle::Ack(self.acker.clone()));
            }
            Err(e) => {
                // The copy in the dead-letter queue stays; the original comes back and
                // is dead-lettered again once PostgreSQL answers (a duplicate there, nothing lost).
                tracing::warn!(subscription = %sub.id, event = %event, error = %e, "cannot record a dead letter; requeued");
                deps.writer.settle(Settle::Requeue(self.acker.clone()));
            }
        }
    }
}

/// What a failed attempt says about the next one.
struct Failure {
    error: String,
    /// `Retry-After` of a 429 or 503.
    retry_after: Option<Duration>,
}

/// What the cached standing allows for a message received at `received`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judgement {
    Send,
    Refuse(Refusal),
    /// The cache says no but may predate the message: PostgreSQL decides.
    AskCatalog,
}

/// A cached "yes" is trusted; a cached "no" only if it was read after the message arrived.
fn judge(verdict: Verdict, read_at: Instant, received: Instant) -> Judgement {
    match verdict {
        Verdict::Send => Judgement::Send,
        _ if read_at < received => Judgement::AskCatalog,
        verdict => Judgement::Refuse(refusal(verdict)),
    }
}

fn refusal(verdict: Verdict) -> Refusal {
    match verdict {
        Verdict::Skip(reason) => Refusal::Skip(reason),
        // `Send` is handled by the callers; requeueing is the safe reading of anything else.
        Verdict::Send | Verdict::Requeue => Refusal::Requeue,
    }
}

/// The wait before the next attempt: the schedule's, or longer if the endpoint asked
/// (`Retry-After`), but never longer than `cap` for the asking.
fn retry_delay(scheduled: Duration, retry_after: Option<Duration>, cap: Duration) -> Duration {
    retry_after.map_or(scheduled, |asked| asked.min(cap).max(scheduled))
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
        let cleared = Box::pin(transition(
            deps,
            sub.id,
            sqlx::query(
                "UPDATE subscriptions SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
            )
            .bind(sub.id.uuid()),
            Notice::Recovered,
        ));
        if let Err(e) = cleared.await {
            tracing::warn!(subscription = %sub.id, error = %e, "cannot record that the endpoint recovered; the next success tries again");
            // Still failing as far as PostgreSQL knows: the next success clears it.
            sub.failing_since
                .lock()
                .expect("health lock")
                .get_or_insert_with(Utc::now);
        }
    }
}

/// Runs `change`, an UPDATE that matches only the state it leaves, and, when this process
/// made the transition (one row changed), writes `notice` in the same transaction;
/// publishes the notice after the commit. Whether the transition was made here.
async fn transition(
    deps: &Deps,
    subscription: SubscriptionId,
    change: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    notice: Notice,
) -> Result<bool, sqlx::Error> {
    let mut tx = deps.pool.begin().await?;
    let changed = change.execute(&mut *tx).await?.rows_affected() > 0;
    let written = if changed {
        system::write(&mut tx, subscription, &notice).await?
    } else {
        None
    };
    tx.commit().await?;
    system::publish_all(deps, written).await;
    Ok(changed)
}

/// Notes a failure; disables the subscription once it has failed for `ANIKA_DISABLE_AFTER`.
async fn failing_too_long(sub: &Sub, deps: &Deps, error: &str) -> bool {
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
            let marked = transition(
                deps,
                sub.id,
                sqlx::query(
                    "UPDATE subscriptions SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL",
                )
                .bind(sub.id.uuid())
                .bind(now),
                Notice::Failing {
                    error: error.to_owned(),
                },
            )
            .await;
            if let Err(e) = marked {
                tracing::warn!(subscription = %sub.id, error = %e, "cannot record that the endpoint fails; the next failure tries again");
                *sub.failing_since.lock().expect("health lock") = None;
            }
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
        let partner: Option<Uuid> = sqlx::query_scalar(
            "UPDATE subscriptions SET status = 'disabled', disabled_reason = $2, updated_at = now() \
             WHERE id = $1 AND status = 'active' RETURNING partner_id",
        )
        .bind(sub.id.uuid())
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let mut written = None;
        if let Some(partner) = partner {
            // A status change nobody asked for: the audit log says anika did it, and why.
            audit::record(
                &mut tx,
                &Actor::system(),
                Action::SubscriptionUpdated,
                &Target::subscription(sub.id, partner.into()),
                Changes::new()
                    .diff("status", "active", "disabled")
                    .created("disabled_reason", reason),
            )
            .await?;
            Change::Subscription { subscription_id: sub.id }.notify(&mut tx).await?;
            let notice = Notice::Disabled {
                reason: reason.to_owned(),
            };
            written = system::write(&mut tx, sub.id, &notice).await?;
        }
        tx.commit().await?;
        system::publish_all(deps, written).await;
        Ok::<_, sqlx::Error>(partner.is_some())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_no_older_than_the_message_is_checked_with_the_catalog_a_yes_never() {
        let earlier = Instant::now();
        let later = earlier + Duration::from_millis(1);
        let revoked = Verdict::Skip(crate::registry::REVOKED);
        assert_eq!(judge(Verdict::Send, earlier, later), Judgement::Send);
        assert_eq!(judge(Verdict::Send, later, earlier), Judgement::Send);
        assert_eq!(judge(revoked, earlier, later), Judgement::AskCatalog);
        assert_eq!(
            judge(Verdict::Requeue, earlier, later),
            Judgement::AskCatalog
        );
        assert_eq!(
            judge(revoked, later, earlier),
            Judgement::Refuse(Refusal::Skip(crate::registry::REVOKED)),
            "read after the message arrived: it already saw every grant made before"
        );
        assert_eq!(
            judge(Verdict::Requeue, later, earlier),
            Judgement::Refuse(Refusal::Requeue)
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_and_never_shortens_the_schedule() {
        let (scheduled, cap) = (Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(retry_delay(scheduled, None, cap), scheduled);
        assert_eq!(
            retry_delay(scheduled, Some(Duration::from_secs(60)), cap),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_delay(scheduled, Some(Duration::from_secs(86_400)), cap),
            cap
        );
        assert_eq!(retry_delay(scheduled, Some(Duration::ZERO), cap), scheduled);
        // A cap below the schedule does not shorten the schedule.
        assert_eq!(
            retry_delay(
                scheduled,
                Some(Duration::from_secs(60)),
                Duration::from_secs(1)
            ),
            scheduled
        );
    }
}
