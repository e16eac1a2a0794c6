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

use anika_shared::config::{Config, redact_url};
use anika_testkit::admin::{self, delete_vhost, drop_database, with_path};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

use crate::CliError;

/// The `anika` binary the bench starts, when `--server` chose one.
static SERVER_BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Starts `binary` instead of the `anika` next to the bench's own binary.
pub fn use_binary(binary: Option<PathBuf>) {
    if let Some(binary) = binary
        && SERVER_BINARY.set(binary).is_err()
    {
        tracing::warn!("the server binary was chosen twice; the first choice stands");
    }
}

/// The `anika` binary to start: `--server`, or `anika` in the bench binary's directory.
fn server_binary() -> Result<PathBuf, CliError> {
    if let Some(binary) = SERVER_BINARY.get() {
        return Ok(binary.clone());
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the bench binary's directory: {e}"))?;
    let sibling = exe.with_file_name("anika");
    if sibling.is_file() {
        Ok(sibling)
    } else {
        Err(format!(
            "no anika binary next to {} (build it with `cargo build --release -p anika`, or pass --server)",
            exe.display()
        )
        .into())
    }
}

/// How long `anika up` may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the system under test is and what the bench may inspect of it.
#[derive(Debug)]
pub struct Target {
    /// `http://127.0.0.1:<port>`: where the catalog routes (and, for `anika up`, every route) are.
    pub base: String,
    /// Where events are posted; the bench spreads them over these in turn.
    pub ingest_bases: Vec<String>,
    /// An operator API key.
    pub operator_key: String,
    /// PostgreSQL of the installation (for the outbox check and the insert ceiling).
    pub database_url: String,
    /// RabbitMQ of the installation (for queue depths and the publish ceiling); a
    /// comma-separated list for a cluster.
    pub amqp_url: String,
    /// The child processes, when the bench started the server itself.
    child: Option<Spawned>,
}

#[derive(Debug)]
struct Spawned {
    processes: Vec<Process>,
    /// The main-key ring every process of the bench's fresh database shares.
    secret_keys: anika_shared::config::Secret,
    database: String,
    admin_url: String,
    vhost: Option<String>,
    rabbitmq_api: String,
}

/// One `anika` child process.
#[derive(Debug)]
struct Process {
    /// `up`, `catalog`, `ingest-1`, `dispatcher-2`, …
    label: String,
    process: Child,
    pid: u32,
    base: String,
    log: PathBuf,
}

/// How many processes of each role a split deployment runs.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// `anika serve ingest` processes.
    pub ingest: usize,
    /// `anika serve dispatcher` processes.
    pub dispatcher: usize,
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
        let base = base.trim_end_matches('/').to_owned();
        Self {
            ingest_bases: vec![base.clone()],
            base,
            operator_key,
            database_url: config.database_url.expose().to_owned(),
            amqp_url: config.amqp_url.expose().to_owned(),
            child: None,
        }
    }

    /// The process id of the server, when the bench started it as one process (for RSS sampling).
    pub fn pid(&self) -> Option<u32> {
        match self.child.as_ref().map(|c| c.processes.as_slice()) {
            Some([one]) => Some(one.pid),
            _ => None,
        }
    }

    /// Every process the bench started, with its label (`up`, `ingest-1`, …).
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.child
            .iter()
            .flat_map(|c| c.processes.iter().map(|p| (p.label.clone(), p.pid)))
            .collect()
    }

    /// Starts `anika up` on a free port with a fresh database and vhost; see [`Target::wait_ready`].
    pub async fn spawn(config: &Config, name: &str, rabbitmq_api: &str) -> Result<Self, CliError> {
        let amqp: Vec<String> = config
            .amqp_url
            .expose()
            .split(',')
            .map(|node| node.trim().to_owned())
            .collect();
        let mut target = Self::prepare(config, name, rabbitmq_api, &amqp, false).await?;
        let up = target.start_process("up", &["up"], name)?;
        target.base.clone_from(&up.base);
        target.ingest_bases = vec![up.base.clone()];
        target.spawned().processes.push(up);
        Ok(target)
    }

    /// Starts one `anika serve catalog` and `shape`'s ingest and dispatcher processes of a
    /// target made by [`Target::prepare`], and waits until each is ready. The catalog starts
    /// first: it migrates the new database alone.
    pub async fn start_split(&mut self, shape: Shape) -> Result<(), CliError> {
        let name = self.spawned().database.clone();
        let catalog = self.start_process("catalog", &["serve", "catalog"], &name)?;
        self.base.clone_from(&catalog.base);
        self.spawned().processes.push(catalog);
        self.wait_ready().await?;
        let mut ingest_bases = Vec::new();
        for (role, count) in [("ingest", shape.ingest), ("dispatcher", shape.dispatcher)] {
            for n in 1..=count {
                let process =
                    self.start_process(&format!("{role}-{n}"), &["serve", role], &name)?;
                if role == "ingest" {
                    ingest_bases.push(process.base.clone());
                }
                self.spawned().processes.push(process);
            }
        }
        self.ingest_bases = ingest_bases;
        self.wait_ready().await
    }

    /// Names a fresh database and creates a vhost on `amqp_nodes` through `rabbitmq_api`
    /// (falling back to the configured vhost, unless `vhost_required`); no process runs yet.
    pub async fn prepare(
        config: &Config,
        name: &str,
        rabbitmq_api: &str,
        amqp_nodes: &[String],
        vhost_required: bool,
    ) -> Result<Self, CliError> {
        let admin_url = config.database_url.expose().to_owned();
        let database_url = with_path(&admin_url, name)?;
        let first = amqp_nodes.first().ok_or("no RabbitMQ node to run on")?;
        // The AMQP user of the configuration gets every permission in the new vhost.
        let amqp_user = url::Url::parse(first)
            .ok()
            .map(|u| u.username().to_owned())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "guest".to_owned());
        let vhost = match admin::create_vhost(rabbitmq_api, name, &amqp_user).await {
            Ok(()) => Some(name.to_owned()),
            Err(e) if vhost_required => {
                return Err(format!(
                    "cannot create vhost {name} through {}: {e}",
                    redact_url(rabbitmq_api)
                )
                .into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a vhost through the management API; using the configured one");
                None
            }
        };
        let amqp_url = match &vhost {
            Some(v) => amqp_nodes
                .iter()
                .map(|node| with_path(node, v))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            None => amqp_nodes.join(","),
        };
        Ok(Self {
            base: String::new(),
            ingest_bases: Vec::new(),
            operator_key: format!("bench_{}", uuid::Uuid::new_v4().simple()),
            database_url,
            amqp_url,
            child: Some(Spawned {
                processes: Vec::new(),
                // A fresh database: a key of its own, unless the caller configured a ring.
                secret_keys: anika_shared::config::Secret::new(
                    std::env::var("ANIKA_SECRET_KEYS").unwrap_or_else(|_| {
                        anika_shared::secrets::KeyRing::generate_entry(
                            &anika_shared::secrets::MainKeyId::parse("bench").expect("a valid id"),
                        )
                    }),
                ),
                database: name.to_owned(),
                admin_url,
                vhost,
                rabbitmq_api: rabbitmq_api.to_owned(),
            }),
        })
    }

    fn spawned(&mut self) -> &mut Spawned {
        self.child
            .as_mut()
            .expect("prepared targets have a child slot")
    }

    fn spawned_ref(&self) -> &Spawned {
        self.child
            .as_ref()
            .expect("prepared targets have a child slot")
    }

    /// Starts `anika <args>` on a free port, logging to a file of its own.
    fn start_process(&self, label: &str, args: &[&str], name: &str) -> Result<Process, CliError> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("{name}-{label}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create the server log {}: {e}", log.display()))?;
        let exe = server_binary()?;
        let process = Command::new(exe)
            .args(args)
            .env("ANIKA_LISTEN", format!("127.0.0.1:{port}"))
            .env("ANIKA_DATABASE_URL", &self.database_url)
            .env("ANIKA_AMQP_URL", &self.amqp_url)
            .env("ANIKA_BOOTSTRAP_OPERATOR_KEY", &self.operator_key)
            .env("ANIKA_SECRET_KEYS", self.spawned_ref().secret_keys.expose())
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
            .map_err(|e| format!("cannot start `anika {}`: {e}", args.join(" ")))?;
        let pid = process.id().unwrap_or_default();
        Ok(Process {
            label: label.to_owned(),
            process,
            pid,
            base: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// Waits until every child answers `/readyz` (fails early if one exits).
    pub async fn wait_ready(&mut self) -> Result<(), CliError> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        for process in &mut child.processes {
            let url = format!("{}/readyz", process.base);
            loop {
                if let Ok(Some(status)) = process.process.try_wait() {
                    return Err(format!(
                        "`anika {}` exited with {status} before it was ready; its log: {}",
                        process.label,
                        process.log.display()
                    )
                    .into());
                }
                if let Ok(response) = http.get(&url).send().await
                    && response.status().is_success()
                {
                    break;
                }
                if started.elapsed() > READY_TIMEOUT {
                    return Err(format!(
                        "`anika {}` not ready after {READY_TIMEOUT:?}; its log: {}",
                        process.label,
                        process.log.display()
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Stops the children (SIGTERM, then SIGKILL) and removes their database and vhost unless
    /// `keep`; the servers' logs stay when the bench `failed`.
    pub async fn stop(&mut self, keep: bool, failed: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM first: each server closes its connections and leaves nothing half-done.
        for process in &mut child.processes {
            if matches!(process.process.try_wait(), Ok(None)) {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &process.pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for process in &mut child.processes {
            if tokio::time::timeout(STOP_TIMEOUT, process.process.wait())
                .await
                .is_err()
                && let Err(e) = process.process.kill().await
            {
                eprintln!("could not kill `anika {}`: {e}", process.label);
            }
        }
        let logs: Vec<String> = child
            .processes
            .iter()
            .map(|p| p.log.display().to_string())
            .collect();
        if keep {
            eprintln!(
                "kept database {} and vhost {}; server logs {}",
                child.database,
                child.vhost.as_deref().unwrap_or("(configured)"),
                logs.join(" ")
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
            eprintln!("the servers' logs: {}", logs.join(" "));
        } else {
            for process in &child.processes {
                let _ = std::fs::remove_file(&process.log);
            }
        }
    }
}

fn free_port() -> Result<u16, CliError> {
    // Bound and released at once: the child binds it a moment later.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    Ok(listener.local_addr()?.port())
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

/// The TCP ports of a (comma-separated) AMQP URL list, for finding the brokers' processes.
pub fn amqp_ports(amqp_url: &str) -> Vec<u16> {
    amqp_url
        .split(',')
        .filter_map(|node| url::Url::parse(node.trim()).ok())
        .map(|node| node.port().unwrap_or(5672))
        .collect()
}

/// The process listening on TCP `port` of this machine (a broker node's Erlang VM), found
/// through `/proc/net/tcp{,6}` and the processes' socket descriptors; `None` when the bench
/// may not look (another user's process) or nothing listens.
pub fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields.get(1)?.rsplit(':').next()?;
                // State 0A is LISTEN; field 9 is the socket's inode.
                (u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == "0A")
                    .then(|| fields.get(9).map(|i| (*i).to_owned()))
                    .flatten()
            })
        })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str())
                })
                .then_some(pid)
        })
}

/// What PostgreSQL wrote so far: WAL position (bytes, server-wide) and rows inserted into
/// the installation's tables (its database's statistics).
pub async fn postgres_writes(database_url: &str) -> Result<(f64, f64), CliError> {
    let options = anika_shared::db::options(database_url)?;
    let mut conn = PgConnection::connect_with(&options).await?;
    // Statistics reach the shared view when a backend reports them (at most once a second,
    // and idle backends after 10 s): a fresh snapshot keeps this read from caching.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut conn)
        .await?;
    let (wal, rows): (f64, f64) = sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
         coalesce(sum(n_tup_ins), 0)::float8 FROM pg_stat_user_tables",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok((wal, rows))
}
