//! Mailer: learns addresses from Auth's `user.created` and sends one mail per `payout`.

use super::storage::{Storage, first_time};
use crate::{
    Error, Say,
    receiver::{Delivery, Handled, Handler},
};

/// Receiver path of the `user.created` subscription.
pub const USERS: &str = "user-created";
/// Receiver path of the `payout` subscription.
pub const PAYOUTS: &str = "payout";

/// Mailer's tables: the addresses and the mails sent.
pub const TABLES: &[&str] = &[
    "CREATE TABLE users (user_id text PRIMARY KEY, email text NOT NULL)",
    "CREATE TABLE mails (payout_event_id text PRIMARY KEY, email text NOT NULL, subject text NOT NULL)",
];

/// The Mailer service.
pub struct Mailer {
    /// Its storage.
    pub storage: Storage,
    /// Its narration.
    pub say: Say,
}

/// One mail sent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mail {
    /// The payout it tells of.
    pub payout_event_id: String,
    /// To whom.
    pub email: String,
    /// What it says.
    pub subject: String,
}

impl Handler for Mailer {
    async fn handle(&self, hook: &str, event: Delivery) -> Result<Handled, Error> {
        let user_id = event.data["user_id"].as_str().unwrap_or_default();
        let mut tx = self.storage.begin().await?;
        if !first_time(&mut tx, &event.id).await? {
            return Ok(Handled::Duplicate);
        }
        if hook == USERS {
            sqlx::query(
                "INSERT INTO users (user_id, email) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(user_id)
            .bind(event.data["email"].as_str().unwrap_or_default())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Handled::Applied);
        }
        let email: Option<String> =
            sqlx::query_scalar("SELECT email FROM users WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let email = email.ok_or_else(|| Error::Pending(format!("no address for {user_id} yet")))?;
        let subject = format!("You were paid {}", event.data["amount"]);
        // "Sending" is recording the mail in the same transaction as the event id, so a
        // redelivered payout never mails twice.
        sqlx::query("INSERT INTO mails (payout_event_id, email, subject) VALUES ($1, $2, $3)")
            .bind(&event.id)
            .bind(&email)
            .bind(&subject)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.say.line(format!("[mailer]    to {email}: {subject}"));
        Ok(Handled::Applied)
    }
}

impl Mailer {
    /// How many addresses Mailer knows.
    pub async fn users_known(&self) -> Result<i64, Error> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(self.storage.pool())
            .await?)
    }

    /// The mails sent, by payout.
    pub async fn mails(&self) -> Result<Vec<Mail>, Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT payout_event_id, email, subject FROM mails ORDER BY payout_event_id",
        )
        .fetch_all(self.storage.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(payout_event_id, email, subject)| Mail {
                payout_event_id,
                email,
                subject,
            })
            .collect())
    }
}
