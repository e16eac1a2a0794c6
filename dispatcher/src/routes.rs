//! Routes for subscribers and operators: attempts, dead letters (list, replay, purge), replay from the log.

use anika_shared::{
    Problem,
    audit::{self, Action, Actor, Changes, Target},
    auth::Principal,
    domain::{AttemptStatus, PartnerId, Role, SubscriptionId, Timestamp},
    extract::{Json, Path, Query},
    page::{Limit, Page, decode_time_cursor},
    problem::{internal_error, problem_from_db},
    store::{attempts, subscriptions},
};
use axum::{
    extract::State as AxumState,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    State,
    recovery::{LogReplay, RecoveryError, Window, WindowError},
};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .routes(routes!(list_attempts))
        .routes(routes!(list_dead_letters, purge_dead_letters))
        .routes(routes!(replay_dead_letters))
        .routes(routes!(replay_log))
}

/// The dispatcher's one error type, mapped once to problem documents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client error decided by a handler.
    #[error(transparent)]
    Client(#[from] Problem),
    /// PostgreSQL failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// A recovery failed.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Self::Client(problem) => problem.into_response(),
            Self::Db(e) | Self::Recovery(RecoveryError::Db(e)) => problem_from_db(&e)
                .unwrap_or_else(|| internal_error(&e))
                .into_response(),
            Self::Recovery(RecoveryError::Broker(e)) => {
                tracing::warn!(error = %e, "recovery interrupted by RabbitMQ; nothing unconfirmed was removed");
                Problem::unavailable(format!(
                    "RabbitMQ: {e}; what was not moved stays where it was, retry"
                ))
                .into_response()
            }
            Self::Recovery(RecoveryError::NoSubscription(id)) => {
                Problem::not_found(format!("no subscription {id}")).into_response()
            }
            Self::Recovery(e @ (RecoveryError::NotAllowed | RecoveryError::Busy)) => {
                Problem::conflict(e.to_string()).into_response()
            }
        }
    }
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// The caller may manage this subscription: its partner's admin or an operator.
/// Strangers get 404; the partner's publishers 403. Returns the subscription's partner.
pub(crate) async fn authorize(
    state: &State,
    principal: &Principal,
    id: SubscriptionId,
) -> Result<PartnerId> {
    let partner = subscriptions::get_subscription_partner(&state.ctx.pool, id.uuid()).await?;
    match partner {
        Some(p) if principal.sees_partner(p.into()) => {
            if principal.role() == Role::Publisher {
                Err(Problem::forbidden("this needs an admin or operator key").into())
            } else {
                Ok(p.into())
            }
        }
        _ => Err(Problem::not_found(format!("no subscription {id}")).into()),
    }
}

/// Records a recovery's result in the audit log. The recovery already happened: if
/// the entry cannot be written, the log says what ran, and the caller gets the error
/// rather than an answer that looks accounted for.
async fn record_recovery(
    state: &State,
    principal: &Principal,
    action: Action,
    target: Target,
    changes: Changes,
) -> Result<()> {
    audit::record_result(
        &state.ctx.pool,
        &Actor::from(principal),
        action,
        &target,
        changes,
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, %action, ?target, "a recovery ran but its audit entry could not be written");
        Error::Db(e)
    })
}

/// Filters of the attempt list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttemptQuery {
    /// Only attempts with this outcome.
    #[param(value_type = Option<AttemptStatus>)]
    status: Option<AttemptStatus>,
    /// Only attempts at or after this time (RFC 3339, years 1–9999).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<Timestamp>,
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AttemptOut {
    #[schema(value_type = String, format = Uuid)]
    id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    event_id: Uuid,
    /// 1 for the first try.
    attempt: i32,
    /// `succeeded` or `failed`.
    status: AttemptStatus,
    http_status: Option<i32>,
    error: Option<String>,
    duration_ms: i32,
    /// At most 4 KiB of the response body.
    response_excerpt: Option<String>,
    at: DateTime<Utc>,
}

impl From<attempts::AttemptRow> for AttemptOut {
    fn from(row: attempts::AttemptRow) -> Self {
        Self {
            id: row.id,
            event_id: row.event_id,
            attempt: row.attempt,
            status: row.status,
            http_status: row.http_status,
            error: row.error,
            duration_ms: row.duration_ms,
            response_excerpt: row.response_excerpt,
            at: row.at,
        }
    }
}

/// List a subscription's delivery attempts, newest first.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/attempts",
    tag = "deliveries",
    params(("id" = String, Path, description = "Subscription id"), AttemptQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of attempts", body = Page<AttemptOut>),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_attempts(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
    Query(query): Query<AttemptQuery>,
) -> Result<axum::Json<Page<AttemptOut>>> {
    authorize(&state, &principal, id).await?;
    let limit = query.limit.unwrap_or_default();
    let before: Option<(DateTime<Utc>, Uuid)> = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    let filter = attempts::AttemptFilter {
        subscription: id.uuid(),
        status: query.status,
        since: query.since.map(Timestamp::get),
        before,
        limit: limit.fetch(),
    };
    let rows = attempts::list_attempts(&state.ctx.pool, filter).await?;
    let rows: Vec<AttemptOut> = rows.into_iter().map(AttemptOut::from).collect();
    Ok(axum::Json(Page::from_rows(rows, limit, |a| (a.at, a.id))))
}

/// One dead-lettered message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterOut {
    #[schema(value_type = String, format = Uuid)]
    event_id: Uuid,
    /// Attempts made before giving up.
    attempts: i32,
    last_error: String,
    dead_at: DateTime<Utc>,
}

impl From<attempts::DeadLetterRow> for DeadLetterOut {
    fn from(row: attempts::DeadLetterRow) -> Self {
        Self {
            event_id: row.event_id,
            attempts: row.attempts,
            last_error: row.last_error,
            dead_at: row.dead_at,
        }
    }
}

/// A page of dead letters with their total.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetters {
    items: Vec<DeadLetterOut>,
    /// How many messages are dead-lettered in all.
    total: i64,
    next_cursor: Option<String>,
}

/// Page through dead letters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadLetterQuery {
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List the messages currently dead-lettered, newest first, with the total.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/dead-letters",
    tag = "deliveries",
    params(("id" = String, Path, description = "Subscription id"), DeadLetterQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Dead letters", body = DeadLetters),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_dead_letters(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<axum::Json<DeadLetters>> {
    authorize(&state, &principal, id).await?;
    let limit = query.limit.unwrap_or_default();
    let before: Option<(DateTime<Utc>, Uuid)> = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    let total = attempts::count_dead_letters(&state.ctx.pool, id.uuid()).await?;
    let rows =
        attempts::list_dead_letters(&state.ctx.pool, id.uuid(), before, limit.fetch()).await?;
    let rows: Vec<DeadLetterOut> = rows.into_iter().map(DeadLetterOut::from).collect();
    let page = Page::from_rows(rows, limit, |d| (d.dead_at, d.event_id));
    Ok(axum::Json(DeadLetters {
        items: page.items,
        total,
        next_cursor: page.next_cursor,
    }))
}

/// How many dead letters to move back.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayDeadLetters {
    /// At most this many (default: all).
    #[serde(default)]
    #[schema(minimum = 1)]
    limit: Option<u64>,
}

/// How many dead letters were moved, and how many the broker refused.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Replayed {
    /// Moved back to delivery and out of the dead-letter queue.
    replayed: u64,
    /// Refused by the broker (for example the subscription queue is full): still
    /// dead-lettered and listed, ready for another replay.
    kept: u64,
}

/// Move dead letters back to delivery, each with a fresh attempt budget.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/dead-letters/replay",
    tag = "deliveries",
    params(("id" = String, Path, description = "Subscription id")),
    request_body = ReplayDeadLetters,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Moved back to delivery", body = Replayed),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ unreachable; nothing unconfirmed was moved", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replay_dead_letters(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
    body: Option<Json<ReplayDeadLetters>>,
) -> Result<(StatusCode, axum::Json<Replayed>)> {
    let partner = authorize(&state, &principal, id).await?;
    let limit = body.and_then(|Json(b)| b.limit);
    if limit == Some(0) {
        return Err(Problem::invalid_field("/limit", "limit must be at least 1").into());
    }
    // On the publishing connection: a replay that meets RabbitMQ's flow control must not
    // hold up the acks of the consumers (see `Context::publishing`).
    let outcome = crate::recovery::replay_dead_letters(
        &state.ctx.pool,
        &state.ctx.publishing,
        id,
        limit,
        &|_| {},
    )
    .await?;
    tracing::info!(subscription = %id, replayed = outcome.replayed, kept = outcome.kept, "dead letters replayed");
    // The messages moved in RabbitMQ, not in one transaction with this: the entry
    // records the result, written once the replay is done.
    record_recovery(
        &state,
        &principal,
        Action::DeadLettersReplayed,
        Target::subscription(id, partner),
        outcome.audited(limit),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Replayed {
            replayed: outcome.replayed,
            kept: outcome.kept,
        }),
    ))
}

/// How many dead letters were dropped.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Purged {
    purged: u64,
}

/// Drop every dead letter of the subscription.
#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{id}/dead-letters",
    tag = "deliveries",
    params(("id" = String, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Dropped", body = Purged),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn purge_dead_letters(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
) -> Result<axum::Json<Purged>> {
    let partner = authorize(&state, &principal, id).await?;
    let purged =
        crate::recovery::purge_dead_letters(&state.ctx.pool, &state.ctx.broker, id).await?;
    tracing::info!(subscription = %id, purged, "dead letters purged");
    // As for a replay: the record of the result, after the purge.
    record_recovery(
        &state,
        &principal,
        Action::DeadLettersPurged,
        Target::subscription(id, partner),
        crate::recovery::purge_audited(purged),
    )
    .await?;
    Ok(axum::Json(Purged { purged }))
}

/// The window of the event log to re-deliver.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayLog {
    /// From this time (inclusive, RFC 3339, years 1–9999).
    #[schema(value_type = String, format = DateTime)]
    since: Timestamp,
    /// Until this time (exclusive; default: now).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    until: Option<Timestamp>,
}

/// How many events were enqueued, and how many the broker refused.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Enqueued {
    /// Published for delivery and confirmed by the broker.
    enqueued: u64,
    /// Refused by the broker (for example the subscription queue is full); the replay
    /// stopped at the first. Replay the rest of the window again later.
    refused: u64,
}

/// Re-deliver events of a time window from the log, under the subscription's grant and filter now.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/replay",
    tag = "deliveries",
    params(("id" = String, Path, description = "Subscription id")),
    request_body = ReplayLog,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Enqueued for delivery", body = Enqueued),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The partner may no longer read the topic, or a replay of this subscription is already running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid window: empty, or longer than ANIKA_MAX_REPLAY_WINDOW", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replay_log(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
    Json(body): Json<ReplayLog>,
) -> Result<(StatusCode, axum::Json<Enqueued>)> {
    let partner = authorize(&state, &principal, id).await?;
    let since = body.since.get();
    let until = body.until.map_or_else(Utc::now, Timestamp::get);
    let config = &state.ctx.config;
    let window = Window::new(since, until, config.dispatcher.max_replay_window).map_err(|e| {
        let pointer = match e {
            WindowError::Empty => "/since",
            WindowError::TooLong { .. } => "/until",
        };
        Problem::invalid_field(pointer, e.to_string())
    })?;
    let how = LogReplay {
        database_url: config.database_url.expose(),
        rate_per_s: config.dispatcher.replay_rate_per_s,
    };
    let outcome = crate::recovery::replay_log(
        &state.ctx.pool,
        &state.ctx.publishing,
        &how,
        crate::recovery::LogSlice {
            subscription: id,
            window,
        },
        &|_| {},
    )
    .await?;
    tracing::info!(subscription = %id, enqueued = outcome.enqueued, refused = outcome.refused,
        since = %since, until = %until, "log replayed");
    record_recovery(
        &state,
        &principal,
        Action::EventsReplayed,
        Target::subscription(id, partner),
        outcome.audited(&window),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Enqueued {
            enqueued: outcome.enqueued,
            refused: outcome.refused,
        }),
    ))
}
