//! The event log and its outbox: writing accepted events, relaying, searching, replaying and retention.
