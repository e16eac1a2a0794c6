//! Subscriptions: a partner's webhook on a topic it owns or is granted, with its queue in RabbitMQ.

use std::sync::Arc;

use anika_shared::{
    Problem,
    amqp::{self, Broker, SubscriptionQueues},
    audit::{self, Action, Actor, Changes, Target, url_without_credentials},
    auth::Principal,
    changes::Change,
    domain::{
        Description, MaxInFlight, PartnerId, SubscriptionId, SubscriptionStatus, TopicId,
        WebhookSecret,
    },
    extract::{Json, Path, Query},
    net::WebhookUrl,
    page::{Limit, Page, decode_time_cursor},
    patch::Patch,
    secrets::{Column, Slot},
    store::{
        self,
        subscriptions::{
            NewSubscription, SubscriptionFilter, SubscriptionRow as Row, SubscriptionUpdate,
        },
    },
};
use axum::{extract::State as AxumState, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    State, acting_partner,
    error::{Error, Result},
    require_admin,
};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .routes(routes!(create_subscription, list_subscriptions))
        .routes(routes!(
            get_subscription,
            update_subscription,
            delete_subscription
        ))
        .routes(routes!(rotate_secret))
}

/// Attempts per message before it is dead-lettered: 1–100.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(try_from = "i64")]
#[schema(value_type = u32, minimum = 1, maximum = 100)]
pub(crate) struct MaxAttempts(i32);

impl TryFrom<i64> for MaxAttempts {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if (1..=100).contains(&value) {
            Ok(Self(value as i32))
        } else {
            Err(format!(
                "max_attempts must be between 1 and 100, not {value}"
            ))
        }
    }
}

/// Deliveries per second to one endpoint: 1–100,000.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(try_from = "i64")]
#[schema(value_type = u32, minimum = 1, maximum = 100000)]
pub(crate) struct RateLimit(i32);

impl TryFrom<i64> for RateLimit {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if (1..=100_000).contains(&value) {
            Ok(Self(value as i32))
        } else {
            Err(format!(
                "rate_limit_per_s must be between 1 and 100000, not {value}"
            ))
        }
    }
}

/// The states a client may set.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SettableStatus {
    /// Deliver (also re-enables a disabled subscription).
    Active,
    /// Stop sending; events queue up.
    Paused,
}

/// A filter: a JSON object the event's `data` must contain (like PostgreSQL's `@>`).
fn check_filter(filter: &Value) -> Result<(), Problem> {
    if !filter.is_object() {
        return Err(Problem::invalid_field(
            "/filter",
            "a filter is a JSON object that `data` must contain",
        ));
    }
    if filter.to_string().len() > 16 * 1024 {
        return Err(Problem::invalid_field(
            "/filter",
            "a filter has at most 16 KiB",
        ));
    }
    Ok(())
}

fn parse_url(state: &State, url: &str) -> Result<WebhookUrl, Problem> {
    WebhookUrl::parse(url, &state.ctx.policy).map_err(|e| Problem::invalid_field("/url", e))
}

/// A subscription (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscriptionOut {
    id: SubscriptionId,
    topic_id: TopicId,
    partner_id: PartnerId,
    url: String,
    description: Option<String>,
    filter: Option<Value>,
    status: SubscriptionStatus,
    /// Why the server disabled it, when it did.
    disabled_reason: Option<String>,
    max_attempts: u32,
    rate_limit_per_s: Option<u32>,
    /// Requests in flight to the endpoint at most: the subscription's own cap or the server's default.
    #[schema(minimum = 1, maximum = 1000)]
    max_in_flight: u32,
    ordered: bool,
    created_at: DateTime<Utc>,
    /// Since when every attempt to the endpoint fails; `null` while it is healthy.
    failing_since: Option<DateTime<Utc>>,
    /// How many messages are dead-lettered right now (as `total` of its dead letters).
    dead_letters: u64,
}

/// A subscription as created: the only answer, with rotation, that carries the secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedSubscription {
    #[serde(flatten)]
    subscription: SubscriptionOut,
    /// `whsec_…`: verifies the `webhook-signature` header. Shown only now.
    secret: String,
}

impl SubscriptionOut {
    /// The answer for a row; `default` is the cap of a subscription that chose none.
    fn from_row(row: Row, default: MaxInFlight) -> Self {
        let max_in_flight = row
            .max_in_flight
            .and_then(|m| MaxInFlight::try_from(i64::from(m)).ok())
            .unwrap_or(default)
            .get();
        Self {
            id: row.id.into(),
            topic_id: row.topic_id.into(),
            partner_id: row.partner_id.into(),
            url: row.url,
            description: row.description,
            filter: row.filter.map(|f| f.0),
            status: row.status,
            disabled_reason: row.disabled_reason,
            max_attempts: row.max_attempts as u32,
            rate_limit_per_s: row.rate_limit_per_s.map(|r| r as u32),
            max_in_flight,
            ordered: row.ordered,
            created_at: row.created_at,
            failing_since: row.failing_since,
            dead_letters: u64::try_from(row.dead_letters).unwrap_or(0),
        }
    }
}

/// The fields of a subscription the audit log compares: everything a client sets,
/// and the status. The URL without credentials; never the secret.
#[derive(Serialize)]
struct Audited {
    url: String,
    description: Option<String>,
    filter: Option<Value>,
    status: SubscriptionStatus,
    max_attempts: i32,
    rate_limit_per_s: Option<i32>,
    max_in_flight: Option<i32>,
    ordered: bool,
}

impl Audited {
    fn of(row: &Row) -> Self {
        Self {
            url: url_without_credentials(&row.url),
            description: row.description.clone(),
            filter: row.filter.as_ref().map(|f| f.0.clone()),
            status: row.status,
            max_attempts: row.max_attempts,
            rate_limit_per_s: row.rate_limit_per_s,
            max_in_flight: row.max_in_flight,
            ordered: row.ordered,
        }
    }
}

/// Loads one of the caller's partner's subscriptions: 404 for strangers, 403 for publishers.
async fn own_subscription(
    conn: &mut PgConnection,
    principal: &Principal,
    id: SubscriptionId,
    lock: bool,
) -> Result<Row> {
    let row = if lock {
        store::subscriptions::get_subscription_for_update(conn, id.uuid()).await?
    } else {
        store::subscriptions::get_subscription(conn, id.uuid()).await?
    };
    let row = row
        .filter(|r| principal.sees_partner(r.partner_id.into()))
        .ok_or_else(|| Problem::not_found(format!("no subscription {id}")))?;
    require_admin(principal)?;
    Ok(row)
}

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSubscription {
    topic_id: TopicId,
    /// http(s) endpoint; private and internal addresses are refused.
    url: String,
    #[serde(default)]
    description: Option<Description>,
    /// Deliver only events whose `data` contains this object.
    #[serde(default)]
    filter: Option<Value>,
    /// Default: the retry schedule's length + 1.
    #[serde(default)]
    max_attempts: Option<MaxAttempts>,
    #[serde(default)]
    rate_limit_per_s: Option<RateLimit>,
    /// Requests in flight to the endpoint at most (1–1000); default: the server's setting.
    #[serde(default)]
    max_in_flight: Option<MaxInFlight>,
    /// Deliver one at a time in publish order.
    #[serde(default)]
    ordered: bool,
    /// Operators only: the partner the subscription is for.
    #[serde(default)]
    partner_id: Option<PartnerId>,
}

/// Subscribe a webhook to a topic you own or are granted.
#[utoipa::path(
    post,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    request_body = CreateSubscription,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; the secret is shown only now", body = CreatedSubscription),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Topic not visible", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (URL refused, bad filter)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ unreachable; nothing was created", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_subscription(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Json(body): Json<CreateSubscription>,
) -> Result<(StatusCode, axum::Json<CreatedSubscription>)> {
    require_admin(&principal)?;
    let partner = acting_partner(&principal, body.partner_id, "/partner_id")?;
    let url = parse_url(&state, &body.url)?;
    if let Some(filter) = &body.filter {
        check_filter(filter)?;
    }
    let mut tx = state.ctx.pool.begin().await?;
    let topic =
        store::topics::topic_access_for_share(&mut *tx, body.topic_id.uuid(), partner.uuid())
            .await?;
    let allowed = topic
        .as_ref()
        .is_some_and(|t| t.owner_partner_id == partner.uuid() || t.granted);
    if !allowed {
        return Err(if principal.is_operator() && topic.is_some() {
            Problem::forbidden(format!(
                "partner {partner} neither owns nor is granted this topic"
            ))
        } else {
            Problem::not_found(format!("no topic {}", body.topic_id))
        }
        .into());
    }
    let id = SubscriptionId::new();
    let secret = WebhookSecret::generate();
    let row_id = id.to_string();
    let sealed_secret = secret
        .seal(
            &state.ctx.secrets,
            Slot::new(Column::SubscriptionSecret, &row_id),
        )?
        .to_text();
    let max_attempts = body.max_attempts.map_or(
        state.ctx.config.retry_schedule.default_max_attempts() as i32,
        |m| m.0,
    );
    let new = NewSubscription {
        id: id.uuid(),
        topic_id: body.topic_id.uuid(),
        partner_id: partner.uuid(),
        url: url.as_str(),
        description: body.description.as_ref().map(Description::as_str),
        filter: body.filter.as_ref(),
        max_attempts,
        rate_limit_per_s: body.rate_limit_per_s.map(|r| r.0),
        ordered: body.ordered,
        secret: &sealed_secret,
        max_in_flight: body.max_in_flight.map(|m| m.get() as i32),
    };
    let row = store::subscriptions::insert_subscription(&mut *tx, new).await?;
    audit::record(
        &mut tx,
        &Actor::from(&principal),
        Action::SubscriptionCreated,
        &Target::subscription(id, partner),
        Changes::new()
            .created("topic_id", &body.topic_id)
            .between(None, &Audited::of(&row)),
    )
    .await?;
    // In a task of its own: a client hanging up must not cut the work between the declare
    // and the commit.
    let (broker, pool) = (Arc::clone(&state.ctx.broker), state.ctx.pool.clone());
    let (topic, ordered) = (body.topic_id, body.ordered);
    tokio::spawn(async move {
        let committed = declare_and_commit(&broker, tx, id, topic, ordered).await;
        if committed.is_err() {
            remove_orphan_queues(&broker, &pool, id).await;
        }
        committed
    })
    .await??;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedSubscription {
            subscription: SubscriptionOut::from_row(
                row,
                state.ctx.config.dispatcher.subscription_max_in_flight,
            ),
            secret: secret.expose(),
        }),
    ))
}

/// Declares the subscription's queues, announces the subscription and commits it.
async fn declare_and_commit(
    broker: &Broker,
    mut tx: Transaction<'static, Postgres>,
    id: SubscriptionId,
    topic: TopicId,
    ordered: bool,
) -> Result<()> {
    let channel = broker.channel().await?;
    let declared = broker
        .topology()
        .declare_subscription(
            &channel,
            SubscriptionQueues {
                id,
                topic,
                ordered,
                receive_topic: true,
            },
        )
        .await;
    amqp::close_channel(&channel, "catalog change").await;
    declared?;
    Change::Subscription {
        subscription_id: id,
    }
    .notify(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// After a failed creation: a queue bound to its topic without its subscription row
/// would collect the topic's events forever, so it goes — unless the row exists after
/// all (a commit that succeeded although its answer was lost); then the queue stays.
async fn remove_orphan_queues(broker: &Broker, pool: &PgPool, id: SubscriptionId) {
    let removed = async {
        if store::subscriptions::subscription_exists(pool, id.uuid()).await? {
            return Ok(false);
        }
        let channel = broker.channel().await?;
        broker.topology().delete_subscription(&channel, id).await?;
        amqp::close_channel(&channel, "catalog change").await;
        Ok::<_, Error>(true)
    }
    .await;
    match removed {
        Ok(true) => {
            tracing::info!(subscription = %id, "removed the queues of a subscription that was not created")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(subscription = %id, error = %e, "could not remove the queues of a subscription that was not created; delete anika.sub.{id} and anika.dlq.{id} by hand")
        }
    }
}

/// Filters of the subscription list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only subscriptions to this topic.
    #[param(value_type = Option<String>)]
    topic_id: Option<TopicId>,
    /// Only subscriptions in this state.
    #[param(value_type = Option<SubscriptionStatus>)]
    status: Option<SubscriptionStatus>,
    /// Operators: only this partner's subscriptions.
    #[param(value_type = Option<String>)]
    partner_id: Option<PartnerId>,
}

/// List your partner's subscriptions (operators: all).
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of subscriptions", body = Page<SubscriptionOut>),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_subscriptions(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Page<SubscriptionOut>>> {
    require_admin(&principal)?;
    let limit = query.limit.unwrap_or_default();
    let after: Option<(DateTime<Utc>, Uuid)> = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    let partner = principal.partner().or(query.partner_id);
    let filter = SubscriptionFilter {
        partner: partner.map(PartnerId::uuid),
        topic: query.topic_id.map(TopicId::uuid),
        status: query.status,
        after,
    };
    let rows =
        store::subscriptions::list_subscriptions(&state.ctx.pool, filter, limit.fetch()).await?;
    let default = state.ctx.config.dispatcher.subscription_max_in_flight;
    let items: Vec<SubscriptionOut> = rows
        .into_iter()
        .map(|r| SubscriptionOut::from_row(r, default))
        .collect();
    Ok(axum::Json(Page::from_rows(items, limit, |s| {
        (s.created_at, s.id.uuid())
    })))
}

/// Read a subscription.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionOut),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_subscription(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
) -> Result<axum::Json<SubscriptionOut>> {
    let mut conn = state.ctx.pool.acquire().await?;
    Ok(axum::Json(SubscriptionOut::from_row(
        own_subscription(&mut conn, &principal, id, false).await?,
        state.ctx.config.dispatcher.subscription_max_in_flight,
    )))
}

/// Changes to a subscription; absent fields stay, `null` clears.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateSubscription {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Patch<Value>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    description: Patch<Description>,
    #[serde(default)]
    max_attempts: Option<MaxAttempts>,
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    rate_limit_per_s: Patch<RateLimit>,
    /// 1–1000; `null` returns to the server's default.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    max_in_flight: Patch<MaxInFlight>,
    /// `active` or `paused`.
    #[serde(default)]
    status: Option<SettableStatus>,
}

/// Change a subscription (URL, filter, description, attempts, rate limit, requests in flight, active/paused).
#[utoipa::path(
    patch,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")),
    request_body = UpdateSubscription,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated subscription", body = SubscriptionOut),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_subscription(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
    Json(body): Json<UpdateSubscription>,
) -> Result<axum::Json<SubscriptionOut>> {
    let url = body
        .url
        .as_deref()
        .map(|u| parse_url(&state, u))
        .transpose()?;
    if let Patch::Value(filter) = &body.filter {
        check_filter(filter)?;
    }
    let mut tx = state.ctx.pool.begin().await?;
    let row = own_subscription(&mut tx, &principal, id, true).await?;
    let before = Audited::of(&row);
    let status = match body.status {
        Some(SettableStatus::Active) => SubscriptionStatus::Active,
        Some(SettableStatus::Paused) => SubscriptionStatus::Paused,
        None => row.status,
    };
    let reenabled =
        row.status == SubscriptionStatus::Disabled && status == SubscriptionStatus::Active;
    let update = SubscriptionUpdate {
        id: id.uuid(),
        url: url.as_ref().map_or(row.url.as_str(), WebhookUrl::as_str),
        filter: body.filter.apply(row.filter.map(|f| f.0)),
        description: body.description.map(String::from).apply(row.description),
        max_attempts: body.max_attempts.map_or(row.max_attempts, |m| m.0),
        rate_limit_per_s: body
            .rate_limit_per_s
            .map(|r| r.0)
            .apply(row.rate_limit_per_s),
        status,
        reenabled,
        max_in_flight: body
            .max_in_flight
            .map(|m| m.get() as i32)
            .apply(row.max_in_flight),
    };
    let updated = store::subscriptions::update_subscription(&mut *tx, update).await?;
    let changes = Changes::new().between(Some(&before), &Audited::of(&updated));
    if !changes.is_empty() {
        audit::record(
            &mut tx,
            &Actor::from(&principal),
            Action::SubscriptionUpdated,
            &Target::subscription(id, row.partner_id.into()),
            changes,
        )
        .await?;
    }
    Change::Subscription {
        subscription_id: id,
    }
    .notify(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(axum::Json(SubscriptionOut::from_row(
        updated,
        state.ctx.config.dispatcher.subscription_max_in_flight,
    )))
}

/// Delete a subscription and its queues (queued and dead-lettered messages go with them).
#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_subscription(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
) -> Result<StatusCode> {
    let mut tx = state.ctx.pool.begin().await?;
    let row = own_subscription(&mut tx, &principal, id, true).await?;
    store::subscriptions::delete_subscription(&mut *tx, id.uuid()).await?;
    store::attempts::delete_subscription_dead_letters(&mut *tx, id.uuid()).await?;
    let channel = state.ctx.broker.channel().await?;
    state
        .ctx
        .broker
        .topology()
        .delete_subscription(&channel, id)
        .await?;
    amqp::close_channel(&channel, "catalog change").await;
    audit::record(
        &mut tx,
        &Actor::from(&principal),
        Action::SubscriptionDeleted,
        &Target::subscription(id, row.partner_id.into()),
        Changes::new()
            .removed("topic_id", &row.topic_id)
            .removed("url", &url_without_credentials(&row.url)),
    )
    .await?;
    Change::Subscription {
        subscription_id: id,
    }
    .notify(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotatedSecret {
    /// The new `whsec_…`; the previous one keeps signing alongside for 24 h.
    secret: String,
}

/// Rotate the signing secret; for 24 h deliveries carry signatures with both.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/rotate-secret",
    tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new secret", body = RotatedSecret),
        (status = 404, description = "Not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rotate_secret(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<SubscriptionId>,
) -> Result<axum::Json<RotatedSecret>> {
    let mut tx = state.ctx.pool.begin().await?;
    let row = own_subscription(&mut tx, &principal, id, true).await?;
    let ring = &state.ctx.secrets;
    let row_id = id.to_string();
    let stored = store::subscriptions::get_subscription_secret(&mut *tx, id.uuid()).await?;
    // The current secret moves to the previous column: opened and sealed anew, since the
    // column is part of its associated data.
    let previous = match WebhookSecret::open(
        &stored,
        ring,
        Slot::new(Column::SubscriptionSecret, &row_id),
    ) {
        Ok(current) => Some(
            current
                .seal(ring, Slot::new(Column::SubscriptionPreviousSecret, &row_id))?
                .to_text(),
        ),
        Err(e) => {
            // Nothing can sign with a secret that does not open: replacing it is the repair,
            // with no overlap to keep.
            metrics::counter!(anika_shared::meters::SECRETS_UNOPENABLE, "column" => Column::SubscriptionSecret.name())
                .increment(1);
            tracing::error!(subscription = %id, error = %e, "the stored secret does not open; rotating without overlap");
            None
        }
    };
    let secret = WebhookSecret::generate();
    let sealed = secret
        .seal(ring, Slot::new(Column::SubscriptionSecret, &row_id))?
        .to_text();
    store::subscriptions::rotate_subscription_secret(
        &mut *tx,
        id.uuid(),
        &sealed,
        previous.as_deref(),
    )
    .await?;
    // That it was rotated, never a secret: no changes.
    audit::record(
        &mut tx,
        &Actor::from(&principal),
        Action::SubscriptionSecretRotated,
        &Target::subscription(id, row.partner_id.into()),
        Changes::new(),
    )
    .await?;
    Change::Subscription {
        subscription_id: id,
    }
    .notify(&mut tx)
    .await?;
    tx.commit().await?;
    Ok(axum::Json(RotatedSecret {
        secret: secret.expose(),
    }))
}
