//! Partners: created by operators; a partner sees itself and the partners it shares topics with.

use anika_shared::{
    Problem,
    auth::Principal,
    domain::{Description, DisplayName, PartnerId},
    extract::{Json, Path, Query},
    page::{Limit, Page, decode_cursor},
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
        .routes(routes!(get_partner))
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
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub(crate) struct PartnerOut {
    #[schema(value_type = String, format = Uuid)]
    id: Uuid,
    name: String,
    /// Shown to the partner itself and to operators; `null` for the partners you share topics with.
    description: Option<String>,
    created_at: DateTime<Utc>,
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
    let partner: PartnerOut = sqlx::query_as(
        "INSERT INTO partners (id, name, description) VALUES ($1, $2, $3) RETURNING id, name, description, created_at",
    )
    .bind(PartnerId::new().uuid())
    .bind(body.name.as_str())
    .bind(body.description.as_ref().map(Description::as_str))
    .fetch_one(&state.ctx.pool)
    .await
    .map_err(|e| conflict_on_unique(e, || format!("a partner named `{}` already exists", body.name.as_str())))?;
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
}

/// The partners a caller may see: all for operators; otherwise itself and the
/// partners on either side of a grant with it.
const VISIBLE: &str = "($1::uuid IS NULL OR p.id = $1 \
     OR p.id IN (SELECT t.owner_partner_id FROM grants g JOIN topics t ON t.id = g.topic_id WHERE g.partner_id = $1) \
     OR p.id IN (SELECT g.partner_id FROM grants g JOIN topics t ON t.id = g.topic_id WHERE t.owner_partner_id = $1))";

fn redact(mut partner: PartnerOut, principal: &Principal) -> PartnerOut {
    if !principal.sees_partner(partner.id.into()) {
        partner.description = None;
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
    let after: Option<(DateTime<Utc>, Uuid)> =
        query.cursor.as_deref().map(decode_cursor).transpose()?;
    let sql = format!(
        "SELECT p.id, p.name, p.description, p.created_at FROM partners p WHERE {VISIBLE} \
         AND ($2::timestamptz IS NULL OR (p.created_at, p.id) > ($2, $3)) ORDER BY p.created_at, p.id LIMIT $4"
    );
    let rows: Vec<PartnerOut> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(principal.partner().map(PartnerId::uuid))
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit.fetch())
        .fetch_all(&state.ctx.pool)
        .await?;
    let rows = rows.into_iter().map(|p| redact(p, &principal)).collect();
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
    let sql = format!(
        "SELECT p.id, p.name, p.description, p.created_at FROM partners p WHERE p.id = $2 AND {VISIBLE}"
    );
    let partner: Option<PartnerOut> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(principal.partner().map(PartnerId::uuid))
        .bind(id.uuid())
        .fetch_optional(&state.ctx.pool)
        .await?;
    let partner = partner.ok_or_else(|| Problem::not_found(format!("no partner {id}")))?;
    Ok(axum::Json(redact(partner, &principal)))
}
