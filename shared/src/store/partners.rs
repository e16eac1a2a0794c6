//! Partners and their ingest quotas.

// ---- moved by helper 1 ----

/// Whether a partner with this id exists.
pub async fn partner_exists(db: impl sqlx::PgExecutor<'_>, id: uuid::Uuid) -> sqlx::Result<bool> {
    let found = sqlx::query_scalar!(r#"SELECT 1 AS "one!" FROM partners WHERE id = $1"#, id)
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}
