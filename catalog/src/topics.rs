//! Topics and grants. A topic belongs to one partner; grants give other partners read access.
//!
//! Revoking a grant unbinds the partner's subscription queues from the topic
//! before the answer, so nothing published afterwards is routed to them.

use anika_shared::{
    Problem, amqp,
    audit::{self, Action, Actor, Changes, Target},
    auth::Principal,
    changes::Change,
    domain::{
        Description, PartnerId, RESERVED_TOPIC_PREFIX, SYSTEM_TOPIC, SubscriptionId, TopicId,
        TopicName,
    },
    extract::{Json, Path, Query},
    page::{Limit, Page, decode_time_cursor},
    patch::Patch,
    store::{
        self,
        topics::{GrantRow, NewTopic, TopicFilter, TopicRow, TopicUpdate},
    },
};
use axum::{extract::State as AxumState, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    State, acting_partner,
    error::{Result, conflict_on_unique},
    require_admin,
};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .routes(routes!(create_topic, list_topics))
        .routes(routes!(get_topic, update_topic, delete_topic))
        .routes(routes!(list_grants))
        .routes(routes!(put_grant, delete_grant))
}

/// A topic.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicOut {
    id: TopicId,
    name: String,
    description: Option<String>,
    owner_partner_id: PartnerId,
    /// JSON Schema (2020-12) every event's `data` must satisfy.
    schema: Option<Value>,
    created_at: DateTime<Utc>,
}

impl From<TopicRow> for TopicOut {
    fn from(row: TopicRow) -> Self {
        Self {
            id: row.id.into(),
            name: row.name,
            description: row.description,
            owner_partner_id: row.owner_partner_id.into(),
            schema: row.schema.map(|s| s.0),
            created_at: row.created_at,
        }
    }
}

/// How a caller stands to a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// An operator, or a principal of the owner partner.
    Owner,
    /// A principal of a granted partner.
    Reader,
}

/// Loads a topic the caller may see, or 404 — strangers learn nothing.
pub(crate) async fn visible_topic(
    conn: &mut PgConnection,
    principal: &Principal,
    id: TopicId,
    lock: bool,
) -> Result<(TopicRow, Standing)> {
    let partner = principal.partner().map(PartnerId::uuid);
    let row = if lock {
        store::topics::get_topic_for_update(conn, id.uuid(), partner).await?
    } else {
        store::topics::get_topic(conn, id.uuid(), partner).await?
    };
    let not_found = || Problem::not_found(format!("no topic {id}"));
    let row = row.ok_or_else(not_found)?;
    let standing = if principal.sees_partner(row.owner_partner_id.into()) {
        Standing::Owner
    } else if row.granted {
        Standing::Reader
    } else {
        return Err(not_found().into());
    };
    Ok((row, standing))
}

/// Loads a topic the caller may manage: 404 if invisible, 403 if only readable or not an admin.
async fn managed_topic(
    conn: &mut PgConnection,
    principal: &Principal,
    id: TopicId,
) -> Result<TopicRow> {
    let (row, standing) = visible_topic(conn, principal, id, true).await?;
    if standing != Standing::Owner || !principal.administers(row.owner_partner_id.into()) {
        return Err(Problem::forbidden(
            "only the owner's admins (or operators) may change this topic",
        )
        .into());
    }
    if row.name == SYSTEM_TOPIC {
        return Err(Problem::forbidden(format!(
            "`{SYSTEM_TOPIC}` is kept by anika: it cannot be changed, deleted or granted (subscribe to it instead)"
        ))
        .into());
    }
    Ok(row)
}

/// Refuses a name partners may not give a topic (API.md: names starting with `anika.`).
fn refuse_reserved(name: &TopicName) -> Result<(), Problem> {
    if name.is_reserved() {
        return Err(Problem::invalid_field(
            "/name",
            format!("topic names starting with `{RESERVED_TOPIC_PREFIX}` are reserved for anika"),
        ));
    }
    Ok(())
}

/// Checks a JSON Schema before it is stored: valid against the 2020-12 meta-schema and compilable.
fn check_schema(schema: &Value) -> Result<(), Problem> {
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(Problem::invalid_field(
            "/schema",
            "a JSON Schema is an object (or a boolean)",
        ));
    }
    if let Err(e) = jsonschema::meta::validate(schema) {
        return Err(Problem::invalid_field(
            "/schema",
            format!("not a valid JSON Schema: {} at {}", e, e.instance_path()),
        ));
    }
    jsonschema::draft202012::new(schema)
        .map(|_| ())
        .map_err(|e| Problem::invalid_field("/schema", format!("the schema cannot be used: {e}")))
}

/// A new topic.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTopic {
    name: TopicName,
    #[serde(default)]
    description: Option<Description>,
    /// Optional JSON Schema (2020-12) for `data`.
    #[serde(default)]
    schema: Option<Value>,
    /// Operators only: the partner that will own the topic.
    #[serde(default)]
    owner_partner_id: Option<PartnerId>,
}

/// Create a topic owned by your partner.
#[utoipa::path(
    post,
    path = "/v1/topics",
    tag = "topics",
    request_body = CreateTopic,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = TopicOut),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken for this owner", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_topic(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Json(body): Json<CreateTopic>,
) -> Result<(StatusCode, axum::Json<TopicOut>)> {
    require_admin(&principal)?;
    refuse_reserved(&body.name)?;
    let owner = acting_partner(&principal, body.owner_partner_id, "/owner_partner_id")?;
    if let Some(schema) = &body.schema {
        check_schema(schema)?;
    }
    let mut tx = state.ctx.pool.begin().await?;
    let new = NewTopic {
        id: TopicId::new().uuid(),
        owner_partner_id: owner.uuid(),
        name: body.name.as_str(),
        description: body.description.as_ref().map(Description::as_str),
        schema: body.schema.as_ref(),
    };
    let row = store::topics::insert_topic(&mut *tx, new)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                Problem::invalid_field("/owner_partner_id", "no partner with this id").into()
            }
            _ => conflict_on_unique(e, || {
                format!("this partner already has a topic named `{}`", body.name)
            }),
        })?;
    let changes = Changes::new()
        .created("name", &row.name)
        .created("description", &row.description)
        .created("schema", &row.schema);
    audit::record(
        &mut tx,
        &Actor::from(&principal),
        Action::TopicCreated,
        &Target::topic(row.id.into(), owner),
        changes,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(row.into())))
}

/// Page through topics.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicQuery {
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only topics with this exact name.
    name: Option<String>,
}

/// List the topics you own or are granted (operators: all).
#[utoipa::path(
    get,
    path = "/v1/topics",
    tag = "topics",
    params(TopicQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "A page of topics", body = Page<TopicOut>))
)]
async fn list_topics(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Query(query): Query<TopicQuery>,
) -> Result<axum::Json<Page<TopicOut>>> {
    let limit = query.limit.unwrap_or_default();
    let after: Option<(DateTime<Utc>, Uuid)> = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    let filter = TopicFilter {
        partner: principal.partner().map(PartnerId::uuid),
        name: query.name.as_deref(),
        after,
    };
    let rows = store::topics::list_topics(&state.ctx.pool, filter, limit.fetch()).await?;
    let items: Vec<TopicOut> = rows.into_iter().map(Into::into).collect();
    Ok(axum::Json(Page::from_rows(items, limit, |t| {
        (t.created_at, t.id.uuid())
    })))
}

/// Read a topic you own or are granted.
#[utoipa::path(
    get,
    path = "/v1/topics/{id}",
    tag = "topics",
    params(("id" = String, Path, description = "Topic id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The topic", body = TopicOut),
        (status = 404, description = "Not visible to you", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_topic(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<TopicId>,
) -> Result<axum::Json<TopicOut>> {
    let mut conn = state.ctx.pool.acquire().await?;
    let (row, _) = visible_topic(&mut conn, &principal, id, false).await?;
    Ok(axum::Json(row.into()))
}

/// Changes to a topic; absent fields stay, `null` clears.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTopic {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    name: Patch<TopicName>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    description: Patch<Description>,
    /// A new JSON Schema, or `null` to stop validating.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    schema: Patch<Value>,
}

/// Change a topic's name, description or schema (owner admins).
#[utoipa::path(
    patch,
    path = "/v1/topics/{id}",
    tag = "topics",
    params(("id" = String, Path, description = "Topic id")),
    request_body = UpdateTopic,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated topic", body = TopicOut),
        (status = 403, description = "Not the owner's admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not visible to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_topic(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<TopicId>,
    Json(body): Json<UpdateTopic>,
) -> Result<axum::Json<TopicOut>> {
    if let Patch::Value(schema) = &body.schema {
        check_schema(schema)?;
    }
    match &body.name {
        Patch::Null => {
            return Err(Problem::invalid_field("/name", "a topic always has a name").into());
        }
        Patch::Value(name) => refuse_reserved(name)?,
        _ => {}
    }
    let mut tx = state.ctx.pool.begin().await?;
    let row = managed_topic(&mut tx, &principal, id).await?;
    let name = match body.name {
        Patch::Value(name) => name.as_str().to_owned(),
        _ => row.name.clone(),
    };
    let description = body
        .description
        .map(String::from)
        .apply(row.description.clone());
    let schema = body.schema.apply(row.schema.clone().map(|s| s.0));
    let update = TopicUpdate {
        id: id.uuid(),
        partner: principal.partner().map(PartnerId::uuid),
        name: &name,
        description: description.as_deref(),
        schema: schema.as_ref(),
    };
    let updated = store::topics::update_topic(&mut *tx, update)
        .await
        .map_err(|e| {
            conflict_on_unique(e, || {
                format!("this partner already has a topic named `{name}`")
            })
        })?;
    let changes = Changes::new()
        .diff("name", &row.name, &updated.name)
        .diff("description", &row.description, &updated.description)
        .diff("schema", &row.schema, &updated.schema);
    if !changes.is_empty() {
        audit::record(
            &mut tx,
            &Actor::from(&principal),
            Action::TopicUpdated,
            &Target::topic(id, row.owner_partner_id.into()),
            changes,
        )
        .await?;
    }
    Change::Topic { topic_id: id }.notify(&mut tx).await?;
    tx.commit().await?;
    Ok(axum::Json(updated.into()))
}

/// Delete a topic: its subscriptions and grants go with it; the event log is kept until retention.
#[utoipa::path(
    delete,
    path = "/v1/topics/{id}",
    tag = "topics",
    params(("id" = String, Path, description = "Topic id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not the owner's admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not visible to you", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_topic(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<TopicId>,
) -> Result<StatusCode> {
    let mut tx = state.ctx.pool.begin().await?;
    let topic = managed_topic(&mut tx, &principal, id).await?;
    let deleted = store::subscriptions::delete_topic_subscriptions(&mut *tx, id.uuid()).await?;
    let subscriptions: Vec<Uuid> = deleted.iter().map(|d| d.id).collect();
    // Each subscription that goes with the topic has its own entry, so its partner (a
    // grantee, perhaps) finds out what happened to it.
    for sub in &deleted {
        audit::record(
            &mut tx,
            &Actor::from(&principal),
            Action::SubscriptionDeleted,
            &Target::subscription(sub.id.into(), sub.partner_id.into()),
            Changes::new()
                .removed("topic_id", &id)
                .removed("url", &audit::url_without_credentials(&sub.url)),
        )
        .await?;
    }
    store::attempts::delete_subscriptions_dead_letters(&mut *tx, &subscriptions).await?;
    store::topics::delete_topic(&mut *tx, id.uuid()).await?;
    let channel = state.ctx.broker.channel().await?;
    for sub in &subscriptions {
        let sub = SubscriptionId::from(*sub);
        state
            .ctx
            .broker
            .topology()
            .delete_subscription(&channel, sub)
            .await?;
        Change::Subscription {
            subscription_id: sub,
        }
        .notify(&mut tx)
        .await?;
    }
    amqp::close_channel(&channel, "catalog change").await;
    // What went with it, since the rows to read it from are gone.
    let changes = Changes::new()
        .removed("name", &topic.name)
        .removed("subscriptions", &subscriptions);
    audit::record(
        &mut tx,
        &Actor::from(&principal),
        Action::TopicDeleted,
        &Target::topic(id, topic.owner_partner_id.into()),
        changes,
    )
    .await?;
    Change::Topic { topic_id: id }.notify(&mut tx).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A partner with read access.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantOut {
    #[schema(value_type = String, format = Uuid)]
    partner_id: Uuid,
    granted_at: DateTime<Utc>,
}

impl From<GrantRow> for GrantOut {
    fn from(row: GrantRow) -> Self {
        Self {
            partner_id: row.partner_id,
            granted_at: row.granted_at,
        }
    }
}

/// Page through grants.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantQuery {
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List who may read a topic (owner only).
#[utoipa::path(
    get,
    path = "/v1/topics/{id}/grants",
    tag = "grants",
    params(("id" = String, Path, description = "Topic id"), GrantQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of grants", body = Page<GrantOut>),
        (status = 403, description = "Not the owner", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not visible to you", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_grants(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<TopicId>,
    Query(query): Query<GrantQuery>,
) -> Result<axum::Json<Page<GrantOut>>> {
    let mut conn = state.ctx.pool.acquire().await?;
    let (_, standing) = visible_topic(&mut conn, &principal, id, false).await?;
    if standing != Standing::Owner {
        return Err(Problem::forbidden("only the topic's owner sees its grants").into());
    }
    let limit = query.limit.unwrap_or_default();
    let after: Option<(DateTime<Utc>, Uuid)> = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    let rows: Vec<GrantOut> =
        store::topics::list_grants(&mut *conn, id.uuid(), after, limit.fetch())
            .await?
            .into_iter()
            .map(Into::into)
            .collect();
    Ok(axum::Json(Page::from_rows(rows, limit, |g| {
        (g.granted_at, g.partner_id)
    })))
}

/// The grantee's subscriptions on a topic: their queues are what a grant binds and a revoke unbinds.
async fn grantee_subscriptions(
    conn: &mut PgConnection,
    topic: TopicId,
    partner: PartnerId,
) -> Result<Vec<SubscriptionId>> {
    let ids = store::subscriptions::list_partner_topic_subscription_ids(
        conn,
        topic.uuid(),
        partner.uuid(),
    )
    .await?;
    Ok(ids.into_iter().map(SubscriptionId::from).collect())
}

/// Give a partner read access (idempotent).
#[utoipa::path(
    put,
    path = "/v1/topics/{id}/grants/{partner_id}",
    tag = "grants",
    params(("id" = String, Path, description = "Topic id"), ("partner_id" = String, Path, description = "Partner to grant")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Granted"),
        (status = 403, description = "Not the owner's admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic or partner", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The owner cannot be granted", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn put_grant(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path((id, partner)): Path<(TopicId, PartnerId)>,
) -> Result<StatusCode> {
    let mut tx = state.ctx.pool.begin().await?;
    let topic = managed_topic(&mut tx, &principal, id).await?;
    if PartnerId::from(topic.owner_partner_id) == partner {
        return Err(Problem::validation(
            "the owner always reads its own topics; grant another partner",
            vec![],
        )
        .into());
    }
    if !store::partners::partner_exists(&mut *tx, partner.uuid()).await? {
        return Err(Problem::not_found(format!("no partner {partner}")).into());
    }
    let inserted = store::topics::insert_grant(&mut *tx, id.uuid(), partner.uuid()).await?;
    if inserted {
        // Only a grant that was not there is a change: a repeated PUT records nothing.
        // Written before the broker binds: if RabbitMQ refuses, it rolls back with the grant.
        audit::record(
            &mut tx,
            &Actor::from(&principal),
            Action::GrantCreated,
            &Target::grant(id, topic.owner_partner_id.into()),
            Changes::new().created("partner_id", &partner),
        )
        .await?;
        let subscriptions = grantee_subscriptions(&mut tx, id, partner).await?;
        if !subscriptions.is_empty() {
            let channel = state.ctx.broker.channel().await?;
            for sub in subscriptions {
                state
                    .ctx
                    .broker
                    .topology()
                    .bind_to_topic(&channel, sub, id)
                    .await?;
            }
            amqp::close_channel(&channel, "catalog change").await;
        }
        Change::Grant {
            topic_id: id,
            partner_id: partner,
        }
        .notify(&mut tx)
        .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take read access away; from the answer on, nothing more reaches that partner.
#[utoipa::path(
    delete,
    path = "/v1/topics/{id}/grants/{partner_id}",
    tag = "grants",
    params(("id" = String, Path, description = "Topic id"), ("partner_id" = String, Path, description = "Partner to revoke")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked (or was not granted)"),
        (status = 403, description = "Not the owner's admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_grant(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path((id, partner)): Path<(TopicId, PartnerId)>,
) -> Result<StatusCode> {
    let mut tx = state.ctx.pool.begin().await?;
    let topic = managed_topic(&mut tx, &principal, id).await?;
    let deleted = store::topics::delete_grant(&mut *tx, id.uuid(), partner.uuid()).await?;
    if deleted {
        audit::record(
            &mut tx,
            &Actor::from(&principal),
            Action::GrantDeleted,
            &Target::grant(id, topic.owner_partner_id.into()),
            Changes::new().removed("partner_id", &partner),
        )
        .await?;
    }
    // Unbind even if no grant row was found: a queue bound by drift is unbound too.
    let subscriptions = grantee_subscriptions(&mut tx, id, partner).await?;
    if !subscriptions.is_empty() {
        let channel = state.ctx.broker.channel().await?;
        for sub in subscriptions {
            state
                .ctx
                .broker
                .topology()
                .unbind_from_topic(&channel, sub, id)
                .await?;
        }
        amqp::close_channel(&channel, "catalog change").await;
    }
    Change::Grant {
        topic_id: id,
        partner_id: partner,
    }
    .notify(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
