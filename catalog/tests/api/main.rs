//! The catalog's HTTP API, against real PostgreSQL and RabbitMQ.

mod audit;
mod auth;
mod bad_input;
mod helpers;
mod partners;
mod properties;
mod secrets;
mod subscriptions;
mod topics;
mod unreadable;
