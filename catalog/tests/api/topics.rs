//! Topics and grants, and what RabbitMQ looks like after them.

use serde_json::json;

use crate::helpers::App;

#[tokio::test]
async fn an_admin_creates_a_topic_with_a_schema_and_names_are_unique_per_owner() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let schema =
        json!({"type": "object", "required": ["car"], "properties": {"car": {"type": "string"}}});
    let topic = app
        .api
        .post(
            "/v1/topics",
            &dealer.admin,
            json!({"name": "car.chosen", "description": "a car was chosen", "schema": schema}),
        )
        .await
        .expect(201);
    assert_eq!(topic["owner_partner_id"], dealer.id.as_str());
    assert_eq!(topic["schema"], schema);
    assert_eq!(topic["description"], "a car was chosen");

    let clash = app
        .api
        .post("/v1/topics", &dealer.admin, json!({"name": "car.chosen"}))
        .await;
    assert_eq!(clash.status, 409);
    assert!(clash.detail().contains("car.chosen"));
    // Another owner may use the same name.
    app.api
        .post("/v1/topics", &bank.admin, json!({"name": "car.chosen"}))
        .await
        .expect(201);
}

#[tokio::test]
async fn topic_names_and_schemas_are_checked() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    for bad in ["", "has space", "ümlaut", &"x".repeat(129)] {
        let answer = app
            .api
            .post("/v1/topics", &dealer.admin, json!({"name": bad}))
            .await;
        assert_eq!(answer.status, 422, "{bad:?}");
        assert_eq!(answer.pointers(), vec!["/name"]);
    }
    for bad in [
        json!({"type": "banana"}),
        json!({"pattern": "(unclosed"}),
        json!(42),
        json!({"$ref": "https://example.com/s.json"}),
    ] {
        let answer = app
            .api
            .post(
                "/v1/topics",
                &dealer.admin,
                json!({"name": "t", "schema": bad}),
            )
            .await;
        assert_eq!(answer.status, 422, "{bad}: {}", answer.body);
        assert_eq!(answer.pointers(), vec!["/schema"]);
    }
}

#[tokio::test]
async fn only_admins_manage_topics_and_strangers_see_nothing() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let stranger = app.partner("stranger").await;

    assert_eq!(
        app.api
            .post("/v1/topics", &dealer.publisher, json!({"name": "t"}))
            .await
            .status,
        403
    );
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    app.api
        .put(
            &format!("/v1/topics/{topic}/grants/{}", bank.id),
            &dealer.admin,
        )
        .await
        .expect(204);
    let path = format!("/v1/topics/{topic}");

    // Reading: owner (any role), grantee and operator; strangers get 404.
    for token in [
        &dealer.admin,
        &dealer.publisher,
        &bank.admin,
        &bank.publisher,
        &app.operator,
    ] {
        app.api.get(&path, token).await.expect(200);
    }
    app.api.get(&path, &stranger.admin).await.expect(404);

    // Changing: owner admin and operator; grantee and owner publisher get 403, strangers 404.
    let change = json!({"description": "new"});
    assert_eq!(
        app.api
            .patch(&path, &dealer.publisher, change.clone())
            .await
            .status,
        403
    );
    assert_eq!(
        app.api
            .patch(&path, &bank.admin, change.clone())
            .await
            .status,
        403
    );
    assert_eq!(
        app.api
            .patch(&path, &stranger.admin, change.clone())
            .await
            .status,
        404
    );
    assert_eq!(
        app.api
            .patch(&path, &app.operator, change.clone())
            .await
            .expect(200)["description"],
        "new"
    );
    assert_eq!(app.api.delete(&path, &bank.admin).await.status, 403);
    assert_eq!(app.api.delete(&path, &stranger.admin).await.status, 404);

    // Lists: owned + granted; operators see all. (Each partner's own `anika.system` topic
    // is listed too; it is counted apart, in the system topic's test.)
    let list = |token: String| {
        let api = app.api.clone();
        async move {
            api.get("/v1/topics", &token).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] != "anika.system")
                .count()
        }
    };
    app.topic(&stranger.admin, "other").await;
    assert_eq!(list(dealer.publisher.clone()).await, 1);
    assert_eq!(list(bank.admin.clone()).await, 1);
    assert_eq!(list(stranger.admin.clone()).await, 1);
    assert_eq!(list(app.operator.clone()).await, 2);
}

#[tokio::test]
async fn operators_create_topics_on_behalf_of_a_named_partner() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let unnamed = app
        .api
        .post("/v1/topics", &app.operator, json!({"name": "t"}))
        .await;
    assert_eq!(unnamed.status, 422);
    assert_eq!(unnamed.pointers(), vec!["/owner_partner_id"]);
    let topic = app
        .api
        .post(
            "/v1/topics",
            &app.operator,
            json!({"name": "t", "owner_partner_id": dealer.id}),
        )
        .await
        .expect(201);
    assert_eq!(topic["owner_partner_id"], dealer.id.as_str());
    let nobody = app
        .api
        .post(
            "/v1/topics",
            &app.operator,
            json!({"name": "t", "owner_partner_id": uuid::Uuid::now_v7()}),
        )
        .await;
    assert_eq!(nobody.status, 422);
    let foreign = app
        .api
        .post(
            "/v1/topics",
            &dealer.admin,
            json!({"name": "u", "owner_partner_id": uuid::Uuid::now_v7()}),
        )
        .await;
    assert_eq!(foreign.status, 403);
}

#[tokio::test]
async fn patch_changes_only_what_it_names_and_null_clears() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app
        .api
        .post(
            "/v1/topics",
            &dealer.admin,
            json!({"name": "a", "description": "d", "schema": {"type": "object"}}),
        )
        .await
        .expect(201);
    let path = format!("/v1/topics/{}", topic["id"].as_str().unwrap());
    let renamed = app
        .api
        .patch(&path, &dealer.admin, json!({"name": "b"}))
        .await
        .expect(200);
    assert_eq!(renamed["name"], "b");
    assert_eq!(renamed["description"], "d");
    assert_eq!(renamed["schema"], json!({"type": "object"}));
    let cleared = app
        .api
        .patch(
            &path,
            &dealer.admin,
            json!({"schema": null, "description": null}),
        )
        .await
        .expect(200);
    assert!(cleared["schema"].is_null() && cleared["description"].is_null());
    assert_eq!(cleared["name"], "b");
    assert_eq!(
        app.api
            .patch(&path, &dealer.admin, json!({"name": null}))
            .await
            .status,
        422
    );
    assert_eq!(
        app.api
            .patch(&path, &dealer.admin, json!({"schema": {"type": 7}}))
            .await
            .status,
        422
    );
    app.topic(&dealer.admin, "c").await;
    assert_eq!(
        app.api
            .patch(&path, &dealer.admin, json!({"name": "c"}))
            .await
            .status,
        409
    );
}

#[tokio::test]
async fn grants_are_idempotent_listed_to_the_owner_and_refused_to_others() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let grant = format!("/v1/topics/{topic}/grants/{}", bank.id);
    app.api.put(&grant, &dealer.admin).await.expect(204);
    app.api.put(&grant, &dealer.admin).await.expect(204);
    let grants = app
        .api
        .get(&format!("/v1/topics/{topic}/grants"), &dealer.publisher)
        .await
        .expect(200);
    let items = grants["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["partner_id"], bank.id.as_str());
    assert!(items[0]["granted_at"].as_str().is_some());

    assert_eq!(
        app.api
            .get(&format!("/v1/topics/{topic}/grants"), &bank.admin)
            .await
            .status,
        403
    );
    assert_eq!(app.api.put(&grant, &bank.admin).await.status, 403);
    assert_eq!(app.api.put(&grant, &dealer.publisher).await.status, 403);
    let to_owner = app
        .api
        .put(
            &format!("/v1/topics/{topic}/grants/{}", dealer.id),
            &dealer.admin,
        )
        .await;
    assert_eq!(to_owner.status, 422);
    to_owner.assert_problem();
    let to_nobody = app
        .api
        .put(
            &format!("/v1/topics/{topic}/grants/{}", uuid::Uuid::now_v7()),
            &dealer.admin,
        )
        .await;
    assert_eq!(to_nobody.status, 404);

    app.api.delete(&grant, &dealer.admin).await.expect(204);
    app.api.delete(&grant, &dealer.admin).await.expect(204);
    assert!(
        app.api
            .get(&format!("/v1/topics/{topic}/grants"), &dealer.admin)
            .await
            .expect(200)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.api
        .get(&format!("/v1/topics/{topic}"), &bank.admin)
        .await
        .expect(404);
}

#[tokio::test]
async fn revoking_a_grant_unbinds_the_grantees_queues_in_rabbitmq_and_granting_rebinds_them() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let grant = format!("/v1/topics/{topic}/grants/{}", bank.id);
    app.api.put(&grant, &dealer.admin).await.expect(204);
    let bank_sub = app.subscription(&bank.admin, &topic).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dealer_sub = app.subscription(&dealer.admin, &topic).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bank_queue = format!("anika.sub.{bank_sub}");
    let from_topic = ("anika.events".to_owned(), topic.clone());
    assert!(app.env.bindings(&bank_queue).await.contains(&from_topic));

    app.api.delete(&grant, &dealer.admin).await.expect(204);
    let bindings = app.env.bindings(&bank_queue).await;
    assert!(
        !bindings.contains(&from_topic),
        "still bound after revoke: {bindings:?}"
    );
    assert!(
        bindings.contains(&("anika.deliver".to_owned(), bank_sub.clone())),
        "{bindings:?}"
    );
    // The owner's own subscription is untouched.
    assert!(
        app.env
            .bindings(&format!("anika.sub.{dealer_sub}"))
            .await
            .contains(&from_topic)
    );

    app.api.put(&grant, &dealer.admin).await.expect(204);
    assert!(app.env.bindings(&bank_queue).await.contains(&from_topic));
}

#[tokio::test]
async fn deleting_a_topic_deletes_its_subscriptions_and_their_queues() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let sub = app.subscription(&dealer.admin, &topic).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        app.env
            .queue_info(&format!("anika.sub.{sub}"))
            .await
            .is_some()
    );
    sqlx::query(
        "INSERT INTO dead_letters (subscription_id, event_id, attempts, last_error) VALUES ($1::uuid, $2, 3, 'x')",
    )
    .bind(&sub)
    .bind(uuid::Uuid::now_v7())
    .execute(&app.ctx.pool)
    .await
    .unwrap();
    app.api
        .delete(&format!("/v1/topics/{topic}"), &dealer.admin)
        .await
        .expect(204);
    app.api
        .get(&format!("/v1/topics/{topic}"), &dealer.admin)
        .await
        .expect(404);
    app.api
        .get(&format!("/v1/subscriptions/{sub}"), &dealer.admin)
        .await
        .expect(404);
    assert!(
        app.env
            .queue_info(&format!("anika.sub.{sub}"))
            .await
            .is_none()
    );
    assert!(
        app.env
            .queue_info(&format!("anika.dlq.{sub}"))
            .await
            .is_none()
    );
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&app.ctx.pool)
        .await
        .unwrap();
    assert_eq!(
        records, 0,
        "the dead-letter records went with the subscription"
    );
}

#[tokio::test]
async fn every_partner_has_a_system_topic_it_reads_and_subscribes_to_but_cannot_change_delete_or_grant()
 {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let page = app.api.get("/v1/topics", &dealer.admin).await.expect(200);
    let system: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "anika.system")
        .collect();
    assert_eq!(system.len(), 1, "{page}");
    assert_eq!(system[0]["owner_partner_id"], dealer.id.as_str());
    let id = system[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/topics/{id}");

    // Readable by its partner (publisher too), invisible to others.
    app.api.get(&path, &dealer.publisher).await.expect(200);
    assert_eq!(app.api.get(&path, &bank.admin).await.status, 404);
    // The operator sees one per partner.
    let all = app
        .api
        .get("/v1/topics?name=anika.system", &app.operator)
        .await
        .expect(200);
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");

    // anika keeps it: no change, no deletion, no grant, not even by the operator.
    for token in [&dealer.admin, &app.operator] {
        let patched = app
            .api
            .patch(&path, token, json!({"description": "mine"}))
            .await;
        assert_eq!(patched.status, 403, "{}", patched.body);
        patched.assert_problem();
        assert!(
            patched.detail().contains("anika.system"),
            "{}",
            patched.detail()
        );
        assert_eq!(app.api.delete(&path, token).await.status, 403);
        let granted = app
            .api
            .put(&format!("{path}/grants/{}", bank.id), token)
            .await;
        assert_eq!(granted.status, 403, "{}", granted.body);
    }
    app.api.get(&path, &dealer.admin).await.expect(200);

    // Its partner subscribes to it like to any topic.
    app.api
        .post(
            "/v1/subscriptions",
            &dealer.admin,
            json!({"topic_id": id, "url": "https://ops.dealer.example/hooks"}),
        )
        .await
        .expect(201);
}

#[tokio::test]
async fn topic_names_starting_with_anika_dot_are_reserved() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    for name in ["anika.system", "anika.mine"] {
        let refused = app
            .api
            .post("/v1/topics", &dealer.admin, json!({"name": name}))
            .await;
        assert_eq!(refused.status, 422, "{}", refused.body);
        assert_eq!(refused.pointers(), ["/name"]);
    }
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let renamed = app
        .api
        .patch(
            &format!("/v1/topics/{topic}"),
            &dealer.admin,
            json!({"name": "anika.car"}),
        )
        .await;
    assert_eq!(renamed.status, 422, "{}", renamed.body);
    // `anika` without the dot is an ordinary name.
    app.topic(&dealer.admin, "anika-fans").await;
}
