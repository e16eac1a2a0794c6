//! The names of the dispatcher's metrics, described once so `/metrics` explains them.

/// Messages settled, by `outcome`: `delivered`, `failed` (an attempt), `dead_lettered`, `skipped`.
pub(crate) const DELIVERIES: &str = "anika_deliveries_total";
/// Webhook requests on the wire now.
pub(crate) const IN_FLIGHT: &str = "anika_deliveries_in_flight";
/// From the event's receipt by ingest to the endpoint's 2xx.
pub(crate) const LATENCY_SECONDS: &str = "anika_delivery_latency_seconds";
/// Subscriptions the dispatcher disabled (410 Gone, or failing for `ANIKA_DISABLE_AFTER`).
pub(crate) const SUBSCRIPTIONS_DISABLED: &str = "anika_subscriptions_disabled_total";
/// Subscription rows not consumed because they do not parse, by `reason`: `status`,
/// `filter`, `secret`.
pub(crate) const SUBSCRIPTIONS_UNREADABLE: &str = "anika_subscriptions_unreadable_total";
/// Subscriptions with a running consumer in this process.
pub(crate) const CONSUMERS: &str = "anika_dispatcher_consumers";
/// Times a subscription's circuit breaker opened.
pub(crate) const BREAKER_OPENED: &str = "anika_circuit_breaker_opened_total";
/// Attempt records committed to the attempt log.
pub(crate) const ATTEMPT_RECORDS_WRITTEN: &str = "anika_attempt_records_written_total";
/// Dead letters moved back into their subscription's queue by a replay.
pub(crate) const DEAD_LETTERS_REPLAYED: &str = "anika_dead_letters_replayed_total";
/// Events of the log enqueued again by a replay.
pub(crate) const LOG_REPLAYED: &str = "anika_log_replayed_total";
/// Operational events written, by `type`.
pub(crate) const SYSTEM_NOTICES: &str = "anika_system_events_total";
/// Messages waiting in one subscription's queue (label `subscription`; opt-in).
pub(crate) const QUEUE_DEPTH: &str = "anika_subscription_queue_depth";
/// Messages in one subscription's dead-letter queue (label `subscription`; opt-in).
pub(crate) const DEAD_LETTERS: &str = "anika_subscription_dead_letters";
/// Messages waiting in all subscription queues together.
pub(crate) const QUEUED_SUM: &str = "anika_subscriptions_queued_messages";
/// Messages in all dead-letter queues together.
pub(crate) const DEAD_LETTERS_SUM: &str = "anika_subscriptions_dead_letters";

/// Registers the descriptions with the recorder.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(DELIVERIES, Unit::Count, "Messages settled, by outcome");
    describe_gauge!(IN_FLIGHT, Unit::Count, "Webhook requests in flight");
    describe_histogram!(
        LATENCY_SECONDS,
        Unit::Seconds,
        "Event received by ingest to the endpoint's 2xx"
    );
    describe_counter!(
        SUBSCRIPTIONS_DISABLED,
        Unit::Count,
        "Subscriptions disabled by the dispatcher"
    );
    describe_counter!(
        SUBSCRIPTIONS_UNREADABLE,
        Unit::Count,
        "Subscription rows not consumed because they do not parse, by reason"
    );
    describe_gauge!(CONSUMERS, Unit::Count, "Running subscription consumers");
    describe_counter!(BREAKER_OPENED, Unit::Count, "Circuit breakers opened");
    describe_counter!(
        ATTEMPT_RECORDS_WRITTEN,
        Unit::Count,
        "Delivery attempts written to the attempt log"
    );
    describe_counter!(
        DEAD_LETTERS_REPLAYED,
        Unit::Count,
        "Dead letters replayed into their queue"
    );
    describe_counter!(LOG_REPLAYED, Unit::Count, "Events replayed from the log");
    describe_counter!(
        SYSTEM_NOTICES,
        Unit::Count,
        "Operational events written, by type"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Messages in a subscription's queue"
    );
    describe_gauge!(
        DEAD_LETTERS,
        Unit::Count,
        "Messages in a subscription's dead-letter queue"
    );
    describe_gauge!(
        QUEUED_SUM,
        Unit::Count,
        "Messages in all subscription queues"
    );
    describe_gauge!(
        DEAD_LETTERS_SUM,
        Unit::Count,
        "Messages in all dead-letter queues"
    );
}
