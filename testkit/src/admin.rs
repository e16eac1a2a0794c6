//! Creating and removing what one run owns on the shared services — a PostgreSQL database,
//! a RabbitMQ vhost — for the tests' `TestEnv` and for the bench alike.
//!
//! These return errors instead of panicking: the bench reports them, and the tests decide
//! which ones are fatal.

use sqlx::{Connection as _, PgConnection};

/// What went wrong talking to PostgreSQL or the management API.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// `url` with its path (a database or a vhost) replaced by `name`.
pub fn with_path(url: &str, name: &str) -> Result<String, Error> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| format!("cannot derive a URL from {url}: {e}"))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

/// The management API's base URL and the credentials in it (`guest`/`guest` when it has none).
pub fn management(api: &str) -> Result<(String, String, String), Error> {
    let parsed = url::Url::parse(api).map_err(|e| format!("management API {api}: {e}"))?;
    let user = if parsed.username().is_empty() {
        "guest".to_owned()
    } else {
        parsed.username().to_owned()
    };
    let password = parsed.password().unwrap_or("guest").to_owned();
    let mut base = parsed;
    // Cannot fail on an http(s) URL; the credentials go in a header instead.
    let _ = base.set_username("");
    let _ = base.set_password(None);
    Ok((
        base.as_str().trim_end_matches('/').to_owned(),
        user,
        password,
    ))
}

/// Creates vhost `name` through the management API `api` and gives `user` every permission
/// in it; a vhost whose permission cannot be set is removed again.
pub async fn create_vhost(api: &str, name: &str, user: &str) -> Result<(), Error> {
    let (base, admin, password) = management(api)?;
    let http = crate::env::client();
    let created = http
        .put(format!("{base}/api/vhosts/{name}"))
        .basic_auth(&admin, Some(&password))
        .send()
        .await?;
    if !created.status().is_success() {
        return Err(format!("creating vhost {name}: {}", created.status()).into());
    }
    let granted = http
        .put(format!("{base}/api/permissions/{name}/{user}"))
        .basic_auth(&admin, Some(&password))
        .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
        .send()
        .await?;
    if !granted.status().is_success() {
        if let Err(e) = delete_vhost(api, name).await {
            tracing::warn!(error = %e, vhost = name, "could not remove the vhost again");
        }
        return Err(format!("granting {user} on vhost {name}: {}", granted.status()).into());
    }
    Ok(())
}

/// Deletes vhost `name` (and every queue in it); one that does not exist is fine.
pub async fn delete_vhost(api: &str, name: &str) -> Result<(), Error> {
    let (base, admin, password) = management(api)?;
    let response = crate::env::client()
        .delete(format!("{base}/api/vhosts/{name}"))
        .basic_auth(&admin, Some(&password))
        .send()
        .await?;
    if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(format!("deleting vhost {name}: {}", response.status()).into())
    }
}

/// Drops database `name` on the server of `admin_url` (connecting to its `postgres`
/// database), even while connections remain.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), Error> {
    let options = anika_shared::db::options(&with_path(admin_url, "postgres")?)?;
    let mut conn = PgConnection::connect_with(&options).await?;
    // FORCE: connections a killed server left behind must not keep the database alive.
    let statement = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}
