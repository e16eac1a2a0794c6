//! Dispatcher: consumes subscription queues and delivers signed webhooks. (Being built.)

use std::sync::Arc;

use anika_shared::{Context, auth::Verifier};
use axum::{Router, extract::FromRef};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Why dispatcher could not start.
#[derive(Debug, thiserror::Error)]
#[error("dispatcher start-up: {0}")]
pub struct StartError(String);

/// Everything an dispatcher handler needs.
#[derive(Clone, Debug)]
pub struct State {
    ctx: Context,
}

impl FromRef<State> for Arc<Verifier> {
    fn from_ref(state: &State) -> Self {
        Arc::clone(&state.ctx.verifier)
    }
}

impl State {
    /// Starts dispatcher's background work (consumers, attempt log) on `tasks`.
    pub async fn start(ctx: Context, _tasks: &TaskTracker, _shutdown: &CancellationToken) -> Result<Self, StartError> {
        Ok(Self { ctx })
    }
}

fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
}

/// Dispatcher's routes.
pub fn router(state: State) -> Router {
    routes().with_state(state).split_for_parts().0
}

/// The OpenAPI description of dispatcher's routes.
pub fn openapi() -> OpenApi {
    routes().split_for_parts().1
}

/// Runs the dispatcher role alone on `listener` until `shutdown` fires.
pub async fn run(listener: TcpListener, ctx: Context, shutdown: CancellationToken) -> std::io::Result<()> {
    let tasks = TaskTracker::new();
    let state = State::start(ctx.clone(), &tasks, &shutdown).await.map_err(std::io::Error::other)?;
    let mut api = anika_shared::http::openapi_base();
    api.merge(openapi());
    let app = anika_shared::http::finish(
        router(state).merge(anika_shared::http::service_router(ctx.readiness(), api, ctx.metrics.clone())),
    );
    anika_shared::http::serve(listener, app, shutdown).await?;
    tasks.close();
    tasks.wait().await;
    Ok(())
}
