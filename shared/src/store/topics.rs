//! Topics and grants.

// ---- moved by helper 4 ----

/// A topic's name and owner.
#[derive(Debug)]
pub struct TopicNameRow {
    /// The topic's name.
    pub name: String,
    /// The partner that owns it.
    pub owner_partner_id: uuid::Uuid,
}

/// A topic's name and owner; an error ([`sqlx::Error::RowNotFound`]) if it does not exist.
pub async fn get_topic_name(
    db: impl sqlx::PgExecutor<'_>,
    id: uuid::Uuid,
) -> sqlx::Result<TopicNameRow> {
    sqlx::query_as!(
        TopicNameRow,
        "SELECT name, owner_partner_id FROM topics WHERE id = $1",
        id
    )
    .fetch_one(db)
    .await
}
