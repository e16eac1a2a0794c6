//! Ingest's HTTP API and background work, against real PostgreSQL and RabbitMQ.

mod bad_input;
mod helpers;
mod idempotency;
mod maintenance;
mod outbox;
mod publish;
mod search;
