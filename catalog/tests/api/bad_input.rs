//! Bad input gets a 4xx problem document that says what is wrong; never a 500.

use reqwest::Method;
use serde_json::json;

use crate::helpers::App;

#[tokio::test]
async fn malformed_bodies_get_the_right_status_and_a_useful_detail() {
    let app = App::spawn().await;
    let token = Some(app.operator.as_str());
    let json_type = Some("application/json");

    let broken = app
        .api
        .send_raw(
            Method::POST,
            "/v1/partners",
            token,
            anika_testkit::RawBody(json_type, b"{\"name\":".to_vec()),
        )
        .await;
    assert_eq!(broken.status, 400);
    assert!(
        broken.detail().contains("not valid JSON"),
        "{}",
        broken.detail()
    );
    broken.assert_problem();

    let empty = app
        .api
        .send_raw(
            Method::POST,
            "/v1/partners",
            token,
            anika_testkit::RawBody(json_type, Vec::new()),
        )
        .await;
    assert_eq!(empty.status, 400);

    let no_type = app
        .api
        .send_raw(
            Method::POST,
            "/v1/partners",
            token,
            anika_testkit::RawBody(None, b"{\"name\":\"x\"}".to_vec()),
        )
        .await;
    assert_eq!(no_type.status, 415);
    no_type.assert_problem();
    let form = app
        .api
        .send_raw(
            Method::POST,
            "/v1/partners",
            token,
            anika_testkit::RawBody(
                Some("application/x-www-form-urlencoded"),
                b"name=x".to_vec(),
            ),
        )
        .await;
    assert_eq!(form.status, 415);

    let wrong_type = app
        .api
        .post("/v1/partners", &app.operator, json!({"name": 42}))
        .await;
    assert_eq!(wrong_type.status, 422);
    assert_eq!(wrong_type.pointers(), vec!["/name"]);
    let array = app
        .api
        .post("/v1/partners", &app.operator, json!([1]))
        .await;
    assert_eq!(array.status, 422);
    let unknown_field = app
        .api
        .post(
            "/v1/partners",
            &app.operator,
            json!({"name": "x", "nmae": "y"}),
        )
        .await;
    assert_eq!(unknown_field.status, 422);
    assert_eq!(unknown_field.pointers(), vec!["/nmae"]);
    let long_name = app
        .api
        .post(
            "/v1/partners",
            &app.operator,
            json!({"name": "x".repeat(201)}),
        )
        .await;
    assert_eq!(long_name.status, 422);
    assert_eq!(long_name.pointers(), vec!["/name"]);

    let huge = app
        .api
        .send_raw(
            Method::POST,
            "/v1/partners",
            token,
            anika_testkit::RawBody(
                json_type,
                format!("{{\"name\":\"{}\"}}", "x".repeat(3 << 20)).into_bytes(),
            ),
        )
        .await;
    assert_eq!(huge.status, 413);
    huge.assert_problem();
}

#[tokio::test]
async fn bad_ids_unknown_ids_routes_and_methods_are_problems() {
    let app = App::spawn().await;
    let bad_id = app.api.get("/v1/topics/not-a-uuid", &app.operator).await;
    assert_eq!(bad_id.status, 400);
    assert!(bad_id.detail().contains("topic id"), "{}", bad_id.detail());
    bad_id.assert_problem();

    let bad_grant = app
        .api
        .put(
            &format!("/v1/topics/{}/grants/xyz", uuid::Uuid::now_v7()),
            &app.operator,
        )
        .await;
    assert_eq!(bad_grant.status, 400);
    assert!(
        bad_grant.detail().contains("partner id"),
        "{}",
        bad_grant.detail()
    );

    for path in [
        "/v1/topics",
        "/v1/subscriptions",
        "/v1/partners",
        "/v1/api-keys",
    ] {
        let unknown = app
            .api
            .get(&format!("{path}/{}", uuid::Uuid::now_v7()), &app.operator)
            .await;
        if path == "/v1/api-keys" {
            assert_eq!(unknown.status, 405, "{path}");
        } else {
            assert_eq!(unknown.status, 404, "{path}");
        }
        unknown.assert_problem();
    }

    let no_route = app.api.get("/v1/nothing-here", &app.operator).await;
    assert_eq!(no_route.status, 404);
    no_route.assert_problem();
    let wrong_method = app
        .api
        .send(Method::PUT, "/v1/partners", Some(&app.operator), None)
        .await;
    assert_eq!(wrong_method.status, 405);
    wrong_method.assert_problem();

    let bad_query = app.api.get("/v1/topics?limit=abc", &app.operator).await;
    assert_eq!(bad_query.status, 400);
    assert!(
        bad_query.detail().contains("limit"),
        "{}",
        bad_query.detail()
    );
    let unknown_query = app.api.get("/v1/topics?colour=red", &app.operator).await;
    assert_eq!(unknown_query.status, 400);
    assert!(
        unknown_query.detail().contains("colour"),
        "{}",
        unknown_query.detail()
    );
    let bad_filter = app
        .api
        .get("/v1/subscriptions?status=gone", &app.operator)
        .await;
    assert_eq!(bad_filter.status, 400);
}

#[tokio::test]
async fn junk_sent_to_every_route_never_yields_a_server_error() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app.subscription(&dealer.admin, &topic).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let routes: Vec<(Method, String)> = vec![
        (Method::POST, "/v1/auth/token".into()),
        (Method::POST, "/v1/api-keys".into()),
        (Method::POST, "/v1/partners".into()),
        (Method::POST, "/v1/topics".into()),
        (Method::PATCH, format!("/v1/topics/{topic}")),
        (Method::POST, "/v1/subscriptions".into()),
        (Method::PATCH, format!("/v1/subscriptions/{sub}")),
    ];
    let junk = [
        json!(null),
        json!(true),
        json!("string"),
        json!(-1),
        json!([]),
        json!({}),
        json!({"name": null, "url": null, "topic_id": null}),
        json!({"name": {"nested": []}, "topic_id": "x", "url": 5, "role": [], "grant_type": 3}),
        json!({"schema": "x", "filter": "y", "max_attempts": 1e300, "rate_limit_per_s": "7", "status": 1}),
        json!({"topic_id": topic, "url": "https://x.example.com/\u{0000}"}),
        json!({"name": "\u{0000}\u{0007}"}),
    ];
    for (method, path) in &routes {
        for body in &junk {
            if *method == Method::PATCH && *body == json!({}) {
                continue; // an empty PATCH is a valid no-op
            }
            for token in [&app.operator, &dealer.admin, &dealer.publisher] {
                let answer = app
                    .api
                    .send(method.clone(), path, Some(token), Some(body))
                    .await;
                assert!(
                    (400..500).contains(&answer.status),
                    "{method} {path} {body} -> {} {}",
                    answer.status,
                    answer.body
                );
                answer.assert_problem();
            }
        }
    }
}

#[tokio::test]
async fn service_endpoints_answer_without_auth() {
    let app = App::spawn().await;
    assert_eq!(
        app.api
            .send(Method::GET, "/healthz", None, None)
            .await
            .expect(200)["status"],
        "ok"
    );
    let ready = app
        .api
        .send(Method::GET, "/readyz", None, None)
        .await
        .expect(200);
    assert_eq!(ready["checks"]["postgres"]["ok"], true);
    assert_eq!(ready["checks"]["rabbitmq"]["ok"], true);
    let metrics = reqwest::get(format!("{}/metrics", app.api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("anika_http_requests_total"), "{metrics}");
    let docs = reqwest::get(format!("{}/docs/", app.api.base))
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "an interactive page"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_catalog_routes() {
    let app = App::spawn().await;
    let api = app
        .api
        .send(Method::GET, "/openapi.json", None, None)
        .await
        .expect(200);
    let mut found: Vec<String> = Vec::new();
    for (path, item) in api["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            found.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    found.sort();
    let mut expected = vec![
        "POST /v1/auth/token",
        "GET /.well-known/jwks.json",
        "POST /v1/api-keys",
        "GET /v1/api-keys",
        "DELETE /v1/api-keys/{id}",
        "POST /v1/partners",
        "GET /v1/partners",
        "GET /v1/partners/{id}",
        "PATCH /v1/partners/{id}",
        "POST /v1/topics",
        "GET /v1/topics",
        "GET /v1/topics/{id}",
        "PATCH /v1/topics/{id}",
        "DELETE /v1/topics/{id}",
        "PUT /v1/topics/{id}/grants/{partner_id}",
        "DELETE /v1/topics/{id}/grants/{partner_id}",
        "GET /v1/topics/{id}/grants",
        "POST /v1/subscriptions",
        "GET /v1/subscriptions",
        "GET /v1/subscriptions/{id}",
        "PATCH /v1/subscriptions/{id}",
        "DELETE /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id}/rotate-secret",
        "GET /v1/audit-log",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    ];
    expected.sort();
    assert_eq!(found, expected);
    assert!(api["components"]["securitySchemes"]["bearer"].is_object());
    assert!(api["components"]["schemas"]["Problem"].is_object());
    let partner = &api["components"]["schemas"]["PartnerOut"]["properties"];
    for field in ["ingest_rate_per_s", "ingest_burst"] {
        assert!(partner[field].is_object(), "{field} in {partner}");
        assert!(
            api["components"]["schemas"]["UpdatePartner"]["properties"][field].is_object(),
            "{field} can be patched"
        );
    }
}

#[tokio::test]
async fn a_nul_character_anywhere_is_a_422_with_its_pointer_not_a_500() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let partner = format!("/v1/partners/{}", dealer.id);
    let json_type = Some("application/json");
    // Sent as raw text, so that the escapes reach the server exactly as written.
    let sub_body = |extra: &str| {
        format!(r#"{{"topic_id":"{topic}","url":"https://bank.example.com/h",{extra}}}"#)
    };
    let filter = sub_body(r#""filter":{"a":{"b":"\u0000"}}"#);
    let description = sub_body(r#""description":"\u0000""#);
    let cases: Vec<(Method, String, &str, &str, &str)> = vec![
        (
            Method::POST,
            "/v1/partners".into(),
            &app.operator,
            r#"{"name":"p","description":"a\u0000b"}"#,
            "/description",
        ),
        (
            Method::PATCH,
            partner.clone(),
            &app.operator,
            r#"{"description":"\u0000"}"#,
            "/description",
        ),
        (
            Method::PATCH,
            partner.clone(),
            &app.operator,
            r#"{"name":"x\u0000"}"#,
            "/name",
        ),
        (
            Method::POST,
            "/v1/topics".into(),
            &dealer.admin,
            r#"{"name":"u","description":"\u0000"}"#,
            "/description",
        ),
        (
            Method::PATCH,
            format!("/v1/topics/{topic}"),
            &dealer.admin,
            r#"{"schema":{"type":"object","properties":{"a\u0000":{"const":"x"}}}}"#,
            "/schema/properties/a\u{0}",
        ),
        (
            Method::PATCH,
            format!("/v1/topics/{topic}"),
            &dealer.admin,
            r#"{"schema":{"enum":["ok","\u0000"]}}"#,
            "/schema/enum/1",
        ),
        (
            Method::POST,
            "/v1/subscriptions".into(),
            &dealer.admin,
            &filter,
            "/filter/a/b",
        ),
        (
            Method::POST,
            "/v1/subscriptions".into(),
            &dealer.admin,
            &description,
            "/description",
        ),
    ];
    for (method, path, token, body, pointer) in cases {
        let answer = app
            .api
            .send_raw(
                method.clone(),
                &path,
                Some(token),
                anika_testkit::RawBody(json_type, body.as_bytes().to_vec()),
            )
            .await;
        assert_eq!(
            answer.status, 422,
            "{method} {path} {body}: {}",
            answer.body
        );
        answer.assert_problem();
        assert_eq!(
            answer.pointers(),
            vec![pointer.to_owned()],
            "{method} {path} {body}"
        );
    }
    // An escaped backslash before `u0000` is text, and fine.
    app.api
        .send_raw(
            Method::PATCH,
            &partner,
            Some(&app.operator),
            anika_testkit::RawBody(json_type, br#"{"description":"C:\\u0000"}"#.to_vec()),
        )
        .await
        .expect(200);
    for query in [
        "/v1/topics?name=a%00",
        "/v1/subscriptions?status=%00",
        "/v1/partners?limit=1%00",
    ] {
        let answer = app.api.get(query, &dealer.admin).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        answer.assert_problem();
    }
    let far = anika_shared::page::encode_cursor(&("-5000-01-01T00:00:00Z", uuid::Uuid::now_v7()));
    for list in [
        "/v1/partners",
        "/v1/topics",
        "/v1/subscriptions",
        "/v1/api-keys",
        &format!("/v1/topics/{topic}/grants"),
    ] {
        let answer = app
            .api
            .get(&format!("{list}?cursor={far}"), &app.operator)
            .await;
        assert_eq!(answer.status, 400, "{list}: {}", answer.body);
        assert!(answer.detail().contains("cursor"), "{}", answer.detail());
    }
}
