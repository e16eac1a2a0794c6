//! Partners: created by operators; a partner sees itself and the partners it shares topics with.

use anika_shared::{
    Problem,
    audit::{self, Action, Actor, Changes, Target},
    auth::Principal,
    changes::Change,
    domain::{Description, DisplayName, PartnerId, Role},
    extract::{Json, Path, Query},
    page::{Limit, Page, decode_time_cursor},
    patch::Patch,
    store::partners::{self, PartnerRow},
};
use axum::{extract::State as AxumState, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    State,
    error::{Result, conflict_on_unique},
};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .routes(routes!(create_partner, list_partners))
        .routes(routes!(get_partner, update_partner))
}

/// An ingest quota value: 1 to 1,000,000 (events per second, or events in the bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(try_from = "i64")]
#[schema(value_type = u32, minimum = 1, maximum = 1000000)]
pub(crate) struct QuotaValue(i32);

impl TryFrom<i64> for QuotaValue {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if (1..=1_000_000).contains(&value) {
            Ok(Self(value as i32))
        } else {
            Err(format!(
                "must be between 1 and 1000000 (or null for no limit), not {value}"
            ))
        }
    }
}

/// A new partner.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatePartner {
    /// Unique name.
    name: DisplayName,
    #[serde(default)]
    description: Option<Description>,
}

/// A partner company.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PartnerOut {
    #[schema(value_type = String, format = Uuid)]
    id: Uuid,
    name: String,
    /// Shown to the partner itself and to operators; `null` for the partners you share topics with.
    description: Option<String>,
    /// Events per second all of the partner's principals may post together; `null`: no limit.
    /// Like `description`, shown only to the partner itself and to operators.
    #[schema(minimum = 1, maximum = 1000000)]
    ingest_rate_per_s: Option<i32>,
    /// Size of the partner's token bucket (events that may be posted at once); `null` with a rate
    /// means one second's worth.
    #[schema(minimum = 1, maximum = 1000000)]
    ingest_burst: Option<i32>,
    created_at: DateTime<Utc>,
}

impl From<PartnerRow> for PartnerOut {
    fn from(row: PartnerRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            ingest_rate_per_s: row.ingest_rate_per_s,
            ingest_burst: row.ingest_burst,
            created_at: row.created_at,
        }
    }
}

/// Create a partner (operators only).
#[utoipa::path(
    post,
    path = "/v1/partners",
    tag = "partners",
    request_body = CreatePartner,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = PartnerOut),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_partner(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Json(body): Json<CreatePartner>,
) -> Result<(StatusCode, axum::Json<PartnerOut>)> {
    if !principal.is_operator() {
        return Err(Problem::forbidden("only operators create partners").into());
    }
    let mut tx = state.ctx.pool.begin().await?;
    let partner: PartnerOut = partners::insert_partner(
        &mut *tx,
        PartnerId::new().uuid(),
        body.name.as_str(),
        body.description.as_ref().map(Description::as_str),
    )
    .await
    .map_err(|e| {
        conflict_on_unique(e, || {
            format!("a partner named `{}` already exists", body.name.as_str())
        })
    })?
    .into();
    let changes = Changes::new()
        .created("name", &partner.name)
        .created("description", &partner.description);
    audit::record(
        &mut tx,
        &Actor::from(&principal),
        Action::PartnerCreated,
        &Target::partner(partner.id.into()),
        changes,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(partner)))
}

/// Page through partners.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only the partner with exactly this name. Admins may look up any partner this
    /// way (to grant it a topic by name); a stranger's answer carries only its id,
    /// name and creation time.
    #[param(value_type = Option<String>)]
    name: Option<DisplayName>,
}

fn redact(mut partner: PartnerOut, principal: &Principal) -> PartnerOut {
    if !principal.sees_partner(partner.id.into()) {
        partner.description = None;
        partner.ingest_rate_per_s = None;
        partner.ingest_burst = None;
    }
    partner
}

/// List the partners you may see.
#[utoipa::path(
    get,
    path = "/v1/partners",
    tag = "partners",
    params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "A page of partners", body = Page<PartnerOut>))
)]
async fn list_partners(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Page<PartnerOut>>> {
    let limit = query.limit.unwrap_or_default();
    let after: Option<(DateTime<Utc>, Uuid)> = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    // An exact name is a lookup, not a listing: an admin granting a topic must find a
    // partner it shares nothing with yet, and learns no more than that the name exists
    // (the answer is redacted below). Publishers grant nothing, so they look up as they list.
    let lookup = query.name.is_some() && principal.role() != Role::Publisher;
    let rows = partners::list_partners(
        &state.ctx.pool,
        partners::PartnerPage {
            viewer: principal.partner().map(PartnerId::uuid),
            after,
            limit: limit.fetch(),
            name: query.name.as_ref().map(DisplayName::as_str),
            lookup,
        },
    )
    .await?;
    let rows = rows
        .into_iter()
        .map(|p| redact(p.into(), &principal))
        .collect();
    Ok(axum::Json(Page::from_rows(rows, limit, |p| {
        (p.created_at, p.id)
    })))
}

/// Read one partner.
#[utoipa::path(
    get,
    path = "/v1/partners/{id}",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The partner", body = PartnerOut),
        (status = 404, description = "Not visible to you", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_partner(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<PartnerId>,
) -> Result<axum::Json<PartnerOut>> {
    let partner = partners::get_visible_partner(
        &state.ctx.pool,
        principal.partner().map(PartnerId::uuid),
        id.uuid(),
    )
    .await?;
    let partner = partner.ok_or_else(|| Problem::not_found(format!("no partner {id}")))?;
    Ok(axum::Json(redact(partner.into(), &principal)))
}

/// Changes to a partner; absent fields stay, `null` clears.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdatePartner {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    name: Patch<DisplayName>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    description: Patch<Description>,
    /// Events per second (1–1000000) all of the partner's principals may post together
    /// (a batch counts each event); `null` removes the limit.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    ingest_rate_per_s: Patch<QuotaValue>,
    /// Token-bucket size (1–1000000); `null`: one second's worth of the rate.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    ingest_burst: Patch<QuotaValue>,
}

/// Change a partner's name, description or ingest quota (operators only).
///
/// A new quota applies to the partner's next events within moments, in every
/// ingest process (they hear of it over PostgreSQL `NOTIFY`); the bucket starts full.
#[utoipa::path(
    patch,
    path = "/v1/partners/{id}",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    request_body = UpdatePartner,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated partner", body = PartnerOut),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such partner", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_partner(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<PartnerId>,
    Json(body): Json<UpdatePartner>,
) -> Result<axum::Json<PartnerOut>> {
    if !principal.is_operator() {
        // A partner may see itself, but only the platform sets names and quotas.
        return Err(Problem::forbidden("only operators change partners").into());
    }
    if matches!(body.name, Patch::Null) {
        return Err(Problem::invalid_field("/name", "a partner always has a name").into());
    }
    let mut tx = state.ctx.pool.begin().await?;
    let current = partners::get_partner_for_update(&mut *tx, id.uuid()).await?;
    let current: PartnerOut = current
        .ok_or_else(|| Problem::not_found(format!("no partner {id}")))?
        .into();
    let name = match body.name {
        Patch::Value(name) => name.as_str().to_owned(),
        _ => current.name.clone(),
    };
    let description = body
        .description
        .map(String::from)
        .apply(current.description.clone());
    let rate = body
        .ingest_rate_per_s
        .map(|q| q.0)
        .apply(current.ingest_rate_per_s);
    let burst = body.ingest_burst.map(|q| q.0).apply(current.ingest_burst);
    let updated: PartnerOut = partners::update_partner(
        &mut *tx,
        id.uuid(),
        partners::PartnerUpdate {
            name: &name,
            description: description.as_deref(),
            ingest_rate_per_s: rate,
            ingest_burst: burst,
        },
    )
    .await
    .map_err(|e| conflict_on_unique(e, || format!("a partner named `{name}` already exists")))?
    .into();
    let changes = Changes::new()
        .diff("name", &current.name, &updated.name)
        .diff("description", &current.description, &updated.description)
        .diff(
            "ingest_rate_per_s",
            &current.ingest_rate_per_s,
            &updated.ingest_rate_per_s,
        )
        .diff("ingest_burst", &current.ingest_burst, &updated.ingest_burst);
    // A PATCH that changes nothing is no change to account for.
    if !changes.is_empty() {
        audit::record(
            &mut tx,
            &Actor::from(&principal),
            Action::PartnerUpdated,
            &Target::partner(id),
            changes,
        )
        .await?;
    }
    Change::Partner { partner_id: id }.notify(&mut tx).await?;
    tx.commit().await?;
    Ok(axum::Json(updated))
}
