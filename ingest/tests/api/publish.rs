//! Accepted events: in the log, in every bound subscription queue, with the envelope contract.

use std::time::Duration;

use anika_shared::{
    amqp::ATTEMPT_HEADER,
    domain::{EventId, PartnerId, TopicId},
    envelope::{Envelope, EventHead, TOPIC_HEADER},
};
use serde_json::{json, value::RawValue};

use crate::helpers::{App, eventually};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_accepted_event_is_in_the_log_and_in_every_bound_subscription_queue_byte_for_byte() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    app.grant(&dealer.admin, &topic, &bank.id).await;
    let (dealer_queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let (bank_queue, _) = app.subscribe(&bank.admin, &topic).await;

    // Odd spacing and a trailing zero: the envelope must carry these exact bytes.
    let data = r#"{"car": "Zoë 2",  "price": 21000.50, "extras": [ ]}"#;
    let body = format!(r#"{{"key": "customer-42", "data": {data}}}"#);
    let answer = app
        .post_raw(
            &dealer.publisher,
            &format!("/v1/topics/{topic}/events"),
            body.into_bytes(),
            None,
        )
        .await;
    let accepted = answer.expect(202);
    let id = EventId::parse(accepted["id"].as_str().unwrap()).unwrap();
    assert_eq!(accepted["topic_id"], topic.as_str());
    let received_at = accepted["received_at"].as_str().unwrap();
    assert_eq!(id.uuid().get_version_num(), 7, "event ids are UUIDv7");
    assert_eq!(
        received_at,
        anika_shared::envelope::format_time(id.timestamp())
    );

    // In the log, with received_at equal to the id's time (one partition per lookup).
    let (key, stored_at, publisher): (Option<String>, chrono::DateTime<chrono::Utc>, uuid::Uuid) =
        sqlx::query_as("SELECT key, received_at, publisher_partner_id FROM events WHERE id = $1")
            .bind(id.uuid())
            .fetch_one(&app.ctx.pool)
            .await
            .unwrap();
    assert_eq!(key.as_deref(), Some("customer-42"));
    assert_eq!(stored_at, id.timestamp());
    assert_eq!(publisher.to_string(), dealer.id);

    let expected = Envelope::encode(
        &EventHead {
            id,
            topic_id: TopicId::parse(&topic).unwrap(),
            topic: "car.chosen",
            publisher: PartnerId::parse(&dealer.id).unwrap(),
            key: Some("customer-42"),
            received_at: id.timestamp(),
        },
        &RawValue::from_string(data.to_owned()).unwrap(),
    );
    for queue in [&dealer_queue, &bank_queue] {
        let messages = app.take(queue, 1, WAIT).await;
        assert_eq!(messages.len(), 1, "{queue} got the event");
        let message = &messages[0];
        assert_eq!(
            message.body, expected,
            "the body is the envelope, byte for byte"
        );
        assert!(String::from_utf8_lossy(&message.body).contains(data));
        let envelope = message.json();
        assert_eq!(envelope["topic"], "car.chosen");
        assert_eq!(envelope["received_at"], received_at);
        let props = &message.properties;
        assert_eq!(props.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            props.message_id().as_ref().map(|m| m.as_str().to_owned()),
            Some(id.to_string())
        );
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(
            message.header(TOPIC_HEADER).as_deref(),
            Some(topic.as_str())
        );
        assert_eq!(
            anika_shared::amqp::header_u32(props, ATTEMPT_HEADER),
            Some(0)
        );
        app.assert_stays_empty(queue).await;
    }
    // Confirmed: the outbox row is gone.
    assert!(
        eventually(WAIT, || async { app.outbox_len().await == 0 }).await,
        "outbox emptied after the confirm"
    );
}

#[tokio::test]
async fn an_event_for_a_topic_without_subscriptions_is_accepted_and_leaves_no_outbox_row() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "lonely", None).await;
    app.post_event(&dealer.admin, &topic, json!({"data": {"n": 1}}), None)
        .await
        .expect(202);
    assert_eq!(app.events_in_log(&topic).await, 1);
    // Unroutable is fine: the mandatory publish is returned and confirmed, the row deleted.
    assert!(eventually(WAIT, || async { app.outbox_len().await == 0 }).await);
}

#[tokio::test]
async fn a_batch_is_stored_and_published_in_the_order_posted() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let events: Vec<_> = (0..25)
        .map(|n| json!({"data": {"n": n}, "key": format!("k{n}")}))
        .collect();
    let accepted = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &dealer.publisher,
            json!({"events": events}),
        )
        .await
        .expect(202);
    let items = accepted["items"].as_array().unwrap();
    assert_eq!(items.len(), 25);
    assert_eq!(app.events_in_log(&topic).await, 25);
    let messages = app.take(&queue, 25, WAIT).await;
    assert_eq!(messages.len(), 25);
    for (n, (message, item)) in messages.iter().zip(items).enumerate() {
        let envelope = message.json();
        assert_eq!(
            envelope["id"], item["id"],
            "publish order is the posted order"
        );
        assert_eq!(envelope["received_at"], item["received_at"]);
        assert_eq!(envelope["data"], json!({"n": n}));
        assert_eq!(envelope["key"], format!("k{n}"));
    }
    app.assert_stays_empty(&queue).await;
}

#[tokio::test]
async fn a_batch_with_one_invalid_event_stores_and_publishes_nothing() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let schema = json!({"type": "object", "required": ["price"], "properties": {"price": {"type": "number"}}});
    let topic = app.topic(&dealer.admin, "car.chosen", Some(schema)).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let mut events: Vec<_> = (0..5).map(|n| json!({"data": {"price": n}})).collect();
    events[3] = json!({"data": {"price": "cheap"}});
    let answer = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &dealer.publisher,
            json!({"events": events}),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    answer.assert_problem();
    assert_eq!(answer.pointers(), vec!["/events/3/data/price"]);
    assert!(
        answer.detail().contains("/events/3/data/price"),
        "{}",
        answer.detail()
    );
    assert_eq!(app.events_in_log(&topic).await, 0);
    assert_eq!(app.outbox_len().await, 0);
    app.assert_stays_empty(&queue).await;

    // Several bad events: each one is named.
    events[0] = json!({"data": {}});
    events[4] = json!({"data": {"price": 1}, "color": "red"});
    let answer = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &dealer.publisher,
            json!({"events": events}),
        )
        .await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.pointers(),
        vec!["/events/0/data", "/events/3/data/price", "/events/4/color"]
    );
    assert_eq!(app.events_in_log(&topic).await, 0);
}

#[tokio::test]
async fn many_concurrent_posts_are_all_stored_and_all_published_once() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "busy", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let posts = (0..200).map(|n| {
        let (app, token, topic) = (&app, &dealer.publisher, &topic);
        async move {
            app.post_event(token, topic, json!({"data": {"n": n}}), None)
                .await
        }
    });
    let answers = futures::future::join_all(posts).await;
    let mut ids: Vec<String> = answers
        .into_iter()
        .map(|a| a.expect(202)["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "200 distinct events");
    assert_eq!(app.events_in_log(&topic).await, 200);
    let messages = app.take(&queue, 200, WAIT).await;
    let mut published: Vec<String> = messages
        .iter()
        .map(|m| m.json()["id"].as_str().unwrap().to_owned())
        .collect();
    published.sort();
    assert_eq!(published, ids);
    app.assert_stays_empty(&queue).await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("anika_events_accepted_total"), "{metrics}");
    assert!(
        metrics.contains("anika_ingest_latency_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("anika_publish_confirm_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn stopping_ingest_keeps_every_accepted_event_and_publishes_or_leaves_it_in_the_outbox() {
    let mut app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let path = format!("/v1/topics/{topic}/events");
    let posts = (0..100).map(|n| {
        let (app, token, path) = (&app, &dealer.publisher, &path);
        async move {
            app.try_post_raw(
                token,
                path,
                format!(r#"{{"data": {n}}}"#).into_bytes(),
                None,
            )
            .await
        }
    });
    let stop = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        app.shutdown.cancel();
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(posts), stop);
    app.stop().await;
    // Posts that found the server closed were never accepted; those that got an answer count.
    let answers: Vec<_> = answers.into_iter().filter_map(Result::ok).collect();
    assert!(!answers.is_empty());
    let accepted: Vec<uuid::Uuid> = answers
        .iter()
        .filter(|a| a.status == 202)
        .map(|a| a.body["id"].as_str().unwrap().parse().unwrap())
        .collect();
    for answer in answers.iter().filter(|a| a.status != 202) {
        assert_eq!(
            answer.status, 503,
            "a refused post says why: {}",
            answer.body
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE id = ANY($1)")
        .bind(&accepted)
        .fetch_one(&app.ctx.pool)
        .await
        .unwrap();
    assert_eq!(stored as usize, accepted.len(), "every 202 is in the log");
    let outbox = app.outbox_len().await as usize;
    let queued = app.env.queue_depth(&queue).await.unwrap() as usize;
    assert!(
        queued + outbox >= accepted.len(),
        "published ({queued}) or waiting in the outbox ({outbox})"
    );
}
