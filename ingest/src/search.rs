//! `GET /v1/events` and `GET /v1/events/{id}`: the log, as far as the caller may read it.
//!
//! A partner reads the events of topics it owns or is granted (checked against
//! the catalog at query time, so a revoked grant hides them at once);
//! operators read everything, including the events of deleted topics.
//!
//! Pages are newest first with a cursor on `(received_at, id)`. Because an
//! event id is a UUIDv7 whose time is `received_at`, that order is the id
//! order, which lets a query without a topic use the primary key.

use anika_shared::{
    Problem,
    auth::Principal,
    domain::{EventId, PartnerId, Timestamp, TopicId},
    envelope::format_time,
    extract::{Path, Query},
    page::{Limit, Page, decode_time_cursor},
    store::events::{self, DeliveryRow, EventRow},
};
use axum::extract::State as AxumState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{State, error::Result};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(get_event))
}

/// An event in the log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventOut {
    id: EventId,
    topic_id: TopicId,
    publisher_partner_id: PartnerId,
    key: Option<String>,
    /// The event's data (as stored: same meaning, whitespace and member order may differ from the post).
    #[schema(value_type = Object)]
    data: Box<RawValue>,
    /// RFC 3339 UTC with milliseconds.
    received_at: String,
    #[serde(skip)]
    at: DateTime<Utc>,
}

impl TryFrom<EventRow> for EventOut {
    type Error = sqlx::Error;
    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        Ok(Self {
            id: row.id.into(),
            topic_id: row.topic_id.into(),
            publisher_partner_id: row.publisher_partner_id.into(),
            key: row.key,
            data: RawValue::from_string(row.data).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            received_at: format_time(row.received_at),
            at: row.received_at,
        })
    }
}

/// Filters and page of an event search.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    /// Only this topic's events.
    #[param(value_type = Option<String>, format = Uuid)]
    topic_id: Option<TopicId>,
    /// Only events with this exact key.
    key: Option<String>,
    /// Received at or after this time (RFC 3339).
    since: Option<String>,
    /// Received before this time (RFC 3339).
    until: Option<String>,
    /// URL-encoded JSON: only events whose `data` contains it (like PostgreSQL's `@>`).
    contains: Option<String>,
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Parses an RFC 3339 time parameter into a time PostgreSQL can store (see [`Timestamp`]).
fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, Problem> {
    Timestamp::parse(text)
        .map(Timestamp::get)
        .map_err(|e| Problem::bad_request(format!("invalid query parameter `{name}`: {e}")))
}

/// Parses `contains`: any JSON PostgreSQL can store.
fn parse_contains(text: &str) -> Result<Value, Problem> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Problem::bad_request(format!(
            "invalid query parameter `contains`: not JSON ({e}); pass URL-encoded JSON such as %7B%22country%22%3A%22DE%22%7D"
        ))
    })?;
    if anika_shared::storable::raw_has_nul(text)
        && !anika_shared::storable::find_nul(&value, "").is_empty()
    {
        return Err(Problem::bad_request(
            "invalid query parameter `contains`: the character U+0000 cannot occur in stored events",
        ));
    }
    Ok(value)
}

/// Search the event log: topics you own or are granted, newest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(SearchQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events", body = Page<EventOut>),
        (status = 400, description = "A malformed parameter, named", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_events(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Query(query): Query<SearchQuery>,
) -> Result<axum::Json<Page<EventOut>>> {
    let limit = query.limit.unwrap_or_default();
    let since = query
        .since
        .as_deref()
        .map(|t| parse_time("since", t))
        .transpose()?;
    let until = query
        .until
        .as_deref()
        .map(|t| parse_time("until", t))
        .transpose()?;
    let contains = query.contains.as_deref().map(parse_contains).transpose()?;
    let after: Option<(DateTime<Utc>, Uuid)> = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    if let Some(key) = &query.key
        && key.contains('\0')
    {
        return Err(Problem::bad_request(
            "invalid query parameter `key`: contains the character U+0000",
        )
        .into());
    }

    let rows = events::search_events(
        &state.ctx.pool,
        events::EventSearch {
            partner: principal.partner().map(PartnerId::uuid),
            topic: query.topic_id.map(TopicId::uuid),
            key: query.key.as_deref(),
            since,
            until,
            contains: contains.as_ref(),
            after,
            limit: limit.fetch(),
        },
    )
    .await?;
    let items = rows
        .into_iter()
        .map(EventOut::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(Page::from_rows(items, limit, |e| {
        (e.at, e.id.uuid())
    })))
}

/// Where an event stands for one subscription.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Delivery {
    #[schema(value_type = String, format = Uuid)]
    subscription_id: Uuid,
    /// `pending` (nothing recorded yet), `succeeded` or `failed` (the latest attempt),
    /// `dead` (dead-lettered), or `skipped` (not sent: filter, grant, subscription state).
    status: String,
    /// Delivery attempts made.
    attempts: i64,
    /// When the latest attempt was made.
    last_attempt_at: Option<DateTime<Utc>>,
}

/// An event with its deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventDetail {
    #[serde(flatten)]
    event: EventOut,
    /// For each of your subscriptions to the topic (operators: all of them).
    deliveries: Vec<Delivery>,
}

impl From<DeliveryRow> for Delivery {
    fn from(row: DeliveryRow) -> Self {
        Self {
            subscription_id: row.subscription_id,
            status: row.status,
            attempts: row.attempts,
            last_attempt_at: row.last_attempt_at,
        }
    }
}

/// Read one event you may see, with where its deliveries stand.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    params(("id" = String, Path, description = "Event id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event and its deliveries", body = EventDetail),
        (status = 400, description = "Not an event id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not visible to you", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_event(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<EventId>,
) -> Result<axum::Json<EventDetail>> {
    let partner = principal.partner();
    // received_at is the id's timestamp: the lookup touches one partition.
    let row = events::get_event_detail(
        &state.ctx.pool,
        id.uuid(),
        id.timestamp(),
        partner.map(PartnerId::uuid),
    )
    .await?;
    let not_found = || Problem::not_found(format!("no event {id}"));
    let row = row.ok_or_else(not_found)?;
    let visible = match partner {
        None => true,
        Some(partner) => row.owner_partner_id == Some(partner.uuid()) || row.granted,
    };
    if !visible {
        return Err(not_found().into());
    }
    let event = EventOut::try_from(row.event())?;
    let deliveries = deliveries(&state, &event, partner).await?;
    Ok(axum::Json(EventDetail { event, deliveries }))
}

/// Derives each subscription's delivery state from what the dispatcher recorded
/// (see [`events::list_event_deliveries`]).
async fn deliveries(
    state: &State,
    event: &EventOut,
    partner: Option<PartnerId>,
) -> Result<Vec<Delivery>> {
    let rows = events::list_event_deliveries(
        &state.ctx.pool,
        event.id.uuid(),
        // Attempts come after the event: older partitions are skipped. A minute of slack for clock skew.
        event.at - chrono::Duration::minutes(1),
        event.topic_id.uuid(),
        partner.map(PartnerId::uuid),
    )
    .await?;
    Ok(rows.into_iter().map(Delivery::from).collect())
}
