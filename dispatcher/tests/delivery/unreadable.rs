//! A stored subscription the dispatcher cannot read (here a status that is none of the
//! known ones, as a newer version might write) is not consumed, and says so: logged and
//! counted, while every other subscription goes on being delivered to.

use std::time::Duration;

use anika_testkit::{LogCapture, Receiver};
use serde_json::json;

use crate::helpers::Setup;

#[tokio::test]
async fn a_subscription_whose_status_does_not_parse_is_not_consumed_and_is_logged_and_counted() {
    let logs = LogCapture::start();
    let s = Setup::new(&[("reconcile_interval", "300ms")], json!({})).await;
    let other_receiver = Receiver::start().await;
    let other = s
        .app
        .subscribe(
            &s.dealer.admin,
            &s.topic,
            &other_receiver.url("/other"),
            json!({}),
        )
        .await;
    let other_id = other["id"].as_str().unwrap();
    s.app.wait_for_consumer(other_id).await;
    // Past the column's CHECK, as a newer anika's migration would allow.
    sqlx::query("ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check")
        .execute(&s.app.ctx.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE subscriptions SET status = 'archived' WHERE id = $1::uuid")
        .bind(other_id)
        .execute(&s.app.ctx.pool)
        .await
        .unwrap();
    let queue = format!("anika.sub.{other_id}");
    s.app
        .eventually(
            "the consumer of the unreadable subscription stops",
            Duration::from_secs(10),
            || async { s.app.env.consumers(&queue).await == Some(0) },
        )
        .await;

    s.publish(json!({"n": 1})).await;
    assert_eq!(
        s.receiver.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "the readable subscription is still delivered to"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(other_receiver.received().is_empty(), "nothing sent");
    assert_eq!(
        s.app.env.queue_depth(&queue).await,
        Some(1),
        "the event waits in the queue"
    );
    let logged = logs.text();
    assert!(
        logged.contains("a stored subscription does not parse") && logged.contains(other_id),
        "logged with the subscription"
    );
    assert!(
        logged.contains("`archived` is not a subscription status"),
        "logged with the value"
    );
    let metrics = s.app.ctx.metrics.render();
    assert!(
        metrics.contains("anika_subscriptions_unreadable_total{reason=\"status\"}"),
        "counted by the dispatcher"
    );
    assert!(
        metrics.contains("anika_stored_values_unreadable_total{type=\"subscription status\"}"),
        "counted as a stored value that does not parse"
    );
}
