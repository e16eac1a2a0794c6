//! What is refused, with which status, and a problem document that says why. Never a 500.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::App;

#[tokio::test]
async fn nobody_posts_into_a_partners_system_topic_not_even_the_partner_itself() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let page = app
        .api
        .get("/v1/topics?name=anika.system", &dealer.admin)
        .await
        .expect(200);
    let topic = page["items"][0]["id"]
        .as_str()
        .expect("system topic")
        .to_owned();
    for token in [&dealer.admin, &dealer.publisher] {
        let one = app
            .post_event(
                token,
                &topic,
                json!({"data": {"type": "subscription.failing"}}),
                None,
            )
            .await;
        assert_eq!(one.status, 403, "{}", one.body);
        one.assert_problem();
        assert!(one.detail().contains("anika.system"), "{}", one.detail());
        let batch = app
            .api
            .post(
                &format!("/v1/topics/{topic}/events/batch"),
                token,
                json!({"events": [{"data": 1}]}),
            )
            .await;
        assert_eq!(batch.status, 403, "{}", batch.body);
    }
    assert_eq!(app.events_in_log(&topic).await, 0, "nothing was written");
}

#[tokio::test]
async fn only_the_owners_admins_and_publishers_may_post_and_strangers_learn_nothing() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let stranger = app.partner("stranger").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    app.grant(&dealer.admin, &topic, &bank.id).await;
    let body = json!({"data": {"n": 1}});

    for token in [&dealer.admin, &dealer.publisher] {
        app.post_event(token, &topic, body.clone(), None)
            .await
            .expect(202);
    }
    for token in [&bank.admin, &bank.publisher, &app.operator] {
        let answer = app.post_event(token, &topic, body.clone(), None).await;
        assert_eq!(answer.status, 403, "{}", answer.body);
        answer.assert_problem();
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let hidden = app
        .post_event(&stranger.admin, &topic, body.clone(), None)
        .await;
    let missing = app
        .post_event(&stranger.admin, &unknown, body.clone(), None)
        .await;
    assert_eq!((hidden.status, missing.status), (404, 404));
    hidden.assert_problem();
    assert_eq!(
        hidden.detail().replace(&topic, "X"),
        missing.detail().replace(&unknown, "X"),
        "a hidden topic looks exactly like a missing one"
    );
    let batch = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &stranger.publisher,
            json!({"events": [body]}),
        )
        .await;
    assert_eq!(batch.status, 404);

    let anonymous = app
        .api
        .send(
            Method::POST,
            &format!("/v1/topics/{topic}/events"),
            None,
            Some(&json!({"data": 1})),
        )
        .await;
    assert_eq!(anonymous.status, 401);
    anonymous.assert_problem();
    assert_eq!(app.events_in_log(&topic).await, 2);
}

#[tokio::test]
async fn malformed_posts_get_the_documented_status_and_say_what_is_wrong() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let path = format!("/v1/topics/{topic}/events");
    let token = Some(dealer.publisher.as_str());
    let json_type = Some("application/json");

    // (what, content type, body, status, a phrase the detail must contain)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "broken JSON",
            json_type,
            b"{\"data\":".to_vec(),
            400,
            "not valid JSON",
        ),
        ("empty body", json_type, Vec::new(), 400, "empty"),
        (
            "no data",
            json_type,
            br#"{"key": "k"}"#.to_vec(),
            400,
            "`data`",
        ),
        (
            "trailing junk",
            json_type,
            br#"{"data": 1} x"#.to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "no content type",
            None,
            br#"{"data": 1}"#.to_vec(),
            415,
            "Content-Type",
        ),
        (
            "form",
            Some("application/x-www-form-urlencoded"),
            b"data=1".to_vec(),
            415,
            "JSON",
        ),
        ("array", json_type, b"[1]".to_vec(), 422, "object"),
        (
            "unknown field",
            json_type,
            br#"{"data": 1, "kye": "k"}"#.to_vec(),
            422,
            "kye",
        ),
        (
            "key not text",
            json_type,
            br#"{"data": 1, "key": 7}"#.to_vec(),
            422,
            "/key",
        ),
        (
            "NUL in data",
            json_type,
            br#"{"data": {"a": "x\u0000"}}"#.to_vec(),
            422,
            "/data/a",
        ),
        (
            "lone surrogate",
            json_type,
            br#"{"data": "\udc00"}"#.to_vec(),
            422,
            "/data",
        ),
    ];
    for (what, content_type, body, status, says) in cases {
        let answer = app
            .api
            .send_raw(
                Method::POST,
                &path,
                token,
                anika_testkit::RawBody(content_type, body),
            )
            .await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        answer.assert_problem();
        assert!(
            answer.detail().contains(says),
            "{what}: {}",
            answer.detail()
        );
    }
    let long_key = app
        .post_event(
            &dealer.publisher,
            &topic,
            json!({"data": 1, "key": "k".repeat(257)}),
            None,
        )
        .await;
    assert_eq!(long_key.status, 422);
    assert_eq!(long_key.pointers(), vec!["/key"]);
    app.post_event(
        &dealer.publisher,
        &topic,
        json!({"data": null, "key": "k".repeat(256)}),
        None,
    )
    .await
    .expect(202);

    let bad_id = app
        .post_event(&dealer.publisher, "not-a-topic", json!({"data": 1}), None)
        .await;
    assert_eq!(bad_id.status, 400);
    assert!(bad_id.detail().contains("topic id"), "{}", bad_id.detail());
    assert_eq!(app.events_in_log(&topic).await, 1);
}

#[tokio::test]
async fn data_violating_the_topic_schema_is_refused_with_a_pointer_per_violation() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let schema = json!({
        "type": "object",
        "required": ["car", "price"],
        "properties": {
            "car": {"type": "string"},
            "price": {"type": "number", "minimum": 0},
            "extras": {"type": "array", "items": {"type": "string"}}
        }
    });
    let topic = app.topic(&dealer.admin, "car.chosen", Some(schema)).await;
    let answer = app
        .post_event(
            &dealer.publisher,
            &topic,
            json!({"data": {"car": 1, "price": -5, "extras": ["ok", 2]}}),
            None,
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    answer.assert_problem();
    let mut pointers = answer.pointers();
    pointers.sort();
    assert_eq!(pointers, vec!["/data/car", "/data/extras/1", "/data/price"]);
    let missing = app
        .post_event(
            &dealer.publisher,
            &topic,
            json!({"data": {"car": "zoe"}}),
            None,
        )
        .await;
    assert_eq!(missing.status, 422);
    assert!(missing.detail().contains("price"), "{}", missing.detail());
    app.post_event(
        &dealer.publisher,
        &topic,
        json!({"data": {"car": "zoe", "price": 1}}),
        None,
    )
    .await
    .expect(202);
    assert_eq!(app.events_in_log(&topic).await, 1);
}

#[tokio::test]
async fn a_schema_changed_in_the_catalog_applies_to_the_next_event_and_a_deleted_topic_takes_none()
{
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app
        .topic(&dealer.admin, "t", Some(json!({"type": "object"})))
        .await;
    let path = format!("/v1/topics/{topic}");
    app.post_event(
        &dealer.publisher,
        &topic,
        json!({"data": {"n": "text"}}),
        None,
    )
    .await
    .expect(202);

    let strict = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    app.api
        .patch(&path, &dealer.admin, json!({"schema": strict}))
        .await
        .expect(200);
    // The catalog's NOTIFY reaches the cache asynchronously; it must arrive promptly.
    let refused = crate::helpers::eventually(Duration::from_secs(5), || async {
        app.post_event(
            &dealer.publisher,
            &topic,
            json!({"data": {"n": "text"}}),
            None,
        )
        .await
        .status
            == 422
    })
    .await;
    assert!(refused, "the new schema applies");
    app.post_event(&dealer.publisher, &topic, json!({"data": {"n": 3}}), None)
        .await
        .expect(202);

    app.api
        .patch(&path, &dealer.admin, json!({"schema": null}))
        .await
        .expect(200);
    let accepted = crate::helpers::eventually(Duration::from_secs(5), || async {
        app.post_event(&dealer.publisher, &topic, json!({"data": [1, 2]}), None)
            .await
            .status
            == 202
    })
    .await;
    assert!(accepted, "without a schema anything goes");

    app.api.delete(&path, &dealer.admin).await.expect(204);
    let gone = crate::helpers::eventually(Duration::from_secs(5), || async {
        app.post_event(&dealer.publisher, &topic, json!({"data": 1}), None)
            .await
            .status
            == 404
    })
    .await;
    assert!(gone, "a deleted topic takes no events");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_even_when_it_never_declares_its_length() {
    let app = App::spawn_with(&[("max_event_bytes", "2048"), ("max_batch_bytes", "8192")]).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let path = format!("/v1/topics/{topic}/events");

    let big = json!({"data": "x".repeat(3000)});
    let answer = app.post_event(&dealer.publisher, &topic, big, None).await;
    assert_eq!(answer.status, 413);
    answer.assert_problem();
    assert!(answer.detail().contains("2048"), "{}", answer.detail());
    app.post_event(
        &dealer.publisher,
        &topic,
        json!({"data": "x".repeat(1900)}),
        None,
    )
    .await
    .expect(202);

    // A chunked body that never ends: the answer must come as soon as the limit is passed,
    // which proves the body is not buffered whole first.
    let addr = app.api.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n",
        dealer.publisher
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 1024, "x".repeat(1024));
    for _ in 0..4 {
        stream.write_all(chunk.as_bytes()).await.unwrap();
    }
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response))
        .await
        .expect("answered before the body ended")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");

    // Batches: the body against the batch limit, each event's data against the event limit.
    let batch_path = format!("/v1/topics/{topic}/events/batch");
    let too_big =
        json!({"events": (0..5).map(|_| json!({"data": "y".repeat(1900)})).collect::<Vec<_>>()});
    let answer = app.api.post(&batch_path, &dealer.publisher, too_big).await;
    assert_eq!(answer.status, 413);
    let one_big = json!({"events": [{"data": 1}, {"data": "z".repeat(2100)}]});
    let answer = app.api.post(&batch_path, &dealer.publisher, one_big).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    answer.assert_problem();
    assert_eq!(answer.pointers(), vec!["/events/1/data"]);
    let fits =
        json!({"events": (0..3).map(|_| json!({"data": "y".repeat(1900)})).collect::<Vec<_>>()});
    app.api
        .post(&batch_path, &dealer.publisher, fits)
        .await
        .expect(202);
    assert_eq!(app.events_in_log(&topic).await, 4);
}

#[tokio::test]
async fn malformed_batches_are_refused_whole() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let path = format!("/v1/topics/{topic}/events/batch");
    let token = Some(dealer.publisher.as_str());
    let json_type = Some("application/json");

    let too_many = json!({"events": (0..1001).map(|n| json!({"data": n})).collect::<Vec<_>>()});
    let cases = vec![
        ("no events", json!({}), 400, ""),
        ("empty", json!({"events": []}), 422, "/events"),
        ("not a list", json!({"events": {"data": 1}}), 422, "/events"),
        ("too many", too_many, 422, "/events"),
        (
            "item not an object",
            json!({"events": [{"data": 1}, 5]}),
            422,
            "/events/1",
        ),
        (
            "item without data",
            json!({"events": [{"data": 1}, {"key": "k"}]}),
            422,
            "/events/1/data",
        ),
        (
            "unknown field",
            json!({"events": [{"data": 1, "idempotency": "k"}]}),
            422,
            "/events/0/idempotency",
        ),
        (
            "bad key",
            json!({"events": [{"data": 1, "key": ""}]}),
            422,
            "/events/0/key",
        ),
        (
            "unknown top field",
            json!({"events": [{"data": 1}], "extra": 1}),
            422,
            "/extra",
        ),
    ];
    for (what, body, status, pointer) in cases {
        let answer = app.api.post(&path, &dealer.publisher, body).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        answer.assert_problem();
        if !pointer.is_empty() {
            assert_eq!(answer.pointers(), vec![pointer], "{what}");
        }
    }
    let broken = app
        .api
        .send_raw(
            Method::POST,
            &path,
            token,
            anika_testkit::RawBody(json_type, b"{\"events\": [".to_vec()),
        )
        .await;
    assert_eq!(broken.status, 400);
    let exactly_1000 = json!({"events": (0..1000).map(|n| json!({"data": n})).collect::<Vec<_>>()});
    let answer = app
        .api
        .post(&path, &dealer.publisher, exactly_1000)
        .await
        .expect(202);
    assert_eq!(answer["items"].as_array().unwrap().len(), 1000);
    assert_eq!(app.events_in_log(&topic).await, 1000);
}

#[tokio::test]
async fn the_openapi_document_describes_the_event_routes() {
    let app = App::spawn().await;
    let api = app
        .api
        .send(Method::GET, "/openapi.json", None, None)
        .await
        .expect(200);
    let paths = &api["paths"];
    for (path, method) in [
        ("/v1/topics/{id}/events", "post"),
        ("/v1/topics/{id}/events/batch", "post"),
        ("/v1/events", "get"),
        ("/v1/events/{id}", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    assert!(paths["/v1/topics/{id}/events"]["post"]["responses"]["202"].is_object());
    for path in ["/v1/topics/{id}/events", "/v1/topics/{id}/events/batch"] {
        let responses = &paths[path]["post"]["responses"];
        for header in ["Retry-After", "RateLimit-Policy", "RateLimit"] {
            assert!(
                responses["429"]["headers"][header].is_object(),
                "{path}: 429 documents {header}: {responses}"
            );
        }
        assert!(responses["503"]["headers"]["Retry-After"].is_object());
        assert!(responses["202"]["headers"]["RateLimit"].is_object());
        assert!(responses["408"].is_object());
    }
    let params = paths["/v1/events"]["get"]["parameters"].as_array().unwrap();
    let names: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
    for name in [
        "topic_id", "key", "since", "until", "contains", "limit", "cursor",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
}
