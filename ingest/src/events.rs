//! `POST /v1/topics/{id}/events` and `/events/batch`: accept events durably, answer fast.
//!
//! A request is checked completely in the handler (permission from the topic
//! cache, size while streaming, JSON, schema, keys), its envelopes are
//! serialised, and only then does it join a group commit. The 202 is sent after
//! the group's commit: the event is in the log and in the outbox.

use std::{sync::Arc, time::Instant};

use anika_shared::{
    Problem,
    auth::Principal,
    domain::{EventId, PartnerId, Role, SYSTEM_TOPIC, TopicId},
    envelope::format_time,
    extract::Path,
    store,
};
use axum::{
    body::Body,
    extract::State as AxumState,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    State,
    error::{Error, Result},
    input, meters as m,
    quotas::{Allowance, rate_limit_headers},
    topics::Topic,
    writer::{Accepted, Item},
};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .routes(routes!(post_event))
        .routes(routes!(post_batch))
}

/// An event to publish.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the body; the handler reads it raw to keep `data`'s bytes
pub(crate) struct EventIn {
    /// Any JSON; must satisfy the topic's schema if it has one. Delivered byte for byte.
    #[schema(value_type = Object)]
    data: Value,
    /// The publisher's key (≤ 256 characters), for search.
    key: Option<String>,
}

/// A batch of 1 to 1000 events, stored all or nothing.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the body; the handler reads it raw
pub(crate) struct BatchIn {
    events: Vec<BatchItemIn>,
}

/// One event of a batch.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the body; the handler reads it raw
pub(crate) struct BatchItemIn {
    /// Any JSON; must satisfy the topic's schema if it has one.
    #[schema(value_type = Object)]
    data: Value,
    /// The publisher's key (≤ 256 characters).
    key: Option<String>,
    /// Like the `Idempotency-Key` header, for this event (≤ 255 characters).
    idempotency_key: Option<String>,
}

/// An accepted event: committed to the log, to be delivered.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventAccepted {
    id: EventId,
    topic_id: TopicId,
    /// RFC 3339 UTC with milliseconds; equal to the time inside the UUIDv7 id.
    received_at: String,
}

/// The accepted events of a batch, in the order posted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchAccepted {
    items: Vec<BatchItemAccepted>,
}

/// One accepted event of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchItemAccepted {
    id: EventId,
    received_at: String,
}

/// The topic, if the caller may post into it: its owner's admins and publishers only.
///
/// A partner that may read the topic (a grantee) or an operator learns it exists (403);
/// anyone else gets the same 404 as for a topic that does not exist.
async fn postable(
    state: &State,
    principal: &Principal,
    id: TopicId,
) -> Result<(Arc<Topic>, PartnerId)> {
    let not_found = || Error::Client(Problem::not_found(format!("no topic {id}")));
    let topic = state
        .0
        .topics
        .get(&state.ctx.pool, id)
        .await?
        .ok_or_else(not_found)?;
    match (principal.partner(), principal.role()) {
        (Some(partner), Role::Admin | Role::Publisher)
            if partner == topic.owner && topic.name == SYSTEM_TOPIC =>
        {
            Err(Problem::forbidden(format!(
                "only anika publishes into `{SYSTEM_TOPIC}`: it carries operational events about your subscriptions"
            ))
            .into())
        }
        (Some(partner), Role::Admin | Role::Publisher) if partner == topic.owner => {
            Ok((topic, partner))
        }
        (None, _) | (_, Role::Operator) => Err(Problem::forbidden(
            "operators do not publish events; use an admin or publisher key of the topic's owner",
        )
        .into()),
        (Some(partner), _) => {
            let granted =
                store::topics::grant_exists(&state.ctx.pool, id.uuid(), partner.uuid()).await?;
            if granted {
                Err(Problem::forbidden(
                    "only the topic's owner publishes into it; you may read its events",
                )
                .into())
            } else {
                Err(not_found())
            }
        }
    }
}

/// For a partner with a quota: what is left of it, so a client can pace itself before a 429.
fn with_allowance(response: &mut Response, allowance: Option<Allowance>) {
    if let Some(a) = allowance {
        rate_limit_headers(response.headers_mut(), a.rate, a.remaining, a.reset);
    }
}

fn rejected(error: Error, events: usize) -> Response {
    metrics::counter!(m::REJECTED, "reason" => error.reason()).increment(events as u64);
    error.into_response()
}

fn count_accepted(accepted: &[Accepted], started: Instant) {
    let stored = accepted.iter().filter(|a| !a.replayed).count();
    metrics::counter!(m::ACCEPTED).increment(stored as u64);
    metrics::histogram!(m::LATENCY_SECONDS).record(started.elapsed().as_secs_f64());
}

/// Publish an event into a topic you own.
///
/// 202 means durable: the event is committed to the log and will be delivered
/// to every subscription allowed to receive it, even if RabbitMQ is down now.
/// With an `Idempotency-Key`, the same key on the same topic within 24 hours
/// answers with the first event (header `Idempotent-Replayed: true`) and
/// publishes nothing new; the same key with a different event is a 409.
#[utoipa::path(
    post,
    path = "/v1/topics/{id}/events",
    tag = "events",
    params(
        ("id" = String, Path, description = "Topic id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Up to 255 characters; replays within 24 h return the first event"),
    ),
    request_body = EventIn,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Stored; will be delivered", body = EventAccepted,
            headers(
                ("RateLimit-Policy" = String, description = "For a partner with an ingest quota: `\"default\";q=<events per second>;w=1`"),
                ("RateLimit" = String, description = "For a partner with an ingest quota: `\"default\";r=<events left now>;t=<seconds until full>`"),
            )),
        (status = 400, description = "Not JSON, or no `data`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the owner's admin or publisher", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic visible to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency key reused for a different event", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than ANIKA_MAX_EVENT_BYTES", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not declared as JSON", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within ANIKA_REQUEST_READ_TIMEOUT", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Schema violations or invalid fields, with pointers", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the partner's ingest quota; nothing was stored", body = Problem, content_type = "application/problem+json",
            headers(
                ("Retry-After" = u64, description = "Seconds until the event fits the quota"),
                ("RateLimit-Policy" = String, description = "IETF httpapi draft: `\"default\";q=<events per second>;w=1`"),
                ("RateLimit" = String, description = "IETF httpapi draft: `\"default\";r=0;t=<seconds>`"),
            )),
        (status = 503, description = "Past the bounded backlog (ANIKA_MAX_BACKLOG) or the server's in-flight caps; nothing was stored", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn post_event(
    AxumState(state): AxumState<State>,
    principal: Result<Principal, Problem>,
    topic: Result<Path<TopicId>, Problem>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let accepted = async {
        let principal = principal?;
        let Path(topic_id) = topic?;
        let (topic, publisher) = postable(&state, &principal, topic_id).await?;
        // Before the body is read: past the backlog bound nothing is accepted at all.
        state.backlog.admit()?;
        let idempotency_key = input::idempotency_header(&headers)?;
        let bytes =
            input::read_body(&headers, body, state.ctx.config.ingest.max_event_bytes).await?;
        let event = input::single(&topic, publisher, &bytes, idempotency_key)?;
        drop(bytes);
        let allowance = state.0.quotas.check(&state.ctx.pool, publisher, 1).await?;
        let accepted = state
            .0
            .writer
            .submit(topic.id, publisher, vec![Item::Event(event)])
            .await?;
        Ok::<_, Error>((topic.id, accepted, allowance))
    }
    .await;
    match accepted {
        Ok((topic_id, accepted, allowance)) => {
            count_accepted(&accepted, started);
            let first = accepted[0];
            let body = EventAccepted {
                id: first.id,
                topic_id,
                received_at: format_time(first.received_at()),
            };
            let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
            if first.replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            with_allowance(&mut response, allowance);
            response
        }
        Err(error) => rejected(error, 1),
    }
}

/// Publish 1 to 1000 events into a topic you own, all or nothing.
///
/// Any invalid event refuses the whole batch, naming each bad event by index
/// (`/events/3/data/price`). Each event may carry its own `idempotency_key`.
#[utoipa::path(
    post,
    path = "/v1/topics/{id}/events/batch",
    tag = "events",
    params(("id" = String, Path, description = "Topic id")),
    request_body = BatchIn,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "All stored; will be delivered", body = BatchAccepted,
            headers(
                ("RateLimit-Policy" = String, description = "For a partner with an ingest quota: `\"default\";q=<events per second>;w=1`"),
                ("RateLimit" = String, description = "For a partner with an ingest quota: `\"default\";r=<events left now>;t=<seconds until full>`"),
            )),
        (status = 400, description = "Not JSON, or no `events`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the owner's admin or publisher", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic visible to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An idempotency key reused for a different event", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over ANIKA_MAX_BATCH_BYTES, or an event's data over ANIKA_MAX_EVENT_BYTES", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not declared as JSON", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within ANIKA_REQUEST_READ_TIMEOUT", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid events, each with a pointer; more than 1000 events; or more events than the partner's ingest_burst", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the partner's ingest quota (each event counts); nothing was stored", body = Problem, content_type = "application/problem+json",
            headers(
                ("Retry-After" = u64, description = "Seconds until the batch fits the quota"),
                ("RateLimit-Policy" = String, description = "IETF httpapi draft: `\"default\";q=<events per second>;w=1`"),
                ("RateLimit" = String, description = "IETF httpapi draft: `\"default\";r=0;t=<seconds>`"),
            )),
        (status = 503, description = "Past the bounded backlog (ANIKA_MAX_BACKLOG) or the server's in-flight caps; nothing was stored", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn post_batch(
    AxumState(state): AxumState<State>,
    principal: Result<Principal, Problem>,
    topic: Result<Path<TopicId>, Problem>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut events = 1;
    let accepted: Result<(Vec<Accepted>, Option<Allowance>)> = async {
        let principal = principal?;
        let Path(topic_id) = topic?;
        let (topic, publisher) = postable(&state, &principal, topic_id).await?;
        let config = &state.ctx.config;
        if headers.contains_key("idempotency-key") {
            // Silently ignoring it would let a client believe its batch is protected.
            return Err(Problem::validation(
                "the Idempotency-Key header applies to single events; in a batch, give each event its own \
                 `idempotency_key`",
                Vec::new(),
            )
            .into());
        }
        state.backlog.admit()?;
        let bytes = input::read_body(&headers, body, config.ingest.max_batch_bytes).await?;
        let items = input::batch(&topic, publisher, &bytes, config.ingest.max_event_bytes)?;
        drop(bytes);
        events = items.len();
        let allowance = state
            .0
            .quotas
            .check(&state.ctx.pool, publisher, items.len())
            .await?;
        let accepted = state.writer.submit(topic.id, publisher, items).await?;
        Ok((accepted, allowance))
    }
    .await;
    match accepted {
        Ok((accepted, allowance)) => {
            count_accepted(&accepted, started);
            let items = accepted
                .iter()
                .map(|a| BatchItemAccepted {
                    id: a.id,
                    received_at: format_time(a.received_at()),
                })
                .collect();
            let mut response =
                (StatusCode::ACCEPTED, axum::Json(BatchAccepted { items })).into_response();
            with_allowance(&mut response, allowance);
            response
        }
        Err(error) => rejected(error, events),
    }
}
