//! The system under test: an `anika up` child process with a database and a vhost of its own,
//! or an installation that is already running (`--url`).
//!
//! A separate process keeps the load generator from stealing the server's
//! runtime threads; the machine's cores are still shared, as in production on
//! a small box. Whatever the bench creates (database, vhost, process) is
//! removed by [`Target::stop`], which runs on success, on error and on Ctrl-C.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anika_shared::config::Config;
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

use crate::cli::CliError;

/// How long `anika up` may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the system under test is and what the bench may inspect of it.
#[derive(Debug)]
pub struct Target {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// An operator API key.
    pub operator_key: String,
    /// PostgreSQL of the installation (for the outbox check and the insert ceiling).
    pub database_url: String,
    /// RabbitMQ of the installation (for queue depths and the publish ceiling).
    pub amqp_url: String,
    /// The child process, when the bench started the server itself.
    child: Option<Spawned>,
}

#[derive(Debug)]
struct Spawned {
    process: Child,
    pid: u32,
    database: String,
    admin_url: String,
    vhost: Option<String>,
    rabbitmq_api: String,
    log: PathBuf,
}

/// A name for this run's database and vhost: `anika_bench_<unix seconds>`.
pub fn run_name() -> String {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("anika_bench_{unix}")
}

impl Target {
    /// An installation that is already running; the bench creates nothing but API objects there.
    pub fn existing(config: &Config, base: String, operator_key: String) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            operator_key,
            database_url: config.database_url.expose().to_owned(),
            amqp_url: config.amqp_url.expose().to_owned(),
            child: None,
        }
    }

    /// The server's process id, when the bench started it (for RSS sampling).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// Where the child's log goes.
    pub fn log(&self) -> Option<&std::path::Path> {
        self.child.as_ref().map(|c| c.log.as_path())
    }

    /// Starts `anika up` on a free port with a fresh database and vhost; see [`Target::wait_ready`].
    pub async fn spawn(config: &Config, name: &str, rabbitmq_api: &str) -> Result<Self, CliError> {
        let admin_url = config.database_url.expose().to_owned();
        let database_url = with_path(&admin_url, name)?;
        let vhost = match create_vhost(rabbitmq_api, name, &config.amqp_url).await {
            Ok(()) => Some(name.to_owned()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a vhost through the management API; using the configured one");
                None
            }
        };
        let amqp_url = match &vhost {
            Some(v) => with_path(config.amqp_url.expose(), v)?,
            None => config.amqp_url.expose().to_owned(),
        };
        let port = free_port()?;
        let operator_key = format!("bench_{}", uuid::Uuid::new_v4().simple());
        // The bench's own database: a key of its own unless the caller configured a ring.
        let secret_keys = std::env::var("ANIKA_SECRET_KEYS").unwrap_or_else(|_| {
            anika_shared::secrets::KeyRing::generate_entry(
                &anika_shared::secrets::MainKeyId::parse("bench").expect("a valid id"),
            )
        });
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create the server log {}: {e}", log.display()))?;
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the anika binary to start: {e}"))?;
        let process = Command::new(exe)
            .arg("up")
            .env("ANIKA_LISTEN", format!("127.0.0.1:{port}"))
            .env("ANIKA_DATABASE_URL", &database_url)
            .env("ANIKA_AMQP_URL", &amqp_url)
            .env("ANIKA_BOOTSTRAP_OPERATOR_KEY", &operator_key)
            .env("ANIKA_SECRET_KEYS", &secret_keys)
            .env("ANIKA_ALLOWED_TARGET_NETS", "127.0.0.0/8")
            .env("ANIKA_LOG_FORMAT", "json")
            .env_remove("ANIKA_PUBLIC_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log_file
                    .try_clone()
                    .map_err(|e| format!("server log: {e}"))?,
            ))
            .stderr(Stdio::from(log_file))
            // A panic in the bench must not leave a server behind.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `anika up`: {e}"))?;
        let pid = process.id().unwrap_or_default();
        Ok(Self {
            base: format!("http://127.0.0.1:{port}"),
            operator_key,
            database_url,
            amqp_url,
            child: Some(Spawned {
                process,
                pid,
                database: name.to_owned(),
                admin_url,
                vhost,
                rabbitmq_api: rabbitmq_api.to_owned(),
                log,
            }),
        })
    }

    /// Waits until the child answers `/readyz` (fails early if it exits).
    pub async fn wait_ready(&mut self) -> Result<(), CliError> {
        let http = reqwest::Client::new();
        let url = format!("{}/readyz", self.base);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.process.try_wait()
            {
                return Err(format!(
                    "`anika up` exited with {status} before it was ready; its log: {}",
                    child.log.display()
                )
                .into());
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "`anika up` not ready after {READY_TIMEOUT:?}; its log: {}",
                    self.log()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the child (SIGTERM, then SIGKILL) and removes its database and vhost unless `keep`;
    /// the server's log stays when the bench `failed`.
    pub async fn stop(&mut self, keep: bool, failed: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM first: the server closes its connections and leaves nothing half-done.
        if matches!(child.process.try_wait(), Ok(None)) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.process.wait())
            .await
            .is_err()
        {
            let _ = child.process.kill().await;
        }
        if keep {
            eprintln!(
                "kept database {} and vhost {}; server log {}",
                child.database,
                child.vhost.as_deref().unwrap_or("(configured)"),
                child.log.display()
            );
            return;
        }
        if let Err(e) = drop_database(&child.admin_url, &child.database).await {
            eprintln!("could not drop database {}: {e}", child.database);
        }
        if let Some(vhost) = &child.vhost
            && let Err(e) = delete_vhost(&child.rabbitmq_api, vhost).await
        {
            eprintln!("could not delete vhost {vhost}: {e}");
        }
        if failed {
            eprintln!("the server's log: {}", child.log.display());
        } else {
            let _ = std::fs::remove_file(&child.log);
        }
    }
}

/// `url` with its path (database or vhost) replaced by `name`.
fn with_path(url: &str, name: &str) -> Result<String, CliError> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| format!("cannot derive a bench URL from {url}: {e}"))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

fn free_port() -> Result<u16, CliError> {
    // Bound and released at once: the child binds it a moment later.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    Ok(listener.local_addr()?.port())
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), CliError> {
    let options = anika_shared::db::options(&with_path(admin_url, "postgres")?)?;
    let mut conn = PgConnection::connect_with(&options).await?;
    // FORCE: connections the killed server left behind must not keep the database alive.
    let statement = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// The management API's base URL and the credentials in it.
fn management(api: &str) -> Result<(String, String, String), CliError> {
    let parsed = url::Url::parse(api).map_err(|e| format!("--rabbitmq-api {api}: {e}"))?;
    let user = if parsed.username().is_empty() {
        "guest".to_owned()
    } else {
        parsed.username().to_owned()
    };
    let password = parsed.password().unwrap_or("guest").to_owned();
    let mut base = parsed;
    let _ = base.set_username("");
    let _ = base.set_password(None);
    Ok((
        base.as_str().trim_end_matches('/').to_owned(),
        user,
        password,
    ))
}

async fn create_vhost(
    api: &str,
    name: &str,
    amqp_url: &anika_shared::config::Secret,
) -> Result<(), CliError> {
    let (base, user, password) = management(api)?;
    let http = reqwest::Client::new();
    let created = http
        .put(format!("{base}/api/vhosts/{name}"))
        .basic_auth(&user, Some(&password))
        .send()
        .await?;
    if !created.status().is_success() {
        return Err(format!("creating vhost {name}: {}", created.status()).into());
    }
    // The AMQP user of the configuration gets every permission in the new vhost.
    let amqp_user = url::Url::parse(amqp_url.expose())
        .ok()
        .map(|u| u.username().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "guest".to_owned());
    let granted = http
        .put(format!("{base}/api/permissions/{name}/{amqp_user}"))
        .basic_auth(&user, Some(&password))
        .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
        .send()
        .await?;
    if !granted.status().is_success() {
        let _ = delete_vhost(api, name).await;
        return Err(format!("granting {amqp_user} on vhost {name}: {}", granted.status()).into());
    }
    Ok(())
}

async fn delete_vhost(api: &str, name: &str) -> Result<(), CliError> {
    let (base, user, password) = management(api)?;
    let response = reqwest::Client::new()
        .delete(format!("{base}/api/vhosts/{name}"))
        .basic_auth(&user, Some(&password))
        .send()
        .await?;
    if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(format!("{}", response.status()).into())
    }
}

/// The resident set size of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) a process has used so far, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; USER_HZ is 100 on Linux.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
