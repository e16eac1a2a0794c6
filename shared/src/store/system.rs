//! The `anika.system` topic's bookkeeping: what anika has told each partner about its subscriptions.
//!
//! Where a subscription's notices go (its partner's system topic), and the
//! `system_notices` row that coalesces `dead_letter.added`: the dead letters pending since
//! the last notice and when that one was sent. The notices themselves are events
//! (`store::events`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::SYSTEM_TOPIC;

/// The system topic a subscription's notices go to.
#[derive(Debug)]
pub struct NoticeDestination {
    /// The partner's system topic.
    pub topic_id: Uuid,
    /// The partner (the topic's owner, the notice's publisher).
    pub partner_id: Uuid,
}

/// The system topic of the subscription's partner; `None` if the subscription is itself on
/// a system topic (no loops), the partner has none, or the subscription does not exist.
pub async fn get_notice_destination(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
) -> sqlx::Result<Option<NoticeDestination>> {
    sqlx::query_as!(
        NoticeDestination,
        "SELECT st.id AS topic_id, st.owner_partner_id AS partner_id FROM subscriptions s
         JOIN topics t ON t.id = s.topic_id
         JOIN topics st ON st.owner_partner_id = s.partner_id AND st.name = $2
         WHERE s.id = $1 AND t.name <> $2",
        subscription,
        SYSTEM_TOPIC,
    )
    .fetch_optional(db)
    .await
}

/// A subscription's dead letters not yet announced.
#[derive(Debug)]
pub struct PendingDeadLetters {
    /// How many, this one included.
    pub pending_dead_letters: i32,
    /// When the previous `dead_letter.added` was written; `None` if never.
    pub last_sent_at: Option<DateTime<Utc>>,
}

/// Counts one more dead letter of a subscription pending announcement.
pub async fn add_pending_dead_letter(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
) -> sqlx::Result<PendingDeadLetters> {
    sqlx::query_as!(
        PendingDeadLetters,
        r#"INSERT INTO system_notices AS n (subscription_id, pending_dead_letters) VALUES ($1, 1)
           ON CONFLICT (subscription_id) DO UPDATE SET pending_dead_letters = n.pending_dead_letters + 1
           RETURNING pending_dead_letters AS "pending_dead_letters!", last_sent_at AS "last_sent_at?""#,
        subscription,
    )
    .fetch_one(db)
    .await
}

/// Starts a subscription's next notice interval: nothing pending, sent now.
pub async fn reset_pending_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "UPDATE system_notices SET pending_dead_letters = 0, last_sent_at = now() WHERE subscription_id = $1",
        subscription,
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// Dead letters whose announcement is due.
#[derive(Debug)]
pub struct DueDeadLetters {
    /// The subscription.
    pub subscription_id: Uuid,
    /// How many are pending.
    pub pending_dead_letters: i32,
}

/// Locks one subscription whose pending dead letters were last announced at least
/// `interval` ago (`SKIP LOCKED`: several dispatchers share the rows); run it in a
/// transaction, which holds the lock.
pub async fn lock_due_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    interval: Duration,
) -> sqlx::Result<Option<DueDeadLetters>> {
    sqlx::query_as!(
        DueDeadLetters,
        "SELECT subscription_id, pending_dead_letters FROM system_notices
         WHERE pending_dead_letters > 0 AND last_sent_at <= now() - $1::text::interval
         LIMIT 1 FOR UPDATE SKIP LOCKED",
        format!("{} milliseconds", interval.as_millis()),
    )
    .fetch_optional(db)
    .await
}
