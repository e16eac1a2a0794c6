//! `anika secrets …`: the main-key ring of the secrets at rest (check, rotate, new key).

#![allow(clippy::print_stdout)] // printing results is what these commands are for

use anika_shared::{
    config::{Config, redact_url},
    context::StartError,
    db,
    secret_rows::{self, CheckReport},
    secrets::{KeyRing, MainKeyId},
};
use serde_json::json;
use sqlx::PgPool;

use crate::cli::CliError;

/// The database and the configured ring (the commands below need both).
pub async fn connect(config: &Config) -> Result<(PgPool, KeyRing), CliError> {
    let ring = config.secret_keys.clone().ok_or(StartError::NoSecretKeys)?;
    let pool = db::connect_and_migrate(config.database_url.expose(), 2).await?;
    Ok((pool, ring))
}

/// `anika secrets check`: opens every stored secret; fails if any does not open.
pub async fn check(config: &Config, as_json: bool) -> Result<(), CliError> {
    let (pool, ring) = connect(config).await?;
    let report = secret_rows::check(&pool, &ring).await?;
    if as_json {
        println!("{}", report_json(&report, &ring));
    } else {
        println!(
            "{} stored secret(s) in {}; ring: {}",
            report.total(),
            redact_url(config.database_url.expose()),
            ring.ids()
                .map(MainKeyId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (id, n) in &report.opened {
            println!("  {n:>6} under main key {id}");
        }
        for (id, n) in &report.unknown {
            println!("  {n:>6} under main key {id}: NOT IN ANIKA_SECRET_KEYS");
        }
        for (slot, why) in &report.refused {
            println!("  {slot}: {why}");
        }
        if report.plain > 0 {
            println!(
                "  {:>6} in plain text (sealed when a role next starts)",
                report.plain
            );
        }
    }
    if report.healthy() {
        Ok(())
    } else {
        Err(format!(
            "{} stored secret(s) do not open with ANIKA_SECRET_KEYS",
            report.total() - report.opened.values().sum::<u64>()
        )
        .into())
    }
}

fn report_json(report: &CheckReport, ring: &KeyRing) -> serde_json::Value {
    json!({
        "ring": ring.ids().map(MainKeyId::as_str).collect::<Vec<_>>(),
        "opened": report.opened.iter().map(|(id, n)| (id.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "unknown_keys": report.unknown.iter().map(|(id, n)| (id.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "refused": report.refused.iter().map(|(slot, why)| json!({"value": slot, "error": why})).collect::<Vec<_>>(),
        "plain": report.plain,
        "healthy": report.healthy(),
    })
}

/// `anika secrets rotate-main-key`: re-wraps every data key under the ring's first key, online.
pub async fn rotate_main_key(config: &Config, as_json: bool) -> Result<(), CliError> {
    let (pool, ring) = connect(config).await?;
    // Rows an older version left in clear are sealed first (under the new key at once).
    secret_rows::seal_plain_rows(&pool, &ring).await?;
    let report = secret_rows::rewrap_all(&pool, &ring).await?;
    if as_json {
        println!(
            "{}",
            json!({
                "main_key": ring.current().as_str(),
                "rewrapped": report.rewrapped,
                "already_current": report.current,
                "failed": report.failed.iter().map(|(slot, why)| json!({"value": slot, "error": why})).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "re-wrapped {} data key(s) under main key {} ({} already were)",
            report.rewrapped,
            ring.current(),
            report.current
        );
        for (slot, why) in &report.failed {
            println!("  left as is: {slot}: {why}");
        }
    }
    if report.failed.is_empty() {
        if ring.ids().count() > 1 {
            eprintln!(
                "every stored secret is under {}: the other keys may now leave ANIKA_SECRET_KEYS \
                 (restart the roles with the shorter ring)",
                ring.current()
            );
        }
        Ok(())
    } else {
        Err(format!(
            "{} stored secret(s) could not be re-wrapped; keep the old keys in the ring",
            report.failed.len()
        )
        .into())
    }
}

/// `anika secrets new-key`: prints a ring entry with a fresh random key.
pub fn new_key(id: &str) -> Result<(), CliError> {
    let id = MainKeyId::parse(id)?;
    println!("{}", KeyRing::generate_entry(&id));
    Ok(())
}
