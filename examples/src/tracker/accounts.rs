//! Accounts: books what each task assignment costs and each close pays, and publishes
//! every credit as a `payout` to its own topic.
//!
//! A close is booked and its payout recorded as pending in one transaction; the payout
//! is published afterwards with the close's event id as `Idempotency-Key`. If that
//! publish fails, the close's redelivery (a duplicate by event id, so nothing is booked
//! twice) publishes the pending payout: each payout reaches anika exactly once.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    rules,
    storage::{Storage, first_time},
};
use crate::{
    Error, Say,
    receiver::{Delivery, Handled, Handler},
    setup::{Partner, Topic},
};

/// Receiver path of the `task.assigned` subscription.
pub const ASSIGNED: &str = "task-assigned";
/// Receiver path of the `task.closed` subscription.
pub const CLOSED: &str = "task-closed";

/// Accounts' tables: who holds each task, the ledger, and the payouts.
pub const TABLES: &[&str] = &[
    "CREATE TABLE assignees (task_id text PRIMARY KEY, user_id text NOT NULL, at timestamptz NOT NULL)",
    "CREATE TABLE ledger (event_id text PRIMARY KEY, user_id text NOT NULL, task_id text NOT NULL, amount bigint NOT NULL)",
    "CREATE TABLE payouts (close_event_id text PRIMARY KEY, user_id text NOT NULL, amount bigint NOT NULL, payout_event_id text UNIQUE)",
];

/// The Accounts service.
pub struct Accounts {
    /// Its partner account.
    pub partner: Arc<Partner>,
    /// Its storage.
    pub storage: Storage,
    /// Its topic `payout`.
    pub payouts: Topic,
    /// Its narration.
    pub say: Say,
}

/// One payout Accounts booked and published.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Payout {
    /// The `payout` event's id.
    pub event_id: String,
    /// Who is paid.
    pub user_id: String,
    /// How much.
    pub amount: i64,
}

impl Handler for Accounts {
    async fn handle(&self, hook: &str, event: Delivery) -> Result<Handled, Error> {
        let task_id = event.data["task_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let at: DateTime<Utc> = serde_json::from_value(event.data["at"].clone())
            .map_err(|e| Error::Pending(format!("event {} has no valid `at`: {e}", event.id)))?;
        let mut tx = self.storage.begin().await?;
        if !first_time(&mut tx, &event.id).await? {
            drop(tx);
            if hook == CLOSED {
                self.publish_pending(&event.id).await?;
            }
            return Ok(Handled::Duplicate);
        }
        if hook == ASSIGNED {
            let user_id = event.data["user_id"].as_str().unwrap_or_default();
            // Reassignments may arrive out of order: the latest `at` holds the task.
            sqlx::query(
                "INSERT INTO assignees (task_id, user_id, at) VALUES ($1, $2, $3) \
                 ON CONFLICT (task_id) DO UPDATE SET user_id = excluded.user_id, at = excluded.at \
                 WHERE assignees.at < excluded.at",
            )
            .bind(&task_id)
            .bind(user_id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            book(
                &mut tx,
                &event.id,
                user_id,
                &task_id,
                -rules::assign_cost(&task_id),
            )
            .await?;
            tx.commit().await?;
            return Ok(Handled::Applied);
        }
        let assignee: Option<String> =
            sqlx::query_scalar("SELECT user_id FROM assignees WHERE task_id = $1")
                .bind(&task_id)
                .fetch_optional(&mut *tx)
                .await?;
        // Closed before its assignment arrived: refuse, and anika delivers it again later.
        let user_id = assignee
            .ok_or_else(|| Error::Pending(format!("{task_id} closed before any assignment")))?;
        let reward = rules::close_reward(&task_id);
        book(&mut tx, &event.id, &user_id, &task_id, reward).await?;
        sqlx::query("INSERT INTO payouts (close_event_id, user_id, amount) VALUES ($1, $2, $3)")
            .bind(&event.id)
            .bind(&user_id)
            .bind(reward)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.publish_pending(&event.id).await?;
        Ok(Handled::Applied)
    }
}

/// Writes one ledger line.
async fn book(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    event_id: &str,
    user_id: &str,
    task_id: &str,
    amount: i64,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO ledger (event_id, user_id, task_id, amount) VALUES ($1, $2, $3, $4)")
        .bind(event_id)
        .bind(user_id)
        .bind(task_id)
        .bind(amount)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Accounts {
    /// Publishes the payout of close `close_event_id` if it is still pending.
    async fn publish_pending(&self, close_event_id: &str) -> Result<(), Error> {
        let pending: Option<(String, i64)> = sqlx::query_as(
            "SELECT user_id, amount FROM payouts WHERE close_event_id = $1 AND payout_event_id IS NULL",
        )
        .bind(close_event_id)
        .fetch_optional(self.storage.pool())
        .await?;
        let Some((user_id, amount)) = pending else {
            return Ok(());
        };
        let data = json!({"user_id": user_id, "amount": amount});
        let key = format!("payout-for-{close_event_id}");
        let payout_event_id = self
            .partner
            .publisher
            .publish(&self.payouts.id, data, &key)
            .await?;
        sqlx::query("UPDATE payouts SET payout_event_id = $2 WHERE close_event_id = $1")
            .bind(close_event_id)
            .bind(&payout_event_id)
            .execute(self.storage.pool())
            .await?;
        self.say
            .line(format!("[accounts]  {user_id} earned {amount} → payout"));
        Ok(())
    }

    /// How many task events Accounts applied: (assignments, closes).
    pub async fn applied(&self) -> Result<(i64, i64), Error> {
        Ok(sqlx::query_as(
            "SELECT count(*) FILTER (WHERE amount < 0), count(*) FILTER (WHERE amount > 0) FROM ledger",
        )
        .fetch_one(self.storage.pool())
        .await?)
    }

    /// The published payouts, by event id.
    pub async fn payouts(&self) -> Result<Vec<Payout>, Error> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT payout_event_id, user_id, amount FROM payouts \
             WHERE payout_event_id IS NOT NULL ORDER BY payout_event_id",
        )
        .fetch_all(self.storage.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(event_id, user_id, amount)| Payout {
                event_id,
                user_id,
                amount,
            })
            .collect())
    }

    /// Each user's balance: credits minus debits.
    pub async fn balances(&self) -> Result<BTreeMap<String, i64>, Error> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT user_id, sum(amount)::bigint FROM ledger GROUP BY user_id")
                .fetch_all(self.storage.pool())
                .await?;
        Ok(rows.into_iter().collect())
    }
}
