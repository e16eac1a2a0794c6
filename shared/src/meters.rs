//! The names of the metrics every role records through `shared`, described once so
//! `/metrics` explains them.

/// HTTP requests answered, by `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "anika_http_requests_total";
/// Time from request to answer, by `method` and `route`.
pub const HTTP_REQUEST_SECONDS: &str = "anika_http_request_duration_seconds";
/// Request bodies refused at the edge, by `reason`.
pub const HTTP_BODIES_REFUSED: &str = "anika_http_bodies_refused_total";
/// Requests refused at the edge before a handler ran, by `reason` (`queue`, `in_flight`).
/// A `queue` refusal is answered before the request metrics are taken: it is counted only here.
pub const HTTP_REQUESTS_REFUSED: &str = "anika_http_requests_refused_total";
/// Stored secrets that do not open (moved, tampered with, or sealed under a missing main
/// key), by `column`.
pub const SECRETS_UNOPENABLE: &str = "anika_secrets_unopenable_total";
/// Stored values of a closed set (a status) that are none of its names, by `type`.
pub const STORED_VALUES_UNREADABLE: &str = "anika_stored_values_unreadable_total";

/// Registers the descriptions with the recorder.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request to answer, by method and route"
    );
    describe_counter!(
        HTTP_BODIES_REFUSED,
        Unit::Count,
        "Request bodies refused at the edge, by reason"
    );
    describe_counter!(
        HTTP_REQUESTS_REFUSED,
        Unit::Count,
        "Requests refused at the edge under load, by reason"
    );
    describe_counter!(
        SECRETS_UNOPENABLE,
        Unit::Count,
        "Stored secrets that do not open, by column"
    );
    describe_counter!(
        STORED_VALUES_UNREADABLE,
        Unit::Count,
        "Stored values that are none of their type's names, by type"
    );
}
