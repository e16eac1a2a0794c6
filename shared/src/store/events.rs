//! The event log and its outbox: writing accepted events, relaying, searching, replaying and retention.
//!
//! Ingest writes a group of accepted events (with their outbox rows) in one statement,
//! claiming idempotency keys first when the group has any; the publisher and the relay
//! delete outbox rows once RabbitMQ confirmed them. Search over the log is the one query
//! here built at run time (its filters vary). Retention keeps the partitioned tables'
//! shape and deletes, in chunks, whatever outlived its retention.

use chrono::{DateTime, Utc};
use serde_json::Value;
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

// ---- Search ----

/// An event of the log, `data` as PostgreSQL prints the jsonb.
#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    /// The event.
    pub id: Uuid,
    /// Its topic.
    pub topic_id: Uuid,
    /// Who published it.
    pub publisher_partner_id: Uuid,
    /// Its key.
    pub key: Option<String>,
    /// Its `data`.
    pub data: String,
    /// When it was received.
    pub received_at: DateTime<Utc>,
}

/// The filters and page of an event search; `None` means "any".
#[derive(Clone, Copy, Debug)]
pub struct EventSearch<'a> {
    /// Only the topics this partner owns or is granted (`None`: every topic, an operator).
    pub partner: Option<Uuid>,
    /// Only this topic.
    pub topic: Option<Uuid>,
    /// Only events with this exact key.
    pub key: Option<&'a str>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    /// Received before.
    pub until: Option<DateTime<Utc>>,
    /// Only events whose `data` contains this (`@>`).
    pub contains: Option<&'a Value>,
    /// Only events before this `(received_at, id)` (the page cursor).
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Rows to read.
    pub limit: i64,
}

/// Numbered SQL parameters, bound later in the same order.
struct Params {
    next: usize,
}

impl Params {
    fn next(&mut self) -> String {
        self.next += 1;
        format!("${}", self.next)
    }
}

/// Searches the log, newest first: `(received_at, id)` descending.
pub async fn search_events(
    db: impl sqlx::PgExecutor<'_>,
    search: EventSearch<'_>,
) -> sqlx::Result<Vec<EventRow>> {
    // The filters, applied to `e` inside whichever source of topics fits the caller.
    let mut params = Params { next: 0 };
    let partner_param = search.partner.map(|_| params.next());
    let topic_param = search.topic.map(|_| params.next());
    let mut filters = Vec::new();
    if search.key.is_some() {
        filters.push(format!("e.key = {}", params.next()));
    }
    if search.since.is_some() {
        filters.push(format!("e.received_at >= {}", params.next()));
    }
    if search.until.is_some() {
        filters.push(format!("e.received_at < {}", params.next()));
    }
    if search.contains.is_some() {
        filters.push(format!("e.data @> {}::jsonb", params.next()));
    }
    if search.after.is_some() {
        let (at, id) = (params.next(), params.next());
        // The received_at bound on its own lets PostgreSQL skip whole partitions.
        filters.push(format!(
            "e.received_at <= {at} AND (e.received_at, e.id) < ({at}, {id})"
        ));
    }
    let limit_param = params.next();
    let filter = filters
        .iter()
        .map(|f| format!(" AND {f}"))
        .collect::<String>();
    const COLUMNS: &str =
        "e.id, e.topic_id, e.publisher_partner_id, e.key, e.data::text AS data, e.received_at";

    let sql = match (&partner_param, &topic_param) {
        // Operator, every topic: newest first is id order, served by the primary key.
        (None, None) => format!(
            "SELECT {COLUMNS} FROM events e WHERE true{filter} ORDER BY e.id DESC LIMIT {limit_param}"
        ),
        (None, Some(topic)) => format!(
            "SELECT {COLUMNS} FROM events e WHERE e.topic_id = {topic}{filter} \
             ORDER BY e.received_at DESC, e.id DESC LIMIT {limit_param}"
        ),
        // A partner: its readable topics, each read newest first through the topic index, merged.
        (Some(partner), topic) => {
            let readable = match topic {
                Some(topic) => format!(
                    "SELECT {topic}::uuid AS id WHERE EXISTS (SELECT 1 FROM topics WHERE id = {topic} AND owner_partner_id = {partner}) \
                     OR EXISTS (SELECT 1 FROM grants WHERE topic_id = {topic} AND partner_id = {partner})"
                ),
                None => format!(
                    "SELECT id FROM topics WHERE owner_partner_id = {partner} \
                     UNION SELECT topic_id FROM grants WHERE partner_id = {partner}"
                ),
            };
            format!(
                "SELECT e.* FROM ({readable}) AS readable CROSS JOIN LATERAL ( \
                     SELECT {COLUMNS} FROM events e WHERE e.topic_id = readable.id{filter} \
                     ORDER BY e.received_at DESC, e.id DESC LIMIT {limit_param}) AS e \
                 ORDER BY e.received_at DESC, e.id DESC LIMIT {limit_param}"
            )
        }
    };
    // Not a macro: the source of topics and the filters vary with the search; every value is bound.
    let mut q = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql));
    if let Some(partner) = search.partner {
        q = q.bind(partner);
    }
    if let Some(topic) = search.topic {
        q = q.bind(topic);
    }
    if let Some(key) = search.key {
        q = q.bind(key);
    }
    if let Some(since) = search.since {
        q = q.bind(since);
    }
    if let Some(until) = search.until {
        q = q.bind(until);
    }
    if let Some(contains) = search.contains {
        q = q.bind(sqlx::types::Json(contains));
    }
    if let Some((at, id)) = search.after {
        q = q.bind(at).bind(id);
    }
    q.bind(search.limit).fetch_all(db).await
}

/// An event with what deciding its visibility needs.
#[derive(Debug)]
pub struct EventDetailRow {
    /// The event.
    pub id: Uuid,
    /// Its topic.
    pub topic_id: Uuid,
    /// Who published it.
    pub publisher_partner_id: Uuid,
    /// Its key.
    pub key: Option<String>,
    /// Its `data`, as PostgreSQL prints the jsonb.
    pub data: String,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The topic's owner (`None`: the topic was deleted).
    pub owner_partner_id: Option<Uuid>,
    /// Whether the partner asked about holds a grant on the topic.
    pub granted: bool,
}

impl EventDetailRow {
    /// The event's own columns.
    pub fn event(self) -> EventRow {
        EventRow {
            id: self.id,
            topic_id: self.topic_id,
            publisher_partner_id: self.publisher_partner_id,
            key: self.key,
            data: self.data,
            received_at: self.received_at,
        }
    }
}

/// Reads one event (`received_at` is the id's timestamp: the lookup touches one
/// partition), with its topic's owner and whether `partner` holds a grant on the topic.
pub async fn get_event_detail(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    received_at: DateTime<Utc>,
    partner: Option<Uuid>,
) -> sqlx::Result<Option<EventDetailRow>> {
    sqlx::query_as!(
        EventDetailRow,
        r#"SELECT e.id AS "id!", e.topic_id AS "topic_id!", e.publisher_partner_id AS "publisher_partner_id!",
                e.key, e.data::text AS "data!", e.received_at AS "received_at!",
                t.owner_partner_id AS "owner_partner_id?",
                EXISTS (SELECT 1 FROM grants g WHERE g.topic_id = e.topic_id AND g.partner_id = $3) AS "granted!"
         FROM events e LEFT JOIN topics t ON t.id = e.topic_id
         WHERE e.id = $1 AND e.received_at = $2"#,
        id,
        received_at,
        partner,
    )
    .fetch_optional(db)
    .await
}

/// Where an event stands for one subscription.
#[derive(Debug)]
pub struct DeliveryRow {
    /// The subscription.
    pub subscription_id: Uuid,
    /// `pending`, `succeeded`, `failed`, `dead` or `skipped`.
    pub status: String,
    /// Delivery attempts made.
    pub attempts: i64,
    /// When the latest attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
}

/// Each subscription's delivery state of an event, from what the dispatcher recorded.
///
/// A dead letter wins; otherwise the later of the latest attempt and the latest skip
/// decides; with neither, the event is still pending for that subscription. Attempts
/// older than `attempts_since` are not read (older partitions are skipped).
/// `partner`: only its subscriptions.
pub async fn list_event_deliveries(
    db: impl sqlx::PgExecutor<'_>,
    event: Uuid,
    attempts_since: DateTime<Utc>,
    topic: Uuid,
    partner: Option<Uuid>,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as!(
        DeliveryRow,
        r#"SELECT s.id AS subscription_id,
                CASE WHEN d.event_id IS NOT NULL THEN 'dead'
                     WHEN a.last_at IS NOT NULL AND (k.skipped_at IS NULL OR a.last_at >= k.skipped_at) THEN a.last_status
                     WHEN k.skipped_at IS NOT NULL THEN 'skipped'
                     ELSE 'pending' END AS "status!",
                greatest(coalesce(a.attempts, 0), coalesce(d.attempts, 0))::bigint AS "attempts!",
                a.last_at AS "last_attempt_at?"
         FROM subscriptions s
         LEFT JOIN LATERAL (
             SELECT count(*) AS attempts, max(at) AS last_at,
                    (array_agg(status ORDER BY at DESC, attempt DESC))[1] AS last_status
             FROM attempts WHERE event_id = $1 AND subscription_id = s.id AND at >= $2
             HAVING count(*) > 0) a ON true
         LEFT JOIN dead_letters d ON d.subscription_id = s.id AND d.event_id = $1
         LEFT JOIN LATERAL (
             SELECT max(at) AS skipped_at FROM skips WHERE event_id = $1 AND subscription_id = s.id) k ON true
         WHERE s.topic_id = $3 AND ($4::uuid IS NULL OR s.partner_id = $4)
         ORDER BY s.created_at, s.id"#,
        event,
        attempts_since,
        topic,
        partner,
    )
    .fetch_all(db)
    .await
}

// ---- Retention ----

/// A table partitioned by day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partitioned {
    /// `events`, the log.
    Events,
    /// `attempts`, delivery attempts.
    Attempts,
    /// `audit_log`.
    AuditLog,
}

impl Partitioned {
    /// Every partitioned table.
    pub const ALL: [Partitioned; 3] = [Self::Events, Self::Attempts, Self::AuditLog];

    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Attempts => "attempts",
            Self::AuditLog => "audit_log",
        }
    }
}

/// Makes sure `table` has its daily partitions from yesterday (UTC) for `days` days; cheap
/// when they exist (the function takes its own advisory lock).
pub async fn ensure_partitions(
    db: impl sqlx::PgExecutor<'_>,
    table: Partitioned,
    days: i32,
) -> sqlx::Result<()> {
    sqlx::query!(
        "SELECT anika_ensure_partitions($1, (now() AT TIME ZONE 'UTC')::date - 1, $2)",
        table.table(),
        days,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Drops `table`'s daily partitions wholly older than `age_ms` milliseconds; how many.
pub async fn drop_partitions_older_than(
    db: impl sqlx::PgExecutor<'_>,
    table: Partitioned,
    age_ms: f64,
) -> sqlx::Result<i32> {
    sqlx::query_scalar!(
        r#"SELECT anika_drop_partitions_before($1, now() - $2 * interval '1 millisecond') AS "dropped!""#,
        table.table(),
        age_ms,
    )
    .fetch_one(db)
    .await
}

/// Rows that age out in place, deleted a chunk at a time by [`delete_expired_chunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiring {
    /// Events in `events_default` (the partition job was late), by `received_at`.
    DefaultEvents,
    /// Attempts in `attempts_default`, by `at`.
    DefaultAttempts,
    /// Audit entries in `audit_log_default`, by `at`.
    DefaultAuditLog,
    /// Skips, by `at`.
    Skips,
    /// Idempotency keys, by `created_at`.
    IdempotencyKeys,
    /// Refresh tokens, by `expires_at`.
    RefreshTokens,
}

/// Deletes up to `limit` rows of `what` older than `age_ms` milliseconds; how many.
pub async fn delete_expired_chunk(
    db: impl sqlx::PgExecutor<'_>,
    what: Expiring,
    age_ms: f64,
    limit: i64,
) -> sqlx::Result<u64> {
    let done = match what {
        Expiring::DefaultEvents => {
            sqlx::query!(
                "DELETE FROM events_default WHERE ctid = ANY(ARRAY(SELECT ctid FROM events_default \
                 WHERE received_at < now() - $1 * interval '1 millisecond' LIMIT $2))",
                age_ms,
                limit,
            )
            .execute(db)
            .await?
        }
        Expiring::DefaultAttempts => {
            sqlx::query!(
                "DELETE FROM attempts_default WHERE ctid = ANY(ARRAY(SELECT ctid FROM attempts_default \
                 WHERE at < now() - $1 * interval '1 millisecond' LIMIT $2))",
                age_ms,
                limit,
            )
            .execute(db)
            .await?
        }
        Expiring::DefaultAuditLog => {
            sqlx::query!(
                "DELETE FROM audit_log_default WHERE ctid = ANY(ARRAY(SELECT ctid FROM audit_log_default \
                 WHERE at < now() - $1 * interval '1 millisecond' LIMIT $2))",
                age_ms,
                limit,
            )
            .execute(db)
            .await?
        }
        Expiring::Skips => {
            sqlx::query!(
                "DELETE FROM skips WHERE ctid = ANY(ARRAY(SELECT ctid FROM skips \
                 WHERE at < now() - $1 * interval '1 millisecond' LIMIT $2))",
                age_ms,
                limit,
            )
            .execute(db)
            .await?
        }
        Expiring::IdempotencyKeys => {
            sqlx::query!(
                "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys \
                 WHERE created_at < now() - $1 * interval '1 millisecond' LIMIT $2))",
                age_ms,
                limit,
            )
            .execute(db)
            .await?
        }
        Expiring::RefreshTokens => {
            sqlx::query!(
                "DELETE FROM refresh_tokens WHERE ctid = ANY(ARRAY(SELECT ctid FROM refresh_tokens \
                 WHERE expires_at < now() - $1 * interval '1 millisecond' LIMIT $2))",
                age_ms,
                limit,
            )
            .execute(db)
            .await?
        }
    };
    Ok(done.rows_affected())
}

/// One event to write with its outbox row (the relay publishes it if its writer cannot).
#[derive(Clone, Copy, Debug)]
pub struct EventWithOutbox<'a> {
    /// The event.
    pub id: uuid::Uuid,
    /// Its topic.
    pub topic_id: uuid::Uuid,
    /// Who publishes it.
    pub publisher_partner_id: uuid::Uuid,
    /// Its key.
    pub key: Option<&'a str>,
    /// Its `data`, as JSON text.
    pub data: &'a str,
    /// When it was received.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// Writes one event to the log and its row to the outbox, in one statement.
pub async fn insert_event_with_outbox(
    db: impl sqlx::PgExecutor<'_>,
    event: EventWithOutbox<'_>,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "WITH e AS (INSERT INTO events (id, topic_id, publisher_partner_id, key, data, received_at)
         VALUES ($1, $2, $3, $4, $5::text::jsonb, $6) RETURNING id, received_at)
         INSERT INTO outbox (event_id, received_at) SELECT id, received_at FROM e",
        event.id,
        event.topic_id,
        event.publisher_partner_id,
        event.key,
        event.data,
        event.received_at,
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// Removes a published event's outbox row.
pub async fn delete_outbox_row(
    db: impl sqlx::PgExecutor<'_>,
    event: uuid::Uuid,
) -> sqlx::Result<u64> {
    sqlx::query!("DELETE FROM outbox WHERE event_id = $1", event)
        .execute(db)
        .await
        .map(|done| done.rows_affected())
}

/// Takes the session-level advisory lock `key` if no other session holds it; whether it
/// did. Held until the connection closes (also when the process dies).
pub async fn try_advisory_lock(db: impl sqlx::PgExecutor<'_>, key: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, key)
        .fetch_one(db)
        .await
}

/// An event of the log as a replay re-delivers it.
#[derive(Debug)]
pub struct ReplayEventRow {
    /// The event.
    pub id: uuid::Uuid,
    /// Who published it.
    pub publisher_partner_id: uuid::Uuid,
    /// Its key.
    pub key: Option<String>,
    /// Its `data`, as stored.
    pub data: sqlx::types::Json<Box<serde_json::value::RawValue>>,
}

/// A topic's events received in `[since, until)` whose `data` contains `filter` (the
/// same containment the dispatcher applies, done by PostgreSQL with the GIN index), in
/// the order they were received, as a stream.
pub fn stream_replay_events<'c>(
    db: impl sqlx::PgExecutor<'c> + 'c,
    topic: uuid::Uuid,
    since: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
    filter: Option<serde_json::Value>,
) -> futures::stream::BoxStream<'c, sqlx::Result<ReplayEventRow>> {
    sqlx::query_as!(
        ReplayEventRow,
        r#"SELECT id, publisher_partner_id, key,
                  data AS "data: sqlx::types::Json<Box<serde_json::value::RawValue>>"
           FROM events
           WHERE topic_id = $1 AND received_at >= $2 AND received_at < $3
             AND ($4::jsonb IS NULL OR data @> $4)
           ORDER BY received_at, id"#,
        topic,
        since,
        until,
        filter,
    )
    .fetch(db)
}

/// How many events of `[since, until)` a replay of the subscription would consider: those
/// of its topic that its filter matches.
pub async fn count_replay_events(
    db: impl sqlx::PgExecutor<'_>,
    subscription: uuid::Uuid,
    since: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM events e JOIN subscriptions s ON s.topic_id = e.topic_id
           WHERE s.id = $1 AND e.received_at >= $2 AND e.received_at < $3
             AND (s.filter IS NULL OR e.data @> s.filter)"#,
        subscription,
        since,
        until,
    )
    .fetch_one(db)
    .await
}
