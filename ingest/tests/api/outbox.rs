//! The outbox: 202 needs only PostgreSQL, and the relay publishes whatever was left behind.

use std::time::{Duration, Instant};

use anika_testkit::TestEnv;
use serde_json::json;

use crate::helpers::{App, Proxy, eventually};

const RELAY: [(&str, &str); 2] = [
    ("outbox_relay_interval", "100ms"),
    ("outbox_relay_after", "300ms"),
];

#[tokio::test]
async fn an_event_committed_while_rabbitmq_is_unreachable_is_published_by_the_relay_once_it_is_back()
 {
    let env = TestEnv::new().await;
    let proxy = Proxy::start().await;
    let url = proxy.amqp_url(&env.vhost);
    let mut overrides = RELAY.to_vec();
    overrides.push(("amqp_url", &url));
    let app = App::spawn_in(env, &overrides).await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    app.grant(&dealer.admin, &topic, &bank.id).await;
    let (dealer_queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let (bank_queue, _) = app.subscribe(&bank.admin, &topic).await;
    // The link works: an event goes straight through.
    let before = app
        .post_event(&dealer.publisher, &topic, json!({"data": {"n": 0}}), None)
        .await
        .expect(202);
    assert_eq!(
        app.take(&bank_queue, 1, Duration::from_secs(10)).await[0].json()["id"],
        before["id"]
    );
    assert_eq!(
        app.take(&dealer_queue, 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.outbox_len().await == 0
        })
        .await,
        "confirmed"
    );

    proxy.cut();
    let mut accepted = Vec::new();
    for n in 1..=20 {
        let started = Instant::now();
        let answer = app
            .post_event(&dealer.publisher, &topic, json!({"data": {"n": n}}), None)
            .await;
        assert_eq!(
            answer.status, 202,
            "RabbitMQ being down is no reason to refuse: {}",
            answer.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "and no reason to be slow"
        );
        accepted.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    let batch = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &dealer.publisher,
            json!({"events": [{"data": {"n": 21}}, {"data": {"n": 22}}]}),
        )
        .await
        .expect(202);
    for item in batch["items"].as_array().unwrap() {
        accepted.push(item["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        app.events_in_log(&topic).await,
        23,
        "every accepted event is in the log"
    );
    // Well past the relay's age threshold and several relay ticks: still nothing can have arrived.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.env.queue_depth(&bank_queue).await,
        Some(0),
        "nothing got through the cut link"
    );
    assert_eq!(app.outbox_len().await, 22, "the events wait in the outbox");

    proxy.restore();
    for queue in [&bank_queue, &dealer_queue] {
        let messages = app.take(queue, 22, Duration::from_secs(30)).await;
        let mut got: Vec<String> = messages
            .iter()
            .map(|m| m.json()["id"].as_str().unwrap().to_owned())
            .collect();
        got.sort();
        got.dedup();
        let mut want = accepted.clone();
        want.sort();
        assert_eq!(
            got, want,
            "{queue}: every event accepted during the outage, once"
        );
        for message in &messages {
            assert_eq!(
                message.json()["topic"],
                "car.chosen",
                "the relay rebuilds the whole envelope"
            );
            assert_eq!(message.properties.delivery_mode(), &Some(2));
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.outbox_len().await == 0
        })
        .await
    );
    app.assert_stays_empty(&bank_queue).await;
    // The link is healthy again: new events go straight through.
    app.post_event(&dealer.publisher, &topic, json!({"data": {"n": 99}}), None)
        .await
        .expect(202);
    assert_eq!(
        app.take(&bank_queue, 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("anika_outbox_relay_republished_total"),
        "{metrics}"
    );
    assert!(metrics.contains("anika_outbox_backlog"), "{metrics}");
}

#[tokio::test]
async fn an_outbox_row_left_by_a_crashed_process_is_republished_by_the_relay() {
    let app = App::spawn_with(&RELAY).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;

    // What a process that died between commit and publish leaves: the event and its outbox row.
    let id = anika_shared::domain::EventId::new();
    let mut tx = app.ctx.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (id, topic_id, publisher_partner_id, key, data, received_at) \
         VALUES ($1, $2, $3, 'k-9', '{\"left\": \"behind\"}', $4)",
    )
    .bind(id.uuid())
    .bind(uuid::Uuid::parse_str(&topic).unwrap())
    .bind(uuid::Uuid::parse_str(&dealer.id).unwrap())
    .bind(id.timestamp())
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO outbox (event_id, received_at) VALUES ($1, $2)")
        .bind(id.uuid())
        .bind(id.timestamp())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let messages = app.take(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "the relay published it");
    let envelope = messages[0].json();
    assert_eq!(envelope["id"], id.to_string());
    assert_eq!(envelope["topic_id"], topic.as_str());
    assert_eq!(envelope["topic"], "car.chosen");
    assert_eq!(envelope["publisher_partner_id"], dealer.id.as_str());
    assert_eq!(envelope["key"], "k-9");
    assert_eq!(envelope["data"], json!({"left": "behind"}));
    assert_eq!(
        envelope["received_at"],
        anika_shared::envelope::format_time(id.timestamp())
    );
    assert_eq!(
        messages[0]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned()),
        Some(id.to_string())
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.outbox_len().await == 0
        })
        .await
    );
    app.assert_stays_empty(&queue).await;
}

#[tokio::test]
async fn the_relay_drops_outbox_rows_whose_topic_or_event_is_gone() {
    let app = App::spawn_with(&RELAY).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "short-lived", None).await;
    let event = app
        .post_event(&dealer.publisher, &topic, json!({"data": 1}), None)
        .await
        .expect(202);
    let event_id: uuid::Uuid = event["id"].as_str().unwrap().parse().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.outbox_len().await == 0
        })
        .await
    );
    app.api
        .delete(&format!("/v1/topics/{topic}"), &dealer.admin)
        .await
        .expect(204);

    // Rows as if publishing had failed: one for the deleted topic's event, one for an event gone by retention.
    let orphan = anika_shared::domain::EventId::new();
    for (id, at) in [
        (
            event_id,
            anika_shared::domain::EventId::from(event_id).timestamp(),
        ),
        (orphan.uuid(), orphan.timestamp()),
    ] {
        sqlx::query("INSERT INTO outbox (event_id, received_at) VALUES ($1, $2)")
            .bind(id)
            .bind(at)
            .execute(&app.ctx.pool)
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.outbox_len().await == 0
        })
        .await,
        "both rows are dropped, not retried forever"
    );
    assert_eq!(
        app.events_in_log(&topic).await,
        1,
        "the log keeps the deleted topic's event until retention"
    );
}
