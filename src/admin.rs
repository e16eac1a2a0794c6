//! Administrative commands (`anika migrate`, `api-keys create`, `signing-keys rotate`) run against PostgreSQL through `shared::store`.

#![allow(clippy::print_stdout)] // printing is what these commands are for

use anika_shared::{
    audit::Actor,
    config::{Config, redact_url},
    db,
    domain::{PartnerId, Role},
    secret_rows,
};

use crate::cli::CliError;

/// `anika migrate`.
pub async fn migrate(config: &Config) -> Result<(), CliError> {
    let pool = db::connect_and_migrate(config.database_url.expose(), 2).await?;
    let applied = anika_shared::store::schema::count_applied_migrations(&pool).await?;
    println!(
        "database {} is at migration {applied}",
        redact_url(config.database_url.expose())
    );
    // The step after the SQL: secrets an earlier version stored in clear are sealed. Every
    // role does it at start too; here only when a ring is configured.
    match &config.secret_keys {
        Some(ring) => {
            secret_rows::prepare(&pool, ring).await?;
            println!("stored secrets are sealed and open with ANIKA_SECRET_KEYS");
        }
        None => eprintln!(
            "ANIKA_SECRET_KEYS is not set: plain-text secrets, if any, are sealed when a role starts"
        ),
    }
    Ok(())
}

/// `anika api-keys create`.
pub async fn create_api_key(
    config: &Config,
    role: Role,
    partner: Option<PartnerId>,
    name: &str,
) -> Result<(), CliError> {
    let pool = db::connect_and_migrate(config.database_url.expose(), 2).await?;
    let (id, key) = anika_catalog::create_api_key(&pool, &Actor::cli(), role, partner, name)
        .await
        .map_err(|e| format!("{e}: {}", explain(&e)))?;
    eprintln!("created {role} API key {id}; it is shown only now:");
    println!("{key}");
    Ok(())
}

fn explain(error: &anika_catalog::Error) -> String {
    match error {
        anika_catalog::Error::Client(problem) => problem.detail.clone(),
        other => other.to_string(),
    }
}

/// `anika signing-keys rotate`.
pub async fn rotate_signing_key(config: &Config) -> Result<(), CliError> {
    let (pool, ring) = crate::secrets::connect(config).await?;
    let kid = anika_catalog::keys::rotate_signing_key(&pool, &ring, &Actor::cli()).await?;
    println!(
        "new signing key {kid}; tokens signed by the previous key stay valid until they expire"
    );
    Ok(())
}
