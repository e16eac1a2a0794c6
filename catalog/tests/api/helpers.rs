//! A real catalog on a loopback port, with its own database and vhost.

use anika_shared::Context;
pub use anika_testkit::Answer;
use anika_testkit::{Api, Partner, TestEnv};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use anika_testkit::OPERATOR_KEY;

pub struct App {
    pub api: Api,
    pub env: TestEnv,
    pub ctx: Context,
    pub operator: String,
    shutdown: CancellationToken,
}

impl App {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(overrides: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let mut all = vec![("bootstrap_operator_key", OPERATOR_KEY)];
        all.extend_from_slice(overrides);
        let config = env.config(&all);
        anika_shared::telemetry::init(config.log_format);
        let ctx = Context::connect(config, "catalog-test")
            .await
            .expect("connect");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let catalog = anika::Roles {
            catalog: true,
            ..anika::Roles::NONE
        };
        anika::App::builder(catalog, "catalog-test")
            .serve_with(ctx.clone(), listener, shutdown.clone())
            .await
            .expect("catalog");
        let api = Api::new(addr);
        let operator = wait_for_token(&api).await;
        Self {
            api,
            env,
            ctx,
            operator,
            shutdown,
        }
    }

    pub async fn partner(&self, name: &str) -> Partner {
        self.api.partner(&self.operator, name).await
    }

    /// Creates a topic as `admin`, returns its id.
    pub async fn topic(&self, admin: &str, name: &str) -> String {
        let topic = self
            .api
            .post("/v1/topics", admin, json!({"name": name}))
            .await
            .expect(201);
        topic["id"].as_str().expect("topic id").to_owned()
    }

    /// Creates a subscription as `admin`, returns the whole answer.
    pub async fn subscription(&self, admin: &str, topic: &str) -> Value {
        self.api
            .post(
                "/v1/subscriptions",
                admin,
                json!({"topic_id": topic, "url": "https://bank.example.com/hooks"}),
            )
            .await
            .expect(201)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn wait_for_token(api: &Api) -> String {
    for _ in 0..100 {
        let body = json!({"grant_type": "api_key", "api_key": OPERATOR_KEY});
        let probe = reqwest::Client::new()
            .post(format!("{}/v1/auth/token", api.base))
            .json(&body)
            .send()
            .await;
        if let Ok(response) = probe
            && response.status().is_success()
        {
            let body: Value = response.json().await.expect("token JSON");
            return body["access_token"].as_str().expect("token").to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the catalog did not start");
}
