//! The console's one error type, mapped once to pages a person can read.
//!
//! A page never shows a raw error: the API's own words for a refusal, a plain
//! "not found" for what the principal may not see, and a friendly page (the cause
//! logged) when the API is down or failed.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::html;

use crate::{
    api::{ApiError, ApiProblem},
    layout,
};

/// Everything a console request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// No session, or it ended: go to the sign-in page.
    #[error("not signed in")]
    SignIn,
    /// Not there, or not visible to this principal (the API answered 404).
    #[error("not found: {0}")]
    NotFound(String),
    /// A changing form arrived without this session's CSRF token.
    #[error("CSRF token missing or wrong")]
    Csrf,
    /// The API refused, outside a form that could show it next to a field.
    #[error("refused: {}", .0.detail)]
    Refused(ApiProblem),
    /// Input the console itself could not read.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The API is unreachable or failed; the cause is logged, the person sees a friendly page.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Unauthorized(_) => Self::SignIn,
            ApiError::NotFound(detail) => Self::NotFound(detail),
            ApiError::Refused(problem) => Self::Refused(problem),
            ApiError::Unavailable(cause) => Self::Unavailable(cause),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, body) = match self {
            Self::SignIn => return Redirect::to("/console/sign-in").into_response(),
            Self::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "Not found",
                html! {
                    p { "This page does not exist, or your key may not see it." }
                    p { a href="/console" { "Back to the overview" } }
                },
            ),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "Form refused",
                html! {
                    p { "This form was not sent from your current console session (its security token is missing or stale), so nothing was changed." }
                    p { "Go back, reload the page and try again." }
                },
            ),
            Self::Refused(problem) => (
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST),
                "Refused",
                html! {
                    p.problem role="alert" { (problem.detail) }
                    @if !problem.errors.is_empty() {
                        ul { @for e in &problem.errors { li { code { (e.pointer) } ": " (e.detail) } } }
                    }
                    p { a href="/console" { "Back to the overview" } }
                },
            ),
            Self::BadInput(detail) => (
                StatusCode::BAD_REQUEST,
                "Bad input",
                html! { p.problem role="alert" { (detail) } },
            ),
            Self::Unavailable(cause) => {
                tracing::warn!(cause, "console: showing the unavailable page");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "anika is not answering",
                    html! {
                        p { "The API behind the console did not answer properly, so this page cannot be shown right now. Nothing was changed by this page." }
                        p { "Try again in a minute. If it persists, check " code { "/readyz" } " and the server's logs." }
                    },
                )
            }
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            layout::bare(title, body.clone()).into_string(),
        )
            .into_response();
        // For a signed-in person, `frame_errors` draws the same content inside the
        // navigation (with Sign out); this is what it needs for that.
        response.extensions_mut().insert(ErrorFrame {
            title,
            body: body.into_string(),
        });
        response
    }
}

/// An error page's title and content, for re-framing it in a signed-in page.
#[derive(Clone, Debug)]
pub struct ErrorFrame {
    title: &'static str,
    body: String,
}

/// Draws error pages inside the signed-in frame when the request has a live session.
pub async fn frame_errors(
    axum::extract::State(state): axum::extract::State<crate::State>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let session = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(crate::session::session_id_from_cookies)
        .and_then(|id| state.sessions.get(&id));
    // htmx follows a redirect inside the fragment it swaps: for its requests, a lost
    // session sends the whole page to the sign-in form instead.
    let from_htmx = request.headers().contains_key("hx-request");
    let response = next.run(request).await;
    if from_htmx && response.status().is_redirection() {
        return (
            axum::http::StatusCode::OK,
            [("hx-redirect", "/console/sign-in")],
        )
            .into_response();
    }
    let (Some(session), Some(frame)) =
        (session, response.extensions().get::<ErrorFrame>().cloned())
    else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let page = layout::page(&session, frame.title, maud::PreEscaped(frame.body));
    Response::from_parts(parts, axum::body::Body::from(page.into_string()))
}

/// The result of a console handler.
pub type PageResult<T = Response> = Result<T, PageError>;
