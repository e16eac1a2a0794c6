//! Tasks: creates, assigns, reassigns and closes tasks; publishes `task.assigned` and
//! `task.closed`; learns the users from Auth's `user.created`.

use std::{collections::BTreeMap, sync::Arc};

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

/// Tasks' tables: the users it may assign to, the tasks, and the history of the day.
pub const TABLES: &[&str] = &[
    "CREATE TABLE users (user_id text PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE tasks (task_id text PRIMARY KEY, title text NOT NULL, assignee text, closed boolean NOT NULL DEFAULT false)",
    "CREATE TABLE history (seq bigserial PRIMARY KEY, task_id text NOT NULL, kind text NOT NULL, user_id text, at timestamptz NOT NULL)",
];

/// The Tasks service.
pub struct Tasks {
    /// Its partner account.
    pub partner: Arc<Partner>,
    /// Its storage.
    pub storage: Storage,
    /// Its topic `task.assigned`.
    pub assigned: Topic,
    /// Its topic `task.closed`.
    pub closed: Topic,
    /// Its narration.
    pub say: Say,
}

/// The day as Tasks recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Tasks created.
    pub created: i64,
    /// Assignments, the first ones and every reassignment.
    pub assigned: i64,
    /// Tasks closed.
    pub closed: i64,
    /// Assignments per user.
    pub assigned_per_user: BTreeMap<String, i64>,
}

impl Handler for Tasks {
    async fn handle(&self, _hook: &str, event: Delivery) -> Result<Handled, Error> {
        let mut tx = self.storage.begin().await?;
        if !first_time(&mut tx, &event.id).await? {
            return Ok(Handled::Duplicate);
        }
        sqlx::query("INSERT INTO users (user_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(event.data["user_id"].as_str().unwrap_or_default())
            .bind(event.data["name"].as_str().unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Handled::Applied)
    }
}

impl Tasks {
    /// How many users Tasks knows.
    pub async fn users_known(&self) -> Result<i64, Error> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(self.storage.pool())
            .await?)
    }

    /// Creates task `task_id` and assigns it (round 0).
    pub async fn create(&self, task_id: &str, title: &str) -> Result<(), Error> {
        let mut tx = self.storage.begin().await?;
        sqlx::query("INSERT INTO tasks (task_id, title) VALUES ($1, $2)")
            .bind(task_id)
            .bind(title)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO history (task_id, kind, at) VALUES ($1, 'created', now())")
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.assign(task_id, 0).await
    }

    /// Reassigns every open task (assignment `round`); returns how many.
    pub async fn reassign_open(&self, round: u32) -> Result<usize, Error> {
        let open = self.open_tasks().await?;
        for task_id in &open {
            self.assign(task_id, round).await?;
        }
        Ok(open.len())
    }

    /// The open tasks, by id.
    pub async fn open_tasks(&self) -> Result<Vec<String>, Error> {
        Ok(
            sqlx::query_scalar("SELECT task_id FROM tasks WHERE NOT closed ORDER BY task_id")
                .fetch_all(self.storage.pool())
                .await?,
        )
    }

    /// Gives `task_id` to the user the rules pick for `round`, and says so.
    async fn assign(&self, task_id: &str, round: u32) -> Result<(), Error> {
        let users: Vec<String> = sqlx::query_scalar("SELECT user_id FROM users ORDER BY user_id")
            .fetch_all(self.storage.pool())
            .await?;
        let user_id = &users[rules::assignee(task_id, round, users.len())];
        let at = chrono::Utc::now();
        let mut tx = self.storage.begin().await?;
        sqlx::query("UPDATE tasks SET assignee = $2 WHERE task_id = $1")
            .bind(task_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO history (task_id, kind, user_id, at) VALUES ($1, 'assigned', $2, $3)",
        )
        .bind(task_id)
        .bind(user_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let data = json!({"task_id": task_id, "user_id": user_id, "at": at});
        self.partner
            .publisher
            .publish(
                &self.assigned.id,
                data,
                &format!("{task_id}-assigned-{round}"),
            )
            .await?;
        Ok(())
    }

    /// Closes `task_id`.
    pub async fn close(&self, task_id: &str) -> Result<(), Error> {
        let at = chrono::Utc::now();
        let mut tx = self.storage.begin().await?;
        sqlx::query("UPDATE tasks SET closed = true WHERE task_id = $1")
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO history (task_id, kind, at) VALUES ($1, 'closed', $2)")
            .bind(task_id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let data = json!({"task_id": task_id, "at": at});
        self.partner
            .publisher
            .publish(&self.closed.id, data, &format!("{task_id}-closed"))
            .await?;
        Ok(())
    }

    /// The day's history, counted.
    pub async fn history(&self) -> Result<History, Error> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT kind, count(*) FROM history GROUP BY kind")
                .fetch_all(self.storage.pool())
                .await?;
        let count = |kind: &str| {
            counts
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(0, |(_, n)| *n)
        };
        let per_user: Vec<(String, i64)> = sqlx::query_as(
            "SELECT user_id, count(*) FROM history WHERE kind = 'assigned' GROUP BY user_id",
        )
        .fetch_all(self.storage.pool())
        .await?;
        Ok(History {
            created: count("created"),
            assigned: count("assigned"),
            closed: count("closed"),
            assigned_per_user: per_user.into_iter().collect(),
        })
    }
}
