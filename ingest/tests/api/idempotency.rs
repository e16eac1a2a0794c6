//! Idempotency keys: a replay returns the first event and publishes nothing new, even under races.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{App, eventually};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn repeating_a_request_with_its_idempotency_key_returns_the_first_event_and_publishes_nothing_new()
 {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let body = json!({"data": {"car": "zoe", "price": 21000}, "key": "c-1"});

    let first = app
        .post_event(&dealer.publisher, &topic, body.clone(), Some("order-1"))
        .await;
    assert!(first.headers.get("idempotent-replayed").is_none());
    let first = first.expect(202);
    assert_eq!(app.take(&queue, 1, WAIT).await.len(), 1);

    // The same request again, even re-serialised with members in another order.
    let reordered = r#"{"key": "c-1", "data": {"price": 21000, "car": "zoe"}}"#
        .as_bytes()
        .to_vec();
    for replay in [
        app.post_event(&dealer.publisher, &topic, body.clone(), Some("order-1"))
            .await,
        app.post_raw(
            &dealer.admin,
            &format!("/v1/topics/{topic}/events"),
            reordered,
            Some("order-1"),
        )
        .await,
    ] {
        assert_eq!(
            replay
                .headers
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap()),
            Some("true")
        );
        assert_eq!(replay.expect(202), first, "same id, same answer");
    }
    assert_eq!(app.events_in_log(&topic).await, 1);
    app.assert_stays_empty(&queue).await;
}

#[tokio::test]
async fn two_concurrent_requests_with_one_idempotency_key_become_one_event() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let body = json!({"data": {"n": 1}});
    for round in 0..10 {
        let key = format!("race-{round}");
        let (a, b) = tokio::join!(
            app.post_event(&dealer.publisher, &topic, body.clone(), Some(&key)),
            app.post_event(&dealer.publisher, &topic, body.clone(), Some(&key)),
        );
        assert_eq!(a.expect(202)["id"], b.expect(202)["id"], "round {round}");
    }
    assert_eq!(app.events_in_log(&topic).await, 10);
    assert_eq!(
        app.take(&queue, 11, Duration::from_secs(3)).await.len(),
        10,
        "one message per key"
    );
}

#[tokio::test]
async fn many_parallel_duplicates_across_keys_resolve_to_one_event_per_key() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    // 8 keys, each posted 12 times at once, interleaved with 20 posts without a key.
    let keyed = (0..96).map(|n| {
        let (app, token, topic) = (&app, &dealer.publisher, &topic);
        let key = format!("k-{}", n % 8);
        async move {
            let answer = app
                .post_event(token, topic, json!({"data": {"k": n % 8}}), Some(&key))
                .await;
            (key, answer.expect(202)["id"].as_str().unwrap().to_owned())
        }
    });
    let plain = (0..20).map(|n| {
        let (app, token, topic) = (&app, &dealer.publisher, &topic);
        async move {
            app.post_event(token, topic, json!({"data": {"plain": n}}), None)
                .await
                .expect(202)
        }
    });
    let (keyed, _) = tokio::join!(
        futures::future::join_all(keyed),
        futures::future::join_all(plain)
    );
    let mut by_key = std::collections::HashMap::new();
    for (key, id) in keyed {
        let first = by_key.entry(key.clone()).or_insert_with(|| id.clone());
        assert_eq!(*first, id, "every post with {key} got the same event");
    }
    assert_eq!(by_key.len(), 8);
    assert_eq!(app.events_in_log(&topic).await, 28);
    assert_eq!(app.take(&queue, 29, Duration::from_secs(3)).await.len(), 28);
}

#[tokio::test]
async fn the_same_key_with_a_different_event_is_a_conflict_that_stores_nothing() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let first = app
        .post_event(
            &dealer.publisher,
            &topic,
            json!({"data": {"n": 1}}),
            Some("k"),
        )
        .await
        .expect(202);
    for different in [
        json!({"data": {"n": 2}}),
        json!({"data": {"n": 1}, "key": "other"}),
    ] {
        let answer = app
            .post_event(&dealer.publisher, &topic, different, Some("k"))
            .await;
        assert_eq!(answer.status, 409, "{}", answer.body);
        answer.assert_problem();
        assert!(answer.detail().contains("`k`"), "{}", answer.detail());
        assert!(
            answer.detail().contains(first["id"].as_str().unwrap()),
            "{}",
            answer.detail()
        );
    }
    // A batch with one conflicting item is refused whole, and gives its other keys back.
    let batch = json!({"events": [
        {"data": {"fresh": true}, "idempotency_key": "fresh"},
        {"data": {"n": 3}, "idempotency_key": "k"},
    ]});
    let answer = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &dealer.publisher,
            batch,
        )
        .await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(app.events_in_log(&topic).await, 1);
    let fresh = app
        .post_event(
            &dealer.publisher,
            &topic,
            json!({"data": {"something": "else"}}),
            Some("fresh"),
        )
        .await;
    assert!(
        fresh.headers.get("idempotent-replayed").is_none(),
        "the refused batch did not keep the key"
    );
    fresh.expect(202);
}

#[tokio::test]
async fn keys_are_per_topic_and_expire_after_a_day() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let one = app.topic(&dealer.admin, "one", None).await;
    let two = app.topic(&dealer.admin, "two", None).await;
    let body = json!({"data": {"n": 1}});
    let a = app
        .post_event(&dealer.publisher, &one, body.clone(), Some("k"))
        .await
        .expect(202);
    let b = app
        .post_event(&dealer.publisher, &two, body.clone(), Some("k"))
        .await
        .expect(202);
    assert_ne!(
        a["id"], b["id"],
        "the same key on another topic is another event"
    );

    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.ctx.pool)
        .await
        .unwrap();
    let again = app
        .post_event(
            &dealer.publisher,
            &one,
            json!({"data": {"n": 2}}),
            Some("k"),
        )
        .await
        .expect(202);
    assert_ne!(again["id"], a["id"], "an expired key is used anew");
    assert_eq!(app.events_in_log(&one).await, 2);
    let replay = app
        .post_event(
            &dealer.publisher,
            &one,
            json!({"data": {"n": 2}}),
            Some("k"),
        )
        .await
        .expect(202);
    assert_eq!(
        replay["id"], again["id"],
        "and then remembered for the new event"
    );
}

#[tokio::test]
async fn batch_items_carry_their_own_idempotency_keys() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let path = format!("/v1/topics/{topic}/events/batch");
    let first = app
        .api
        .post(
            &path,
            &dealer.publisher,
            json!({"events": [
                {"data": {"n": 0}, "idempotency_key": "a"},
                {"data": {"n": 1}},
                {"data": {"n": 0}, "idempotency_key": "a"},
            ]}),
        )
        .await
        .expect(202);
    let items = first["items"].as_array().unwrap();
    assert_eq!(
        items[0], items[2],
        "a key repeated with the same event is one event"
    );
    assert_ne!(items[0]["id"], items[1]["id"]);
    assert_eq!(app.take(&queue, 3, Duration::from_secs(3)).await.len(), 2);

    // A retried batch: the keyed item replays, the item without a key is new.
    let again = app
        .api
        .post(
            &path,
            &dealer.publisher,
            json!({"events": [
                {"data": {"n": 0}, "idempotency_key": "a"},
                {"data": {"n": 1}},
            ]}),
        )
        .await
        .expect(202);
    assert_eq!(again["items"][0], items[0]);
    assert_ne!(again["items"][1]["id"], items[1]["id"]);
    assert_eq!(app.take(&queue, 2, Duration::from_secs(3)).await.len(), 1);
    // The single-event header and batch keys share one namespace per topic.
    let single = app
        .post_event(
            &dealer.publisher,
            &topic,
            json!({"data": {"n": 0}}),
            Some("a"),
        )
        .await
        .expect(202);
    assert_eq!(single["id"], items[0]["id"]);

    let clash = app
        .api
        .post(
            &path,
            &dealer.publisher,
            json!({"events": [
                {"data": 1, "idempotency_key": "b"},
                {"data": 2, "idempotency_key": "b"},
            ]}),
        )
        .await;
    assert_eq!(clash.status, 422);
    assert_eq!(clash.pointers(), vec!["/events/1/idempotency_key"]);
    assert!(eventually(WAIT, || async { app.outbox_len().await == 0 }).await);
}

#[tokio::test]
async fn idempotency_keys_are_checked() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let long = "k".repeat(256);
    let answer = app
        .post_event(&dealer.publisher, &topic, json!({"data": 1}), Some(&long))
        .await;
    assert_eq!(answer.status, 422);
    answer.assert_problem();
    assert!(
        answer.detail().contains("Idempotency-Key"),
        "{}",
        answer.detail()
    );
    app.post_event(
        &dealer.publisher,
        &topic,
        json!({"data": 1}),
        Some(&"k".repeat(255)),
    )
    .await
    .expect(202);

    let answer = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &dealer.publisher,
            json!({"events": [{"data": 1, "idempotency_key": long}, {"data": 1, "idempotency_key": 7}]}),
        )
        .await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.pointers(),
        vec!["/events/0/idempotency_key", "/events/1/idempotency_key"]
    );
    assert_eq!(app.events_in_log(&topic).await, 1);
}
