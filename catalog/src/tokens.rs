//! API keys, the token endpoint (API key or refresh token in, access JWT out) and the JWKS.

use anika_shared::{
    Problem,
    audit::{self, Action, Actor, Changes, Target},
    auth::Principal,
    domain::{ApiKeyId, DisplayName, PartnerId, Role},
    extract::{Json, Path, Query},
    page::{Limit, Page, decode_time_cursor},
    store::{keys, schema},
};
use axum::{
    extract::State as AxumState,
    http::{StatusCode, header},
    response::IntoResponse,
};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    State, acting_partner,
    error::Result,
    keys::{hash_secret, new_api_key, new_refresh_token},
    require_admin,
};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .routes(routes!(token))
        .routes(routes!(jwks))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

/// Ensures an operator key with exactly this value exists and is active (idempotent).
pub(crate) async fn ensure_operator_key(pool: &PgPool, key: &str) -> Result<()> {
    let revived = keys::ensure_operator_key(pool, Uuid::now_v7(), &hash_secret(key)).await?;
    if revived == Some(false) {
        tracing::info!("created the bootstrap operator API key");
    }
    Ok(())
}

/// Creates an API key and its audit entry (by `actor`: a principal, or the CLI's
/// `anika api-keys create`) in one transaction.
pub async fn create_api_key(
    pool: &PgPool,
    actor: &Actor,
    role: Role,
    partner: Option<PartnerId>,
    name: &str,
) -> Result<(ApiKeyId, String)> {
    if (role == Role::Operator) != partner.is_none() {
        return Err(Problem::bad_request(
            "operator keys have no partner; admin and publisher keys need one",
        )
        .into());
    }
    let id = ApiKeyId::new();
    let key = new_api_key();
    let mut tx = pool.begin().await?;
    keys::insert_api_key(
        &mut *tx,
        keys::NewApiKey {
            id: id.uuid(),
            partner_id: partner.map(PartnerId::uuid),
            role: role.as_str(),
            name,
            key_hash: &hash_secret(&key),
        },
    )
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            Problem::invalid_field("/partner_id", "no partner with this id").into()
        }
        _ => crate::Error::Db(e),
    })?;
    // The key's name and role, never the key (nor its hash).
    let changes = Changes::new()
        .created("role", &role)
        .created("name", name)
        .created("partner_id", &partner);
    audit::record(
        &mut tx,
        actor,
        Action::ApiKeyCreated,
        &Target::api_key(id, partner),
        changes,
    )
    .await?;
    tx.commit().await?;
    Ok((id, key))
}

/// How to obtain a token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "grant_type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum TokenRequest {
    /// Exchange an API key.
    ApiKey {
        /// The API key.
        api_key: String,
    },
    /// Exchange (and spend) a refresh token.
    RefreshToken {
        /// The refresh token from the previous answer.
        refresh_token: String,
    },
}

/// A fresh access token and its refresh token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// The JWT to send as `Authorization: Bearer …`.
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
    /// Spend once at this endpoint for the next pair.
    refresh_token: String,
}

/// Exchange an API key or a refresh token for an access token.
#[utoipa::path(
    post,
    path = "/v1/auth/token",
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Tokens", body = TokenResponse),
        (status = 401, description = "Wrong key or token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn token(
    AxumState(state): AxumState<State>,
    Json(request): Json<TokenRequest>,
) -> Result<impl IntoResponse> {
    let pool = &state.ctx.pool;
    let mut tx = pool.begin().await?;
    let (key, family) = match request {
        TokenRequest::ApiKey { api_key } => {
            let key = keys::find_active_api_key(&mut *tx, &hash_secret(&api_key)).await?;
            let key = key.ok_or_else(|| Problem::unauthorized("unknown or revoked API key"))?;
            (key, Uuid::now_v7())
        }
        TokenRequest::RefreshToken { refresh_token } => {
            let row =
                keys::get_refresh_token_for_update(&mut *tx, &hash_secret(&refresh_token)).await?;
            let row = row.ok_or_else(|| Problem::unauthorized("unknown refresh token"))?;
            if row.spent {
                // A spent token coming back means it leaked: end the whole login.
                keys::revoke_refresh_family(&mut *tx, row.family_id).await?;
                tx.commit().await?;
                tracing::warn!(family = %row.family_id, "a spent refresh token was reused; its login is revoked");
                return Err(Problem::unauthorized(
                    "this refresh token was already used; every token of this login is now revoked",
                )
                .into());
            }
            if row.expired || row.key_revoked {
                return Err(Problem::unauthorized(
                    "the refresh token has expired or its API key was revoked",
                )
                .into());
            }
            keys::spend_refresh_token(&mut *tx, &hash_secret(&refresh_token)).await?;
            (
                keys::ApiKeyPrincipal {
                    id: row.id,
                    role: row.role,
                    partner_id: row.partner_id,
                },
                row.family_id,
            )
        }
    };
    let role: Role = key
        .role
        .parse()
        .map_err(|e: String| crate::Error::Keys(e))?;
    let refresh = new_refresh_token();
    let refresh_ttl = chrono::Duration::from_std(state.ctx.config.catalog.refresh_token_ttl)
        .unwrap_or(chrono::Duration::days(30));
    keys::insert_refresh_token(
        &mut *tx,
        &hash_secret(&refresh),
        family,
        key.id,
        Utc::now() + refresh_ttl,
    )
    .await?;
    let access = state
        .signer
        .issue(key.id.into(), key.partner_id.map(PartnerId::from), role)
        .await?;
    tx.commit().await?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(TokenResponse {
            access_token: access,
            token_type: "Bearer",
            expires_in: state.signer.ttl().as_secs(),
            refresh_token: refresh,
        }),
    ))
}

/// One public key in JWK form (RFC 8037 OKP).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Jwk {
    kty: &'static str,
    crv: &'static str,
    /// The public key, base64url.
    x: String,
    kid: String,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
}

/// The key set.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Jwks {
    keys: Vec<Jwk>,
}

/// The public keys that verify access tokens, for gateways.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "auth",
    responses((status = 200, description = "The key set", body = Jwks))
)]
async fn jwks(AxumState(state): AxumState<State>) -> Result<impl IntoResponse> {
    let rows = keys::list_verifying_keys(&state.ctx.pool).await?;
    let keys = rows
        .into_iter()
        .map(|keys::VerifyingKey { kid, public_key }| Jwk {
            kty: "OKP",
            crv: "Ed25519",
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_key),
            kid,
            alg: "EdDSA",
            use_: "sig",
        })
        .collect();
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(Jwks { keys }),
    ))
}

/// A new API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    role: Role,
    name: DisplayName,
    /// The partner the key belongs to; operators must set it for admin and publisher keys.
    #[serde(default)]
    partner_id: Option<PartnerId>,
}

/// An API key as listed (never the key itself).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApiKeyOut {
    id: ApiKeyId,
    role: Role,
    name: String,
    partner_id: Option<PartnerId>,
    created_at: DateTime<Utc>,
}

/// An API key as created: the only time the key is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    id: ApiKeyId,
    role: Role,
    name: String,
    partner_id: Option<PartnerId>,
    /// The key; store it now, it is never shown again.
    api_key: String,
    created_at: DateTime<Utc>,
}

/// Create an API key (admins for their partner, operators for anyone).
#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "auth",
    request_body = CreateKey,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The key, shown this once", body = CreatedKey),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_key(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Json(body): Json<CreateKey>,
) -> Result<impl IntoResponse> {
    require_admin(&principal)?;
    let partner = match body.role {
        Role::Operator => {
            if !principal.is_operator() {
                return Err(Problem::forbidden("only operators create operator keys").into());
            }
            if body.partner_id.is_some() {
                return Err(Problem::invalid_field(
                    "/partner_id",
                    "operator keys belong to no partner",
                )
                .into());
            }
            None
        }
        Role::Admin | Role::Publisher => {
            Some(acting_partner(&principal, body.partner_id, "/partner_id")?)
        }
    };
    let (id, key) = create_api_key(
        &state.ctx.pool,
        &Actor::from(&principal),
        body.role,
        partner,
        body.name.as_str(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            id,
            role: body.role,
            name: body.name.as_str().to_owned(),
            partner_id: partner,
            api_key: key,
            created_at: Utc::now(),
        }),
    ))
}

/// Filters of the key list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyQuery {
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Operators: only this partner's keys.
    #[param(value_type = Option<String>)]
    partner_id: Option<PartnerId>,
}

/// List active API keys (your partner's; operators: all).
#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "auth",
    params(KeyQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of keys", body = Page<ApiKeyOut>),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_keys(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Query(query): Query<KeyQuery>,
) -> Result<axum::Json<Page<ApiKeyOut>>> {
    require_admin(&principal)?;
    let limit = query.limit.unwrap_or_default();
    let after: Option<(DateTime<Utc>, Uuid)> = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    let partner = principal.partner().or(query.partner_id);
    let rows = keys::list_api_keys(
        &state.ctx.pool,
        partner.map(PartnerId::uuid),
        after,
        limit.fetch(),
    )
    .await?;
    let items = rows
        .into_iter()
        .map(|r| {
            Ok(ApiKeyOut {
                id: r.id.into(),
                role: r.role.parse().map_err(|e: String| crate::Error::Keys(e))?,
                name: r.name,
                partner_id: r.partner_id.map(PartnerId::from),
                created_at: r.created_at,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(axum::Json(Page::from_rows(items, limit, |k| {
        (k.created_at, k.id.uuid())
    })))
}

/// Revoke an API key; its refresh and access tokens stop working at once, in every process.
#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "auth",
    params(("id" = String, Path, description = "API key id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_key(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Path(id): Path<ApiKeyId>,
) -> Result<StatusCode> {
    require_admin(&principal)?;
    let mut tx = state.ctx.pool.begin().await?;
    let revoked = keys::revoke_api_key(
        &mut *tx,
        id.uuid(),
        principal.partner().map(PartnerId::uuid),
    )
    .await?;
    let Some(revoked) = revoked else {
        return Err(Problem::not_found(format!("no API key {id}")).into());
    };
    if revoked.was.is_none() {
        audit::record(
            &mut tx,
            &Actor::from(&principal),
            Action::ApiKeyRevoked,
            &Target::api_key(id, revoked.partner_id.map(PartnerId::from)),
            Changes::new().diff("revoked_at", &None, &Some(revoked.revoked_at)),
        )
        .await?;
    }
    keys::revoke_api_key_refresh_tokens(&mut *tx, id.uuid()).await?;
    // Every process's verifier hears of it when this commits, before the answer.
    schema::notify(&mut *tx, anika_shared::auth::REVOCATIONS, &id.to_string()).await?;
    tx.commit().await?;
    // Its access tokens stop here at once, and in other processes with the announcement.
    state.ctx.verifier.revoked(id);
    Ok(StatusCode::NO_CONTENT)
}
