//! The outbox relay: publishes what the publisher left behind.
//!
//! At start-up and every `outbox_relay_interval` it takes outbox rows older than
//! `outbox_relay_after` with `FOR UPDATE SKIP LOCKED` (so several ingest
//! processes share the work without publishing a row twice at the same time),
//! rebuilds each envelope from the event log and the catalog's topic name,
//! publishes with confirms, and deletes the confirmed rows in the same
//! transaction. A crash between commit and publish, a broker outage, or a full
//! hand-over queue all end here.
//!
//! A rebuilt envelope carries `data` as PostgreSQL's jsonb prints it (same
//! meaning, possibly other whitespace and member order than posted); its
//! `webhook-id` is the event id as always, so receivers dedupe it.
//!
//! Rows whose topic was deleted are dropped, not published: deleting a topic
//! deletes its subscriptions and their queues in the same call, and topic ids
//! are never reused, so such a publish could only be returned unroutable.
//! Rows whose event is gone (dropped by retention) are dropped too.

use std::{sync::Arc, time::Duration};

use anika_shared::{
    amqp::Broker,
    domain::{EventId, PartnerId, TopicId},
    envelope::{Envelope, EventHead},
    store::events,
};
use lapin::Channel;
use serde_json::value::RawValue;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    backlog::Backlog,
    meters as m,
    publisher::{confirmed, publish},
};

/// Rows republished per transaction; a full batch is followed by the next at once.
const BATCH: i64 = 500;
/// How long a batch's confirms may take before the batch is given up (and retried next time).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// The outbox is counted (for the backlog gauge) up to this many rows, or one past
/// `ANIKA_MAX_BACKLOG` when that is more (the bound must be seen to be passed)…
const COUNT_CAP: u64 = 1_000_000;
/// …at most this often, so a large backlog is not recounted every tick.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// Why one pass of the relay failed (it is tried again at the next tick).
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("RabbitMQ: {0}")]
    Broker(#[from] anika_shared::amqp::BrokerError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
}

/// The relay loop, until `shutdown`.
pub(crate) struct Relay {
    pub(crate) pool: PgPool,
    pub(crate) broker: Arc<Broker>,
    pub(crate) interval: Duration,
    pub(crate) after: Duration,
    /// Told what the relay deleted and what the outbox holds when counted.
    pub(crate) backlog: Arc<Backlog>,
    pub(crate) shutdown: CancellationToken,
}

impl Relay {
    pub(crate) async fn run(self) {
        let mut channel: Option<Channel> = None;
        let mut counted: Option<std::time::Instant> = None;
        loop {
            loop {
                match self.pass(&mut channel).await {
                    Ok(n) if n == BATCH as usize && !self.shutdown.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        channel = None;
                        tracing::warn!(error = %e, "outbox relay pass failed; retrying at the next tick");
                        break;
                    }
                }
            }
            if counted.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                self.measure_backlog().await;
                counted = Some(std::time::Instant::now());
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        if let Some(channel) = channel {
            anika_shared::amqp::close_channel(&channel, "ingest relay stopping").await;
        }
        tracing::debug!("outbox relay stopped");
    }

    async fn measure_backlog(&self) {
        let cap = COUNT_CAP.max(self.backlog.max().saturating_add(1));
        let count = events::count_outbox(&self.pool, i64::try_from(cap).unwrap_or(i64::MAX)).await;
        match count {
            Ok(count) => self.backlog.measured(count.max(0) as u64),
            // The estimate stays as the writers and deleters keep it until the next count.
            Err(e) => {
                tracing::warn!(error = %e, "could not count the outbox; the backlog estimate stands")
            }
        }
    }

    /// One batch: returns how many rows it took.
    async fn pass(&self, channel: &mut Option<Channel>) -> Result<usize, RelayError> {
        // Look before opening anything: most passes find nothing.
        let any =
            events::outbox_has_rows_older_than(&self.pool, self.after.as_millis() as f64).await?;
        if !any {
            return Ok(0);
        }
        let current = match channel.take() {
            Some(open) if open.status().connected() => open,
            _ => self.broker.confirm_channel().await?,
        };
        let result = self.republish(&current).await;
        if result.is_ok() {
            *channel = Some(current);
        }
        result
    }

    async fn republish(&self, channel: &Channel) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows = events::take_outbox_rows(&mut *tx, self.after.as_millis() as f64, BATCH).await?;
        let taken = rows.len();
        let mut done: Vec<Uuid> = Vec::with_capacity(taken);
        let mut confirms = Vec::with_capacity(taken);
        let mut dropped = 0usize;
        for row in rows {
            let id = EventId::from(row.event_id);
            let (Some(topic_id), Some(publisher), Some(data), Some(topic_name)) = (
                row.topic_id,
                row.publisher_partner_id,
                row.data,
                row.topic_name,
            ) else {
                // The topic (with its subscriptions) or the event is gone: nothing to deliver.
                dropped += 1;
                done.push(row.event_id);
                continue;
            };
            let topic = TopicId::from(topic_id);
            let data = RawValue::from_string(data).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let body = Envelope::encode(
                &EventHead {
                    id,
                    topic_id: topic,
                    topic: &topic_name,
                    publisher: PartnerId::from(publisher),
                    key: row.key.as_deref(),
                    received_at: row.received_at,
                },
                &data,
            );
            confirms.push((id, publish(channel, id, topic, &body).await?));
        }
        let published = confirms.len();
        let results = tokio::time::timeout(
            CONFIRM_TIMEOUT,
            futures::future::join_all(
                confirms
                    .into_iter()
                    .map(|(id, confirm)| async move { (id, confirm.await) }),
            ),
        )
        .await
        .map_err(|_| RelayError::ConfirmTimeout(CONFIRM_TIMEOUT))?;
        let mut republished = 0u64;
        for (id, result) in results {
            if confirmed(id, &result?) {
                done.push(id.uuid());
                republished += 1;
            }
        }
        let deleted = events::delete_outbox_rows(&mut *tx, &done).await?;
        tx.commit().await?;
        self.backlog.removed(deleted);
        metrics::counter!(m::RELAY_REPUBLISHED).increment(republished);
        if published > 0 || dropped > 0 {
            tracing::info!(
                republished,
                dropped,
                "outbox relay published events left behind"
            );
        }
        Ok(taken)
    }
}
