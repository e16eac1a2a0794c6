//! Test support: a fresh PostgreSQL database and RabbitMQ vhost per test, and a real webhook receiver.
//!
//! Databases are cloned from a migrated template (one per schema version), so a
//! test pays a `CREATE DATABASE … TEMPLATE`, not the migrations. Vhosts are made
//! through the management API. Both are dropped when the [`TestEnv`] is, and
//! leftovers of crashed runs are swept at the next start.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::{Notify, OnceCell};

use crate::config::Config;

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
    for migration in crate::db::MIGRATOR.iter() {
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
        crate::db::MIGRATOR
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
    if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .await;
        let _ = admin.close().await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

fn split_credentials(url: &str) -> (String, String, String) {
    let parsed = url::Url::parse(url).expect("management URL");
    let user = parsed.username().to_owned();
    let password = parsed.password().unwrap_or_default().to_owned();
    let mut bare = parsed;
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    (
        bare.to_string().trim_end_matches('/').to_owned(),
        user,
        password,
    )
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
    let (bare, user, password) = split_credentials(url);
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
    let response = management(reqwest::Method::PUT, &format!("{api}/api/vhosts/{name}")).await;
    assert!(
        response.status().is_success(),
        "create vhost: {}",
        response.status()
    );
    let user = split_credentials(&api).1;
    let response = try_management(
        reqwest::Method::PUT,
        &format!("{api}/api/permissions/{name}/{user}"),
        Some(serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
    )
    .await
    .expect("set vhost permissions");
    assert!(
        response.status().is_success(),
        "vhost permissions: {}",
        response.status()
    );
}

async fn delete_vhost(name: &str) {
    let url = format!("{}/api/vhosts/{name}", rabbitmq_api());
    let _ = try_management(reqwest::Method::DELETE, &url, None).await;
}

/// One request the [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// When it was answered (after any [`Reply::Delay`]).
    pub at: Instant,
    /// When it arrived, before any delay: when the sender had sent it.
    pub started: Instant,
    /// The path it was sent to.
    pub path: String,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the receiver got JSON")
    }
}

/// How the [`Receiver`] answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status, empty body.
    Status(u16),
    /// This status with a `Retry-After` header in seconds.
    RetryAfter(u16, u64),
    /// A redirect to this location.
    Redirect(String),
    /// Wait, then 200.
    Delay(Duration),
    /// This status and body.
    Body(u16, String),
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Option<Reply>>,
    poison: Mutex<Option<(String, u16)>>,
    notify: Notify,
    /// Requests being answered now, and the most there were at once.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one request as in flight until dropped (also when the client gives up on it).
struct Counted<'a>(&'a ReceiverState);

impl<'a> Counted<'a> {
    fn new(state: &'a ReceiverState) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A real HTTP server on a loopback port that records every request and
/// answers from a script (then with the fallback, 204 by default).
#[derive(Clone)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0`.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts a receiver on a given address (to come back on the same port after a stop).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(ReceiverState::default());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answers the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().expect("script").extend(replies);
    }

    /// Answers every request not covered by the script with `reply`.
    pub fn always(&self, reply: Reply) {
        *self.state.fallback.lock().expect("fallback") = Some(reply);
    }

    /// Answers `status` to every request whose body contains `pattern` (a poison event).
    pub fn poison(&self, pattern: &str, status: u16) {
        *self.state.poison.lock().expect("poison") = Some((pattern.to_owned(), status));
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at once (since the start or [`Receiver::reset_peak`]).
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    /// Starts counting the peak afresh from the requests in flight now.
    pub fn reset_peak(&self) {
        self.state.peak.store(
            self.state.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("received").clone()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a request arriving in between still wakes us.
            notified.as_mut().enable();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.received();
            }
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let _counted = Counted::new(&state);
    let poisoned = state
        .poison
        .lock()
        .expect("poison")
        .as_ref()
        .filter(|(pattern, _)| String::from_utf8_lossy(&body).contains(pattern.as_str()))
        .map(|(_, status)| Reply::Status(*status));
    let reply = if let Some(poisoned) = poisoned {
        poisoned
    } else {
        let next = state.script.lock().expect("script").pop_front();
        next.or_else(|| state.fallback.lock().expect("fallback").clone())
            .unwrap_or(Reply::Status(204))
    };
    if let Reply::Delay(delay) = &reply {
        tokio::time::sleep(*delay).await;
    }
    state.received.lock().expect("received").push(Received {
        headers,
        body,
        at: Instant::now(),
        started,
        path: uri.path().to_owned(),
    });
    state.notify.notify_waiters();
    match reply {
        Reply::Status(code) => status(code).into_response(),
        Reply::RetryAfter(code, seconds) => {
            (status(code), [("retry-after", seconds.to_string())]).into_response()
        }
        Reply::Redirect(location) => (StatusCode::FOUND, [("location", location)]).into_response(),
        Reply::Delay(_) => StatusCode::OK.into_response(),
        Reply::Body(code, body) => (status(code), body).into_response(),
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("valid status")
}

/// An HTTP client for the API under test that returns status and JSON, and checks problem documents.
#[derive(Clone, Debug)]
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    http: reqwest::Client,
}

/// One answer of the API.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: serde_json::Value,
}

impl Answer {
    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> serde_json::Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        if status >= 400 {
            self.assert_problem();
        }
        self.body
    }

    /// Asserts this is an RFC 9457 problem document with a useful detail.
    #[track_caller]
    pub fn assert_problem(&self) {
        let content_type = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(
            content_type, "application/problem+json",
            "not a problem document: {}",
            self.body
        );
        assert_eq!(
            self.body["status"].as_u64(),
            Some(u64::from(self.status)),
            "{}",
            self.body
        );
        for field in ["type", "title", "detail"] {
            assert!(
                self.body[field].as_str().is_some_and(|s| !s.is_empty()),
                "problem without {field}: {}",
                self.body
            );
        }
    }

    /// The problem's detail.
    pub fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }

    /// The pointers of a validation problem's errors.
    pub fn pointers(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["pointer"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Api {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: client(),
        }
    }

    /// Sends any request; `body` is sent as JSON when given.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("API request");
        Self::answer(response).await
    }

    /// Sends raw bytes with a content type (for malformed-body tests).
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        Self::answer(request.send().await.expect("API request")).await
    }

    async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("API body");
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// GET.
    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: serde_json::Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(token), Some(&body))
            .await
    }

    /// PATCH with a JSON body.
    pub async fn patch(&self, path: &str, token: &str, body: serde_json::Value) -> Answer {
        self.send(reqwest::Method::PATCH, path, Some(token), Some(&body))
            .await
    }

    /// PUT without body.
    pub async fn put(&self, path: &str, token: &str) -> Answer {
        self.send(reqwest::Method::PUT, path, Some(token), None)
            .await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str, token: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// Exchanges an API key for an access token.
    pub async fn token(&self, api_key: &str) -> String {
        let body = serde_json::json!({"grant_type": "api_key", "api_key": api_key});
        let answer = self
            .send(reqwest::Method::POST, "/v1/auth/token", None, Some(&body))
            .await;
        answer.expect(200)["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Creates a partner (as an operator) with an admin and a publisher; returns their tokens.
    pub async fn partner(&self, operator: &str, name: &str) -> Partner {
        let partner = self
            .post("/v1/partners", operator, serde_json::json!({"name": name}))
            .await
            .expect(201);
        let id = partner["id"].as_str().expect("partner id").to_owned();
        let mut tokens = Vec::new();
        for role in ["admin", "publisher"] {
            let key = self
                .post(
                    "/v1/api-keys",
                    operator,
                    serde_json::json!({"role": role, "name": format!("{name} {role}"), "partner_id": id}),
                )
                .await
                .expect(201);
            tokens.push(self.token(key["api_key"].as_str().expect("api_key")).await);
        }
        let publisher = tokens.pop().expect("publisher");
        let admin = tokens.pop().expect("admin");
        Partner {
            id,
            admin,
            publisher,
        }
    }
}

/// A partner made for a test, with tokens for each role.
#[derive(Clone, Debug)]
pub struct Partner {
    /// Its id.
    pub id: String,
    /// An admin access token.
    pub admin: String,
    /// A publisher access token.
    pub publisher: String,
}

/// The ways secret bytes could show up in a dump or a log: hex (both cases) and base64
/// (standard and URL-safe, with and without padding).
pub fn secret_spellings(bytes: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    let hex = hex::encode(bytes);
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut all = vec![hex.to_uppercase(), hex];
    all.extend(engines.iter().map(|e| e.encode(bytes)));
    all.dedup();
    all
}

/// Everything logged on this thread while it lives, at every level, as text: to look for
/// secrets in. Use it from a `#[tokio::test]` (one thread): the tasks the test spawns log
/// on the same thread, whatever global subscriber another test installed.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl std::fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCapture").finish_non_exhaustive()
    }
}

/// The writer of a [`LogCapture`].
#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CaptureWriter {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogCapture {
    /// Starts capturing: TRACE for anika and sqlx, DEBUG for the other libraries.
    pub fn start() -> Self {
        use tracing_subscriber::layer::SubscriberExt as _;
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let filter = tracing_subscriber::EnvFilter::new(
            "debug,anika_shared=trace,anika_catalog=trace,anika_ingest=trace,anika_dispatcher=trace,sqlx=trace",
        );
        let subscriber = tracing_subscriber::registry().with(filter).with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(CaptureWriter(Arc::clone(&buffer))),
        );
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().expect("log buffer")).into_owned()
    }
}
