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
