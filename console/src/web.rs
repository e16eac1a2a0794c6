//! Request plumbing: the signed-in extractor, CSRF-checked forms, sign-in and sign-out, assets.

use std::{sync::Arc, time::Instant};

use axum::{
    Form,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{Html, IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use reqwest::Method;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    State,
    api::{ApiError, ApiProblem},
    error::{PageError, PageResult},
    layout,
    session::{self, Session, Tokens, Who},
};

/// The vendored htmx (2.x, BSD Zero Clause licence: `console/assets/htmx-LICENSE`).
const HTMX: &[u8] = include_bytes!("../assets/htmx.min.js");
/// The console's own script (copy buttons).
const SCRIPT: &[u8] = include_bytes!("../assets/console.js");
/// The console's icon.
const FAVICON: &[u8] = include_bytes!("../assets/favicon.svg");
/// The console's own style sheet.
const CSS: &[u8] = include_bytes!("../assets/console.css");

/// A signed-in request: the session and a way to call the API as its principal.
pub struct Console {
    pub(crate) state: State,
    pub(crate) session: Arc<Session>,
}

impl FromRequestParts<State> for Console {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, PageError> {
        let id = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::session_id_from_cookies)
            .ok_or(PageError::SignIn)?;
        let session = state.sessions.get(&id).ok_or(PageError::SignIn)?;
        Ok(Self {
            state: state.clone(),
            session,
        })
    }
}

impl Console {
    /// A valid access token, refreshed first when it is about to expire.
    async fn token(&self) -> PageResult<String> {
        let mut tokens = self.session.tokens.lock().await;
        if tokens.need_refresh(Instant::now()) {
            let answer = self
                .state
                .api
                .call(
                    Method::POST,
                    "/v1/auth/token",
                    None,
                    Some(&json!({"grant_type": "refresh_token", "refresh_token": tokens.refresh})),
                )
                .await;
            match answer.and_then(|v| issued(&v)) {
                Ok((_, fresh)) => *tokens = fresh,
                Err(ApiError::Unavailable(cause)) => return Err(PageError::Unavailable(cause)),
                Err(e) => {
                    tracing::info!(error = %e, "console: the login could not be refreshed; signing out");
                    self.state.sessions.end(&self.session.id);
                    return Err(PageError::SignIn);
                }
            }
        }
        Ok(tokens.access.clone())
    }

    /// Calls the API as the signed-in principal; a 401 ends the session.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let token = match self.token().await {
            Ok(t) => t,
            Err(PageError::Unavailable(cause)) => return Err(ApiError::Unavailable(cause)),
            Err(_) => return Err(ApiError::Unauthorized("signed out".into())),
        };
        let answer = self.state.api.call(method, path, Some(&token), body).await;
        if let Err(ApiError::Unauthorized(_)) = &answer {
            self.state.sessions.end(&self.session.id);
        }
        answer
    }

    /// GET as the principal.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None).await
    }

    /// A page in the frame of this session.
    pub fn page(&self, title: &str, content: Markup) -> Response {
        Html(layout::page(&self.session, title, content).into_string()).into_response()
    }
}

/// Reads the token endpoint's answer.
fn issued(v: &Value) -> Result<(Who, Tokens), ApiError> {
    let access = v["access_token"].as_str();
    let refresh = v["refresh_token"].as_str();
    let expires_in = v["expires_in"].as_u64();
    match (access, refresh, expires_in) {
        (Some(access), Some(refresh), Some(expires_in)) => {
            let who = Who::from_access_token(access).ok_or_else(|| {
                ApiError::Unavailable("the API issued a token the console cannot read".into())
            })?;
            Ok((
                who,
                Tokens::issued(
                    access.to_owned(),
                    expires_in,
                    refresh.to_owned(),
                    Instant::now(),
                ),
            ))
        }
        _ => Err(ApiError::Unavailable(
            "the token endpoint answered without tokens".into(),
        )),
    }
}

/// A form that changes something: signed in, and carrying this session's CSRF token
/// in the field `csrf` (checked before the form is even parsed).
pub struct Protected<T>(pub Console, pub T);

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl<T: DeserializeOwned> FromRequest<State> for Protected<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &State) -> Result<Self, PageError> {
        let (mut parts, body) = request.into_parts();
        let console = Console::from_request_parts(&mut parts, state).await?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| PageError::BadInput(format!("the form could not be read: {e}")))?;
        let field: CsrfField = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| PageError::BadInput(format!("the form could not be read: {e}")))?;
        if !console.session.csrf_matches(&field.csrf) {
            tracing::warn!("console: a changing form arrived without its CSRF token; refused");
            return Err(PageError::Csrf);
        }
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| PageError::BadInput(format!("the form could not be read: {e}")))?;
        Ok(Self(console, form))
    }
}

/// `Some(trimmed)` when a form field has text, `None` when it is empty.
pub fn filled(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Splits a form's API refusal from the failures that make a whole page.
pub fn refusal(error: ApiError) -> Result<ApiProblem, PageError> {
    match error {
        ApiError::Refused(problem) => Ok(problem),
        other => Err(other.into()),
    }
}

/// GET /console/sign-in
pub async fn sign_in_page() -> Html<String> {
    Html(sign_in_markup(None).into_string())
}

fn sign_in_markup(problem: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            form.card method="post" action="/console/sign-in" {
                @if let Some(p) = problem { p.problem role="alert" id="key-error" { (p) } }
                label for="api_key" { "API key" }
                input #api_key type="password" name="api_key" autocomplete="off" required
                    aria-describedby=[problem.map(|_| "key-error")];
                p.hint { "Any operator, admin or publisher key; the console can do exactly what the key may do through the API." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    api_key: String,
}

/// POST /console/sign-in: exchanges the key for tokens and starts a session.
pub async fn sign_in(
    axum::extract::State(state): axum::extract::State<State>,
    Form(form): Form<SignIn>,
) -> PageResult {
    let key = form.api_key.trim();
    if key.is_empty() {
        return Ok(refused_sign_in("Enter an API key."));
    }
    let answer = state
        .api
        .call(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(&json!({"grant_type": "api_key", "api_key": key})),
        )
        .await;
    let (who, tokens) = match answer.and_then(|v| issued(&v)) {
        Ok(issued) => issued,
        Err(ApiError::Unauthorized(_)) => {
            return Ok(refused_sign_in("This API key is unknown or was revoked."));
        }
        Err(ApiError::Refused(p)) => return Ok(refused_sign_in(&p.detail)),
        Err(e) => return Err(e.into()),
    };
    let session = state.sessions.start(who, tokens);
    let mut response = Redirect::to("/console").into_response();
    set_cookie(
        response.headers_mut(),
        &session::session_cookie(&session.id, state.secure_cookies),
    );
    Ok(response)
}

fn refused_sign_in(detail: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Html(sign_in_markup(Some(detail)).into_string()),
    )
        .into_response()
}

fn set_cookie(headers: &mut HeaderMap, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.append(header::SET_COOKIE, v);
        }
        Err(e) => tracing::error!(error = %e, "console: a cookie value is not a header value"),
    }
}

/// POST /console/sign-out: forgets the session and spends its refresh token.
///
/// The API has no endpoint that revokes one refresh token, so the console uses it once
/// in a refresh and discards both the new access and refresh tokens: the old one is
/// then spent, and the new ones were never outside this process.
pub async fn sign_out(Protected(console, _): Protected<CsrfOnly>) -> Response {
    let state = console.state.clone();
    if let Some(session) = state.sessions.end(&console.session.id) {
        let refresh = session.tokens.lock().await.refresh.clone();
        let spent = state
            .api
            .call(
                Method::POST,
                "/v1/auth/token",
                None,
                Some(&json!({"grant_type": "refresh_token", "refresh_token": refresh})),
            )
            .await;
        if let Err(e) = spent {
            tracing::info!(error = %e, "console: the signed-out session's refresh token could not be spent");
        }
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    set_cookie(
        response.headers_mut(),
        &session::clear_cookie(state.secure_cookies),
    );
    response
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub struct CsrfOnly {}

/// GET /console/static/htmx.min.js
pub async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        HTMX,
    )
}

/// GET /console/static/favicon.svg (browsers ask for an icon; a 404 would be a console error)
pub async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
}

/// GET /console/static/console.js
pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        SCRIPT,
    )
}

/// GET /console/static/console.css
pub async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
}

/// Any other `/console/…` path.
pub async fn not_found() -> PageError {
    PageError::NotFound("no such console page".into())
}
