//! The event log and its outbox: writing accepted events, relaying, searching, replaying and retention.
//!
//! Ingest writes a group of accepted events (with their outbox rows) in one statement,
//! claiming idempotency keys first when the group has any; the publisher and the relay
//! delete outbox rows once RabbitMQ confirmed them. Search over the log is the one query
//! here built at run time (its filters vary). Retention keeps the partitioned tables'
//! shape and deletes, in chunks, whatever outlived its retention.

use chrono::{DateTime, Utc};
use uuid::Uuid;

// ---- Writing accepted events ----
//
// The arrays of borrowed text and bytes are passed `as _`: the macros' parameter check
// expects arrays of owned values (`&[String]`), and these encode the same way without
// copying every event's data on the hot path.

/// A group of events to write, column by column (every slice has one entry per event).
#[derive(Clone, Copy, Debug)]
pub struct EventColumns<'a> {
    /// The events' ids.
    pub ids: &'a [Uuid],
    /// Their topics.
    pub topic_ids: &'a [Uuid],
    /// Who published them.
    pub publisher_partner_ids: &'a [Uuid],
    /// Their keys.
    pub keys: &'a [Option<&'a str>],
    /// Their `data`, as JSON text.
    pub data: &'a [&'a str],
    /// When they were received (each the id's timestamp).
    pub received_at: &'a [DateTime<Utc>],
}

/// Writes the event rows and their outbox rows, in one statement (atomic on its own).
pub async fn insert_events(
    db: impl sqlx::PgExecutor<'_>,
    events: EventColumns<'_>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "\
    WITH new_events AS ( \
        INSERT INTO events (id, topic_id, publisher_partner_id, key, data, received_at) \
        SELECT u.id, u.topic_id, u.publisher, u.key, u.data::jsonb, u.received_at \
        FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[]) \
            AS u(id, topic_id, publisher, key, data, received_at) \
        RETURNING id, received_at) \
    INSERT INTO outbox (event_id, received_at) SELECT id, received_at FROM new_events",
        events.ids,
        events.topic_ids,
        events.publisher_partner_ids,
        events.keys as _,
        events.data as _,
        events.received_at,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Idempotency keys to claim, column by column (every slice has one entry per key).
#[derive(Clone, Copy, Debug)]
pub struct KeyClaims<'a> {
    /// The keys' topics.
    pub topic_ids: &'a [Uuid],
    /// The keys.
    pub keys: &'a [&'a str],
    /// The events that would claim them.
    pub event_ids: &'a [Uuid],
    /// When those events were received.
    pub received_at: &'a [DateTime<Utc>],
    /// The hashes of the requests the events stand for.
    pub request_hashes: &'a [&'a [u8]],
}

/// An idempotency key a group claimed.
#[derive(Debug)]
pub struct ClaimedKey {
    /// Its topic.
    pub topic_id: Uuid,
    /// The key.
    pub key: String,
}

/// Claims idempotency keys that are new or expired (older than 24 h); returns those it claimed.
pub async fn claim_idempotency_keys(
    db: impl sqlx::PgExecutor<'_>,
    claims: KeyClaims<'_>,
) -> sqlx::Result<Vec<ClaimedKey>> {
    sqlx::query_as!(
        ClaimedKey,
        "\
    INSERT INTO idempotency_keys AS k (topic_id, key, event_id, received_at, request_hash) \
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::bytea[]) \
    ON CONFLICT (topic_id, key) DO UPDATE \
        SET event_id = EXCLUDED.event_id, received_at = EXCLUDED.received_at, \
            request_hash = EXCLUDED.request_hash, created_at = now() \
        WHERE k.created_at < now() - interval '24 hours' \
    RETURNING topic_id, key",
        claims.topic_ids,
        claims.keys as _,
        claims.event_ids,
        claims.received_at,
        claims.request_hashes as _,
    )
    .fetch_all(db)
    .await
}

/// An idempotency key another request holds.
#[derive(Debug)]
pub struct HeldKey {
    /// Its topic.
    pub topic_id: Uuid,
    /// The key.
    pub key: String,
    /// The event first stored under it.
    pub event_id: Uuid,
    /// The hash of the request that first used it.
    pub request_hash: Vec<u8>,
}

/// Reads the keys another request holds, of the `(topic_ids[i], keys[i])` pairs.
pub async fn held_idempotency_keys(
    db: impl sqlx::PgExecutor<'_>,
    topic_ids: &[Uuid],
    keys: &[&str],
) -> sqlx::Result<Vec<HeldKey>> {
    sqlx::query_as!(
        HeldKey,
        "\
    SELECT k.topic_id, k.key, k.event_id, k.request_hash FROM idempotency_keys k \
    JOIN UNNEST($1::uuid[], $2::text[]) AS w(topic_id, key) ON k.topic_id = w.topic_id AND k.key = w.key",
        topic_ids,
        keys as _,
    )
    .fetch_all(db)
    .await
}

/// Gives back keys claimed by a request that was refused after all: each
/// `(topic_ids[i], keys[i])` pair, if `event_ids[i]` still holds it.
pub async fn release_idempotency_keys(
    db: impl sqlx::PgExecutor<'_>,
    topic_ids: &[Uuid],
    keys: &[&str],
    event_ids: &[Uuid],
) -> sqlx::Result<()> {
    sqlx::query!(
        "\
    DELETE FROM idempotency_keys k USING UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS r(topic_id, key, event_id) \
    WHERE k.topic_id = r.topic_id AND k.key = r.key AND k.event_id = r.event_id",
        topic_ids,
        keys as _,
        event_ids,
    )
    .execute(db)
    .await?;
    Ok(())
}

// ---- The outbox ----

/// Deletes the outbox rows of confirmed events, skipping (not waiting for) the rows
/// another transaction holds locked; how many it deleted.
pub async fn delete_confirmed_outbox_rows(
    db: impl sqlx::PgExecutor<'_>,
    event_ids: &[Uuid],
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "DELETE FROM outbox WHERE event_id IN \
         (SELECT event_id FROM outbox WHERE event_id = ANY($1) FOR UPDATE SKIP LOCKED)",
        event_ids,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes the outbox rows of these events (the relay's, which it holds locked); how many.
pub async fn delete_outbox_rows(
    db: impl sqlx::PgExecutor<'_>,
    event_ids: &[Uuid],
) -> sqlx::Result<u64> {
    let done = sqlx::query!("DELETE FROM outbox WHERE event_id = ANY($1)", event_ids)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

/// Counts the outbox rows, up to `cap`.
pub async fn count_outbox(db: impl sqlx::PgExecutor<'_>, cap: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM (SELECT 1 FROM outbox LIMIT $1) o"#,
        cap,
    )
    .fetch_one(db)
    .await
}

/// Whether any outbox row is older than `after_ms` milliseconds.
pub async fn outbox_has_rows_older_than(
    db: impl sqlx::PgExecutor<'_>,
    after_ms: f64,
) -> sqlx::Result<bool> {
    let any = sqlx::query_scalar!(
        r#"SELECT 1 AS "one!" FROM outbox WHERE created_at < now() - $1 * interval '1 millisecond' LIMIT 1"#,
        after_ms,
    )
    .fetch_optional(db)
    .await?;
    Ok(any.is_some())
}

/// An outbox row the relay took, with what it needs to rebuild the envelope (the
/// event's columns and the topic's name are `None` when the event or its topic is gone).
#[derive(Debug)]
pub struct RelayRow {
    /// The event.
    pub event_id: Uuid,
    /// Its topic.
    pub topic_id: Option<Uuid>,
    /// Who published it.
    pub publisher_partner_id: Option<Uuid>,
    /// Its key.
    pub key: Option<String>,
    /// Its `data`, as PostgreSQL prints the jsonb.
    pub data: Option<String>,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The topic's name.
    pub topic_name: Option<String>,
}

/// Takes up to `limit` outbox rows older than `after_ms` milliseconds, oldest first, locking
/// them (`FOR UPDATE SKIP LOCKED`: rows another relay holds are left to it) until the end
/// of the transaction.
pub async fn take_outbox_rows(
    db: impl sqlx::PgExecutor<'_>,
    after_ms: f64,
    limit: i64,
) -> sqlx::Result<Vec<RelayRow>> {
    sqlx::query_as!(
        RelayRow,
        r#"SELECT o.event_id, e.topic_id AS "topic_id?", e.publisher_partner_id AS "publisher_partner_id?",
                e.key AS "key?", e.data::text AS "data?",
                o.received_at, t.name AS "topic_name?"
         FROM outbox o
         LEFT JOIN events e ON e.id = o.event_id AND e.received_at = o.received_at
         LEFT JOIN topics t ON t.id = e.topic_id
         WHERE o.created_at < now() - $1 * interval '1 millisecond'
         ORDER BY o.created_at
         LIMIT $2
         FOR UPDATE OF o SKIP LOCKED"#,
        after_ms,
        limit,
    )
    .fetch_all(db)
    .await
}
