//! A fresh PostgreSQL database and RabbitMQ vhost per test.
//!
//! Databases are cloned from a migrated template (one per schema version), so a
//! test pays a `CREATE DATABASE … TEMPLATE`, not the migrations. Vhosts are made
//! through the management API. Both are dropped when the [`TestEnv`] is, and
//! leftovers of crashed runs are swept at the next start.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;

use anika_shared::config::Config;
/// The main-key ring of test apps ([`TestEnv::config`]): fixed, so tests can seal and open too.
pub const TEST_SECRET_KEYS: &str = "test-1:dGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY=";

/// The PostgreSQL server tests use (a superuser; `DATABASE_URL` overrides).
pub fn admin_database_url() -> String {
    std::env::var("ANIKA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The RabbitMQ management API tests use (`ANIKA_TEST_RABBITMQ_API` overrides).
pub fn rabbitmq_api() -> String {
    std::env::var("ANIKA_TEST_RABBITMQ_API")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into())
}

/// The AMQP server tests use, without vhost.
pub fn amqp_base() -> String {
    std::env::var("ANIKA_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("admin database URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// A database and a vhost of one's own, removed on drop.
#[derive(Debug)]
pub struct TestEnv {
    /// The database's URL.
    pub database_url: String,
    /// The vhost's AMQP URL.
    pub amqp_url: String,
    /// The vhost's name.
    pub vhost: String,
    database: String,
}

impl TestEnv {
    /// Creates a fresh, migrated database and an empty vhost.
    pub async fn new() -> Self {
        let template = TEMPLATE.get_or_init(prepare_template).await.clone();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "anika_t_{}_{}_{}",
            std::process::id(),
            n,
            rand::random::<u32>()
        );
        let admin_url = admin_database_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to PostgreSQL");
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
        let mut tries = 0;
        loop {
            match admin.execute(sqlx::AssertSqlSafe(create.clone())).await {
                Ok(_) => break,
                // "source database is being accessed by other users": another test is cloning it.
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "template busy; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("create test database: {e}"),
            }
        }
        let _ = admin.close().await;
        create_vhost(&name).await;
        Self {
            database_url: with_database(&admin_url, &name),
            amqp_url: format!("{}/{}", amqp_base(), name),
            vhost: name.clone(),
            database: name,
        }
    }

    /// The configuration of an app in this environment: fast retries, loopback targets allowed.
    pub fn config(&self, overrides: &[(&str, &str)]) -> Config {
        let mut pairs: Vec<(&str, &str)> = vec![
            ("listen", "127.0.0.1:0"),
            ("database_url", &self.database_url),
            ("amqp_url", &self.amqp_url),
            ("database_pool", "8"),
            ("allowed_target_nets", "127.0.0.0/8,::1/128"),
            ("retry_schedule", "50ms,100ms,200ms"),
            ("log_format", "text"),
            ("secret_keys", TEST_SECRET_KEYS),
            // Parallel tests share two cores: a request's latency measures the machine, not
            // the app, and load shedding would refuse a test's burst. The shedder's own test
            // turns it back on.
            ("shed_target", "0s"),
        ];
        pairs.extend_from_slice(overrides);
        Config::with_overrides(pairs).expect("test configuration")
    }

    /// Message count of `queue`, read live from the broker (passive declare); `None` if it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        self.queue_counts(queue).await.map(|(messages, _)| messages)
    }

    /// Consumer count of `queue`, read live from the broker; `None` if it does not exist.
    pub async fn consumers(&self, queue: &str) -> Option<u32> {
        self.queue_counts(queue)
            .await
            .map(|(_, consumers)| consumers)
    }

    /// Messages and consumers of `queue` (the management API lags by seconds; this does not).
    pub async fn queue_counts(&self, queue: &str) -> Option<(u32, u32)> {
        let conn =
            lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.expect("channel");
        let result = channel
            .queue_declare(
                queue.into(),
                // passive: only ask; never create what the code under test should have made.
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| (q.message_count(), q.consumer_count()));
        let _ = conn.close(200, "done".into()).await;
        result
    }

    /// The names of the queues in this environment's vhost, read from the management API.
    pub async fn queues(&self) -> Vec<String> {
        let url = format!("{}/api/queues/{}?columns=name", rabbitmq_api(), self.vhost);
        let response = management(reqwest::Method::GET, &url).await;
        let list: Vec<serde_json::Value> = response.json().await.expect("queues JSON");
        list.into_iter()
            .filter_map(|q| q["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// The bindings of `queue` as `(exchange, routing key)`, read from the management API.
    pub async fn bindings(&self, queue: &str) -> Vec<(String, String)> {
        let url = format!(
            "{}/api/queues/{}/{}/bindings",
            rabbitmq_api(),
            self.vhost,
            queue
        );
        let response = management(reqwest::Method::GET, &url).await;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let list: Vec<serde_json::Value> = response.json().await.expect("bindings JSON");
        list.into_iter()
            .filter(|b| b["source"].as_str().is_some_and(|s| !s.is_empty()))
            .map(|b| {
                (
                    b["source"].as_str().unwrap_or_default().to_owned(),
                    b["routing_key"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Closes every client connection to this vhost, as a broker restart would (management API).
    pub async fn close_connections(&self) -> usize {
        let url = format!("{}/api/vhosts/{}/connections", rabbitmq_api(), self.vhost);
        // The management API learns of new connections with its statistics, seconds late.
        let mut list: Vec<serde_json::Value> = Vec::new();
        for _ in 0..40 {
            list = management(reqwest::Method::GET, &url)
                .await
                .json()
                .await
                .expect("connections JSON");
            if !list.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut closed = 0;
        for name in list.iter().filter_map(|c| c["name"].as_str()) {
            let encoded: String = form_urlencoded::byte_serialize(name.as_bytes())
                .collect::<String>()
                .replace('+', "%20");
            let url = format!("{}/api/connections/{encoded}", rabbitmq_api());
            if try_management(reqwest::Method::DELETE, &url, None)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                closed += 1;
            }
        }
        closed
    }

    /// Sets a policy on this vhost's queues matching `pattern` (e.g. a length limit that
    /// makes the broker refuse publishes), as an operator would with `rabbitmqctl set_policy`.
    pub async fn set_policy(&self, name: &str, pattern: &str, definition: serde_json::Value) {
        let url = format!("{}/api/policies/{}/{name}", rabbitmq_api(), self.vhost);
        let body = serde_json::json!({
            "pattern": pattern,
            "definition": definition,
            "apply-to": "queues",
            "priority": 100,
        });
        let response = try_management(reqwest::Method::PUT, &url, Some(body))
            .await
            .expect("set policy");
        assert!(
            response.status().is_success(),
            "set policy: {}",
            response.status()
        );
    }

    /// Removes a policy set with [`TestEnv::set_policy`].
    pub async fn clear_policy(&self, name: &str) {
        let url = format!("{}/api/policies/{}/{name}", rabbitmq_api(), self.vhost);
        let response = management(reqwest::Method::DELETE, &url).await;
        assert!(
            response.status().is_success(),
            "clear policy: {}",
            response.status()
        );
    }

    /// Queue arguments of `queue` as the broker reports them (`None` if it does not exist).
    pub async fn queue_info(&self, queue: &str) -> Option<serde_json::Value> {
        let url = format!("{}/api/queues/{}/{}", rabbitmq_api(), self.vhost, queue);
        let response = management(reqwest::Method::GET, &url).await;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        Some(response.json().await.expect("queue JSON"))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let database = self.database.clone();
        let vhost = self.vhost.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the clean-up.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    drop_database(&database).await;
                    delete_vhost(&vhost).await;
                });
            }
        });
        let _ = handle.join();
    }
}

async fn prepare_template() -> String {
    // The template's name changes with the migrations, so a new schema gets a new template.
    let mut hasher = Sha256::new();
    for migration in anika_shared::db::MIGRATOR.iter() {
        hasher.update(migration.checksum.as_ref());
    }
    let digest = hasher.finalize();
    let name = format!("anika_tmpl_{}", hex::encode(&digest[..6]));
    let admin_url = admin_database_url();
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("connect to PostgreSQL");
    // Serialise template creation across concurrently running test processes.
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut admin)
        .await
        .expect("lock");
    sweep_leftovers(&mut admin).await;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await
        .expect("look up template");
    if exists.is_none() {
        let building = format!("{name}_building");
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{building}\""
            )))
            .await;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{building}\""
            )))
            .await
            .expect("create template");
        let mut conn = PgConnection::connect(&with_database(&admin_url, &building))
            .await
            .expect("connect template");
        anika_shared::db::MIGRATOR
            .run(&mut conn)
            .await
            .expect("migrate template");
        conn.close().await.expect("close template");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
            )))
            .await
            .expect("publish template");
    }
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut admin)
        .await
        .expect("unlock");
    let _ = admin.close().await;
    name
}

/// Drops databases and vhosts left by test processes that no longer run.
async fn sweep_leftovers(admin: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'anika\\_t\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for name in names.into_iter().filter(|n| !owner_alive(n)) {
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .await;
    }
    let url = format!("{}/api/vhosts", rabbitmq_api());
    if let Ok(response) = try_management(reqwest::Method::GET, &url, None).await
        && let Ok(list) = response.json::<Vec<serde_json::Value>>().await
    {
        for vhost in list.iter().filter_map(|v| v["name"].as_str()) {
            if vhost.starts_with("anika_t_") && !owner_alive(vhost) {
                delete_vhost(vhost).await;
            }
        }
    }
}

fn owner_alive(name: &str) -> bool {
    let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        None => true,
    }
}

async fn drop_database(name: &str) {
    if let Err(e) = crate::admin::drop_database(&admin_database_url(), name).await {
        tracing::warn!(error = %e, database = name, "could not drop the test database");
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

async fn management(method: reqwest::Method, url: &str) -> reqwest::Response {
    try_management(method, url, None)
        .await
        .expect("RabbitMQ management API (is the rabbitmq_management plugin enabled?)")
}

async fn try_management(
    method: reqwest::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> Result<reqwest::Response, reqwest::Error> {
    let (bare, user, password) = crate::admin::management(url).expect("management URL");
    let mut request = client()
        .request(method, bare)
        .basic_auth(user, Some(password));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await
}

async fn create_vhost(name: &str) {
    let api = rabbitmq_api();
    let user = crate::admin::management(&api).expect("management URL").1;
    if let Err(e) = crate::admin::create_vhost(&api, name, &user).await {
        panic!("create vhost {name} (is the rabbitmq_management plugin enabled?): {e}");
    }
}

async fn delete_vhost(name: &str) {
    if let Err(e) = crate::admin::delete_vhost(&rabbitmq_api(), name).await {
        tracing::warn!(error = %e, vhost = name, "could not delete the test vhost");
    }
}
