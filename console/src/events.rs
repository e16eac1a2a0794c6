//! The event log: search (topic, key, time range, JSON containment) and an event's
//! page with its delivery to each of the principal's subscriptions and every attempt.

use axum::extract::{Path, Query};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    api::{ApiError, ApiProblem},
    error::PageResult,
    layout::{self, badge, empty, field_error, form_problem, json_block, s, short_id, time},
    subscriptions::{attempt_table, items, local_problem, path_id},
    web::{Console, filled},
};

/// The search form, as typed.
#[derive(Debug, Default, Deserialize)]
pub struct Search {
    topic_id: Option<String>,
    key: Option<String>,
    since: Option<String>,
    until: Option<String>,
    contains: Option<String>,
    cursor: Option<String>,
}

/// A time from the form as RFC 3339: `datetime-local` gives `2026-12-01T22:30` (read as
/// UTC, as the page says), a full RFC 3339 time passes as typed.
pub(crate) fn to_rfc3339(typed: &str) -> Result<String, String> {
    if chrono::DateTime::parse_from_rfc3339(typed).is_ok() {
        return Ok(typed.to_owned());
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(typed, format) {
            return Ok(t
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
    }
    Err(format!(
        "`{typed}` is not a time (e.g. 2026-12-01T22:30, read as UTC)"
    ))
}

/// The API query for a search, or the field the console cannot read.
fn query(search: &Search) -> Result<String, ApiProblem> {
    let mut pairs: Vec<(&str, String)> = vec![("limit", "50".into())];
    if let Some(t) = filled(&search.topic_id) {
        pairs.push(("topic_id", t.to_owned()));
    }
    if let Some(k) = filled(&search.key) {
        pairs.push(("key", k.to_owned()));
    }
    for (name, value) in [("since", &search.since), ("until", &search.until)] {
        if let Some(v) = filled(value) {
            pairs.push((
                name,
                to_rfc3339(v).map_err(|e| local_problem(&format!("/{name}"), e))?,
            ));
        }
    }
    if let Some(c) = filled(&search.contains) {
        serde_json::from_str::<Value>(c)
            .map_err(|e| local_problem("/contains", format!("not JSON: {e}")))?;
        pairs.push(("contains", c.to_owned()));
    }
    if let Some(c) = filled(&search.cursor) {
        pairs.push(("cursor", c.to_owned()));
    }
    Ok(serde_urlencoded::to_string(pairs).unwrap_or_default())
}

/// The API names query problems by parameter; the form fields have the same names.
fn as_field_problem(mut problem: ApiProblem) -> ApiProblem {
    for e in &mut problem.errors {
        if !e.pointer.starts_with('/') {
            e.pointer = format!("/{}", e.pointer);
        }
    }
    problem
}

/// GET /console/events
pub async fn list(c: Console, Query(search): Query<Search>) -> PageResult {
    let topics = c.get("/v1/topics?limit=1000").await?;
    let topics = items(&topics);
    let result = match query(&search) {
        Ok(q) => match c.get(&format!("/v1/events?{q}")).await {
            Ok(v) => Ok(v),
            Err(ApiError::Refused(p)) => Err(as_field_problem(p)),
            Err(e) => return Err(e.into()),
        },
        Err(p) => Err(p),
    };
    let problem = result.as_ref().err();
    let topic_name = |id: &str| {
        topics
            .iter()
            .find(|t| s(t, "id") == id)
            .map(|t| s(t, "name").to_owned())
            .unwrap_or_else(|| id.to_owned())
    };
    let typed = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(c.page(
        "Events",
        html! {
            (form_problem(problem, &["/topic_id", "/key", "/since", "/until", "/contains"]))
            form.search method="get" action="/console/events" {
                div.fields {
                    div { label for="topic_id" { "Topic" }
                        select #topic_id name="topic_id" {
                            option value="" { "All topics" }
                            @for t in topics { option value=(s(t, "id")) selected[search.topic_id.as_deref() == Some(s(t, "id"))] { (s(t, "name")) } }
                        }
                        (field_error(problem, "/topic_id", "topic_id-error")) }
                    div { label for="key" { "Key" } input #key type="text" name="key" value=(typed(&search.key));
                        (field_error(problem, "/key", "key-error")) }
                    div { label for="since" { "Since (UTC)" } input #since type="datetime-local" name="since" value=(typed(&search.since));
                        (field_error(problem, "/since", "since-error")) }
                    div { label for="until" { "Until (UTC)" } input #until type="datetime-local" name="until" value=(typed(&search.until));
                        (field_error(problem, "/until", "until-error")) }
                    div.wide { label for="contains" { "Data contains (JSON)" } input #contains type="text" name="contains" value=(typed(&search.contains)) placeholder=r#"{"model": "ID.3"}"#;
                        (field_error(problem, "/contains", "contains-error")) }
                }
                button type="submit" { "Search" }
            }
            @if let Ok(found) = &result {
                @let events = items(found);
                @if events.is_empty() { (empty("No events match.")) } @else {
                    div.scroll { table.events {
                        thead { tr { th { "Received" } th { "Topic" } th { "Key" } th { "Data" } th { "Id" } } }
                        tbody { @for e in events {
                            tr {
                                td { a href={ "/console/events/" (s(e, "id")) } { (time(e, "received_at")) } }
                                td { (topic_name(s(e, "topic_id"))) }
                                td { (s(e, "key")) }
                                td.excerpt { code { (excerpt(&e["data"])) } }
                                td { (short_id(s(e, "id"))) }
                            }
                        } }
                    } }
                    @if let Some(next) = older(&search, found) {
                        p { a href={ "/console/events?" (next) } { "Older events" } }
                    }
                }
            }
        },
    ))
}

/// The query of the next page: the same search from the API's cursor.
fn older(search: &Search, found: &Value) -> Option<String> {
    let next = found["next_cursor"].as_str()?;
    let mut params = vec![("cursor", next.to_owned())];
    for (k, v) in [
        ("topic_id", &search.topic_id),
        ("key", &search.key),
        ("since", &search.since),
        ("until", &search.until),
        ("contains", &search.contains),
    ] {
        if let Some(v) = filled(v) {
            params.push((k, v.to_owned()));
        }
    }
    serde_urlencoded::to_string(&params).ok()
}

/// "1 attempt", "3 attempts".
fn attempts_label(n: u64) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// The start of an event's data, for a table cell.
fn excerpt(data: &Value) -> String {
    let text = data.to_string();
    if text.chars().count() > 120 {
        text.chars().take(119).chain(std::iter::once('…')).collect()
    } else {
        text
    }
}

/// GET /console/events/{id}
pub async fn show(c: Console, Path(raw): Path<String>) -> PageResult {
    let id = path_id(&raw)?;
    let event = c.get(&format!("/v1/events/{id}")).await?;
    let topic = c
        .get(&format!("/v1/topics/{}", s(&event, "topic_id")))
        .await
        .ok();
    let deliveries = event["deliveries"].as_array().cloned().unwrap_or_default();
    let since =
        serde_urlencoded::to_string([("since", s(&event, "received_at"))]).unwrap_or_default();
    let mut sections = Vec::new();
    for d in &deliveries {
        let sub = s(d, "subscription_id");
        // The attempt log is per subscription; this event's are those with its id.
        let attempts = c
            .get(&format!(
                "/v1/subscriptions/{sub}/attempts?{since}&limit=1000"
            ))
            .await
            .map(|v| {
                items(&v)
                    .iter()
                    .filter(|a| s(a, "event_id") == id.to_string())
                    .cloned()
                    .collect::<Vec<_>>()
            });
        let url = c
            .get(&format!("/v1/subscriptions/{sub}"))
            .await
            .map(|v| s(&v, "url").to_owned())
            .ok();
        sections.push((d, url, attempts));
    }
    Ok(c.page(
        "Event",
        html! {
            dl.facts {
                dt { "Id" } dd { code { (id) } }
                dt { "Received" } dd { (time(&event, "received_at")) }
                dt { "Topic" } dd {
                    @if let Some(t) = &topic { a href={ "/console/topics/" (s(t, "id")) } { (s(t, "name")) } " " }
                    code { (s(&event, "topic_id")) }
                }
                dt { "Key" } dd { (s(&event, "key")) }
            }
            h2 { "Data" }
            (json_block(&event["data"]))
            h2 { "Deliveries to your subscriptions" }
            @if sections.is_empty() { (empty("None of your subscriptions is due this event.")) }
            @for (d, url, attempts) in &sections {
                section.delivery {
                    h3 {
                        a href={ "/console/subscriptions/" (s(d, "subscription_id")) } { (url.clone().unwrap_or_else(|| s(d, "subscription_id").to_owned())) }
                        " " (badge(s(d, "status")))
                    }
                    p { (attempts_label(d["attempts"].as_u64().unwrap_or(0))) @if !d["last_attempt_at"].is_null() { ", the last at " (time(d, "last_attempt_at")) } }
                    @match attempts {
                        Ok(list) => (attempt_table(list, false)),
                        Err(_) => (layout::empty("The attempts could not be read.")),
                    }
                }
            }
            p { a href="/console/events" { "Back to the event log" } }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_local_time_is_read_as_utc() {
        assert_eq!(
            to_rfc3339("2026-12-01T22:30").unwrap(),
            "2026-12-01T22:30:00Z"
        );
        assert_eq!(
            to_rfc3339("2026-12-01T22:30:05").unwrap(),
            "2026-12-01T22:30:05Z"
        );
        assert_eq!(
            to_rfc3339("2026-12-01T22:30:00+01:00").unwrap(),
            "2026-12-01T22:30:00+01:00"
        );
        assert!(to_rfc3339("yesterday").is_err());
    }

    #[test]
    fn a_search_names_the_field_it_cannot_read() {
        let search = Search {
            contains: Some("{not json".into()),
            ..Default::default()
        };
        assert!(query(&search).unwrap_err().field("/contains").is_some());
        let search = Search {
            key: Some("order 7".into()),
            contains: Some(r#"{"a":1}"#.into()),
            ..Default::default()
        };
        let q = query(&search).unwrap();
        assert!(
            q.contains("key=order+7") && q.contains("contains=%7B%22a%22%3A1%7D"),
            "{q}"
        );
    }
}
