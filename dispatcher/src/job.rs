//! One message from its arrival to its settlement: gathers the facts `decide` needs, and
//! carries out what it answers — the request (`deliver`), the records (`writer`), a retry
//! or a dead letter through RabbitMQ, the endpoint's health (`endpoint_health`).
//!
//! The rare branches (database writes, retries, dead letters) are boxed: thousands of these
//! futures are in flight at once, and inline they made each one 16 KiB instead of 2.4 KiB.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anika_shared::{
    amqp::retry_name,
    domain::EventId,
    envelope::{Envelope, Meta, with_attempts},
    store,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

use crate::{
    ack::Ticket,
    breaker::Pass,
    dead_letter,
    decide::{self, Decision, FILTERED, Health, Judgement, Next, Refusal, Rules},
    deliver::Outcome,
    deps::Deps,
    endpoint_health,
    fair::Slot,
    in_flight::Place,
    meters,
    subscription::{Sub, SubConfig},
    subscription_rows,
    writer::{AttemptRow, Settle, SkipRow},
};

/// Handles one message from check to settlement.
pub async fn process(
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
        job.skip(FILTERED);
        return;
    }
    let recorded = if job.sub.config().ordered && redelivered {
        // Retries in place leave no trace in the message: count them from the log.
        Some(Box::pin(recorded_attempts(&job.deps, &job.sub, meta.event)).await)
    } else {
        None
    };
    job.deliver(decide::attempt_number(meta.attempts, recorded))
        .await;
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
        match decide::judge(cached.verdict(), cached.read_at, self.received) {
            Judgement::Send => Ok(cached),
            Judgement::Refuse(refusal) => Err(refusal),
            Judgement::AskCatalog => Box::pin(self.admit_from_catalog()).await,
        }
    }

    async fn admit_from_catalog(&self) -> Result<Arc<SubConfig>, Refusal> {
        match subscription_rows::refresh(&self.sub, &self.deps, self.received).await {
            Ok(Some(config)) => decide::admission(config.verdict()).map(|()| config),
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
        metrics::counter!(meters::DELIVERIES, "outcome" => "skipped").increment(1);
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
            let Some((config, outcome, duration)) = self.attempt().await else {
                return;
            };
            let now = Utc::now();
            let failing_since = match outcome {
                Outcome::Delivered { .. } => None,
                Outcome::Failed { .. } => endpoint_health::note_failure(&self.sub, now),
            };
            let health = Health { failing_since, now };
            let decision = decide::after_attempt(&outcome, attempt, &self.rules(&config), health);
            let row = self.attempt_row(attempt, &outcome, duration);
            let again = match decision {
                Decision::Delivered => {
                    self.delivered(row, attempt).await;
                    return;
                }
                decision => Box::pin(self.failed(decision, row, &mut attempt, now)).await,
            };
            if !again {
                return;
            }
            // Ordered: retry in place.
        }
    }

    /// What applies to this subscription's failed attempts.
    fn rules<'a>(&'a self, config: &SubConfig) -> Rules<'a> {
        Rules {
            max_attempts: config.max_attempts,
            ordered: config.ordered,
            schedule: &self.deps.config.retry_schedule,
            max_retry_after: self.deps.config.dispatcher.max_retry_after,
            disable_after: self.deps.config.dispatcher.disable_after,
        }
    }

    /// Waits for its turn, admits the message once more, and makes one request. `None`: the
    /// message was settled without one (revoked or paused meanwhile).
    async fn attempt(&self) -> Option<(Arc<SubConfig>, Outcome, Duration)> {
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
                    return None;
                }
            };
            let Some((pass, place, slot)) = turn else {
                // Changed, but still deliverable (resumed, say): wait again.
                continue;
            };
            metrics::gauge!(meters::IN_FLIGHT).increment(1.0);
            let (outcome, duration) = self.send(&config).await;
            metrics::gauge!(meters::IN_FLIGHT).decrement(1.0);
            drop((slot, place));
            match outcome {
                Outcome::Delivered { .. } => self.sub.breaker.succeeded(),
                Outcome::Failed { .. } => self.sub.breaker.failed(),
            }
            drop(pass);
            return Some((config, outcome, duration));
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
        endpoint_health::succeeded(&self.sub, &self.deps).await;
        metrics::counter!(meters::DELIVERIES, "outcome" => "delivered").increment(1);
        let latency = (Utc::now() - self.meta.event.timestamp())
            .to_std()
            .unwrap_or_default();
        metrics::histogram!(meters::LATENCY_SECONDS).record(latency.as_secs_f64());
        tracing::debug!(subscription = %self.sub.id, event = %self.meta.event, attempt, "delivered");
        self.deps
            .writer
            .attempt(row, Settle::Ack(self.acker.clone()));
    }

    /// Carries out `decision` about a failed attempt (recorded in `row`, ended at `now`).
    /// Returns true when the caller should try again now (ordered retry in place).
    async fn failed(
        &self,
        decision: Decision,
        row: AttemptRow,
        attempt: &mut u32,
        now: DateTime<Utc>,
    ) -> bool {
        let error = row.error.clone().unwrap_or_default();
        metrics::counter!(meters::DELIVERIES, "outcome" => "failed").increment(1);
        tracing::info!(subscription = %self.sub.id, event = %self.meta.event, attempt = *attempt,
            error = %error, "delivery failed");
        match decision {
            // Handled by the caller; nothing failed.
            Decision::Delivered => false,
            Decision::Disable(reason) => {
                endpoint_health::disable(&self.deps, &self.sub, &reason).await;
                self.deps
                    .writer
                    .attempt(row, Settle::Requeue(self.acker.clone()));
                false
            }
            Decision::Failed {
                newly_failing,
                next,
            } => {
                if newly_failing {
                    endpoint_health::failing(&self.sub, &self.deps, now, &error).await;
                }
                self.deps.writer.attempt(row, Settle::Keep);
                self.next(next, attempt, &error).await
            }
        }
    }

    /// Dead-letters, schedules a retry, or (ordered) waits in place.
    /// Returns true when the caller should try again now (ordered retry in place).
    async fn next(&self, next: Next, attempt: &mut u32, error: &str) -> bool {
        match next {
            Next::DeadLetter => {
                dead_letter::dead_letter(&self.deps, self.message(), *attempt, error).await;
                false
            }
            Next::RetryInPlace { wait } => self.retry_in_place(wait, attempt).await,
            Next::Retry { tier } => {
                self.retry(tier, *attempt).await;
                false
            }
        }
    }

    fn message(&self) -> dead_letter::Message<'_> {
        dead_letter::Message {
            subscription: self.sub.id,
            event: self.meta.event,
            body: &self.body,
            properties: &self.properties,
            acker: &self.acker,
        }
    }

    /// Publishes the message into the retry tier `tier` (confirmed), then acknowledges it.
    async fn retry(&self, tier: Duration, attempt: u32) {
        let published = self
            .deps
            .publisher
            .publish(
                &retry_name(tier),
                &self.sub.id.to_string(),
                &self.body,
                with_attempts(&self.properties, attempt),
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
}

/// The attempts the log holds for this message; 0 (logged) if PostgreSQL cannot say, so
/// the header's count applies.
async fn recorded_attempts(deps: &Deps, sub: &Sub, event: EventId) -> u32 {
    let counted = store::attempts::count_attempts(&deps.pool, sub.id.uuid(), event.uuid()).await;
    match counted {
        Ok(n) => n as u32,
        Err(e) => {
            tracing::warn!(subscription = %sub.id, event = %event, error = %e,
                "cannot count the attempts already made; counting from the message's header");
            0
        }
    }
}
