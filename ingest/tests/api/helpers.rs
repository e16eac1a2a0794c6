//! A real catalog + ingest on a loopback port, with its own database and vhost,
//! and the tools to look behind it: SQL, subscription queues, a breakable broker link.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anika_shared::Context;
pub use anika_testkit::Answer;
use anika_testkit::{Api, Partner, TestEnv, amqp_base};
use lapin::{BasicProperties, options::BasicGetOptions};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use anika_testkit::OPERATOR_KEY;

pub struct App {
    pub api: Api,
    pub env: TestEnv,
    pub ctx: Context,
    pub operator: String,
    pub shutdown: CancellationToken,
    app: Option<anika::App>,
    http: reqwest::Client,
}

impl App {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(overrides: &[(&str, &str)]) -> Self {
        Self::spawn_in(TestEnv::new().await, overrides).await
    }

    /// Catalog and ingest routes on one port, as `anika up` composes them (without the dispatcher).
    pub async fn spawn_in(env: TestEnv, overrides: &[(&str, &str)]) -> Self {
        let mut all = vec![("bootstrap_operator_key", OPERATOR_KEY)];
        all.extend_from_slice(overrides);
        let config = env.config(&all);
        anika_shared::telemetry::init(config.log_format);
        let ctx = Context::connect(config, "ingest-test")
            .await
            .expect("connect");
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Catalog and ingest on one port, as `anika up` composes them (without the dispatcher).
        let roles = anika::Roles {
            catalog: true,
            ingest: true,
            dispatcher: false,
        };
        let app = anika::App::builder(roles, "ingest-test")
            .serve_with(ctx.clone(), listener, shutdown.clone())
            .await
            .expect("catalog and ingest");
        let api = Api::new(addr);
        let operator = api.token(OPERATOR_KEY).await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self {
            api,
            env,
            ctx,
            operator,
            shutdown,
            app: Some(app),
            http,
        }
    }

    /// Stops the server and waits for ingest's background work to finish, as `anika up` does.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(app) = self.app.take() {
            // Within the app's 30 s drain, or `finished` says it did not.
            app.finished()
                .await
                .expect("the server stops and background work finishes within 30 s");
        }
    }

    pub async fn partner(&self, name: &str) -> Partner {
        self.api.partner(&self.operator, name).await
    }

    /// Creates a topic as `admin`, returns its id.
    pub async fn topic(&self, admin: &str, name: &str, schema: Option<Value>) -> String {
        let mut body = json!({"name": name});
        if let Some(schema) = schema {
            body["schema"] = schema;
        }
        let topic = self.api.post("/v1/topics", admin, body).await.expect(201);
        topic["id"].as_str().expect("topic id").to_owned()
    }

    pub async fn grant(&self, owner_admin: &str, topic: &str, partner: &str) {
        self.api
            .put(&format!("/v1/topics/{topic}/grants/{partner}"), owner_admin)
            .await
            .expect(204);
    }

    /// Creates a subscription as `admin`; returns its queue's name.
    pub async fn subscribe(&self, admin: &str, topic: &str) -> (String, String) {
        let sub = self
            .api
            .post(
                "/v1/subscriptions",
                admin,
                json!({"topic_id": topic, "url": "https://bank.example.com/hooks"}),
            )
            .await
            .expect(201);
        let id = sub["id"].as_str().expect("subscription id").to_owned();
        (format!("anika.sub.{id}"), id)
    }

    /// Posts one event; `idempotency_key` goes into the header.
    pub async fn post_event(
        &self,
        token: &str,
        topic: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Answer {
        self.post_raw(
            token,
            &format!("/v1/topics/{topic}/events"),
            serde_json::to_vec(&body).expect("JSON"),
            idempotency_key,
        )
        .await
    }

    /// Posts bytes as JSON, with an optional `Idempotency-Key`.
    pub async fn post_raw(
        &self,
        token: &str,
        path: &str,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Answer {
        self.try_post_raw(token, path, body, idempotency_key)
            .await
            .expect("API request")
    }

    /// Like [`App::post_raw`], but a refused connection (server stopped) is an `Err`.
    pub async fn try_post_raw(
        &self,
        token: &str,
        path: &str,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.api.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub async fn sql_count(&self, sql: &'static str, topic: &str) -> i64 {
        sqlx::query_scalar(sql)
            .bind(uuid::Uuid::parse_str(topic).expect("uuid"))
            .fetch_one(&self.ctx.pool)
            .await
            .expect("count")
    }

    pub async fn events_in_log(&self, topic: &str) -> i64 {
        self.sql_count("SELECT count(*) FROM events WHERE topic_id = $1", topic)
            .await
    }

    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.ctx.pool)
            .await
            .expect("count")
    }

    /// Takes up to `n` messages from `queue` (acknowledging them), waiting up to `timeout` for them to arrive.
    pub async fn take(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Message> {
        let conn =
            lapin::Connection::connect(&self.env.amqp_url, lapin::ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.expect("channel");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut taken = Vec::new();
        while taken.len() < n {
            // no_ack: the test consumes the message for good, as a dispatcher would after delivery.
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic_get");
            match got {
                Some(message) => taken.push(Message {
                    body: message.delivery.data.clone(),
                    properties: message.delivery.properties.clone(),
                }),
                None if tokio::time::Instant::now() >= deadline => break,
                None => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        let _ = conn.close(200, "done".into()).await;
        taken
    }

    /// Asserts that `queue` stays empty for a while (nothing is on its way either).
    pub async fn assert_stays_empty(&self, queue: &str) {
        let extra = self.take(queue, 1, Duration::from_millis(700)).await;
        assert!(
            extra.is_empty(),
            "unexpected message in {queue}: {}",
            String::from_utf8_lossy(&extra[0].body)
        );
    }

    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.api.base))
            .send()
            .await
            .expect("metrics");
        response.text().await.expect("metrics text")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A message read from a queue.
pub struct Message {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        anika_shared::amqp::header_str(&self.properties, name)
    }
}

pub use anika_testkit::eventually;

/// A TCP proxy between the app and RabbitMQ that can cut the link without touching the
/// shared broker: `cut` closes every open connection and refuses new ones; `restore` lets them through.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start() -> Self {
        let base = reqwest::Url::parse(&amqp_base()).expect("AMQP base URL");
        let target = format!(
            "{}:{}",
            base.host_str().expect("host"),
            base.port().unwrap_or(5672)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (open_in, links_in) = (Arc::clone(&open), Arc::clone(&links));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open_in.load(Ordering::SeqCst) {
                    drop(inbound); // refused: the client sees the connection closed at once
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links_in.lock().expect("links").push(link.abort_handle());
            }
        });
        Self { addr, open, links }
    }

    /// The AMQP URL of `vhost` through this proxy.
    pub fn amqp_url(&self, vhost: &str) -> String {
        let mut url = reqwest::Url::parse(&amqp_base()).expect("AMQP base URL");
        url.set_port(Some(self.addr.port())).expect("port");
        url.set_path(&format!("/{vhost}"));
        url.to_string()
    }

    /// RabbitMQ becomes unreachable: open connections drop, new ones are closed at once.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    /// RabbitMQ is reachable again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
