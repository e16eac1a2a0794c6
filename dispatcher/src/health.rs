//! A subscription's health (status, queue, requests in flight, dead letters, the last
//! hour's success rate and latency) and a signed test delivery to its endpoint.
//!
//! Both answer to the same callers as the subscription's other delivery routes: its
//! partner's admins and operators.

use std::time::Duration;

use anika_shared::{
    Problem,
    amqp::subscription_queue,
    auth::Principal,
    domain::{EventId, SubscriptionId, SubscriptionStatus},
    envelope::{Envelope, EventHead},
    extract::{Json, Path},
    store::{attempts, topics},
};
use axum::extract::State as AxumState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    State,
    deliver::Outcome,
    routes::{Result, authorize},
};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .routes(routes!(subscription_health))
        .routes(routes!(send_test))
}

/// The window the success rate and latency are computed over.
const WINDOW: Duration = Duration::from_secs(3600);

/// Delivery latency over the window, in milliseconds.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Latency {
    /// Median attempt duration.
    p50: Option<i64>,
    /// 99th percentile attempt duration.
    p99: Option<i64>,
    /// Mean attempt duration.
    mean: Option<i64>,
}

/// Attempts over the last hour.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LastHour {
    /// Attempts made.
    attempts: i64,
    /// Of which 2xx.
    succeeded: i64,
    /// Of which not.
    failed: i64,
    /// `succeeded / attempts`, 0–1; `null` without attempts.
    success_rate: Option<f64>,
    /// How long attempts took (the whole request, as in the attempt log).
    latency_ms: Latency,
}

/// How a subscription is doing now.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    #[schema(value_type = String, format = Uuid)]
    subscription_id: Uuid,
    /// `active`, `paused` or `disabled`.
    status: SubscriptionStatus,
    /// Why the server disabled it, when it did.
    disabled_reason: Option<String>,
    /// Since when every attempt fails; `null` while healthy.
    failing_since: Option<DateTime<Utc>>,
    /// Messages ready in its RabbitMQ queue (not counting those held by a consumer);
    /// `null` when RabbitMQ could not be asked.
    queued: Option<u64>,
    /// Requests to the endpoint on the wire now, from the dispatcher process that
    /// answered (the whole figure in `anika up`; one process's share when several
    /// dispatchers run).
    in_flight: u64,
    /// Messages dead-lettered now.
    dead_letters: i64,
    /// Attempts in the last hour.
    last_hour: LastHour,
}

/// A subscription's health: status, queue, in flight, dead letters, and the last hour's
/// success rate and latency from the attempt log.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/health",
    tag = "deliveries",
    params(("id" = String, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The subscription's health", body = Health),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn subscription_health(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
) -> Result<axum::Json<Health>> {
    authorize(&state, &principal, id).await?;
    let pool = &state.ctx.pool;
    let health = attempts::get_endpoint_health(pool, id.uuid()).await?;
    // One pass over the hour's attempts (the index on (subscription_id, at) bounds it).
    let stats = attempts::attempt_stats(pool, id.uuid(), WINDOW.as_secs_f64()).await?;
    let (attempts, succeeded) = (stats.attempts, stats.succeeded);
    let queued = state
        .ctx
        .broker
        .message_count(&subscription_queue(id))
        .await
        .map(u64::from);
    let in_flight = match state.registry.get(id).await {
        Some(sub) => sub.in_flight.in_use() as u64,
        None => 0,
    };
    let ms = |v: Option<f64>| v.map(|v| v.round() as i64);
    Ok(axum::Json(Health {
        subscription_id: id.uuid(),
        status: health.status,
        disabled_reason: health.disabled_reason,
        failing_since: health.failing_since,
        queued,
        in_flight,
        dead_letters: health.dead_letters,
        last_hour: LastHour {
            attempts,
            succeeded,
            failed: attempts - succeeded,
            success_rate: (attempts > 0).then(|| succeeded as f64 / attempts as f64),
            latency_ms: Latency {
                p50: ms(stats.p50),
                p99: ms(stats.p99),
                mean: ms(stats.mean),
            },
        },
    }))
}

/// What to send as the test event's `data` (default: a small object that says it is a test).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestDelivery {
    /// The `data` of the test delivery; any JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
}

/// What the endpoint did with the test delivery.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TestResult {
    /// The id the test delivery carried (`webhook-id`); not in the event log.
    event_id: EventId,
    /// Whether the endpoint answered 2xx.
    delivered: bool,
    /// Its HTTP status, if it answered.
    http_status: Option<u16>,
    /// How long the request took.
    duration_ms: u64,
    /// At most 4 KiB of its answer.
    response_excerpt: Option<String>,
    /// What went wrong (a status, a timeout, a refused connection, a blocked target).
    error: Option<String>,
}

/// Send one signed test delivery to the subscription's endpoint, now, and say what it answered.
///
/// The request is exactly a real delivery (body, Standard Webhooks headers and
/// signatures, no redirects, the SSRF guard and timeouts of the dispatcher), with a
/// fresh event id that is not in the event log. It is sent whatever the
/// subscription's status (a test is how to check an endpoint before resuming) and is
/// recorded nowhere: not as an attempt, not in the audit log.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/test",
    tag = "deliveries",
    params(("id" = String, Path, description = "Subscription id")),
    request_body(content = TestDelivery, description = "Optional `data`"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the endpoint answered (a failure is an answer too)", body = TestResult),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The stored URL is refused by today's target policy", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn send_test(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
    body: Option<Json<TestDelivery>>,
) -> Result<axum::Json<TestResult>> {
    authorize(&state, &principal, id).await?;
    let Some(config) = crate::subscription_rows::load_one(&state.deps, id).await? else {
        return Err(Problem::not_found(format!("no subscription {id}")).into());
    };
    let url = config
        .url
        .as_ref()
        .map_err(|reason| Problem::invalid_field("/url", reason.clone()))?;
    let topic = topics::get_topic_name(&state.ctx.pool, config.topic.uuid()).await?;
    let data = body.and_then(|Json(b)| b.data).unwrap_or_else(
        || serde_json::json!({"test": true, "message": "a test delivery from anika"}),
    );
    let data = RawValue::from_string(data.to_string()).expect("JSON text is raw JSON");
    let event_id = EventId::new();
    let envelope = Envelope::encode(
        &EventHead {
            id: event_id,
            topic_id: config.topic,
            topic: &topic.name,
            publisher: topic.owner_partner_id.into(),
            key: None,
            received_at: Utc::now(),
        },
        &data,
    );
    let (outcome, took) = state
        .deps
        .sender
        .send(
            url,
            &config.signing_secrets(),
            &event_id.to_string(),
            envelope.into(),
        )
        .await;
    tracing::info!(subscription = %id, status = ?outcome.status(), took_ms = took.as_millis() as u64,
        "test delivery sent");
    let duration_ms = took.as_millis() as u64;
    Ok(axum::Json(match outcome {
        Outcome::Delivered { status, excerpt } => TestResult {
            event_id,
            delivered: true,
            http_status: Some(status),
            duration_ms,
            response_excerpt: Some(excerpt),
            error: None,
        },
        Outcome::Failed {
            status,
            error,
            excerpt,
            ..
        } => TestResult {
            event_id,
            delivered: false,
            http_status: status,
            duration_ms,
            response_excerpt: excerpt,
            error: Some(error),
        },
    }))
}
