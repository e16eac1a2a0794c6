//! An HTTP client for the API under test: status and JSON, problem documents checked.

use std::net::SocketAddr;

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

/// A body sent as it is: its `content-type` (none if `None`) and its bytes.
#[derive(Debug)]
pub struct RawBody<'a>(pub Option<&'a str>, pub Vec<u8>);

impl Api {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: crate::env::client(),
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
        RawBody(content_type, body): RawBody<'_>,
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
