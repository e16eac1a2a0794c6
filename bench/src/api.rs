//! The public API as a partner uses it: tokens, and the partner, keys, topic and
//! subscriptions each scenario needs (operator key → partner → admin and publisher
//! keys → topic → subscriptions).

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use uuid::Uuid;

use super::receiver::Receiver;
use crate::CliError;

/// Access tokens live 15 minutes at most; fetch a new one well before.
const TOKEN_REFRESH: Duration = Duration::from_secs(5 * 60);

/// An HTTP client for the API under test.
#[derive(Clone, Debug)]
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    /// Where events are posted (the ingest processes; `base` alone for `anika up`).
    pub ingest_bases: Vec<String>,
    /// The pooled client every request of the bench goes through.
    pub http: reqwest::Client,
}

impl Api {
    /// A client with a connection pool large enough for `concurrency` requests in flight.
    pub fn new(base: &str, concurrency: usize) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            // Every connection the open loop opens may be reused: a client that closes all
            // but a few hundred turns each further request into a TCP handshake, and under
            // overload into SYN retries at the server's full accept queue (seconds each).
            .pool_max_idle_per_host((concurrency.max(64) * 4).max(super::load::MAX_OPEN_IN_FLIGHT))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?;
        Ok(Self {
            base: base.to_owned(),
            ingest_bases: vec![base.to_owned()],
            http,
        })
    }

    /// The same client, posting events to `bases` in turn.
    pub fn posting_to(mut self, bases: &[String]) -> Self {
        if !bases.is_empty() {
            self.ingest_bases = bases.to_vec();
        }
        self
    }

    /// Calls `method path` with `token` and `body`; the answer's JSON if it was a 2xx.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status}: {text}").into());
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Exchanges an API key for an access token.
    pub async fn token(&self, api_key: &str) -> Result<String, CliError> {
        let answer = self
            .call(
                reqwest::Method::POST,
                "/v1/auth/token",
                None,
                Some(json!({"grant_type": "api_key", "api_key": api_key})),
            )
            .await?;
        field(&answer, "access_token")
    }
}

fn field(value: &Value, name: &str) -> Result<String, CliError> {
    value[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the API answer has no `{name}`: {value}").into())
}

fn uuid_field(value: &Value, name: &str) -> Result<Uuid, CliError> {
    Ok(Uuid::parse_str(&field(value, name)?)?)
}

/// An API key and a current access token for it, renewed before it expires.
#[derive(Debug)]
pub struct Credential {
    api: Api,
    key: String,
    token: RwLock<(Arc<str>, Instant)>,
}

impl Credential {
    /// Logs in with `key`.
    pub async fn login(api: &Api, key: String) -> Result<Arc<Self>, CliError> {
        let token = api.token(&key).await?;
        Ok(Arc::new(Self {
            api: api.clone(),
            key,
            token: RwLock::new((Arc::from(token), Instant::now())),
        }))
    }

    /// A valid access token (one lock read on the hot path).
    pub async fn get(&self) -> Result<Arc<str>, CliError> {
        {
            let (token, at) = &*self.token.read().expect("token lock");
            if at.elapsed() < TOKEN_REFRESH {
                return Ok(Arc::clone(token));
            }
        }
        // Several tasks may renew at once; each gets a valid token, the last one stays.
        let fresh: Arc<str> = Arc::from(self.api.token(&self.key).await?);
        *self.token.write().expect("token lock") = (Arc::clone(&fresh), Instant::now());
        Ok(fresh)
    }
}

/// One subscription of a fixture.
#[derive(Clone, Copy, Debug)]
pub struct Sub {
    /// Its id.
    pub id: Uuid,
    /// Its path index on the receiver.
    pub index: u32,
}

/// A partner with a topic and subscriptions pointing at the bench's receiver.
#[derive(Debug)]
pub struct Fixture {
    /// The topic.
    pub topic: Uuid,
    /// The partner's publisher key.
    pub publisher: Arc<Credential>,
    /// The partner's admin key.
    pub admin: Arc<Credential>,
    /// The subscriptions.
    pub subs: Vec<Sub>,
}

impl Fixture {
    /// Creates the partner, its keys, a topic and `subscriptions` subscriptions.
    pub async fn create(
        api: &Api,
        operator: &Credential,
        receiver: &Receiver,
        next_index: &mut u32,
        label: &str,
        subscriptions: usize,
    ) -> Result<Self, CliError> {
        let op = operator.get().await?;
        let suffix = Uuid::new_v4().simple().to_string();
        let partner = api
            .call(
                reqwest::Method::POST,
                "/v1/partners",
                Some(&op),
                Some(json!({"name": format!("bench-{label}-{}", &suffix[..12])})),
            )
            .await?;
        let partner_id = uuid_field(&partner, "id")?;
        let mut keys = Vec::new();
        for role in ["admin", "publisher"] {
            let key = api
                .call(
                    reqwest::Method::POST,
                    "/v1/api-keys",
                    Some(&op),
                    Some(json!({"role": role, "name": format!("bench {role}"), "partner_id": partner_id})),
                )
                .await?;
            keys.push(field(&key, "api_key")?);
        }
        let publisher_key = keys.pop().expect("two keys were made");
        let admin_key = keys.pop().expect("two keys were made");
        let admin = Credential::login(api, admin_key).await?;
        let publisher = Credential::login(api, publisher_key).await?;
        let token = admin.get().await?;
        let topic = api
            .call(
                reqwest::Method::POST,
                "/v1/topics",
                Some(&token),
                Some(json!({"name": format!("bench.{label}"), "description": "anika bench"})),
            )
            .await?;
        let topic = uuid_field(&topic, "id")?;
        let mut subs = Vec::with_capacity(subscriptions);
        for _ in 0..subscriptions {
            let index = *next_index;
            *next_index += 1;
            let created = api
                .call(
                    reqwest::Method::POST,
                    "/v1/subscriptions",
                    Some(&token),
                    Some(json!({"topic_id": topic, "url": receiver.url(index), "description": "anika bench"})),
                )
                .await?;
            receiver.register(index, &field(&created, "secret")?)?;
            subs.push(Sub {
                id: uuid_field(&created, "id")?,
                index,
            });
        }
        Ok(Self {
            topic,
            publisher,
            admin,
            subs,
        })
    }

    /// The receiver indexes of the subscriptions.
    pub fn indexes(&self) -> Vec<u32> {
        self.subs.iter().map(|s| s.index).collect()
    }

    /// Pauses (`false`) or resumes (`true`) every subscription.
    pub async fn set_active(&self, api: &Api, active: bool) -> Result<(), CliError> {
        let token = self.admin.get().await?;
        let status = if active { "active" } else { "paused" };
        for sub in &self.subs {
            api.call(
                reqwest::Method::PATCH,
                &format!("/v1/subscriptions/{}", sub.id),
                Some(&token),
                Some(json!({"status": status})),
            )
            .await?;
        }
        Ok(())
    }

    /// Points every subscription at `url` with this `max_in_flight`.
    pub async fn repoint(&self, api: &Api, url: &str, max_in_flight: u32) -> Result<(), CliError> {
        let token = self.admin.get().await?;
        for sub in &self.subs {
            api.call(
                reqwest::Method::PATCH,
                &format!("/v1/subscriptions/{}", sub.id),
                Some(&token),
                Some(json!({"url": url, "max_in_flight": max_in_flight})),
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes the subscriptions (and so their queues) and the topic.
    pub async fn delete(&self, api: &Api) -> Result<(), CliError> {
        let token = self.admin.get().await?;
        for sub in &self.subs {
            api.call(
                reqwest::Method::DELETE,
                &format!("/v1/subscriptions/{}", sub.id),
                Some(&token),
                None,
            )
            .await?;
        }
        api.call(
            reqwest::Method::DELETE,
            &format!("/v1/topics/{}", self.topic),
            Some(&token),
            None,
        )
        .await?;
        Ok(())
    }
}
