//! Auth: knows the users ("popugs") and announces each new one in its topic `user.created`.

use std::sync::Arc;

use serde_json::json;

use super::storage::Storage;
use crate::{
    Error, Say,
    setup::{Partner, Topic},
};

/// The users of the day: (user id, name).
pub const USERS: [(&str, &str); 5] = [
    ("u-kesha", "Kesha"),
    ("u-rio", "Rio"),
    ("u-zazu", "Zazu"),
    ("u-iago", "Iago"),
    ("u-polly", "Polly"),
];

/// Auth's tables.
pub const TABLES: &[&str] =
    &["CREATE TABLE users (user_id text PRIMARY KEY, name text NOT NULL, email text NOT NULL)"];

/// The Auth service.
pub struct Auth {
    /// Its partner account.
    pub partner: Arc<Partner>,
    /// Its storage.
    pub storage: Storage,
    /// Its topic `user.created`.
    pub users: Topic,
    /// Its narration.
    pub say: Say,
}

impl Auth {
    /// Registers a user and announces it.
    pub async fn register(&self, user_id: &str, name: &str) -> Result<(), Error> {
        let email = format!("{}@popug.example", name.to_lowercase());
        sqlx::query(
            "INSERT INTO users (user_id, name, email) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(name)
        .bind(&email)
        .execute(self.storage.pool())
        .await?;
        let data = json!({"user_id": user_id, "name": name, "email": email});
        self.partner
            .publisher
            .publish(&self.users.id, data, user_id)
            .await?;
        self.say
            .line(format!("[auth]      {name} signed up → user.created"));
        Ok(())
    }
}
