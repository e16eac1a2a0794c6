//! Ingest's one error type, mapped once to problem documents.
//!
//! RabbitMQ never appears here: once an event is committed, publishing is the
//! outbox's business, so no request fails because the broker is down.

use anika_shared::{
    Problem,
    problem::{internal_error, problem_from_db},
};
use axum::response::{IntoResponse, Response};

/// Seconds a client is asked to wait when the backlog is full: the relay drains it in batches.
const BACKLOG_RETRY_AFTER: u64 = 2;

/// Everything an ingest request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client error decided by a handler (4xx), already in its final shape.
    #[error(transparent)]
    Client(#[from] Problem),
    /// PostgreSQL failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// The group-commit writer is gone (the process is shutting down).
    #[error("the event writer has stopped")]
    WriterGone,
    /// Over the partner's ingest quota (429); nothing was written.
    #[error("over the partner's ingest quota")]
    RateLimited {
        /// The partner's events per second.
        rate: u32,
        /// Its bucket size.
        burst: u32,
        /// Whole seconds until the request would fit.
        retry_after: u64,
    },
    /// The outbox holds `ANIKA_MAX_BACKLOG` unpublished events (503); nothing was written.
    #[error("the backlog of unpublished events is full")]
    Backlog {
        /// The bound.
        max: u64,
    },
    /// The group-commit queue is full: the writers are behind (503); nothing was written.
    #[error("the event writers are behind")]
    Busy,
    /// A topic's stored schema could not be compiled (the catalog checks schemas, so this is a bug).
    #[error("topic schema: {0}")]
    Schema(String),
}

impl Error {
    /// The `reason` label of `anika_events_rejected_total` for this error.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Client(problem) => match problem.status {
                400 => "bad_request",
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                408 => "timeout",
                413 => "too_large",
                415 => "unsupported_media_type",
                422 => "invalid",
                _ => "other",
            },
            Self::RateLimited { .. } => "rate_limited",
            Self::Backlog { .. } => "backlog",
            Self::Busy => "busy",
            Self::Db(_) => "database",
            Self::WriterGone => "shutting_down",
            Self::Schema(_) => "internal",
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Self::Client(problem) => problem.into_response(),
            Self::Db(e) => problem_from_db(&e)
                .unwrap_or_else(|| internal_error(&e))
                .into_response(),
            Self::RateLimited {
                rate,
                burst,
                retry_after,
            } => {
                let mut response = Problem::too_many_requests(
                    format!(
                        "your partner may post {rate} events per second (bursts of {burst}); \
                         nothing was stored, retry after {retry_after} s"
                    ),
                    retry_after,
                )
                .into_response();
                // draft-ietf-httpapi-ratelimit-headers: the policy, and nothing left of it for now.
                crate::quotas::rate_limit_headers(response.headers_mut(), rate, 0, retry_after);
                response
            }
            Self::Backlog { max } => Problem::overloaded(
                format!(
                    "{max} accepted events are still waiting to be published (ANIKA_MAX_BACKLOG); \
                     nothing was stored, retry shortly"
                ),
                BACKLOG_RETRY_AFTER,
            )
            .into_response(),
            Self::Busy => Problem::overloaded(
                "the server is storing as many events as it can; nothing was stored, retry shortly",
                1,
            )
            .into_response(),
            Self::WriterGone => Problem::unavailable(
                "the server is shutting down; nothing was stored, retry shortly",
            )
            .into_response(),
            other => internal_error(&other).into_response(),
        }
    }
}

/// The result of an ingest handler.
pub type Result<T, E = Error> = std::result::Result<T, E>;
