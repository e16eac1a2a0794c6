//! Topics and grants.
//!
//! A topic belongs to one partner; a grant gives another partner read access. The catalog
//! reads a topic together with whether the caller's partner holds a grant on it
//! ([`TopicRow::granted`]); ingest reads only what posting needs ([`TopicDefinition`]).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

/// A topic as the catalog shows it.
#[derive(Debug)]
pub struct TopicRow {
    /// The topic.
    pub id: Uuid,
    /// Its name, unique per owner.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The partner that owns it.
    pub owner_partner_id: Uuid,
    /// The JSON Schema its events' `data` must satisfy.
    pub schema: Option<Json<Value>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Whether the partner the row was read for holds a grant on it.
    pub granted: bool,
}

/// Reads a topic, with whether `partner` holds a grant on it.
pub async fn get_topic(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
) -> sqlx::Result<Option<TopicRow>> {
    sqlx::query_as!(
        TopicRow,
        r#"SELECT t.id, t.name, t.description, t.owner_partner_id,
                  t.schema AS "schema: Json<Value>", t.created_at,
                  EXISTS (SELECT 1 FROM grants g WHERE g.topic_id = t.id AND g.partner_id = $2) AS "granted!"
           FROM topics t WHERE t.id = $1"#,
        id,
        partner,
    )
    .fetch_optional(db)
    .await
}

/// [`get_topic`], locking the topic's row until the end of the transaction.
pub async fn get_topic_for_update(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
) -> sqlx::Result<Option<TopicRow>> {
    sqlx::query_as!(
        TopicRow,
        r#"SELECT t.id, t.name, t.description, t.owner_partner_id,
                  t.schema AS "schema: Json<Value>", t.created_at,
                  EXISTS (SELECT 1 FROM grants g WHERE g.topic_id = t.id AND g.partner_id = $2) AS "granted!"
           FROM topics t WHERE t.id = $1 FOR UPDATE"#,
        id,
        partner,
    )
    .fetch_optional(db)
    .await
}

/// A topic to create.
#[derive(Debug)]
pub struct NewTopic<'a> {
    /// Its id.
    pub id: Uuid,
    /// The partner that owns it.
    pub owner_partner_id: Uuid,
    /// Its name.
    pub name: &'a str,
    /// Free text.
    pub description: Option<&'a str>,
    /// The JSON Schema its events' `data` must satisfy.
    pub schema: Option<&'a Value>,
}

/// Creates a topic; the row is as its creator sees it (owning it, so not granted).
/// Fails with a unique violation if the owner has a topic of that name, with a foreign
/// key violation if the owner does not exist.
pub async fn insert_topic(
    db: impl sqlx::PgExecutor<'_>,
    topic: NewTopic<'_>,
) -> sqlx::Result<TopicRow> {
    sqlx::query_as!(
        TopicRow,
        r#"INSERT INTO topics (id, owner_partner_id, name, description, schema)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, name, description, owner_partner_id, schema AS "schema: Json<Value>",
                     created_at, false AS "granted!""#,
        topic.id,
        topic.owner_partner_id,
        topic.name,
        topic.description,
        topic.schema,
    )
    .fetch_one(db)
    .await
}

/// Which topics a page of [`list_topics`] covers.
#[derive(Debug)]
pub struct TopicFilter<'a> {
    /// Only the topics this partner owns or is granted (`None`: every topic).
    pub partner: Option<Uuid>,
    /// Only the topic with this exact name.
    pub name: Option<&'a str>,
    /// Only topics after this `(created_at, id)`: the cursor of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// A page of topics in `(created_at, id)` order, at most `limit` rows; `granted` is read
/// for the filter's partner.
pub async fn list_topics(
    db: impl sqlx::PgExecutor<'_>,
    filter: TopicFilter<'_>,
    limit: i64,
) -> sqlx::Result<Vec<TopicRow>> {
    sqlx::query_as!(
        TopicRow,
        r#"SELECT t.id, t.name, t.description, t.owner_partner_id,
                  t.schema AS "schema: Json<Value>", t.created_at,
                  EXISTS (SELECT 1 FROM grants g WHERE g.topic_id = t.id AND g.partner_id = $2) AS "granted!"
           FROM topics t
           WHERE ($2::uuid IS NULL OR t.owner_partner_id = $2
                  OR EXISTS (SELECT 1 FROM grants g WHERE g.topic_id = t.id AND g.partner_id = $2))
             AND ($1::text IS NULL OR t.name = $1)
             AND ($3::timestamptz IS NULL OR (t.created_at, t.id) > ($3, $4))
           ORDER BY t.created_at, t.id LIMIT $5"#,
        filter.name,
        filter.partner,
        filter.after.map(|a| a.0),
        filter.after.map(|a| a.1),
        limit,
    )
    .fetch_all(db)
    .await
}

/// New values for a topic's name, description and schema.
#[derive(Debug)]
pub struct TopicUpdate<'a> {
    /// The topic.
    pub id: Uuid,
    /// The partner the returned row's `granted` is read for.
    pub partner: Option<Uuid>,
    /// Its name.
    pub name: &'a str,
    /// Free text.
    pub description: Option<&'a str>,
    /// The JSON Schema its events' `data` must satisfy.
    pub schema: Option<&'a Value>,
}

/// Writes a topic's name, description and schema and returns the row. Fails with a unique
/// violation if the owner has another topic of that name.
pub async fn update_topic(
    db: impl sqlx::PgExecutor<'_>,
    update: TopicUpdate<'_>,
) -> sqlx::Result<TopicRow> {
    sqlx::query_as!(
        TopicRow,
        r#"UPDATE topics t SET name = $3, description = $4, schema = $5, updated_at = now() WHERE t.id = $1
           RETURNING t.id, t.name, t.description, t.owner_partner_id,
                     t.schema AS "schema: Json<Value>", t.created_at,
                     EXISTS (SELECT 1 FROM grants g WHERE g.topic_id = t.id AND g.partner_id = $2) AS "granted!""#,
        update.id,
        update.partner,
        update.name,
        update.description,
        update.schema,
    )
    .fetch_one(db)
    .await
}

/// Deletes a topic (its grants go with it).
pub async fn delete_topic(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM topics WHERE id = $1", id)
        .execute(db)
        .await?;
    Ok(())
}

/// Who owns a topic and whether a partner is granted it: what subscribing needs to know.
#[derive(Debug)]
pub struct TopicAccess {
    /// The partner that owns the topic.
    pub owner_partner_id: Uuid,
    /// Whether the partner asked about holds a grant on it.
    pub granted: bool,
}

/// [`TopicAccess`] of a topic for `partner`, locking the topic's row against deletion
/// (`FOR SHARE`) until the end of the transaction; `None` if there is no such topic.
pub async fn topic_access_for_share(
    db: impl sqlx::PgExecutor<'_>,
    topic: Uuid,
    partner: Uuid,
) -> sqlx::Result<Option<TopicAccess>> {
    sqlx::query_as!(
        TopicAccess,
        r#"SELECT owner_partner_id,
                  EXISTS (SELECT 1 FROM grants g WHERE g.topic_id = t.id AND g.partner_id = $2) AS "granted!"
           FROM topics t WHERE id = $1 FOR SHARE"#,
        topic,
        partner,
    )
    .fetch_optional(db)
    .await
}

/// What posting into a topic needs: its owner, name and schema.
#[derive(Debug)]
pub struct TopicDefinition {
    /// The partner that owns it (the only one allowed to post).
    pub owner_partner_id: Uuid,
    /// Its name.
    pub name: String,
    /// The JSON Schema its events' `data` must satisfy.
    pub schema: Option<Json<Value>>,
}

/// Reads what posting into a topic needs; `None` if there is no such topic.
pub async fn get_topic_definition(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<Option<TopicDefinition>> {
    sqlx::query_as!(
        TopicDefinition,
        r#"SELECT owner_partner_id, name, schema AS "schema: Json<Value>" FROM topics WHERE id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await
}

/// A partner's read access to a topic.
#[derive(Debug)]
pub struct GrantRow {
    /// The granted partner.
    pub partner_id: Uuid,
    /// Since when.
    pub granted_at: DateTime<Utc>,
}

/// A page of a topic's grants in `(granted_at, partner_id)` order, at most `limit` rows,
/// after `after` (the cursor of the previous page).
pub async fn list_grants(
    db: impl sqlx::PgExecutor<'_>,
    topic: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<GrantRow>> {
    sqlx::query_as!(
        GrantRow,
        "SELECT partner_id, granted_at FROM grants WHERE topic_id = $1 \
         AND ($2::timestamptz IS NULL OR (granted_at, partner_id) > ($2, $3)) \
         ORDER BY granted_at, partner_id LIMIT $4",
        topic,
        after.map(|a| a.0),
        after.map(|a| a.1),
        limit,
    )
    .fetch_all(db)
    .await
}

/// Grants `partner` read access to a topic; whether the grant is new (`false`: it was
/// there already, and nothing changed).
pub async fn insert_grant(
    db: impl sqlx::PgExecutor<'_>,
    topic: Uuid,
    partner: Uuid,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query!(
        "INSERT INTO grants (topic_id, partner_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        topic,
        partner,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

/// Takes `partner`'s read access to a topic away; whether there was a grant to delete.
pub async fn delete_grant(
    db: impl sqlx::PgExecutor<'_>,
    topic: Uuid,
    partner: Uuid,
) -> sqlx::Result<bool> {
    let deleted = sqlx::query!(
        "DELETE FROM grants WHERE topic_id = $1 AND partner_id = $2",
        topic,
        partner,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(deleted > 0)
}

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
