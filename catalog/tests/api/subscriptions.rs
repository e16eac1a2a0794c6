//! Subscriptions: who may subscribe, URL guard, queue topology, changes, secret rotation.

use base64::Engine as _;
use serde_json::json;

use anika_shared::secrets::Column;

use crate::helpers::App;

#[tokio::test]
async fn the_owner_and_a_grantee_subscribe_and_get_a_queue_bound_both_ways() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    app.api
        .put(
            &format!("/v1/topics/{topic}/grants/{}", bank.id),
            &dealer.admin,
        )
        .await
        .expect(204);

    let created = app
        .api
        .post(
            "/v1/subscriptions",
            &bank.admin,
            json!({"topic_id": topic, "url": "https://bank.example.com/hooks", "description": "loans",
                   "filter": {"country": "DE"}, "rate_limit_per_s": 50}),
        )
        .await
        .expect(201);
    let secret = created["secret"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(created["partner_id"], bank.id.as_str());
    assert_eq!(created["status"], "active");
    assert_eq!(
        created["max_attempts"], 4,
        "default: the 3-tier test schedule + 1"
    );
    assert_eq!(created["filter"], json!({"country": "DE"}));
    assert_eq!(created["ordered"], false);

    let id = created["id"].as_str().unwrap();
    let fetched = app
        .api
        .get(&format!("/v1/subscriptions/{id}"), &bank.admin)
        .await
        .expect(200);
    assert!(
        fetched.get("secret").is_none(),
        "the secret is shown only at creation"
    );

    let queue = format!("anika.sub.{id}");
    let info = app
        .env
        .queue_info(&queue)
        .await
        .expect("queue exists in RabbitMQ");
    assert_eq!(info["durable"], true);
    assert_eq!(info["arguments"]["x-queue-type"], "quorum");
    let bindings = app.env.bindings(&queue).await;
    assert!(
        bindings.contains(&("anika.events".to_owned(), topic.clone())),
        "{bindings:?}"
    );
    assert!(
        bindings.contains(&("anika.deliver".to_owned(), id.to_owned())),
        "{bindings:?}"
    );
    let dlq = format!("anika.dlq.{id}");
    assert!(
        app.env
            .bindings(&dlq)
            .await
            .contains(&("anika.dead".to_owned(), id.to_owned()))
    );

    app.subscription(&dealer.admin, &topic).await;
}

#[tokio::test]
async fn an_ordered_subscription_gets_a_single_active_consumer_queue() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app
        .api
        .post(
            "/v1/subscriptions",
            &dealer.admin,
            json!({"topic_id": topic, "url": "https://x.example.com/", "ordered": true}),
        )
        .await
        .expect(201);
    assert_eq!(sub["ordered"], true);
    let info = app
        .env
        .queue_info(&format!("anika.sub.{}", sub["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(info["arguments"]["x-single-active-consumer"], true);
}

#[tokio::test]
async fn a_subscription_whose_commit_fails_leaves_no_queue_collecting_the_topics_events() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    // PostgreSQL refuses the commit, after the queues were declared.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'the test refuses this commit'; END $$; \
         CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON subscriptions \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit();",
    )
    .execute(&app.ctx.pool)
    .await
    .unwrap();
    let answer = app
        .api
        .post(
            "/v1/subscriptions",
            &dealer.admin,
            json!({"topic_id": topic, "url": "https://x.example.com/"}),
        )
        .await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    let listed = app
        .api
        .get("/v1/subscriptions", &dealer.admin)
        .await
        .expect(200);
    assert_eq!(listed["items"], json!([]));
    let queues = app.env.queues().await;
    assert!(
        !queues
            .iter()
            .any(|q| q.starts_with("anika.sub.") || q.starts_with("anika.dlq.")),
        "left behind: {queues:?}"
    );
}

#[tokio::test]
async fn who_may_subscribe() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let body = json!({"topic_id": topic, "url": "https://x.example.com/"});

    // A partner without a grant cannot even learn the topic exists.
    assert_eq!(
        app.api
            .post("/v1/subscriptions", &bank.admin, body.clone())
            .await
            .expect(404)["status"],
        404
    );
    // Publishers do not manage subscriptions.
    assert_eq!(
        app.api
            .post("/v1/subscriptions", &dealer.publisher, body.clone())
            .await
            .status,
        403
    );
    // Operators name the partner; one without access is refused.
    let unnamed = app
        .api
        .post("/v1/subscriptions", &app.operator, body.clone())
        .await;
    assert_eq!(unnamed.status, 422);
    assert_eq!(unnamed.pointers(), vec!["/partner_id"]);
    let mut for_bank = body.clone();
    for_bank["partner_id"] = json!(bank.id);
    assert_eq!(
        app.api
            .post("/v1/subscriptions", &app.operator, for_bank.clone())
            .await
            .status,
        403
    );
    app.api
        .put(
            &format!("/v1/topics/{topic}/grants/{}", bank.id),
            &dealer.admin,
        )
        .await
        .expect(204);
    let made = app
        .api
        .post("/v1/subscriptions", &app.operator, for_bank)
        .await
        .expect(201);
    assert_eq!(made["partner_id"], bank.id.as_str());
    // An unknown topic is a 404 too.
    let ghost = json!({"topic_id": uuid::Uuid::now_v7(), "url": "https://x.example.com/"});
    assert_eq!(
        app.api
            .post("/v1/subscriptions", &dealer.admin, ghost)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn webhook_urls_pointing_inside_are_refused() {
    let app = App::spawn_with(&[("allowed_target_nets", "")]).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    for url in [
        "ftp://example.com/",
        "not a url",
        "http://127.0.0.1:8080/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://10.0.0.5/",
        "http://100.64.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[fd12::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:a00:1::]/",
        "http://localhost/",
        "http://metadata.google.internal/",
        "http://224.0.0.251/",
    ] {
        let answer = app
            .api
            .post(
                "/v1/subscriptions",
                &dealer.admin,
                json!({"topic_id": topic, "url": url}),
            )
            .await;
        assert_eq!(answer.status, 422, "{url} was accepted");
        assert_eq!(answer.pointers(), vec!["/url"], "{url}");
        answer.assert_problem();
    }
    app.api
        .post(
            "/v1/subscriptions",
            &dealer.admin,
            json!({"topic_id": topic, "url": "https://93.184.216.34/x"}),
        )
        .await
        .expect(201);
}

#[tokio::test]
async fn allowed_target_nets_let_a_local_receiver_in() {
    // The test configuration allows 127.0.0.0/8.
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    app.api
        .post(
            "/v1/subscriptions",
            &dealer.admin,
            json!({"topic_id": topic, "url": "http://127.0.0.1:9/hook"}),
        )
        .await
        .expect(201);
    let outside = app
        .api
        .post(
            "/v1/subscriptions",
            &dealer.admin,
            json!({"topic_id": topic, "url": "http://10.0.0.1/"}),
        )
        .await;
    assert_eq!(outside.status, 422);
}

#[tokio::test]
async fn subscriptions_are_private_to_their_partner() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "t").await;
    app.api
        .put(
            &format!("/v1/topics/{topic}/grants/{}", bank.id),
            &dealer.admin,
        )
        .await
        .expect(204);
    let sub = app.subscription(&bank.admin, &topic).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/subscriptions/{sub}");

    // Even the topic's owner does not see a grantee's endpoint.
    for token in [&dealer.admin, &dealer.publisher] {
        assert_eq!(app.api.get(&path, token).await.status, 404);
        assert_eq!(
            app.api
                .patch(&path, token, json!({"status": "paused"}))
                .await
                .status,
            404
        );
        assert_eq!(app.api.delete(&path, token).await.status, 404);
        assert_eq!(
            app.api
                .post(&format!("{path}/rotate-secret"), token, json!({}))
                .await
                .status,
            404
        );
    }
    assert_eq!(app.api.get(&path, &bank.publisher).await.status, 403);
    app.api.get(&path, &app.operator).await.expect(200);

    let mine = app
        .api
        .get("/v1/subscriptions", &bank.admin)
        .await
        .expect(200);
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    assert!(
        app.api
            .get("/v1/subscriptions", &dealer.admin)
            .await
            .expect(200)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        app.api
            .get("/v1/subscriptions", &app.operator)
            .await
            .expect(200)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let filtered = app
        .api
        .get(
            &format!("/v1/subscriptions?topic_id={topic}&status=paused"),
            &bank.admin,
        )
        .await
        .expect(200);
    assert!(filtered["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn patch_changes_url_filter_limits_and_pauses_but_never_disables() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app
        .api
        .post(
            "/v1/subscriptions",
            &dealer.admin,
            json!({"topic_id": topic, "url": "https://a.example.com/", "filter": {"a": 1}}),
        )
        .await
        .expect(201);
    let path = format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap());

    let changed = app
        .api
        .patch(&path, &dealer.admin, json!({"url": "https://b.example.com/x", "max_attempts": 7, "rate_limit_per_s": 9, "status": "paused"}))
        .await
        .expect(200);
    assert_eq!(changed["url"], "https://b.example.com/x");
    assert_eq!(changed["max_attempts"], 7);
    assert_eq!(changed["rate_limit_per_s"], 9);
    assert_eq!(changed["status"], "paused");
    assert_eq!(changed["filter"], json!({"a": 1}), "untouched fields stay");
    let cleared = app
        .api
        .patch(
            &path,
            &dealer.admin,
            json!({"filter": null, "rate_limit_per_s": null}),
        )
        .await
        .expect(200);
    assert!(cleared["filter"].is_null() && cleared["rate_limit_per_s"].is_null());

    for (body, pointer) in [
        (json!({"status": "disabled"}), "/status"),
        (json!({"max_attempts": 0}), "/max_attempts"),
        (json!({"max_attempts": 101}), "/max_attempts"),
        (json!({"rate_limit_per_s": -1}), "/rate_limit_per_s"),
        (json!({"filter": [1, 2]}), "/filter"),
        (json!({"url": "http://10.1.1.1/"}), "/url"),
        (json!({"secret": "whsec_x"}), "/secret"),
    ] {
        let answer = app.api.patch(&path, &dealer.admin, body.clone()).await;
        assert_eq!(answer.status, 422, "{body}");
        assert_eq!(answer.pointers(), vec![pointer], "{body}");
    }

    // A subscription the server disabled comes back with `active`.
    sqlx::query("UPDATE subscriptions SET status = 'disabled', disabled_reason = 'endpoint answered 410 Gone'")
        .execute(&app.ctx.pool)
        .await
        .unwrap();
    let disabled = app.api.get(&path, &dealer.admin).await.expect(200);
    assert_eq!(disabled["status"], "disabled");
    assert_eq!(disabled["disabled_reason"], "endpoint answered 410 Gone");
    let revived = app
        .api
        .patch(&path, &dealer.admin, json!({"status": "active"}))
        .await
        .expect(200);
    assert_eq!(revived["status"], "active");
    assert!(revived["disabled_reason"].is_null());
}

#[tokio::test]
async fn rotating_the_secret_keeps_the_old_one_for_a_day() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app.subscription(&dealer.admin, &topic).await;
    let id = sub["id"].as_str().unwrap();
    let old = sub["secret"].as_str().unwrap().to_owned();
    let rotated = app
        .api
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            &dealer.admin,
            json!({}),
        )
        .await
        .expect(200);
    let new = rotated["secret"].as_str().unwrap();
    assert!(new.starts_with("whsec_") && new != old);
    let (current, previous, hours): (String, Option<String>, f64) = sqlx::query_as(
        "SELECT secret, previous_secret, extract(epoch FROM previous_secret_expires_at - now())::float8 / 3600 \
         FROM subscriptions WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&app.ctx.pool)
    .await
    .unwrap();
    // Both are stored sealed, each for its own column.
    assert_eq!(
        crate::secrets::open_webhook_secret(&app, id, Column::SubscriptionSecret, &current),
        new
    );
    assert_eq!(
        crate::secrets::open_webhook_secret(
            &app,
            id,
            Column::SubscriptionPreviousSecret,
            previous.as_deref().expect("a previous secret")
        ),
        old
    );
    assert!((23.9..=24.0).contains(&hours), "{hours}");
}

#[tokio::test]
async fn deleting_a_subscription_deletes_its_queues() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let id = app.subscription(&dealer.admin, &topic).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.api
        .delete(&format!("/v1/subscriptions/{id}"), &dealer.admin)
        .await
        .expect(204);
    assert!(
        app.env
            .queue_info(&format!("anika.sub.{id}"))
            .await
            .is_none()
    );
    assert!(
        app.env
            .queue_info(&format!("anika.dlq.{id}"))
            .await
            .is_none()
    );
    app.api
        .get(&format!("/v1/subscriptions/{id}"), &dealer.admin)
        .await
        .expect(404);
    app.api
        .delete(&format!("/v1/subscriptions/{id}"), &dealer.admin)
        .await
        .expect(404);
}

#[tokio::test]
async fn max_in_flight_is_validated_defaulted_and_described_in_openapi() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let create = |extra: serde_json::Value| {
        let mut body = json!({"topic_id": topic, "url": "https://a.example.com/"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let chosen = app
        .api
        .post(
            "/v1/subscriptions",
            &dealer.admin,
            create(json!({"max_in_flight": 7})),
        )
        .await
        .expect(201);
    assert_eq!(chosen["max_in_flight"], 7);
    let default = app
        .api
        .post("/v1/subscriptions", &dealer.admin, create(json!({})))
        .await
        .expect(201);
    assert_eq!(
        default["max_in_flight"], 32,
        "ANIKA_SUBSCRIPTION_MAX_IN_FLIGHT"
    );
    let stored: Option<i32> =
        sqlx::query_scalar("SELECT max_in_flight FROM subscriptions WHERE id = $1::uuid")
            .bind(default["id"].as_str().unwrap())
            .fetch_one(&app.ctx.pool)
            .await
            .unwrap();
    assert_eq!(stored, None, "no choice stored: a later default applies");
    for bad in [json!(0), json!(1001), json!(-3), json!("8")] {
        let answer = app
            .api
            .post(
                "/v1/subscriptions",
                &dealer.admin,
                create(json!({"max_in_flight": bad})),
            )
            .await;
        assert_eq!(answer.status, 422, "{bad}");
        assert_eq!(answer.pointers(), vec!["/max_in_flight"], "{bad}");
    }

    let api = serde_json::to_value(anika_catalog::openapi()).unwrap();
    let schemas = &api["components"]["schemas"];
    for schema in [
        "CreateSubscription",
        "UpdateSubscription",
        "SubscriptionOut",
    ] {
        let field = &schemas[schema]["properties"]["max_in_flight"];
        assert!(
            field.is_object(),
            "{schema} describes max_in_flight: {}",
            schemas[schema]
        );
    }
}
