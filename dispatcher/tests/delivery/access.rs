//! What must never be sent: filtered out, after a revoke, to an address inside.

use std::{collections::HashMap, time::Duration};

use anika_testkit::Receiver;
use serde_json::json;

use crate::helpers::{App, FakeDns, Setup};

async fn skips(app: &App, sub: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT reason FROM skips WHERE subscription_id = $1::uuid")
        .bind(sub)
        .fetch_all(&app.ctx.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn events_that_do_not_match_the_filter_are_skipped_and_never_sent() {
    let s = Setup::new(
        &[],
        json!({"filter": {"country": "DE", "car": {"electric": true}}}),
    )
    .await;
    let wanted = s
        .publish(json!({"country": "DE", "car": {"electric": true, "make": "VW"}}))
        .await;
    s.publish(json!({"country": "FR", "car": {"electric": true}}))
        .await;
    s.publish(json!({"country": "DE", "car": {"electric": false}}))
        .await;
    s.publish(json!("not even an object")).await;
    let app = &s.app;
    let sub = s.sub_id().to_owned();
    app.eventually("three skips recorded", Duration::from_secs(10), || async {
        skips(app, &sub).await.len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = s.receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("webhook-id"),
        Some(wanted.to_string().as_str())
    );
    assert!(skips(app, &sub).await.iter().all(|r| r.contains("filter")));
}

#[tokio::test]
async fn after_a_revoke_queued_events_are_skipped_and_new_ones_are_not_even_routed() {
    let app = App::spawn(&[]).await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let grant = format!("/v1/topics/{topic}/grants/{}", bank.id);
    app.api.put(&grant, &dealer.admin).await.expect(204);
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe(&bank.admin, &topic, &receiver.url("/bank"), json!({}))
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();

    app.publish(&topic, &dealer.id, json!({"before": "pause"}))
        .await;
    assert_eq!(
        receiver.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "granted: delivered"
    );

    // Events queue up while the bank pauses its subscription.
    app.api
        .patch(
            &format!("/v1/subscriptions/{sub_id}"),
            &bank.admin,
            json!({"status": "paused"}),
        )
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.publish_many(
        &topic,
        &dealer.id,
        vec![json!({"queued": 1}), json!({"queued": 2})],
    )
    .await;
    assert_eq!(
        app.env.queue_depth(&format!("anika.sub.{sub_id}")).await,
        Some(2)
    );

    app.api.delete(&grant, &dealer.admin).await.expect(204);
    app.publish(&topic, &dealer.id, json!({"after": "revoke"}))
        .await;
    assert_eq!(
        app.env.queue_depth(&format!("anika.sub.{sub_id}")).await,
        Some(2),
        "nothing routed after the revoke"
    );

    app.api
        .patch(
            &format!("/v1/subscriptions/{sub_id}"),
            &bank.admin,
            json!({"status": "active"}),
        )
        .await
        .expect(200);
    app.eventually(
        "the queued events are skipped",
        Duration::from_secs(10),
        || async { skips(&app, &sub_id).await.len() == 2 },
    )
    .await;
    assert!(
        skips(&app, &sub_id)
            .await
            .iter()
            .all(|r| r.contains("revoked"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "nothing reached the bank after the revoke"
    );
}

#[tokio::test]
async fn pausing_and_resuming_starts_and_stops_the_consumer_within_a_second() {
    let s = Setup::new(&[], json!({})).await;
    let path = format!("/v1/subscriptions/{}", s.sub_id());
    let queue = format!("anika.sub.{}", s.sub_id());
    s.app
        .api
        .patch(&path, &s.dealer.admin, json!({"status": "paused"}))
        .await
        .expect(200);
    s.app
        .eventually("the consumer is gone", Duration::from_secs(1), || async {
            s.app.env.consumers(&queue).await == Some(0)
        })
        .await;
    s.publish(json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.receiver.received().is_empty(), "paused: nothing is sent");
    s.app
        .api
        .patch(&path, &s.dealer.admin, json!({"status": "active"}))
        .await
        .expect(200);
    assert_eq!(
        s.receiver.wait_for(1, Duration::from_secs(1)).await.len(),
        1,
        "resumed: delivered within a second"
    );
}

#[tokio::test]
async fn a_dns_name_resolving_to_a_blocked_address_is_never_contacted() {
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let dns = FakeDns(HashMap::from([(
        "hooks.bank.example".to_owned(),
        vec!["127.0.0.1".parse().unwrap()],
    )]));
    // No exemptions: loopback is blocked, but the name looks public to the catalog.
    let app = App::spawn_with_dns(&[("allowed_target_nets", "")], dns).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app
        .subscribe(
            &dealer.admin,
            &topic,
            &format!("http://hooks.bank.example:{port}/hook"),
            json!({"max_attempts": 1}),
        )
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    app.publish(&topic, &dealer.id, json!({"n": 1})).await;
    app.eventually(
        "the blocked attempt is recorded",
        Duration::from_secs(10),
        || async { !app.attempts(&sub_id).await.is_empty() },
    )
    .await;
    let attempt = &app.attempts(&sub_id).await[0];
    assert_eq!(attempt.2, "failed");
    assert!(
        attempt
            .4
            .as_deref()
            .unwrap()
            .contains("blocked by the SSRF guard"),
        "{:?}",
        attempt.4
    );
    assert!(
        attempt.4.as_deref().unwrap().contains("loopback"),
        "{:?}",
        attempt.4
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.received().is_empty(),
        "the receiver behind the name was never contacted"
    );
}

#[tokio::test]
async fn a_test_delivery_passes_the_same_ssrf_guard_and_acl_and_records_nothing() {
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let dns = FakeDns(HashMap::from([(
        "hooks.bank.example".to_owned(),
        vec!["127.0.0.1".parse().unwrap()],
    )]));
    let app = App::spawn_with_dns(&[("allowed_target_nets", "")], dns).await;
    let dealer = app.partner("dealer").await;
    let stranger = app.partner("stranger").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app
        .subscribe(
            &dealer.admin,
            &topic,
            &format!("http://hooks.bank.example:{port}/hook"),
            json!({}),
        )
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/subscriptions/{sub_id}/test");
    let result = app
        .api
        .post(&path, &dealer.admin, json!({}))
        .await
        .expect(200);
    assert_eq!(result["delivered"], false, "{result}");
    assert!(result["http_status"].is_null(), "{result}");
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("blocked by the SSRF guard"),
        "{result}"
    );
    // The same ACL as the subscription's other delivery routes.
    app.api
        .post(&path, &stranger.admin, json!({}))
        .await
        .expect(404);
    app.api
        .post(&path, &dealer.publisher, json!({}))
        .await
        .expect(403);
    let health = app
        .api
        .get(
            &format!("/v1/subscriptions/{sub_id}/health"),
            &stranger.admin,
        )
        .await
        .expect(404);
    assert!(health.is_object());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().is_empty(), "never contacted");
    assert!(
        app.attempts(&sub_id).await.is_empty(),
        "a test delivery is not an attempt"
    );
}
