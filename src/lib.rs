//! anika as a library: the composition root ([`app`]) that the binary, every role and
//! every test build the application with.

pub mod app;

pub use app::{App, Roles};
