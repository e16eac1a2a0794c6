//! The schema itself: which migrations are applied (for `anika migrate` and readiness).
