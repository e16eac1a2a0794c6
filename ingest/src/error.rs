//! Ingest's one error type, mapped once to problem documents.
//!
//! RabbitMQ never appears here: once an event is committed, publishing is the
//! outbox's business, so no request fails because the broker is down.

use anika_shared::{
    Problem,
    problem::{internal_error, problem_from_db},
};
use axum::response::{IntoResponse, Response};

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
                413 => "too_large",
                415 => "unsupported_media_type",
                422 => "invalid",
                _ => "other",
            },
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
