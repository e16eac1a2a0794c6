//! Views across everything a principal manages: the dead letters of every subscription
//! on one page (operators: across partners), and the audit log with its filters.

use std::collections::HashMap;

use anika_shared::audit::{Action, TargetId, TargetType};
use axum::extract::Query;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    api::ApiError,
    error::PageResult,
    layout::{badge, csrf, empty, field_error, form_problem, s, short_id, time},
    session::Role,
    subscriptions::{items, local_problem, rank_of},
    web::{Console, filled},
};

/// Partner id → name, for the partners this principal may see (operators: all).
async fn partner_names(c: &Console) -> Result<HashMap<String, String>, ApiError> {
    let partners = c.get("/v1/partners?limit=1000").await?;
    Ok(items(&partners)
        .iter()
        .map(|p| (s(p, "id").to_owned(), s(p, "name").to_owned()))
        .collect())
}

/// GET /console/dead-letters: every subscription holding dead letters, most first.
///
/// One call for the subscriptions (the list carries each one's count), one for the
/// topic names and one for the partner names.
pub async fn dead_letters(c: Console) -> PageResult {
    let (subs, topics, partners) = tokio::join!(
        c.get("/v1/subscriptions?limit=1000"),
        c.get("/v1/topics?limit=1000"),
        partner_names(&c),
    );
    let (subs, topics) = (subs?, topics?);
    let partners = partners.unwrap_or_default();
    let topic_name: HashMap<&str, &str> = items(&topics)
        .iter()
        .map(|t| (s(t, "id"), s(t, "name")))
        .collect();
    let mut rows: Vec<&Value> = items(&subs)
        .iter()
        .filter(|sub| sub["dead_letters"].as_u64().unwrap_or(0) > 0)
        .collect();
    rows.sort_by_key(|sub| {
        (
            std::cmp::Reverse(sub["dead_letters"].as_u64().unwrap_or(0)),
            rank_of(sub),
        )
    });
    let total: u64 = rows
        .iter()
        .map(|sub| sub["dead_letters"].as_u64().unwrap_or(0))
        .sum();
    let across = c.session.who.role == Role::Operator;
    Ok(c.page(
        "Dead letters",
        html! {
            @if rows.is_empty() {
                (empty(if across { "No subscription of any partner holds dead letters." } else { "None of your subscriptions holds dead letters." }))
            } @else {
                p #dead-summary { strong { (total) } " dead letters in " strong { (rows.len()) } " subscriptions" @if across { ", across partners" } ", most first." }
                div.scroll { table {
                    thead { tr {
                        @if across { th { "Partner" } }
                        th { "Topic" } th { "Endpoint" } th { "Status" } th { "Dead letters" } th { span.visually-hidden { "Actions" } }
                    } }
                    tbody { @for sub in &rows {
                        @let id = s(sub, "id");
                        @let partner = partners.get(s(sub, "partner_id")).map(String::as_str).unwrap_or(s(sub, "partner_id"));
                        tr {
                            @if across { td { (partner) } }
                            td { (topic_name.get(s(sub, "topic_id")).copied().unwrap_or(s(sub, "topic_id"))) }
                            td.url { a href={ "/console/subscriptions/" (id) } { (s(sub, "url")) } }
                            td { (badge(s(sub, "status"))) }
                            @let n = sub["dead_letters"].as_u64().unwrap_or(0);
                            td.num { a href={ "/console/subscriptions/" (id) "/dead-letters" } aria-label={ (n) " dead letters of " (s(sub, "url")) } { (n) } }
                            td {
                                form method="post" action={ "/console/subscriptions/" (id) "/dead-letters/replay" } {
                                    (csrf(&c.session))
                                    button type="submit" aria-label={ "Replay the dead letters of " (s(sub, "url")) } { "Replay" }
                                }
                            }
                        }
                    } }
                } }
            }
        },
    ))
}

/// The audit log's filters, as typed.
#[derive(Debug, Default, Deserialize)]
pub struct AuditSearch {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    target_type: Option<String>,
    #[serde(default)]
    target_id: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

/// The target types a person may filter by.
const TARGET_TYPES: [TargetType; 6] = [
    TargetType::Partner,
    TargetType::ApiKey,
    TargetType::SigningKey,
    TargetType::Topic,
    TargetType::Grant,
    TargetType::Subscription,
];

/// The API query for the filters (read into the API's own types first), or the field
/// the console cannot read.
fn audit_query(search: &AuditSearch) -> Result<String, crate::api::ApiProblem> {
    let mut pairs: Vec<(&str, String)> = vec![("limit", "50".into())];
    if let Some(a) = filled(&search.action) {
        let action: Action = a
            .parse()
            .map_err(|_| local_problem("/action", format!("`{a}` is not an audited action")))?;
        pairs.push(("action", action.as_str().to_owned()));
    }
    if let Some(t) = filled(&search.target_type) {
        let kind = TARGET_TYPES
            .iter()
            .find(|k| k.as_str() == t)
            .ok_or_else(|| local_problem("/target_type", format!("`{t}` is not a target type")))?;
        pairs.push(("target_type", kind.as_str().to_owned()));
    }
    if let Some(id) = filled(&search.target_id) {
        let id = TargetId::parse(id).map_err(|e| local_problem("/target_id", e))?;
        pairs.push(("target_id", id.as_str().to_owned()));
    }
    if let Some(c) = filled(&search.cursor) {
        pairs.push(("cursor", c.to_owned()));
    }
    Ok(serde_urlencoded::to_string(pairs).unwrap_or_default())
}

/// The query of the next page: the same filters from the API's cursor.
fn older(search: &AuditSearch, found: &Value) -> Option<String> {
    let next = found["next_cursor"].as_str()?;
    let mut params = vec![("cursor", next.to_owned())];
    for (k, v) in [
        ("action", &search.action),
        ("target_type", &search.target_type),
        ("target_id", &search.target_id),
    ] {
        if let Some(v) = filled(v) {
            params.push((k, v.to_owned()));
        }
    }
    serde_urlencoded::to_string(&params).ok()
}

/// What changed, one `field: old → new` per line (never a secret: the API leaves them out).
fn changes(v: &Value) -> Markup {
    let Some(fields) = v.as_object().filter(|f| !f.is_empty()) else {
        return html! { "—" };
    };
    let shown = |v: &Value| match v {
        Value::Null => "—".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    html! {
        ul.changes { @for (field, change) in fields {
            li {
                code { (field) } ": "
                @if change.get("old").is_some() || change.get("new").is_some() {
                    (shown(&change["old"])) " → " (shown(&change["new"]))
                } @else {
                    (shown(change))
                }
            }
        } }
    }
}

/// GET /console/audit: the audit log, newest first (operators: everything; admins:
/// their partner's resources).
pub async fn audit(c: Console, Query(search): Query<AuditSearch>) -> PageResult {
    let result = match audit_query(&search) {
        Ok(q) => match c.get(&format!("/v1/audit-log?{q}")).await {
            Ok(v) => Ok(v),
            Err(ApiError::Refused(p)) => Err(p),
            Err(e) => return Err(e.into()),
        },
        Err(p) => Err(p),
    };
    let problem = result.as_ref().err();
    let typed = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(c.page(
        "Audit log",
        html! {
            (form_problem(problem, &["/action", "/target_type", "/target_id"]))
            form.search method="get" action="/console/audit" {
                div.fields {
                    div { label for="action" { "Action" }
                        select #action name="action" {
                            option value="" { "Any action" }
                            @for a in Action::ALL { option value=(a.as_str()) selected[search.action.as_deref() == Some(a.as_str())] { (a.as_str()) } }
                        }
                        (field_error(problem, "/action", "action-error")) }
                    div { label for="target_type" { "Target type" }
                        select #target_type name="target_type" {
                            option value="" { "Any target" }
                            @for t in TARGET_TYPES { option value=(t.as_str()) selected[search.target_type.as_deref() == Some(t.as_str())] { (t.as_str()) } }
                        }
                        (field_error(problem, "/target_type", "target_type-error")) }
                    div { label for="target_id" { "Target id" }
                        input #target_id type="text" name="target_id" value=(typed(&search.target_id));
                        (field_error(problem, "/target_id", "target_id-error")) }
                }
                button type="submit" { "Filter" }
            }
            @if let Ok(found) = &result {
                @let entries = items(found);
                @if entries.is_empty() { (empty("No entries match.")) } @else {
                    div.scroll { table.audit {
                        thead { tr { th { "At" } th { "Who" } th { "Action" } th { "Target" } th { "Changes" } } }
                        tbody { @for e in entries {
                            @let actor = &e["actor"];
                            tr {
                                td { (time(e, "at")) }
                                td {
                                    (s(actor, "role"))
                                    @if !s(actor, "partner_id").is_empty() { " of " (short_id(s(actor, "partner_id"))) }
                                    @if !s(actor, "api_key_id").is_empty() { br; "key " (short_id(s(actor, "api_key_id"))) }
                                }
                                td { code { (s(e, "action")) } }
                                td { (s(&e["target"], "type")) " " (short_id(s(&e["target"], "id"))) }
                                td.excerpt { (changes(&e["changes"])) }
                            }
                        } }
                    } }
                    @if let Some(next) = older(&search, found) {
                        p { a href={ "/console/audit?" (next) } { "Older entries" } }
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_filters_are_read_into_the_apis_types_before_it_is_asked() {
        let search = AuditSearch {
            action: Some("grant.created".into()),
            target_type: Some("topic".into()),
            target_id: Some(" ".into()),
            cursor: None,
        };
        assert_eq!(
            audit_query(&search).unwrap(),
            "limit=50&action=grant.created&target_type=topic"
        );
        let bad = AuditSearch {
            target_id: Some("a b".into()),
            ..search
        };
        assert!(audit_query(&bad).unwrap_err().field("/target_id").is_some());
        let bad = AuditSearch {
            action: Some("grant.eaten".into()),
            ..Default::default()
        };
        assert!(audit_query(&bad).unwrap_err().field("/action").is_some());
    }

    #[test]
    fn a_change_shows_old_and_new() {
        let text = changes(&serde_json::json!({"status": {"old": "active", "new": "paused"}}))
            .into_string();
        assert!(text.contains("active → paused"), "{text}");
        assert_eq!(changes(&serde_json::json!({})).into_string(), "—");
    }
}
