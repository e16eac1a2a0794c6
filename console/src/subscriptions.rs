//! Subscriptions: the list (worst first), creating one, a subscription's page with
//! its attempts, pause/resume, secret rotation, and its dead letters (replay, purge).

use std::collections::HashMap;

use axum::{
    extract::{Path, Query},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{
    api::{ApiError, ApiProblem, FieldProblem},
    error::{PageError, PageResult},
    layout::{badge, csrf, empty, field_error, form_problem, notice, s, short_id, time},
    web::{Console, CsrfOnly, Protected, filled, refusal},
};

/// An id from the URL, or the 404 page (a malformed id names nothing).
pub(crate) fn path_id(raw: &str) -> PageResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| PageError::NotFound(format!("`{raw}` is not an id")))
}

/// How urgently a subscription needs a person: disabled first, then failing now, then
/// dead letters (most first), then paused, then healthy. Smaller sorts first.
pub(crate) fn health_rank(
    status: &str,
    failing: bool,
    dead_letters: u64,
) -> (u8, std::cmp::Reverse<u64>) {
    let tier = match status {
        "disabled" => 0,
        _ if failing => 1,
        _ if dead_letters > 0 => 2,
        "paused" => 3,
        "active" => 4,
        _ => 0,
    };
    (tier, std::cmp::Reverse(dead_letters))
}

/// The rank of a subscription as the API lists it (with `failing_since` and `dead_letters`).
pub(crate) fn rank_of(sub: &Value) -> (u8, std::cmp::Reverse<u64>) {
    health_rank(
        s(sub, "status"),
        !sub["failing_since"].is_null(),
        sub["dead_letters"].as_u64().unwrap_or(0),
    )
}

/// Topic id → name, for the topics this principal can see.
async fn topic_names(c: &Console) -> Result<HashMap<String, String>, ApiError> {
    let topics = c.get("/v1/topics?limit=1000").await?;
    Ok(items(&topics)
        .iter()
        .map(|t| (s(t, "id").to_owned(), s(t, "name").to_owned()))
        .collect())
}

/// The `items` of a list answer.
pub(crate) fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// How many dead letters a subscription holds right now.
async fn dead_letter_total(c: &Console, id: &str) -> Result<u64, ApiError> {
    let v = c
        .get(&format!("/v1/subscriptions/{id}/dead-letters?limit=1"))
        .await?;
    Ok(v["total"].as_u64().unwrap_or(0))
}

/// GET /console/subscriptions
///
/// One call for the subscriptions (each carries its dead-letter count and
/// `failing_since`) and one for the topic names, however many there are.
pub async fn list(c: Console) -> PageResult {
    let (subs, names) = tokio::join!(c.get("/v1/subscriptions?limit=1000"), topic_names(&c));
    let (subs, names) = (subs?, names?);
    let mut rows: Vec<&Value> = items(&subs).iter().collect();
    rows.sort_by_key(|sub| rank_of(sub));
    Ok(c.page(
        "Subscriptions",
        html! {
            p { a.button href="/console/subscriptions/new" { "New subscription" } }
            @if rows.is_empty() { (empty("No subscriptions yet.")) } @else {
                p.hint { "Worst first: disabled, then failing now, then those with dead letters, then paused." }
                div.scroll { table {
                    thead { tr { th { "Status" } th { "Topic" } th { "URL" } th { "Failing since" } th { "Dead letters" } th { "Id" } } }
                    tbody { @for sub in &rows {
                        @let id = s(sub, "id");
                        tr {
                            td { (badge(s(sub, "status"))) }
                            td { (names.get(s(sub, "topic_id")).map(String::as_str).unwrap_or(s(sub, "topic_id"))) }
                            td.url { a href={ "/console/subscriptions/" (id) } { (s(sub, "url")) } }
                            td { @if sub["failing_since"].is_null() { "—" } @else { (time(sub, "failing_since")) } }
                            td.num { (sub["dead_letters"].as_u64().unwrap_or(0)) }
                            td { (short_id(id)) }
                        }
                    } }
                } }
            }
        },
    ))
}

/// The create form's fields as typed.
#[derive(Debug, Default, Deserialize)]
pub struct NewSubscription {
    #[serde(default)]
    topic_id: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    max_attempts: Option<String>,
}

/// Builds the API request from the form, or says which field the console itself cannot read.
fn subscription_body(form: &NewSubscription) -> Result<Value, ApiProblem> {
    let mut body = Map::new();
    body.insert("topic_id".into(), json!(form.topic_id.trim()));
    body.insert("url".into(), json!(form.url.trim()));
    if let Some(d) = filled(&form.description) {
        body.insert("description".into(), json!(d));
    }
    if let Some(f) = filled(&form.filter) {
        let filter: Value = serde_json::from_str(f)
            .map_err(|e| local_problem("/filter", format!("not JSON: {e}")))?;
        body.insert("filter".into(), filter);
    }
    if let Some(m) = filled(&form.max_attempts) {
        let n: u32 = m
            .parse()
            .map_err(|_| local_problem("/max_attempts", "a whole number, e.g. 5".into()))?;
        body.insert("max_attempts".into(), json!(n));
    }
    Ok(Value::Object(body))
}

/// A problem the console finds before asking the API, shaped like the API's.
pub(crate) fn local_problem(pointer: &str, detail: String) -> ApiProblem {
    ApiProblem {
        status: 422,
        title: "Invalid".into(),
        detail: "the form has invalid fields".into(),
        errors: vec![FieldProblem {
            pointer: pointer.into(),
            detail,
        }],
    }
}

fn subscription_form(
    c: &Console,
    topics: &[Value],
    form: &NewSubscription,
    problem: Option<&ApiProblem>,
) -> Markup {
    html! {
        (form_problem(problem, &["/topic_id", "/url", "/description", "/filter", "/max_attempts"]))
        form.card method="post" action="/console/subscriptions" {
            (csrf(&c.session))
            label for="topic_id" { "Topic" }
            select #topic_id name="topic_id" required {
                @for t in topics {
                    option value=(s(t, "id")) selected[s(t, "id") == form.topic_id] { (s(t, "name")) " (" (s(t, "id")) ")" }
                }
            }
            (field_error(problem, "/topic_id", "topic_id-error"))
            label for="url" { "Endpoint URL" }
            input #url type="url" name="url" value=(form.url) required placeholder="https://example.com/webhooks/anika";
            (field_error(problem, "/url", "url-error"))
            label for="description" { "Description (optional)" }
            input #description type="text" name="description" value=(form.description.clone().unwrap_or_default());
            (field_error(problem, "/description", "description-error"))
            label for="filter" { "Filter (optional JSON object: only events whose data contains it)" }
            textarea #filter name="filter" rows="4" placeholder=r#"{"country": "DE"}"# { (form.filter.clone().unwrap_or_default()) }
            (field_error(problem, "/filter", "filter-error"))
            label for="max_attempts" { "Max attempts (optional)" }
            input #max_attempts type="number" min="1" name="max_attempts" value=(form.max_attempts.clone().unwrap_or_default());
            (field_error(problem, "/max_attempts", "max_attempts-error"))
            button type="submit" { "Create subscription" }
        }
    }
}

/// GET /console/subscriptions/new
pub async fn new_form(c: Console) -> PageResult {
    let topics = c.get("/v1/topics?limit=1000").await?;
    Ok(c.page(
        "New subscription",
        subscription_form(&c, items(&topics), &NewSubscription::default(), None),
    ))
}

/// POST /console/subscriptions
pub async fn create(Protected(c, form): Protected<NewSubscription>) -> PageResult {
    let answer = match subscription_body(&form) {
        Ok(body) => c
            .call(Method::POST, "/v1/subscriptions", Some(&body))
            .await
            .map_err(refusal),
        Err(local) => Err(Ok(local)),
    };
    match answer {
        Ok(created) => Ok(c.page(
            "Subscription created",
            html! {
                (notice("The subscription exists and receives events from now on."))
                (secret_once(s(&created, "secret")))
                p { a href={ "/console/subscriptions/" (s(&created, "id")) } { "Open the subscription" } }
            },
        )),
        Err(Ok(problem)) => {
            let topics = c.get("/v1/topics?limit=1000").await?;
            let mut page = c.page(
                "New subscription",
                subscription_form(&c, items(&topics), &form, Some(&problem)),
            );
            *page.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(Err(page_error)) => Err(page_error),
    }
}

/// A signing secret, shown this once.
fn secret_once(secret: &str) -> Markup {
    html! {
        div.secret {
            label for="secret" { "Signing secret (shown only now: store it where your endpoint verifies signatures)" }
            div.copy {
                input #secret type="text" readonly value=(secret);
                button type="button" data-copy="secret" { "Copy" }
            }
        }
    }
}

/// GET /console/subscriptions/{id}
pub async fn show(
    c: Console,
    Path(raw): Path<String>,
    Query(outcome): Query<SubscriptionOutcome>,
) -> PageResult {
    let id = path_id(&raw)?;
    let sub = c.get(&format!("/v1/subscriptions/{id}")).await?;
    let (health_path, attempts_path, topic_path) = (
        format!("/v1/subscriptions/{id}/health"),
        format!("/v1/subscriptions/{id}/attempts?limit=25"),
        format!("/v1/topics/{}", s(&sub, "topic_id")),
    );
    let (health, attempts, topic) = tokio::join!(
        c.get(&health_path),
        c.get(&attempts_path),
        c.get(&topic_path),
    );
    let attempts = attempts?;
    let topic = topic.ok();
    let status = s(&sub, "status");
    Ok(c.page(
        "Subscription",
        html! {
            @if let Some(n) = outcome.enqueued {
                (notice(&format!("{n} events of the window are enqueued for delivery; the health below follows them out of the queue.")))
                @if let Some(refused) = outcome.refused.filter(|r| *r > 0) {
                    p.warning role="alert" { "RabbitMQ refused " (refused) " more (the queue is full): the replay stopped there. Replay the rest of the window later." }
                }
            }
            h2 { "Health" }
            div #health hx-get={ "/console/subscriptions/" (id) "/health" } hx-trigger="every 5s" hx-swap="innerHTML" {
                @match &health { Ok(h) => (health_markup(h)), Err(_) => p { "The health could not be read just now." } }
            }
            p { a href={ "/console/subscriptions/" (id) "/dead-letters" } { "View dead letters" } }
            h2 { "Settings" }
            dl.facts {
                dt { "Status" } dd { (badge(status)) }
                dt { "Endpoint" } dd.url { (s(&sub, "url")) }
                dt { "Topic" } dd { (topic.as_ref().map(|t| s(t, "name")).unwrap_or(s(&sub, "topic_id"))) }
                dt { "Filter" } dd { @if sub["filter"].is_null() { "none (every event)" } @else { code { (sub["filter"].to_string()) } } }
                dt { "Max attempts" } dd { (sub["max_attempts"].to_string()) }
                dt { "Rate limit" } dd { @match sub["rate_limit_per_s"].as_u64() { Some(n) => { (n) " / s" }, None => "none" } }
                dt { "In flight at most" } dd { (sub["max_in_flight"].to_string()) }
                dt { "Ordered" } dd { (if sub["ordered"].as_bool() == Some(true) { "yes" } else { "no" }) }
                dt { "Description" } dd { (s(&sub, "description")) }
                dt { "Id" } dd { code { (id) } }
                dt { "Created" } dd { (time(&sub, "created_at")) }
            }
            div.actions {
                form method="post" action={ "/console/subscriptions/" (id) "/status" } {
                    (csrf(&c.session))
                    @if status == "active" {
                        input type="hidden" name="status" value="paused";
                        button type="submit" { "Pause" }
                    } @else {
                        input type="hidden" name="status" value="active";
                        button type="submit" { "Resume" }
                    }
                }
                a.button href={ "/console/subscriptions/" (id) "/edit" } { "Edit" }
                form method="post" action={ "/console/subscriptions/" (id) "/rotate-secret" } {
                    (csrf(&c.session))
                    button type="submit" { "Rotate secret" }
                }
                form method="post" action={ "/console/subscriptions/" (id) "/test" } {
                    (csrf(&c.session))
                    button type="submit" aria-describedby="test-hint" { "Send a test event" }
                }
            }
            p.hint #test-hint { "A test event is one signed delivery, like a real one, sent now even while paused; it is not in the event log and is not recorded as an attempt." }
            h2 { "Recent attempts" }
            (attempt_table(items(&attempts), true))
            h2 { "Replay from the event log" }
            form.card method="post" action={ "/console/subscriptions/" (id) "/replay" } {
                (csrf(&c.session))
                p.hint { "Sends this subscription every event of the window again (subject to its grant and filter now). Times are UTC." }
                label for="replay-since" { "Since (UTC)" }
                input #replay-since type="datetime-local" step="1" name="since" required;
                label for="replay-until" { "Until (UTC, optional: now)" }
                input #replay-until type="datetime-local" step="1" name="until";
                button type="submit" { "Replay from the log" }
            }
        },
    ))
}

/// A percentage of a 0–1 rate, or "—" without attempts.
fn percent(rate: &Value) -> String {
    rate.as_f64()
        .map_or_else(|| "—".to_owned(), |r| format!("{:.1} %", r * 100.0))
}

/// Milliseconds, or "—".
fn millis(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "—".to_owned(), |ms| format!("{ms} ms"))
}

/// A subscription's health as `GET /v1/subscriptions/{id}/health` gives it.
fn health_markup(h: &Value) -> Markup {
    let hour = &h["last_hour"];
    let latency = &hour["latency_ms"];
    html! {
        dl.facts.health {
            dt { "Status" } dd { (badge(s(h, "status"))) @if !s(h, "disabled_reason").is_empty() { " " (s(h, "disabled_reason")) } }
            dt { "Failing since" } dd #failing-since { @if h["failing_since"].is_null() { "not failing" } @else { (time(h, "failing_since")) } }
            dt { "Queued" } dd #queued { @match h["queued"].as_u64() { Some(n) => { (n) " messages waiting" }, None => "unknown (RabbitMQ did not answer)" } }
            dt { "In flight" } dd #in-flight { (h["in_flight"].as_u64().unwrap_or(0)) " requests on the wire" }
            dt { "Dead letters" } dd #dead-letters { (h["dead_letters"].as_u64().unwrap_or(0)) }
            dt { "Last hour" } dd #last-hour {
                (hour["attempts"].as_u64().unwrap_or(0)) " attempts, "
                (hour["succeeded"].as_u64().unwrap_or(0)) " succeeded, "
                (hour["failed"].as_u64().unwrap_or(0)) " failed"
            }
            dt { "Success rate" } dd #success-rate { (percent(&hour["success_rate"])) " (last hour)" }
            dt { "Latency" } dd #latency {
                "p50 " (millis(&latency["p50"])) ", p99 " (millis(&latency["p99"])) ", mean " (millis(&latency["mean"])) " (last hour, per attempt)"
            }
        }
    }
}

/// GET /console/subscriptions/{id}/health: the fragment the subscription page polls.
pub async fn health(c: Console, Path(raw): Path<String>) -> PageResult {
    let id = path_id(&raw)?;
    let h = c.get(&format!("/v1/subscriptions/{id}/health")).await?;
    Ok(axum::response::Html(health_markup(&h).into_string()).into_response())
}

/// POST /console/subscriptions/{id}/test: one signed test delivery, and what the endpoint said.
pub async fn send_test(
    Path(raw): Path<String>,
    Protected(c, _): Protected<CsrfOnly>,
) -> PageResult {
    let id = path_id(&raw)?;
    let result = c
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/test"),
            Some(&json!({})),
        )
        .await?;
    let delivered = result["delivered"].as_bool() == Some(true);
    Ok(c.page(
        "Test delivery",
        html! {
            @if delivered {
                (notice("The endpoint accepted the test event."))
            } @else {
                p.warning role="alert" { "The endpoint did not accept the test event: " (s(&result, "error")) }
            }
            dl.facts {
                dt { "Outcome" } dd #test-outcome { (badge(if delivered { "succeeded" } else { "failed" })) }
                dt { "HTTP status" } dd #test-status { @match result["http_status"].as_u64() { Some(code) => (code), None => "no answer" } }
                dt { "Duration" } dd #test-duration { (result["duration_ms"].as_u64().unwrap_or(0)) " ms" }
                dt { "Response" } dd.excerpt #test-response { code { (s(&result, "response_excerpt")) } }
                dt { "Event id" } dd { code { (s(&result, "event_id")) } " (webhook-id; not in the event log)" }
            }
            div.actions {
                form method="post" action={ "/console/subscriptions/" (id) "/test" } {
                    (csrf(&c.session))
                    button type="submit" { "Send another" }
                }
                a.button href={ "/console/subscriptions/" (id) } { "Back to the subscription" }
            }
        },
    ))
}

/// Attempts as a table; `with_event` adds a column linking each event.
pub(crate) fn attempt_table(attempts: &[Value], with_event: bool) -> Markup {
    if attempts.is_empty() {
        return empty("No attempts yet.");
    }
    html! {
        div.scroll { table.attempts {
            thead { tr {
                th { "At" } @if with_event { th { "Event" } } th { "Attempt" } th { "Outcome" }
                th { "HTTP status" } th { "Duration" } th { "Response or error" }
            } }
            tbody { @for a in attempts {
                tr {
                    td { (time(a, "at")) }
                    @if with_event { td { a href={ "/console/events/" (s(a, "event_id")) } { (short_id(s(a, "event_id"))) } } }
                    td.num { (a["attempt"].to_string()) }
                    td { (badge(s(a, "status"))) }
                    td.num { @match a["http_status"].as_u64() { Some(code) => (code), None => "—" } }
                    td.num { (a["duration_ms"].to_string()) " ms" }
                    td.excerpt { @if !s(a, "error").is_empty() { (s(a, "error")) } @else { code { (s(a, "response_excerpt")) } } }
                }
            } }
        } }
    }
}

/// The edit form, as typed (every field present; empty clears where the API allows).
#[derive(Debug, Default, Deserialize)]
pub struct EditSubscription {
    #[serde(default)]
    url: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    max_attempts: Option<String>,
    #[serde(default)]
    rate_limit_per_s: Option<String>,
    #[serde(default)]
    max_in_flight: Option<String>,
}

impl EditSubscription {
    /// The form filled with the subscription as it is.
    fn from_subscription(sub: &Value) -> Self {
        let number = |key: &str| sub[key].as_u64().map(|n| n.to_string());
        Self {
            url: s(sub, "url").to_owned(),
            description: Some(s(sub, "description").to_owned()),
            filter: (!sub["filter"].is_null()).then(|| sub["filter"].to_string()),
            max_attempts: number("max_attempts"),
            rate_limit_per_s: number("rate_limit_per_s"),
            max_in_flight: number("max_in_flight"),
        }
    }
}

/// The PATCH body: an empty description, filter, rate limit or in-flight cap is `null`
/// (cleared, or the server's default); an empty max attempts is left as it is.
fn edit_body(form: &EditSubscription) -> Result<Value, ApiProblem> {
    let number = |pointer: &str, value: &Option<String>| -> Result<Value, ApiProblem> {
        match filled(value) {
            None => Ok(Value::Null),
            Some(v) => v
                .parse::<u64>()
                .map(|n| json!(n))
                .map_err(|_| local_problem(pointer, "a whole number, e.g. 10".into())),
        }
    };
    let mut body = Map::new();
    body.insert("url".into(), json!(form.url.trim()));
    body.insert(
        "description".into(),
        filled(&form.description).map_or(Value::Null, |d| json!(d)),
    );
    let filter = match filled(&form.filter) {
        None => Value::Null,
        Some(f) => serde_json::from_str(f)
            .map_err(|e| local_problem("/filter", format!("not JSON: {e}")))?,
    };
    body.insert("filter".into(), filter);
    let attempts = number("/max_attempts", &form.max_attempts)?;
    if !attempts.is_null() {
        body.insert("max_attempts".into(), attempts);
    }
    body.insert(
        "rate_limit_per_s".into(),
        number("/rate_limit_per_s", &form.rate_limit_per_s)?,
    );
    body.insert(
        "max_in_flight".into(),
        number("/max_in_flight", &form.max_in_flight)?,
    );
    Ok(Value::Object(body))
}

fn edit_form(
    c: &Console,
    id: Uuid,
    form: &EditSubscription,
    problem: Option<&ApiProblem>,
) -> Markup {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    html! {
        (form_problem(problem, &["/url", "/description", "/filter", "/max_attempts", "/rate_limit_per_s", "/max_in_flight"]))
        form.card method="post" action={ "/console/subscriptions/" (id) "/edit" } {
            (csrf(&c.session))
            label for="url" { "Endpoint URL" }
            input #url type="url" name="url" value=(form.url) required;
            (field_error(problem, "/url", "url-error"))
            label for="description" { "Description" }
            input #description type="text" name="description" value=(text(&form.description));
            (field_error(problem, "/description", "description-error"))
            label for="filter" { "Filter (JSON object; empty: every event)" }
            textarea #filter name="filter" rows="4" { (text(&form.filter)) }
            (field_error(problem, "/filter", "filter-error"))
            label for="max_attempts" { "Max attempts" }
            input #max_attempts type="number" min="1" name="max_attempts" value=(text(&form.max_attempts));
            (field_error(problem, "/max_attempts", "max_attempts-error"))
            label for="rate_limit_per_s" { "Rate limit per second (empty: none)" }
            input #rate_limit_per_s type="number" min="1" name="rate_limit_per_s" value=(text(&form.rate_limit_per_s));
            (field_error(problem, "/rate_limit_per_s", "rate_limit_per_s-error"))
            label for="max_in_flight" { "Requests in flight at most (empty: the server's default)" }
            input #max_in_flight type="number" min="1" max="1000" name="max_in_flight" value=(text(&form.max_in_flight));
            (field_error(problem, "/max_in_flight", "max_in_flight-error"))
            button type="submit" { "Save changes" }
        }
        p { a href={ "/console/subscriptions/" (id) } { "Cancel" } }
    }
}

/// GET /console/subscriptions/{id}/edit
pub async fn edit_page(c: Console, Path(raw): Path<String>) -> PageResult {
    let id = path_id(&raw)?;
    let sub = c.get(&format!("/v1/subscriptions/{id}")).await?;
    Ok(c.page(
        "Edit subscription",
        edit_form(&c, id, &EditSubscription::from_subscription(&sub), None),
    ))
}

/// POST /console/subscriptions/{id}/edit
pub async fn edit(
    Path(raw): Path<String>,
    Protected(c, form): Protected<EditSubscription>,
) -> PageResult {
    let id = path_id(&raw)?;
    let answer = match edit_body(&form) {
        Ok(body) => c
            .call(
                Method::PATCH,
                &format!("/v1/subscriptions/{id}"),
                Some(&body),
            )
            .await
            .map_err(refusal),
        Err(local) => Err(Ok(local)),
    };
    match answer {
        Ok(_) => Ok(Redirect::to(&format!("/console/subscriptions/{id}")).into_response()),
        Err(Ok(problem)) => {
            let mut page = c.page(
                "Edit subscription",
                edit_form(&c, id, &form, Some(&problem)),
            );
            *page.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(Err(e)) => Err(e),
    }
}

/// The replay-from-the-log form, as typed (times as `datetime-local`, read as UTC).
#[derive(Debug, Default, Deserialize)]
pub struct ReplayLog {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: Option<String>,
}

/// The API request for a replay from the log, or the field the console cannot read.
fn replay_body(form: &ReplayLog) -> Result<Value, ApiProblem> {
    let since =
        crate::events::to_rfc3339(form.since.trim()).map_err(|e| local_problem("/since", e))?;
    let mut body = json!({ "since": since });
    if let Some(until) = filled(&form.until) {
        body["until"] =
            json!(crate::events::to_rfc3339(until).map_err(|e| local_problem("/until", e))?);
    }
    Ok(body)
}

/// POST /console/subscriptions/{id}/replay: re-delivers a window of the event log.
pub async fn replay_log(
    Path(raw): Path<String>,
    Protected(c, form): Protected<ReplayLog>,
) -> PageResult {
    let id = path_id(&raw)?;
    let answer = match replay_body(&form) {
        Ok(body) => c
            .call(
                Method::POST,
                &format!("/v1/subscriptions/{id}/replay"),
                Some(&body),
            )
            .await
            .map_err(refusal),
        Err(local) => Err(Ok(local)),
    };
    match answer {
        Ok(done) => {
            let n = done["enqueued"].as_u64().unwrap_or(0);
            let refused = done["refused"].as_u64().unwrap_or(0);
            Ok(Redirect::to(&format!(
                "/console/subscriptions/{id}?enqueued={n}&refused={refused}"
            ))
            .into_response())
        }
        Err(Ok(problem)) => Err(PageError::Refused(problem)),
        Err(Err(e)) => Err(e),
    }
}

/// What just happened on the subscription page (after a redirect).
#[derive(Debug, Default, Deserialize)]
pub struct SubscriptionOutcome {
    enqueued: Option<u64>,
    refused: Option<u64>,
}

/// The pause/resume form.
#[derive(Deserialize)]
pub struct StatusForm {
    #[serde(default)]
    status: String,
}

/// POST /console/subscriptions/{id}/status
pub async fn set_status(
    Path(raw): Path<String>,
    Protected(c, form): Protected<StatusForm>,
) -> PageResult {
    let id = path_id(&raw)?;
    let status = match form.status.as_str() {
        "active" | "paused" => form.status.as_str(),
        other => {
            return Err(PageError::BadInput(format!(
                "`{other}` is not a status a person can set (active or paused)"
            )));
        }
    };
    c.call(
        Method::PATCH,
        &format!("/v1/subscriptions/{id}"),
        Some(&json!({ "status": status })),
    )
    .await?;
    Ok(Redirect::to(&format!("/console/subscriptions/{id}")).into_response())
}

/// POST /console/subscriptions/{id}/rotate-secret
pub async fn rotate_secret(
    Path(raw): Path<String>,
    Protected(c, _): Protected<CsrfOnly>,
) -> PageResult {
    let id = path_id(&raw)?;
    let rotated = c
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            None,
        )
        .await?;
    Ok(c.page(
        "Secret rotated",
        html! {
            (notice("The previous secret keeps signing alongside the new one for 24 hours."))
            (secret_once(s(&rotated, "secret")))
            p { a href={ "/console/subscriptions/" (id) } { "Back to the subscription" } }
        },
    ))
}

/// What just happened on the dead-letter page (after a redirect).
#[derive(Debug, Default, Deserialize)]
pub struct DeadLetterOutcome {
    replayed: Option<u64>,
    kept: Option<u64>,
    purged: Option<u64>,
}

/// GET /console/subscriptions/{id}/dead-letters
pub async fn dead_letters(
    c: Console,
    Path(raw): Path<String>,
    Query(outcome): Query<DeadLetterOutcome>,
) -> PageResult {
    let id = path_id(&raw)?;
    let sub = c.get(&format!("/v1/subscriptions/{id}")).await?;
    let dead = c
        .get(&format!("/v1/subscriptions/{id}/dead-letters?limit=200"))
        .await?;
    let total = dead["total"].as_u64().unwrap_or(0);
    Ok(c.page(
        "Dead letters",
        html! {
            @if let Some(n) = outcome.replayed {
                (notice(&format!("Replayed {n} dead letters: they are back in delivery with a fresh attempt budget.")))
                @if let Some(kept) = outcome.kept.filter(|k| *k > 0) {
                    p.warning role="alert" { "RabbitMQ refused " (kept) " of them (the queue is full); they are still listed here. Replay again later." }
                }
                p { "Follow them out of the queue in the " a href={ "/console/subscriptions/" (id) } { "subscription's health" } "." }
            }
            @if let Some(n) = outcome.purged { (notice(&format!("Purged {n} dead letters."))) }
            p { "Subscription " a href={ "/console/subscriptions/" (id) } { (s(&sub, "url")) } " holds " strong #dead-total { (total) } " dead letters." }
            @if total > 0 {
                div.actions {
                    form method="post" action={ "/console/subscriptions/" (id) "/dead-letters/replay" } {
                        (csrf(&c.session))
                        button type="submit" { "Replay" }
                    }
                    a.button.danger href={ "/console/subscriptions/" (id) "/dead-letters/purge" } { "Purge…" }
                }
                div.scroll { table {
                    thead { tr { th { "Dead since" } th { "Event" } th { "Attempts" } th { "Last error" } } }
                    tbody { @for d in items(&dead) {
                        tr {
                            td { (time(d, "dead_at")) }
                            td { a href={ "/console/events/" (s(d, "event_id")) } { (short_id(s(d, "event_id"))) } }
                            td.num { (d["attempts"].to_string()) }
                            td.excerpt { (s(d, "last_error")) }
                        }
                    } }
                } }
            } @else {
                (empty("Nothing is dead-lettered."))
            }
        },
    ))
}

/// POST /console/subscriptions/{id}/dead-letters/replay
pub async fn replay(Path(raw): Path<String>, Protected(c, _): Protected<CsrfOnly>) -> PageResult {
    let id = path_id(&raw)?;
    let answer = c
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/dead-letters/replay"),
            Some(&json!({})),
        )
        .await?;
    let n = answer["replayed"].as_u64().unwrap_or(0);
    let kept = answer["kept"].as_u64().unwrap_or(0);
    Ok(Redirect::to(&format!(
        "/console/subscriptions/{id}/dead-letters?replayed={n}&kept={kept}"
    ))
    .into_response())
}

/// GET /console/subscriptions/{id}/dead-letters/purge: the confirmation step.
pub async fn purge_confirm(c: Console, Path(raw): Path<String>) -> PageResult {
    let id = path_id(&raw)?;
    let total = dead_letter_total(&c, &id.to_string()).await?;
    Ok(c.page(
        "Purge dead letters?",
        html! {
            p.warning { "This deletes " strong { (total) } " dead letters of this subscription for good. They will not be delivered. The events stay in the event log, so a replay from the log can still send them." }
            div.actions {
                form method="post" action={ "/console/subscriptions/" (id) "/dead-letters/purge" } {
                    (csrf(&c.session))
                    button.danger type="submit" { "Yes, purge them" }
                }
                a.button href={ "/console/subscriptions/" (id) "/dead-letters" } { "Cancel" }
            }
        },
    ))
}

/// POST /console/subscriptions/{id}/dead-letters/purge
pub async fn purge(
    Path(raw): Path<String>,
    Protected(c, _): Protected<CsrfOnly>,
) -> PageResult<Response> {
    let id = path_id(&raw)?;
    let answer = c
        .call(
            Method::DELETE,
            &format!("/v1/subscriptions/{id}/dead-letters"),
            None,
        )
        .await?;
    let n = answer["purged"].as_u64().unwrap_or(0);
    Ok(Redirect::to(&format!(
        "/console/subscriptions/{id}/dead-letters?purged={n}"
    ))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_subscriptions_sort_first() {
        let mut subs = vec![
            ("active", 0),
            ("paused", 0),
            ("active", 3),
            ("disabled", 0),
            ("active", 9),
        ];
        subs.sort_by_key(|(status, dead)| health_rank(status, false, *dead));
        assert_eq!(
            subs,
            [
                ("disabled", 0),
                ("active", 9),
                ("active", 3),
                ("paused", 0),
                ("active", 0)
            ]
        );
        // Failing now outranks dead letters, which may be old news.
        assert!(health_rank("active", true, 0) < health_rank("active", false, 9));
        assert!(health_rank("disabled", false, 0) < health_rank("active", true, 0));
    }

    #[test]
    fn an_emptied_field_clears_it_and_an_unreadable_one_is_named() {
        let form = EditSubscription {
            url: " http://x/hook ".into(),
            description: Some(String::new()),
            filter: Some(r#"{"a":1}"#.into()),
            max_attempts: Some(String::new()),
            rate_limit_per_s: Some("10".into()),
            max_in_flight: None,
        };
        let body = edit_body(&form).unwrap();
        assert_eq!(body["url"], "http://x/hook");
        assert!(body["description"].is_null() && body["max_in_flight"].is_null());
        assert_eq!(body["rate_limit_per_s"], 10);
        assert!(
            body.get("max_attempts").is_none(),
            "an empty max attempts stays as it is"
        );
        let bad = EditSubscription {
            rate_limit_per_s: Some("fast".into()),
            ..form
        };
        assert!(
            edit_body(&bad)
                .unwrap_err()
                .field("/rate_limit_per_s")
                .is_some()
        );
    }

    #[test]
    fn a_replay_window_is_sent_as_rfc_3339_and_an_unreadable_time_is_named() {
        let form = ReplayLog {
            since: "2026-12-01T21:00:00".into(),
            until: Some(String::new()),
        };
        assert_eq!(
            replay_body(&form).unwrap(),
            json!({"since": "2026-12-01T21:00:00Z"})
        );
        let form = ReplayLog {
            since: "soon".into(),
            until: None,
        };
        assert!(replay_body(&form).unwrap_err().field("/since").is_some());
    }

    #[test]
    fn a_filter_that_is_not_json_is_named_before_the_api_is_asked() {
        let form = NewSubscription {
            topic_id: "t".into(),
            url: "http://x".into(),
            filter: Some("{country: DE}".into()),
            ..Default::default()
        };
        let problem = subscription_body(&form).unwrap_err();
        assert!(problem.field("/filter").unwrap().starts_with("not JSON"));
        let ok = NewSubscription {
            filter: Some(r#"{"country":"DE"}"#.into()),
            description: Some("  ".into()),
            ..form
        };
        let body = subscription_body(&ok).unwrap();
        assert_eq!(body["filter"]["country"], "DE");
        assert!(
            body.get("description").is_none(),
            "an empty field is left out"
        );
    }
}
