//! Partners (operators) and API keys (operators and partner admins): create, list, revoke.

use axum::{
    extract::Query,
    http::StatusCode,
    response::{IntoResponse, Redirect},
};
use maud::{Markup, html};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    api::ApiProblem,
    error::PageResult,
    layout::{csrf, empty, field_error, form_problem, notice, s, time},
    session::Role,
    subscriptions::{items, path_id},
    web::{Console, Protected, filled, refusal},
};

/// The partner form, as typed.
#[derive(Debug, Default, Deserialize)]
pub struct NewPartner {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: Option<String>,
}

/// What just happened on the partners page.
#[derive(Debug, Default, Deserialize)]
pub struct PartnerOutcome {
    created: Option<String>,
}

fn partners_page(
    c: &Console,
    partners: &[Value],
    form: &NewPartner,
    problem: Option<&ApiProblem>,
    created: Option<&Value>,
) -> Markup {
    html! {
        @if let Some(p) = created {
            (notice(&format!("Partner {} created.", s(p, "name"))))
            p { a.button href={ "/console/api-keys?partner_id=" (s(p, "id")) } { "Create an API key for " (s(p, "name")) } }
        }
        @if partners.is_empty() { (empty("No partners yet.")) } @else {
            div.scroll { table {
                thead { tr { th { "Name" } th { "Id" } th { "Ingest limit" } th { "Created" } th { span.visually-hidden { "Keys" } } } }
                tbody { @for p in partners {
                    tr {
                        td { (s(p, "name")) }
                        td { code { (s(p, "id")) } }
                        td { @match p["ingest_rate_per_s"].as_u64() { Some(n) => { (n) " / s" }, None => "none" } }
                        td { (time(p, "created_at")) }
                        td {
                            a href={ "/console/api-keys?partner_id=" (s(p, "id")) } { "API keys" } " · "
                            a href={ "/console/partners/" (s(p, "id")) } aria-label={ "Ingest limit of " (s(p, "name")) } { "Ingest limit" }
                        }
                    }
                } }
            } }
        }
        h2 { "Create a partner" }
        (form_problem(problem, &["/name", "/description"]))
        form.card method="post" action="/console/partners" {
            (csrf(&c.session))
            label for="name" { "Name" }
            input #name type="text" name="name" value=(form.name) required;
            (field_error(problem, "/name", "name-error"))
            label for="description" { "Description (optional)" }
            input #description type="text" name="description" value=(form.description.clone().unwrap_or_default());
            (field_error(problem, "/description", "description-error"))
            button type="submit" { "Create partner" }
        }
    }
}

/// GET /console/partners
pub async fn partners(c: Console, Query(outcome): Query<PartnerOutcome>) -> PageResult {
    let list = c.get("/v1/partners?limit=1000").await?;
    let created = items(&list)
        .iter()
        .find(|p| outcome.created.as_deref() == Some(s(p, "id")));
    Ok(c.page(
        "Partners",
        partners_page(&c, items(&list), &NewPartner::default(), None, created),
    ))
}

/// POST /console/partners
pub async fn create_partner(Protected(c, form): Protected<NewPartner>) -> PageResult {
    let mut body = Map::new();
    body.insert("name".into(), json!(form.name.trim()));
    if let Some(d) = filled(&form.description) {
        body.insert("description".into(), json!(d));
    }
    match c
        .call(Method::POST, "/v1/partners", Some(&Value::Object(body)))
        .await
        .map_err(refusal)
    {
        Ok(p) => {
            Ok(Redirect::to(&format!("/console/partners?created={}", s(&p, "id"))).into_response())
        }
        Err(Ok(problem)) => {
            let list = c.get("/v1/partners?limit=1000").await?;
            let mut page = c.page(
                "Partners",
                partners_page(&c, items(&list), &form, Some(&problem), None),
            );
            *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(Err(e)) => Err(e),
    }
}

/// The ingest-limit form, as typed (empty: no limit / one second's worth).
#[derive(Debug, Default, Deserialize)]
pub struct Quota {
    #[serde(default)]
    ingest_rate_per_s: Option<String>,
    #[serde(default)]
    ingest_burst: Option<String>,
}

/// The PATCH body: an empty field is `null` (no limit; the default burst).
fn quota_body(form: &Quota) -> Result<Value, ApiProblem> {
    let number = |pointer: &str, value: &Option<String>| -> Result<Value, ApiProblem> {
        match filled(value) {
            None => Ok(Value::Null),
            Some(v) => v.parse::<u64>().map(|n| json!(n)).map_err(|_| {
                crate::subscriptions::local_problem(pointer, "a whole number, e.g. 100".into())
            }),
        }
    };
    Ok(json!({
        "ingest_rate_per_s": number("/ingest_rate_per_s", &form.ingest_rate_per_s)?,
        "ingest_burst": number("/ingest_burst", &form.ingest_burst)?,
    }))
}

fn quota_page(c: &Console, partner: &Value, form: &Quota, problem: Option<&ApiProblem>) -> Markup {
    let id = s(partner, "id");
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    html! {
        dl.facts {
            dt { "Id" } dd { code { (id) } }
            dt { "Description" } dd { (s(partner, "description")) }
            dt { "Created" } dd { (time(partner, "created_at")) }
        }
        h2 { "Ingest limit" }
        (form_problem(problem, &["/ingest_rate_per_s", "/ingest_burst"]))
        form.card method="post" action={ "/console/partners/" (id) } {
            (csrf(&c.session))
            label for="ingest_rate_per_s" { "Events per second, all of the partner's keys together (empty: no limit)" }
            input #ingest_rate_per_s type="number" min="1" max="1000000" name="ingest_rate_per_s" value=(text(&form.ingest_rate_per_s));
            (field_error(problem, "/ingest_rate_per_s", "ingest_rate_per_s-error"))
            label for="ingest_burst" { "Burst (empty: one second's worth)" }
            input #ingest_burst type="number" min="1" max="1000000" name="ingest_burst" value=(text(&form.ingest_burst));
            (field_error(problem, "/ingest_burst", "ingest_burst-error"))
            button type="submit" { "Save limit" }
        }
        p { a href="/console/partners" { "All partners" } }
    }
}

/// GET /console/partners/{id}
pub async fn partner(
    c: Console,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> PageResult {
    let id = path_id(&raw)?;
    let partner = c.get(&format!("/v1/partners/{id}")).await?;
    let number = |key: &str| partner[key].as_u64().map(|n| n.to_string());
    let form = Quota {
        ingest_rate_per_s: number("ingest_rate_per_s"),
        ingest_burst: number("ingest_burst"),
    };
    Ok(c.page(
        &format!("Partner {}", s(&partner, "name")),
        quota_page(&c, &partner, &form, None),
    ))
}

/// POST /console/partners/{id}: sets the partner's ingest limit.
pub async fn set_quota(
    axum::extract::Path(raw): axum::extract::Path<String>,
    Protected(c, form): Protected<Quota>,
) -> PageResult {
    let id = path_id(&raw)?;
    let answer = match quota_body(&form) {
        Ok(body) => c
            .call(Method::PATCH, &format!("/v1/partners/{id}"), Some(&body))
            .await
            .map_err(refusal),
        Err(local) => Err(Ok(local)),
    };
    match answer {
        Ok(_) => Ok(Redirect::to("/console/partners").into_response()),
        Err(Ok(problem)) => {
            let partner = c.get(&format!("/v1/partners/{id}")).await?;
            let mut page = c.page(
                &format!("Partner {}", s(&partner, "name")),
                quota_page(&c, &partner, &form, Some(&problem)),
            );
            *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(Err(e)) => Err(e),
    }
}

/// Which partner's keys the page shows first.
#[derive(Debug, Default, Deserialize)]
pub struct KeyFilter {
    partner_id: Option<String>,
    revoked: Option<String>,
}

/// The key form, as typed.
#[derive(Debug, Default, Deserialize)]
pub struct NewKey {
    #[serde(default)]
    role: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    partner_id: Option<String>,
}

async fn keys_page(
    c: &Console,
    filter: &KeyFilter,
    form: &NewKey,
    problem: Option<&ApiProblem>,
    created: Option<&Value>,
) -> PageResult {
    let keys = c.get("/v1/api-keys?limit=1000").await?;
    let operator = c.session.who.role == Role::Operator;
    let partners = if operator {
        items(&c.get("/v1/partners?limit=1000").await?).to_vec()
    } else {
        Vec::new()
    };
    let partner_name = |id: &str| {
        partners
            .iter()
            .find(|p| s(p, "id") == id)
            .map(|p| s(p, "name").to_owned())
            .unwrap_or_else(|| id.to_owned())
    };
    let chosen = filled(&form.partner_id)
        .or(filled(&filter.partner_id))
        .map(str::to_owned);
    let mut keys: Vec<&Value> = items(&keys).iter().collect();
    if let Some(p) = &chosen {
        keys.retain(|k| s(k, "partner_id") == p);
    }
    let title = "API keys";
    Ok(c.page(
        title,
        html! {
            @if let Some(k) = created {
                div.secret role="status" {
                    p { strong { "Key created: " (s(k, "name")) " (" (s(k, "role")) ")." } }
                    label for="new-key" { "API key (shown only now: store it in your secret manager)" }
                    div.copy {
                        input #new-key type="text" readonly value=(s(k, "api_key"));
                        button type="button" data-copy="new-key" { "Copy" }
                    }
                }
            }
            @if filter.revoked.is_some() { (notice("Key revoked: its tokens stop working at once.")) }
            @if let Some(p) = &chosen { p { "Keys of partner " strong { (partner_name(p)) } ". " a href="/console/api-keys" { "All keys" } } }
            @if keys.is_empty() { (empty("No keys.")) } @else {
                div.scroll { table {
                    thead { tr { th { "Name" } th { "Role" } th { "Partner" } th { "Created" } th { span.visually-hidden { "Action" } } } }
                    tbody { @for k in &keys {
                        tr {
                            td { (s(k, "name")) }
                            td { (s(k, "role")) }
                            td { @if s(k, "partner_id").is_empty() { "—" } @else { (partner_name(s(k, "partner_id"))) } }
                            td { (time(k, "created_at")) }
                            td {
                                form method="post" action="/console/api-keys/revoke" {
                                    (csrf(&c.session))
                                    input type="hidden" name="id" value=(s(k, "id"));
                                    button.danger type="submit" aria-label={ "Revoke key " (s(k, "name")) } { "Revoke" }
                                }
                            }
                        }
                    } }
                } }
            }
            h2 { "Create an API key" }
            (form_problem(problem, &["/name", "/role", "/partner_id"]))
            form.card method="post" action="/console/api-keys" {
                (csrf(&c.session))
                label for="key-name" { "Name" }
                input #key-name type="text" name="name" value=(form.name) required placeholder="ci publisher";
                (field_error(problem, "/name", "name-error"))
                label for="role" { "Role" }
                select #role name="role" {
                    option value="admin" selected[form.role == "admin"] { "admin — manages the partner's topics, grants, subscriptions and keys" }
                    option value="publisher" selected[form.role == "publisher"] { "publisher — posts and reads the partner's events" }
                    @if operator { option value="operator" selected[form.role == "operator"] { "operator — runs the platform" } }
                }
                (field_error(problem, "/role", "role-error"))
                @if operator {
                    label for="partner_id" { "Partner" }
                    select #partner_id name="partner_id" {
                        option value="" { "none (for an operator key)" }
                        @for p in &partners { option value=(s(p, "id")) selected[chosen.as_deref() == Some(s(p, "id"))] { (s(p, "name")) } }
                    }
                    (field_error(problem, "/partner_id", "partner_id-error"))
                }
                button type="submit" { "Create key" }
            }
        },
    ))
}

/// GET /console/api-keys
pub async fn api_keys(c: Console, Query(filter): Query<KeyFilter>) -> PageResult {
    keys_page(&c, &filter, &NewKey::default(), None, None).await
}

/// POST /console/api-keys: the new key is shown on this answer only (never in a URL).
pub async fn create_key(Protected(c, form): Protected<NewKey>) -> PageResult {
    let mut body = Map::new();
    body.insert("role".into(), json!(form.role));
    body.insert("name".into(), json!(form.name.trim()));
    if let Some(p) = filled(&form.partner_id) {
        body.insert("partner_id".into(), json!(p));
    }
    let filter = KeyFilter::default();
    match c
        .call(Method::POST, "/v1/api-keys", Some(&Value::Object(body)))
        .await
        .map_err(refusal)
    {
        Ok(created) => {
            let shown = NewKey {
                partner_id: form.partner_id.clone(),
                ..NewKey::default()
            };
            let mut page = keys_page(&c, &filter, &shown, None, Some(&created)).await?;
            *page.status_mut() = StatusCode::CREATED;
            Ok(page)
        }
        Err(Ok(problem)) => {
            let mut page = keys_page(&c, &filter, &form, Some(&problem), None).await?;
            *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(Err(e)) => Err(e),
    }
}

/// The revoke form.
#[derive(Deserialize)]
pub struct RevokeKey {
    #[serde(default)]
    id: String,
}

/// POST /console/api-keys/revoke
pub async fn revoke_key(Protected(c, form): Protected<RevokeKey>) -> PageResult {
    let id = path_id(form.id.trim())?;
    c.call(Method::DELETE, &format!("/v1/api-keys/{id}"), None)
        .await?;
    Ok(Redirect::to("/console/api-keys?revoked=1").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_limit_removes_it_and_a_word_is_named() {
        let form = Quota {
            ingest_rate_per_s: Some("100".into()),
            ingest_burst: Some(String::new()),
        };
        assert_eq!(
            quota_body(&form).unwrap(),
            json!({"ingest_rate_per_s": 100, "ingest_burst": null})
        );
        let form = Quota {
            ingest_rate_per_s: Some("lots".into()),
            ingest_burst: None,
        };
        assert!(
            quota_body(&form)
                .unwrap_err()
                .field("/ingest_rate_per_s")
                .is_some()
        );
    }
}
