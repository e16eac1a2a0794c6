//! The console's client of the public `/v1` API: the same routes, the same ACL, over HTTP.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

/// One invalid field, as a problem document names it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FieldProblem {
    /// JSON Pointer to the field (`/name`).
    #[serde(default)]
    pub pointer: String,
    /// What is wrong with it.
    #[serde(default)]
    pub detail: String,
}

/// An RFC 9457 problem document the API answered.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ApiProblem {
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// Short summary.
    #[serde(default)]
    pub title: String,
    /// What went wrong, in the API's words.
    #[serde(default)]
    pub detail: String,
    /// Each invalid field.
    #[serde(default)]
    pub errors: Vec<FieldProblem>,
}

impl ApiProblem {
    /// The detail of the field at `pointer` (or below it), if the API named it.
    pub fn field(&self, pointer: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| {
                e.pointer == pointer
                    || e.pointer
                        .strip_prefix(pointer)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|e| e.detail.as_str())
    }
}

/// Why an API call did not give the console what it asked for.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: the token is no longer accepted (revoked key, expired login).
    #[error("not signed in: {0}")]
    Unauthorized(String),
    /// 404: not there, or not visible to this principal.
    #[error("not found: {0}")]
    NotFound(String),
    /// Another 4xx: bad input or not allowed, with the API's explanation.
    #[error("refused ({}): {}", .0.status, .0.detail)]
    Refused(ApiProblem),
    /// 5xx, a timeout, or the API is unreachable: the person gets a friendly page.
    #[error("API unavailable: {0}")]
    Unavailable(String),
}

/// An HTTP client of `/v1` at one base URL.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the API at `base` (`http://host:port`, no trailing slash).
    pub fn new(base: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; 2xx gives the JSON body (`Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path_and_query}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            tracing::warn!(error = %e, %method, path = path_and_query, "console: the API did not answer");
            ApiError::Unavailable(format!("the API did not answer ({e})"))
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            tracing::warn!(error = %e, %method, path = path_and_query, "console: the API's answer broke off");
            ApiError::Unavailable(format!("the API's answer broke off ({e})"))
        })?;
        classify(status, &bytes).inspect_err(|e| {
            if matches!(e, ApiError::Unavailable(_)) {
                tracing::warn!(%status, %method, path = path_and_query, "console: the API failed");
            }
        })
    }

    /// Plain text from a service endpoint (`/metrics`).
    pub async fn text(&self, path: &str) -> Result<String, ApiError> {
        self.fetch_text(path).await.inspect_err(|e| {
            tracing::warn!(error = %e, path, "console: a service endpoint failed");
        })
    }

    async fn fetch_text(&self, path: &str) -> Result<String, ApiError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| ApiError::Unavailable(format!("the API did not answer ({e})")))?;
        if !response.status().is_success() {
            return Err(ApiError::Unavailable(format!(
                "{path} answered {}",
                response.status()
            )));
        }
        response
            .text()
            .await
            .map_err(|e| ApiError::Unavailable(format!("{path} broke off ({e})")))
    }
}

/// Decides what an answer means for the console.
fn classify(status: StatusCode, body: &[u8]) -> Result<Value, ApiError> {
    if status.is_success() {
        return Ok(if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        });
    }
    let mut problem: ApiProblem = serde_json::from_slice(body).unwrap_or_default();
    problem.status = status.as_u16();
    if problem.detail.is_empty() {
        problem.detail = status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned();
    }
    match status {
        StatusCode::UNAUTHORIZED => Err(ApiError::Unauthorized(problem.detail)),
        StatusCode::NOT_FOUND => Err(ApiError::NotFound(problem.detail)),
        s if s.is_client_error() => Err(ApiError::Refused(problem)),
        _ => Err(ApiError::Unavailable(format!(
            "the API answered {status}: {}",
            problem.detail
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_keeps_its_words_and_field_pointers() {
        let body = br#"{"type":"urn:anika:problem:validation","title":"Invalid","status":422,
            "detail":"the request has invalid fields","errors":[{"pointer":"/schema/type","detail":"not a schema"}]}"#;
        let Err(ApiError::Refused(problem)) = classify(StatusCode::UNPROCESSABLE_ENTITY, body)
        else {
            panic!("a 422 is a refusal")
        };
        assert_eq!(problem.detail, "the request has invalid fields");
        assert_eq!(problem.field("/schema"), Some("not a schema"));
        assert_eq!(problem.field("/sch"), None);
    }

    #[test]
    fn server_errors_and_404s_are_told_apart_from_refusals() {
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, b"{}"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, b"<html>"),
            Err(ApiError::Unavailable(_))
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, b""),
            Err(ApiError::Unauthorized(_))
        ));
        assert_eq!(classify(StatusCode::NO_CONTENT, b"").unwrap(), Value::Null);
    }
}
