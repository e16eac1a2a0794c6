//! Ingest's HTTP API and background work, against real PostgreSQL and RabbitMQ.

mod bad_input;
mod edges;
mod helpers;
mod idempotency;
mod maintenance;
mod outbox;
mod properties;
mod publish;
mod search;
