//! The dispatcher: one consumer per subscription queue, signed webhook delivery, retries through
//! delay queues, dead letters, an ACL check at delivery, and an SSRF guard that resolves once.
//! Requests are capped per subscription (`max_in_flight`) and share the process's delivery
//! slots fairly across partners (`fair`).

use std::{sync::Arc, time::Duration};

use anika_shared::{
    Context,
    amqp::{Broker, dead_letter_queue, subscription_queue},
    auth::Verifier,
};
use axum::{Router, extract::FromRef};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

mod ack;
mod breaker;
mod consumer;
mod dead_letter;
mod decide;
pub mod deliver;
mod deps;
mod endpoint_health;
mod fair;
pub mod filter;
mod health;
mod in_flight;
mod job;
mod meters;
mod publisher;
pub mod recovery;
mod registry;
mod routes;
pub mod sign;
mod subscription;
mod subscription_rows;
pub mod system;
pub mod target;
mod writer;

pub use deps::Deps;
pub use target::{Lookup, LookupFuture, SystemLookup};

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP client could not be built.
    #[error("dispatcher start-up: HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Everything a dispatcher handler needs: one cheap clone of [`Inner`], as in every role.
#[derive(Clone, Debug)]
pub struct State(Arc<Inner>);

/// The inside of [`State`].
#[derive(Debug)]
pub struct Inner {
    ctx: Context,
    /// What deliveries use: the test delivery goes through the same client and guard.
    deps: Arc<Deps>,
    /// The running subscriptions (their requests in flight, for the health route).
    registry: Arc<registry::Registry>,
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
    /// Starts consuming every active subscription; the work runs on `tasks` until `shutdown`.
    pub async fn start(
        ctx: Context,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Self, StartError> {
        Self::start_with(ctx, tasks, shutdown, Arc::new(SystemLookup)).await
    }

    /// Like [`State::start`], resolving webhook hosts with `lookup` (tests point names at chosen addresses).
    pub async fn start_with(
        ctx: Context,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, StartError> {
        meters::describe();
        let (writer, _writer_task) = writer::Writer::start(ctx.pool.clone(), shutdown.clone());
        let deps = Arc::new(deps::Deps {
            config: Arc::clone(&ctx.config),
            pool: ctx.pool.clone(),
            broker: Arc::clone(&ctx.broker),
            policy: ctx.policy.clone(),
            secrets: Arc::clone(&ctx.secrets),
            sender: deliver::Sender::new(&ctx.config, lookup)?,
            publisher: publisher::Publisher::new(Arc::clone(&ctx.publishing)),
            writer,
            slots: fair::FairSlots::new(ctx.config.dispatcher.dispatch_concurrency),
        });
        tasks.spawn(system::flush_loop(Arc::clone(&deps), shutdown.clone()));
        let registry = registry::Registry::new(Arc::clone(&deps));
        tasks.spawn({
            let registry = Arc::clone(&registry);
            let shutdown = shutdown.clone();
            let deps = Arc::clone(&deps);
            async move {
                registry.run(shutdown).await;
                // Every consumer is stopped; make sure their last outcomes are written and acked.
                deps.writer.flushed().await;
                deps.publisher.close().await;
                tracing::info!("dispatcher stopped");
            }
        });
        tasks.spawn(queue_gauges(
            Arc::clone(&registry),
            Arc::clone(&ctx.broker),
            // A Prometheus scrape every 15 s sees fresh figures; a shorter reconcile asks for more.
            ctx.config.dispatcher.reconcile_interval.min(GAUGE_INTERVAL),
            ctx.config.dispatcher.metrics_per_subscription,
            shutdown.clone(),
        ));
        Ok(Self(Arc::new(Inner {
            ctx,
            deps,
            registry,
        })))
    }
}

/// How often the queue gauges are read from RabbitMQ, at the longest.
const GAUGE_INTERVAL: Duration = Duration::from_secs(15);

/// Publishes the queue depths and dead-letter counts as gauges, every `every`: their sums
/// always, and each subscription's own (labelled by its id) only with
/// `ANIKA_METRICS_PER_SUBSCRIPTION`, since one series per subscription grows with every
/// partner's subscriptions and names them to anyone who can scrape `/metrics`.
async fn queue_gauges(
    registry: Arc<registry::Registry>,
    broker: Arc<Broker>,
    every: Duration,
    per_subscription: bool,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut channel = match broker.channel().await {
            Ok(channel) => channel,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the queue gauges now; next tick");
                continue;
            }
        };
        let (mut queued, mut dead) = (0u64, 0u64);
        for sub in registry.all().await {
            for (queue, gauge, sum) in [
                (subscription_queue(sub.id), meters::QUEUE_DEPTH, &mut queued),
                (dead_letter_queue(sub.id), meters::DEAD_LETTERS, &mut dead),
            ] {
                // Only reads the count; a metrics loop never creates a queue.
                let declared = anika_shared::amqp::message_count(&channel, &queue).await;
                match declared {
                    Ok(count) => {
                        *sum += u64::from(count);
                        if per_subscription {
                            metrics::gauge!(gauge, "subscription" => sub.id.to_string())
                                .set(f64::from(count));
                        }
                    }
                    // A missing queue closes the channel; open another for the rest.
                    Err(_) => match broker.channel().await {
                        Ok(fresh) => channel = fresh,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot read the rest of the queue gauges now; next tick");
                            break;
                        }
                    },
                }
            }
        }
        metrics::gauge!(meters::QUEUED_SUM).set(queued as f64);
        metrics::gauge!(meters::DEAD_LETTERS_SUM).set(dead as f64);
        anika_shared::amqp::close_channel(&channel, "gauges read").await;
    }
}

fn routes() -> OpenApiRouter<State> {
    routes::routes().merge(health::routes())
}

/// The dispatcher's routes.
pub fn router(state: State) -> Router {
    routes().with_state(state).split_for_parts().0
}

/// The OpenAPI description of the dispatcher's routes.
pub fn openapi() -> OpenApi {
    routes().split_for_parts().1
}
