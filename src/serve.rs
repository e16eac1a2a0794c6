//! `anika up` (every role, one port) and `anika serve <role>`.

#![allow(clippy::print_stdout)] // the start-up banner is for the person who typed the command

use std::time::Duration;

use anika_shared::{
    Context,
    config::{Config, redact_url},
    http,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::cli::{CliError, ServeRole};

/// Background work gets this long to finish after the HTTP server stopped.
const DRAIN: Duration = Duration::from_secs(30);

/// Cancels `token` on Ctrl-C or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            () = term => {},
        }
        tracing::info!("shutting down: no new requests; finishing what is in flight");
        token.cancel();
    });
}

async fn bind(config: &Config) -> Result<TcpListener, CliError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (ANIKA_LISTEN): {e}", config.listen).into())
}

/// `anika up`: all roles in one process.
pub async fn up(config: Config) -> Result<(), CliError> {
    let listener = bind(&config).await?;
    let ctx = Context::connect(config, "anika up").await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    declare_topology(&ctx, &shutdown);
    let tasks = TaskTracker::new();

    let catalog = anika_catalog::State::new(ctx.clone()).await?;
    let ingest = anika_ingest::State::start(ctx.clone(), &tasks, &shutdown).await?;
    let dispatcher = anika_dispatcher::State::start(ctx.clone(), &tasks, &shutdown).await?;

    let mut api = http::openapi_base();
    api.merge(anika_catalog::openapi());
    api.merge(anika_ingest::openapi());
    api.merge(anika_dispatcher::openapi());
    let console = anika_console::router(anika_console::Settings::from_config(
        &ctx.config,
        listener.local_addr()?,
    ))?;
    let app = http::finish_with(
        anika_catalog::router(catalog)
            .merge(console)
            .merge(anika_ingest::router(ingest))
            .merge(anika_dispatcher::router(dispatcher))
            .merge(http::service_router(
                ctx.readiness(),
                api,
                ctx.metrics.clone(),
            )),
        &ctx.config,
    );
    banner(&ctx, listener.local_addr()?);
    http::serve(listener, app, shutdown.clone()).await?;
    drain(tasks).await;
    ctx.broker.close().await;
    Ok(())
}

/// `anika serve <role>`: one role alone.
pub async fn serve(config: Config, role: ServeRole) -> Result<(), CliError> {
    let listener = bind(&config).await?;
    let name = format!("anika {role:?}").to_lowercase();
    let ctx = Context::connect(config, &name).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    declare_topology(&ctx, &shutdown);
    tracing::info!(role = ?role, listen = %listener.local_addr()?, "serving");
    match role {
        ServeRole::Catalog => anika_catalog::run(listener, ctx.clone(), shutdown).await?,
        ServeRole::Ingest => anika_ingest::run(listener, ctx.clone(), shutdown).await?,
        ServeRole::Dispatcher => anika_dispatcher::run(listener, ctx.clone(), shutdown).await?,
    }
    ctx.broker.close().await;
    Ok(())
}

/// Connects to RabbitMQ (declaring the static topology) in the background: an
/// unreachable broker must not keep ingest from accepting events into the outbox.
fn declare_topology(ctx: &Context, shutdown: &CancellationToken) {
    let broker = std::sync::Arc::clone(&ctx.broker);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = broker.connection_with_retry(&shutdown).await;
    });
}

async fn drain(tasks: TaskTracker) {
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!(
            "background work did not finish within {DRAIN:?}; unacknowledged messages will be redelivered"
        );
    }
}

fn banner(ctx: &Context, addr: std::net::SocketAddr) {
    let base = ctx
        .config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    println!("anika is up (catalog, ingest and dispatcher in one process)");
    println!("  API          {base}/v1");
    println!("  docs         {base}/docs");
    println!("  OpenAPI      {base}/openapi.json");
    println!("  console      {base}/console");
    println!("  readiness    {base}/readyz    metrics {base}/metrics");
    println!(
        "  PostgreSQL   {}",
        redact_url(ctx.config.database_url.expose())
    );
    println!(
        "  RabbitMQ     {}",
        redact_url(ctx.config.amqp_url.expose())
    );
    if ctx.config.bootstrap_operator_key.is_some() {
        println!("first token (operator key from ANIKA_BOOTSTRAP_OPERATOR_KEY):");
        println!(
            "  curl -s {base}/v1/auth/token -H 'content-type: application/json' \\\n    -d '{{\"grant_type\":\"api_key\",\"api_key\":\"'\"$ANIKA_BOOTSTRAP_OPERATOR_KEY\"'\"}}'"
        );
    } else {
        println!("no operator key configured: set ANIKA_BOOTSTRAP_OPERATOR_KEY, or run");
        println!("  anika api-keys create --role operator");
    }
    println!("stop with Ctrl-C (in-flight deliveries finish first)");
}
