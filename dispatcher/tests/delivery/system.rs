//! Operational events in the partner's `anika.system` topic: failing, recovered, disabled,
//! coalesced dead letters, and no events about a subscription on the system topic itself.

use std::time::Duration;

use anika_testkit::{Receiver, Reply};
use serde_json::{Value, json};

use crate::helpers::{App, Setup};

/// The id of `admin`'s partner's system topic, as `GET /v1/topics` lists it.
async fn system_topic(app: &App, admin: &str) -> String {
    let page = app
        .api
        .get("/v1/topics?name=anika.system", admin)
        .await
        .expect(200);
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "every partner has one system topic: {page}");
    items[0]["id"].as_str().expect("id").to_owned()
}

/// Subscribes a fresh receiver to the partner's system topic.
async fn listen(app: &App, admin: &str, extra: Value) -> (Receiver, String) {
    let topic = system_topic(app, admin).await;
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe(admin, &topic, &receiver.url("/ops"), extra)
        .await;
    (receiver, sub["id"].as_str().expect("id").to_owned())
}

/// The `data` of every operational event the receiver got, deduplicated on `webhook-id`.
fn notices(receiver: &Receiver) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    receiver
        .received()
        .into_iter()
        .filter(|r| seen.insert(r.header("webhook-id").unwrap_or_default().to_owned()))
        .map(|r| r.json()["data"].clone())
        .collect()
}

fn of_type<'a>(notices: &'a [Value], kind: &str) -> Vec<&'a Value> {
    notices.iter().filter(|n| n["type"] == kind).collect()
}

#[tokio::test]
async fn a_partner_hears_in_its_system_topic_that_a_subscription_fails_recovers_and_is_disabled() {
    let s = Setup::new(&[], json!({"max_attempts": 10})).await;
    let (ops, _) = listen(&s.app, &s.dealer.admin, json!({})).await;
    let sub = s.sub_id().to_owned();

    // Two failures, then a success: one `failing` (the first failure only), one `recovered`.
    s.receiver
        .script([Reply::Status(500), Reply::Status(500), Reply::Status(204)]);
    s.publish(json!({"n": 1})).await;
    s.app
        .eventually("failing and recovered", Duration::from_secs(15), || async {
            of_type(&notices(&ops), "subscription.recovered").len() == 1
        })
        .await;
    let got = notices(&ops);
    assert_eq!(
        got.iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["subscription.failing", "subscription.recovered"],
        "{got:?}"
    );
    assert!(
        got.iter().all(|n| n["subscription_id"] == sub.as_str()),
        "{got:?}"
    );
    assert!(
        got[0]["error"].as_str().unwrap().contains("500"),
        "the failing notice says what the endpoint answered: {}",
        got[0]
    );
    assert!(got[0]["at"].as_str().is_some());

    // A 410 disables the subscription: a `disabled` notice with the reason.
    s.receiver.always(Reply::Status(410));
    s.publish(json!({"n": 2})).await;
    s.app
        .eventually("disabled", Duration::from_secs(15), || async {
            !of_type(&notices(&ops), "subscription.disabled").is_empty()
        })
        .await;
    let got = notices(&ops);
    let disabled = of_type(&got, "subscription.disabled");
    assert_eq!(disabled.len(), 1, "{got:?}");
    assert!(
        disabled[0]["reason"].as_str().unwrap().contains("410"),
        "{}",
        disabled[0]
    );

    // Each notice is an event of the log like any other, keyed by the subscription.
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e JOIN topics t ON t.id = e.topic_id \
         WHERE t.name = 'anika.system' AND e.key = $1",
    )
    .bind(&sub)
    .fetch_one(&s.app.ctx.pool)
    .await
    .expect("count");
    assert_eq!(logged, got.len() as i64);
}

#[tokio::test]
async fn dead_letters_are_announced_at_most_once_per_interval_with_the_count_since_the_last_notice()
{
    let s = Setup::new(
        &[("system_notice_interval", "2s")],
        json!({"max_attempts": 1}),
    )
    .await;
    let (ops, _) = listen(&s.app, &s.dealer.admin, json!({})).await;
    s.receiver.always(Reply::Status(500));
    for n in 0..5 {
        s.publish(json!({"n": n})).await;
    }
    s.app
        .eventually(
            "every dead letter is announced",
            Duration::from_secs(20),
            || async {
                of_type(&notices(&ops), "dead_letter.added")
                    .iter()
                    .map(|n| n["count"].as_u64().unwrap())
                    .sum::<u64>()
                    == 5
            },
        )
        .await;
    let got = notices(&ops);
    let dead = of_type(&got, "dead_letter.added");
    assert!(
        dead.len() >= 2 && dead.len() < 5,
        "five dead letters within moments are coalesced, not one notice each: {dead:?}"
    );
    assert_eq!(dead[0]["count"], 1, "the first is announced at once");
    let times: Vec<chrono::DateTime<chrono::Utc>> = dead
        .iter()
        .map(|n| n["at"].as_str().unwrap().parse().unwrap())
        .collect();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= chrono::Duration::milliseconds(1900),
            "at most one notice per interval: {times:?}"
        );
    }
    // Nothing is left pending once the counts add up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        of_type(&notices(&ops), "dead_letter.added").len(),
        dead.len()
    );
}

#[tokio::test]
async fn a_subscription_on_the_system_topic_causes_no_operational_events_about_itself() {
    let s = Setup::new(
        &[("system_notice_interval", "1s")],
        json!({"max_attempts": 1}),
    )
    .await;
    // One listener whose endpoint always fails (and dead-letters), one that works.
    let (broken, broken_id) = listen(&s.app, &s.dealer.admin, json!({"max_attempts": 1})).await;
    broken.always(Reply::Status(500));
    let (watcher, watcher_id) = listen(&s.app, &s.dealer.admin, json!({})).await;

    s.receiver.always(Reply::Status(500));
    s.publish(json!({"n": 1})).await;
    s.app
        .eventually(
            "the watcher hears of the failing subscription",
            Duration::from_secs(15),
            || async { !of_type(&notices(&watcher), "dead_letter.added").is_empty() },
        )
        .await;
    // The broken listener failed on these very notices; give any loop time to show itself.
    s.app
        .eventually(
            "the broken listener dead-lettered what it got",
            Duration::from_secs(10),
            || async {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM dead_letters WHERE subscription_id = $1::uuid",
                )
                .bind(&broken_id)
                .fetch_one(&s.app.ctx.pool)
                .await
                .unwrap();
                n > 0
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = notices(&watcher);
    assert!(
        got.iter().all(|n| n["subscription_id"] == s.sub_id()),
        "only the ordinary subscription is talked about, never the system topic's own: {got:?}"
    );
    let about_listeners: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE key = ANY($1)")
            .bind(vec![broken_id.clone(), watcher_id])
            .fetch_one(&s.app.ctx.pool)
            .await
            .unwrap();
    assert_eq!(about_listeners, 0);
    assert!(
        !broken.received().is_empty(),
        "the broken listener was tried"
    );
}
