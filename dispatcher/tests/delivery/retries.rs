//! Failing endpoints: attempts, growing gaps, Retry-After, redirects, dead letters.

use std::time::Duration;

use anika_testkit::Reply;
use serde_json::json;

use crate::helpers::Setup;

#[tokio::test]
async fn a_failing_endpoint_gets_exactly_max_attempts_with_growing_gaps_then_one_dead_letter() {
    // Schedule 50ms, 100ms, 200ms; max_attempts 4 = first try + 3 retries.
    let s = Setup::new(&[], json!({"max_attempts": 4})).await;
    s.receiver
        .always(Reply::Body(500, "database on fire".into()));
    let id = s.publish(json!({"n": 1})).await;

    let app = &s.app;
    let sub = s.sub_id().to_owned();
    app.eventually("a dead-letter record", Duration::from_secs(15), || async {
        s.dead_letter_records().await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let got = s.receiver.received();
    assert_eq!(got.len(), 4, "exactly max_attempts requests");
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == Some(id.to_string().as_str())),
        "same webhook-id on every retry"
    );
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, floor) in gaps.iter().zip([50, 100, 200]) {
        assert!(
            *gap >= Duration::from_millis(floor),
            "gap {gap:?} shorter than the {floor} ms tier: {gaps:?}"
        );
    }
    assert!(gaps[2] > gaps[0], "gaps grow: {gaps:?}");

    let attempts = app.attempts(&sub).await;
    assert_eq!(
        attempts.iter().map(|a| a.1).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(attempts.iter().all(|a| a.2 == "failed" && a.3 == Some(500)));
    let (attempts_recorded, last_error): (i32, String) = sqlx::query_as(
        "SELECT attempts, last_error FROM dead_letters WHERE subscription_id = $1::uuid AND event_id = $2::uuid",
    )
    .bind(&sub)
    .bind(id.to_string())
    .fetch_one(&app.ctx.pool)
    .await
    .unwrap();
    assert_eq!(attempts_recorded, 4);
    assert!(last_error.contains("500"), "{last_error}");
    assert_eq!(
        app.env.queue_depth(&format!("anika.dlq.{sub}")).await,
        Some(1),
        "one message in the dead-letter queue"
    );
    assert_eq!(
        app.env.queue_depth(&format!("anika.sub.{sub}")).await,
        Some(0)
    );
}

#[tokio::test]
async fn a_retry_after_on_503_is_honoured_with_a_tier_at_least_that_long() {
    let s = Setup::new(&[("retry_schedule", "50ms,100ms,1s,2s")], json!({})).await;
    s.receiver.script([Reply::RetryAfter(503, 1)]);
    s.publish(json!({"n": 1})).await;
    let got = s.receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1000),
        "retried after {gap:?}, before Retry-After: 1"
    );
}

#[tokio::test]
async fn an_ordered_subscription_retrying_in_place_waits_no_longer_than_the_retry_after_cap() {
    let s = Setup::new(&[("max_retry_after", "1s")], json!({"ordered": true})).await;
    s.receiver.script([Reply::RetryAfter(503, 86_400)]);
    s.publish(json!({"n": 1})).await;
    let got = s.receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "retried within the cap, not after a day");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1000),
        "waited {gap:?}: Retry-After is honoured up to the cap"
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_counts_as_a_failure() {
    let s = Setup::new(&[], json!({"max_attempts": 1})).await;
    s.receiver
        .always(Reply::Redirect(s.receiver.url("/elsewhere")));
    s.publish(json!({"n": 1})).await;
    let app = &s.app;
    let sub = s.sub_id().to_owned();
    app.eventually(
        "the attempt is recorded",
        Duration::from_secs(10),
        || async { !app.attempts(&sub).await.is_empty() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = s.receiver.received();
    assert_eq!(got.len(), 1);
    assert!(
        got.iter().all(|r| r.path == "/hook"),
        "the redirect target was never requested"
    );
    let attempt = &app.attempts(&sub).await[0];
    assert_eq!(attempt.2, "failed");
    assert_eq!(attempt.3, Some(302));
    assert!(
        attempt.4.as_deref().unwrap().contains("not followed"),
        "{:?}",
        attempt.4
    );
}

#[tokio::test]
async fn the_attempt_log_keeps_status_duration_and_at_most_4_kib_of_the_response() {
    let s = Setup::new(&[], json!({})).await;
    s.receiver.script([
        Reply::Body(500, "x".repeat(10_000)),
        Reply::Body(200, "thanks".into()),
    ]);
    let id = s.publish(json!({"n": 1})).await;
    let app = &s.app;
    let sub = s.sub_id().to_owned();
    app.eventually("two attempts recorded", Duration::from_secs(10), || async {
        app.attempts(&sub).await.len() == 2
    })
    .await;
    type Row = (i32, String, Option<i32>, i32, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT attempt, status, http_status, duration_ms, response_excerpt FROM attempts \
         WHERE subscription_id = $1::uuid AND event_id = $2::uuid ORDER BY attempt",
    )
    .bind(&sub)
    .bind(id.to_string())
    .fetch_all(&app.ctx.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows[0].0, rows[0].1.as_str(), rows[0].2),
        (1, "failed", Some(500))
    );
    assert_eq!(
        rows[0].4.as_ref().unwrap().len(),
        4096,
        "the excerpt is cut at 4 KiB"
    );
    assert_eq!(
        (rows[1].0, rows[1].1.as_str(), rows[1].2),
        (2, "succeeded", Some(200))
    );
    assert_eq!(rows[1].4.as_deref(), Some("thanks"));
    assert!(rows.iter().all(|r| r.3 >= 0));
}

#[tokio::test]
async fn a_schedule_that_repeats_its_last_delay_retries_in_that_tier_until_max_attempts() {
    // "Then every 200 ms": the shape of Svix's and Hook0's "then every 12 h" defaults.
    let s = Setup::new(
        &[("retry_schedule", "50ms,200ms,200ms,200ms")],
        json!({"max_attempts": 5}),
    )
    .await;
    s.receiver.always(Reply::Status(500));
    s.publish(json!({"n": 1})).await;
    let app = &s.app;
    app.eventually("a dead-letter record", Duration::from_secs(15), || async {
        s.dead_letter_records().await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = s.receiver.received();
    assert_eq!(got.len(), 5, "exactly max_attempts requests");
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, floor) in gaps.iter().zip([50, 200, 200, 200]) {
        assert!(
            *gap >= Duration::from_millis(floor),
            "gap {gap:?} shorter than the {floor} ms tier: {gaps:?}"
        );
    }
    let retry_queues: Vec<String> = app
        .env
        .queues()
        .await
        .into_iter()
        .filter(|q| q.starts_with("anika.retry."))
        .collect();
    assert_eq!(
        retry_queues.len(),
        2,
        "one queue per distinct delay: {retry_queues:?}"
    );
}
