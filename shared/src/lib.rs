//! What every anika role shares: configuration, errors, domain types, auth, PostgreSQL, RabbitMQ, HTTP plumbing.

pub mod amqp;
pub mod audit;
pub mod auth;
pub mod changes;
pub mod config;
pub mod context;
pub mod db;
pub mod domain;
pub mod edge;
pub mod envelope;
pub mod extract;
pub mod http;
pub mod meters;
pub mod metrics;
pub mod net;
pub mod page;
pub mod patch;
pub mod problem;
pub mod secret_rows;
pub mod secrets;
pub mod storable;
pub mod store;
pub mod telemetry;

pub use context::Context;
pub use problem::{FieldError, Problem};
