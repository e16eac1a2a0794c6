//! The catalog's one error type, mapped once to problem documents.

use anika_shared::{
    Problem,
    amqp::BrokerError,
    problem::{internal_error, problem_from_db},
};
use axum::response::{IntoResponse, Response};

/// Everything a catalog request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client error decided by a handler (4xx), already in its final shape.
    #[error(transparent)]
    Client(#[from] Problem),
    /// PostgreSQL failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// RabbitMQ failed; the change was rolled back.
    #[error("broker")]
    Broker(#[from] BrokerError),
    /// A token could not be signed.
    #[error("token signing")]
    Signing(#[from] jsonwebtoken::errors::Error),
    /// Key material could not be generated or read.
    #[error("key material: {0}")]
    Keys(String),
    /// A sealed secret could not be sealed or opened (the cause names the main key, never the secret).
    #[error("sealed secret")]
    Sealed(#[from] anika_shared::secrets::SecretError),
    /// A task doing part of the request panicked or was cancelled.
    #[error("request task")]
    Task(#[from] tokio::task::JoinError),
}

impl From<lapin::Error> for Error {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(error))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Self::Client(problem) => problem.into_response(),
            Self::Db(e) => problem_from_db(&e)
                .unwrap_or_else(|| internal_error(&e))
                .into_response(),
            Self::Broker(e) => {
                tracing::warn!(error = %e, "RabbitMQ refused a catalog change; rolled back");
                Problem::unavailable(
                    "RabbitMQ is unreachable, so nothing was changed; retry shortly",
                )
                .into_response()
            }
            other => internal_error(&other).into_response(),
        }
    }
}

/// The result of a catalog handler.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A unique violation as a 409 that says what clashed; other errors pass through.
pub fn conflict_on_unique(error: sqlx::Error, detail: impl FnOnce() -> String) -> Error {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::Client(Problem::conflict(detail()))
        }
        _ => Error::Db(error),
    }
}
