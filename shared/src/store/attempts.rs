//! Delivery attempts, dead letters and the endpoint health derived from them.
//!
//! The attempt log and the skips are written in batches (one `UNNEST` insert per table);
//! a dead letter's record is written after its copy is in the dead-letter queue and
//! deleted once a replay's copy is confirmed. Endpoint health is `failing_since` and the
//! disabling of a subscription that keeps failing: each transition is an
//! `UPDATE … WHERE <the old state>`, so its row count says whether this caller made it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{AttemptStatus, SubscriptionStatus};

/// One delivery attempt to record.
#[derive(Clone, Copy, Debug)]
pub struct NewAttempt<'a> {
    /// The attempt's own id.
    pub id: Uuid,
    /// The subscription.
    pub subscription_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// 1 for the first try.
    pub attempt: i32,
    /// What came of it.
    pub status: AttemptStatus,
    /// The status, if the endpoint answered.
    pub http_status: Option<i32>,
    /// What went wrong.
    pub error: Option<&'a str>,
    /// How long it took.
    pub duration_ms: i32,
    /// The start of the response body.
    pub response_excerpt: Option<&'a str>,
    /// When it ended.
    pub at: DateTime<Utc>,
}

/// Inserts a batch of attempts in one statement.
pub async fn insert_attempts(
    db: impl sqlx::PgExecutor<'_>,
    attempts: &[NewAttempt<'_>],
) -> sqlx::Result<u64> {
    let mut ids = Vec::with_capacity(attempts.len());
    let mut subs = Vec::with_capacity(attempts.len());
    let mut events = Vec::with_capacity(attempts.len());
    let mut numbers = Vec::with_capacity(attempts.len());
    let mut statuses = Vec::with_capacity(attempts.len());
    let mut http = Vec::with_capacity(attempts.len());
    let mut errors = Vec::with_capacity(attempts.len());
    let mut durations = Vec::with_capacity(attempts.len());
    let mut excerpts = Vec::with_capacity(attempts.len());
    let mut ats = Vec::with_capacity(attempts.len());
    for a in attempts {
        ids.push(a.id);
        subs.push(a.subscription_id);
        events.push(a.event_id);
        numbers.push(a.attempt);
        statuses.push(a.status.as_str());
        http.push(a.http_status);
        errors.push(a.error);
        durations.push(a.duration_ms);
        excerpts.push(a.response_excerpt);
        ats.push(a.at);
    }
    sqlx::query!(
        "INSERT INTO attempts (id, subscription_id, event_id, attempt, status, http_status, error,
                               duration_ms, response_excerpt, at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int4[], $5::text[], $6::int4[],
                              $7::text[], $8::int4[], $9::text[], $10::timestamptz[])",
        &ids,
        &subs,
        &events,
        &numbers,
        // Overrides: the macros expect owned, non-null elements; these are the same
        // PostgreSQL types (text[] with NULLs, int4[] with NULLs).
        &statuses as &[&str],
        &http as &[Option<i32>],
        &errors as &[Option<&str>],
        &durations,
        &excerpts as &[Option<&str>],
        &ats,
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// One message acknowledged without sending, to record.
#[derive(Clone, Copy, Debug)]
pub struct NewSkip<'a> {
    /// The subscription.
    pub subscription_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// Why it was not sent.
    pub reason: &'a str,
}

/// Inserts a batch of skips in one statement.
pub async fn insert_skips(
    db: impl sqlx::PgExecutor<'_>,
    skips: &[NewSkip<'_>],
) -> sqlx::Result<u64> {
    let subs: Vec<Uuid> = skips.iter().map(|s| s.subscription_id).collect();
    let events: Vec<Uuid> = skips.iter().map(|s| s.event_id).collect();
    let reasons: Vec<&str> = skips.iter().map(|s| s.reason).collect();
    sqlx::query!(
        "INSERT INTO skips (subscription_id, event_id, reason)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[])",
        &subs,
        &events,
        &reasons as &[&str],
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// How many attempts the log holds for one message of a subscription.
pub async fn count_attempts(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    event: Uuid,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM attempts WHERE subscription_id = $1 AND event_id = $2"#,
        subscription,
        event,
    )
    .fetch_one(db)
    .await
}

/// One delivery attempt as the log holds it.
#[derive(Debug)]
pub struct AttemptRow {
    /// The attempt.
    pub id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// 1 for the first try.
    pub attempt: i32,
    /// `succeeded` or `failed`.
    pub status: AttemptStatus,
    /// The status, if the endpoint answered.
    pub http_status: Option<i32>,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i32,
    /// At most 4 KiB of the response body.
    pub response_excerpt: Option<String>,
    /// When it ended.
    pub at: DateTime<Utc>,
}

/// Which attempts of a subscription a page of [`list_attempts`] holds.
#[derive(Clone, Copy, Debug)]
pub struct AttemptFilter {
    /// The subscription.
    pub subscription: Uuid,
    /// Only attempts with this outcome.
    pub status: Option<AttemptStatus>,
    /// Only attempts at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only attempts before this `(at, id)`: the cursor of the previous page.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// At most this many.
    pub limit: i64,
}

/// A page of a subscription's attempts, newest first.
pub async fn list_attempts(
    db: impl sqlx::PgExecutor<'_>,
    filter: AttemptFilter,
) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as!(
        AttemptRow,
        r#"SELECT id, event_id, attempt, status AS "status: AttemptStatus", http_status, error,
                  duration_ms, response_excerpt, at
           FROM attempts WHERE subscription_id = $1
             AND ($2::text IS NULL OR status = $2) AND ($3::timestamptz IS NULL OR at >= $3)
             AND ($4::timestamptz IS NULL OR (at, id) < ($4, $5))
           ORDER BY at DESC, id DESC LIMIT $6"#,
        filter.subscription,
        filter.status.map(AttemptStatus::as_str),
        filter.since,
        filter.before.map(|b| b.0),
        filter.before.map(|b| b.1),
        filter.limit,
    )
    .fetch_all(db)
    .await
}

/// A subscription's attempts over a recent window, in one pass.
#[derive(Debug)]
pub struct AttemptStats {
    /// Attempts made.
    pub attempts: i64,
    /// Of which 2xx.
    pub succeeded: i64,
    /// Median duration in milliseconds; `None` without attempts.
    pub p50: Option<f64>,
    /// 99th percentile duration in milliseconds.
    pub p99: Option<f64>,
    /// Mean duration in milliseconds.
    pub mean: Option<f64>,
}

/// Counts and duration percentiles of a subscription's attempts of the last `window_secs`
/// seconds (the index on `(subscription_id, at)` bounds the pass).
pub async fn attempt_stats(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    window_secs: f64,
) -> sqlx::Result<AttemptStats> {
    sqlx::query_as!(
        AttemptStats,
        r#"SELECT count(*) AS "attempts!", count(*) FILTER (WHERE status = 'succeeded') AS "succeeded!",
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS "p50?",
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS "p99?",
                  avg(duration_ms)::float8 AS "mean?"
           FROM attempts WHERE subscription_id = $1 AND at >= now() - make_interval(secs => $2)"#,
        subscription,
        window_secs,
    )
    .fetch_one(db)
    .await
}

/// Records a dead letter (or, for a message dead-lettered again, its new count, error and time).
pub async fn record_dead_letter(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    event: Uuid,
    attempts: i32,
    last_error: &str,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "INSERT INTO dead_letters (subscription_id, event_id, attempts, last_error) VALUES ($1, $2, $3, $4)
         ON CONFLICT (subscription_id, event_id) DO UPDATE
         SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, dead_at = now()",
        subscription,
        event,
        attempts,
        last_error,
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// One dead-lettered message.
#[derive(Debug, serde::Serialize)]
pub struct DeadLetterRow {
    /// Its event.
    pub event_id: Uuid,
    /// Attempts made before giving up.
    pub attempts: i32,
    /// What the last attempt got.
    pub last_error: String,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

/// How many messages of a subscription are dead-lettered.
pub async fn count_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM dead_letters WHERE subscription_id = $1"#,
        subscription,
    )
    .fetch_one(db)
    .await
}

/// A page of a subscription's dead letters, newest first: at most `limit`, before the
/// `(dead_at, event_id)` cursor of the previous page if there is one.
pub async fn list_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<DeadLetterRow>> {
    sqlx::query_as!(
        DeadLetterRow,
        "SELECT event_id, attempts, last_error, dead_at FROM dead_letters WHERE subscription_id = $1
           AND ($2::timestamptz IS NULL OR (dead_at, event_id) < ($2, $3))
         ORDER BY dead_at DESC, event_id DESC LIMIT $4",
        subscription,
        before.map(|b| b.0),
        before.map(|b| b.1),
        limit,
    )
    .fetch_all(db)
    .await
}

/// The subscriptions that have dead letters, with how many and since when.
#[derive(Debug, serde::Serialize)]
pub struct DeadLetterSummary {
    /// The subscription.
    pub subscription_id: Uuid,
    /// Its partner's name.
    pub partner: String,
    /// Its topic's name.
    pub topic: String,
    /// Its endpoint.
    pub url: String,
    /// How many of its messages are dead-lettered.
    pub dead_letters: i64,
    /// When the oldest of them was.
    pub oldest: DateTime<Utc>,
}

/// Every subscription with dead letters, the most first.
pub async fn list_dead_letter_summaries(
    db: impl sqlx::PgExecutor<'_>,
) -> sqlx::Result<Vec<DeadLetterSummary>> {
    sqlx::query_as!(
        DeadLetterSummary,
        r#"SELECT s.id AS subscription_id, p.name AS partner, t.name AS topic, s.url,
                  count(*) AS "dead_letters!", min(d.dead_at) AS "oldest!"
           FROM dead_letters d JOIN subscriptions s ON s.id = d.subscription_id
           JOIN partners p ON p.id = s.partner_id JOIN topics t ON t.id = s.topic_id
           GROUP BY s.id, p.name, t.name, s.url ORDER BY count(*) DESC"#,
    )
    .fetch_all(db)
    .await
}

/// Deletes the records of these events' dead letters of a subscription (their messages
/// were moved back to delivery).
pub async fn delete_dead_letters_of_events(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    events: &[Uuid],
) -> sqlx::Result<u64> {
    sqlx::query!(
        "DELETE FROM dead_letters WHERE subscription_id = $1 AND event_id = ANY($2)",
        subscription,
        events,
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// The database's clock now (`clock_timestamp()`, not the transaction's start): the
/// moment to compare `dead_at` with in [`delete_dead_letters_before`].
pub async fn clock_now(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar!(r#"SELECT clock_timestamp() AS "now!""#)
        .fetch_one(db)
        .await
}

/// Deletes a subscription's dead-letter records older than `before`.
pub async fn delete_dead_letters_before(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    before: DateTime<Utc>,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "DELETE FROM dead_letters WHERE subscription_id = $1 AND dead_at < $2",
        subscription,
        before,
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// Deletes every dead-letter record of a subscription.
pub async fn delete_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "DELETE FROM dead_letters WHERE subscription_id = $1",
        subscription
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// Marks a healthy subscription's endpoint failing since `since`; 0 rows if it already was.
pub async fn mark_failing(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    since: DateTime<Utc>,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "UPDATE subscriptions SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL",
        subscription,
        since,
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// Clears a failing subscription's `failing_since`; 0 rows if it was not failing.
pub async fn clear_failing(db: impl sqlx::PgExecutor<'_>, subscription: Uuid) -> sqlx::Result<u64> {
    sqlx::query!(
        "UPDATE subscriptions SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
        subscription,
    )
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// Disables an active subscription, with why; its partner if this call disabled it,
/// `None` if it was not active (paused, or already disabled).
pub async fn disable_subscription(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    reason: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "UPDATE subscriptions SET status = $3, disabled_reason = $2, updated_at = now()
         WHERE id = $1 AND status = $4 RETURNING partner_id",
        subscription,
        reason,
        SubscriptionStatus::Disabled.as_str(),
        SubscriptionStatus::Active.as_str(),
    )
    .fetch_optional(db)
    .await
}

/// A subscription's health as PostgreSQL holds it.
#[derive(Debug)]
pub struct EndpointHealthRow {
    /// `active`, `paused` or `disabled`.
    pub status: SubscriptionStatus,
    /// Why the server disabled it, when it did.
    pub disabled_reason: Option<String>,
    /// Since when every attempt fails; `None` while healthy.
    pub failing_since: Option<DateTime<Utc>>,
    /// Messages dead-lettered now.
    pub dead_letters: i64,
}

/// One subscription's health; an error ([`sqlx::Error::RowNotFound`]) if it does not exist.
pub async fn get_endpoint_health(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
) -> sqlx::Result<EndpointHealthRow> {
    sqlx::query_as!(
        EndpointHealthRow,
        r#"SELECT status AS "status: SubscriptionStatus", disabled_reason, failing_since,
                  (SELECT count(*) FROM dead_letters d WHERE d.subscription_id = s.id) AS "dead_letters!"
           FROM subscriptions s WHERE id = $1"#,
        subscription,
    )
    .fetch_one(db)
    .await
}

/// A subscription with its health, as the operator's list shows it.
#[derive(Debug)]
pub struct SubscriptionHealthRow {
    /// The subscription.
    pub id: Uuid,
    /// Its partner's name.
    pub partner: String,
    /// Its topic's name.
    pub topic: String,
    /// Its endpoint.
    pub url: String,
    /// `active`, `paused` or `disabled`.
    pub status: SubscriptionStatus,
    /// Why the server disabled it, when it did.
    pub disabled_reason: Option<String>,
    /// Since when every attempt fails; `None` while healthy.
    pub failing_since: Option<DateTime<Utc>>,
    /// Messages dead-lettered now.
    pub dead_letters: i64,
}

/// Every subscription with its health, the longest failing first, then the oldest:
/// only those with `status` if given, and only the failing ones if `failing_only`.
pub async fn list_subscription_health(
    db: impl sqlx::PgExecutor<'_>,
    status: Option<SubscriptionStatus>,
    failing_only: bool,
) -> sqlx::Result<Vec<SubscriptionHealthRow>> {
    sqlx::query_as!(
        SubscriptionHealthRow,
        r#"SELECT s.id, p.name AS partner, t.name AS topic, s.url, s.status AS "status: SubscriptionStatus",
                  s.disabled_reason, s.failing_since,
                  (SELECT count(*) FROM dead_letters d WHERE d.subscription_id = s.id) AS "dead_letters!"
           FROM subscriptions s JOIN partners p ON p.id = s.partner_id JOIN topics t ON t.id = s.topic_id
           WHERE ($1::text IS NULL OR s.status = $1) AND (NOT $2 OR s.failing_since IS NOT NULL)
           ORDER BY s.failing_since NULLS LAST, s.created_at"#,
        status.map(SubscriptionStatus::as_str),
        failing_only,
    )
    .fetch_all(db)
    .await
}

/// Deletes the dead letters of a subscription (it is being deleted).
pub async fn delete_subscription_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    subscription: uuid::Uuid,
) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM dead_letters WHERE subscription_id = $1",
        subscription,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes the dead letters of several subscriptions (deleted with their topic).
pub async fn delete_subscriptions_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    subscriptions: &[uuid::Uuid],
) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM dead_letters WHERE subscription_id = ANY($1)",
        subscriptions,
    )
    .execute(db)
    .await?;
    Ok(())
}
