//! The schema itself: which migrations are applied (for `anika migrate` and readiness).
//!
//! Also the two statements that touch no table: the readiness ping and `pg_notify`.

/// How many migrations are applied.
pub async fn count_applied_migrations(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM _sqlx_migrations"#)
        .fetch_one(db)
        .await
}

/// A round trip to the database (readiness).
pub async fn ping(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
        .fetch_one(db)
        .await?;
    Ok(())
}

/// Sends `payload` on `channel` (delivered to listeners when the transaction commits).
pub async fn notify(
    db: impl sqlx::PgExecutor<'_>,
    channel: &str,
    payload: &str,
) -> sqlx::Result<()> {
    sqlx::query!("SELECT pg_notify($1, $2)", channel, payload)
        .execute(db)
        .await?;
    Ok(())
}

/// Creates the database `name` (run on a connection to another database, such as `postgres`).
pub async fn create_database(db: impl sqlx::PgExecutor<'_>, name: &str) -> sqlx::Result<()> {
    // Runtime SQL: a database name is an identifier, which cannot be a bound parameter.
    let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    sqlx::query(sqlx::AssertSqlSafe(create)).execute(db).await?;
    Ok(())
}
