//! Test support for every crate's tests and the bench: a database and vhost of one's own,
//! a real webhook receiver, an API client, and a capture of the log.
//!
//! A dev-only crate: no production crate depends on it, so nothing here reaches a release
//! binary.

pub mod admin;
pub mod api;
pub mod env;
pub mod logs;
pub mod receiver;

pub use api::{Answer, Api, Partner, RawBody};
pub use env::{TEST_SECRET_KEYS, TestEnv, admin_database_url, amqp_base, rabbitmq_api};
pub use logs::{LogCapture, secret_spellings};
pub use receiver::{Received, Receiver, Reply};

use std::{future::Future, time::Duration};

/// The operator API key every test app is bootstrapped with (`ANIKA_BOOTSTRAP_OPERATOR_KEY`).
pub const OPERATOR_KEY: &str = "anika_test_operator_key_0123456789";

/// Polls `check` every 25 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
