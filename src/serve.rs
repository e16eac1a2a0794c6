//! `anika up` (every role, one port) and `anika serve <role>`.

#![allow(clippy::print_stdout)] // the start-up banner is for the person who typed the command

use anika::{App, Roles};
use anika_shared::{
    Context,
    config::{Config, redact_url},
};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::cli::{CliError, ServeRole};

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

/// Connections the kernel holds before they are accepted (capped by `net.core.somaxconn`).
/// Tokio's default of 1,024 overflows when thousands of clients connect at once, and a
/// client whose SYN was dropped retries only after a second.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(config: &Config) -> Result<TcpListener, CliError> {
    listen(config.listen)
        .map_err(|e| format!("cannot listen on {} (ANIKA_LISTEN): {e}", config.listen).into())
}

/// A listener on `addr` with a queue of [`LISTEN_BACKLOG`] connections.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart may bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// `anika up`: all roles in one process.
pub async fn up(config: Config) -> Result<(), CliError> {
    let listener = bind(&config)?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let app = App::builder(Roles::ALL, "anika up")
        .serve(config, listener, shutdown)
        .await?;
    banner(app.ctx(), app.addr());
    stopped(app).await
}

/// `anika serve <role>`: one role alone.
pub async fn serve(config: Config, role: ServeRole) -> Result<(), CliError> {
    let listener = bind(&config)?;
    let name = format!("anika {role:?}").to_lowercase();
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let roles = match role {
        ServeRole::Catalog => Roles {
            catalog: true,
            ..Roles::NONE
        },
        ServeRole::Ingest => Roles {
            ingest: true,
            ..Roles::NONE
        },
        ServeRole::Dispatcher => Roles {
            dispatcher: true,
            ..Roles::NONE
        },
    };
    let app = App::builder(roles, &name)
        .serve(config, listener, shutdown)
        .await?;
    tracing::info!(role = ?role, listen = %app.addr(), "serving");
    stopped(app).await
}

/// Waits for `app` to stop; work that outlived the drain is said in the log, not an exit code
/// (its messages are redelivered, nothing is lost).
async fn stopped(app: App) -> Result<(), CliError> {
    match app.finished().await {
        Err(e @ anika::app::Error::Drain(_)) => {
            tracing::warn!("{e}");
            Ok(())
        }
        other => Ok(other?),
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
    if ctx.config.catalog.bootstrap_operator_key.is_some() {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_listener_queues_thousands_of_connections_before_any_is_accepted() {
        let listener = listen("127.0.0.1:0".parse().expect("an address")).expect("a listener");
        let addr = listener.local_addr().expect("its address");
        // More than tokio's default backlog of 1,024: beyond a full queue the kernel drops
        // the SYN, and the client's retry comes only after a second.
        let connecting: Vec<_> = (0..2000)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_millis(900),
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                })
            })
            .collect();
        let mut connected = Vec::new();
        for task in connecting {
            if let Ok(Ok(stream)) = task.await.expect("the connect task does not panic") {
                connected.push(stream);
            }
        }
        assert_eq!(
            connected.len(),
            2000,
            "connections completed while none was accepted (net.core.somaxconn caps the backlog)"
        );
        drop(listener);
    }
}
