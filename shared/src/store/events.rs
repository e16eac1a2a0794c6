//! The event log and its outbox: writing accepted events, relaying, searching, replaying and retention.

// ---- moved by helper 4 ----

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
