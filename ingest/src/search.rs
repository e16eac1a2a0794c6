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

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    topic_id: Uuid,
    publisher_partner_id: Uuid,
    key: Option<String>,
    data: String,
    received_at: DateTime<Utc>,
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

/// Numbered SQL parameters, bound later in the same order.
struct Params {
    next: usize,
}

impl Params {
    fn next(&mut self) -> String {
        self.next += 1;
        format!("${}", self.next)
    }
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

    // The filters, applied to `e` inside whichever source of topics fits the caller.
    let mut params = Params { next: 0 };
    let partner = principal.partner();
    let partner_param = partner.map(|_| params.next());
    let topic_param = query.topic_id.map(|_| params.next());
    let mut filters = Vec::new();
    if query.key.is_some() {
        filters.push(format!("e.key = {}", params.next()));
    }
    if since.is_some() {
        filters.push(format!("e.received_at >= {}", params.next()));
    }
    if until.is_some() {
        filters.push(format!("e.received_at < {}", params.next()));
    }
    if contains.is_some() {
        filters.push(format!("e.data @> {}::jsonb", params.next()));
    }
    if after.is_some() {
        let (at, id) = (params.next(), params.next());
        // The received_at bound on its own lets PostgreSQL skip whole partitions.
        filters.push(format!(
            "e.received_at <= {at} AND (e.received_at, e.id) < ({at}, {id})"
        ));
    }
    let limit_param = params.next();
    let filter = filters
        .iter()
        .map(|f| format!(" AND {f}"))
        .collect::<String>();
    const COLUMNS: &str =
        "e.id, e.topic_id, e.publisher_partner_id, e.key, e.data::text AS data, e.received_at";

    let sql = match (&partner_param, &topic_param) {
        // Operator, every topic: newest first is id order, served by the primary key.
        (None, None) => format!(
            "SELECT {COLUMNS} FROM events e WHERE true{filter} ORDER BY e.id DESC LIMIT {limit_param}"
        ),
        (None, Some(topic)) => format!(
            "SELECT {COLUMNS} FROM events e WHERE e.topic_id = {topic}{filter} \
             ORDER BY e.received_at DESC, e.id DESC LIMIT {limit_param}"
        ),
        // A partner: its readable topics, each read newest first through the topic index, merged.
        (Some(partner), topic) => {
            let readable = match topic {
                Some(topic) => format!(
                    "SELECT {topic}::uuid AS id WHERE EXISTS (SELECT 1 FROM topics WHERE id = {topic} AND owner_partner_id = {partner}) \
                     OR EXISTS (SELECT 1 FROM grants WHERE topic_id = {topic} AND partner_id = {partner})"
                ),
                None => format!(
                    "SELECT id FROM topics WHERE owner_partner_id = {partner} \
                     UNION SELECT topic_id FROM grants WHERE partner_id = {partner}"
                ),
            };
            format!(
                "SELECT e.* FROM ({readable}) AS readable CROSS JOIN LATERAL ( \
                     SELECT {COLUMNS} FROM events e WHERE e.topic_id = readable.id{filter} \
                     ORDER BY e.received_at DESC, e.id DESC LIMIT {limit_param}) AS e \
                 ORDER BY e.received_at DESC, e.id DESC LIMIT {limit_param}"
            )
        }
    };
    let mut q = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql));
    if let Some(partner) = partner {
        q = q.bind(partner.uuid());
    }
    if let Some(topic) = query.topic_id {
        q = q.bind(topic.uuid());
    }
    if let Some(key) = query.key {
        q = q.bind(key);
    }
    if let Some(since) = since {
        q = q.bind(since);
    }
    if let Some(until) = until {
        q = q.bind(until);
    }
    if let Some(contains) = contains {
        q = q.bind(sqlx::types::Json(contains));
    }
    if let Some((at, id)) = after {
        q = q.bind(at).bind(id);
    }
    let rows = q.bind(limit.fetch()).fetch_all(&state.ctx.pool).await?;
    let items = rows
        .into_iter()
        .map(EventOut::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(Page::from_rows(items, limit, |e| {
        (e.at, e.id.uuid())
    })))
}

/// Where an event stands for one subscription.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
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

#[derive(sqlx::FromRow)]
struct DetailRow {
    #[sqlx(flatten)]
    event: EventRow,
    owner_partner_id: Option<Uuid>,
    granted: bool,
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
    let row: Option<DetailRow> = sqlx::query_as(
        "SELECT e.id, e.topic_id, e.publisher_partner_id, e.key, e.data::text AS data, e.received_at, \
                t.owner_partner_id, \
                EXISTS (SELECT 1 FROM grants g WHERE g.topic_id = e.topic_id AND g.partner_id = $3) AS granted \
         FROM events e LEFT JOIN topics t ON t.id = e.topic_id \
         WHERE e.id = $1 AND e.received_at = $2",
    )
    .bind(id.uuid())
    .bind(id.timestamp())
    .bind(partner.map(PartnerId::uuid))
    .fetch_optional(&state.ctx.pool)
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
    let event = EventOut::try_from(row.event)?;
    let deliveries = deliveries(&state, &event, partner).await?;
    Ok(axum::Json(EventDetail { event, deliveries }))
}

/// Derives each subscription's delivery state from what the dispatcher recorded.
///
/// A dead letter wins; otherwise the later of the latest attempt and the latest
/// skip decides; with neither, the event is still pending for that subscription.
async fn deliveries(
    state: &State,
    event: &EventOut,
    partner: Option<PartnerId>,
) -> Result<Vec<Delivery>> {
    let rows: Vec<Delivery> = sqlx::query_as(
        "SELECT s.id AS subscription_id, \
                CASE WHEN d.event_id IS NOT NULL THEN 'dead' \
                     WHEN a.last_at IS NOT NULL AND (k.skipped_at IS NULL OR a.last_at >= k.skipped_at) THEN a.last_status \
                     WHEN k.skipped_at IS NOT NULL THEN 'skipped' \
                     ELSE 'pending' END AS status, \
                greatest(coalesce(a.attempts, 0), coalesce(d.attempts, 0))::bigint AS attempts, \
                a.last_at AS last_attempt_at \
         FROM subscriptions s \
         LEFT JOIN LATERAL ( \
             SELECT count(*) AS attempts, max(at) AS last_at, \
                    (array_agg(status ORDER BY at DESC, attempt DESC))[1] AS last_status \
             FROM attempts WHERE event_id = $1 AND subscription_id = s.id AND at >= $2 \
             HAVING count(*) > 0) a ON true \
         LEFT JOIN dead_letters d ON d.subscription_id = s.id AND d.event_id = $1 \
         LEFT JOIN LATERAL ( \
             SELECT max(at) AS skipped_at FROM skips WHERE event_id = $1 AND subscription_id = s.id) k ON true \
         WHERE s.topic_id = $3 AND ($4::uuid IS NULL OR s.partner_id = $4) \
         ORDER BY s.created_at, s.id",
    )
    .bind(event.id.uuid())
    // Attempts come after the event: older partitions are skipped. A minute of slack for clock skew.
    .bind(event.at - chrono::Duration::minutes(1))
    .bind(event.topic_id.uuid())
    .bind(partner.map(PartnerId::uuid))
    .fetch_all(&state.ctx.pool)
    .await?;
    Ok(rows)
}
