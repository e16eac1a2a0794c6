//! The audit log: writing one entry in the transaction of its change, and reading pages of it.
