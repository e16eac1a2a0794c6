//! Ordered subscriptions: one at a time, in publish order, across failures and restarts.

use std::time::Duration;

use anika_testkit::{Received, Reply};
use serde_json::json;

use crate::helpers::Setup;

/// The delivered ids with consecutive repeats (retries) folded.
fn sequence(got: &[Received]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for r in got {
        let id = r.header("webhook-id").unwrap().to_owned();
        if ids.last() != Some(&id) {
            ids.push(id);
        }
    }
    ids
}

#[tokio::test]
async fn an_ordered_subscription_keeps_publish_order_across_a_failure_in_the_middle() {
    let s = Setup::new(&[], json!({"ordered": true})).await;
    s.receiver.script([
        Reply::Status(204),
        Reply::Status(204),
        Reply::Status(204),
        Reply::Status(500),
        Reply::Status(503),
    ]);
    let ids = s
        .app
        .publish_many(
            &s.topic,
            &s.dealer.id,
            (0..10).map(|n| json!({"n": n})).collect(),
        )
        .await;
    let got = s.receiver.wait_for(12, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 12, "10 events, the 4th tried three times");
    let expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        sequence(&got),
        expected,
        "nothing overtook the failing event"
    );
    let fourth: Vec<&Received> = got
        .iter()
        .filter(|r| r.header("webhook-id") == Some(expected[3].as_str()))
        .collect();
    assert_eq!(fourth.len(), 3);
    assert!(
        fourth[1].at - fourth[0].at >= Duration::from_millis(50),
        "retried after the schedule's first tier"
    );
}

#[tokio::test]
async fn an_ordered_subscription_keeps_order_across_a_dispatcher_restart() {
    let s = Setup::new(
        &[("retry_schedule", "300ms,600ms")],
        json!({"ordered": true, "max_attempts": 10}),
    )
    .await;
    s.receiver
        .script([Reply::Status(204), Reply::Status(500), Reply::Status(500)]);
    let ids = s
        .app
        .publish_many(
            &s.topic,
            &s.dealer.id,
            (0..5).map(|n| json!({"n": n})).collect(),
        )
        .await;
    // The second event is failing and waiting in place when the dispatcher stops.
    s.receiver.wait_for(2, Duration::from_secs(10)).await;
    s.app.stop_dispatcher().await;
    let before = s.receiver.received().len();
    s.app.start_dispatcher().await;
    let got = s
        .receiver
        .wait_for(before + 4, Duration::from_secs(15))
        .await;
    let expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(sequence(&got), expected, "order survived the restart");
    // Attempts are counted from the log after a restart, not started over.
    let second: Vec<i32> = s
        .app
        .attempts(s.sub_id())
        .await
        .into_iter()
        .filter(|a| a.0 == expected[1])
        .map(|a| a.1)
        .collect();
    let mut sorted = second.clone();
    sorted.dedup();
    assert_eq!(second, sorted, "attempt numbers never repeat: {second:?}");
}
