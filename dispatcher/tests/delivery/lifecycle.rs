//! Shutdown, several dispatchers, a broker that drops its connections.

use std::time::Duration;

use anika_testkit::Reply;
use serde_json::json;

use crate::helpers::Setup;

#[tokio::test]
async fn graceful_shutdown_finishes_what_is_in_flight_and_leaves_the_rest_queued() {
    let s = Setup::new(&[("prefetch", "2")], json!({})).await;
    s.receiver.always(Reply::Delay(Duration::from_millis(400)));
    s.app
        .publish_many(
            &s.topic,
            &s.dealer.id,
            (0..6).map(|n| json!({"n": n})).collect(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.app.stop_dispatcher().await;
    let got = s.receiver.received();
    assert_eq!(got.len(), 2, "the two in flight were finished");
    let queue = format!("anika.sub.{}", s.sub_id());
    assert_eq!(
        s.app.env.queue_depth(&queue).await,
        Some(4),
        "the rest is back in the queue, nothing acked unsent"
    );
    assert_eq!(
        s.app.attempts(s.sub_id()).await.len(),
        2,
        "the finished ones were recorded before the stop"
    );
}

#[tokio::test]
async fn two_dispatchers_compete_for_one_queue_and_deliver_everything() {
    let s = Setup::new(&[], json!({})).await;
    s.app.start_dispatcher().await; // the first keeps running beside the second
    let ids = s
        .app
        .publish_many(
            &s.topic,
            &s.dealer.id,
            (0..40).map(|n| json!({"n": n})).collect(),
        )
        .await;
    let got = s.receiver.wait_for(40, Duration::from_secs(15)).await;
    let mut delivered: Vec<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), ids.len(), "every event arrived");
}

#[tokio::test]
async fn a_dispatcher_reconnects_after_the_broker_drops_its_connections() {
    let s = Setup::new(&[], json!({})).await;
    s.publish(json!({"n": 1})).await;
    s.receiver.wait_for(1, Duration::from_secs(10)).await;
    let closed = s.app.env.close_connections().await;
    assert!(closed > 0, "there were connections to close");
    s.app.wait_for_consumer(s.sub_id()).await;
    let second = s.publish(json!({"n": 2})).await.to_string();
    // The first event's ack may have been cut off with the connection: it can
    // come again (at least once), so wait for the second by its id.
    assert!(
        s.receiver
            .wait_for_webhook(&second, Duration::from_secs(15))
            .await,
        "the event published after the reconnect was not delivered"
    );
}
