//! The one typed configuration: defaults, then an optional `anika.toml`, then `ANIKA_*` variables.
//!
//! Everything is parsed once, here, into types that cannot hold a bad value;
//! the rest of the program never re-checks a setting.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{domain::MaxInFlight, secrets::KeyRing};

/// A value that must never be printed (URLs with passwords, API keys).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a connection URL points, without its password (for logs and banners); each
/// entry of a comma-separated list (a cluster's nodes) on its own.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url
            .split(',')
            .map(|entry| redact_url(entry.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Cannot fail: a URL with a password has a host.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// How RabbitMQ stores a subscription's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated Raft queues (RabbitMQ ≥ 3.8): the default, survives node loss in a cluster.
    Quorum,
    /// Classic mirrored-or-not queues, for brokers without quorum queues.
    Classic,
}

impl FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            other => Err(format!("`{other}` is not a queue type (quorum or classic)")),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human lines on a terminal, JSON otherwise.
    Auto,
    /// Always human-readable lines.
    Text,
    /// Always one JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "`{other}` is not a log format (auto, text or json)"
            )),
        }
    }
}

/// The delays between delivery attempts: attempt n+1 waits `delays[n-1]`.
///
/// Delays never shrink but may repeat (`5s,1m,10m,1h,12h,12h,12h`: "then every 12 h",
/// the shape Svix and Hook0 ship); a repeated delay reuses its tier's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// The delays, shortest first, repeats included (one per retry).
    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// The distinct delays: one retry queue each.
    pub fn tiers(&self) -> Vec<Duration> {
        let mut tiers = self.0.clone();
        tiers.dedup();
        tiers
    }

    /// The delay before attempt `next_attempt` (2 for the first retry), clamped to the last tier.
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let index = (next_attempt.saturating_sub(2) as usize).min(self.0.len() - 1);
        self.0[index]
    }

    /// The smallest tier at least as long as `wanted` (the longest if none is).
    pub fn tier_at_least(&self, wanted: Duration) -> Duration {
        self.0
            .iter()
            .copied()
            .find(|d| *d >= wanted)
            .unwrap_or(self.0[self.0.len() - 1])
    }

    /// Default `max_attempts` for a subscription: one first try plus one per tier.
    pub fn default_max_attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }
}

impl FromStr for RetrySchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut delays = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let delay = parse_duration(part)?;
            if delay.is_zero() {
                return Err("retry delays must be longer than zero".into());
            }
            delays.push(delay);
        }
        if delays.is_empty() {
            return Err("the retry schedule needs at least one delay".into());
        }
        if let Some(pair) = delays.windows(2).find(|pair| pair[1] < pair[0]) {
            return Err(format!(
                "retry delays must not shrink (`{}` after `{}`; e.g. 5s,30s,2m,12h,12h)",
                format_delay(pair[1]),
                format_delay(pair[0])
            ));
        }
        Ok(Self(delays))
    }
}

/// Formats a delay the way queue names carry it: `250ms`, `5s`, `2m`, `3h`.
pub fn format_delay(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration ({e})"))
}

/// The whole configuration of an anika process.
#[derive(Clone, Debug)]
pub struct Config {
    /// `ANIKA_LISTEN`: the HTTP address of the API (all routes on one port in `anika up`).
    pub listen: SocketAddr,
    /// `ANIKA_DATABASE_URL`: PostgreSQL; the database is created if missing.
    pub database_url: Secret,
    /// `ANIKA_DATABASE_POOL`: connections per process.
    pub database_pool: u32,
    /// `ANIKA_AMQP_URL`: RabbitMQ; the vhost in the URL isolates an installation.
    pub amqp_url: Secret,
    /// `ANIKA_QUEUE_TYPE`: `quorum` (default) or `classic` for subscription queues.
    pub queue_type: QueueType,
    /// `ANIKA_ALLOWED_TARGET_NETS`: CIDRs exempt from the private-address block for webhook URLs.
    pub allowed_target_nets: Vec<IpNet>,
    /// `ANIKA_RETRY_SCHEDULE`: delays between delivery attempts.
    pub retry_schedule: RetrySchedule,
    /// `ANIKA_LOG_FORMAT`: `auto`, `text` or `json`.
    pub log_format: LogFormat,
    /// `ANIKA_PUBLIC_URL`: how clients reach the API (for the start-up banner).
    pub public_url: Option<String>,
    /// `ANIKA_SHUTDOWN_GRACE`: how long in-flight deliveries may finish at shutdown.
    pub shutdown_grace: Duration,
    /// `ANIKA_REQUEST_READ_TIMEOUT`: a request body must have arrived whole within this time.
    pub request_read_timeout: Duration,
    /// `ANIKA_MAX_REQUESTS_IN_FLIGHT`: `/v1` requests handled at once; more get a 503.
    pub max_requests_in_flight: usize,
    /// `ANIKA_MAX_BODY_BYTES_IN_FLIGHT`: request body bytes held at once; more get a 503.
    pub max_body_bytes_in_flight: usize,
    /// `ANIKA_SHED_TARGET`: a queue stands when more than a tenth of the `/v1` requests of an
    /// interval took longer (see [`crate::edge`]); zero turns load shedding off.
    pub shed_target: Duration,
    /// `ANIKA_SECRET_KEYS`: the main keys that seal signing keys and webhook secrets at rest
    /// (`id:base64key,…`; the first seals, all open). Unset, the roles refuse to start
    /// (see [`crate::context::StartError::NoSecretKeys`]); tools that touch no secret run without.
    pub secret_keys: Option<KeyRing>,
    /// What the catalog role reads: the bootstrap key, tokens and the console.
    pub catalog: CatalogConfig,
    /// What the ingest role reads: event and batch limits, the backlog bound, the relay, retention.
    pub ingest: IngestConfig,
    /// What the dispatcher role reads: delivery, isolation, health, replay and its gauges.
    pub dispatcher: DispatcherConfig,
}

/// What the catalog role reads: the bootstrap key, tokens and the console.
#[derive(Clone, Debug)]
pub struct CatalogConfig {
    /// `ANIKA_BOOTSTRAP_OPERATOR_KEY`: an operator API key that exists after start-up.
    pub bootstrap_operator_key: Option<Secret>,
    /// `ANIKA_TOKEN_ISSUER`: the `iss` of access tokens.
    pub token_issuer: String,
    /// `ANIKA_TOKEN_AUDIENCE`: the `aud` of access tokens.
    pub token_audience: String,
    /// `ANIKA_ACCESS_TOKEN_TTL`: lifetime of access tokens (at most 15 minutes).
    pub access_token_ttl: Duration,
    /// `ANIKA_REFRESH_TOKEN_TTL`: lifetime of refresh tokens.
    pub refresh_token_ttl: Duration,
    /// `ANIKA_CONSOLE_API_URL`: the `/v1` base URL the web console calls (unset: the
    /// process's own listener; behind a load balancer, point it at the balancer).
    pub console_api_url: Option<String>,
}

/// What the ingest role reads: event and batch limits, the backlog bound, the relay, retention.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// `ANIKA_MAX_EVENT_BYTES`: the largest accepted event body.
    pub max_event_bytes: usize,
    /// `ANIKA_MAX_BATCH_BYTES`: the largest accepted batch body.
    pub max_batch_bytes: usize,
    /// `ANIKA_MAX_BACKLOG`: unpublished events (outbox rows) past which ingest answers 503.
    ///
    /// 1,000,000 by default: a bound for RabbitMQ being away or slower than the clients for
    /// minutes (a million outbox rows take ~120 MB with their indexes; the events are kept anyway),
    /// not for a burst: 100,000 was reached by ten seconds of batch ingest at 30,000 events/s
    /// against RabbitMQ's 28,000 confirmed publishes/s, refusing what the outbox could hold.
    pub max_backlog: u64,
    /// `ANIKA_RETENTION`: how long the event log and attempt records are kept.
    pub retention: Duration,
    /// `ANIKA_AUDIT_RETENTION`: how long audit-log entries are kept; default and
    /// minimum: `ANIKA_RETENTION` (an entry must outlive the events it explains).
    pub audit_retention: Duration,
    /// `ANIKA_OUTBOX_RELAY_INTERVAL`: how often the relay looks for outbox rows left behind.
    pub outbox_relay_interval: Duration,
    /// `ANIKA_OUTBOX_RELAY_AFTER`: an outbox row older than this counts as left behind.
    pub outbox_relay_after: Duration,
    /// `ANIKA_MAINTENANCE_INTERVAL`: how often partitions are made ahead and retention runs.
    pub maintenance_interval: Duration,
}

/// What the dispatcher role reads: delivery, isolation, health, replay and its gauges.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// `ANIKA_HTTP_CONNECT_TIMEOUT`: connect timeout of webhook deliveries.
    pub http_connect_timeout: Duration,
    /// `ANIKA_HTTP_TIMEOUT`: total timeout of one webhook delivery.
    pub http_timeout: Duration,
    /// `ANIKA_DISPATCH_CONCURRENCY`: webhook requests in flight per dispatcher process.
    pub dispatch_concurrency: usize,
    /// `ANIKA_PREFETCH`: unacknowledged messages per unordered subscription consumer.
    pub prefetch: u16,
    /// `ANIKA_SUBSCRIPTION_MAX_IN_FLIGHT`: requests in flight per subscription when it sets no `max_in_flight`.
    pub subscription_max_in_flight: MaxInFlight,
    /// `ANIKA_MAX_RETRY_AFTER`: the longest `Retry-After` an endpoint can make a retry wait.
    pub max_retry_after: Duration,
    /// `ANIKA_SYSTEM_NOTICE_INTERVAL`: at most one `dead_letter.added` per subscription this often.
    pub system_notice_interval: Duration,
    /// `ANIKA_CIRCUIT_BREAKER_AFTER`: consecutive failures after which a subscription's consumer backs off.
    pub circuit_breaker_after: u32,
    /// `ANIKA_DISABLE_AFTER`: an endpoint failing continuously this long is disabled.
    pub disable_after: Duration,
    /// `ANIKA_RECONCILE_INTERVAL`: how often the dispatcher re-reads the whole catalog (and, when under 15 s, the queue gauges).
    pub reconcile_interval: Duration,
    /// `ANIKA_MAX_REPLAY_WINDOW`: the longest window one replay from the log may cover.
    pub max_replay_window: Duration,
    /// `ANIKA_REPLAY_RATE_PER_S`: events per second a replay from the log publishes at most.
    pub replay_rate_per_s: u32,
    /// `ANIKA_METRICS_PER_SUBSCRIPTION`: also export gauges labelled by subscription id
    /// (queue depth, dead letters). Off by default: one series per subscription grows
    /// without bound with the partners' subscriptions, and its label names them to any scraper.
    pub metrics_per_subscription: bool,
}

/// A setting that could not be understood; names the variable.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// One setting as an operator sees it (see [`SETTINGS`]).
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The key in `anika.toml`; the variable is `ANIKA_` and the key in upper case.
    pub key: &'static str,
    /// The default, as text parsed like a value that was set; `None`: unset.
    pub default: Option<&'static str>,
    /// What an unset value means, for a setting without a default.
    pub unset: &'static str,
    /// The roles that read it.
    pub roles: &'static str,
    /// What it does.
    pub about: &'static str,
}

impl Setting {
    /// The environment variable: `ANIKA_` and the key in upper case.
    pub fn variable(&self) -> String {
        format!("ANIKA_{}", self.key.to_uppercase())
    }

    /// Where [`Config`] holds it: `None` at the top (read by several roles), or the one
    /// role's group (`Some("dispatcher")` for `config.dispatcher.prefetch`).
    pub fn group(&self) -> Option<&'static str> {
        ["catalog", "ingest", "dispatcher"]
            .into_iter()
            .find(|role| self.roles == *role)
    }
}

/// The default of a declared setting (`None`: it has none).
fn default_of(key: &str) -> Option<&'static str> {
    match SETTINGS.iter().find(|s| s.key == key) {
        Some(setting) => setting.default,
        // Every key read below is declared; the unit tests read them all.
        None => panic!("the setting `{key}` is read but not declared in SETTINGS"),
    }
}

/// Every setting: its key, its default, the roles that read it and what it means.
///
/// The defaults [`Config::load`] applies and the README's configuration table both come
/// from here (`tests/docs` checks the README against it).
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        default: Some("127.0.0.1:8080"),
        unset: "",
        roles: "every role",
        about: "HTTP address (all routes on one port in `anika up`)",
    },
    Setting {
        key: "database_url",
        default: Some("postgres://localhost/anika"),
        unset: "",
        roles: "every role",
        about: "PostgreSQL; the database is created if missing, migrations run at start",
    },
    Setting {
        key: "amqp_url",
        default: Some("amqp://guest:guest@127.0.0.1:5672/%2f"),
        unset: "",
        roles: "every role",
        about: "RabbitMQ (the vhost isolates an installation)",
    },
    Setting {
        key: "bootstrap_operator_key",
        default: None,
        unset: "unset",
        roles: "catalog",
        about: "an operator API key with this value exists after start-up",
    },
    Setting {
        key: "secret_keys",
        default: None,
        unset: "unset: the roles refuse to start (`scripts/up` keeps one in `.anika/secret-keys`)",
        roles: "every role",
        about: "the main-key ring that seals signing keys and webhook secrets in PostgreSQL: `id:base64key,…` (32-byte keys; the first seals, all open); see docs/operations.md, *Secrets at rest*",
    },
    Setting {
        key: "allowed_target_nets",
        default: None,
        unset: "empty",
        roles: "catalog, dispatcher",
        about: "CIDRs exempt from the private-address block for webhook URLs",
    },
    Setting {
        key: "retry_schedule",
        default: Some("5s,30s,2m,10m,30m,1h,3h,6h,12h"),
        unset: "",
        roles: "catalog, dispatcher",
        about: "delays between attempts, never shrinking; a repeated delay (`…,12h,12h,12h`) is one more retry in the same tier (one delay queue per distinct delay)",
    },
    Setting {
        key: "max_event_bytes",
        default: Some("262144"),
        unset: "",
        roles: "ingest",
        about: "largest accepted event body (413 above)",
    },
    Setting {
        key: "max_batch_bytes",
        default: Some("16777216"),
        unset: "",
        roles: "ingest",
        about: "largest accepted batch body",
    },
    Setting {
        key: "max_backlog",
        default: Some("1000000"),
        unset: "",
        roles: "ingest",
        about: "unpublished events (outbox rows) past which ingest answers 503 with `Retry-After` instead of accepting more",
    },
    Setting {
        key: "request_read_timeout",
        default: Some("10s"),
        unset: "",
        roles: "every role",
        about: "a request body must arrive whole within this time (408 otherwise)",
    },
    Setting {
        key: "max_requests_in_flight",
        default: Some("4096"),
        unset: "",
        roles: "every role",
        about: "`/v1` requests handled at once per process; more get 503 with `Retry-After`",
    },
    Setting {
        key: "max_body_bytes_in_flight",
        default: Some("268435456"),
        unset: "",
        roles: "every role",
        about: "request body bytes held at once per process (at least `ANIKA_MAX_BATCH_BYTES`); more get 503",
    },
    Setting {
        key: "shed_target",
        default: Some("25ms"),
        unset: "",
        roles: "every role",
        about: "load shedding: when more than a tenth of the `/v1` requests of 100 ms took longer than this, only what their rate serves within it is admitted at once (rate × target, at least 64) and the rest get 503 with `Retry-After`; `0s` turns it off",
    },
    Setting {
        key: "queue_type",
        default: Some("quorum"),
        unset: "",
        roles: "catalog, dispatcher",
        about: "`quorum` or `classic` subscription queues",
    },
    Setting {
        key: "database_pool",
        default: Some("16"),
        unset: "",
        roles: "every role",
        about: "PostgreSQL connections per process",
    },
    Setting {
        key: "token_issuer",
        default: Some("anika"),
        unset: "",
        roles: "catalog",
        about: "`iss` of access tokens",
    },
    Setting {
        key: "token_audience",
        default: Some("anika-api"),
        unset: "",
        roles: "catalog",
        about: "`aud` of access tokens",
    },
    Setting {
        key: "access_token_ttl",
        default: Some("15m"),
        unset: "",
        roles: "catalog",
        about: "access-token lifetime (10 s – 15 min)",
    },
    Setting {
        key: "refresh_token_ttl",
        default: Some("30days"),
        unset: "",
        roles: "catalog",
        about: "refresh-token lifetime",
    },
    Setting {
        key: "http_connect_timeout",
        default: Some("5s"),
        unset: "",
        roles: "dispatcher",
        about: "webhook connect timeout",
    },
    Setting {
        key: "http_timeout",
        default: Some("15s"),
        unset: "",
        roles: "dispatcher",
        about: "webhook total timeout (at least `ANIKA_HTTP_CONNECT_TIMEOUT`)",
    },
    Setting {
        key: "dispatch_concurrency",
        default: Some("512"),
        unset: "",
        roles: "dispatcher",
        about: "webhook requests in flight per process, shared fairly across partners",
    },
    Setting {
        key: "prefetch",
        default: Some("200"),
        unset: "",
        roles: "dispatcher",
        about: "unacknowledged messages per subscription consumer",
    },
    Setting {
        key: "subscription_max_in_flight",
        default: Some("32"),
        unset: "",
        roles: "dispatcher",
        about: "requests in flight to one subscription's endpoint when it sets no `max_in_flight` (1–1000)",
    },
    Setting {
        key: "max_retry_after",
        default: Some("1h"),
        unset: "",
        roles: "dispatcher",
        about: "the longest wait a `Retry-After` from an endpoint can impose before the next attempt",
    },
    Setting {
        key: "system_notice_interval",
        default: Some("1m"),
        unset: "",
        roles: "dispatcher",
        about: "at most one `dead_letter.added` operational event per subscription this often (it carries the count since the previous one)",
    },
    Setting {
        key: "circuit_breaker_after",
        default: Some("5"),
        unset: "",
        roles: "dispatcher",
        about: "consecutive failures before a subscription's deliveries back off (0: off)",
    },
    Setting {
        key: "disable_after",
        default: Some("5days"),
        unset: "",
        roles: "dispatcher",
        about: "an endpoint failing this long is disabled",
    },
    Setting {
        key: "retention",
        default: Some("30days"),
        unset: "",
        roles: "ingest",
        about: "event log and attempt records kept this long",
    },
    Setting {
        key: "audit_retention",
        default: None,
        unset: "`ANIKA_RETENTION`",
        roles: "ingest",
        about: "audit-log entries kept this long; never shorter than `ANIKA_RETENTION` (start-up refuses it)",
    },
    Setting {
        key: "outbox_relay_interval",
        default: Some("1s"),
        unset: "",
        roles: "ingest",
        about: "how often the outbox relay looks for unpublished events",
    },
    Setting {
        key: "outbox_relay_after",
        default: Some("5s"),
        unset: "",
        roles: "ingest",
        about: "how old an unpublished event must be before the relay publishes it",
    },
    Setting {
        key: "maintenance_interval",
        default: Some("1h"),
        unset: "",
        roles: "ingest",
        about: "partitions ahead, retention behind",
    },
    Setting {
        key: "reconcile_interval",
        default: Some("30s"),
        unset: "",
        roles: "dispatcher",
        about: "dispatcher re-reads the catalog (changes arrive at once via NOTIFY); queue-depth gauges are read every 15 s, or this often if shorter",
    },
    Setting {
        key: "shutdown_grace",
        default: Some("10s"),
        unset: "",
        roles: "every role",
        about: "in-flight deliveries may finish this long at shutdown",
    },
    Setting {
        key: "max_replay_window",
        default: Some("31days"),
        unset: "",
        roles: "dispatcher",
        about: "the longest window one replay from the log may cover (422 above)",
    },
    Setting {
        key: "replay_rate_per_s",
        default: Some("5000"),
        unset: "",
        roles: "dispatcher",
        about: "events per second a replay from the log publishes at most",
    },
    Setting {
        key: "metrics_per_subscription",
        default: Some("false"),
        unset: "",
        roles: "dispatcher",
        about: "also export queue-depth and dead-letter gauges labelled by subscription id (the sums are always there)",
    },
    Setting {
        key: "log_format",
        default: Some("auto"),
        unset: "",
        roles: "every role",
        about: "`auto` (human on a terminal, JSON otherwise), `text`, `json`; `RUST_LOG` sets levels",
    },
    Setting {
        key: "public_url",
        default: None,
        unset: "unset",
        roles: "every role",
        about: "the URL shown in the start-up banner; when it is https, the console's session cookie is `Secure`",
    },
    Setting {
        key: "console_api_url",
        default: None,
        unset: "unset (the process's own listener)",
        roles: "catalog",
        about: "the `/v1` base URL the web console calls; set it to the load balancer when the roles run as separate processes",
    },
];

/// What the sources give before parsing: every value as text, by key.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
struct Raw(std::collections::HashMap<String, String>);

impl Raw {
    /// The value set for `key`, if any.
    fn take(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// `key` parsed, its declared default when unset.
    fn setting<T>(&mut self, key: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let value = self.take(key);
        setting(key, value, default_of(key).unwrap_or_default())
    }

    /// `key` as a duration (`30s`, `5days`), its declared default when unset.
    fn duration(&mut self, key: &str) -> Result<Duration, ConfigError> {
        let value = self.take(key);
        duration_setting(key, value, default_of(key).unwrap_or_default())
    }

    /// `key` as text, its declared default when unset.
    fn text(&mut self, key: &str) -> String {
        self.take(key)
            .unwrap_or_else(|| default_of(key).unwrap_or_default().to_owned())
    }
}

/// Parses one setting or says which variable is wrong.
fn setting<T>(name: &str, value: Option<String>, default: &str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = value.unwrap_or_else(|| default.to_owned());
    text.trim()
        .parse()
        .map_err(|e| ConfigError(format!("ANIKA_{}: {e}", name.to_uppercase())))
}

fn duration_setting(
    name: &str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    parse_duration(text.trim())
        .map_err(|e| ConfigError(format!("ANIKA_{}: {e}", name.to_uppercase())))
}

impl Config {
    /// Loads defaults, then `anika.toml` (or the file named by `ANIKA_CONFIG`), then `ANIKA_*`.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var("ANIKA_CONFIG").unwrap_or_else(|_| "anika.toml".to_owned());
        let raw: Raw = config::Config::builder()
            .add_source(config::File::with_name(&file).required(false))
            .add_source(
                // ANIKA_DATABASE_URL becomes `database_url`; values stay text and are parsed below.
                config::Environment::with_prefix("ANIKA").prefix_separator("_"),
            )
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError(e.to_string()))?;
        Self::from_raw(raw)
    }

    /// The defaults alone, with the given overrides (`("retry_schedule", "10ms,20ms")`); for tests and tools.
    pub fn with_overrides<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut map = serde_json::Map::new();
        for (key, value) in pairs {
            map.insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
        }
        let raw: Raw = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| ConfigError(e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(mut raw: Raw) -> Result<Self, ConfigError> {
        let allowed_target_nets = raw
            .take("allowed_target_nets")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>().map_err(|e| {
                    ConfigError(format!(
                        "ANIKA_ALLOWED_TARGET_NETS: `{s}` is not a CIDR ({e})"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let access_token_ttl = raw.duration("access_token_ttl")?;
        if access_token_ttl > Duration::from_secs(15 * 60)
            || access_token_ttl < Duration::from_secs(10)
        {
            return Err(ConfigError(
                "ANIKA_ACCESS_TOKEN_TTL: must be between 10s and 15m".into(),
            ));
        }
        let retention = raw.duration("retention")?;
        let audit_retention = raw
            .take("audit_retention")
            .map(|text| duration_setting("audit_retention", Some(text), ""))
            .transpose()?;
        let audit_retention = audit_retention_for(retention, audit_retention)
            .map_err(|e| ConfigError(format!("ANIKA_AUDIT_RETENTION: {e}")))?;
        let console_api_url = match raw.take("console_api_url").filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(u) => {
                let parsed = url::Url::parse(u.trim()).map_err(|e| {
                    ConfigError(format!("ANIKA_CONSOLE_API_URL: `{u}` is not a URL ({e})"))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(ConfigError(format!(
                        "ANIKA_CONSOLE_API_URL: `{u}` must be an http(s) URL with a host"
                    )));
                }
                Some(u.trim().trim_end_matches('/').to_owned())
            }
        };
        let config = Self {
            listen: raw.setting("listen")?,
            database_url: Secret::new(raw.text("database_url")),
            database_pool: raw.setting("database_pool")?,
            amqp_url: Secret::new(raw.text("amqp_url")),
            queue_type: raw.setting("queue_type")?,
            allowed_target_nets,
            retry_schedule: raw.setting("retry_schedule")?,
            log_format: raw.setting("log_format")?,
            public_url: raw.take("public_url").filter(|u| !u.is_empty()),
            shutdown_grace: raw.duration("shutdown_grace")?,
            request_read_timeout: raw.duration("request_read_timeout")?,
            max_requests_in_flight: raw.setting("max_requests_in_flight")?,
            max_body_bytes_in_flight: raw.setting("max_body_bytes_in_flight")?,
            shed_target: raw.duration("shed_target")?,
            secret_keys: raw
                .take("secret_keys")
                .filter(|k| !k.trim().is_empty())
                .map(|k| KeyRing::parse(&k))
                .transpose()
                .map_err(|e| ConfigError(e.to_string()))?,
            catalog: CatalogConfig {
                bootstrap_operator_key: raw
                    .take("bootstrap_operator_key")
                    .filter(|k| !k.is_empty())
                    .map(Secret::new),
                token_issuer: raw.text("token_issuer"),
                token_audience: raw.text("token_audience"),
                access_token_ttl,
                refresh_token_ttl: raw.duration("refresh_token_ttl")?,
                console_api_url,
            },
            ingest: IngestConfig {
                max_event_bytes: raw.setting("max_event_bytes")?,
                max_batch_bytes: raw.setting("max_batch_bytes")?,
                max_backlog: raw.setting("max_backlog")?,
                retention,
                audit_retention,
                outbox_relay_interval: raw.duration("outbox_relay_interval")?,
                outbox_relay_after: raw.duration("outbox_relay_after")?,
                maintenance_interval: raw.duration("maintenance_interval")?,
            },
            dispatcher: DispatcherConfig {
                http_connect_timeout: raw.duration("http_connect_timeout")?,
                http_timeout: raw.duration("http_timeout")?,
                dispatch_concurrency: raw.setting("dispatch_concurrency")?,
                prefetch: raw.setting("prefetch")?,
                subscription_max_in_flight: raw.setting("subscription_max_in_flight")?,
                max_retry_after: raw.duration("max_retry_after")?,
                system_notice_interval: raw.duration("system_notice_interval")?,
                circuit_breaker_after: raw.setting("circuit_breaker_after")?,
                disable_after: raw.duration("disable_after")?,
                reconcile_interval: raw.duration("reconcile_interval")?,
                max_replay_window: raw.duration("max_replay_window")?,
                replay_rate_per_s: raw.setting("replay_rate_per_s")?,
                metrics_per_subscription: raw.setting("metrics_per_subscription")?,
            },
        };
        if config.dispatcher.replay_rate_per_s == 0 {
            return Err(ConfigError(
                "ANIKA_REPLAY_RATE_PER_S: must be positive".into(),
            ));
        }
        if config.ingest.max_event_bytes < 1024 {
            return Err(ConfigError(
                "ANIKA_MAX_EVENT_BYTES: must be at least 1024".into(),
            ));
        }
        if config.ingest.max_batch_bytes < config.ingest.max_event_bytes {
            return Err(ConfigError(
                "ANIKA_MAX_BATCH_BYTES: must be at least ANIKA_MAX_EVENT_BYTES".into(),
            ));
        }
        if config.dispatcher.dispatch_concurrency == 0
            || config.dispatcher.prefetch == 0
            || config.database_pool == 0
        {
            return Err(ConfigError(
                "ANIKA_DISPATCH_CONCURRENCY, ANIKA_PREFETCH and ANIKA_DATABASE_POOL must be positive".into(),
            ));
        }
        if config.ingest.max_backlog == 0
            || config.max_requests_in_flight == 0
            || config.request_read_timeout.is_zero()
        {
            return Err(ConfigError(
                "ANIKA_MAX_BACKLOG, ANIKA_MAX_REQUESTS_IN_FLIGHT and ANIKA_REQUEST_READ_TIMEOUT must be positive"
                    .into(),
            ));
        }
        if config.max_body_bytes_in_flight < config.ingest.max_batch_bytes {
            // Otherwise one largest allowed batch could never be read.
            return Err(ConfigError(
                "ANIKA_MAX_BODY_BYTES_IN_FLIGHT: must be at least ANIKA_MAX_BATCH_BYTES".into(),
            ));
        }
        if config.dispatcher.http_connect_timeout > config.dispatcher.http_timeout {
            return Err(ConfigError(
                "ANIKA_HTTP_CONNECT_TIMEOUT: must not exceed ANIKA_HTTP_TIMEOUT".into(),
            ));
        }
        Ok(config)
    }

    /// The base URL clients use, for banners and examples.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }
}

/// How long the audit log is kept: the event log's retention unless a longer one is set.
/// A shorter one is refused: an entry must outlive the events and deliveries it explains.
fn audit_retention_for(retention: Duration, audit: Option<Duration>) -> Result<Duration, String> {
    match audit {
        None => Ok(retention),
        Some(audit) if audit >= retention => Ok(audit),
        Some(audit) => Err(format!(
            "{} is shorter than ANIKA_RETENTION ({}); the audit log is kept at least as long as the event log",
            humantime::format_duration(audit),
            humantime::format_duration(retention)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_log_is_kept_as_long_as_the_event_log_or_longer() {
        let c = Config::with_overrides([("retention", "7days")]).unwrap();
        assert_eq!(c.ingest.audit_retention, Duration::from_secs(7 * 86_400));
        let c = Config::with_overrides([("retention", "7days"), ("audit_retention", "400days")])
            .unwrap();
        assert_eq!(c.ingest.audit_retention, Duration::from_secs(400 * 86_400));
        let err = Config::with_overrides([("retention", "7days"), ("audit_retention", "1day")])
            .unwrap_err();
        assert!(err.to_string().contains("ANIKA_AUDIT_RETENTION"), "{err}");
        assert!(
            Config::with_overrides([("audit_retention", "soon")]).is_err(),
            "not a duration"
        );
    }

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = Config::with_overrides([]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.retry_schedule.delays().len(), 9);
        assert_eq!(c.retry_schedule.default_max_attempts(), 10);
        assert_eq!(c.ingest.max_event_bytes, 262_144);
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert!(c.allowed_target_nets.is_empty());
        assert_eq!(c.dispatcher.subscription_max_in_flight.get(), 32);
        assert_eq!(c.dispatcher.max_retry_after, Duration::from_secs(3600));
        assert_eq!(c.ingest.max_backlog, 1_000_000);
        assert_eq!(c.request_read_timeout, Duration::from_secs(10));
        assert!(c.secret_keys.is_none(), "no built-in main key");
        assert_eq!(c.max_requests_in_flight, 4096);
        assert_eq!(c.max_body_bytes_in_flight, 256 << 20);
    }

    #[test]
    fn each_setting_lives_in_the_group_of_the_one_role_that_reads_it() {
        let c = Config::with_overrides([]).unwrap();
        let groups = [
            ("catalog", format!("{:?}", c.catalog)),
            ("ingest", format!("{:?}", c.ingest)),
            ("dispatcher", format!("{:?}", c.dispatcher)),
        ];
        for setting in SETTINGS {
            for (group, shown) in &groups {
                let field = |before: &str| format!("{before}{}: ", setting.key);
                let here = shown.contains(&field("{ ")) || shown.contains(&field(", "));
                assert_eq!(
                    here,
                    setting.group() == Some(*group),
                    "`{}` (read by {}) and Config::{group}",
                    setting.key,
                    setting.roles
                );
            }
        }
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = Config::with_overrides([("retry_schedule", "5s,soon")]).unwrap_err();
        assert!(err.to_string().contains("ANIKA_RETRY_SCHEDULE"), "{err}");
        let err = Config::with_overrides([("allowed_target_nets", "10.0.0.0/33")]).unwrap_err();
        assert!(
            err.to_string().contains("ANIKA_ALLOWED_TARGET_NETS"),
            "{err}"
        );
        let err = Config::with_overrides([("access_token_ttl", "1h")]).unwrap_err();
        assert!(err.to_string().contains("ANIKA_ACCESS_TOKEN_TTL"), "{err}");
        let err = Config::with_overrides([("secret_keys", "k1:short")]).unwrap_err();
        assert!(err.to_string().contains("ANIKA_SECRET_KEYS"), "{err}");
        let err = Config::with_overrides([("console_api_url", "ftp://lb")]).unwrap_err();
        assert!(err.to_string().contains("ANIKA_CONSOLE_API_URL"), "{err}");
        let c = Config::with_overrides([("console_api_url", "http://lb.internal:8080/")]).unwrap();
        assert_eq!(
            c.catalog.console_api_url.as_deref(),
            Some("http://lb.internal:8080")
        );
        let err = Config::with_overrides([("subscription_max_in_flight", "0")]).unwrap_err();
        assert!(
            err.to_string().contains("ANIKA_SUBSCRIPTION_MAX_IN_FLIGHT"),
            "{err}"
        );
    }

    #[test]
    fn a_retry_schedule_must_not_shrink() {
        let err = "30s,5s".parse::<RetrySchedule>().unwrap_err();
        assert!(err.contains("`5s` after `30s`"), "{err}");
        assert!("1m,30s,2m".parse::<RetrySchedule>().is_err());
        let s: RetrySchedule = "100ms,1s,1m".parse().unwrap();
        assert_eq!(s.delay_before(2), Duration::from_millis(100));
        assert_eq!(s.delay_before(9), Duration::from_secs(60));
        assert_eq!(
            s.tier_at_least(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(
            s.tier_at_least(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_repeated_delay_is_one_more_retry_in_the_same_tier() {
        let s: RetrySchedule = "5s,1m,10m,1h,12h,12h,12h".parse().unwrap();
        assert_eq!(
            s.default_max_attempts(),
            8,
            "one first try plus one per delay"
        );
        assert_eq!(s.delay_before(6), Duration::from_secs(12 * 3600));
        assert_eq!(s.delay_before(8), Duration::from_secs(12 * 3600));
        assert_eq!(s.delay_before(20), Duration::from_secs(12 * 3600));
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(
            s.tiers(),
            [
                Duration::from_secs(5),
                Duration::from_secs(60),
                Duration::from_secs(600),
                hours(1),
                hours(12)
            ],
            "one queue per distinct delay"
        );
        assert_eq!(s.tier_at_least(hours(2)), hours(12));
        assert_eq!(
            "5s,5s".parse::<RetrySchedule>().unwrap().tiers(),
            [Duration::from_secs(5)]
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let main_key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
        let ring = format!("main-1:{main_key}");
        let c = Config::with_overrides([
            ("bootstrap_operator_key", "hunter2"),
            ("secret_keys", &ring),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"));
        assert!(
            !shown.contains(main_key) && shown.contains("main-1"),
            "{shown}"
        );
        assert_eq!(
            redact_url("amqp://guest:pw@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://u:pw@h1:5701/%2f, amqp://u:pw@h2:5702/%2f"),
            "amqp://u:***@h1:5701/%2f,amqp://u:***@h2:5702/%2f"
        );
    }

    #[test]
    fn delays_format_as_queue_suffixes() {
        assert_eq!(format_delay(Duration::from_millis(250)), "250ms");
        assert_eq!(format_delay(Duration::from_secs(30)), "30s");
        assert_eq!(format_delay(Duration::from_secs(120)), "2m");
        assert_eq!(format_delay(Duration::from_secs(3 * 3600)), "3h");
    }
}
