//! Partners: operators create them; partners see themselves and those they share topics with.

use serde_json::json;

use crate::helpers::App;

#[tokio::test]
async fn operators_create_partners_and_names_are_unique() {
    let app = App::spawn().await;
    let created = app
        .api
        .post(
            "/v1/partners",
            &app.operator,
            json!({"name": "Car Dealer", "description": "sells cars"}),
        )
        .await
        .expect(201);
    assert_eq!(created["name"], "Car Dealer");
    assert_eq!(created["description"], "sells cars");
    assert!(created["created_at"].as_str().is_some());
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        app.api
            .get(&format!("/v1/partners/{id}"), &app.operator)
            .await
            .expect(200)["id"],
        id
    );

    let clash = app
        .api
        .post("/v1/partners", &app.operator, json!({"name": "Car Dealer"}))
        .await;
    assert_eq!(clash.status, 409);
    assert!(clash.detail().contains("Car Dealer"), "{}", clash.detail());
}

#[tokio::test]
async fn partners_cannot_create_partners() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    for token in [&dealer.admin, &dealer.publisher] {
        let answer = app
            .api
            .post("/v1/partners", token, json!({"name": "mallory"}))
            .await;
        assert_eq!(answer.status, 403);
        answer.assert_problem();
    }
}

#[tokio::test]
async fn a_partner_sees_itself_and_those_it_shares_topics_with_only() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let stranger = app.partner("stranger").await;

    let names = |body: serde_json::Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(app.api.get("/v1/partners", &bank.admin).await.expect(200)),
        vec!["bank"]
    );
    app.api
        .get(&format!("/v1/partners/{}", dealer.id), &bank.admin)
        .await
        .expect(404);

    let topic = app.topic(&dealer.admin, "car.chosen").await;
    app.api
        .put(
            &format!("/v1/topics/{topic}/grants/{}", bank.id),
            &dealer.admin,
        )
        .await
        .expect(204);

    assert_eq!(
        names(app.api.get("/v1/partners", &bank.admin).await.expect(200)),
        vec!["dealer", "bank"]
    );
    assert_eq!(
        names(
            app.api
                .get("/v1/partners", &dealer.publisher)
                .await
                .expect(200)
        ),
        vec!["dealer", "bank"]
    );
    let seen = app
        .api
        .get(&format!("/v1/partners/{}", dealer.id), &bank.admin)
        .await
        .expect(200);
    assert_eq!(seen["name"], "dealer");
    assert!(seen["description"].is_null(), "only the name is shared");
    app.api
        .get(&format!("/v1/partners/{}", dealer.id), &stranger.admin)
        .await
        .expect(404);
    assert_eq!(
        app.api.get("/v1/partners", &app.operator).await.expect(200)["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn partner_lists_are_cursor_paginated() {
    let app = App::spawn().await;
    for i in 0..5 {
        app.api
            .post(
                "/v1/partners",
                &app.operator,
                json!({"name": format!("p{i}")}),
            )
            .await
            .expect(201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/partners?limit=2&cursor={c}"),
            None => "/v1/partners?limit=2".to_owned(),
        };
        let page = app.api.get(&path, &app.operator).await.expect(200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["name"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, vec!["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(
        app.api
            .get("/v1/partners?limit=0", &app.operator)
            .await
            .status,
        400
    );
    assert_eq!(
        app.api
            .get("/v1/partners?limit=1001", &app.operator)
            .await
            .status,
        400
    );
    assert_eq!(
        app.api
            .get("/v1/partners?cursor=garbage", &app.operator)
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn operators_set_and_clear_a_partners_ingest_quota_and_only_the_partner_reads_it() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let path = format!("/v1/partners/{}", dealer.id);
    let fresh = app.api.get(&path, &app.operator).await.expect(200);
    assert!(fresh["ingest_rate_per_s"].is_null() && fresh["ingest_burst"].is_null());
    assert!(
        fresh.as_object().unwrap().contains_key("ingest_rate_per_s"),
        "the fields are always there: {fresh}"
    );

    let limited = app
        .api
        .patch(
            &path,
            &app.operator,
            json!({"ingest_rate_per_s": 100, "ingest_burst": 1000000}),
        )
        .await
        .expect(200);
    assert_eq!(limited["ingest_rate_per_s"], 100);
    assert_eq!(limited["ingest_burst"], 1_000_000);
    assert_eq!(limited["name"], "dealer", "what is not named stays");
    let own = app.api.get(&path, &dealer.admin).await.expect(200);
    assert_eq!(
        own["ingest_rate_per_s"], 100,
        "a partner sees its own quota"
    );

    // Only the rate removed: the burst stays, unused, until a rate comes back.
    let renamed = app
        .api
        .patch(
            &path,
            &app.operator,
            json!({"name": "Dealer AG", "description": "cars", "ingest_rate_per_s": null}),
        )
        .await
        .expect(200);
    assert!(renamed["ingest_rate_per_s"].is_null());
    assert_eq!(renamed["ingest_burst"], 1_000_000);
    assert_eq!(
        (&renamed["name"], &renamed["description"]),
        (&json!("Dealer AG"), &json!("cars"))
    );

    for (body, pointer) in [
        (json!({"ingest_rate_per_s": 0}), "/ingest_rate_per_s"),
        (
            json!({"ingest_rate_per_s": 1_000_001}),
            "/ingest_rate_per_s",
        ),
        (json!({"ingest_burst": -1}), "/ingest_burst"),
        (json!({"ingest_burst": "10"}), "/ingest_burst"),
        (json!({"ingest_rate_per_s": 1.5}), "/ingest_rate_per_s"),
        (json!({"name": null}), "/name"),
        (json!({"quota": 1}), "/quota"),
    ] {
        let answer = app.api.patch(&path, &app.operator, body.clone()).await;
        assert_eq!(answer.status, 422, "{body}: {}", answer.body);
        answer.assert_problem();
        assert_eq!(answer.pointers(), vec![pointer], "{body}");
    }
    for token in [&dealer.admin, &dealer.publisher, &bank.admin] {
        let answer = app
            .api
            .patch(&path, token, json!({"ingest_rate_per_s": 1000000}))
            .await;
        assert_eq!(answer.status, 403, "{}", answer.body);
        answer.assert_problem();
    }
    let clash = app
        .api
        .patch(&path, &app.operator, json!({"name": "bank"}))
        .await;
    assert_eq!(clash.status, 409);
    let missing = app
        .api
        .patch(
            &format!("/v1/partners/{}", uuid::Uuid::now_v7()),
            &app.operator,
            json!({"ingest_burst": 5}),
        )
        .await;
    assert_eq!(missing.status, 404);
    missing.assert_problem();
    let after = app.api.get(&path, &app.operator).await.expect(200);
    assert_eq!(
        after["name"], "Dealer AG",
        "refused patches changed nothing"
    );
    assert!(after["ingest_rate_per_s"].is_null());
}
