//! What every consumer and background task of the dispatcher shares, built once at start-up.

use std::sync::Arc;

use anika_shared::{amqp::Broker, config::Config, net::TargetPolicy, secrets::KeyRing};
use sqlx::PgPool;

use crate::{deliver, fair, publisher, writer};

/// What consumers share: one HTTP client, one confirm publisher, one attempt writer.
pub struct Deps {
    /// The configuration.
    pub config: Arc<Config>,
    /// PostgreSQL.
    pub pool: PgPool,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// Which targets may be contacted.
    pub policy: TargetPolicy,
    /// Opens the stored webhook secrets.
    pub secrets: Arc<KeyRing>,
    /// The webhook client.
    pub(crate) sender: deliver::Sender,
    /// Confirmed publishes (retries, dead letters, notices).
    pub(crate) publisher: publisher::Publisher,
    /// The attempt log.
    pub(crate) writer: writer::Writer,
    /// The global limit on webhook requests in flight, shared fairly across partners.
    pub(crate) slots: fair::FairSlots,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps").finish_non_exhaustive()
    }
}
