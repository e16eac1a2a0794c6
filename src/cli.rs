//! Command-line interface: what each subcommand is and which module runs it.

use clap::{Parser, Subcommand, ValueEnum};

use anika_shared::{
    config::Config,
    domain::{Role, SubscriptionId},
};
use chrono::{DateTime, Utc};

/// A failure of a command, with its cause chain.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// anika: an event broker for partner companies.
#[derive(Debug, Parser)]
#[command(name = "anika", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in one process, all routes on ANIKA_LISTEN.
    Up,
    /// Run one role alone (for deployments that scale roles separately).
    Serve {
        /// The role.
        #[arg(value_enum)]
        role: ServeRole,
    },
    /// Create the database if missing and apply the migrations, then exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// Manage token signing keys.
    #[command(subcommand, name = "signing-keys")]
    SigningKeys(SigningKeysCommand),
    /// The main keys that seal signing keys and webhook secrets at rest (ANIKA_SECRET_KEYS).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Re-deliver events of a time window from the event log to one subscription.
    Replay {
        /// The subscription.
        #[arg(long)]
        subscription: SubscriptionId,
        /// From this time (RFC 3339, inclusive).
        #[arg(long)]
        since: DateTime<Utc>,
        /// Until this time (RFC 3339, exclusive; default: now).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput and latency through the public API (runs `anika-bench`, built
    /// beside this binary; `anika bench --help` lists its options).
    #[command(disable_help_flag = true)]
    Bench {
        /// Passed to `anika-bench` as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Print the audit log, newest first: who changed what in the catalog, who replayed or purged what.
    Audit {
        /// Only this action, e.g. `grant.created` or `dead_letters.replayed`.
        #[arg(long)]
        action: Option<anika_shared::audit::Action>,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<anika_shared::domain::Timestamp>,
        /// At most this many entries (1–1000).
        #[arg(long, default_value = "50", value_parser = parse_limit)]
        limit: anika_shared::page::Limit,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List subscriptions with their health: failing, disabled, queued and dead-lettered messages.
    Subscriptions {
        /// Only these.
        #[arg(long, value_enum)]
        status: Option<crate::ops::HealthFilter>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Subscriptions with dead letters, or one subscription's dead letters.
    List {
        /// Show this subscription's dead letters.
        #[arg(long)]
        subscription: Option<SubscriptionId>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to delivery with a fresh attempt budget.
    Replay {
        /// The subscription.
        #[arg(long)]
        subscription: SubscriptionId,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Drop every dead letter of a subscription.
    Purge {
        /// The subscription.
        #[arg(long)]
        subscription: SubscriptionId,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A role of `anika serve`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ServeRole {
    /// Partners, keys, tokens, topics, grants, subscriptions.
    Catalog,
    /// Event intake, the event log, the outbox relay.
    Ingest,
    /// Webhook delivery, retries, dead letters, replays.
    Dispatcher,
}

#[derive(Debug, Subcommand)]
enum ApiKeysCommand {
    /// Print a new API key (shown once).
    Create {
        /// operator, admin or publisher.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The partner the key belongs to (admin and publisher keys).
        #[arg(long)]
        partner: Option<anika_shared::domain::PartnerId>,
        /// A name to recognise the key by.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Open every stored secret with ANIKA_SECRET_KEYS; exits non-zero if any does not open.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap every stored data key under the ring's first key, online; then the other keys may go.
    RotateMainKey {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a ring entry `id:base64key` with a fresh random key, to put first in ANIKA_SECRET_KEYS.
    NewKey {
        /// The new key's id (letters, digits, `_`, `-`; at most 32).
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum SigningKeysCommand {
    /// Start signing tokens with a new key; tokens of the previous key stay valid until they expire.
    Rotate,
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

fn parse_limit(text: &str) -> Result<anika_shared::page::Limit, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    anika_shared::page::Limit::parse(n)
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> Result<(), CliError> {
        let config = Config::load()?;
        anika_shared::telemetry::init(config.log_format);
        match self.command {
            Command::Up => crate::serve::up(config).await,
            Command::Serve { role } => crate::serve::serve(config, role).await,
            Command::Migrate => crate::admin::migrate(&config).await,
            Command::ApiKeys(ApiKeysCommand::Create {
                role,
                partner,
                name,
            }) => crate::admin::create_api_key(&config, role, partner, &name).await,
            Command::SigningKeys(SigningKeysCommand::Rotate) => {
                crate::admin::rotate_signing_key(&config).await
            }
            Command::Secrets(SecretsCommand::Check { json }) => {
                crate::secrets::check(&config, json).await
            }
            Command::Secrets(SecretsCommand::RotateMainKey { json }) => {
                crate::secrets::rotate_main_key(&config, json).await
            }
            Command::Secrets(SecretsCommand::NewKey { id }) => crate::secrets::new_key(&id),
            Command::Dlq(DlqCommand::List { subscription, json }) => {
                crate::ops::dlq_list(&config, subscription, json).await
            }
            Command::Dlq(DlqCommand::Replay {
                subscription,
                limit,
                json,
            }) => crate::ops::dlq_replay(&config, subscription, limit, json).await,
            Command::Dlq(DlqCommand::Purge { subscription, json }) => {
                crate::ops::dlq_purge(&config, subscription, json).await
            }
            Command::Replay {
                subscription,
                since,
                until,
                json,
            } => crate::ops::replay(&config, subscription, since, until, json).await,
            Command::Bench { args } => crate::bench::exec(&args),
            Command::Audit {
                action,
                since,
                limit,
                json,
            } => crate::ops::audit_log(&config, action, since, limit, json).await,
            Command::Subscriptions { status, json } => {
                crate::ops::subscriptions(&config, status, json).await
            }
        }
    }
}
