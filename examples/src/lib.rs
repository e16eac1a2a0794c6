//! The systems anika was made for, running on it: the dealer–bank flow and the task tracker ("Popug").
//!
//! Each example is a handful of partners, each a small HTTP program with its own API key,
//! that publish through anika's HTTP API and receive through its webhooks. The shared parts
//! live here: an API [`client`], a webhook [`receiver`] that verifies every signature with
//! the Standard Webhooks crate and drops duplicates by `webhook-id`, and the [`setup`] of
//! partners, keys, topics, grants and subscriptions from an operator key. The binaries in
//! `src/bin/` only parse their arguments and print; the flows are library functions so that
//! the integration test runs exactly what a reader runs.

pub mod client;
pub mod dealer_bank;
pub mod receiver;
pub mod say;
pub mod setup;
pub mod tracker;

use std::{path::Path, time::Duration};

pub use client::{ApiError, Client};
pub use say::Say;

/// Everything that can stop an example.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// anika answered with an error status or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The example's own storage failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// A receiver could not listen.
    #[error("receiver: {0}")]
    Io(#[from] std::io::Error),
    /// anika gave a subscription secret the Standard Webhooks crate does not accept.
    #[error("subscription secret: {0}")]
    Secret(String),
    /// An event cannot be applied yet (it depends on one not received yet); anika
    /// delivers it again later.
    #[error("not yet: {0}")]
    Pending(String),
    /// The expected state did not arrive in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The arguments do not say where anika is or how to sign in.
    #[error("{0}")]
    Usage(String),
}

/// Where anika runs and the operator key that sets an example up.
#[derive(Clone, Debug)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// An operator API key.
    pub operator_key: String,
}

impl Target {
    /// The target from the command line: `--operator-key`, or else the key `scripts/up`
    /// stored in `key_file`.
    pub fn from_args(
        url: String,
        operator_key: Option<String>,
        key_file: &Path,
    ) -> Result<Self, Error> {
        let operator_key = match operator_key {
            Some(key) => key,
            None => std::fs::read_to_string(key_file)
                .map(|key| key.trim().to_owned())
                .map_err(|e| {
                    Error::Usage(format!(
                        "no operator key: pass --operator-key, or start anika with scripts/up, \
                         which writes {} ({e})",
                        key_file.display()
                    ))
                })?,
        };
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            operator_key,
        })
    }
}

/// A short random tag that keeps the partner names of one run apart from earlier runs'
/// (partner names are unique in anika).
pub fn run_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_owned()
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>, Error>,
) -> Result<T, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(what.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
