//! Keeping the log's shape: partitions ahead, retention behind, expired keys and records gone.
//! The audit log is partitioned the same way, under its own (equal or longer) retention.
//!
//! Runs once at start-up and every `maintenance_interval`. Every step is
//! idempotent (the partition functions take their own advisory locks), so
//! several ingest processes may run it at once; the cost is some duplicate work.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement, so a large clean-up never holds long locks.
const DELETE_CHUNK: i64 = 10_000;
/// Days of partitions made ahead (counting from yesterday).
const DAYS_AHEAD: i32 = 8;

/// The tables partitioned by day.
const PARTITIONED: [&str; 3] = ["events", "attempts", "audit_log"];

/// How long each kind of record is kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention {
    /// The event log, attempts and skips (`ANIKA_RETENTION`).
    pub(crate) events: Duration,
    /// The audit log (`ANIKA_AUDIT_RETENTION`).
    pub(crate) audit: Duration,
}

impl Retention {
    /// The retention of one partitioned table.
    fn of(self, table: &str) -> Duration {
        if table == "audit_log" {
            self.audit
        } else {
            self.events
        }
    }
}

/// Makes sure the daily partitions around today exist; cheap when they do.
pub(crate) async fn ensure_partitions(pool: &PgPool) -> Result<(), sqlx::Error> {
    for table in PARTITIONED {
        sqlx::query("SELECT anika_ensure_partitions($1, (now() AT TIME ZONE 'UTC')::date - 1, $2)")
            .bind(table)
            .bind(DAYS_AHEAD)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// What one run removed.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) partitions_dropped: i32,
    pub(crate) rows_deleted: u64,
}

/// One full run.
pub(crate) async fn run_once(pool: &PgPool, retention: Retention) -> Result<Report, sqlx::Error> {
    ensure_partitions(pool).await?;
    let retention_ms = retention.events.as_millis() as f64;
    let mut report = Report::default();
    for table in PARTITIONED {
        let dropped: i32 = sqlx::query_scalar(
            "SELECT anika_drop_partitions_before($1, now() - $2 * interval '1 millisecond')",
        )
        .bind(table)
        .bind(retention.of(table).as_millis() as f64)
        .fetch_one(pool)
        .await?;
        report.partitions_dropped += dropped;
    }
    // Rows that landed in a default partition (the job was late) age out in place.
    report.rows_deleted += delete_chunked(
        pool,
        "DELETE FROM events_default WHERE ctid = ANY(ARRAY(SELECT ctid FROM events_default \
         WHERE received_at < now() - $1 * interval '1 millisecond' LIMIT $2))",
        retention_ms,
    )
    .await?;
    report.rows_deleted += delete_chunked(
        pool,
        "DELETE FROM attempts_default WHERE ctid = ANY(ARRAY(SELECT ctid FROM attempts_default \
         WHERE at < now() - $1 * interval '1 millisecond' LIMIT $2))",
        retention_ms,
    )
    .await?;
    report.rows_deleted += delete_chunked(
        pool,
        "DELETE FROM audit_log_default WHERE ctid = ANY(ARRAY(SELECT ctid FROM audit_log_default \
         WHERE at < now() - $1 * interval '1 millisecond' LIMIT $2))",
        retention.audit.as_millis() as f64,
    )
    .await?;
    report.rows_deleted += delete_chunked(
        pool,
        "DELETE FROM skips WHERE ctid = ANY(ARRAY(SELECT ctid FROM skips \
         WHERE at < now() - $1 * interval '1 millisecond' LIMIT $2))",
        retention_ms,
    )
    .await?;
    // Idempotency keys promise 24 hours; after that a key may be used anew.
    report.rows_deleted += delete_chunked(
        pool,
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys \
         WHERE created_at < now() - $1 * interval '1 millisecond' LIMIT $2))",
        Duration::from_secs(24 * 3600).as_millis() as f64,
    )
    .await?;
    // Refresh tokens a day after they expired. A used (rotated) or revoked one is kept
    // until then too: presenting it again is how a stolen token's reuse is detected
    // (and its whole login revoked), for as long as the token could have been used.
    report.rows_deleted += delete_chunked(
        pool,
        "DELETE FROM refresh_tokens WHERE ctid = ANY(ARRAY(SELECT ctid FROM refresh_tokens \
         WHERE expires_at < now() - $1 * interval '1 millisecond' LIMIT $2))",
        Duration::from_secs(24 * 3600).as_millis() as f64,
    )
    .await?;
    Ok(report)
}

/// Repeats a `DELETE … LIMIT $2` (with the age in ms as `$1`) until it deletes nothing more.
async fn delete_chunked(pool: &PgPool, sql: &'static str, age_ms: f64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(sql)
            .bind(age_ms)
            .bind(DELETE_CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < DELETE_CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// The maintenance loop, until `shutdown`.
pub(crate) async fn run(
    pool: PgPool,
    interval: Duration,
    retention: Retention,
    shutdown: CancellationToken,
) {
    loop {
        match run_once(&pool, retention).await {
            Ok(report) if report.partitions_dropped > 0 || report.rows_deleted > 0 => {
                tracing::info!(
                    partitions_dropped = report.partitions_dropped,
                    rows_deleted = report.rows_deleted,
                    "maintenance removed data past retention"
                )
            }
            Ok(_) => tracing::debug!("maintenance: nothing to remove"),
            Err(e) => {
                tracing::warn!(error = %e, "maintenance failed; retrying at the next interval")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => break,
        }
    }
}
