//! The PostgreSQL pool: creates the database when it is missing and runs the embedded migrations.

use std::{net::IpAddr, str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, Connection, PgPool,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgSslMode},
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

/// The connect options for `url`, read as libpq reads it: no user in the URL (nor
/// `PGUSER`) means the operating-system user, and a server on this host is reached
/// without TLS unless the URL asks for it.
pub fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(url).map_err(DbError::BadUrl)?;
    Ok(plain_on_loopback(os_user_by_default(options, url), url)
        // Statements are logged at TRACE: a statement per event at DEBUG drowns the logs.
        .log_statements(log::LevelFilter::Trace)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_millis(500)))
}

/// Connects a pool of `size` connections to `url`, creating the database first if it does not exist.
pub async fn connect(url: &str, size: u32) -> Result<PgPool, DbError> {
    let options = options(url)?;
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

/// Logs in as the operating-system user when neither the URL nor `PGUSER` names one.
///
/// sqlx 0.9 builds `whoami` without its `std` feature, whose stub answers
/// "anonymous": the default `postgres://localhost/anika` would then log in as a role
/// nobody has, where psql and libpq log in as the OS user.
fn os_user_by_default(options: PgConnectOptions, url: &str) -> PgConnectOptions {
    let named = url::Url::parse(url).is_ok_and(|u| !u.username().is_empty())
        || std::env::var_os("PGUSER").is_some();
    match whoami::username() {
        Ok(user) if !named => options.username(&user),
        _ => options,
    }
}

/// Reaches a server on this host without TLS, unless the URL (or `PGSSLMODE`) names a TLS mode.
///
/// TLS over loopback protects nothing, and it is expensive here: sqlx writes each
/// TLS record (at most 16 KiB) with its own syscall on a socket without
/// `TCP_NODELAY`, so every statement larger than one record - a group commit of a
/// few dozen events, a batch of attempt records - waits for the server's delayed
/// ACK, 40 ms, per round trip. `anika bench`: batch ingest 8,658 -> 37,092 events/s.
fn plain_on_loopback(options: PgConnectOptions, url: &str) -> PgConnectOptions {
    let explicit = url::Url::parse(url).is_ok_and(|u| {
        u.query_pairs()
            .any(|(k, _)| k == "sslmode" || k == "ssl-mode")
    }) || std::env::var_os("PGSSLMODE").is_some();
    let host = options.get_host();
    let loopback = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback && !explicit {
        options.ssl_mode(PgSslMode::Disable)
    } else {
        options
    }
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
            match crate::store::schema::create_database(&mut admin, &name).await {
                Ok(()) => tracing::info!(database = %name, "created the database"),
                // Another process created it between our two connections.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e),
            }
            admin.close().await
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> PgSslMode {
        plain_on_loopback(PgConnectOptions::from_str(url).expect("a URL"), url).get_ssl_mode()
    }

    #[test]
    fn loopback_servers_are_reached_without_tls_unless_the_url_asks() {
        if std::env::var_os("PGSSLMODE").is_some() {
            return;
        }
        assert!(matches!(
            mode("postgres://u@127.0.0.1:5432/db"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@localhost/db"),
            PgSslMode::Disable
        ));
        assert!(matches!(mode("postgres://u@[::1]/db"), PgSslMode::Disable));
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@db.example.com/db"),
            PgSslMode::Prefer
        ));
    }

    #[test]
    fn a_url_without_a_user_logs_in_as_the_operating_system_user() {
        let me = whoami::username().expect("the OS user has a name");
        assert_ne!(me, "anonymous", "whoami must be built with its std feature");
        // Like libpq, PGUSER (read by sqlx itself) comes before the OS user.
        let expected = std::env::var("PGUSER").unwrap_or(me);
        let named = options("postgres://localhost/anika").expect("a URL");
        assert_eq!(named.get_username(), expected);
        let given = options("postgres://someone@localhost/anika").expect("a URL");
        assert_eq!(given.get_username(), "someone");
    }
}
