//! The subscription rows the dispatcher reads from the catalog's tables, turned into the
//! runtime model ([`SubConfig`]).
//!
//! A row that does not parse (a status that is none of the known ones, a filter that is not
//! JSON, a stored secret that does not open) is not consumed: its events wait in the queue.
//! It is logged and counted ([`crate::meters::SUBSCRIPTIONS_UNREADABLE`]), never dropped
//! silently.

use std::time::Instant;

use anika_shared::{
    domain::{MaxInFlight, SubscriptionId, SubscriptionStatus, TopicId, WebhookSecret},
    net::WebhookUrl,
    secrets::{Column, Slot},
    store::{self, subscriptions::SubscriptionConfigRow as Row},
};
use chrono::Utc;

use crate::{
    deps::Deps,
    filter::Filter,
    meters,
    subscription::{Sub, SubConfig},
};

/// Why a row is not turned into a runtime subscription (the `reason` label of
/// [`meters::SUBSCRIPTIONS_UNREADABLE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unreadable {
    Status,
    Filter,
    Secret,
}

impl Unreadable {
    fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Filter => "filter",
            Self::Secret => "secret",
        }
    }
}

/// The configuration of a row; `read_at` is when the query that read it started. A row
/// that does not parse is logged and counted here, and not consumed.
fn into_config(row: Row, deps: &Deps, read_at: Instant) -> Option<SubConfig> {
    let id = row.id;
    parse(row, deps, read_at)
        .inspect_err(|why| {
            metrics::counter!(meters::SUBSCRIPTIONS_UNREADABLE, "reason" => why.label())
                .increment(1);
            tracing::error!(subscription = %id, reason = why.label(),
                "a stored subscription does not parse; it is not consumed and its events wait in its queue");
        })
        .ok()
}

/// The configuration of a row, or why it does not parse.
fn parse(row: Row, deps: &Deps, read_at: Instant) -> Result<SubConfig, Unreadable> {
    let row_id = row.id.to_string();
    let status = SubscriptionStatus::from_stored(&row.status).map_err(|_| Unreadable::Status)?;
    // Without its secret a subscription is not consumed: its events wait in the queue
    // rather than go out unsigned (or signed with a secret moved from another row).
    let secret = open_logged(
        deps,
        &row.secret,
        Slot::new(Column::SubscriptionSecret, &row_id),
    )
    .ok_or(Unreadable::Secret)?;
    let previous_secret = match (row.previous_secret, row.previous_secret_expires_at) {
        (Some(s), Some(until)) if until > Utc::now() => open_logged(
            deps,
            &s,
            Slot::new(Column::SubscriptionPreviousSecret, &row_id),
        )
        .map(|s| (s, until)),
        _ => None,
    };
    let filter = match row.filter.as_deref().map(Filter::parse) {
        None => None,
        Some(Ok(filter)) => Some(filter),
        Some(Err(e)) => {
            // PostgreSQL prints jsonb as valid JSON; this would be a bug worth seeing.
            tracing::error!(subscription = %row.id, error = %e, "a stored filter does not parse; the subscription is not consumed");
            return Err(Unreadable::Filter);
        }
    };
    Ok(SubConfig {
        id: row.id.into(),
        partner: row.partner_id.into(),
        topic: row.topic_id.into(),
        url: WebhookUrl::parse(&row.url, &deps.policy),
        secret,
        previous_secret,
        filter,
        status,
        allowed: row.allowed,
        max_attempts: row.max_attempts.max(1) as u32,
        rate_limit: row.rate_limit_per_s.map(|r| r.max(1) as u32),
        max_in_flight: row
            .max_in_flight
            .and_then(|m| MaxInFlight::try_from(i64::from(m)).ok())
            .unwrap_or(deps.config.dispatcher.subscription_max_in_flight),
        ordered: row.ordered,
        failing_since: row.failing_since,
        read_at,
    })
}

/// Opens a stored webhook secret; logs and counts one that does not open.
fn open_logged(deps: &Deps, stored: &str, slot: Slot<'_>) -> Option<WebhookSecret> {
    match WebhookSecret::open(stored, &deps.secrets, slot) {
        Ok(secret) => Some(secret),
        Err(e) => {
            metrics::counter!(anika_shared::meters::SECRETS_UNOPENABLE, "column" => slot.column().name())
                .increment(1);
            tracing::error!(%slot, error = %e, "a stored webhook secret does not open; the subscription is not delivered to");
            None
        }
    }
}

/// Which subscriptions a read covers.
#[derive(Debug)]
pub enum Scope {
    /// Every subscription.
    All,
    /// One.
    Subscription(SubscriptionId),
    /// Every subscription of a topic (its name, existence or grants changed).
    Topic(TopicId),
}

/// Reads the subscriptions of `scope` that parse (see the module's comment for the others).
pub async fn load(deps: &Deps, scope: &Scope) -> Result<Vec<SubConfig>, sqlx::Error> {
    let pool = &deps.pool;
    let read_at = Instant::now();
    let (subscription, topic) = match scope {
        Scope::All => (None, None),
        Scope::Subscription(id) => (Some(id.uuid()), None),
        Scope::Topic(topic) => (None, Some(topic.uuid())),
    };
    let rows: Vec<Row> =
        store::subscriptions::list_subscription_configs(pool, subscription, topic).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| into_config(r, deps, read_at))
        .collect())
}

/// Reads one subscription's configuration from the catalog; `None` if it was deleted (or
/// its row does not parse).
pub(crate) async fn load_one(
    deps: &Deps,
    id: SubscriptionId,
) -> Result<Option<SubConfig>, sqlx::Error> {
    Ok(load(deps, &Scope::Subscription(id)).await?.pop())
}

/// [`Sub::refresh`] with the subscription's row as the source.
pub async fn refresh(
    sub: &Sub,
    deps: &Deps,
    received: std::time::Instant,
) -> Result<Option<std::sync::Arc<SubConfig>>, sqlx::Error> {
    sub.refresh(received, || load_one(deps, sub.id)).await
}
