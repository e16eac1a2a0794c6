//! One webhook POST: signed body, Standard Webhooks headers, no redirects, bounded response excerpt.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anika_shared::{config::Config, domain::WebhookSecret, net::WebhookUrl};
use bytes::Bytes;
use reqwest::{StatusCode, header::HeaderValue};

use crate::{
    sign,
    target::{Blocked, GuardedResolver, Lookup},
};

/// At most this much of a response body is kept for the attempt log.
pub const EXCERPT_BYTES: usize = 4096;

/// What came of one attempt.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Any 2xx.
    Delivered {
        /// The status.
        status: u16,
        /// The start of the response body.
        excerpt: String,
    },
    /// Anything else: a status, a timeout, a refused connection, a blocked target.
    Failed {
        /// The status, if the endpoint answered.
        status: Option<u16>,
        /// What went wrong, in words.
        error: String,
        /// The start of the response body, if any.
        excerpt: Option<String>,
        /// `Retry-After` of a 429 or 503.
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// The HTTP status, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Delivered { status, .. } => Some(*status),
            Self::Failed { status, .. } => *status,
        }
    }

    /// Whether the endpoint said it is gone for good (410).
    pub fn gone(&self) -> bool {
        self.status() == Some(410)
    }
}

/// The HTTP client every delivery goes through: one pool of connections per process.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: anika_shared::net::TargetPolicy,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl Sender {
    /// Builds the client: guarded resolver, no proxy, no redirects, the configured timeouts.
    pub fn new(config: &Config, lookup: Arc<dyn Lookup>) -> Result<Self, reqwest::Error> {
        let policy = anika_shared::net::TargetPolicy::new(config.allowed_target_nets.clone());
        let client = reqwest::Client::builder()
            .dns_resolver(GuardedResolver::new(lookup, policy.clone()))
            // A proxy would resolve the name itself, behind the guard's back.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.dispatcher.http_connect_timeout)
            .timeout(config.dispatcher.http_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        let user_agent = HeaderValue::from_str(&format!("anika/{}", env!("CARGO_PKG_VERSION")))
            .expect("a version is a valid header value");
        Ok(Self {
            client,
            policy,
            user_agent,
        })
    }

    /// POSTs `body` to `url`, signed with every secret in `secrets`.
    pub async fn send(
        &self,
        url: &WebhookUrl,
        secrets: &[&WebhookSecret],
        event_id: &str,
        body: Bytes,
    ) -> (Outcome, Duration) {
        let started = Instant::now();
        // An IP literal never reaches the resolver: check it here, against today's policy.
        // The host alone: the URL was parsed and validated when the subscription was loaded,
        // and parsing it again on every delivery showed up in profiles.
        if let Err(reason) = url.check_host(&self.policy) {
            let outcome = Outcome::Failed {
                status: None,
                error: format!("blocked by the SSRF guard: {reason}"),
                excerpt: None,
                retry_after: None,
            };
            return (outcome, started.elapsed());
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign::header(secrets, event_id, timestamp, &body);
        let request = self
            .client
            .post(url.as_url().clone())
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, self.user_agent.clone())
            .body(body);
        let outcome = match request.send().await {
            Ok(response) => read_response(response).await,
            Err(error) => Outcome::Failed {
                status: None,
                error: describe(&error),
                excerpt: None,
                retry_after: None,
            },
        };
        (outcome, started.elapsed())
    }
}

async fn read_response(mut response: reqwest::Response) -> Outcome {
    let status = response.status();
    let retry_after = if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(parse_retry_after)
    } else {
        None
    };
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut kept = Vec::new();
    let mut body_error = None;
    while kept.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                kept.extend_from_slice(&chunk[..chunk.len().min(EXCERPT_BYTES - kept.len())])
            }
            Ok(None) => break,
            Err(e) => {
                body_error = Some(describe(&e));
                break;
            }
        }
    }
    let excerpt = text(&kept);
    if status.is_success() {
        return Outcome::Delivered {
            status: status.as_u16(),
            excerpt,
        };
    }
    let error = if status.is_redirection() {
        format!(
            "redirect ({status}) to {} not followed: point the subscription at the final URL",
            location.as_deref().unwrap_or("an unnamed location")
        )
    } else if status == StatusCode::GONE {
        "the endpoint answered 410 Gone".to_owned()
    } else {
        match body_error {
            Some(e) => format!("the endpoint answered {status}; reading its body failed: {e}"),
            None => format!("the endpoint answered {status}"),
        }
    };
    Outcome::Failed {
        status: Some(status.as_u16()),
        error,
        excerpt: Some(excerpt),
        retry_after,
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Text fit for a PostgreSQL `text` column: valid UTF-8, no NUL.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "")
}

/// Says what failed, naming a blocked target, a timeout or a refused connection plainly.
fn describe(error: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(blocked) = current.downcast_ref::<Blocked>() {
            return blocked.to_string();
        }
        source = current.source();
    }
    let mut chain = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    text(chain.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("7")),
            Some(Duration::from_secs(7))
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let parsed = parse_retry_after(&HeaderValue::from_str(&later).unwrap()).unwrap();
        assert!(
            parsed > Duration::from_secs(25) && parsed <= Duration::from_secs(30),
            "{parsed:?}"
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }
}
