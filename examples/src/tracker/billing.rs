//! Billing: records every `payout` it receives, once per event id.
//!
//! This is the service the scripted day takes down and whose storage it wipes: Billing
//! then rebuilds everything from anika's log with a replay, and because it applies an
//! event id at most once, the replay's repeats of payouts it still had cost nothing.

use std::collections::BTreeMap;

use super::storage::{Storage, first_time};
use crate::{
    Error,
    receiver::{Delivery, Handled, Handler},
};

/// Billing's table.
pub const TABLES: &[&str] = &[
    "CREATE TABLE payouts (event_id text PRIMARY KEY, user_id text NOT NULL, amount bigint NOT NULL)",
];

/// The Billing service.
pub struct Billing {
    /// Its storage.
    pub storage: Storage,
}

/// Billing's books: per user, the number of payouts and their total.
pub type Books = BTreeMap<String, (i64, i64)>;

impl Handler for Billing {
    async fn handle(&self, _hook: &str, event: Delivery) -> Result<Handled, Error> {
        let mut tx = self.storage.begin().await?;
        if !first_time(&mut tx, &event.id).await? {
            return Ok(Handled::Duplicate);
        }
        sqlx::query("INSERT INTO payouts (event_id, user_id, amount) VALUES ($1, $2, $3)")
            .bind(&event.id)
            .bind(event.data["user_id"].as_str().unwrap_or_default())
            .bind(event.data["amount"].as_i64().unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Handled::Applied)
    }
}

impl Billing {
    /// The ids of the payout events Billing recorded, sorted.
    pub async fn payout_ids(&self) -> Result<Vec<String>, Error> {
        Ok(
            sqlx::query_scalar("SELECT event_id FROM payouts ORDER BY event_id")
                .fetch_all(self.storage.pool())
                .await?,
        )
    }

    /// Billing's books.
    pub async fn books(&self) -> Result<Books, Error> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT user_id, count(*), sum(amount)::bigint FROM payouts GROUP BY user_id",
        )
        .fetch_all(self.storage.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user, n, total)| (user, (n, total)))
            .collect())
    }
}
