//! The handles a role runs with, built once by the binary (or a test) and shared by every role in the process.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::{
    amqp::{Broker, BrokerError, Topology},
    auth::Verifier,
    config::Config,
    db::{self, DbError},
    net::TargetPolicy,
    secret_rows::{self, RowsError},
    secrets::KeyRing,
};

/// PostgreSQL, RabbitMQ, the token verifier, the target policy and the metrics registry.
#[derive(Clone, Debug)]
pub struct Context {
    /// The configuration.
    pub config: Arc<Config>,
    /// PostgreSQL.
    pub pool: PgPool,
    /// RabbitMQ: consumers, their acks, declarations and purges.
    pub broker: Arc<Broker>,
    /// RabbitMQ, a second connection for the process's publishers (ingest's events, the
    /// outbox relay, the dispatcher's retries and dead letters, replays). RabbitMQ's flow control
    /// throttles a connection that publishes faster than its queues take in by no longer
    /// reading its socket, and that holds every channel on it: on one shared connection,
    /// a partner posting at full speed stalled the acks of every consumer in the process
    /// (deliveries fell from ~20,000/s to a few hundred while ingest ran), so no
    /// subscription got more than its prefetch out until the posting stopped.
    pub publishing: Arc<Broker>,
    /// Access-token verification.
    pub verifier: Arc<Verifier>,
    /// Which webhook targets are allowed.
    pub policy: TargetPolicy,
    /// The metrics registry behind `/metrics`.
    pub metrics: PrometheusHandle,
    /// The main keys that seal and open the secrets at rest.
    pub secrets: Arc<KeyRing>,
}

/// Why a role could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PostgreSQL is unreachable or the schema could not be migrated.
    #[error(transparent)]
    Db(#[from] DbError),
    /// RabbitMQ is unreachable or the URL is wrong.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A query at start-up failed.
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    /// `ANIKA_SECRET_KEYS` is not set: there is no key to seal or open the secrets at rest with.
    #[error(
        "ANIKA_SECRET_KEYS is not set: signing keys and webhook secrets are stored sealed under it. \
         Create a ring of one key, e.g. ANIKA_SECRET_KEYS=\"main-1:$(head -c 32 /dev/urandom | base64)\", \
         and keep it as safe as the database (scripts/up keeps one in .anika/secret-keys)"
    )]
    NoSecretKeys,
    /// The stored secrets cannot be sealed or opened with the configured ring.
    #[error(transparent)]
    Secrets(#[from] RowsError),
}

impl Context {
    /// Connects to PostgreSQL (creating the database and migrating it) and prepares the broker handle.
    ///
    /// `name` labels the RabbitMQ connection (visible in the management UI).
    /// Secrets left in plain text by an earlier version are sealed here, after the SQL
    /// migrations; a ring that lacks a key some stored secret needs is refused.
    pub async fn connect(config: Config, name: &str) -> Result<Self, StartError> {
        let secrets = Arc::new(config.secret_keys.clone().ok_or(StartError::NoSecretKeys)?);
        let pool =
            db::connect_and_migrate(config.database_url.expose(), config.database_pool).await?;
        secret_rows::prepare(&pool, &secrets).await?;
        let topology = Topology {
            queue_type: config.queue_type,
            retry_schedule: config.retry_schedule.clone(),
        };
        let broker = Broker::new(config.amqp_url.expose(), name, topology.clone())?;
        let publishing = Broker::new(
            config.amqp_url.expose(),
            format!("{name} (publishing)"),
            topology,
        )?;
        let verifier = Verifier::new(
            pool.clone(),
            &config.catalog.token_issuer,
            &config.catalog.token_audience,
        );
        // Revocations announced by any process reach this one's verifier at once.
        verifier.follow();
        Ok(Self {
            policy: TargetPolicy::new(config.allowed_target_nets.clone()),
            config: Arc::new(config),
            pool,
            broker,
            publishing,
            verifier,
            metrics: crate::metrics::install(),
            secrets,
        })
    }

    /// What `/readyz` checks.
    pub fn readiness(&self) -> crate::http::Readiness {
        crate::http::Readiness {
            pool: self.pool.clone(),
            broker: Arc::clone(&self.broker),
        }
    }
}
