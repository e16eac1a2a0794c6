//! Operational events (API.md, "System topic"): what anika tells a partner about its own
//! subscriptions — `subscription.failing`, `subscription.recovered`, `subscription.disabled`
//! and `dead_letter.added` — published into the partner's `anika.system` topic like any
//! event: written to the event log and the outbox **in the transaction of the state change
//! they announce**, then published with a confirm (the ingest relay publishes what this
//! process could not, so a crash or a broker outage delays a notice but never loses it).
//!
//! Exactly one notice per transition, across dispatcher processes: each transition is an
//! `UPDATE … WHERE <old state>` whose row count says whether this process made it.
//! A subscription on `anika.system` causes no notices about itself (no loops).
//! `dead_letter.added` is coalesced: at most one per subscription per
//! `ANIKA_SYSTEM_NOTICE_INTERVAL` (a minute), carrying the count since the previous one;
//! dead letters left pending are announced by [`flush_loop`] once the interval has passed.

use std::{sync::Arc, time::Duration};

use anika_shared::{
    amqp::EVENTS_EXCHANGE,
    domain::{EventId, PartnerId, SYSTEM_TOPIC, SubscriptionId, TopicId},
    envelope::{self, Envelope, EventHead, format_time},
    store::{self, events},
};
use chrono::{DateTime, Utc};
use serde_json::{json, value::RawValue};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::deps::Deps;

/// What a notice says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The first failed attempt while the subscription was healthy.
    Failing {
        /// What the attempt got.
        error: String,
    },
    /// The first success after failures.
    Recovered,
    /// anika disabled the subscription.
    Disabled {
        /// Why.
        reason: String,
    },
    /// Messages moved to the dead-letter queue since the previous such notice.
    DeadLetters {
        /// How many.
        count: u32,
    },
}

impl Notice {
    /// The `type` of the event.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Failing { .. } => "subscription.failing",
            Self::Recovered => "subscription.recovered",
            Self::Disabled { .. } => "subscription.disabled",
            Self::DeadLetters { .. } => "dead_letter.added",
        }
    }

    /// The event's `data`.
    pub fn data(&self, subscription: SubscriptionId, at: DateTime<Utc>) -> serde_json::Value {
        let mut data = json!({
            "type": self.kind(),
            "subscription_id": subscription,
            "at": format_time(at),
        });
        match self {
            Self::Failing { error } => data["error"] = json!(error),
            Self::Disabled { reason } => data["reason"] = json!(reason),
            Self::DeadLetters { count } => data["count"] = json!(count),
            Self::Recovered => {}
        }
        data
    }
}

/// Whether pending dead letters are announced now: never announced before, or the last
/// announcement is at least `interval` old.
pub fn dead_letters_due(
    last_sent: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    interval: Duration,
) -> bool {
    last_sent.is_none_or(|last| (now - last).to_std().unwrap_or_default() >= interval)
}

/// A notice written to the log and the outbox, to publish once its transaction committed.
#[derive(Debug)]
pub struct Written {
    id: EventId,
    topic: TopicId,
    body: Vec<u8>,
}

/// Where a subscription's notices go: the system topic of its partner, unless the
/// subscription is itself on a system topic (no loops) or the partner has none.
async fn destination(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
) -> Result<Option<(TopicId, PartnerId)>, sqlx::Error> {
    let row = store::system::get_notice_destination(conn, subscription.uuid()).await?;
    Ok(row.map(|d| (d.topic_id.into(), d.partner_id.into())))
}

/// Writes `notice` about `subscription` into its partner's system topic, inside the
/// caller's transaction; `None` when nothing is to be announced (see [`destination`]).
pub async fn write(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
    notice: &Notice,
) -> Result<Option<Written>, sqlx::Error> {
    let Some((topic, partner)) = destination(conn, subscription).await? else {
        return Ok(None);
    };
    let id = EventId::new();
    let at = id.timestamp();
    let data =
        serde_json::to_string(&notice.data(subscription, at)).expect("a notice always serialises");
    // The subscription id is the key: an ordered subscription keeps each one's notices in order,
    // and a search by key finds them.
    let key = subscription.to_string();
    let event = events::EventWithOutbox {
        id: id.uuid(),
        topic_id: topic.uuid(),
        publisher_partner_id: partner.uuid(),
        key: Some(&key),
        data: &data,
        received_at: at,
    };
    events::insert_event_with_outbox(conn, event).await?;
    let raw = RawValue::from_string(data).expect("serialised JSON is JSON");
    let body = Envelope::encode(
        &EventHead {
            id,
            topic_id: topic,
            topic: SYSTEM_TOPIC,
            publisher: partner,
            key: Some(&key),
            received_at: at,
        },
        &raw,
    );
    metrics::counter!(crate::meters::SYSTEM_NOTICES, "type" => notice.kind()).increment(1);
    Ok(Some(Written { id, topic, body }))
}

/// Publishes a committed notice and removes its outbox row once RabbitMQ confirmed it. On
/// failure the row stays and the ingest relay publishes it later (receivers dedupe on
/// `webhook-id` should both ever do).
pub async fn publish(deps: &Deps, written: Written) {
    let published = deps
        .publisher
        .publish_routed(
            EVENTS_EXCHANGE,
            &written.topic.to_string(),
            &written.body,
            envelope::properties(written.id, written.topic, 0),
        )
        .await;
    match published {
        // Routed nowhere (nobody subscribes to the system topic) is delivered to everyone.
        Ok(_routed) => {
            let deleted = events::delete_outbox_row(&deps.pool, written.id.uuid()).await;
            if let Err(e) = deleted {
                tracing::warn!(event = %written.id, error = %e, "cannot remove a published notice's outbox row; the relay publishes it once more");
            }
        }
        Err(e) => {
            tracing::warn!(event = %written.id, error = %e, "cannot publish an operational event now; the outbox relay will");
        }
    }
}

/// Publishes what a transaction wrote, if anything.
pub async fn publish_all(deps: &Deps, written: Option<Written>) {
    if let Some(written) = written {
        publish(deps, written).await;
    }
}

/// Counts one dead letter of `subscription` inside the caller's transaction and, when due,
/// writes the `dead_letter.added` notice with every dead letter pending.
pub async fn dead_lettered(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
    interval: Duration,
) -> Result<Option<Written>, sqlx::Error> {
    let pending = store::system::add_pending_dead_letter(&mut *conn, subscription.uuid()).await?;
    if !dead_letters_due(pending.last_sent_at, Utc::now(), interval) {
        return Ok(None);
    }
    announce_pending(conn, subscription, pending.pending_dead_letters).await
}

/// Writes `dead_letter.added` with `pending` and starts the next interval.
async fn announce_pending(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
    pending: i32,
) -> Result<Option<Written>, sqlx::Error> {
    store::system::reset_pending_dead_letters(&mut *conn, subscription.uuid()).await?;
    let count = u32::try_from(pending).unwrap_or_default();
    write(conn, subscription, &Notice::DeadLetters { count }).await
}

/// Announces dead letters left pending once their interval has passed, every `interval / 4`
/// (several dispatchers share the rows with `SKIP LOCKED`).
pub async fn flush_loop(deps: Arc<Deps>, shutdown: CancellationToken) {
    let interval = deps.config.dispatcher.system_notice_interval;
    let mut tick = tokio::time::interval((interval / 4).max(Duration::from_millis(250)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = flush(&deps, &deps.pool, interval).await {
            tracing::warn!(error = %e, "cannot announce pending dead letters; trying again");
        }
    }
}

/// One pass of [`flush_loop`]: each due row in a transaction of its own.
async fn flush(deps: &Deps, pool: &PgPool, interval: Duration) -> Result<(), sqlx::Error> {
    loop {
        let mut tx = pool.begin().await?;
        let due = store::system::lock_due_dead_letters(&mut *tx, interval).await?;
        let Some(due) = due else {
            return tx.commit().await;
        };
        let written = announce_pending(
            &mut tx,
            due.subscription_id.into(),
            due.pending_dead_letters,
        )
        .await?;
        tx.commit().await?;
        publish_all(deps, written).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_are_announced_at_once_the_first_time_then_at_most_once_per_interval() {
        let now = Utc::now();
        let minute = Duration::from_secs(60);
        assert!(dead_letters_due(None, now, minute));
        assert!(!dead_letters_due(
            Some(now - chrono::Duration::seconds(59)),
            now,
            minute
        ));
        assert!(dead_letters_due(
            Some(now - chrono::Duration::seconds(60)),
            now,
            minute
        ));
        // A clock that went backwards is not a reason to announce.
        assert!(!dead_letters_due(
            Some(now + chrono::Duration::seconds(5)),
            now,
            minute
        ));
    }

    #[test]
    fn each_notice_carries_its_type_the_subscription_the_time_and_its_own_field() {
        let sub = SubscriptionId::new();
        let at = Utc::now();
        let failing = Notice::Failing {
            error: "HTTP 500".into(),
        }
        .data(sub, at);
        assert_eq!(failing["type"], "subscription.failing");
        assert_eq!(failing["subscription_id"], sub.to_string());
        assert_eq!(failing["at"], format_time(at));
        assert_eq!(failing["error"], "HTTP 500");
        let disabled = Notice::Disabled {
            reason: "why".into(),
        }
        .data(sub, at);
        assert_eq!(disabled["type"], "subscription.disabled");
        assert_eq!(disabled["reason"], "why");
        let dead = Notice::DeadLetters { count: 3 }.data(sub, at);
        assert_eq!(dead["type"], "dead_letter.added");
        assert_eq!(dead["count"], 3);
        let recovered = Notice::Recovered.data(sub, at);
        assert_eq!(recovered["type"], "subscription.recovered");
        assert_eq!(recovered.as_object().map(|o| o.len()), Some(3));
    }
}
