//! What an operator's Prometheus sees: outcomes, latency, in-flight, queue depths, dead letters.

use std::time::Duration;

use anika_testkit::Reply;
use serde_json::json;

use crate::helpers::{App, Setup};

async fn scrape(app: &App) -> String {
    reqwest::get(format!("{}/metrics", app.api.base))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample whose name and labels are exactly `series`, if rendered.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

#[tokio::test]
async fn the_metrics_count_outcomes_and_show_each_subscriptions_queue_depth_and_dead_letters() {
    // One attempt only, so the failing event is dead-lettered at once.
    let s = Setup::new(
        &[("metrics_per_subscription", "true")],
        json!({"max_attempts": 1, "filter": {"kind": "car"}}),
    )
    .await;
    s.receiver
        .script([Reply::Body(500, "database on fire".into())]);
    s.publish(json!({"kind": "car", "n": 1})).await;
    s.publish(json!({"kind": "car", "n": 2})).await;
    s.publish(json!({"kind": "bike"})).await;

    let app = &s.app;
    let sub = s.sub_id().to_owned();
    let dead_letters = format!("anika_subscription_dead_letters{{subscription=\"{sub}\"}}");
    let depth = format!("anika_subscription_queue_depth{{subscription=\"{sub}\"}}");
    // The queue gauges are read from RabbitMQ every reconcile interval (2 s in these tests).
    app.eventually(
        "the dead letter and the empty queue in the gauges",
        Duration::from_secs(15),
        || async {
            let metrics = scrape(app).await;
            sample(&metrics, &dead_letters) == Some(1.0) && sample(&metrics, &depth) == Some(0.0)
        },
    )
    .await;

    let metrics = scrape(app).await;
    // The recorder is process-wide and other tests deliver too: at least ours are counted.
    for outcome in ["delivered", "failed", "dead_lettered", "skipped"] {
        let count = sample(
            &metrics,
            &format!("anika_deliveries_total{{outcome=\"{outcome}\"}}"),
        );
        assert!(
            count.is_some_and(|n| n >= 1.0),
            "{outcome} counted: {count:?}"
        );
    }
    let latencies = sample(&metrics, "anika_delivery_latency_seconds_count");
    assert!(
        latencies.is_some_and(|n| n >= 1.0),
        "publish-to-2xx latency recorded: {latencies:?}"
    );
    assert!(
        sample(&metrics, "anika_deliveries_in_flight").is_some(),
        "the in-flight gauge is rendered"
    );
}

#[tokio::test]
async fn without_the_opt_in_no_series_names_a_subscription_but_the_sums_are_there() {
    let s = Setup::new(&[], json!({"max_attempts": 1})).await;
    s.receiver.always(Reply::Status(500));
    s.publish(json!({"n": 1})).await;
    let app = &s.app;
    let sub = s.sub_id().to_owned();
    let dlq = format!("anika.dlq.{sub}");
    app.eventually("dead-lettered", Duration::from_secs(15), || async {
        app.env.queue_depth(&dlq).await == Some(1)
    })
    .await;
    // The gauges are read every reconcile interval (2 s in these tests): let two pass.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let metrics = scrape(app).await;
    assert!(
        !metrics.contains(&sub),
        "a series names the subscription without ANIKA_METRICS_PER_SUBSCRIPTION"
    );
    for sum in [
        "anika_subscriptions_queued_messages",
        "anika_subscriptions_dead_letters",
    ] {
        assert!(sample(&metrics, sum).is_some(), "{sum} is not rendered");
    }
}
