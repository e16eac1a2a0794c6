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

use crate::{
    api::{ApiError, ApiProblem},
    error::{PageError, PageResult},
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
    let topic = c.get(&format!("/v1/topics/{id}")).await?;
    // Only the owner may list grants; for anyone else the section is left out.
    let grants = match c.get(&format!("/v1/topics/{id}/grants")).await {
        Ok(v) => Some(v),
        Err(ApiError::Refused(_) | ApiError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut rows = Vec::new();
    if let Some(grants) = &grants {
        for g in items(grants) {
            let pid = s(g, "partner_id");
            let name = c
                .get(&format!("/v1/partners/{pid}"))
                .await
                .map(|p| s(&p, "name").to_owned())
                .unwrap_or_default();
            rows.push((g.clone(), name));
        }
    }
    Ok(c.page(
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
                                td { (name) " " code { (s(g, "partner_id")) } }
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
                form.card method="post" action={ "/console/topics/" (id) "/grants" } {
                    (csrf(&c.session))
                    label for="partner_id" { "Grant to partner (id)" }
                    input #partner_id type="text" name="partner_id" required
                        pattern="[0-9a-fA-F\\-]{36}" placeholder="00000000-0000-0000-0000-000000000000";
                    button type="submit" { "Grant" }
                }
            }
            p { a href="/console/topics" { "All topics" } }
        },
    ))
}

/// The grant and revoke forms.
#[derive(Deserialize)]
pub struct GrantForm {
    #[serde(default)]
    partner_id: String,
}

/// POST /console/topics/{id}/grants
pub async fn grant(
    Path(raw): Path<String>,
    Protected(c, form): Protected<GrantForm>,
) -> PageResult {
    let id = path_id(&raw)?;
    let partner = path_id(form.partner_id.trim()).map_err(|_| {
        PageError::BadInput(format!("`{}` is not a partner id", form.partner_id.trim()))
    })?;
    c.call(
        Method::PUT,
        &format!("/v1/topics/{id}/grants/{partner}"),
        None,
    )
    .await?;
    Ok(Redirect::to(&format!("/console/topics/{id}?granted=1")).into_response())
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
