//! Catalog changes announced over PostgreSQL `NOTIFY`, so caches in other processes follow at once.
//!
//! The catalog sends a change in the same transaction as the write, so a
//! listener never hears of a change that was rolled back.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::{PartnerId, SubscriptionId, TopicId};

/// The `LISTEN` channel.
pub const CHANNEL: &str = "anika_catalog";

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A topic's name, schema or existence changed.
    Topic {
        /// The topic.
        topic_id: TopicId,
    },
    /// A grant was given or taken.
    Grant {
        /// The topic.
        topic_id: TopicId,
        /// The partner.
        partner_id: PartnerId,
    },
    /// A subscription was created, changed, or deleted.
    Subscription {
        /// The subscription.
        subscription_id: SubscriptionId,
    },
    /// A partner's ingest quota (or name) changed: ingest reloads its rate limiter.
    Partner {
        /// The partner.
        partner_id: PartnerId,
    },
    /// Dead letters were replayed or history re-delivered: the operator expects the
    /// endpoint to answer, so dispatchers stop waiting out its circuit breaker's cool-down.
    Recovered {
        /// The subscription.
        subscription_id: SubscriptionId,
    },
}

impl Change {
    /// Sends the change inside the caller's transaction.
    pub async fn notify(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let payload = serde_json::to_string(&self).expect("changes serialise");
        crate::store::schema::notify(conn, CHANNEL, &payload).await
    }

    /// Parses a notification payload; `None` for one this version does not know.
    pub fn parse(payload: &str) -> Option<Self> {
        serde_json::from_str(payload).ok()
    }
}
