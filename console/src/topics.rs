//! Topics: the list, creating one with a JSON Schema (the API validates it), a topic's
//! page with its grants, and giving or revoking a grant by partner.

use axum::{
    extract::Path,
    http::StatusCode,
    response::{IntoResponse, Redirect},
};
use maud::{Markup, html};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use anika_shared::domain::DisplayName;

use crate::{
    api::{ApiError, ApiProblem},
    error::PageResult,
    layout::{csrf, empty, field_error, form_problem, json_block, notice, s, short_id, time},
    subscriptions::{items, local_problem, path_id},
    web::{Console, Protected, filled, refusal},
};

/// The create form, as typed.
#[derive(Debug, Default, Deserialize)]
pub struct NewTopic {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    schema: Option<String>,
}

/// The API request for a new topic, or the field the console cannot read.
fn topic_body(form: &NewTopic) -> Result<Value, ApiProblem> {
    let mut body = Map::new();
    body.insert("name".into(), json!(form.name.trim()));
    if let Some(d) = filled(&form.description) {
        body.insert("description".into(), json!(d));
    }
    if let Some(schema) = filled(&form.schema) {
        let schema: Value = serde_json::from_str(schema)
            .map_err(|e| local_problem("/schema", format!("not JSON: {e}")))?;
        body.insert("schema".into(), schema);
    }
    Ok(Value::Object(body))
}

fn topic_form(c: &Console, form: &NewTopic, problem: Option<&ApiProblem>) -> Markup {
    html! {
        h2 { "Create a topic" }
        (form_problem(problem, &["/name", "/description", "/schema"]))
        form.card method="post" action="/console/topics" {
            (csrf(&c.session))
            label for="name" { "Name" }
            input #name type="text" name="name" value=(form.name) required maxlength="128" pattern="[A-Za-z0-9._\\-]+"
                aria-describedby="name-hint";
            p.hint #name-hint { "1–128 letters, digits, dots, dashes or underscores, e.g. car.chosen" }
            (field_error(problem, "/name", "name-error"))
            label for="description" { "Description (optional)" }
            input #description type="text" name="description" value=(form.description.clone().unwrap_or_default());
            (field_error(problem, "/description", "description-error"))
            label for="schema" { "JSON Schema of the events' data (optional, 2020-12)" }
            textarea #schema name="schema" rows="8" spellcheck="false"
                placeholder=r#"{"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}}}"# {
                (form.schema.clone().unwrap_or_default())
            }
            (field_error(problem, "/schema", "schema-error"))
            button type="submit" { "Create topic" }
        }
    }
}

fn topics_table(topics: &[Value], own: Option<&str>) -> Markup {
    if topics.is_empty() {
        return empty("No topics yet.");
    }
    html! {
        div.scroll { table {
            thead { tr { th { "Name" } th { "Owner" } th { "Description" } th { "Created" } } }
            tbody { @for t in topics {
                tr {
                    td { a href={ "/console/topics/" (s(t, "id")) } { (s(t, "name")) } }
                    td { @if own == Some(s(t, "owner_partner_id")) { "you" } @else { (short_id(s(t, "owner_partner_id"))) } }
                    td { (s(t, "description")) }
                    td { (time(t, "created_at")) }
                }
            } }
        } }
    }
}

/// GET /console/topics
pub async fn list(c: Console) -> PageResult {
    let topics = c.get("/v1/topics?limit=1000").await?;
    let own = c.session.who.partner_id.clone();
    Ok(c.page(
        "Topics",
        html! {
            (topics_table(items(&topics), own.as_deref()))
            (topic_form(&c, &NewTopic::default(), None))
        },
    ))
}

/// POST /console/topics
pub async fn create(Protected(c, form): Protected<NewTopic>) -> PageResult {
    let answer = match topic_body(&form) {
        Ok(body) => c
            .call(Method::POST, "/v1/topics", Some(&body))
            .await
            .map_err(refusal),
        Err(local) => Err(Ok(local)),
    };
    match answer {
        Ok(created) => {
            Ok(Redirect::to(&format!("/console/topics/{}", s(&created, "id"))).into_response())
        }
        Err(Ok(problem)) => {
            let topics = c.get("/v1/topics?limit=1000").await?;
            let own = c.session.who.partner_id.clone();
            let mut page = c.page(
                "Topics",
                html! {
                    (topics_table(items(&topics), own.as_deref()))
                    (topic_form(&c, &form, Some(&problem)))
                },
            );
            *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(Err(e)) => Err(e),
    }
}

/// What just happened on the topic page (after a redirect).
#[derive(Debug, Default, Deserialize)]
pub struct TopicOutcome {
    granted: Option<String>,
    revoked: Option<String>,
}

/// GET /console/topics/{id}
pub async fn show(
    c: Console,
    Path(raw): Path<String>,
    axum::extract::Query(outcome): axum::extract::Query<TopicOutcome>,
) -> PageResult {
    let id = path_id(&raw)?;
    topic_page(&c, id, &outcome, None, "").await
}

/// A topic's page; a refused grant shows `problem` next to the partner field, which
/// keeps what was `typed`.
async fn topic_page(
    c: &Console,
    id: uuid::Uuid,
    outcome: &TopicOutcome,
    problem: Option<&ApiProblem>,
    typed: &str,
) -> PageResult {
    let topic = c.get(&format!("/v1/topics/{id}")).await?;
    // Only the owner may list grants; for anyone else the section is left out.
    let grants = match c.get(&format!("/v1/topics/{id}/grants")).await {
        Ok(v) => Some(v),
        Err(ApiError::Refused(_) | ApiError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    // A grantee is a partner the owner shares this topic with, so the owner may read
    // its name; the lookups run side by side.
    let grantees: Vec<&Value> = grants
        .as_ref()
        .map(|g| items(g).iter().collect())
        .unwrap_or_default();
    let names = futures::future::join_all(grantees.iter().map(|g| async move {
        c.get(&format!("/v1/partners/{}", s(g, "partner_id")))
            .await
            .map(|p| s(&p, "name").to_owned())
            .unwrap_or_default()
    }))
    .await;
    let rows: Vec<(&Value, String)> = grantees.into_iter().zip(names).collect();
    let mut page = c.page(
        &format!("Topic {}", s(&topic, "name")),
        html! {
            @if outcome.granted.is_some() { (notice("Grant given: that partner may now subscribe to this topic.")) }
            @if outcome.revoked.is_some() { (notice("Grant revoked: no further event of this topic reaches that partner.")) }
            dl.facts {
                dt { "Name" } dd { (s(&topic, "name")) }
                dt { "Id" } dd { code { (id) } }
                dt { "Owner" } dd { code { (s(&topic, "owner_partner_id")) } }
                dt { "Description" } dd { (s(&topic, "description")) }
                dt { "Created" } dd { (time(&topic, "created_at")) }
            }
            h2 { "Schema" }
            @if topic["schema"].is_null() { (empty("No schema: any JSON is accepted.")) } @else { (json_block(&topic["schema"])) }
            p { a href={ "/console/events?topic_id=" (id) } { "Events of this topic" } }
            @if grants.is_some() {
                h2 { "Grants" }
                @if rows.is_empty() { (empty("No partner is granted this topic.")) } @else {
                    div.scroll { table {
                        thead { tr { th { "Partner" } th { "Granted" } th { span.visually-hidden { "Action" } } } }
                        tbody { @for (g, name) in &rows {
                            tr {
                                td { strong { (name) } " " (short_id(s(g, "partner_id"))) }
                                td { (time(g, "granted_at")) }
                                td {
                                    form method="post" action={ "/console/topics/" (id) "/grants/revoke" } {
                                        (csrf(&c.session))
                                        input type="hidden" name="partner_id" value=(s(g, "partner_id"));
                                        button.danger type="submit" aria-label={ "Revoke the grant of " (name) } { "Revoke" }
                                    }
                                }
                            }
                        } }
                    } }
                }
                (form_problem(problem, &["/partner"]))
                form.card method="post" action={ "/console/topics/" (id) "/grants" } {
                    (csrf(&c.session))
                    label for="partner" { "Grant to partner (name)" }
                    input #partner type="text" name="partner" required value=(typed)
                        aria-describedby=[problem.map(|_| "partner-error")];
                    (field_error(problem, "/partner", "partner-error"))
                    p.hint { "The partner's exact name, as the operator created it." }
                    button type="submit" { "Grant" }
                }
            }
            p { a href="/console/topics" { "All topics" } }
        },
    );
    if problem.is_some() {
        *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(page)
}

/// The grant form: a partner's name.
#[derive(Deserialize)]
pub struct GrantByName {
    #[serde(default)]
    partner: String,
}

/// The revoke form: the grantee's id (the console put it there).
#[derive(Deserialize)]
pub struct GrantForm {
    #[serde(default)]
    partner_id: String,
}

/// The id of the partner named exactly `name`, looked up through the API (which lets
/// admins find any partner by its exact name, and tells them nothing more).
async fn partner_by_name(c: &Console, name: &str) -> Result<Option<String>, ApiError> {
    let query = serde_urlencoded::to_string([("name", name)]).unwrap_or_default();
    let found = c.get(&format!("/v1/partners?{query}")).await?;
    Ok(items(&found).first().map(|p| s(p, "id").to_owned()))
}

/// POST /console/topics/{id}/grants
pub async fn grant(
    Path(raw): Path<String>,
    Protected(c, form): Protected<GrantByName>,
) -> PageResult {
    let id = path_id(&raw)?;
    let name = form.partner.trim();
    let refused = |detail: String| local_problem("/partner", detail);
    let partner = match DisplayName::parse(name) {
        Err(e) => Err(refused(format!("a partner's name {e}"))),
        Ok(name) => match partner_by_name(&c, name.as_str()).await {
            Ok(Some(partner)) => Ok(partner),
            Ok(None) => Err(refused(format!("no partner is named `{}`", name.as_str()))),
            Err(ApiError::Refused(p)) => Err(p),
            Err(e) => return Err(e.into()),
        },
    };
    let answer = match partner {
        Ok(partner) => c
            .call(
                Method::PUT,
                &format!("/v1/topics/{id}/grants/{partner}"),
                None,
            )
            .await
            .map_err(refusal),
        Err(problem) => Err(Ok(problem)),
    };
    match answer {
        Ok(_) => Ok(Redirect::to(&format!("/console/topics/{id}?granted=1")).into_response()),
        Err(Ok(problem)) => {
            topic_page(&c, id, &TopicOutcome::default(), Some(&problem), name).await
        }
        Err(Err(e)) => Err(e),
    }
}

/// POST /console/topics/{id}/grants/revoke
pub async fn revoke(
    Path(raw): Path<String>,
    Protected(c, form): Protected<GrantForm>,
) -> PageResult {
    let id = path_id(&raw)?;
    let partner = path_id(form.partner_id.trim())?;
    c.call(
        Method::DELETE,
        &format!("/v1/topics/{id}/grants/{partner}"),
        None,
    )
    .await?;
    Ok(Redirect::to(&format!("/console/topics/{id}?revoked=1")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_that_is_not_json_is_named_before_the_api_is_asked() {
        let form = NewTopic {
            name: "car.chosen".into(),
            schema: Some("{type: object}".into()),
            ..Default::default()
        };
        assert!(topic_body(&form).unwrap_err().field("/schema").is_some());
        let form = NewTopic {
            schema: Some(r#"{"type":"object"}"#.into()),
            ..form
        };
        assert_eq!(topic_body(&form).unwrap()["schema"]["type"], "object");
    }
}
