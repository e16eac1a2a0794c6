//! Searching the log: filters, newest first, pagination, who sees what, and delivery states.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::App;

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Posts `n` events one by one (so each gets a later time), returns their ids in posting order.
async fn post_series(app: &App, token: &str, topic: &str, events: &[Value]) -> Vec<String> {
    let mut ids = Vec::new();
    for event in events {
        let answer = app
            .post_event(token, topic, event.clone(), None)
            .await
            .expect(202);
        ids.push(answer["id"].as_str().unwrap().to_owned());
        // Distinct milliseconds, so time filters have something to separate.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    ids
}

#[tokio::test]
async fn search_filters_by_topic_key_time_and_containment_newest_first() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let cars = app.topic(&dealer.admin, "cars", None).await;
    let bikes = app.topic(&dealer.admin, "bikes", None).await;
    let posted = post_series(
        &app,
        &dealer.publisher,
        &cars,
        &[
            json!({"data": {"country": "DE", "car": "zoe"}, "key": "c-1"}),
            json!({"data": {"country": "FR", "car": "clio"}, "key": "c-2"}),
            json!({"data": {"country": "DE", "car": "id3", "extras": ["tow"]}, "key": "c-1"}),
            json!({"data": {"country": "DE", "car": "golf"}}),
        ],
    )
    .await;
    let bike = post_series(
        &app,
        &dealer.publisher,
        &bikes,
        &[json!({"data": {"country": "DE"}, "key": "c-1"})],
    )
    .await;

    let all = app.api.get("/v1/events", &dealer.admin).await.expect(200);
    let expected: Vec<String> = bike.iter().chain(posted.iter().rev()).cloned().collect();
    assert_eq!(ids(&all), expected, "every readable event, newest first");
    assert!(all["next_cursor"].is_null());
    let first = &all["items"][1];
    assert_eq!(first["topic_id"], cars.as_str());
    assert_eq!(first["publisher_partner_id"], dealer.id.as_str());
    assert_eq!(first["data"], json!({"country": "DE", "car": "golf"}));
    assert!(first["key"].is_null());
    assert!(first["received_at"].as_str().unwrap().ends_with('Z'));

    let get = |query: String| {
        let app = &app;
        let token = dealer.publisher.clone();
        async move {
            ids(&app
                .api
                .get(&format!("/v1/events?{query}"), &token)
                .await
                .expect(200))
        }
    };
    let rev = |picks: &[usize]| picks.iter().map(|&i| posted[i].clone()).collect::<Vec<_>>();
    assert_eq!(get(format!("topic_id={cars}")).await, rev(&[3, 2, 1, 0]));
    assert_eq!(get(format!("topic_id={cars}&key=c-1")).await, rev(&[2, 0]));
    assert_eq!(
        get("key=c-1".into()).await,
        [bike[0].clone(), posted[2].clone(), posted[0].clone()]
    );
    let contains = encode(r#"{"country":"DE"}"#);
    assert_eq!(
        get(format!("topic_id={cars}&contains={contains}")).await,
        rev(&[3, 2, 0])
    );
    let nested = encode(r#"{"extras":["tow"]}"#);
    assert_eq!(get(format!("contains={nested}")).await, rev(&[2]));

    // Times: since inclusive, until exclusive, taken from the events themselves.
    let at = |id: &str| -> String {
        let event = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap();
        event["received_at"].as_str().unwrap().to_owned()
    };
    let (t1, t3) = (at(&posted[1]), at(&posted[3]));
    assert_eq!(
        get(format!("topic_id={cars}&since={t1}")).await,
        rev(&[3, 2, 1])
    );
    assert_eq!(
        get(format!("topic_id={cars}&since={t1}&until={t3}")).await,
        rev(&[2, 1])
    );
    // An offset written as +00:00 whose `+` arrives as a space is still understood.
    let plus = t1.replace('Z', "+00:00");
    assert_eq!(
        get(format!("topic_id={cars}&until={plus}")).await,
        rev(&[0])
    );
    assert_eq!(
        get(format!("topic_id={cars}&until={}", encode(&plus))).await,
        rev(&[0])
    );
}

#[tokio::test]
async fn search_pages_with_a_cursor_without_gaps_or_repeats() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    // A batch: many events in the same millisecond, where only the id orders them.
    let events: Vec<_> = (0..23).map(|n| json!({"data": {"n": n}})).collect();
    let batch = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &dealer.publisher,
            json!({"events": events}),
        )
        .await
        .expect(202);
    let mut expected: Vec<String> = batch["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    expected.reverse();

    for (token, query) in [
        (&dealer.admin, format!("topic_id={topic}&")),
        (&dealer.admin, String::new()),
        (&app.operator, String::new()),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/events?{query}limit=5&cursor={c}"),
                None => format!("/v1/events?{query}limit=5"),
            };
            let page = app.api.get(&path, token).await.expect(200);
            assert!(ids(&page).len() <= 5);
            seen.extend(ids(&page));
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 5, "{query}");
        assert_eq!(seen, expected, "{query}: newest first, every event once");
    }
}

#[tokio::test]
async fn only_owners_and_granted_partners_see_a_topics_events_and_a_revoke_hides_them() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let stranger = app.partner("stranger").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let private = app.topic(&dealer.admin, "private", None).await;
    let posted = post_series(
        &app,
        &dealer.publisher,
        &topic,
        &[json!({"data": 1}), json!({"data": 2})],
    )
    .await;
    let secret = post_series(
        &app,
        &dealer.publisher,
        &private,
        &[json!({"data": "secret"})],
    )
    .await;
    let event_path = format!("/v1/events/{}", posted[0]);

    // A stranger sees nothing: empty lists, and 404 for an event, as for one that does not exist.
    assert!(ids(&app.api.get("/v1/events", &stranger.admin).await.expect(200)).is_empty());
    assert!(
        ids(&app
            .api
            .get(&format!("/v1/events?topic_id={topic}"), &stranger.publisher)
            .await
            .expect(200))
        .is_empty()
    );
    let hidden = app.api.get(&event_path, &stranger.admin).await;
    assert_eq!(hidden.status, 404);
    hidden.assert_problem();
    let missing = app
        .api
        .get(
            &format!("/v1/events/{}", uuid::Uuid::now_v7()),
            &stranger.admin,
        )
        .await;
    assert_eq!(missing.status, 404);

    // A granted partner sees that topic's events (not the owner's other topics).
    assert!(ids(&app.api.get("/v1/events", &bank.admin).await.expect(200)).is_empty());
    app.grant(&dealer.admin, &topic, &bank.id).await;
    let seen = ids(&app.api.get("/v1/events", &bank.publisher).await.expect(200));
    assert_eq!(seen, vec![posted[1].clone(), posted[0].clone()]);
    assert!(
        ids(&app
            .api
            .get(&format!("/v1/events?topic_id={private}"), &bank.admin)
            .await
            .expect(200))
        .is_empty()
    );
    let event = app.api.get(&event_path, &bank.admin).await.expect(200);
    assert_eq!(event["data"], 1);
    assert_eq!(
        app.api
            .get(&format!("/v1/events/{}", secret[0]), &bank.admin)
            .await
            .status,
        404
    );

    // Revoked: hidden again at once.
    app.api
        .delete(
            &format!("/v1/topics/{topic}/grants/{}", bank.id),
            &dealer.admin,
        )
        .await
        .expect(204);
    assert!(ids(&app.api.get("/v1/events", &bank.admin).await.expect(200)).is_empty());
    assert_eq!(app.api.get(&event_path, &bank.admin).await.status, 404);

    // Operators see everything, including the events of a deleted topic; its owner no longer does.
    app.api
        .delete(&format!("/v1/topics/{private}"), &dealer.admin)
        .await
        .expect(204);
    let all: HashSet<String> = ids(&app.api.get("/v1/events", &app.operator).await.expect(200))
        .into_iter()
        .collect();
    assert!(all.contains(&secret[0]) && all.contains(&posted[0]));
    app.api
        .get(&format!("/v1/events/{}", secret[0]), &app.operator)
        .await
        .expect(200);
    assert_eq!(
        app.api
            .get(&format!("/v1/events/{}", secret[0]), &dealer.admin)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn bad_search_parameters_are_400s_that_name_the_parameter() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let token = dealer.admin.as_str();
    for (query, names) in [
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("contains=%7Bnot%20json", "contains"),
        ("contains=%7B%22a%22%3A%22%5Cu0000%22%7D", "contains"),
        ("topic_id=nope", "topic_id"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=garbage", "cursor"),
        ("colour=red", "colour"),
    ] {
        let answer = app.api.get(&format!("/v1/events?{query}"), token).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        answer.assert_problem();
        assert!(
            answer.detail().contains(names),
            "{query}: {}",
            answer.detail()
        );
    }
    let bad_id = app.api.get("/v1/events/not-an-id", token).await;
    assert_eq!(bad_id.status, 400);
    assert!(bad_id.detail().contains("event id"), "{}", bad_id.detail());
    let anonymous = app.api.send(Method::GET, "/v1/events", None, None).await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test]
async fn an_event_shows_where_its_deliveries_stand_for_the_callers_subscriptions() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    app.grant(&dealer.admin, &topic, &bank.id).await;
    let (_, own) = app.subscribe(&dealer.admin, &topic).await;
    let (_, succeeded) = app.subscribe(&bank.admin, &topic).await;
    let (_, failed) = app.subscribe(&bank.admin, &topic).await;
    let (_, dead) = app.subscribe(&bank.admin, &topic).await;
    let (_, skipped) = app.subscribe(&bank.admin, &topic).await;
    let (_, pending) = app.subscribe(&bank.admin, &topic).await;
    let (_, retried_after_skip) = app.subscribe(&bank.admin, &topic).await;
    let event = app
        .post_event(&dealer.publisher, &topic, json!({"data": {"n": 1}}), None)
        .await
        .expect(202);
    let event_id: uuid::Uuid = event["id"].as_str().unwrap().parse().unwrap();

    // What the dispatcher would have recorded.
    let pool = &app.ctx.pool;
    let attempt = |sub: &str, n: i32, status: &'static str, secs_ago: i32| {
        let sub: uuid::Uuid = sub.parse().unwrap();
        async move {
            sqlx::query(
                "INSERT INTO attempts (id, subscription_id, event_id, attempt, status, http_status, duration_ms, at) \
                 VALUES ($1, $2, $3, $4, $5, 500, 12, now() - make_interval(secs => $6))",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(sub)
            .bind(event_id)
            .bind(n)
            .bind(status)
            .bind(f64::from(secs_ago))
            .execute(pool)
            .await
            .unwrap();
        }
    };
    attempt(&succeeded, 1, "failed", 3).await;
    attempt(&succeeded, 2, "succeeded", 1).await;
    attempt(&failed, 1, "failed", 1).await;
    attempt(&dead, 1, "failed", 3).await;
    attempt(&dead, 2, "failed", 2).await;
    attempt(&retried_after_skip, 1, "succeeded", 1).await;
    let dead_id: uuid::Uuid = dead.parse().unwrap();
    sqlx::query("INSERT INTO dead_letters (subscription_id, event_id, attempts, last_error) VALUES ($1, $2, 2, 'HTTP 500')")
        .bind(dead_id)
        .bind(event_id)
        .execute(pool)
        .await
        .unwrap();
    for (sub, secs_ago) in [(&skipped, 0.0), (&retried_after_skip, 5.0)] {
        sqlx::query("INSERT INTO skips (subscription_id, event_id, reason, at) VALUES ($1, $2, 'filter', now() - make_interval(secs => $3))")
            .bind(sub.parse::<uuid::Uuid>().unwrap())
            .bind(event_id)
            .bind(secs_ago)
            .execute(pool)
            .await
            .unwrap();
    }

    let path = format!("/v1/events/{event_id}");
    let seen = app.api.get(&path, &bank.admin).await.expect(200);
    assert_eq!(seen["id"], event["id"]);
    assert_eq!(seen["data"], json!({"n": 1}));
    let deliveries = seen["deliveries"].as_array().unwrap();
    let by_sub = |id: &str| {
        deliveries
            .iter()
            .find(|d| d["subscription_id"] == id)
            .cloned()
    };
    assert!(
        by_sub(&own).is_none(),
        "the owner's subscription is not the bank's business"
    );
    assert_eq!(deliveries.len(), 6);
    let expect = [
        (&succeeded, "succeeded", 2),
        (&failed, "failed", 1),
        (&dead, "dead", 2),
        (&skipped, "skipped", 0),
        (&pending, "pending", 0),
        (&retried_after_skip, "succeeded", 1),
    ];
    for (sub, status, attempts) in expect {
        let delivery = by_sub(sub).unwrap_or_else(|| panic!("{sub} listed"));
        assert_eq!(delivery["status"], status, "{delivery}");
        assert_eq!(delivery["attempts"], attempts, "{delivery}");
        assert_eq!(
            delivery["last_attempt_at"].is_null(),
            attempts == 0,
            "{delivery}"
        );
    }

    let owner_view = app.api.get(&path, &dealer.publisher).await.expect(200);
    let owner_deliveries = owner_view["deliveries"].as_array().unwrap();
    assert_eq!(owner_deliveries.len(), 1);
    assert_eq!(owner_deliveries[0]["subscription_id"], own.as_str());
    assert_eq!(owner_deliveries[0]["status"], "pending");
    let operator_view = app.api.get(&path, &app.operator).await.expect(200);
    assert_eq!(
        operator_view["deliveries"].as_array().unwrap().len(),
        7,
        "operators see every subscription"
    );
}
