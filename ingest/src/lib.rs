//! Ingest: accepts events, appends them to the event log, publishes them through the outbox, searches the log.
//!
//! ```text
//! handler ──checked events──► writer (group commit: events + outbox rows, one INSERT, one commit)
//!    ◄──────── 202 ───────────┘   └──envelopes──► publisher (confirms in flight) ──► anika.events
//!                                                     └──confirmed ids──► deleter (DELETE … = ANY)
//! relay (every outbox_relay_interval): outbox rows left behind ──► anika.events
//! maintenance (every maintenance_interval): partitions ahead, retention behind
//! listener: catalog NOTIFY ──► topic cache and partner quota invalidation
//! ```
//!
//! Before a request joins a group commit it must pass the bounded backlog
//! (outbox depth under `ANIKA_MAX_BACKLOG`, else 503) and its partner's ingest
//! quota (else 429), so a refused request has written nothing.
//!
//! RabbitMQ is never on the request path: a 202 needs PostgreSQL only, so
//! ingest keeps accepting while the broker is away and the relay catches up.

use std::sync::Arc;

use anika_shared::{Context, auth::Verifier};
use axum::{Router, extract::FromRef};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

mod backlog;
pub mod error;
mod events;
mod input;
mod maintenance;
mod meters;
mod publisher;
mod quotas;
mod relay;
mod search;
mod topics;
mod writer;

pub use error::{Error, Result};

/// Why ingest could not start.
#[derive(Debug, thiserror::Error)]
#[error("ingest start-up: {0}")]
pub struct StartError(String);

/// Where the role's background work is spawned and what tells it to stop.
#[derive(Clone, Copy)]
pub(crate) struct Running<'a> {
    tasks: &'a TaskTracker,
    shutdown: &'a CancellationToken,
}

/// Everything an ingest handler needs.
#[derive(Clone, Debug)]
pub struct State(Arc<Inner>);

/// What the handlers share (behind [`State`], as in every role).
#[derive(Debug)]
pub struct Inner {
    ctx: Context,
    topics: Arc<topics::TopicCache>,
    quotas: Arc<quotas::Quotas>,
    backlog: Arc<backlog::Backlog>,
    writer: writer::Writer,
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
    /// Starts ingest's background work on `tasks`: the group-commit writers, the
    /// publisher and its outbox deleter, the relay, maintenance, and the topic-cache listener.
    ///
    /// Needs PostgreSQL (it listens for catalog changes before serving); RabbitMQ
    /// may be down — events then wait in the outbox. Everything stops when
    /// `shutdown` fires: the writers finish what was submitted (so every 202 is
    /// committed), the publisher waits briefly for confirms in flight, and
    /// whatever was not confirmed stays in the outbox for the next relay.
    pub async fn start(
        ctx: Context,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Self, StartError> {
        meters::describe();
        let pool = &ctx.pool;
        let config = &ctx.config;
        let listener = topics::listen(pool)
            .await
            .map_err(|e| StartError(format!("cannot listen for catalog changes: {e}")))?;
        // Today's partitions before the first event, so it does not land in the default partition.
        if let Err(e) = maintenance::ensure_partitions(pool).await {
            tracing::warn!(error = %e, "cannot create the event log's partitions yet; maintenance will retry");
        }
        let cache = Arc::new(topics::TopicCache::default());
        let quotas = Arc::new(quotas::Quotas::default());
        let backlog = Arc::new(backlog::Backlog::new(config.ingest.max_backlog));
        tasks.spawn(topics::follow_changes(
            pool.clone(),
            listener,
            Arc::clone(&cache),
            Arc::clone(&quotas),
            shutdown.clone(),
        ));
        let running = Running { tasks, shutdown };
        let publish = publisher::start(
            &ctx.publishing,
            pool,
            config.ingest.outbox_relay_after,
            &backlog,
            running,
        );
        let writers = writer::writers_for(config.database_pool);
        let writer = writer::start(writers, pool, &publish, &backlog, running);
        drop(publish);
        tasks.spawn(
            relay::Relay {
                pool: pool.clone(),
                broker: Arc::clone(&ctx.publishing),
                interval: config.ingest.outbox_relay_interval,
                after: config.ingest.outbox_relay_after,
                backlog: Arc::clone(&backlog),
                shutdown: shutdown.clone(),
            }
            .run(),
        );
        tasks.spawn(maintenance::run(
            pool.clone(),
            config.ingest.maintenance_interval,
            maintenance::Retention {
                events: config.ingest.retention,
                audit: config.ingest.audit_retention,
            },
            shutdown.clone(),
        ));
        Ok(Self(Arc::new(Inner {
            ctx,
            topics: cache,
            quotas,
            backlog,
            writer,
        })))
    }
}

fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new()
        .merge(events::routes())
        .merge(search::routes())
}

/// Ingest's routes.
pub fn router(state: State) -> Router {
    routes().with_state(state).split_for_parts().0
}

/// The OpenAPI description of ingest's routes.
pub fn openapi() -> OpenApi {
    routes().split_for_parts().1
}
