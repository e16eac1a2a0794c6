//! Partners and their ingest quotas.
//!
//! A caller other than an operator sees its own partner and the partners on either side of
//! a grant with it; the reads here take that caller's partner (`None` for an operator).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A partner as the catalog shows it.
#[derive(Debug)]
pub struct PartnerRow {
    /// The partner.
    pub id: Uuid,
    /// Its unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Events per second all of its principals may post together; `None`: no limit.
    pub ingest_rate_per_s: Option<i32>,
    /// Size of its token bucket; `None`: one second's worth of the rate.
    pub ingest_burst: Option<i32>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Creates a partner.
pub async fn insert_partner(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    name: &str,
    description: Option<&str>,
) -> sqlx::Result<PartnerRow> {
    sqlx::query_as!(
        PartnerRow,
        "INSERT INTO partners (id, name, description) VALUES ($1, $2, $3) \
         RETURNING id, name, description, ingest_rate_per_s, ingest_burst, created_at",
        id,
        name,
        description,
    )
    .fetch_one(db)
    .await
}

/// A page of the partners `viewer` may see (all of them for `None`), in creation order.
#[derive(Debug)]
pub struct PartnerPage<'a> {
    /// The caller's partner; `None` for an operator.
    pub viewer: Option<Uuid>,
    /// Only partners after this `(created_at, id)`.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// At most this many rows.
    pub limit: i64,
    /// Only the partner with exactly this name.
    pub name: Option<&'a str>,
    /// Whether to look a partner up by name even if `viewer` cannot see it.
    pub lookup: bool,
}

/// Lists a page of partners (see [`PartnerPage`]).
pub async fn list_partners(
    db: impl sqlx::PgExecutor<'_>,
    page: PartnerPage<'_>,
) -> sqlx::Result<Vec<PartnerRow>> {
    sqlx::query_as!(
        PartnerRow,
        "SELECT p.id, p.name, p.description, p.ingest_rate_per_s, p.ingest_burst, p.created_at \
         FROM partners p WHERE ($6 OR ($1::uuid IS NULL OR p.id = $1 \
         OR p.id IN (SELECT t.owner_partner_id FROM grants g JOIN topics t ON t.id = g.topic_id WHERE g.partner_id = $1) \
         OR p.id IN (SELECT g.partner_id FROM grants g JOIN topics t ON t.id = g.topic_id WHERE t.owner_partner_id = $1))) \
         AND ($5::text IS NULL OR p.name = $5) \
         AND ($2::timestamptz IS NULL OR (p.created_at, p.id) > ($2, $3)) ORDER BY p.created_at, p.id LIMIT $4",
        page.viewer,
        page.after.map(|a| a.0),
        page.after.map(|a| a.1),
        page.limit,
        page.name,
        page.lookup,
    )
    .fetch_all(db)
    .await
}

/// Reads a partner if `viewer` may see it (any partner for `None`).
pub async fn get_visible_partner(
    db: impl sqlx::PgExecutor<'_>,
    viewer: Option<Uuid>,
    id: Uuid,
) -> sqlx::Result<Option<PartnerRow>> {
    sqlx::query_as!(
        PartnerRow,
        "SELECT p.id, p.name, p.description, p.ingest_rate_per_s, p.ingest_burst, p.created_at \
         FROM partners p WHERE p.id = $2 AND ($1::uuid IS NULL OR p.id = $1 \
         OR p.id IN (SELECT t.owner_partner_id FROM grants g JOIN topics t ON t.id = g.topic_id WHERE g.partner_id = $1) \
         OR p.id IN (SELECT g.partner_id FROM grants g JOIN topics t ON t.id = g.topic_id WHERE t.owner_partner_id = $1))",
        viewer,
        id,
    )
    .fetch_optional(db)
    .await
}

/// Reads a partner, locking its row until the end of the transaction.
pub async fn get_partner_for_update(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<Option<PartnerRow>> {
    sqlx::query_as!(
        PartnerRow,
        "SELECT p.id, p.name, p.description, p.ingest_rate_per_s, p.ingest_burst, p.created_at \
         FROM partners p WHERE p.id = $1 FOR UPDATE",
        id,
    )
    .fetch_optional(db)
    .await
}

/// A partner's new name, description and ingest quota.
#[derive(Debug)]
pub struct PartnerUpdate<'a> {
    /// Its name.
    pub name: &'a str,
    /// Free text.
    pub description: Option<&'a str>,
    /// Events per second; `None`: no limit.
    pub ingest_rate_per_s: Option<i32>,
    /// Bucket size; `None`: one second's worth.
    pub ingest_burst: Option<i32>,
}

/// Sets a partner's fields, returning the row as it now is.
pub async fn update_partner(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    update: PartnerUpdate<'_>,
) -> sqlx::Result<PartnerRow> {
    sqlx::query_as!(
        PartnerRow,
        "UPDATE partners p SET name = $2, description = $3, ingest_rate_per_s = $4, ingest_burst = $5 \
         WHERE p.id = $1 \
         RETURNING p.id, p.name, p.description, p.ingest_rate_per_s, p.ingest_burst, p.created_at",
        id,
        update.name,
        update.description,
        update.ingest_rate_per_s,
        update.ingest_burst,
    )
    .fetch_one(db)
    .await
}

/// A partner's ingest quota columns: `(ingest_rate_per_s, ingest_burst)`, or `None` if
/// there is no such partner.
pub async fn get_ingest_quota(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<Option<(Option<i32>, Option<i32>)>> {
    let row = sqlx::query!(
        "SELECT ingest_rate_per_s, ingest_burst FROM partners WHERE id = $1",
        id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.ingest_rate_per_s, r.ingest_burst)))
}

/// Whether a partner with this id exists.
pub async fn partner_exists(db: impl sqlx::PgExecutor<'_>, id: uuid::Uuid) -> sqlx::Result<bool> {
    let found = sqlx::query_scalar!(r#"SELECT 1 AS "one!" FROM partners WHERE id = $1"#, id)
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}
