//! Keeping the log's shape: partitions ahead, retention behind, expired keys, records and
//! previous webhook secrets gone. The audit log is partitioned the same way, under its own
//! (equal or longer) retention.
//!
//! Runs once at start-up and every `maintenance_interval`. Every step is
//! idempotent (the partition functions take their own advisory locks), so
//! several ingest processes may run it at once; the cost is some duplicate work.

use std::time::Duration;

use anika_shared::store::events::{self, Expiring, Partitioned};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement, so a large clean-up never holds long locks.
const DELETE_CHUNK: i64 = 10_000;
/// Days of partitions made ahead (counting from yesterday).
const DAYS_AHEAD: i32 = 8;

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
    fn of(self, table: Partitioned) -> Duration {
        if table == Partitioned::AuditLog {
            self.audit
        } else {
            self.events
        }
    }
}

/// Makes sure the daily partitions around today exist; cheap when they do.
pub(crate) async fn ensure_partitions(pool: &PgPool) -> Result<(), sqlx::Error> {
    for table in Partitioned::ALL {
        events::ensure_partitions(pool, table, DAYS_AHEAD).await?;
    }
    Ok(())
}

/// What one run removed.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) partitions_dropped: i32,
    pub(crate) rows_deleted: u64,
    pub(crate) secrets_erased: u64,
}

/// One full run.
pub(crate) async fn run_once(pool: &PgPool, retention: Retention) -> Result<Report, sqlx::Error> {
    ensure_partitions(pool).await?;
    let retention_ms = retention.events.as_millis() as f64;
    let mut report = Report::default();
    for table in Partitioned::ALL {
        let dropped =
            events::drop_partitions_older_than(pool, table, retention.of(table).as_millis() as f64)
                .await?;
        report.partitions_dropped += dropped;
    }
    // Rows that landed in a default partition (the job was late) age out in place.
    report.rows_deleted += delete_chunked(pool, Expiring::DefaultEvents, retention_ms).await?;
    report.rows_deleted += delete_chunked(pool, Expiring::DefaultAttempts, retention_ms).await?;
    report.rows_deleted += delete_chunked(
        pool,
        Expiring::DefaultAuditLog,
        retention.audit.as_millis() as f64,
    )
    .await?;
    report.rows_deleted += delete_chunked(pool, Expiring::Skips, retention_ms).await?;
    // Idempotency keys promise 24 hours; after that a key may be used anew.
    report.rows_deleted += delete_chunked(
        pool,
        Expiring::IdempotencyKeys,
        Duration::from_secs(24 * 3600).as_millis() as f64,
    )
    .await?;
    // Refresh tokens a day after they expired. A used (rotated) or revoked one is kept
    // until then too: presenting it again is how a stolen token's reuse is detected
    // (and its whole login revoked), for as long as the token could have been used.
    report.rows_deleted += delete_chunked(
        pool,
        Expiring::RefreshTokens,
        Duration::from_secs(24 * 3600).as_millis() as f64,
    )
    .await?;
    // A rotated-out webhook secret signs alongside the new one for 24 h; after that it is
    // erased rather than kept where a database reader could still find it.
    report.secrets_erased = anika_shared::secret_rows::erase_expired_previous_secrets(pool).await?;
    Ok(report)
}

/// Deletes the rows of `what` older than `age_ms` a chunk at a time until a chunk comes back short.
async fn delete_chunked(pool: &PgPool, what: Expiring, age_ms: f64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = events::delete_expired_chunk(pool, what, age_ms, DELETE_CHUNK).await?;
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
            Ok(report)
                if report.partitions_dropped > 0
                    || report.rows_deleted > 0
                    || report.secrets_erased > 0 =>
            {
                tracing::info!(
                    partitions_dropped = report.partitions_dropped,
                    rows_deleted = report.rows_deleted,
                    previous_secrets_erased = report.secrets_erased,
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
