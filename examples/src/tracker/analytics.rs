//! Analytics: counts the day's task events as they arrive.

use std::collections::BTreeMap;

use super::storage::{Storage, first_time};
use crate::{
    Error,
    receiver::{Delivery, Handled, Handler},
};

/// Analytics' table: one row per task event.
pub const TABLES: &[&str] = &[
    "CREATE TABLE events (event_id text PRIMARY KEY, kind text NOT NULL, task_id text NOT NULL, user_id text)",
];

/// The Analytics service.
pub struct Analytics {
    /// Its storage.
    pub storage: Storage,
}

/// The day in numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Assignments, reassignments included.
    pub assigned: i64,
    /// Closes.
    pub closed: i64,
    /// Distinct tasks seen.
    pub tasks: i64,
    /// Assignments per user.
    pub assigned_per_user: BTreeMap<String, i64>,
}

impl Handler for Analytics {
    async fn handle(&self, hook: &str, event: Delivery) -> Result<Handled, Error> {
        let mut tx = self.storage.begin().await?;
        if !first_time(&mut tx, &event.id).await? {
            return Ok(Handled::Duplicate);
        }
        let kind = if hook == super::accounts::ASSIGNED {
            "assigned"
        } else {
            "closed"
        };
        sqlx::query(
            "INSERT INTO events (event_id, kind, task_id, user_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(&event.id)
        .bind(kind)
        .bind(event.data["task_id"].as_str().unwrap_or_default())
        .bind(event.data["user_id"].as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Handled::Applied)
    }
}

impl Analytics {
    /// The report so far.
    pub async fn report(&self) -> Result<Report, Error> {
        let (assigned, closed, tasks): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE kind = 'assigned'), count(*) FILTER (WHERE kind = 'closed'), \
             count(DISTINCT task_id) FROM events",
        )
        .fetch_one(self.storage.pool())
        .await?;
        let per_user: Vec<(String, i64)> = sqlx::query_as(
            "SELECT user_id, count(*) FROM events WHERE kind = 'assigned' GROUP BY user_id",
        )
        .fetch_all(self.storage.pool())
        .await?;
        Ok(Report {
            assigned,
            closed,
            tasks,
            assigned_per_user: per_user.into_iter().collect(),
        })
    }
}
