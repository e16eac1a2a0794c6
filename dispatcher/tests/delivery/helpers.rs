//! A real catalog and dispatcher with their own database and vhost, a real receiver, and a publisher
//! that speaks the ingest message contract.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anika_dispatcher::{Lookup, LookupFuture};
use anika_shared::{
    Context,
    domain::{EventId, PartnerId, TopicId},
    envelope::{Envelope, EventHead, properties},
};
use anika_testkit::{Api, Partner, Receiver, TestEnv};
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json, value::RawValue};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use anika_testkit::OPERATOR_KEY;

/// Resolves chosen names to chosen addresses (a public-looking name pointing inside).
#[derive(Default)]
pub struct FakeDns(pub HashMap<String, Vec<IpAddr>>);

impl Lookup for FakeDns {
    fn lookup(&self, host: String) -> LookupFuture {
        let answer = self.0.get(&host).cloned();
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::other(format!("no such host {host}")))
        })
    }
}

pub struct App {
    pub api: Api,
    pub env: TestEnv,
    pub ctx: Context,
    pub operator: String,
    /// Stops the HTTP server.
    pub shutdown: CancellationToken,
    /// Stops the dispatcher (replaced by `restart_dispatcher`).
    pub dispatcher: std::sync::Mutex<(CancellationToken, TaskTracker)>,
}

impl App {
    pub async fn spawn(overrides: &[(&str, &str)]) -> Self {
        Self::spawn_with_dns(overrides, FakeDns::default()).await
    }

    pub async fn spawn_with_dns(overrides: &[(&str, &str)], dns: FakeDns) -> Self {
        let env = TestEnv::new().await;
        let mut all = vec![
            ("bootstrap_operator_key", OPERATOR_KEY),
            ("reconcile_interval", "2s"),
        ];
        all.extend_from_slice(overrides);
        let config = env.config(&all);
        anika_shared::telemetry::init(config.log_format);
        let ctx = Context::connect(config, "dispatcher-test")
            .await
            .expect("connect");
        let shutdown = CancellationToken::new();
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let api = Api::new(listener.local_addr().expect("addr"));
        // Catalog and dispatcher on one port; the dispatcher on a lifetime of its own, so a
        // test can stop and restart delivery alone.
        let roles = anika::Roles {
            catalog: true,
            ingest: false,
            dispatcher: true,
        };
        anika::App::builder(roles, "dispatcher-test")
            .resolve_with(Arc::new(dns))
            .dispatcher_lifetime(stop.clone(), tasks.clone())
            .serve_with(ctx.clone(), listener, shutdown.clone())
            .await
            .expect("catalog and dispatcher");
        let operator = api.token(OPERATOR_KEY).await;
        Self {
            api,
            env,
            ctx,
            operator,
            shutdown,
            dispatcher: std::sync::Mutex::new((stop, tasks)),
        }
    }

    /// Stops the dispatcher gracefully and waits until it has finished.
    pub async fn stop_dispatcher(&self) {
        let (stop, tasks) = self.dispatcher.lock().unwrap().clone();
        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }

    /// Starts another dispatcher on the same database and vhost (a second process, or a restart).
    pub async fn start_dispatcher(&self) {
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        anika_dispatcher::State::start(self.ctx.clone(), &tasks, &stop)
            .await
            .expect("dispatcher");
        *self.dispatcher.lock().unwrap() = (stop, tasks);
    }

    /// Starts another dispatcher that opens secrets with `ring` instead (a restart with a new
    /// `ANIKA_SECRET_KEYS`).
    pub async fn start_dispatcher_with_ring(&self, ring: anika_shared::secrets::KeyRing) {
        let mut ctx = self.ctx.clone();
        ctx.secrets = Arc::new(ring);
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        anika_dispatcher::State::start(ctx, &tasks, &stop)
            .await
            .expect("dispatcher");
        *self.dispatcher.lock().unwrap() = (stop, tasks);
    }

    pub async fn partner(&self, name: &str) -> Partner {
        self.api.partner(&self.operator, name).await
    }

    pub async fn topic(&self, admin: &str, name: &str) -> String {
        let topic = self
            .api
            .post("/v1/topics", admin, json!({"name": name}))
            .await
            .expect(201);
        topic["id"].as_str().expect("topic id").to_owned()
    }

    /// Creates a subscription with extra fields; returns the answer (with its secret).
    pub async fn subscribe(&self, admin: &str, topic: &str, url: &str, extra: Value) -> Value {
        let mut body = json!({"topic_id": topic, "url": url});
        for (k, v) in extra.as_object().expect("extra fields") {
            body[k] = v.clone();
        }
        let sub = self
            .api
            .post("/v1/subscriptions", admin, body)
            .await
            .expect(201);
        // The dispatcher hears of it through NOTIFY; give its consumer a moment to attach.
        self.wait_for_consumer(sub["id"].as_str().expect("id"))
            .await;
        sub
    }

    /// Waits until the subscription's queue has a consumer.
    pub async fn wait_for_consumer(&self, sub: &str) {
        let queue = format!("anika.sub.{sub}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.env.consumers(&queue).await.unwrap_or(0) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no consumer attached to {queue}");
    }

    /// Publishes an event the way ingest does (envelope body, persistent, confirmed).
    pub async fn publish(&self, topic: &str, publisher: &str, data: Value) -> EventId {
        self.publish_many(topic, publisher, vec![data]).await[0]
    }

    pub async fn publish_many(
        &self,
        topic: &str,
        publisher: &str,
        datas: Vec<Value>,
    ) -> Vec<EventId> {
        let channel = self.ctx.broker.confirm_channel().await.expect("channel");
        let topic_id = TopicId::parse(topic).expect("topic id");
        let partner = PartnerId::parse(publisher).expect("partner id");
        let mut ids = Vec::new();
        for data in datas {
            let id = EventId::new();
            let raw = RawValue::from_string(data.to_string()).expect("raw");
            let body = Envelope::encode(
                &EventHead {
                    id,
                    topic_id,
                    topic: "t",
                    publisher: partner,
                    key: None,
                    received_at: id.timestamp(),
                },
                &raw,
            );
            channel
                .basic_publish(
                    "anika.events".into(),
                    topic.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties(id, topic_id, 0),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            ids.push(id);
        }
        let _ = channel.close(200, "done".into()).await;
        ids
    }

    /// Attempt rows of a subscription, oldest first: (event, attempt, status, http_status, error).
    pub async fn attempts(
        &self,
        sub: &str,
    ) -> Vec<(String, i32, String, Option<i32>, Option<String>)> {
        sqlx::query_as(
            "SELECT event_id::text, attempt, status, http_status, error FROM attempts \
             WHERE subscription_id = $1::uuid ORDER BY at, attempt",
        )
        .bind(sub)
        .fetch_all(&self.ctx.pool)
        .await
        .expect("attempts")
    }

    /// Waits until `check` holds or panics after `timeout`.
    pub async fn eventually<F, Fut>(&self, what: &str, timeout: Duration, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        assert!(
            anika_testkit::eventually(timeout, check).await,
            "timed out waiting for: {what}"
        );
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.dispatcher.lock().unwrap().0.cancel();
    }
}

/// A dealer with a topic and a receiver-backed subscription of its own.
pub struct Setup {
    pub app: App,
    pub dealer: Partner,
    pub topic: String,
    pub receiver: Receiver,
    pub sub: Value,
}

impl Setup {
    pub async fn new(overrides: &[(&str, &str)], sub_extra: Value) -> Self {
        let app = App::spawn(overrides).await;
        let dealer = app.partner("dealer").await;
        let topic = app.topic(&dealer.admin, "car.chosen").await;
        let receiver = Receiver::start().await;
        let sub = app
            .subscribe(&dealer.admin, &topic, &receiver.url("/hook"), sub_extra)
            .await;
        Self {
            app,
            dealer,
            topic,
            receiver,
            sub,
        }
    }

    pub fn sub_id(&self) -> &str {
        self.sub["id"].as_str().expect("id")
    }

    pub async fn publish(&self, data: Value) -> EventId {
        self.app.publish(&self.topic, &self.dealer.id, data).await
    }

    /// How many dead-letter records the subscription has.
    pub async fn dead_letter_records(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE subscription_id = $1::uuid")
            .bind(self.sub_id())
            .fetch_one(&self.app.ctx.pool)
            .await
            .expect("count dead letters")
    }

    /// The distinct `webhook-id`s of the receiver's requests from the `from`-th on, once
    /// it has seen `from + n` requests (or 10 s passed), sorted.
    pub async fn distinct_ids_after(&self, from: usize, n: usize) -> Vec<String> {
        let got = self
            .receiver
            .wait_for(from + n, Duration::from_secs(10))
            .await;
        let mut ids: Vec<String> = got[from.min(got.len())..]
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// How long after `since` the receiver's next request came, once it had seen `seen`.
    pub async fn next_request_after(&self, seen: usize, since: std::time::Instant) -> Duration {
        let got = self
            .receiver
            .wait_for(seen + 1, Duration::from_secs(15))
            .await;
        assert!(got.len() > seen, "no request after the first {seen}");
        got[seen].at - since
    }
}
