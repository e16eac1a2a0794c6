//! Endpoint health in PostgreSQL: `failing_since` set at the first failure and cleared at the
//! first success after, and the subscription disabled (410, or failing for
//! `ANIKA_DISABLE_AFTER`), each with its operational event written in the same transaction.
//!
//! What to do is decided in `decide`; this module only carries it out. Every transition is
//! an `UPDATE … WHERE <the old state>`, so of several dispatchers only the one that changed
//! the row writes the notice.

use anika_shared::{
    audit::{self, Action, Actor, Changes, Target},
    changes::Change,
    domain::{SubscriptionId, SubscriptionStatus},
    store::attempts,
};
use chrono::{DateTime, Utc};

use crate::{
    deps::Deps,
    meters,
    subscription::Sub,
    system::{self, Notice},
};

/// A success: if the endpoint was failing, it is healthy again (and the partner hears of it).
pub async fn succeeded(sub: &Sub, deps: &Deps) {
    let was_failing = sub
        .failing_since
        .lock()
        .expect("health lock")
        .take()
        .is_some();
    if was_failing {
        // Boxed: a rare path whose future would otherwise widen every delivery's.
        let cleared = Box::pin(transition(
            deps,
            sub.id,
            Health::Recovered,
            Notice::Recovered,
        ));
        if let Err(e) = cleared.await {
            tracing::warn!(subscription = %sub.id, error = %e, "cannot record that the endpoint recovered; the next success tries again");
            // Still failing as far as PostgreSQL knows: the next success clears it.
            sub.failing_since
                .lock()
                .expect("health lock")
                .get_or_insert_with(Utc::now);
        }
    }
}

/// A failure at `now`: returns since when the endpoint was failing before it, and, if it
/// was healthy, makes `now` the start (in one step, so of concurrent failures one is first).
pub fn note_failure(sub: &Sub, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut since = sub.failing_since.lock().expect("health lock");
    let before = *since;
    since.get_or_insert(now);
    before
}

/// Records the first failure (at `now`, see [`note_failure`]) in PostgreSQL with its
/// `subscription.failing` notice; if that fails, the next failure tries again.
pub async fn failing(sub: &Sub, deps: &Deps, now: DateTime<Utc>, error: &str) {
    let marked = transition(
        deps,
        sub.id,
        Health::FailingSince(now),
        Notice::Failing {
            error: error.to_owned(),
        },
    )
    .await;
    if let Err(e) = marked {
        tracing::warn!(subscription = %sub.id, error = %e, "cannot record that the endpoint fails; the next failure tries again");
        *sub.failing_since.lock().expect("health lock") = None;
    }
}

/// The state an endpoint moves to.
#[derive(Clone, Copy, Debug)]
enum Health {
    /// Healthy again: `failing_since` cleared.
    Recovered,
    /// Failing since then.
    FailingSince(DateTime<Utc>),
}

/// Moves the endpoint to `change` with an UPDATE that matches only the state it leaves and,
/// when this process made the transition (one row changed), writes `notice` in the same transaction;
/// publishes the notice after the commit. Whether the transition was made here.
async fn transition(
    deps: &Deps,
    subscription: SubscriptionId,
    change: Health,
    notice: Notice,
) -> Result<bool, sqlx::Error> {
    let mut tx = deps.pool.begin().await?;
    let rows = match change {
        Health::Recovered => attempts::clear_failing(&mut *tx, subscription.uuid()).await?,
        Health::FailingSince(since) => {
            attempts::mark_failing(&mut *tx, subscription.uuid(), since).await?
        }
    };
    let changed = rows > 0;
    let written = if changed {
        system::write(&mut tx, subscription, &notice).await?
    } else {
        None
    };
    tx.commit().await?;
    system::publish_all(deps, written).await;
    Ok(changed)
}

/// Sets the subscription to `disabled` and tells every dispatcher.
pub async fn disable(deps: &Deps, sub: &Sub, reason: &str) {
    sub.disable_locally();
    match disable_in_catalog(deps, sub.id, reason).await {
        Ok(true) => {
            metrics::counter!(meters::SUBSCRIPTIONS_DISABLED).increment(1);
            tracing::warn!(subscription = %sub.id, reason, "subscription disabled");
        }
        // Not active any more (paused, or disabled by another dispatcher): nothing to do.
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(subscription = %sub.id, error = %e, "cannot disable the subscription")
        }
    }
}

/// The disabling transaction: the status, its audit entry, the catalog change and the
/// `subscription.disabled` notice commit together. Whether this process disabled it.
async fn disable_in_catalog(
    deps: &Deps,
    id: SubscriptionId,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let (active, disabled) = (SubscriptionStatus::Active, SubscriptionStatus::Disabled);
    let mut tx = deps.pool.begin().await?;
    let partner = attempts::disable_subscription(&mut *tx, id.uuid(), reason).await?;
    let mut written = None;
    if let Some(partner) = partner {
        // A status change nobody asked for: the audit log says anika did it, and why.
        audit::record(
            &mut tx,
            &Actor::system(),
            Action::SubscriptionUpdated,
            &Target::subscription(id, partner.into()),
            Changes::new()
                .diff("status", active.as_str(), disabled.as_str())
                .created("disabled_reason", reason),
        )
        .await?;
        Change::Subscription {
            subscription_id: id,
        }
        .notify(&mut tx)
        .await?;
        let notice = Notice::Disabled {
            reason: reason.to_owned(),
        };
        written = system::write(&mut tx, id, &notice).await?;
    }
    tx.commit().await?;
    system::publish_all(deps, written).await;
    Ok(partner.is_some())
}
