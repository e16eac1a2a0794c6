//! The audit log: one entry per change with its principal, none for a change that rolled back,
//! never a secret; who may read it, its filters and its pages.

use anika_shared::{
    audit::Actor,
    domain::{PartnerId, Role},
};
use anika_testkit::Partner;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::helpers::App;

/// The API key id (`sub`) and partner (`pid`) of an access token.
fn principal_of(token: &str) -> (String, Option<String>) {
    let payload = token.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    (
        claims["sub"].as_str().unwrap().to_owned(),
        claims["pid"].as_str().map(str::to_owned),
    )
}

/// Every entry the operator sees, newest first.
async fn all_entries(app: &App) -> Vec<Value> {
    let page = app
        .api
        .get("/v1/audit-log?limit=1000", &app.operator)
        .await
        .expect(200);
    assert!(page["next_cursor"].is_null());
    page["items"].as_array().unwrap().clone()
}

/// The one entry with `action` (fails if there are none or several).
async fn only(app: &App, action: &str) -> Value {
    let found: Vec<Value> = all_entries(app)
        .await
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {action}: {found:#?}");
    found.into_iter().next().unwrap()
}

async fn count(app: &App, action: &str) -> usize {
    all_entries(app)
        .await
        .iter()
        .filter(|e| e["action"] == action)
        .count()
}

/// Asserts an entry's actor is the principal of `token` with `role`.
fn assert_actor(entry: &Value, token: &str, role: &str) {
    let (key, partner) = principal_of(token);
    assert_eq!(entry["actor"]["api_key_id"], key.as_str(), "{entry:#}");
    assert_eq!(
        entry["actor"]["partner_id"],
        partner.map_or(Value::Null, Value::String),
        "{entry:#}"
    );
    assert_eq!(entry["actor"]["role"], role, "{entry:#}");
}

fn at(entry: &Value) -> DateTime<Utc> {
    entry["at"].as_str().unwrap().parse().unwrap()
}

fn assert_target(entry: &Value, kind: &str, id: &str) {
    assert_eq!(
        entry["target"],
        json!({"type": kind, "id": id}),
        "{entry:#}"
    );
}

#[tokio::test]
async fn partner_and_api_key_changes_each_write_one_entry_with_their_principal_and_changes() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let created = only(&app, "partner.created").await;
    assert_actor(&created, &app.operator, "operator");
    assert_target(&created, "partner", &dealer.id);
    assert_eq!(
        created["changes"],
        json!({"name": {"old": null, "new": "dealer"}})
    );

    app.api
        .patch(
            &format!("/v1/partners/{}", dealer.id),
            &app.operator,
            json!({"ingest_rate_per_s": 100, "description": "cars"}),
        )
        .await
        .expect(200);
    let updated = only(&app, "partner.updated").await;
    assert_actor(&updated, &app.operator, "operator");
    assert_target(&updated, "partner", &dealer.id);
    assert_eq!(
        updated["changes"],
        json!({"ingest_rate_per_s": {"old": null, "new": 100},
               "description": {"old": null, "new": "cars"}})
    );
    // The same PATCH again changes nothing, so it records nothing.
    app.api
        .patch(
            &format!("/v1/partners/{}", dealer.id),
            &app.operator,
            json!({"ingest_rate_per_s": 100}),
        )
        .await
        .expect(200);
    assert_eq!(count(&app, "partner.updated").await, 1);

    // `app.partner` made an admin and a publisher key as the operator.
    assert_eq!(count(&app, "api_key.created").await, 2);
    let key = app
        .api
        .post(
            "/v1/api-keys",
            &dealer.admin,
            json!({"role": "publisher", "name": "laptop"}),
        )
        .await
        .expect(201);
    let key_id = key["id"].as_str().unwrap();
    let entries = all_entries(&app).await;
    let made = entries
        .iter()
        .find(|e| e["action"] == "api_key.created" && e["target"]["id"] == key_id)
        .expect("an entry for the new key");
    assert_actor(made, &dealer.admin, "admin");
    assert_target(made, "api_key", key_id);
    assert_eq!(
        made["changes"],
        json!({"role": {"old": null, "new": "publisher"}, "name": {"old": null, "new": "laptop"},
               "partner_id": {"old": null, "new": dealer.id}})
    );

    app.api
        .delete(&format!("/v1/api-keys/{key_id}"), &dealer.admin)
        .await
        .expect(204);
    // Revoking it again is no change.
    app.api
        .delete(&format!("/v1/api-keys/{key_id}"), &dealer.admin)
        .await
        .expect(204);
    let revoked = only(&app, "api_key.revoked").await;
    assert_actor(&revoked, &dealer.admin, "admin");
    assert_target(&revoked, "api_key", key_id);
    assert!(revoked["changes"]["revoked_at"]["old"].is_null());
    assert!(revoked["changes"]["revoked_at"]["new"].is_string());
}

#[tokio::test]
async fn topic_and_grant_changes_each_write_one_entry_and_a_repeated_grant_none() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let created = only(&app, "topic.created").await;
    assert_actor(&created, &dealer.admin, "admin");
    assert_target(&created, "topic", &topic);
    assert_eq!(
        created["changes"],
        json!({"name": {"old": null, "new": "car.chosen"}})
    );

    let schema = json!({"type": "object"});
    app.api
        .patch(
            &format!("/v1/topics/{topic}"),
            &dealer.admin,
            json!({"description": "chosen cars", "schema": schema}),
        )
        .await
        .expect(200);
    let updated = only(&app, "topic.updated").await;
    assert_actor(&updated, &dealer.admin, "admin");
    assert_eq!(
        updated["changes"],
        json!({"description": {"old": null, "new": "chosen cars"},
               "schema": {"old": null, "new": schema}})
    );

    let grant = format!("/v1/topics/{topic}/grants/{}", bank.id);
    app.api.put(&grant, &dealer.admin).await.expect(204);
    app.api.put(&grant, &dealer.admin).await.expect(204);
    let granted = only(&app, "grant.created").await;
    assert_actor(&granted, &dealer.admin, "admin");
    assert_target(&granted, "grant", &topic);
    assert_eq!(
        granted["changes"],
        json!({"partner_id": {"old": null, "new": bank.id}})
    );

    app.api.delete(&grant, &dealer.admin).await.expect(204);
    app.api.delete(&grant, &dealer.admin).await.expect(204);
    let ungranted = only(&app, "grant.deleted").await;
    assert_actor(&ungranted, &dealer.admin, "admin");
    assert_target(&ungranted, "grant", &topic);
    assert_eq!(
        ungranted["changes"],
        json!({"partner_id": {"old": bank.id, "new": null}})
    );

    app.api.put(&grant, &dealer.admin).await.expect(204);
    let sub = app.subscription(&bank.admin, &topic).await;
    app.api
        .delete(&format!("/v1/topics/{topic}"), &app.operator)
        .await
        .expect(204);
    let deleted = only(&app, "topic.deleted").await;
    assert_actor(&deleted, &app.operator, "operator");
    assert_target(&deleted, "topic", &topic);
    assert_eq!(
        deleted["changes"],
        json!({"name": {"old": "car.chosen", "new": null},
               "subscriptions": {"old": [sub["id"]], "new": null}})
    );
    // The grantee's subscription went with the topic: its admins see that, and who did it.
    let theirs = app
        .api
        .get("/v1/audit-log?action=subscription.deleted", &bank.admin)
        .await
        .expect(200);
    let items = theirs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{theirs:#}");
    assert_actor(&items[0], &app.operator, "operator");
    assert_target(&items[0], "subscription", sub["id"].as_str().unwrap());
    assert_eq!(items[0]["changes"]["topic_id"]["old"], topic.as_str());
}

#[tokio::test]
async fn subscription_changes_each_write_one_entry_with_the_changed_fields() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let sub = app.subscription(&dealer.admin, &topic).await;
    let id = sub["id"].as_str().unwrap();
    let created = only(&app, "subscription.created").await;
    assert_actor(&created, &dealer.admin, "admin");
    assert_target(&created, "subscription", id);
    let changes = &created["changes"];
    assert_eq!(changes["topic_id"]["new"], topic.as_str());
    assert_eq!(changes["url"]["new"], "https://bank.example.com/hooks");
    assert_eq!(changes["status"]["new"], "active");
    assert_eq!(changes["max_attempts"]["new"], 4);

    let path = format!("/v1/subscriptions/{id}");
    app.api
        .patch(
            &path,
            &dealer.admin,
            json!({"status": "paused", "url": "https://u:hunter2@bank.example.com/v2", "max_attempts": 4}),
        )
        .await
        .expect(200);
    let updated = only(&app, "subscription.updated").await;
    assert_actor(&updated, &dealer.admin, "admin");
    assert_eq!(
        updated["changes"],
        json!({"status": {"old": "active", "new": "paused"},
               "url": {"old": "https://bank.example.com/hooks", "new": "https://***@bank.example.com/v2"}}),
        "only what changed; a URL's credentials are not recorded"
    );

    app.api
        .post(&format!("{path}/rotate-secret"), &dealer.admin, json!({}))
        .await
        .expect(200);
    let rotated = only(&app, "subscription.secret_rotated").await;
    assert_actor(&rotated, &dealer.admin, "admin");
    assert_target(&rotated, "subscription", id);
    assert_eq!(rotated["changes"], json!({}));

    app.api.delete(&path, &app.operator).await.expect(204);
    let deleted = only(&app, "subscription.deleted").await;
    assert_actor(&deleted, &app.operator, "operator");
    assert_target(&deleted, "subscription", id);
    assert_eq!(deleted["changes"]["topic_id"]["old"], topic.as_str());
}

#[tokio::test]
async fn a_change_that_fails_and_rolls_back_leaves_no_entry() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let clash = app
        .api
        .post("/v1/topics", &dealer.admin, json!({"name": "car.chosen"}))
        .await;
    assert_eq!(clash.status, 409);
    assert_eq!(count(&app, "topic.created").await, 1);
    let missing = PartnerId::new();
    let answer = app
        .api
        .put(
            &format!("/v1/topics/{topic}/grants/{missing}"),
            &dealer.admin,
        )
        .await;
    assert_eq!(answer.status, 404);
    assert_eq!(count(&app, "grant.created").await, 0);

    // A grant whose entry is written, then RabbitMQ refuses the binding (the grantee's
    // queue was deleted behind the catalog's back): the grant and its entry roll back together.
    let grant = format!("/v1/topics/{topic}/grants/{}", bank.id);
    app.api.put(&grant, &dealer.admin).await.expect(204);
    let sub = app.subscription(&bank.admin, &topic).await;
    app.api.delete(&grant, &dealer.admin).await.expect(204);
    let channel = app.ctx.broker.channel().await.unwrap();
    channel
        .queue_delete(
            format!("anika.sub.{}", sub["id"].as_str().unwrap()).into(),
            Default::default(),
        )
        .await
        .unwrap();
    let refused = app.api.put(&grant, &dealer.admin).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(
        count(&app, "grant.created").await,
        1,
        "only the first grant"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM grants")
        .fetch_one(&app.ctx.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the grant rolled back too");
}

#[tokio::test]
async fn no_secret_value_appears_in_any_entry() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let sub = app.subscription(&dealer.admin, &topic).await;
    let rotated = app
        .api
        .post(
            &format!(
                "/v1/subscriptions/{}/rotate-secret",
                sub["id"].as_str().unwrap()
            ),
            &dealer.admin,
            json!({}),
        )
        .await
        .expect(200);
    let key = app
        .api
        .post(
            "/v1/api-keys",
            &dealer.admin,
            json!({"role": "admin", "name": "ci"}),
        )
        .await
        .expect(201);
    let (cli_key, cli_secret) =
        anika_catalog::create_api_key(&app.ctx.pool, &Actor::cli(), Role::Operator, None, "cli")
            .await
            .unwrap();
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(a)::text FROM audit_log a")
        .fetch_all(&app.ctx.pool)
        .await
        .unwrap();
    assert!(rows.len() >= 8, "{rows:#?}");
    let secrets = [
        sub["secret"].as_str().unwrap(),
        rotated["secret"].as_str().unwrap(),
        key["api_key"].as_str().unwrap(),
        cli_secret.as_str(),
        crate::helpers::OPERATOR_KEY,
    ];
    for row in &rows {
        assert!(!row.contains("whsec_"), "{row}");
        for secret in secrets {
            assert!(!row.contains(secret), "{row}");
        }
    }
    assert!(rows.iter().any(|r| r.contains(&cli_key.to_string())));
}

#[tokio::test]
async fn the_command_lines_changes_are_recorded_as_an_operator_without_a_key() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let partner = PartnerId::parse(&dealer.id).unwrap();
    let (key, _) = anika_catalog::create_api_key(
        &app.ctx.pool,
        &Actor::cli(),
        Role::Admin,
        Some(partner),
        "cli",
    )
    .await
    .unwrap();
    let kid =
        anika_catalog::keys::rotate_signing_key(&app.ctx.pool, &app.ctx.secrets, &Actor::cli())
            .await
            .unwrap();
    let entries = all_entries(&app).await;
    let made = entries
        .iter()
        .find(|e| e["target"]["id"] == key.to_string().as_str())
        .expect("the key's entry");
    assert_eq!(made["action"], "api_key.created");
    assert_eq!(
        made["actor"],
        json!({"api_key_id": null, "partner_id": null, "role": "operator"})
    );
    let rotated = only(&app, "signing_key.rotated").await;
    assert_target(&rotated, "signing_key", &kid);
    assert_eq!(rotated["changes"]["active_kid"]["new"], kid.as_str());
    assert!(rotated["changes"]["active_kid"]["old"].is_string());
    // A platform-wide change: partner admins do not see it.
    let theirs = app
        .api
        .get("/v1/audit-log?target_type=signing_key", &dealer.admin)
        .await
        .expect(200);
    assert_eq!(theirs["items"], json!([]));
}

/// Two partners with a topic each, one granted to the other, one subscription each.
async fn two_partners(app: &App) -> (Partner, Partner, String, String) {
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let cars = app.topic(&dealer.admin, "car.chosen").await;
    let loans = app.topic(&bank.admin, "loan.offered").await;
    app.api
        .put(
            &format!("/v1/topics/{cars}/grants/{}", bank.id),
            &dealer.admin,
        )
        .await
        .expect(204);
    app.subscription(&dealer.admin, &cars).await;
    app.subscription(&bank.admin, &loans).await;
    (dealer, bank, cars, loans)
}

#[tokio::test]
async fn operators_see_every_entry_admins_their_partners_and_publishers_none() {
    let app = App::spawn().await;
    let (dealer, bank, cars, loans) = two_partners(&app).await;
    let everything = all_entries(&app).await;
    let dealers: Vec<Value> = app
        .api
        .get("/v1/audit-log?limit=1000", &dealer.admin)
        .await
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .clone();
    let banks = app
        .api
        .get("/v1/audit-log?limit=1000", &bank.admin)
        .await
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!dealers.is_empty() && !banks.is_empty());
    assert_eq!(
        dealers.len() + banks.len(),
        everything.len(),
        "every entry here is about one of the two partners"
    );
    let about = |entries: &[Value], id: &str| entries.iter().any(|e| e["target"]["id"] == id);
    assert!(about(&dealers, &cars) && !about(&dealers, &loans));
    assert!(about(&banks, &loans) && !about(&banks, &cars));
    assert!(about(&dealers, &dealer.id) && !about(&dealers, &bank.id));
    // Also through a filter naming the other partner's resource.
    let peek = app
        .api
        .get(&format!("/v1/audit-log?target_id={loans}"), &dealer.admin)
        .await
        .expect(200);
    assert_eq!(peek["items"], json!([]));

    let refused = app.api.get("/v1/audit-log", &dealer.publisher).await;
    assert_eq!(refused.status, 403);
    refused.assert_problem();
}

#[tokio::test]
async fn the_audit_log_filters_by_action_target_and_time_and_pages_newest_first() {
    let app = App::spawn().await;
    let (dealer, bank, cars, _) = two_partners(&app).await;
    let everything = all_entries(&app).await;
    let times: Vec<DateTime<Utc>> = everything.iter().map(at).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");

    let get = |query: String| {
        let app = &app;
        async move {
            app.api
                .get(&format!("/v1/audit-log?{query}"), &app.operator)
                .await
                .expect(200)["items"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let grants = get("action=grant.created".into()).await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["changes"]["partner_id"]["new"], bank.id.as_str());
    let topics = get("target_type=topic".into()).await;
    assert_eq!(topics.len(), 2);
    assert!(topics.iter().all(|e| e["action"] == "topic.created"));
    let about_cars = get(format!("target_id={cars}")).await;
    assert_eq!(
        about_cars.len(),
        2,
        "the topic and its grant: {about_cars:#?}"
    );
    let both = get(format!("target_type=grant&target_id={cars}")).await;
    assert_eq!(both.len(), 1);
    let partner = get(format!("action=partner.created&target_id={}", dealer.id)).await;
    assert_eq!(partner.len(), 1);

    // A time window: `since` inclusive, `until` exclusive.
    let middle = everything[everything.len() / 2]["at"].as_str().unwrap();
    let cut = at(&everything[everything.len() / 2]);
    let encoded = middle.replace('+', "%2B");
    let since = get(format!("since={encoded}&limit=1000")).await;
    let until = get(format!("until={encoded}&limit=1000")).await;
    assert!(!since.is_empty() && !until.is_empty());
    assert_eq!(since.len() + until.len(), everything.len());
    assert!(since.iter().all(|e| at(e) >= cut));
    assert!(until.iter().all(|e| at(e) < cut));

    // Pages of two walk every entry once, newest first.
    let mut walked: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("/v1/audit-log?limit=2&cursor={c}"),
            None => "/v1/audit-log?limit=2".to_owned(),
        };
        let page = app.api.get(&query, &app.operator).await.expect(200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        walked.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(walked, everything);
}

#[tokio::test]
async fn bad_filter_values_are_refused_with_a_problem_never_a_500() {
    let app = App::spawn().await;
    for query in [
        "action=grant.given",
        "target_type=planet",
        "target_id=a%20b",
        "target_id=",
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z",
        "limit=0",
        "limit=1001",
        "limit=many",
        "cursor=garbage",
        "colour=blue",
    ] {
        let answer = app
            .api
            .get(&format!("/v1/audit-log?{query}"), &app.operator)
            .await;
        assert!(
            (400..500).contains(&answer.status),
            "{query}: {} {:?}",
            answer.status,
            answer.body
        );
        answer.assert_problem();
    }
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_audit_log_is_described_in_openapi_with_its_filters_and_entry_shape() {
    let api = serde_json::to_value(anika_catalog::openapi()).unwrap();
    let get = &api["paths"]["/v1/audit-log"]["get"];
    let params: Vec<&str> = get["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        [
            "action",
            "target_type",
            "target_id",
            "since",
            "until",
            "limit",
            "cursor"
        ]
    );
    let schemas = &api["components"]["schemas"];
    for field in ["id", "at", "actor", "action", "target", "changes"] {
        assert!(schemas["Entry"]["properties"][field].is_object(), "{field}");
    }
    for field in ["api_key_id", "partner_id", "role"] {
        assert!(schemas["Actor"]["properties"][field].is_object(), "{field}");
    }
    let actions = schemas["Action"].to_string();
    for action in [
        "grant.created",
        "subscription.secret_rotated",
        "events.replayed",
    ] {
        assert!(actions.contains(action), "{action} in {actions}");
    }
    let mut found = Vec::new();
    refs(get, &mut found);
    refs(schemas, &mut found);
    for r in found {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(schemas[name].is_object(), "{r} resolves");
    }
}
