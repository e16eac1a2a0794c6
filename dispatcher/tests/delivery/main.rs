//! The dispatcher against real PostgreSQL, RabbitMQ and HTTP receivers.

mod access;
mod audit;
mod filter;
mod health;
mod helpers;
mod isolation;
mod lifecycle;
mod metrics;
mod ordering;
mod recovery;
mod retries;
mod secrets;
mod signing;
mod system;
mod unreadable;
