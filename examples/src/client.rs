//! A small client of anika's HTTP API that signs in with one API key.
//!
//! It exchanges the key for an access token on first use and again when anika answers
//! 401 (tokens live at most 15 minutes), and waits out 429 and 503 answers as their
//! `Retry-After` asks, so an example survives a busy server without losing an event.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// How often a 429/503 answer is waited out before giving up.
const BUSY_RETRIES: u32 = 10;

/// anika refused a call or could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// anika answered with an error status; `detail` is the problem document's.
    #[error("{method} {path}: {status} {detail}")]
    Status {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The answer's status.
        status: StatusCode,
        /// The problem document's `detail` (or the body).
        detail: String,
    },
    /// The request did not get an answer.
    #[error("{method} {path}: {source}")]
    Transport {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// Why.
        source: reqwest::Error,
    },
}

impl ApiError {
    /// The status anika answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transport { .. } => None,
        }
    }
}

/// One principal's view of anika.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: String,
    token: Mutex<Option<String>>,
}

impl Client {
    /// A client of the anika at `base` that signs in with `api_key`.
    pub fn new(http: reqwest::Client, base: &str, api_key: &str) -> Self {
        Self {
            http,
            base: base.to_owned(),
            api_key: api_key.to_owned(),
            token: Mutex::new(None),
        }
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None, None).await
    }

    /// POST `body` to `path`.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some(&body), None).await
    }

    /// PUT to `path` without a body.
    pub async fn put(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::PUT, path, None, None).await
    }

    /// PATCH `path` with `body`.
    pub async fn patch(&self, path: &str, body: Value) -> Result<Value, ApiError> {
        self.call(Method::PATCH, path, Some(&body), None).await
    }

    /// Publishes `data` to the topic `topic_id`; the `idempotency_key` makes a repeated
    /// publish (after a timeout, or a redelivered webhook) return the first event's id.
    pub async fn publish(
        &self,
        topic_id: &str,
        data: Value,
        idempotency_key: &str,
    ) -> Result<String, ApiError> {
        let path = format!("/v1/topics/{topic_id}/events");
        let answer = self
            .call(
                Method::POST,
                &path,
                Some(&json!({ "data": data })),
                Some(idempotency_key),
            )
            .await?;
        Ok(answer["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Sends one request; JSON in, JSON out (`null` for an empty body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut busy = 0;
        let mut signed_in_again = false;
        loop {
            let token = self.token(&method, path).await?;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&token);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let response = request.send().await.map_err(|source| ApiError::Transport {
                method: method.clone(),
                path: path.to_owned(),
                source,
            })?;
            let status = response.status();
            match status {
                StatusCode::UNAUTHORIZED if !signed_in_again => {
                    // The token expired: sign in again once.
                    signed_in_again = true;
                    *self.token.lock().await = None;
                    continue;
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    if busy < BUSY_RETRIES =>
                {
                    busy += 1;
                    tokio::time::sleep(retry_after(response.headers())).await;
                    continue;
                }
                _ => {}
            }
            let text = response
                .text()
                .await
                .map_err(|source| ApiError::Transport {
                    method: method.clone(),
                    path: path.to_owned(),
                    source,
                })?;
            if !status.is_success() {
                let detail = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                return Err(ApiError::Status {
                    method,
                    path: path.to_owned(),
                    status,
                    detail,
                });
            }
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
    }

    /// The cached access token, or a new one for the API key.
    async fn token(&self, method: &Method, path: &str) -> Result<String, ApiError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            return Ok(token.clone());
        }
        let transport = |source| ApiError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let response = self
            .http
            .post(format!("{}/v1/auth/token", self.base))
            .json(&json!({"grant_type": "api_key", "api_key": self.api_key}))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let body: Value = response.json().await.map_err(transport)?;
        let Some(token) = body["access_token"]
            .as_str()
            .filter(|_| status.is_success())
        else {
            return Err(ApiError::Status {
                method: Method::POST,
                path: "/v1/auth/token".into(),
                status,
                detail: body["detail"]
                    .as_str()
                    .unwrap_or("no access token")
                    .to_owned(),
            });
        };
        *cached = Some(token.to_owned());
        Ok(token.to_owned())
    }
}

/// The wait a 429/503 asks for: `Retry-After` seconds, between 100 ms and 5 s.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let seconds = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds.min(5)).max(Duration::from_millis(100))
}
