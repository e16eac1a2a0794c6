//! Operators and subscribers recover: attempts, dead letters (list, replay, purge), replay from the log.

use std::time::Duration;

use anika_testkit::{Receiver, Reply};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{App, Setup};

/// Dead-letters `n` events on a subscription whose endpoint always fails (max_attempts 1).
pub(crate) async fn with_dead_letters(n: usize) -> Setup {
    with_dead_letters_on(&[], n).await
}

/// [`with_dead_letters`] with configuration overrides.
async fn with_dead_letters_on(overrides: &[(&str, &str)], n: usize) -> Setup {
    let s = Setup::new(overrides, json!({"max_attempts": 1})).await;
    s.receiver.always(Reply::Status(500));
    s.app
        .publish_many(
            &s.topic,
            &s.dealer.id,
            (0..n).map(|i| json!({"n": i})).collect(),
        )
        .await;
    let app = &s.app;
    let path = format!("/v1/subscriptions/{}/dead-letters", s.sub_id());
    app.eventually("all dead-lettered", Duration::from_secs(15), || async {
        app.api.get(&path, &s.dealer.admin).await.expect(200)["total"] == n
    })
    .await;
    s
}

#[tokio::test]
async fn dead_letters_are_listed_newest_first_with_the_total() {
    let s = with_dead_letters(3).await;
    let path = format!("/v1/subscriptions/{}/dead-letters", s.sub_id());
    let page = s
        .app
        .api
        .get(&format!("{path}?limit=2"), &s.dealer.admin)
        .await
        .expect(200);
    assert_eq!(page["total"], 3);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["attempts"], 1);
    assert!(items[0]["last_error"].as_str().unwrap().contains("500"));
    assert!(items[0]["dead_at"].as_str().unwrap() >= items[1]["dead_at"].as_str().unwrap());
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = s
        .app
        .api
        .get(&format!("{path}?limit=2&cursor={cursor}"), &s.dealer.admin)
        .await
        .expect(200);
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    assert_eq!(
        s.app
            .env
            .queue_depth(&format!("anika.dlq.{}", s.sub_id()))
            .await,
        Some(3)
    );
}

#[tokio::test]
async fn replaying_dead_letters_delivers_each_once_more_and_empties_queue_and_records() {
    let s = with_dead_letters(5).await;
    let failed_requests = s.receiver.received().len();
    s.receiver.always(Reply::Status(204));
    let sub = s.sub_id();
    let replayed = s
        .app
        .api
        .post(
            &format!("/v1/subscriptions/{sub}/dead-letters/replay"),
            &s.dealer.admin,
            json!({"limit": 2}),
        )
        .await
        .expect(202);
    assert_eq!(replayed["replayed"], 2);
    let list = s
        .app
        .api
        .get(
            &format!("/v1/subscriptions/{sub}/dead-letters"),
            &s.dealer.admin,
        )
        .await
        .expect(200);
    assert_eq!(list["total"], 3);

    let all = s
        .app
        .api
        .post(
            &format!("/v1/subscriptions/{sub}/dead-letters/replay"),
            &s.dealer.admin,
            json!({}),
        )
        .await
        .expect(202);
    assert_eq!(all["replayed"], 3);
    let redelivered = s.distinct_ids_after(failed_requests, 5).await;
    assert_eq!(redelivered.len(), 5, "each dead letter delivered once more");
    assert_eq!(
        s.app.env.queue_depth(&format!("anika.dlq.{sub}")).await,
        Some(0)
    );
    let list = s
        .app
        .api
        .get(
            &format!("/v1/subscriptions/{sub}/dead-letters"),
            &s.dealer.admin,
        )
        .await
        .expect(200);
    assert_eq!(list["total"], 0);
    // A fresh budget: the replayed attempts start at 1 again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = s.app.attempts(sub).await;
    assert!(
        attempts
            .iter()
            .filter(|a| a.2 == "succeeded")
            .all(|a| a.1 == 1),
        "{attempts:?}"
    );
}

#[tokio::test]
async fn replayed_dead_letters_go_out_at_once_instead_of_waiting_out_the_circuit_breaker() {
    // The breaker opens at every failure: after four dead letters it waits 4 s.
    let s = Setup::new(
        &[("circuit_breaker_after", "1")],
        json!({"max_attempts": 1}),
    )
    .await;
    s.receiver.always(Reply::Status(500));
    s.app
        .publish_many(
            &s.topic,
            &s.dealer.id,
            (0..4).map(|i| json!({"n": i})).collect(),
        )
        .await;
    let app = &s.app;
    let sub = s.sub_id();
    let path = format!("/v1/subscriptions/{sub}/dead-letters");
    app.eventually("all dead-lettered", Duration::from_secs(15), || async {
        app.api.get(&path, &s.dealer.admin).await.expect(200)["total"] == 4
    })
    .await;
    let failed_requests = s.receiver.received().len();

    s.receiver.always(Reply::Status(204));
    app.api
        .post(&format!("{path}/replay"), &s.dealer.admin, json!({}))
        .await
        .expect(202);
    let waited = s
        .next_request_after(failed_requests, std::time::Instant::now())
        .await;
    assert!(
        waited < Duration::from_millis(2500),
        "the first replayed dead letter went out {waited:?} after the replay, after the breaker's cool-down"
    );
}

#[tokio::test]
async fn purging_empties_the_dead_letter_queue_and_its_records() {
    let s = with_dead_letters(4).await;
    let path = format!("/v1/subscriptions/{}/dead-letters", s.sub_id());
    assert_eq!(
        s.app.api.delete(&path, &s.dealer.admin).await.expect(200)["purged"],
        4
    );
    assert_eq!(
        s.app.api.get(&path, &s.dealer.admin).await.expect(200)["total"],
        0
    );
    assert_eq!(
        s.app
            .env
            .queue_depth(&format!("anika.dlq.{}", s.sub_id()))
            .await,
        Some(0)
    );
}

#[tokio::test]
async fn only_the_subscriptions_own_admins_and_operators_may_recover() {
    let s = with_dead_letters(1).await;
    let stranger = s.app.partner("stranger").await;
    let sub = s.sub_id();
    let paths = [
        format!("/v1/subscriptions/{sub}/dead-letters"),
        format!("/v1/subscriptions/{sub}/attempts"),
    ];
    for path in &paths {
        assert_eq!(
            s.app.api.get(path, &stranger.admin).await.status,
            404,
            "{path}"
        );
        assert_eq!(
            s.app.api.get(path, &s.dealer.publisher).await.status,
            403,
            "{path}"
        );
        s.app.api.get(path, &s.app.operator).await.expect(200);
    }
    let replay = format!("/v1/subscriptions/{sub}/dead-letters/replay");
    assert_eq!(
        s.app
            .api
            .post(&replay, &stranger.admin, json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        s.app.api.delete(&paths[0], &stranger.admin).await.status,
        404
    );
    let backfill = format!("/v1/subscriptions/{sub}/replay");
    assert_eq!(
        s.app
            .api
            .post(
                &backfill,
                &stranger.admin,
                json!({"since": "2020-01-01T00:00:00Z"})
            )
            .await
            .status,
        404
    );
    // Nothing was touched.
    assert_eq!(
        s.app.env.queue_depth(&format!("anika.dlq.{sub}")).await,
        Some(1)
    );
}

#[tokio::test]
async fn attempts_are_filtered_by_status_and_time_and_paginated() {
    let s = Setup::new(&[], json!({})).await;
    s.receiver.script([Reply::Status(500), Reply::Status(500)]);
    s.app
        .publish_many(
            &s.topic,
            &s.dealer.id,
            vec![json!({"a": 1}), json!({"b": 2})],
        )
        .await;
    let app = &s.app;
    let sub = s.sub_id().to_owned();
    app.eventually("four attempts", Duration::from_secs(10), || async {
        app.attempts(&sub).await.len() == 4
    })
    .await;
    let path = format!("/v1/subscriptions/{sub}/attempts");
    let all = app.api.get(&path, &s.dealer.admin).await.expect(200);
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    for field in [
        "id",
        "event_id",
        "attempt",
        "status",
        "http_status",
        "error",
        "duration_ms",
        "response_excerpt",
        "at",
    ] {
        assert!(items[0].get(field).is_some(), "missing {field}");
    }
    assert!(
        items[0]["at"].as_str().unwrap() >= items[3]["at"].as_str().unwrap(),
        "newest first"
    );
    let failed = app
        .api
        .get(&format!("{path}?status=failed"), &s.dealer.admin)
        .await
        .expect(200);
    assert_eq!(failed["items"].as_array().unwrap().len(), 2);
    assert!(
        failed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "failed" && a["http_status"] == 500)
    );
    let future = app
        .api
        .get(
            &format!("{path}?since=2999-01-01T00:00:00Z"),
            &s.dealer.admin,
        )
        .await
        .expect(200);
    assert!(future["items"].as_array().unwrap().is_empty());
    let page = app
        .api
        .get(&format!("{path}?limit=3"), &s.dealer.admin)
        .await
        .expect(200);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = app
        .api
        .get(&format!("{path}?limit=3&cursor={cursor}"), &s.dealer.admin)
        .await
        .expect(200);
    assert_eq!(next["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.api
            .get(&format!("{path}?status=maybe"), &s.dealer.admin)
            .await
            .status,
        400
    );
    assert_eq!(
        app.api
            .get(&format!("{path}?since=yesterday"), &s.dealer.admin)
            .await
            .status,
        400
    );
}

/// Writes an event into the log as ingest would, received at `at`.
pub(crate) async fn logged_event(
    app: &App,
    topic: &str,
    publisher: &str,
    at: DateTime<Utc>,
    data: Value,
) -> String {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    let id = Uuid::new_v7(ts);
    let received_at = DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap();
    sqlx::query(
        "INSERT INTO events (id, topic_id, publisher_partner_id, key, data, received_at) \
         VALUES ($1, $2::uuid, $3::uuid, NULL, $4, $5)",
    )
    .bind(id)
    .bind(topic)
    .bind(publisher)
    .bind(data)
    .bind(received_at)
    .execute(&app.ctx.pool)
    .await
    .unwrap();
    id.to_string()
}

#[tokio::test]
async fn a_backfill_delivers_exactly_the_window_under_the_filter_and_grant_of_now() {
    let app = App::spawn(&[]).await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;
    let topic = app.topic(&dealer.admin, "car.chosen").await;
    let grant = format!("/v1/topics/{topic}/grants/{}", bank.id);
    app.api.put(&grant, &dealer.admin).await.expect(204);
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe(
            &bank.admin,
            &topic,
            &receiver.url("/bank"),
            json!({"filter": {"country": "DE"}}),
        )
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();

    let now = Utc::now();
    let hours = |h: i64| now - chrono::Duration::hours(h);
    let _too_old = logged_event(
        &app,
        &topic,
        &dealer.id,
        hours(5),
        json!({"country": "DE", "n": 0}),
    )
    .await;
    let in1 = logged_event(
        &app,
        &topic,
        &dealer.id,
        hours(3),
        json!({"country": "DE", "n": 1}),
    )
    .await;
    let _filtered = logged_event(
        &app,
        &topic,
        &dealer.id,
        hours(3),
        json!({"country": "FR", "n": 2}),
    )
    .await;
    let in2 = logged_event(
        &app,
        &topic,
        &dealer.id,
        hours(2),
        json!({"country": "DE", "city": "Berlin", "n": 3}),
    )
    .await;
    let _too_new = logged_event(
        &app,
        &topic,
        &dealer.id,
        hours(0),
        json!({"country": "DE", "n": 4}),
    )
    .await;
    let other_topic = app.topic(&dealer.admin, "other").await;
    let _elsewhere = logged_event(
        &app,
        &other_topic,
        &dealer.id,
        hours(3),
        json!({"country": "DE"}),
    )
    .await;

    let path = format!("/v1/subscriptions/{sub_id}/replay");
    let window = json!({"since": hours(4).to_rfc3339(), "until": hours(1).to_rfc3339()});
    let enqueued = app
        .api
        .post(&path, &bank.admin, window.clone())
        .await
        .expect(202);
    assert_eq!(enqueued["enqueued"], 2);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        vec![in1.clone(), in2.clone()],
        "exactly the window's matching events, in log order"
    );
    assert_eq!(got[1].json()["data"]["city"], "Berlin");
    assert_eq!(got[0].json()["topic"], "car.chosen");

    // Without a grant now, nothing may be replayed.
    app.api.delete(&grant, &dealer.admin).await.expect(204);
    let refused = app.api.post(&path, &bank.admin, window).await;
    assert_eq!(refused.status, 409);
    refused.assert_problem();
    let bad = app
        .api
        .post(
            &path,
            &bank.admin,
            json!({"since": now.to_rfc3339(), "until": hours(1).to_rfc3339()}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(
        app.api
            .post(&path, &bank.admin, json!({"since": "last week"}))
            .await
            .status,
        422
    );
}

/// Pauses the subscription, waits until its consumer is gone, and makes its queue hold at
/// most `room` messages, refusing (nacking) every publish past that.
///
/// The tests that use it run on classic queues: a quorum queue applies `reject-publish`
/// a little late (it accepts what is in flight when it fills), a classic one exactly.
async fn with_a_full_queue(s: &Setup, room: u32) {
    let sub = s.sub_id();
    s.app
        .api
        .patch(
            &format!("/v1/subscriptions/{sub}"),
            &s.dealer.admin,
            json!({"status": "paused"}),
        )
        .await
        .expect(200);
    let queue = format!("anika.sub.{sub}");
    let app = &s.app;
    app.eventually("the consumer stopped", Duration::from_secs(10), || async {
        app.env.consumers(&queue).await == Some(0)
    })
    .await;
    app.env
        .set_policy(
            "full",
            &format!("^anika\\.sub\\.{sub}$"),
            json!({"max-length": room, "overflow": "reject-publish"}),
        )
        .await;
    app.eventually(
        "the length limit applies",
        Duration::from_secs(10),
        || async {
            app.env
                .queue_info(&queue)
                .await
                .is_some_and(|q| q["effective_policy_definition"]["max-length"] == json!(room))
        },
    )
    .await;
}

#[tokio::test]
async fn dead_letters_the_broker_refuses_to_replay_stay_dead_lettered_with_their_records() {
    let s = with_dead_letters_on(&[("queue_type", "classic")], 5).await;
    let sub = s.sub_id().to_owned();
    with_a_full_queue(&s, 2).await;
    let replay = format!("/v1/subscriptions/{sub}/dead-letters/replay");
    let out = s
        .app
        .api
        .post(&replay, &s.dealer.admin, json!({}))
        .await
        .expect(202);
    assert_eq!(out["replayed"], 2, "{out}");
    assert_eq!(out["kept"], 3, "{out}");
    let list = s
        .app
        .api
        .get(
            &format!("/v1/subscriptions/{sub}/dead-letters"),
            &s.dealer.admin,
        )
        .await
        .expect(200);
    assert_eq!(list["total"], 3, "the refused ones are still listed");
    let env = &s.app.env;
    assert_eq!(env.queue_depth(&format!("anika.dlq.{sub}")).await, Some(3));
    assert_eq!(env.queue_depth(&format!("anika.sub.{sub}")).await, Some(2));

    // Once there is room and the endpoint answers, the kept ones replay too: all five arrive.
    env.clear_policy("full").await;
    s.receiver.always(Reply::Status(204));
    let failed_requests = s.receiver.received().len();
    s.app
        .api
        .patch(
            &format!("/v1/subscriptions/{sub}"),
            &s.dealer.admin,
            json!({"status": "active"}),
        )
        .await
        .expect(200);
    let again = s
        .app
        .api
        .post(&replay, &s.dealer.admin, json!({}))
        .await
        .expect(202);
    assert_eq!(
        (again["replayed"].clone(), again["kept"].clone()),
        (json!(3), json!(0))
    );
    let ids = s.distinct_ids_after(failed_requests, 5).await;
    assert_eq!(ids.len(), 5, "every dead letter was delivered in the end");
}

#[tokio::test]
async fn a_log_replay_counts_only_what_the_broker_confirmed() {
    let s = Setup::new(&[("queue_type", "classic")], json!({})).await;
    let now = Utc::now();
    for n in 0..5 {
        logged_event(
            &s.app,
            &s.topic,
            &s.dealer.id,
            now - chrono::Duration::minutes(10 - n),
            json!({"n": n}),
        )
        .await;
    }
    with_a_full_queue(&s, 2).await;
    let out = s
        .app
        .api
        .post(
            &format!("/v1/subscriptions/{}/replay", s.sub_id()),
            &s.dealer.admin,
            json!({"since": (now - chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await
        .expect(202);
    assert_eq!(out["enqueued"], 2, "{out}");
    assert!(out["refused"].as_u64().unwrap() >= 1, "{out}");
}

#[tokio::test]
async fn one_log_replay_runs_at_a_time_per_subscription_paced_and_within_the_window_cap() {
    let s = Setup::new(
        &[("replay_rate_per_s", "10"), ("max_replay_window", "2days")],
        json!({}),
    )
    .await;
    s.receiver.always(Reply::Status(204));
    let now = Utc::now();
    for n in 0..20 {
        logged_event(
            &s.app,
            &s.topic,
            &s.dealer.id,
            now - chrono::Duration::minutes(30 - n),
            json!({"n": n}),
        )
        .await;
    }
    let path = format!("/v1/subscriptions/{}/replay", s.sub_id());
    let window = json!({"since": (now - chrono::Duration::hours(1)).to_rfc3339()});
    let started = std::time::Instant::now();
    let first = {
        let (api, admin, path, window) = (
            s.app.api.clone(),
            s.dealer.admin.clone(),
            path.clone(),
            window.clone(),
        );
        tokio::spawn(async move { api.post(&path, &admin, window).await })
    };
    let app = &s.app;
    app.eventually(
        "the first replay is under way",
        Duration::from_secs(10),
        || async { s.receiver.received().len() >= 2 },
    )
    .await;
    let second = app.api.post(&path, &s.dealer.admin, window.clone()).await;
    assert_eq!(second.status, 409, "{:?}", second.body);
    second.assert_problem();
    assert!(
        second.detail().contains("already running"),
        "{}",
        second.detail()
    );

    let first = first.await.unwrap().expect(202);
    assert_eq!(first["enqueued"], 20);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "20 events at 10/s took only {:?}: not paced",
        started.elapsed()
    );
    // Once it ended, the next one may run.
    app.api
        .post(&path, &s.dealer.admin, window)
        .await
        .expect(202);

    let too_long = app
        .api
        .post(
            &path,
            &s.dealer.admin,
            json!({"since": (now - chrono::Duration::days(3)).to_rfc3339()}),
        )
        .await;
    assert_eq!(too_long.status, 422);
    assert_eq!(too_long.pointers(), ["/until"]);
    assert!(too_long.detail().contains("2days"), "{}", too_long.detail());
}

#[tokio::test]
async fn times_postgresql_cannot_store_are_client_errors_on_attempts_cursors_and_replays() {
    let s = Setup::new(&[], json!({})).await;
    let sub = s.sub_id();
    let api = &s.app.api;
    let admin = &s.dealer.admin;
    let far = "-5000-01-01T00:00:00Z";
    let attempts = api
        .get(
            &format!("/v1/subscriptions/{sub}/attempts?since={far}"),
            admin,
        )
        .await;
    assert_eq!(attempts.status, 400, "{:?}", attempts.body);
    attempts.assert_problem();
    assert!(attempts.detail().contains("since"), "{}", attempts.detail());
    // A cursor that decodes to such a time (tampered with, or made by hand).
    let cursor = anika_shared::page::encode_cursor(&(far, Uuid::nil()));
    for path in [
        format!("/v1/subscriptions/{sub}/attempts?cursor={cursor}"),
        format!("/v1/subscriptions/{sub}/dead-letters?cursor={cursor}"),
    ] {
        let answer = api.get(&path, admin).await;
        assert_eq!(answer.status, 400, "{path}: {:?}", answer.body);
        answer.assert_problem();
    }
    let replay = format!("/v1/subscriptions/{sub}/replay");
    for body in [
        json!({"since": far}),
        json!({"since": "2026-01-01T00:00:00Z", "until": "+300000-01-01T00:00:00Z"}),
    ] {
        let answer = api.post(&replay, admin, body.clone()).await;
        assert_eq!(answer.status, 422, "{body}: {:?}", answer.body);
        answer.assert_problem();
    }
}
