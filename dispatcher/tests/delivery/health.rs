//! Endpoint health: 410 disables, long failure disables, a circuit breaker, rate limits.

use std::time::{Duration, Instant};

use anika_testkit::Reply;
use serde_json::json;

use crate::helpers::Setup;

async fn status(s: &Setup) -> serde_json::Value {
    s.app
        .api
        .get(
            &format!("/v1/subscriptions/{}", s.sub_id()),
            &s.dealer.admin,
        )
        .await
        .expect(200)
}

async fn re_enable(s: &Setup) {
    s.app
        .api
        .patch(
            &format!("/v1/subscriptions/{}", s.sub_id()),
            &s.dealer.admin,
            json!({"status": "active"}),
        )
        .await
        .expect(200);
}

/// A subscription whose endpoint answered 500 until `ANIKA_DISABLE_AFTER` disabled it.
async fn disabled_by_failures(overrides: &[(&str, &str)]) -> Setup {
    let s = Setup::new(overrides, json!({"max_attempts": 100})).await;
    s.receiver.always(Reply::Status(500));
    s.publish(json!({"n": 1})).await;
    s.app
        .eventually(
            "the subscription is disabled",
            Duration::from_secs(15),
            || async { status(&s).await["status"] == "disabled" },
        )
        .await;
    s
}

#[tokio::test]
async fn a_410_gone_disables_the_subscription_at_once_and_keeps_the_event_queued() {
    let s = Setup::new(&[], json!({})).await;
    s.receiver.always(Reply::Status(410));
    s.publish(json!({"n": 1})).await;
    let app = &s.app;
    app.eventually(
        "the subscription is disabled",
        Duration::from_secs(10),
        || async { status(&s).await["status"] == "disabled" },
    )
    .await;
    let sub = status(&s).await;
    assert!(
        sub["disabled_reason"].as_str().unwrap().contains("410"),
        "{sub}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.receiver.received().len(),
        1,
        "no more attempts once disabled"
    );
    assert_eq!(
        app.env
            .queue_depth(&format!("anika.sub.{}", s.sub_id()))
            .await,
        Some(1),
        "the event waits for re-enabling"
    );

    // Re-enabled, it delivers what waited.
    s.receiver.always(Reply::Status(204));
    re_enable(&s).await;
    assert_eq!(
        s.receiver.wait_for(2, Duration::from_secs(10)).await.len(),
        2
    );
}

#[tokio::test]
async fn an_endpoint_failing_for_longer_than_disable_after_is_disabled() {
    let s = disabled_by_failures(&[("disable_after", "400ms"), ("retry_schedule", "100ms")]).await;
    assert!(
        status(&s).await["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("failed since")
    );
    let attempts = s.receiver.received().len();
    assert!(
        (3..=10).contains(&attempts),
        "{attempts} attempts before disabling"
    );
}

#[tokio::test]
async fn a_re_enabled_subscription_starts_afresh_without_its_old_cool_down_or_failure_time() {
    // The breaker opens at every failure: cool-downs 0.5 s, 1 s, 2 s, 4 s.
    let s = disabled_by_failures(&[
        ("disable_after", "2s"),
        ("retry_schedule", "100ms"),
        ("circuit_breaker_after", "1"),
    ])
    .await;
    let before = s.receiver.received().len();

    // Fixed, but its first answer after re-enabling is still one error.
    s.receiver.script([Reply::Status(500)]);
    s.receiver.always(Reply::Status(204));
    re_enable(&s).await;
    let waited = s.next_request_after(before, Instant::now()).await;
    assert!(
        waited < Duration::from_millis(2500),
        "the first attempt came {waited:?} after re-enabling, after the old 4 s cool-down"
    );
    let got = s
        .receiver
        .wait_for(before + 2, Duration::from_secs(15))
        .await;
    assert_eq!(got.len(), before + 2, "delivered after the one error");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(&s).await["status"],
        "active",
        "one error after re-enabling does not disable it again for failures from before"
    );
}

#[tokio::test]
async fn the_circuit_breaker_holds_back_a_dead_endpoint_instead_of_burning_every_message() {
    let s = Setup::new(
        &[
            ("circuit_breaker_after", "3"),
            ("retry_schedule", "20ms,40ms,80ms"),
        ],
        json!({"max_attempts": 4}),
    )
    .await;
    s.receiver.always(Reply::Status(500));
    let events = (0..30).map(|n| json!({"n": n})).collect();
    s.app.publish_many(&s.topic, &s.dealer.id, events).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Without the breaker: 30 messages x 4 attempts in well under 400 ms.
    let attempts = s.receiver.received().len();
    assert!(
        attempts <= 6,
        "{attempts} attempts reached a dead endpoint in 400 ms"
    );
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&s.app.ctx.pool)
        .await
        .unwrap();
    assert_eq!(
        dead, 0,
        "no message spent its attempts while the breaker was open"
    );

    // The endpoint recovers: a probe succeeds and everything flows.
    s.receiver.always(Reply::Status(204));
    let got = s
        .receiver
        .wait_for(attempts + 30, Duration::from_secs(20))
        .await;
    assert!(got.len() >= attempts + 30);
}

#[tokio::test]
async fn rate_limit_per_s_spaces_deliveries() {
    let s = Setup::new(&[], json!({"rate_limit_per_s": 5})).await;
    let started = Instant::now();
    s.app
        .publish_many(
            &s.topic,
            &s.dealer.id,
            (0..10).map(|n| json!({"n": n})).collect(),
        )
        .await;
    let got = s.receiver.wait_for(10, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 10);
    // A burst of 5 is allowed, then 5 per second: the last arrives after about a second.
    let span = got[9].at - got[0].at;
    assert!(
        span >= Duration::from_millis(900),
        "10 deliveries within {span:?} at 5/s"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
