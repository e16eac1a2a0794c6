//! Fault injection against the real binary, while events are being posted: every event answered
//! 202 must be delivered at least once.
//!
//! These tests disturb services, so they run one at a time (a lock), and each
//! disturbance is confined to the test's own vhost or database, so tests of
//! other binaries running beside them are not touched.

#[path = "../support/mod.rs"]
mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anika_testkit::{Receiver, Reply, TestEnv, admin_database_url};
use serde_json::json;
use support::{Anika, Poster, World, await_deliveries, await_draining};

/// One fault test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts anika, a receiver, a subscription and 4 posters.
async fn running(
    extra_sub: serde_json::Value,
) -> (
    TestEnv,
    Anika,
    Receiver,
    World,
    Arc<Mutex<anika_testkit::Api>>,
    Poster,
) {
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    let receiver = Receiver::start().await;
    let world = World::new(&anika.api, &receiver, extra_sub).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = Arc::new(Mutex::new(anika.api.clone()));
    let poster = Poster::start(
        Arc::clone(&api),
        world.topic.clone(),
        world.publisher.clone(),
        4,
    );
    (env, anika, receiver, world, api, poster)
}

async fn posting_for(poster: &Poster, at_least: usize) {
    for _ in 0..200 {
        if poster.accepted_count() >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("posting stalled at {} accepted", poster.accepted_count());
}

fn report(what: &str, accepted: &[String], refused: u64, missing: &[String], duplicates: usize) {
    eprintln!(
        "{what}: {} accepted, {refused} refused or failed while disturbed, {} lost, {duplicates} duplicates",
        accepted.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{what}: {} events answered 202 were never delivered",
        missing.len()
    );
}

#[tokio::test]
async fn a_process_killed_with_sigkill_while_events_pour_in_loses_none_it_accepted() {
    let _serial = SERIAL.lock().await;
    let (env, anika, receiver, _world, api, poster) = running(json!({})).await;
    posting_for(&poster, 100).await;
    anika.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = Anika::up(&env, &[]).await;
    *api.lock().unwrap() = restarted.api.clone();
    let resumed_at = poster.accepted_count();
    posting_for(&poster, resumed_at + 100).await;
    let (accepted, refused) = poster.stop().await;
    let (missing, duplicates) =
        await_deliveries(&receiver, &accepted, Duration::from_secs(60)).await;
    report("SIGKILL", &accepted, refused, &missing, duplicates);
    restarted.terminate().await;
}

#[tokio::test]
async fn rabbitmq_dropping_every_connection_twice_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (env, anika, receiver, world, _api, poster) = running(json!({})).await;
    for round in 1..=2 {
        posting_for(&poster, round * 100).await;
        let closed = env.close_connections().await;
        assert!(closed > 0, "round {round}: nothing to close");
    }
    let done = poster.accepted_count();
    posting_for(&poster, done + 100).await;
    let (accepted, refused) = poster.stop().await;
    // Thousands may be accepted on a busy machine; a backlog that still drains is late.
    let (missing, duplicates) = await_draining(
        &receiver,
        &accepted,
        Duration::from_secs(60),
        Duration::from_secs(300),
    )
    .await;
    if !missing.is_empty() {
        // Where the missing ones are: still in the outbox, queued, or gone.
        let pool = anika_shared::db::connect(&env.database_url, 1)
            .await
            .unwrap();
        let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        let queue = format!("anika.sub.{}", world.subscriptions[0]);
        eprintln!(
            "{} missing; outbox {outbox}; queue (ready, unacked) {:?}",
            missing.len(),
            env.queue_counts(&queue).await
        );
    }
    report(
        "RabbitMQ connections closed",
        &accepted,
        refused,
        &missing,
        duplicates,
    );
    anika.terminate().await;
}

#[tokio::test]
async fn postgresql_cutting_every_connection_twice_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (env, anika, receiver, _world, _api, poster) = running(json!({})).await;
    let database = env.database_url.rsplit('/').next().unwrap().to_owned();
    let admin = anika_shared::db::connect(&admin_database_url(), 1)
        .await
        .expect("admin connection");
    for round in 1..=2 {
        posting_for(&poster, round * 100).await;
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&database)
        .fetch_all(&admin)
        .await
        .expect("terminate backends");
        assert!(!cut.is_empty(), "round {round}: no connections to cut");
    }
    let done = poster.accepted_count();
    posting_for(&poster, done + 100).await;
    let (accepted, refused) = poster.stop().await;
    let (missing, duplicates) =
        await_deliveries(&receiver, &accepted, Duration::from_secs(60)).await;
    report(
        "PostgreSQL connections terminated",
        &accepted,
        refused,
        &missing,
        duplicates,
    );
    admin.close().await;
    anika.terminate().await;
}

#[tokio::test]
async fn a_subscriber_down_for_the_whole_run_receives_everything_once_it_is_back() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    // A port nobody listens on yet: every delivery is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let placeholder = Receiver::start().await;
    let world = World::new(&anika.api, &placeholder, json!({})).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    anika
        .api
        .patch(
            &format!("/v1/subscriptions/{}", world.subscriptions[0]),
            &world.admin,
            json!({"url": url, "max_attempts": 30}),
        )
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut accepted = Vec::new();
    for n in 0..50 {
        accepted.push(
            world
                .post(&anika.api, json!({"n": n}))
                .await
                .expect("accepted"),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let receiver = Receiver::start_on(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let (missing, duplicates) =
        await_deliveries(&receiver, &accepted, Duration::from_secs(60)).await;
    report(
        "subscriber down, then back",
        &accepted,
        0,
        &missing,
        duplicates,
    );
    let dead: serde_json::Value = anika
        .api
        .get(
            &format!("/v1/subscriptions/{}/dead-letters", world.subscriptions[0]),
            &world.admin,
        )
        .await
        .expect(200);
    assert_eq!(
        dead["total"], 0,
        "nothing was dead-lettered while the breaker held the messages"
    );
    anika.terminate_cleanly().await;
}

#[tokio::test]
async fn a_poison_event_ends_in_the_dead_letter_queue_without_blocking_the_others() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    let receiver = Receiver::start().await;
    receiver.poison("poison", 500);
    receiver.always(Reply::Status(204));
    let world = World::new(&anika.api, &receiver, json!({"max_attempts": 4})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let poison = world
        .post(&anika.api, json!({"kind": "poison"}))
        .await
        .expect("accepted");
    let mut others = Vec::new();
    for n in 0..30 {
        others.push(
            world
                .post(&anika.api, json!({"n": n}))
                .await
                .expect("accepted"),
        );
    }
    let (missing, _) = await_deliveries(&receiver, &others, Duration::from_secs(20)).await;
    assert!(
        missing.is_empty(),
        "the poison event blocked {} others",
        missing.len()
    );
    let dead_path = format!("/v1/subscriptions/{}/dead-letters", world.subscriptions[0]);
    let mut dead = serde_json::Value::Null;
    for _ in 0..100 {
        dead = anika.api.get(&dead_path, &world.admin).await.expect(200);
        if dead["total"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead["total"], 1, "{dead}");
    assert_eq!(dead["items"][0]["event_id"], poison.as_str());
    assert_eq!(dead["items"][0]["attempts"], 4);
    let tries = receiver
        .received()
        .iter()
        .filter(|r| r.header("webhook-id") == Some(poison.as_str()))
        .count();
    assert_eq!(tries, 4);
    assert_eq!(
        env.queue_depth(&format!("anika.dlq.{}", world.subscriptions[0]))
            .await,
        Some(1)
    );
    // Retries and dead letters went out on the dispatcher's publisher channel; a
    // clean stop closes it before the connection, so nothing is logged at ERROR.
    anika.terminate_cleanly().await;
}
