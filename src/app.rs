//! The composition root: anika assembled from its configuration, for any set of roles.
//!
//! `anika up`, `anika serve <role>` and the tests of every crate build the
//! application here and nowhere else: one place connects the [`Context`],
//! starts each role's background work, merges the routers and the OpenAPI
//! document, wraps them in the edge bounds and serves them on a listener the
//! caller bound (port 0 in tests) until its shutdown token fires.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anika_dispatcher::{Lookup, SystemLookup};
use anika_shared::{Context, config::Config, http};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Background work gets this long to finish after the HTTP server stopped.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Which roles one process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// Partners, keys, tokens, topics, grants, subscriptions, the audit log, and the console.
    pub catalog: bool,
    /// Posting events, the event log and its outbox.
    pub ingest: bool,
    /// Delivery, attempts, dead letters and replay.
    pub dispatcher: bool,
}

impl Roles {
    /// Every role, as `anika up` runs them.
    pub const ALL: Self = Self {
        catalog: true,
        ingest: true,
        dispatcher: true,
    };
    /// No role: add them with the fields.
    pub const NONE: Self = Self {
        catalog: false,
        ingest: false,
        dispatcher: false,
    };
}

/// Why the application could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL, RabbitMQ or the configuration refused the start.
    #[error("{role} start-up: {cause}")]
    Start {
        /// The role that could not start.
        role: &'static str,
        /// What went wrong.
        cause: String,
    },
    /// The background work did not finish within [`DRAIN`] after the server stopped;
    /// messages not yet acknowledged will be delivered again.
    #[error(
        "background work did not finish within {0:?}; unacknowledged messages will be redelivered"
    )]
    Drain(Duration),
    /// The listener or the HTTP server failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

fn start_error(role: &'static str) -> impl FnOnce(String) -> Error {
    move |cause| Error::Start { role, cause }
}

/// How to build the application: the roles, and what tests replace.
pub struct Builder {
    roles: Roles,
    lookup: Option<Arc<dyn Lookup>>,
    dispatcher_lifetime: Option<(CancellationToken, TaskTracker)>,
    name: String,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("roles", &self.roles)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Webhook hosts are resolved by `lookup` instead of the system resolver (tests point
    /// names at chosen addresses).
    pub fn resolve_with(mut self, lookup: Arc<dyn Lookup>) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// The dispatcher's background work stops on `stop` and is tracked by `tasks` instead
    /// of the application's own, so that a test can stop and restart delivery alone.
    pub fn dispatcher_lifetime(mut self, stop: CancellationToken, tasks: TaskTracker) -> Self {
        self.dispatcher_lifetime = Some((stop, tasks));
        self
    }

    /// Connects to PostgreSQL and RabbitMQ with `config`, starts the roles and serves them on
    /// `listener` until `shutdown` fires.
    pub async fn serve(
        self,
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<App, Error> {
        let ctx = Context::connect(config, &self.name)
            .await
            .map_err(|e| start_error("connection")(e.to_string()))?;
        self.serve_with(ctx, listener, shutdown).await
    }

    /// Like [`Builder::serve`], with a [`Context`] that is already connected.
    pub async fn serve_with(
        self,
        ctx: Context,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<App, Error> {
        let addr = listener.local_addr()?;
        declare_topology(&ctx, &shutdown);
        let tasks = TaskTracker::new();
        let roles = self.roles;
        let mut api = http::openapi_base();
        let mut router = axum::Router::new();
        if roles.catalog {
            let catalog = anika_catalog::State::new(ctx.clone())
                .await
                .map_err(|e| start_error("catalog")(e.to_string()))?;
            api.merge(anika_catalog::openapi());
            // The console calls /v1 over HTTP (ANIKA_CONSOLE_API_URL, or this listener).
            let console =
                anika_console::router(anika_console::Settings::from_config(&ctx.config, addr))
                    .map_err(|e| start_error("console")(e.to_string()))?;
            router = router.merge(anika_catalog::router(catalog)).merge(console);
        }
        if roles.ingest {
            let ingest = anika_ingest::State::start(ctx.clone(), &tasks, &shutdown)
                .await
                .map_err(|e| start_error("ingest")(e.to_string()))?;
            api.merge(anika_ingest::openapi());
            router = router.merge(anika_ingest::router(ingest));
        }
        if roles.dispatcher {
            let (stop, dispatcher_tasks) = self
                .dispatcher_lifetime
                .unwrap_or_else(|| (shutdown.clone(), tasks.clone()));
            let lookup = self.lookup.unwrap_or_else(|| Arc::new(SystemLookup));
            let dispatcher =
                anika_dispatcher::State::start_with(ctx.clone(), &dispatcher_tasks, &stop, lookup)
                    .await
                    .map_err(|e| start_error("dispatcher")(e.to_string()))?;
            api.merge(anika_dispatcher::openapi());
            router = router.merge(anika_dispatcher::router(dispatcher));
        }
        let app = http::finish_with(
            router.merge(http::service_router(
                ctx.readiness(),
                api,
                ctx.metrics.clone(),
            )),
            &ctx.config,
        );
        let server = tokio::spawn(http::serve(listener, app, shutdown.clone()));
        Ok(App {
            addr,
            ctx,
            shutdown,
            tasks,
            server,
        })
    }
}

/// A running application.
#[derive(Debug)]
pub struct App {
    addr: SocketAddr,
    ctx: Context,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    server: JoinHandle<std::io::Result<()>>,
}

impl App {
    /// Builds an application of `roles`; `name` names its connections (`anika up`, a test's name).
    pub fn builder(roles: Roles, name: &str) -> Builder {
        Builder {
            roles,
            lookup: None,
            dispatcher_lifetime: None,
            name: name.to_owned(),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its connections and configuration.
    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// The token that stops it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Waits until the HTTP server has stopped (the shutdown token fired and the requests in
    /// flight were answered), then up to [`DRAIN`] for the background work (writers,
    /// publishers, consumers) to finish, and closes the RabbitMQ connection.
    pub async fn finished(self) -> Result<(), Error> {
        let served = match self.server.await {
            Ok(result) => result.map_err(Error::from),
            Err(e) => Err(Error::Io(std::io::Error::other(format!(
                "the HTTP server task failed: {e}"
            )))),
        };
        self.shutdown.cancel();
        self.tasks.close();
        let drained = tokio::time::timeout(DRAIN, self.tasks.wait()).await.is_ok();
        self.ctx.broker.close().await;
        self.ctx.publishing.close().await;
        served?;
        if drained {
            Ok(())
        } else {
            Err(Error::Drain(DRAIN))
        }
    }
}

/// Connects to RabbitMQ (declaring the static topology) in the background: an
/// unreachable broker must not keep ingest from accepting events into the outbox.
fn declare_topology(ctx: &Context, shutdown: &CancellationToken) {
    let broker = Arc::clone(&ctx.broker);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        // None only when shutdown ended the retries; the roles reconnect on their own.
        if broker.connection_with_retry(&shutdown).await.is_none() {
            tracing::debug!("stopped connecting to RabbitMQ: shutting down");
        }
    });
}
