//! Subscriptions: the catalog's writes and the dispatcher's runtime reads of the same rows.

// ---- moved by helper 4 ----

/// Whether a subscription with this id exists.
pub async fn subscription_exists(
    db: impl sqlx::PgExecutor<'_>,
    id: uuid::Uuid,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions WHERE id = $1) AS "exists!""#,
        id,
    )
    .fetch_one(db)
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
