//! The web console: server-rendered pages at `/console` for operators and partners.
//!
//! The console is a client of the public `/v1` API over HTTP, with the signed-in
//! principal's own access token, so it can do exactly what that principal may do
//! with curl: the ACL is the API's, not a copy of it. Pages are maud templates
//! (every value escaped); the only script is htmx, vendored and served from here,
//! under a Content-Security-Policy that forbids inline script and other origins.

mod api;
mod error;
mod events;
mod layout;
mod operator;
mod oversight;
mod overview;
mod session;
mod subscriptions;
mod topics;
mod web;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};

pub use api::ApiClient;
use session::Sessions;

/// The console's `Content-Security-Policy`: nothing inline, nothing from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'";

/// What the console needs to know about its deployment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Base URL of the `/v1` API the console calls (`ANIKA_CONSOLE_API_URL`; by default
    /// the server's own listener; behind a load balancer, the balancer).
    pub api_url: String,
    /// How people reach the server (`ANIKA_PUBLIC_URL`): https makes the cookie `Secure`.
    pub public_url: Option<String>,
}

impl Settings {
    /// The settings from the process configuration: `ANIKA_CONSOLE_API_URL`, or else
    /// the address this process listens on (an unspecified address means loopback).
    pub fn from_config(config: &anika_shared::config::Config, listening: SocketAddr) -> Self {
        Self {
            api_url: config
                .catalog
                .console_api_url
                .clone()
                .unwrap_or_else(|| own_api_url(listening)),
            public_url: config.public_url.clone(),
        }
    }
}

/// `http://<listener>`, with `0.0.0.0`/`::` replaced by the loopback address.
fn own_api_url(listening: SocketAddr) -> String {
    let mut addr = listening;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    format!("http://{addr}")
}

/// Why the console could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("console: cannot build the API client: {0}")]
pub struct SetupError(#[from] reqwest::Error);

/// Shared by every console handler.
#[derive(Clone, Debug)]
pub(crate) struct State(Arc<Inner>);

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) api: ApiClient,
    pub(crate) sessions: Sessions,
    pub(crate) secure_cookies: bool,
    /// The operator overview's recent samples of `/metrics`, for its charts.
    pub(crate) samples: overview::Samples,
}

impl std::ops::Deref for State {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The console's routes, all under `/console`, ready to merge into a role's router.
pub fn router(settings: Settings) -> Result<Router, SetupError> {
    let state = State(Arc::new(Inner {
        api: ApiClient::new(&settings.api_url)?,
        sessions: Sessions::default(),
        secure_cookies: session::cookies_secure(settings.public_url.as_deref()),
        samples: overview::Samples::default(),
    }));
    Ok(Router::new()
        .route("/console", get(overview::page))
        .route("/console/overview/live", get(overview::live))
        .route(
            "/console/sign-in",
            get(web::sign_in_page).post(web::sign_in),
        )
        .route("/console/sign-out", post(web::sign_out))
        .route(
            "/console/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route("/console/subscriptions/new", get(subscriptions::new_form))
        .route("/console/subscriptions/{id}", get(subscriptions::show))
        .route(
            "/console/subscriptions/{id}/health",
            get(subscriptions::health),
        )
        .route(
            "/console/subscriptions/{id}/test",
            post(subscriptions::send_test),
        )
        .route("/console/dead-letters", get(oversight::dead_letters))
        .route("/console/audit", get(oversight::audit))
        .route(
            "/console/subscriptions/{id}/edit",
            get(subscriptions::edit_page).post(subscriptions::edit),
        )
        .route(
            "/console/subscriptions/{id}/status",
            post(subscriptions::set_status),
        )
        .route(
            "/console/subscriptions/{id}/replay",
            post(subscriptions::replay_log),
        )
        .route(
            "/console/subscriptions/{id}/rotate-secret",
            post(subscriptions::rotate_secret),
        )
        .route(
            "/console/subscriptions/{id}/dead-letters",
            get(subscriptions::dead_letters),
        )
        .route(
            "/console/subscriptions/{id}/dead-letters/replay",
            post(subscriptions::replay),
        )
        .route(
            "/console/subscriptions/{id}/dead-letters/purge",
            get(subscriptions::purge_confirm).post(subscriptions::purge),
        )
        .route("/console/events", get(events::list))
        .route("/console/events/{id}", get(events::show))
        .route("/console/topics", get(topics::list).post(topics::create))
        .route("/console/topics/{id}", get(topics::show))
        .route("/console/topics/{id}/grants", post(topics::grant))
        .route("/console/topics/{id}/grants/revoke", post(topics::revoke))
        .route(
            "/console/partners",
            get(operator::partners).post(operator::create_partner),
        )
        .route(
            "/console/partners/{id}",
            get(operator::partner).post(operator::set_quota),
        )
        .route(
            "/console/api-keys",
            get(operator::api_keys).post(operator::create_key),
        )
        .route("/console/api-keys/revoke", post(operator::revoke_key))
        .route("/console/static/htmx.min.js", get(web::htmx))
        .route("/console/static/console.css", get(web::css))
        .route("/console/static/favicon.svg", get(web::favicon))
        .route("/console/static/console.js", get(web::script))
        .route("/console/{*rest}", get(web::not_found))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            error::frame_errors,
        ))
        .with_state(state)
        .layer(middleware::from_fn(security_headers)))
}

/// Every console answer: the strict CSP, no sniffing, no framing, no caching of pages.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_static = request.uri().path().starts_with("/console/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_static {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_calls_its_own_listener_unless_told_otherwise() {
        assert_eq!(
            own_api_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(own_api_url("[::]:81".parse().unwrap()), "http://[::1]:81");
        assert_eq!(
            own_api_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80"
        );
        let config =
            anika_shared::config::Config::with_overrides([("console_api_url", "http://lb:8080")])
                .unwrap();
        let settings = Settings::from_config(&config, "127.0.0.1:1".parse().unwrap());
        assert_eq!(settings.api_url, "http://lb:8080");
    }
}
