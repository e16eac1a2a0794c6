//! Subscriptions: the catalog's writes and the dispatcher's runtime reads of the same rows.
