//! Operator commands: dead letters, replay from the log, subscription health, the audit log.
//!
//! They talk to PostgreSQL and RabbitMQ directly (no token needed on the
//! operator's own machine) through the same library functions as the API.
//! What they change is in the audit log like the API's changes, with the
//! command line as the actor (role operator, no API key, no partner).
//! Tables by default, JSON with `--json`; long runs show a progress bar with
//! rate and ETA on a terminal and plain lines otherwise.

#![allow(clippy::print_stdout)] // printing results is what these commands are for

use std::{
    io::IsTerminal,
    sync::Arc,
    time::{Duration, Instant},
};

use anika_dispatcher::recovery::{LogReplay, LogSlice, Window, purge_audited};
use anika_shared::{
    amqp::{Broker, Topology, dead_letter_queue, subscription_queue},
    audit::{self, Action, Actor, Target},
    config::Config,
    db,
    domain::{SubscriptionId, SubscriptionStatus, Timestamp},
    envelope::format_time,
    page::Limit,
    store::{attempts, events, subscriptions},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cli::CliError;

/// The database and broker an operator command works on.
pub struct Ops {
    pool: PgPool,
    broker: Arc<Broker>,
}

impl Ops {
    /// Connects with the process configuration.
    pub async fn connect(config: &Config) -> Result<Self, CliError> {
        let pool = db::connect_and_migrate(config.database_url.expose(), 4).await?;
        let topology = Topology {
            queue_type: config.queue_type,
            retry_schedule: config.retry_schedule.clone(),
        };
        let broker = Broker::new(config.amqp_url.expose(), "anika cli", topology)?;
        Ok(Self { pool, broker })
    }

    async fn queue_depth(&self, queue: &str) -> Option<u32> {
        self.broker.message_count(queue).await
    }
}

impl Ops {
    /// Records what a command did to a subscription, with the command line as the actor.
    /// The operation already happened; a failure to record it is an error the operator sees.
    async fn audit(
        &self,
        subscription: SubscriptionId,
        action: Action,
        changes: audit::Changes,
    ) -> Result<(), CliError> {
        let partner =
            subscriptions::get_subscription_partner(&self.pool, subscription.uuid()).await?;
        let partner = partner.ok_or_else(|| format!("no subscription {subscription}"))?;
        audit::record_result(
            &self.pool,
            &Actor::cli(),
            action,
            &Target::subscription(subscription, partner.into()),
            changes,
        )
        .await
        .map_err(|e| format!("done, but the audit entry could not be written: {e}"))?;
        Ok(())
    }
}

/// Prints rows as an aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

fn print_json(value: &impl Serialize) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A webhook URL as the CLI shows it: any `user:password@` replaced by `***@`, since
/// operators paste this output into tickets and chats.
fn shown_url(url: &str) -> String {
    audit::url_without_credentials(url)
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

/// Reports progress: a bar with rate and ETA on a terminal, a plain line per step otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    total: u64,
    verb: &'static str,
}

impl Progress {
    fn new(total: u64, verb: &'static str) -> Self {
        let bar = (std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(verb);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            total,
            verb,
        }
    }

    fn update(&self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let seconds = self.started.elapsed().as_secs_f64().max(0.001);
                eprintln!(
                    "{} {done}/{} ({:.0}/s)",
                    self.verb,
                    self.total,
                    done as f64 / seconds
                );
            }
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// How many dead letters `anika dlq list --subscription` shows at most.
const DEAD_LETTERS_SHOWN: i64 = 1000;

/// `anika dlq list [--subscription ID]`.
pub async fn dlq_list(
    config: &Config,
    subscription: Option<SubscriptionId>,
    json: bool,
) -> Result<(), CliError> {
    let ops = Ops::connect(config).await?;
    match subscription {
        None => {
            let rows = attempts::list_dead_letter_summaries(&ops.pool).await?;
            let rows: Vec<attempts::DeadLetterSummary> = rows
                .into_iter()
                .map(|r| attempts::DeadLetterSummary {
                    url: shown_url(&r.url),
                    ..r
                })
                .collect();
            if json {
                return print_json(&rows);
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.subscription_id.to_string(),
                        r.partner.clone(),
                        r.topic.clone(),
                        r.dead_letters.to_string(),
                        format_time(r.oldest),
                        cut(&r.url, 50),
                    ]
                })
                .collect();
            table(
                &[
                    "subscription",
                    "partner",
                    "topic",
                    "dead letters",
                    "oldest",
                    "url",
                ],
                &cells,
            );
        }
        Some(id) => {
            // The newest page, as the API's first page of the same list.
            let rows =
                attempts::list_dead_letters(&ops.pool, id.uuid(), None, DEAD_LETTERS_SHOWN).await?;
            let in_queue = ops.queue_depth(&dead_letter_queue(id)).await;
            if json {
                return print_json(
                    &json!({"subscription_id": id, "in_queue": in_queue, "items": rows}),
                );
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.event_id.to_string(),
                        r.attempts.to_string(),
                        format_time(r.dead_at),
                        cut(&r.last_error, 70),
                    ]
                })
                .collect();
            table(&["event", "attempts", "dead at", "last error"], &cells);
            eprintln!(
                "{} in the dead-letter queue",
                in_queue.map_or("?".to_owned(), |n| n.to_string())
            );
        }
    }
    Ok(())
}

/// `anika dlq replay --subscription ID [--limit N]`.
pub async fn dlq_replay(
    config: &Config,
    subscription: SubscriptionId,
    limit: Option<u64>,
    json: bool,
) -> Result<(), CliError> {
    let ops = Ops::connect(config).await?;
    let waiting = u64::from(
        ops.queue_depth(&dead_letter_queue(subscription))
            .await
            .unwrap_or(0),
    );
    let total = limit.map_or(waiting, |l| l.min(waiting));
    let progress = Progress::new(total, "replaying dead letters");
    let outcome = anika_dispatcher::recovery::replay_dead_letters(
        &ops.pool,
        &ops.broker,
        subscription,
        limit,
        &|n| progress.update(n),
    )
    .await?;
    progress.finish();
    ops.audit(
        subscription,
        Action::DeadLettersReplayed,
        outcome.audited(limit),
    )
    .await?;
    let (replayed, kept) = (outcome.replayed, outcome.kept);
    if json {
        print_json(&json!({"subscription_id": subscription, "replayed": replayed, "kept": kept}))
    } else {
        println!("replayed {replayed} dead letters of {subscription} with a fresh attempt budget");
        if kept > 0 {
            println!(
                "the broker refused {kept}; they stay dead-lettered (is the subscription queue full?)"
            );
        }
        Ok(())
    }
}

/// `anika dlq purge --subscription ID`.
pub async fn dlq_purge(
    config: &Config,
    subscription: SubscriptionId,
    json: bool,
) -> Result<(), CliError> {
    let ops = Ops::connect(config).await?;
    let purged =
        anika_dispatcher::recovery::purge_dead_letters(&ops.pool, &ops.broker, subscription)
            .await?;
    ops.audit(
        subscription,
        Action::DeadLettersPurged,
        purge_audited(purged),
    )
    .await?;
    if json {
        print_json(&json!({"subscription_id": subscription, "purged": purged}))
    } else {
        println!("purged {purged} dead letters of {subscription}");
        Ok(())
    }
}

/// `anika replay --subscription ID --since T [--until T]`.
pub async fn replay(
    config: &Config,
    subscription: SubscriptionId,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    json: bool,
) -> Result<(), CliError> {
    let until = until.unwrap_or_else(Utc::now);
    let window = Window::new(since, until, config.dispatcher.max_replay_window)
        .map_err(|e| CliError::from(format!("--since/--until: {e}")))?;
    let ops = Ops::connect(config).await?;
    let total = events::count_replay_events(&ops.pool, subscription.uuid(), since, until).await?;
    let progress = Progress::new(total.max(0) as u64, "re-delivering events");
    let how = LogReplay {
        database_url: config.database_url.expose(),
        rate_per_s: config.dispatcher.replay_rate_per_s,
    };
    let outcome = anika_dispatcher::recovery::replay_log(
        &ops.pool,
        &ops.broker,
        &how,
        LogSlice {
            subscription,
            window,
        },
        &|n| progress.update(n),
    )
    .await?;
    progress.finish();
    ops.audit(
        subscription,
        Action::EventsReplayed,
        outcome.audited(&window),
    )
    .await?;
    let (enqueued, refused) = (outcome.enqueued, outcome.refused);
    if json {
        print_json(
            &json!({"subscription_id": subscription, "enqueued": enqueued, "refused": refused, "since": since, "until": until}),
        )
    } else {
        println!(
            "enqueued {enqueued} events of [{}, {}) for {subscription}",
            format_time(since),
            format_time(until)
        );
        if refused > 0 {
            println!("the broker refused one and the replay stopped there; run it again later");
        }
        Ok(())
    }
}

/// Which subscriptions `anika subscriptions` lists.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HealthFilter {
    /// Active, but every recent delivery failed.
    Failing,
    /// Disabled by the server (410, or failing too long).
    Disabled,
    /// Paused by their owner.
    Paused,
    /// Active.
    Active,
}

impl HealthFilter {
    /// The status it lists, and whether only the failing ones of those.
    fn condition(self) -> (SubscriptionStatus, bool) {
        match self {
            Self::Failing => (SubscriptionStatus::Active, true),
            Self::Disabled => (SubscriptionStatus::Disabled, false),
            Self::Paused => (SubscriptionStatus::Paused, false),
            Self::Active => (SubscriptionStatus::Active, false),
        }
    }
}

#[derive(Serialize)]
struct SubscriptionRow {
    id: Uuid,
    partner: String,
    topic: String,
    url: String,
    status: SubscriptionStatus,
    disabled_reason: Option<String>,
    failing_since: Option<DateTime<Utc>>,
    dead_letters: i64,
    queued: Option<u32>,
}

impl From<attempts::SubscriptionHealthRow> for SubscriptionRow {
    fn from(row: attempts::SubscriptionHealthRow) -> Self {
        Self {
            id: row.id,
            partner: row.partner,
            topic: row.topic,
            url: row.url,
            status: row.status,
            disabled_reason: row.disabled_reason,
            failing_since: row.failing_since,
            dead_letters: row.dead_letters,
            queued: None,
        }
    }
}

/// `anika subscriptions [--status …]`.
pub async fn subscriptions(
    config: &Config,
    status: Option<HealthFilter>,
    json: bool,
) -> Result<(), CliError> {
    let ops = Ops::connect(config).await?;
    let condition = status.map(HealthFilter::condition);
    let rows = attempts::list_subscription_health(
        &ops.pool,
        condition.map(|(status, _)| status),
        condition.is_some_and(|(_, failing_only)| failing_only),
    )
    .await?;
    let mut rows: Vec<SubscriptionRow> = rows.into_iter().map(SubscriptionRow::from).collect();
    for row in &mut rows {
        row.queued = ops.queue_depth(&subscription_queue(row.id.into())).await;
        row.url = shown_url(&row.url);
    }
    if json {
        return print_json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.partner.clone(),
                r.topic.clone(),
                r.status.to_string(),
                r.failing_since.map(format_time).unwrap_or_default(),
                r.queued.map_or("?".to_owned(), |q| q.to_string()),
                r.dead_letters.to_string(),
                cut(&r.url, 40),
                r.disabled_reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "subscription",
            "partner",
            "topic",
            "status",
            "failing since",
            "queued",
            "dead",
            "url",
            "reason",
        ],
        &cells,
    );
    Ok(())
}

/// `anika audit [--action A] [--since T] [--limit N]`: newest first, everything (the CLI is an operator).
pub async fn audit_log(
    config: &Config,
    action: Option<Action>,
    since: Option<Timestamp>,
    limit: Limit,
    json: bool,
) -> Result<(), CliError> {
    let pool = db::connect_and_migrate(config.database_url.expose(), 2).await?;
    let filter = audit::Filter {
        action,
        since: since.map(Timestamp::get),
        ..audit::Filter::default()
    };
    let entries = audit::list(
        &pool,
        audit::Visibility::Everything,
        &filter,
        None,
        i64::from(limit.get()),
    )
    .await?;
    if json {
        return print_json(&entries);
    }
    let cells: Vec<Vec<String>> = entries.iter().map(audit_row).collect();
    table(&["at", "action", "target", "actor", "changes"], &cells);
    Ok(())
}

/// One entry as a table row: the actor as its role and key (or `cli`), the changes as compact JSON.
fn audit_row(entry: &audit::Entry) -> Vec<String> {
    let actor = &entry.actor;
    let who = match (actor.api_key_id(), actor.partner_id()) {
        (None, _) if actor.role() == audit::ActorRole::System => "anika (system)".to_owned(),
        (None, _) => "cli (operator)".to_owned(),
        (Some(key), None) => format!("{} key {key}", actor.role()),
        (Some(key), Some(partner)) => format!("{} key {key} of {partner}", actor.role()),
    };
    vec![
        format_time(entry.at),
        entry.action.clone(),
        format!("{} {}", entry.target.kind, entry.target.id),
        who,
        cut(&entry.changes.to_string(), 80),
    ]
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn a_webhook_urls_credentials_are_never_shown() {
        assert_eq!(
            shown_url("https://bank:hunter2@hooks.example/in?x=1"),
            "https://***@hooks.example/in?x=1"
        );
        assert_eq!(
            shown_url("https://bank@hooks.example/"),
            "https://***@hooks.example/"
        );
        assert_eq!(
            shown_url("https://hooks.example/in"),
            "https://hooks.example/in"
        );
    }
}
