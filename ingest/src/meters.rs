//! The names of ingest's metrics, described once so `/metrics` explains them.

/// Events stored (a batch counts each of its events; idempotent replays are not counted).
pub(crate) const ACCEPTED: &str = "anika_events_accepted_total";
/// Requests refused, by `reason` (a refused batch counts its events).
pub(crate) const REJECTED: &str = "anika_events_rejected_total";
/// From request received to 202 sent.
pub(crate) const LATENCY_SECONDS: &str = "anika_ingest_latency_seconds";
/// Outbox rows not yet published (measured by the relay at each tick).
pub(crate) const OUTBOX_BACKLOG: &str = "anika_outbox_backlog";
/// Events the relay republished from the outbox.
pub(crate) const RELAY_REPUBLISHED: &str = "anika_outbox_relay_republished_total";
/// From publish to the broker's confirm.
pub(crate) const CONFIRM_SECONDS: &str = "anika_publish_confirm_seconds";
/// Committed events not handed to the publisher (busy or disconnected), left to the relay.
pub(crate) const LEFT_TO_RELAY: &str = "anika_outbox_left_to_relay_total";
/// Duration of one group commit.
pub(crate) const COMMIT_SECONDS: &str = "anika_ingest_group_commit_seconds";
/// From a request queued for a writer to the writer taking it into a group.
pub(crate) const WRITER_WAIT_SECONDS: &str = "anika_ingest_writer_wait_seconds";
/// From a writer answering a request to its handler running again (the runtime's queue).
pub(crate) const ANSWER_DELAY_SECONDS: &str = "anika_ingest_answer_delay_seconds";
/// Events per group commit.
pub(crate) const GROUP_EVENTS: &str = "anika_ingest_group_events";

/// Registers the descriptions with the recorder.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        ACCEPTED,
        Unit::Count,
        "Events stored in the log (idempotent replays excluded)"
    );
    describe_counter!(REJECTED, Unit::Count, "Events refused, by reason");
    describe_histogram!(
        LATENCY_SECONDS,
        Unit::Seconds,
        "Ingest latency: request received to 202 sent"
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        Unit::Count,
        "Outbox rows waiting to be published"
    );
    describe_counter!(
        RELAY_REPUBLISHED,
        Unit::Count,
        "Events republished by the outbox relay"
    );
    describe_histogram!(
        CONFIRM_SECONDS,
        Unit::Seconds,
        "Publish to RabbitMQ confirm"
    );
    describe_counter!(
        LEFT_TO_RELAY,
        Unit::Count,
        "Committed events left to the outbox relay"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Duration of one group commit"
    );
    describe_histogram!(
        WRITER_WAIT_SECONDS,
        Unit::Seconds,
        "Request queued for a writer to taken into a group commit"
    );
    describe_histogram!(
        ANSWER_DELAY_SECONDS,
        Unit::Seconds,
        "Writer answered to the request's handler running again"
    );
    describe_histogram!(GROUP_EVENTS, Unit::Count, "Events written per group commit");
}
