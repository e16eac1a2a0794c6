//! Isolation at the edges: fair delivery slots across partners, `max_in_flight`, and
//! revocations, pauses and grants that take effect right before a request is sent.

use std::time::{Duration, Instant};

use anika_testkit::{Partner, Receiver, Reply};
use serde_json::{Value, json};

use crate::helpers::App;

/// How long after a revoke or pause returns a request may still start: the catalog's change
/// notification reaching the dispatcher (milliseconds; see docs/architecture.md).
const NOTIFY_WINDOW: Duration = Duration::from_millis(50);

/// Requests the receiver saw start after `since` (plus the notification window).
fn started_after(receiver: &Receiver, since: Instant) -> usize {
    receiver
        .received()
        .iter()
        .filter(|r| r.started > since + NOTIFY_WINDOW)
        .count()
}

async fn skips(app: &App, sub: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT reason FROM skips WHERE subscription_id = $1::uuid")
        .bind(sub)
        .fetch_all(&app.ctx.pool)
        .await
        .unwrap()
}

fn events(n: usize) -> Vec<Value> {
    (0..n).map(|n| json!({"n": n})).collect()
}

#[tokio::test]
async fn a_partner_with_eight_subscriptions_to_a_slow_endpoint_does_not_delay_another_partner() {
    // 64 slots: the noisy partner's 8 subscriptions × 32 in flight would take them all.
    let app = App::spawn(&[("dispatch_concurrency", "64")]).await;
    let noisy = app.partner("noisy").await;
    let calm = app.partner("calm").await;
    let noisy_topic = app.topic(&noisy.admin, "slow").await;
    let calm_topic = app.topic(&calm.admin, "fast").await;
    let slow = Receiver::start().await;
    slow.always(Reply::Delay(Duration::from_secs(8)));
    for n in 0..8 {
        app.subscribe(
            &noisy.admin,
            &noisy_topic,
            &slow.url(&format!("/{n}")),
            json!({}),
        )
        .await;
    }
    let healthy = Receiver::start().await;
    app.subscribe(&calm.admin, &calm_topic, &healthy.url("/calm"), json!({}))
        .await;

    app.publish_many(&noisy_topic, &noisy.id, events(300)).await;
    app.eventually(
        "the slow endpoint holds the noisy partner's share and more",
        Duration::from_secs(15),
        || async { slow.in_flight() >= 48 },
    )
    .await;

    let posted = Instant::now();
    app.publish_many(&calm_topic, &calm.id, events(10)).await;
    let got = healthy.wait_for(10, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 10, "every calm event arrived");
    let slowest = got.iter().map(|r| r.at - posted).max().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "the calm partner's last event took {slowest:?} behind the noisy one's 8 s endpoint"
    );
    assert!(
        slow.in_flight() >= 32,
        "the noisy partner still had its requests out meanwhile: {}",
        slow.in_flight()
    );
    assert!(
        slow.peak_in_flight() <= 64,
        "never above the process's slots"
    );
}

#[tokio::test]
async fn one_subscription_never_has_more_requests_in_flight_than_its_max_in_flight() {
    let app = App::spawn(&[]).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Delay(Duration::from_millis(200)));
    let sub = app
        .subscribe(
            &dealer.admin,
            &topic,
            &receiver.url("/hook"),
            json!({"max_in_flight": 5}),
        )
        .await;
    assert_eq!(sub["max_in_flight"], 5);
    let path = format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap());

    app.publish_many(&topic, &dealer.id, events(30)).await;
    assert_eq!(
        receiver.wait_for(30, Duration::from_secs(20)).await.len(),
        30
    );
    assert_eq!(
        receiver.peak_in_flight(),
        5,
        "five at once, never more (the prefetch is 200)"
    );

    // A PATCH reaches the running dispatcher.
    let changed = app
        .api
        .patch(&path, &dealer.admin, json!({"max_in_flight": 2}))
        .await
        .expect(200);
    assert_eq!(changed["max_in_flight"], 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.reset_peak();
    app.publish_many(&topic, &dealer.id, events(12)).await;
    assert_eq!(
        receiver.wait_for(42, Duration::from_secs(20)).await.len(),
        42
    );
    assert_eq!(receiver.peak_in_flight(), 2, "the new cap holds");

    let reset = app
        .api
        .patch(&path, &dealer.admin, json!({"max_in_flight": null}))
        .await
        .expect(200);
    assert_eq!(reset["max_in_flight"], 32, "null: the server's default");
    for bad in [json!(0), json!(1001), json!("5")] {
        let answer = app
            .api
            .patch(&path, &dealer.admin, json!({"max_in_flight": bad}))
            .await;
        assert_eq!(answer.status, 422, "{bad}");
        assert_eq!(answer.pointers(), vec!["/max_in_flight"], "{bad}");
    }
}

/// A dealer's topic, granted to a bank.
struct Granted {
    dealer: Partner,
    bank: Partner,
    topic: String,
    /// The grant's path.
    grant: String,
}

impl Granted {
    async fn new(app: &App) -> Self {
        let dealer = app.partner("dealer").await;
        let bank = app.partner("bank").await;
        let topic = app.topic(&dealer.admin, "car.chosen").await;
        let grant = format!("/v1/topics/{topic}/grants/{}", bank.id);
        app.api.put(&grant, &dealer.admin).await.expect(204);
        Self {
            dealer,
            bank,
            topic,
            grant,
        }
    }

    /// The bank's subscription to `receiver` with `extra` fields; its id.
    async fn subscribe(&self, app: &App, receiver: &Receiver, extra: Value) -> String {
        let sub = app
            .subscribe(&self.bank.admin, &self.topic, &receiver.url("/bank"), extra)
            .await;
        sub["id"].as_str().unwrap().to_owned()
    }

    /// Grants again the way `PUT …/grants` does (row, binding of `sub`'s queue), minus the
    /// notification: no dispatcher hears of it.
    async fn grant_unannounced(&self, app: &App, sub: &str) {
        sqlx::query("INSERT INTO grants (topic_id, partner_id) VALUES ($1::uuid, $2::uuid)")
            .bind(&self.topic)
            .bind(&self.bank.id)
            .execute(&app.ctx.pool)
            .await
            .unwrap();
        let channel = app.ctx.broker.channel().await.unwrap();
        app.ctx
            .broker
            .topology()
            .bind_to_topic(&channel, sub.parse().unwrap(), self.topic.parse().unwrap())
            .await
            .unwrap();
    }

    /// Revokes the grant; returns when the call returned.
    async fn revoke(&self, app: &App) -> Instant {
        app.api
            .delete(&self.grant, &self.dealer.admin)
            .await
            .expect(204);
        Instant::now()
    }
}

#[tokio::test]
async fn after_a_revoke_returns_nothing_waiting_at_the_rate_limiter_is_sent() {
    let app = App::spawn(&[]).await;
    let g = Granted::new(&app).await;
    let receiver = Receiver::start().await;
    let sub = g
        .subscribe(&app, &receiver, json!({"rate_limit_per_s": 2}))
        .await;

    app.publish_many(&g.topic, &g.dealer.id, events(60)).await;
    receiver.wait_for(3, Duration::from_secs(10)).await;
    let revoked = g.revoke(&app).await;

    app.eventually(
        "every event not yet sent is skipped",
        Duration::from_secs(10),
        || async { skips(&app, &sub).await.len() + receiver.received().len() == 60 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        started_after(&receiver, revoked),
        0,
        "sent after the revoke"
    );
    assert!(
        skips(&app, &sub)
            .await
            .iter()
            .all(|r| r.contains("revoked"))
    );
}

#[tokio::test]
async fn after_a_pause_returns_nothing_waiting_at_the_rate_limiter_is_sent() {
    let app = App::spawn(&[]).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe(
            &dealer.admin,
            &topic,
            &receiver.url("/hook"),
            json!({"rate_limit_per_s": 2}),
        )
        .await;
    let sub = sub["id"].as_str().unwrap().to_owned();

    app.publish_many(&topic, &dealer.id, events(60)).await;
    receiver.wait_for(3, Duration::from_secs(10)).await;
    app.api
        .patch(
            &format!("/v1/subscriptions/{sub}"),
            &dealer.admin,
            json!({"status": "paused"}),
        )
        .await
        .expect(200);
    let paused = Instant::now();

    let queue = format!("anika.sub.{sub}");
    app.eventually(
        "every event not yet sent is back in the queue",
        Duration::from_secs(10),
        || async {
            let depth = app.env.queue_depth(&queue).await.unwrap_or(0) as usize;
            depth + receiver.received().len() == 60
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(started_after(&receiver, paused), 0, "sent after the pause");
    assert!(skips(&app, &sub).await.is_empty(), "paused is not skipped");
}

#[tokio::test]
async fn an_ordered_subscription_retrying_in_place_stops_at_a_revoke() {
    // No breaker: the retries in place follow the schedule (50, 100, 200 ms, ...).
    let app = App::spawn(&[("circuit_breaker_after", "0")]).await;
    let g = Granted::new(&app).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));
    let sub = g
        .subscribe(
            &app,
            &receiver,
            json!({"ordered": true, "max_attempts": 100}),
        )
        .await;
    app.publish(&g.topic, &g.dealer.id, json!({"n": 1})).await;
    receiver.wait_for(3, Duration::from_secs(10)).await;

    let revoked = g.revoke(&app).await;
    app.eventually("the event is skipped", Duration::from_secs(5), || async {
        skips(&app, &sub).await.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        started_after(&receiver, revoked),
        0,
        "retried after the revoke"
    );
}

#[tokio::test]
async fn a_grant_the_dispatcher_has_not_heard_of_is_never_answered_with_a_skip() {
    // No periodic reload to help: only the check against PostgreSQL can see the grant.
    let app = App::spawn(&[("reconcile_interval", "1h")]).await;
    let g = Granted::new(&app).await;
    let receiver = Receiver::start().await;
    let sub = g.subscribe(&app, &receiver, json!({})).await;
    g.revoke(&app).await;
    // The dispatcher hears of the revoke (NOTIFY); of the grant below it hears nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;

    g.grant_unannounced(&app, &sub).await;

    let id = app.publish(&g.topic, &g.dealer.id, json!({"n": 1})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        got.len(),
        1,
        "delivered; skips: {:?}",
        skips(&app, &sub).await
    );
    assert_eq!(got[0].header("webhook-id"), Some(id.to_string().as_str()));
    assert!(skips(&app, &sub).await.is_empty());
}

#[tokio::test]
async fn a_reconnecting_consumer_keeps_the_binding_of_a_grant_it_has_not_heard_of() {
    let app = App::spawn(&[("reconcile_interval", "1h")]).await;
    let g = Granted::new(&app).await;
    let receiver = Receiver::start().await;
    let sub = g.subscribe(&app, &receiver, json!({})).await;
    g.revoke(&app).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.grant_unannounced(&app, &sub).await;

    // The consumer reconnects (and repairs its topology) with a cache that says "revoked".
    assert!(app.env.close_connections().await > 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.wait_for_consumer(&sub).await;
    let queue = format!("anika.sub.{sub}");
    assert!(
        app.env
            .bindings(&queue)
            .await
            .contains(&("anika.events".to_owned(), g.topic.clone())),
        "the granted queue is still bound to its topic"
    );
    app.publish(&g.topic, &g.dealer.id, json!({"n": 1})).await;
    assert_eq!(receiver.wait_for(1, Duration::from_secs(10)).await.len(), 1);
}
