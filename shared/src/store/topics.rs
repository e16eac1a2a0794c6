//! Topics and grants.

// ---- moved by helper 3 ----

/// Whether `partner` holds a grant on the topic.
pub async fn grant_exists(
    db: impl sqlx::PgExecutor<'_>,
    topic: uuid::Uuid,
    partner: uuid::Uuid,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM grants WHERE topic_id = $1 AND partner_id = $2) AS "exists!""#,
        topic,
        partner,
    )
    .fetch_one(db)
    .await
}
