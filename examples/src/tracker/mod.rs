//! The task tracker ("Popug"): six services that talk only through anika.
//!
//! Auth, Tasks, Accounts, Billing, Mailer and Analytics are each a partner with their
//! own API keys, grants and PostgreSQL schema; none calls another. Auth publishes
//! `user.created` (read by Tasks and Mailer); Tasks publishes `task.assigned` and
//! `task.closed` (read by Accounts and Analytics); Accounts books a debit per
//! assignment and a credit per close and publishes each credit as a `payout` (read by
//! Billing and Mailer). [`run`] plays one scripted day, optionally with Billing's
//! outage: Billing goes down mid-day, loses its storage, comes back and rebuilds its
//! books by replaying its subscription from the start of the day.

pub mod accounts;
pub mod analytics;
pub mod auth;
pub mod billing;
pub mod mailer;
pub mod rules;
pub mod storage;
pub mod tasks;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{SecondsFormat, Utc};

use self::{
    accounts::{Accounts, Payout},
    analytics::{Analytics, Report},
    auth::{Auth, USERS},
    billing::{Billing, Books},
    mailer::{Mail, Mailer},
    storage::Storage,
    tasks::{History, Tasks},
};
use crate::{
    Error, Say, Target,
    receiver::Receiver,
    setup::{Operator, Partner},
    wait_until,
};

/// How long any one step of the day may take to reach every service.
const STEP: Duration = Duration::from_secs(60);

/// The shape of the scripted day.
#[derive(Clone, Debug)]
pub struct Day {
    /// Tasks created (and assigned) in the morning.
    pub tasks: usize,
    /// Tasks closed before noon.
    pub closed_before_noon: usize,
    /// Tasks closed in the afternoon, after the bulk reassignment.
    pub closed_after_noon: usize,
    /// Whether Billing goes down at noon, loses its storage and recovers by replay.
    pub billing_outage: bool,
}

impl Default for Day {
    fn default() -> Self {
        Self {
            tasks: 20,
            closed_before_noon: 6,
            closed_after_noon: 8,
            billing_outage: true,
        }
    }
}

/// What Billing went through in the outage.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// Payouts Billing had recorded when it went down (all lost with its storage).
    pub before_outage: usize,
    /// Delivery attempts to Billing that anika recorded as failed while it was down.
    pub failed_attempts: usize,
    /// Events anika re-delivered from the log for the replay.
    pub replayed: u64,
    /// Events re-delivered by a second replay after a plain restart (storage kept).
    pub replayed_again: u64,
    /// Of those, how many Billing's storage recognised as applied before and dropped.
    pub dropped_as_duplicates: u64,
    /// Of those, how many Billing applied (0 when it is idempotent on the event id).
    pub applied_again: u64,
}

/// Each service's view at the end of the day.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Tasks' history.
    pub history: History,
    /// Accounts' balances per user.
    pub balances: BTreeMap<String, i64>,
    /// The payouts Accounts booked and published.
    pub payouts: Vec<Payout>,
    /// The payout event ids Billing recorded.
    pub billing_payout_ids: Vec<String>,
    /// Billing's books.
    pub billing_books: Books,
    /// The mails Mailer sent.
    pub mails: Vec<Mail>,
    /// Analytics' report.
    pub analytics: Report,
    /// The outage, if the day had one.
    pub recovery: Option<Recovery>,
}

impl Outcome {
    /// The day's invariants, each with whether it holds.
    pub fn checks(&self) -> Vec<(&'static str, bool)> {
        let booked: Vec<&str> = self.payouts.iter().map(|p| p.event_id.as_str()).collect();
        let billed: Vec<&str> = self.billing_payout_ids.iter().map(String::as_str).collect();
        let mailed: Vec<&str> = self
            .mails
            .iter()
            .map(|m| m.payout_event_id.as_str())
            .collect();
        let mut books = Books::new();
        for payout in &self.payouts {
            let entry = books.entry(payout.user_id.clone()).or_default();
            *entry = (entry.0 + 1, entry.1 + payout.amount);
        }
        vec![
            (
                "Billing has every payout Accounts booked, once",
                billed == booked,
            ),
            (
                "Billing's books equal Accounts' payouts",
                self.billing_books == books,
            ),
            ("Mailer sent one mail per payout", mailed == booked),
            (
                "A second replay changed nothing in Billing",
                self.recovery.as_ref().is_none_or(|r| r.applied_again == 0),
            ),
            (
                "Analytics counted what Tasks recorded",
                self.analytics.assigned == self.history.assigned
                    && self.analytics.closed == self.history.closed
                    && self.analytics.tasks == self.history.created
                    && self.analytics.assigned_per_user == self.history.assigned_per_user,
            ),
        ]
    }
}

/// The name Auth gave `user_id`.
fn name(user_id: &str) -> &str {
    USERS
        .iter()
        .find(|(id, _)| *id == user_id)
        .map_or(user_id, |(_, name)| name)
}

/// Plays the scripted `day` against `target`, the services keeping their state in
/// `database_url` (one schema each, wiped at the start), and returns each service's view.
pub async fn run(
    target: &Target,
    database_url: &str,
    day: &Day,
    say: &Say,
) -> Result<Outcome, Error> {
    // Replays name the start of the day; a second of slack covers clock skew with anika.
    let start_of_day =
        (Utc::now() - chrono::Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let operator = Operator::new(target)?;
    let tag = crate::run_tag();
    say.line(format!(
        "Setting up six services (run {tag}), each a partner with its own keys and schema"
    ));
    let partner = async |service: &str| -> Result<Arc<Partner>, Error> {
        Ok(Arc::new(
            operator.partner(&format!("popug-{service}-{tag}")).await?,
        ))
    };
    let auth_p = partner("auth").await?;
    let tasks_p = partner("tasks").await?;
    let accounts_p = partner("accounts").await?;
    let billing_p = partner("billing").await?;
    let mailer_p = partner("mailer").await?;
    let analytics_p = partner("analytics").await?;

    let users_t = auth_p.topic("user.created", "A user signed up").await?;
    let assigned_t = tasks_p
        .topic("task.assigned", "A task was given to a user")
        .await?;
    let closed_t = tasks_p.topic("task.closed", "A task was done").await?;
    let payout_t = accounts_p.topic("payout", "Money paid to a user").await?;
    for (owner, topic, readers) in [
        (&auth_p, &users_t, [&tasks_p, &mailer_p]),
        (&tasks_p, &assigned_t, [&accounts_p, &analytics_p]),
        (&tasks_p, &closed_t, [&accounts_p, &analytics_p]),
        (&accounts_p, &payout_t, [&billing_p, &mailer_p]),
    ] {
        for reader in readers {
            owner.grant(topic, reader).await?;
        }
        say.line(format!(
            "  {:<13} granted to {} and {}",
            topic.name,
            readers[0].name.trim_end_matches(&format!("-{tag}")),
            readers[1].name.trim_end_matches(&format!("-{tag}"))
        ));
    }

    say.line(format!(
        "  storage: one schema per service (popug_auth, popug_tasks, …) in {}",
        database_url.rsplit('@').next().unwrap_or(database_url)
    ));
    let storage =
        async |schema: &'static str, tables: &'static [&'static str]| -> Result<Storage, Error> {
            let storage = Storage::connect(database_url, schema, tables).await?;
            storage.wipe().await?;
            Ok(storage)
        };
    let auth = Auth {
        partner: Arc::clone(&auth_p),
        storage: storage("popug_auth", auth::TABLES).await?,
        users: users_t.clone(),
        say: say.clone(),
    };
    let mut tasks_rx = Receiver::start(Tasks {
        partner: Arc::clone(&tasks_p),
        storage: storage("popug_tasks", tasks::TABLES).await?,
        assigned: assigned_t.clone(),
        closed: closed_t.clone(),
        say: say.clone(),
    })
    .await?;
    let mut accounts_rx = Receiver::start(Accounts {
        partner: Arc::clone(&accounts_p),
        storage: storage("popug_accounts", accounts::TABLES).await?,
        payouts: payout_t.clone(),
        say: say.clone(),
    })
    .await?;
    let billing_storage = storage("popug_billing", billing::TABLES).await?;
    let mut billing_rx = Receiver::start(Billing {
        storage: billing_storage.clone(),
    })
    .await?;
    let mut mailer_rx = Receiver::start(Mailer {
        storage: storage("popug_mailer", mailer::TABLES).await?,
        say: say.clone(),
    })
    .await?;
    let mut analytics_rx = Receiver::start(Analytics {
        storage: storage("popug_analytics", analytics::TABLES).await?,
    })
    .await?;

    tasks_p
        .subscribe(&users_t, &tasks_rx, mailer::USERS)
        .await?;
    mailer_p
        .subscribe(&users_t, &mailer_rx, mailer::USERS)
        .await?;
    mailer_p
        .subscribe(&payout_t, &mailer_rx, mailer::PAYOUTS)
        .await?;
    for (partner, hook, topic) in [
        (&accounts_p, accounts::ASSIGNED, &assigned_t),
        (&accounts_p, accounts::CLOSED, &closed_t),
    ] {
        partner.subscribe(topic, &accounts_rx, hook).await?;
    }
    for (partner, hook, topic) in [
        (&analytics_p, accounts::ASSIGNED, &assigned_t),
        (&analytics_p, accounts::CLOSED, &closed_t),
    ] {
        partner.subscribe(topic, &analytics_rx, hook).await?;
    }
    let billing_sub = billing_p
        .subscribe(&payout_t, &billing_rx, mailer::PAYOUTS)
        .await?;

    // Morning: users sign up; Tasks and Mailer learn them from Auth's topic.
    say.line("\nMorning");
    for (user_id, name) in USERS {
        auth.register(user_id, name).await?;
    }
    let users = USERS.len() as i64;
    wait_until("Tasks and Mailer to know every user", STEP, async || {
        let known = tasks_rx.handler().users_known().await? == users
            && mailer_rx.handler().users_known().await? == users;
        Ok(known.then_some(()))
    })
    .await?;

    let tasks = tasks_rx.handler();
    for n in 1..=day.tasks {
        tasks
            .create(&rules::task_id(n), &format!("Task number {n}"))
            .await?;
    }
    say.line(format!(
        "[tasks]     {} tasks created and assigned → task.assigned",
        day.tasks
    ));
    settle(&tasks_rx, &accounts_rx, &analytics_rx).await?;

    let close = async |count: usize| -> Result<(), Error> {
        let open = tasks_rx.handler().open_tasks().await?;
        for task_id in open.iter().take(count) {
            tasks_rx.handler().close(task_id).await?;
        }
        say.line(format!("[tasks]     {count} tasks closed → task.closed"));
        Ok(())
    };
    close(day.closed_before_noon).await?;
    settle(&tasks_rx, &accounts_rx, &analytics_rx).await?;
    delivered(&accounts_rx, Some(&billing_rx), Some(&mailer_rx)).await?;

    // Noon: Billing goes down, and the day goes on without it.
    let mut recovery = None;
    if day.billing_outage {
        let before_outage = billing_rx.handler().payout_ids().await?.len();
        billing_rx.stop().await;
        say.line(format!(
            "\nNoon: Billing goes down (it had {before_outage} payouts); its endpoint stops answering"
        ));
        recovery = Some(Recovery {
            before_outage,
            failed_attempts: 0,
            replayed: 0,
            replayed_again: 0,
            dropped_as_duplicates: 0,
            applied_again: 0,
        });
    } else {
        say.line("\nNoon");
    }
    let reassigned = tasks.reassign_open(1).await?;
    say.line(format!(
        "[tasks]     bulk reassignment of the {reassigned} open tasks → task.assigned"
    ));
    settle(&tasks_rx, &accounts_rx, &analytics_rx).await?;
    say.line("\nAfternoon");
    close(day.closed_after_noon).await?;
    settle(&tasks_rx, &accounts_rx, &analytics_rx).await?;
    delivered(&accounts_rx, None, Some(&mailer_rx)).await?;

    if let Some(recovery) = recovery.as_mut() {
        // Billing's disk is gone; it comes back empty, on a new port, with its secret
        // from its configuration, and asks anika for the day again.
        billing_storage.wipe().await?;
        say.line("\nEvening: Billing's storage is wiped (0 payouts); Billing comes back");
        billing_rx = Receiver::start(Billing {
            storage: billing_storage.clone(),
        })
        .await?;
        billing_p
            .move_subscription(&billing_sub, &billing_rx)
            .await?;
        recovery.failed_attempts = billing_p.failed_attempts(&billing_sub).await?;
        say.line(format!(
            "[billing]   anika recorded {} failed delivery attempts to it while it was down",
            recovery.failed_attempts
        ));
        recovery.replayed = billing_p.replay(&billing_sub, &start_of_day).await?;
        say.line(format!(
            "[billing]   POST /v1/subscriptions/{}/replay since {start_of_day}: {} events re-delivered",
            billing_sub.id, recovery.replayed
        ));
    }
    delivered(&accounts_rx, Some(&billing_rx), None).await?;

    if let Some(recovery) = recovery.as_mut() {
        // A plain restart (storage kept, nothing in memory) and a second replay of the
        // whole day: every event comes again, and Billing's storage drops each by its id.
        billing_rx.stop().await;
        billing_rx = Receiver::start(Billing {
            storage: billing_storage.clone(),
        })
        .await?;
        billing_p
            .move_subscription(&billing_sub, &billing_rx)
            .await?;
        recovery.replayed_again = billing_p.replay(&billing_sub, &start_of_day).await?;
        let again = recovery.replayed_again;
        let counts = wait_until("the second replay to reach Billing", STEP, async || {
            let counts = billing_rx.counts();
            Ok((counts.duplicates + counts.applied >= again).then_some(counts))
        })
        .await?;
        recovery.dropped_as_duplicates = counts.duplicates;
        recovery.applied_again = counts.applied;
        say.line(format!(
            "[billing]   restarted and replayed again: {again} events re-delivered, {} dropped as \
             already applied, {} applied",
            counts.duplicates, counts.applied
        ));
    }

    let outcome = Outcome {
        history: tasks.history().await?,
        balances: accounts_rx.handler().balances().await?,
        payouts: accounts_rx.handler().payouts().await?,
        billing_payout_ids: billing_rx.handler().payout_ids().await?,
        billing_books: billing_rx.handler().books().await?,
        mails: mailer_rx.handler().mails().await?,
        analytics: analytics_rx.handler().report().await?,
        recovery,
    };
    report(&outcome, say);
    tasks_rx.stop().await;
    accounts_rx.stop().await;
    billing_rx.stop().await;
    mailer_rx.stop().await;
    analytics_rx.stop().await;
    Ok(outcome)
}

/// Waits until Accounts and Analytics applied every task event Tasks recorded.
async fn settle(
    tasks: &Receiver<Tasks>,
    accounts: &Receiver<Accounts>,
    analytics: &Receiver<Analytics>,
) -> Result<(), Error> {
    wait_until(
        "Accounts and Analytics to apply every task event",
        STEP,
        async || {
            let history = tasks.handler().history().await?;
            let (assigned, closed) = accounts.handler().applied().await?;
            let report = analytics.handler().report().await?;
            let done = (assigned, closed) == (history.assigned, history.closed)
                && (report.assigned, report.closed) == (history.assigned, history.closed)
                && accounts.handler().payouts().await?.len() as i64 == history.closed;
            Ok(done.then_some(()))
        },
    )
    .await
}

/// Waits until Billing and Mailer (those given) hold every payout Accounts published.
async fn delivered(
    accounts: &Receiver<Accounts>,
    billing: Option<&Receiver<Billing>>,
    mailer: Option<&Receiver<Mailer>>,
) -> Result<(), Error> {
    let booked = accounts.handler().payouts().await?.len();
    wait_until(
        "every payout to reach Billing and Mailer",
        STEP,
        async || {
            let billed = match billing {
                Some(billing) => billing.handler().payout_ids().await?.len() == booked,
                None => true,
            };
            let mailed = match mailer {
                Some(mailer) => mailer.handler().mails().await?.len() == booked,
                None => true,
            };
            Ok((billed && mailed).then_some(()))
        },
    )
    .await
}

/// Prints each service's view of the day.
fn report(outcome: &Outcome, say: &Say) {
    let history = &outcome.history;
    say.line("\nThe day as each service saw it");
    say.line(format!(
        "  Tasks      {} created, {} assignments, {} closed, {} open",
        history.created,
        history.assigned,
        history.closed,
        history.created - history.closed
    ));
    let balances: Vec<String> = outcome
        .balances
        .iter()
        .map(|(user, balance)| format!("{} {balance:+}", name(user)))
        .collect();
    let total: i64 = outcome.payouts.iter().map(|p| p.amount).sum();
    say.line(format!("  Accounts   balances: {}", balances.join(", ")));
    say.line(format!(
        "             {} payouts published, {total} in all",
        outcome.payouts.len()
    ));
    let books: Vec<String> = outcome
        .billing_books
        .iter()
        .map(|(user, (n, sum))| format!("{} {n}× = {sum}", name(user)))
        .collect();
    let billed: i64 = outcome.billing_books.values().map(|(_, sum)| sum).sum();
    say.line(format!(
        "  Billing    {} payouts, {billed} in all: {}",
        outcome.billing_payout_ids.len(),
        books.join(", ")
    ));
    if let Some(recovery) = &outcome.recovery {
        say.line(format!(
            "             rebuilt after the outage: {} payouts lost with the storage, {} re-delivered by the replay",
            recovery.before_outage, recovery.replayed
        ));
    }
    say.line(format!("  Mailer     {} mails sent", outcome.mails.len()));
    let per_user: Vec<String> = outcome
        .analytics
        .assigned_per_user
        .iter()
        .map(|(user, n)| format!("{} {n}", name(user)))
        .collect();
    say.line(format!(
        "  Analytics  {} assignments of {} tasks ({} reassignments), {} closes; assignments per user: {}",
        outcome.analytics.assigned,
        outcome.analytics.tasks,
        outcome.analytics.assigned - outcome.analytics.tasks,
        outcome.analytics.closed,
        per_user.join(", ")
    ));
    say.line("\nChecks");
    for (check, holds) in outcome.checks() {
        say.line(format!("  {} {check}", if holds { "✓" } else { "✗" }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payout(event_id: &str, user_id: &str, amount: i64) -> Payout {
        Payout {
            event_id: event_id.into(),
            user_id: user_id.into(),
            amount,
        }
    }

    fn day_where_billing_has(ids: &[&str], books: Books) -> Outcome {
        Outcome {
            history: History::default(),
            balances: BTreeMap::new(),
            payouts: vec![payout("e1", "u-rio", 30), payout("e2", "u-rio", 25)],
            billing_payout_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
            billing_books: books,
            mails: ["e1", "e2"]
                .map(|id| Mail {
                    payout_event_id: id.into(),
                    email: "rio@popug.example".into(),
                    subject: "paid".into(),
                })
                .to_vec(),
            analytics: Report::default(),
            recovery: None,
        }
    }

    #[test]
    fn the_checks_hold_when_billing_has_every_payout_accounts_booked() {
        let books = Books::from([("u-rio".to_owned(), (2, 55))]);
        let outcome = day_where_billing_has(&["e1", "e2"], books);
        assert!(
            outcome.checks().iter().all(|(_, holds)| *holds),
            "{:?}",
            outcome.checks()
        );
    }

    #[test]
    fn a_payout_missing_from_billing_fails_the_checks() {
        let books = Books::from([("u-rio".to_owned(), (1, 30))]);
        let outcome = day_where_billing_has(&["e1"], books);
        let failed: Vec<&str> = outcome
            .checks()
            .into_iter()
            .filter(|(_, holds)| !holds)
            .map(|(check, _)| check)
            .collect();
        assert_eq!(
            failed,
            [
                "Billing has every payout Accounts booked, once",
                "Billing's books equal Accounts' payouts"
            ]
        );
    }
}
