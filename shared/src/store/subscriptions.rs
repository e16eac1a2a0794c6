//! Subscriptions: the catalog's writes and the dispatcher's runtime reads of the same rows.
//!
//! The catalog reads a subscription as it shows it ([`SubscriptionRow`], never the secret);
//! the dispatcher reads what delivering needs ([`SubscriptionConfigRow`], with the sealed
//! secrets and whether the partner may still read the topic), as text where a row that
//! does not parse must not fail the read of the others.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::SubscriptionStatus;

/// A subscription as the catalog shows it (never its secret).
///
/// The column list is repeated in each query that returns it (the macros take only
/// literals); `query_as!` checks that each one names every field. The dead-letter count
/// is a subquery on the indexed `dead_letters (subscription_id, …)`, so a list of 100
/// subscriptions is still one query (the console's list sorts by it; asking once per row
/// took 550 ms).
#[derive(Debug)]
pub struct SubscriptionRow {
    /// The subscription.
    pub id: Uuid,
    /// The topic it delivers.
    pub topic_id: Uuid,
    /// The partner it belongs to.
    pub partner_id: Uuid,
    /// The webhook endpoint.
    pub url: String,
    /// Free text.
    pub description: Option<String>,
    /// The object the events' `data` must contain.
    pub filter: Option<Json<Value>>,
    /// Typed on read: a value that is none of the statuses is an error (logged and counted).
    pub status: SubscriptionStatus,
    /// Why the server disabled it, when it did.
    pub disabled_reason: Option<String>,
    /// Attempts per message before it is dead-lettered.
    pub max_attempts: i32,
    /// Deliveries per second at most.
    pub rate_limit_per_s: Option<i32>,
    /// Requests in flight at most; `None`: the server's default.
    pub max_in_flight: Option<i32>,
    /// Delivered one at a time in publish order.
    pub ordered: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Since when every attempt fails; `None` while the endpoint is healthy.
    pub failing_since: Option<DateTime<Utc>>,
    /// How many of its messages are dead-lettered.
    pub dead_letters: i64,
}

/// Reads a subscription; `None` if there is none with this id.
pub async fn get_subscription(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<Option<SubscriptionRow>> {
    sqlx::query_as!(
        SubscriptionRow,
        r#"SELECT id, topic_id, partner_id, url, description, filter AS "filter: Json<Value>",
                  status AS "status: SubscriptionStatus", disabled_reason, max_attempts,
                  rate_limit_per_s, max_in_flight, ordered, created_at, failing_since,
                  (SELECT count(*) FROM dead_letters d WHERE d.subscription_id = subscriptions.id) AS "dead_letters!"
           FROM subscriptions WHERE id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await
}

/// [`get_subscription`], locking the row until the end of the transaction.
pub async fn get_subscription_for_update(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<Option<SubscriptionRow>> {
    sqlx::query_as!(
        SubscriptionRow,
        r#"SELECT id, topic_id, partner_id, url, description, filter AS "filter: Json<Value>",
                  status AS "status: SubscriptionStatus", disabled_reason, max_attempts,
                  rate_limit_per_s, max_in_flight, ordered, created_at, failing_since,
                  (SELECT count(*) FROM dead_letters d WHERE d.subscription_id = subscriptions.id) AS "dead_letters!"
           FROM subscriptions WHERE id = $1 FOR UPDATE"#,
        id,
    )
    .fetch_optional(db)
    .await
}

/// A subscription to create.
#[derive(Debug)]
pub struct NewSubscription<'a> {
    /// Its id.
    pub id: Uuid,
    /// The topic it delivers.
    pub topic_id: Uuid,
    /// The partner it belongs to.
    pub partner_id: Uuid,
    /// The webhook endpoint.
    pub url: &'a str,
    /// Free text.
    pub description: Option<&'a str>,
    /// The object the events' `data` must contain.
    pub filter: Option<&'a Value>,
    /// Attempts per message before it is dead-lettered.
    pub max_attempts: i32,
    /// Deliveries per second at most.
    pub rate_limit_per_s: Option<i32>,
    /// Delivered one at a time in publish order.
    pub ordered: bool,
    /// The signing secret, sealed.
    pub secret: &'a str,
    /// Requests in flight at most; `None`: the server's default.
    pub max_in_flight: Option<i32>,
}

/// Creates a subscription and returns its row.
pub async fn insert_subscription(
    db: impl sqlx::PgExecutor<'_>,
    new: NewSubscription<'_>,
) -> sqlx::Result<SubscriptionRow> {
    sqlx::query_as!(
        SubscriptionRow,
        r#"INSERT INTO subscriptions (id, topic_id, partner_id, url, description, filter, max_attempts,
                                      rate_limit_per_s, ordered, secret, max_in_flight)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           RETURNING id, topic_id, partner_id, url, description, filter AS "filter: Json<Value>",
                     status AS "status: SubscriptionStatus", disabled_reason, max_attempts,
                     rate_limit_per_s, max_in_flight, ordered, created_at, failing_since,
                     (SELECT count(*) FROM dead_letters d WHERE d.subscription_id = subscriptions.id) AS "dead_letters!""#,
        new.id,
        new.topic_id,
        new.partner_id,
        new.url,
        new.description,
        new.filter,
        new.max_attempts,
        new.rate_limit_per_s,
        new.ordered,
        new.secret,
        new.max_in_flight,
    )
    .fetch_one(db)
    .await
}

/// Whether a subscription with this id exists.
pub async fn subscription_exists(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions WHERE id = $1) AS "exists!""#,
        id,
    )
    .fetch_one(db)
    .await
}

/// Which subscriptions a page of [`list_subscriptions`] covers; `None` filters nothing.
#[derive(Debug)]
pub struct SubscriptionFilter {
    /// Only this partner's.
    pub partner: Option<Uuid>,
    /// Only those to this topic.
    pub topic: Option<Uuid>,
    /// Only those in this state.
    pub status: Option<SubscriptionStatus>,
    /// Only those after this `(created_at, id)`: the cursor of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// A page of subscriptions in `(created_at, id)` order, at most `limit` rows.
pub async fn list_subscriptions(
    db: impl sqlx::PgExecutor<'_>,
    filter: SubscriptionFilter,
    limit: i64,
) -> sqlx::Result<Vec<SubscriptionRow>> {
    sqlx::query_as!(
        SubscriptionRow,
        r#"SELECT id, topic_id, partner_id, url, description, filter AS "filter: Json<Value>",
                  status AS "status: SubscriptionStatus", disabled_reason, max_attempts,
                  rate_limit_per_s, max_in_flight, ordered, created_at, failing_since,
                  (SELECT count(*) FROM dead_letters d WHERE d.subscription_id = subscriptions.id) AS "dead_letters!"
           FROM subscriptions
           WHERE ($1::uuid IS NULL OR partner_id = $1) AND ($2::uuid IS NULL OR topic_id = $2)
             AND ($3::text IS NULL OR status = $3)
             AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5))
           ORDER BY created_at, id LIMIT $6"#,
        filter.partner,
        filter.topic,
        filter.status.map(SubscriptionStatus::as_str),
        filter.after.map(|a| a.0),
        filter.after.map(|a| a.1),
        limit,
    )
    .fetch_all(db)
    .await
}

/// The new values of everything a client sets on a subscription.
#[derive(Debug)]
pub struct SubscriptionUpdate<'a> {
    /// The subscription.
    pub id: Uuid,
    /// The webhook endpoint.
    pub url: &'a str,
    /// The object the events' `data` must contain.
    pub filter: Option<Value>,
    /// Free text.
    pub description: Option<String>,
    /// Attempts per message before it is dead-lettered.
    pub max_attempts: i32,
    /// Deliveries per second at most.
    pub rate_limit_per_s: Option<i32>,
    /// Its state; the disabled reason is kept only while it stays disabled.
    pub status: SubscriptionStatus,
    /// Forget since when the endpoint fails (it is re-enabled).
    pub reenabled: bool,
    /// Requests in flight at most; `None`: the server's default.
    pub max_in_flight: Option<i32>,
}

/// Writes a subscription's settings and returns its row.
pub async fn update_subscription(
    db: impl sqlx::PgExecutor<'_>,
    update: SubscriptionUpdate<'_>,
) -> sqlx::Result<SubscriptionRow> {
    sqlx::query_as!(
        SubscriptionRow,
        r#"UPDATE subscriptions SET url = $2, filter = $3, description = $4, max_attempts = $5,
               rate_limit_per_s = $6, status = $7,
               disabled_reason = CASE WHEN $7 = 'disabled' THEN disabled_reason END,
               failing_since = CASE WHEN $8 THEN NULL ELSE failing_since END, max_in_flight = $9,
               updated_at = now()
           WHERE id = $1
           RETURNING id, topic_id, partner_id, url, description, filter AS "filter: Json<Value>",
                     status AS "status: SubscriptionStatus", disabled_reason, max_attempts,
                     rate_limit_per_s, max_in_flight, ordered, created_at, failing_since,
                     (SELECT count(*) FROM dead_letters d WHERE d.subscription_id = subscriptions.id) AS "dead_letters!""#,
        update.id,
        update.url,
        update.filter,
        update.description,
        update.max_attempts,
        update.rate_limit_per_s,
        update.status.as_str(),
        update.reenabled,
        update.max_in_flight,
    )
    .fetch_one(db)
    .await
}

/// Deletes a subscription.
pub async fn delete_subscription(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM subscriptions WHERE id = $1", id)
        .execute(db)
        .await?;
    Ok(())
}

/// A subscription deleted with its topic: what its audit entry names.
#[derive(Debug)]
pub struct DeletedSubscription {
    /// The subscription.
    pub id: Uuid,
    /// The partner it belonged to.
    pub partner_id: Uuid,
    /// Its webhook endpoint.
    pub url: String,
}

/// Deletes every subscription to a topic and says which they were.
pub async fn delete_topic_subscriptions(
    db: impl sqlx::PgExecutor<'_>,
    topic: Uuid,
) -> sqlx::Result<Vec<DeletedSubscription>> {
    sqlx::query_as!(
        DeletedSubscription,
        "DELETE FROM subscriptions WHERE topic_id = $1 RETURNING id, partner_id, url",
        topic,
    )
    .fetch_all(db)
    .await
}

/// The ids of a partner's subscriptions to a topic.
pub async fn list_partner_topic_subscription_ids(
    db: impl sqlx::PgExecutor<'_>,
    topic: Uuid,
    partner: Uuid,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        "SELECT id FROM subscriptions WHERE topic_id = $1 AND partner_id = $2",
        topic,
        partner,
    )
    .fetch_all(db)
    .await
}

/// A subscription's signing secret, sealed; fails with `RowNotFound` if there is none.
pub async fn get_subscription_secret(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<String> {
    sqlx::query_scalar!("SELECT secret FROM subscriptions WHERE id = $1", id)
        .fetch_one(db)
        .await
}

/// Replaces a subscription's signing secret (`secret`, sealed); `previous`, the former one
/// sealed for its own column, keeps signing for 24 hours (none: no overlap).
pub async fn rotate_subscription_secret(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    secret: &str,
    previous: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE subscriptions SET previous_secret = $3, \
             previous_secret_expires_at = CASE WHEN $3::text IS NULL THEN NULL ELSE now() + interval '24 hours' END, \
             secret = $2, updated_at = now() WHERE id = $1",
        id,
        secret,
        previous,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A subscription as the dispatcher reads it: what delivering needs.
#[derive(Debug)]
pub struct SubscriptionConfigRow {
    /// The subscription.
    pub id: Uuid,
    /// The partner it belongs to.
    pub partner_id: Uuid,
    /// The topic it delivers.
    pub topic_id: Uuid,
    /// The webhook endpoint.
    pub url: String,
    /// As text: numbers keep every digit (`serde_json` would round them to `f64`).
    pub filter: Option<String>,
    /// As text, parsed per row: one unknown status must not fail the read of all the others.
    pub status: String,
    /// Attempts per message before it is dead-lettered.
    pub max_attempts: i32,
    /// Deliveries per second at most.
    pub rate_limit_per_s: Option<i32>,
    /// Requests in flight at most; `None`: the server's default.
    pub max_in_flight: Option<i32>,
    /// Delivered one at a time in publish order.
    pub ordered: bool,
    /// The signing secret, sealed.
    pub secret: String,
    /// The former signing secret, sealed, while it still signs alongside.
    pub previous_secret: Option<String>,
    /// Until when the former secret signs.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Since when every attempt fails; `None` while the endpoint is healthy.
    pub failing_since: Option<DateTime<Utc>>,
    /// Whether the partner owns the topic or is granted it.
    pub allowed: bool,
}

/// The subscriptions the dispatcher reads at once: one, a topic's, or (both `None`) all.
pub async fn list_subscription_configs(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Option<Uuid>,
    topic: Option<Uuid>,
) -> sqlx::Result<Vec<SubscriptionConfigRow>> {
    sqlx::query_as!(
        SubscriptionConfigRow,
        r#"SELECT s.id, s.partner_id, s.topic_id, s.url, s.filter::text AS "filter?", s.status,
                  s.max_attempts, s.rate_limit_per_s, s.max_in_flight, s.ordered, s.secret,
                  s.previous_secret, s.previous_secret_expires_at, s.failing_since,
                  (t.owner_partner_id = s.partner_id OR EXISTS
                      (SELECT 1 FROM grants g WHERE g.topic_id = s.topic_id AND g.partner_id = s.partner_id)) AS "allowed!"
           FROM subscriptions s JOIN topics t ON t.id = s.topic_id
           WHERE ($1::uuid IS NULL OR s.id = $1) AND ($2::uuid IS NULL OR s.topic_id = $2)"#,
        subscription,
        topic,
    )
    .fetch_all(db)
    .await
}

/// The partner a subscription belongs to; `None` if it does not exist.
pub async fn get_subscription_partner(
    db: impl sqlx::PgExecutor<'_>,
    id: uuid::Uuid,
) -> sqlx::Result<Option<uuid::Uuid>> {
    sqlx::query_scalar!("SELECT partner_id FROM subscriptions WHERE id = $1", id)
        .fetch_optional(db)
        .await
}

/// What a replay from the log of a subscription reads with: its topic, its filter, and
/// whether its partner may read the topic now.
#[derive(Debug)]
pub struct ReplaySourceRow {
    /// The subscription's topic.
    pub topic_id: uuid::Uuid,
    /// The topic's name.
    pub topic_name: String,
    /// The object the events' `data` must contain.
    pub filter: Option<serde_json::Value>,
    /// Whether the partner owns the topic or is granted it.
    pub allowed: bool,
}

/// The replay source of a subscription; `None` if it does not exist.
pub async fn get_replay_source(
    db: impl sqlx::PgExecutor<'_>,
    id: uuid::Uuid,
) -> sqlx::Result<Option<ReplaySourceRow>> {
    sqlx::query_as!(
        ReplaySourceRow,
        r#"SELECT s.topic_id, t.name AS topic_name,
                  s.filter,
                  (t.owner_partner_id = s.partner_id OR EXISTS
                      (SELECT 1 FROM grants g WHERE g.topic_id = s.topic_id AND g.partner_id = s.partner_id)) AS "allowed!"
           FROM subscriptions s JOIN topics t ON t.id = s.topic_id WHERE s.id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await
}
