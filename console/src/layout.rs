//! The page frame and the small pieces every page uses (fields, badges, notices).

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use crate::{
    api::ApiProblem,
    session::{Role, Session},
};

/// htmx settings that keep it within the CSP: no inline styles, no eval, no script tags.
const HTMX_CONFIG: &str =
    r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=(HTMX_CONFIG);
            title { (title) " · anika console" }
            link rel="icon" type="image/svg+xml" href="/console/static/favicon.svg";
            link rel="stylesheet" href="/console/static/console.css";
            script src="/console/static/htmx.min.js" defer {}
            script src="/console/static/console.js" defer {}
        }
    }
}

/// A page for a signed-in person: navigation for their role, the content, sign-out.
pub fn page(session: &Session, title: &str, content: Markup) -> Markup {
    let who = &session.who;
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console" { "anika" }
                    nav aria-label="Main" {
                        ul {
                            li { a href="/console" { "Overview" } }
                            li { a href="/console/subscriptions" { "Subscriptions" } }
                            @if who.role != Role::Publisher {
                                li { a href="/console/dead-letters" { "Dead letters" } }
                            }
                            li { a href="/console/events" { "Events" } }
                            li { a href="/console/topics" { "Topics" } }
                            @if who.role == Role::Operator {
                                li { a href="/console/partners" { "Partners" } }
                            }
                            @if who.role != Role::Publisher {
                                li { a href="/console/api-keys" { "API keys" } }
                                li { a href="/console/audit" { "Audit log" } }
                            }
                        }
                    }
                    form.signout method="post" action="/console/sign-out" {
                        (csrf(session))
                        span.who { (who.role.label()) }
                        button type="submit" { "Sign out" }
                    }
                }
                main #main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// A page without navigation: sign-in and error pages.
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { a.brand href="/console" { "anika" } }
                main #main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// The hidden CSRF field every changing form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// The API's words about the field at `pointer`, next to it.
pub fn field_error(problem: Option<&ApiProblem>, pointer: &str, id: &str) -> Markup {
    match problem.and_then(|p| p.field(pointer)) {
        Some(detail) => html! { p.field-error id=(id) role="alert" { (detail) } },
        None => html! {},
    }
}

/// The API's summary of a refused form, above it, with the field errors the form
/// does not show next to one of its `placed` fields.
pub fn form_problem(problem: Option<&ApiProblem>, placed: &[&str]) -> Markup {
    match problem {
        Some(p) => html! {
            div.problem role="alert" {
                p { strong { "Not saved: " } (p.detail) }
                @let unplaced: Vec<_> = p.errors.iter()
                    .filter(|e| !placed.iter().any(|f| e.pointer == *f || e.pointer.starts_with(&format!("{f}/"))))
                    .collect();
                @if !unplaced.is_empty() {
                    ul { @for e in unplaced { li { code { (e.pointer) } ": " (e.detail) } } }
                }
            }
        },
        None => html! {},
    }
}

/// A coloured word for a status (`active`, `succeeded`, `dead` …) that also reads without colour.
pub fn badge(status: &str) -> Markup {
    let class = match status {
        "active" | "succeeded" => "badge ok",
        "paused" | "pending" | "skipped" => "badge warn",
        _ => "badge bad",
    };
    html! { span class=(class) { (status) } }
}

/// A one-time notice (what just happened).
pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// A string field of a JSON object, or "".
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A time as the API gives it (RFC 3339), shortened for a table: `2026-12-01 22:35:10 UTC`.
pub fn time(v: &Value, key: &str) -> Markup {
    let raw = s(v, key);
    let shown = chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_else(|_| raw.to_owned());
    html! { time datetime=(raw) { (shown) } }
}

/// JSON pretty-printed in a `<pre>` (escaped like every other value).
pub fn json_block(v: &Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// A short id for tables (the full one is in the link and the title).
pub fn short_id(id: &str) -> Markup {
    let short: String = id.chars().take(8).collect();
    html! { code title=(id) { (short) "…" } }
}

/// An empty-list message.
pub fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}
