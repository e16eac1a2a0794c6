//! The audit log: writing one entry in the transaction of its change, and reading pages of it.
//!
//! [`crate::audit`] decides what an entry says and who may read which; this module holds
//! only the table's SQL.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::audit::ActorRole;

/// An entry to write.
#[derive(Debug)]
pub struct NewAuditEntry<'a> {
    /// Its id (UUIDv7).
    pub id: Uuid,
    /// When (the id's own millisecond).
    pub at: DateTime<Utc>,
    /// The actor's API key, if it acted with one.
    pub actor_api_key_id: Option<Uuid>,
    /// The actor's partner.
    pub actor_partner_id: Option<Uuid>,
    /// The actor's role, as stored.
    pub actor_role: &'a str,
    /// `<resource>.<verb>`.
    pub action: &'a str,
    /// The target's type.
    pub target_type: &'a str,
    /// The target's id.
    pub target_id: &'a str,
    /// The partner whose resource the target is (whose admins may read the entry).
    pub target_partner_id: Option<Uuid>,
    /// `{"field": {"old": …, "new": …}}`.
    pub changes: Value,
}

/// Writes one entry.
pub async fn insert_audit_entry(
    db: impl sqlx::PgExecutor<'_>,
    entry: NewAuditEntry<'_>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO audit_log (id, at, actor_api_key_id, actor_partner_id, actor_role, action, \
                                target_type, target_id, target_partner_id, changes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        entry.id,
        entry.at,
        entry.actor_api_key_id,
        entry.actor_partner_id,
        entry.actor_role,
        entry.action,
        entry.target_type,
        entry.target_id,
        entry.target_partner_id,
        Json(entry.changes) as _,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// An entry as read.
#[derive(Debug)]
pub struct AuditRow {
    /// Its id.
    pub id: Uuid,
    /// When.
    pub at: DateTime<Utc>,
    /// The actor's API key.
    pub actor_api_key_id: Option<Uuid>,
    /// The actor's partner.
    pub actor_partner_id: Option<Uuid>,
    /// Typed on read: a role that is none of the known ones is an error (logged and counted).
    pub actor_role: ActorRole,
    /// `<resource>.<verb>`.
    pub action: String,
    /// The target's type.
    pub target_type: String,
    /// The target's id.
    pub target_id: String,
    /// The changed fields.
    pub changes: Json<Value>,
}

/// Which entries to read: every filter is optional.
#[derive(Debug, Default)]
pub struct AuditQuery<'a> {
    /// Only entries about this partner's resources.
    pub target_partner_id: Option<Uuid>,
    /// Only this action.
    pub action: Option<&'a str>,
    /// Only targets of this type.
    pub target_type: Option<&'a str>,
    /// Only this target.
    pub target_id: Option<&'a str>,
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
    /// Strictly older than this `(at, id)`.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// At most this many.
    pub limit: i64,
}

/// Reads entries, newest first (see [`AuditQuery`]).
pub async fn list_audit_entries(
    db: impl sqlx::PgExecutor<'_>,
    query: AuditQuery<'_>,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as!(
        AuditRow,
        r#"SELECT id, at, actor_api_key_id, actor_partner_id, actor_role AS "actor_role: ActorRole",
                  action, target_type, target_id, changes AS "changes: Json<Value>"
           FROM audit_log
           WHERE ($1::uuid IS NULL OR target_partner_id = $1)
             AND ($2::text IS NULL OR action = $2)
             AND ($3::text IS NULL OR target_type = $3)
             AND ($4::text IS NULL OR target_id = $4)
             AND ($5::timestamptz IS NULL OR at >= $5)
             AND ($6::timestamptz IS NULL OR at < $6)
             AND ($7::timestamptz IS NULL OR (at, id) < ($7, $8))
           ORDER BY at DESC, id DESC LIMIT $9"#,
        query.target_partner_id,
        query.action,
        query.target_type,
        query.target_id,
        query.since,
        query.until,
        query.before.map(|b| b.0),
        query.before.map(|b| b.1),
        query.limit,
    )
    .fetch_all(db)
    .await
}
