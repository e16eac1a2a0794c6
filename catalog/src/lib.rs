//! The catalog: partners, API keys and tokens, topics, grants and subscriptions, and the
//! RabbitMQ topology of every subscription.
//!
//! Writes that touch the broker hold their database transaction open until
//! RabbitMQ agreed, so an API answer means both stores changed (or neither did).

use std::sync::Arc;

use anika_shared::{
    Context,
    auth::{Principal, Verifier},
    domain::{PartnerId, Role},
};
use axum::{Router, extract::FromRef};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

mod audit;
pub mod error;
pub mod keys;
mod partners;
mod subscriptions;
mod tokens;
mod topics;

pub use error::{Error, Result};
pub use tokens::create_api_key;

/// Everything a catalog handler needs.
#[derive(Clone, Debug)]
pub struct State(Arc<Inner>);

/// The inside of [`State`].
#[derive(Debug)]
pub struct Inner {
    /// Shared handles.
    pub ctx: Context,
    /// Access-token signer.
    pub signer: keys::Signer,
}

impl std::ops::Deref for State {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl FromRef<State> for Arc<Verifier> {
    fn from_ref(state: &State) -> Self {
        Arc::clone(&state.ctx.verifier)
    }
}

impl State {
    /// Prepares the catalog: a signing key exists and the bootstrap operator key is in place.
    pub async fn new(ctx: Context) -> Result<Self> {
        keys::ensure_signing_key(&ctx.pool, &ctx.secrets).await?;
        if let Some(key) = &ctx.config.catalog.bootstrap_operator_key {
            tokens::ensure_operator_key(&ctx.pool, key.expose()).await?;
        }
        let signer = keys::Signer::new(
            ctx.pool.clone(),
            Arc::clone(&ctx.secrets),
            ctx.config.catalog.token_issuer.clone(),
            ctx.config.catalog.token_audience.clone(),
            ctx.config.catalog.access_token_ttl,
        );
        Ok(Self(Arc::new(Inner { ctx, signer })))
    }
}

fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .merge(tokens::routes())
        .merge(partners::routes())
        .merge(topics::routes())
        .merge(subscriptions::routes())
        .merge(audit::routes())
}

/// The catalog's routes, ready to merge with the other roles'.
pub fn router(state: State) -> Router {
    routes().with_state(state).split_for_parts().0
}

/// The OpenAPI description of the catalog's routes.
pub fn openapi() -> OpenApi {
    routes().split_for_parts().1
}

/// Refuses callers that are not an admin of some partner or an operator.
fn require_admin(principal: &Principal) -> Result<()> {
    match principal.role() {
        Role::Operator | Role::Admin => Ok(()),
        Role::Publisher => Err(anika_shared::Problem::forbidden(
            "this needs an admin or operator key; publisher keys may only post and read events",
        )
        .into()),
    }
}

/// The partner a write acts for: a partner principal's own, or the one an operator names.
fn acting_partner(
    principal: &Principal,
    requested: Option<PartnerId>,
    pointer: &str,
) -> Result<PartnerId> {
    match (principal.partner(), requested) {
        (Some(own), None) => Ok(own),
        (Some(own), Some(asked)) if asked == own => Ok(own),
        (Some(_), Some(_)) => Err(anika_shared::Problem::forbidden(format!(
            "`{pointer}` may name only your own partner"
        ))
        .into()),
        (None, Some(asked)) => Ok(asked),
        (None, None) => Err(anika_shared::Problem::invalid_field(
            pointer,
            "operators act on behalf of a partner: name it here",
        )
        .into()),
    }
}
