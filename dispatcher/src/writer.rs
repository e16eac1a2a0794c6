//! The attempt log, written in batches off the hot path, and the acks that wait for it.
//!
//! A message is acknowledged only after the record of what happened to it is
//! committed: the writer takes everything queued, inserts it in one statement
//! per table, commits, then settles the messages. Under load the batches grow
//! by themselves while the previous insert runs.

use std::time::Duration;

use anika_shared::{
    domain::{AttemptId, AttemptStatus, EventId, SubscriptionId},
    store::{
        self,
        attempts::{NewAttempt, NewSkip},
    },
};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ack::{self, Ticket};

/// Largest batch per insert.
const MAX_BATCH: usize = 2000;

/// One delivery attempt.
#[derive(Clone, Debug)]
pub struct AttemptRow {
    /// The subscription.
    pub subscription: SubscriptionId,
    /// The event.
    pub event: EventId,
    /// 1 for the first try.
    pub attempt: u32,
    /// Whether it was a 2xx.
    pub succeeded: bool,
    /// The status, if the endpoint answered.
    pub http_status: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub duration: Duration,
    /// The start of the response body.
    pub response_excerpt: Option<String>,
    /// When it ended.
    pub at: DateTime<Utc>,
}

/// A message acknowledged without sending.
#[derive(Clone, Debug)]
pub struct SkipRow {
    /// The subscription.
    pub subscription: SubscriptionId,
    /// The event.
    pub event: EventId,
    /// Why.
    pub reason: String,
}

/// What to do with the message once its records are durable.
#[derive(Debug)]
pub enum Settle {
    /// Remove it from the queue.
    Ack(Ticket),
    /// Put it back at the head of the queue (to be delivered later).
    Requeue(Ticket),
    /// Nothing (it is still being worked on, or was settled elsewhere).
    Keep,
}

// The barrier is rare; boxing the common variant would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Job {
    Record {
        attempt: Option<AttemptRow>,
        skip: Option<SkipRow>,
        settle: Settle,
    },
    /// Answers once everything sent before it is written and settled.
    Barrier(oneshot::Sender<()>),
}

/// Hands records to the writer task.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Job>,
}

impl Writer {
    /// Starts the writer task; it stops when every `Writer` is dropped and the queue is drained.
    pub fn start(pool: PgPool, stop: CancellationToken) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(run(pool, rx, stop));
        (Self { tx }, handle)
    }

    /// Records an attempt, then settles its message.
    pub fn attempt(&self, row: AttemptRow, settle: Settle) {
        self.send(Job::Record {
            attempt: Some(row),
            skip: None,
            settle,
        });
    }

    /// Records a skip, then acknowledges its message.
    pub fn skip(&self, row: SkipRow, ticket: Ticket) {
        self.send(Job::Record {
            attempt: None,
            skip: Some(row),
            settle: Settle::Ack(ticket),
        });
    }

    /// Settles a message with nothing to record.
    pub fn settle(&self, settle: Settle) {
        self.send(Job::Record {
            attempt: None,
            skip: None,
            settle,
        });
    }

    /// Waits until everything handed over before this call is written and settled.
    pub async fn flushed(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Barrier(tx));
        if rx.await.is_err() {
            // `send` logged it: the writer is gone, and with it whatever was not written.
            tracing::debug!("attempt writer stopped before the barrier; nothing more to wait for");
        }
    }

    fn send(&self, job: Job) {
        if self.tx.send(job).is_err() {
            // The writer is gone (shutdown): the message stays unacknowledged and is redelivered.
            tracing::debug!(
                "attempt writer stopped; a record is dropped and its message will be redelivered"
            );
        }
    }
}

async fn run(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Job>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut attempts = Vec::new();
        let mut skips = Vec::new();
        let mut acks = Vec::new();
        let mut requeues = Vec::new();
        let mut barriers = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Record {
                    attempt,
                    skip,
                    settle,
                } => {
                    attempts.extend(attempt);
                    skips.extend(skip);
                    match settle {
                        Settle::Ack(ticket) => acks.push(ticket),
                        Settle::Requeue(ticket) => requeues.push(ticket),
                        Settle::Keep => {}
                    }
                }
                Job::Barrier(done) => barriers.push(done),
            }
        }
        let write = || insert(&pool, &attempts, &skips);
        let written = write
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(5))
                    .without_max_times(),
            )
            .when(|_| !stop.is_cancelled())
            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "cannot write the attempt log; retrying"))
            .await;
        match written {
            Ok(()) => {
                metrics::counter!(crate::meters::ATTEMPT_RECORDS_WRITTEN)
                    .increment(attempts.len() as u64);
                ack::settle(acks, requeues).await;
            }
            Err(e) => {
                // Shutting down with PostgreSQL away: leave the messages unacknowledged,
                // the broker redelivers them and the attempts are made (and recorded) again.
                tracing::warn!(error = %e, dropped = attempts.len(), "attempt log not written at shutdown");
            }
        }
        for done in barriers {
            if done.send(()).is_err() {
                tracing::debug!("a barrier's waiter left before the flush completed");
            }
        }
    }
}

async fn insert(
    pool: &PgPool,
    attempts: &[AttemptRow],
    skips: &[SkipRow],
) -> Result<(), sqlx::Error> {
    if attempts.is_empty() && skips.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    if !attempts.is_empty() {
        let rows: Vec<NewAttempt<'_>> = attempts
            .iter()
            .map(|a| NewAttempt {
                id: AttemptId::new().uuid(),
                subscription_id: a.subscription.uuid(),
                event_id: a.event.uuid(),
                attempt: a.attempt as i32,
                status: AttemptStatus::of(a.succeeded),
                http_status: a.http_status.map(i32::from),
                error: a.error.as_deref(),
                duration_ms: a.duration.as_millis().min(i32::MAX as u128) as i32,
                response_excerpt: a.response_excerpt.as_deref(),
                at: a.at,
            })
            .collect();
        store::attempts::insert_attempts(&mut *tx, &rows).await?;
    }
    if !skips.is_empty() {
        let rows: Vec<NewSkip<'_>> = skips
            .iter()
            .map(|s| NewSkip {
                subscription_id: s.subscription.uuid(),
                event_id: s.event.uuid(),
                reason: &s.reason,
            })
            .collect();
        store::attempts::insert_skips(&mut *tx, &rows).await?;
    }
    tx.commit().await
}
