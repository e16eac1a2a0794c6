//! The PostgreSQL pool: creates the database when it is missing and runs the embedded migrations.

use std::{str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, Connection, PgPool,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

/// The schema, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `ANIKA_DATABASE_URL` is not a PostgreSQL URL.
    #[error("ANIKA_DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(#[source] sqlx::Error),
    /// The server refused or could not be reached.
    #[error("cannot reach PostgreSQL at {url}")]
    Connect {
        /// The URL without password.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connects a pool of `size` connections to `url`, creating the database first if it does not exist.
pub async fn connect(url: &str, size: u32) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::BadUrl)?
        // Statements are logged at TRACE: a statement per event at DEBUG drowns the logs.
        .log_statements(log::LevelFilter::Trace)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_millis(500));
    let redacted = crate::config::redact_url(url);
    ensure_database(&options)
        .await
        .map_err(|source| DbError::Connect {
            url: redacted.clone(),
            source,
        })?;
    PgPoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect {
            url: redacted,
            source,
        })
}

/// Connects and applies every pending migration (safe from several processes at once).
pub async fn connect_and_migrate(url: &str, size: u32) -> Result<PgPool, DbError> {
    let pool = connect(url, size).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Creates the target database through the `postgres` maintenance database if it is missing.
async fn ensure_database(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    match PgConnection::connect_with(options).await {
        Ok(conn) => {
            conn.close().await?;
            Ok(())
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            let name = options.get_database().unwrap_or("anika").to_owned();
            let mut admin =
                PgConnection::connect_with(&options.clone().database("postgres")).await?;
            let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
            match sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&mut admin)
                .await
            {
                Ok(_) => tracing::info!(database = %name, "created the database"),
                // Another process created it between our two connections.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e),
            }
            admin.close().await
        }
        Err(e) => Err(e),
    }
}
