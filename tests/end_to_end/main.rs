//! The real `anika` binary, end to end: delivery, a SIGKILL mid-delivery, the operator CLI, the secrets CLI.

#[path = "../support/mod.rs"]
mod support;

use std::{process::Stdio, time::Duration};

use anika_testkit::{Receiver, Reply, TEST_SECRET_KEYS, TestEnv};
use serde_json::{Value, json};
use support::{Anika, World, await_deliveries, run_cli, run_cli_with};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn an_event_posted_to_the_binary_is_delivered_signed_and_can_be_found_with_its_delivery() {
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    let receiver = Receiver::start().await;
    let world = World::new(&anika.api, &receiver, json!({})).await;
    let sub = anika
        .api
        .get(
            &format!("/v1/subscriptions/{}", world.subscriptions[0]),
            &world.admin,
        )
        .await
        .expect(200);
    assert_eq!(sub["status"], "active");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let id = world
        .post(&anika.api, json!({"car": "Golf", "customer": "c-1"}))
        .await
        .expect("accepted");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), Some(id.as_str()));
    assert_eq!(got[0].json()["data"]["car"], "Golf");
    assert!(
        got[0]
            .header("webhook-signature")
            .unwrap()
            .starts_with("v1,")
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = anika
        .api
        .get(&format!("/v1/events/{id}"), &world.admin)
        .await
        .expect(200);
    assert_eq!(event["data"]["customer"], "c-1");
    let deliveries = event["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "{event}");
    assert_eq!(deliveries[0]["status"], "succeeded");
    assert_eq!(deliveries[0]["attempts"], 1);
    anika.terminate_cleanly().await;
}

#[tokio::test]
async fn a_process_killed_with_sigkill_mid_delivery_loses_nothing() {
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    let receiver = Receiver::start().await;
    // Slow enough that deliveries are in flight when the process dies.
    receiver.always(Reply::Delay(Duration::from_millis(300)));
    let world = World::new(&anika.api, &receiver, json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut accepted = Vec::new();
    for n in 0..40 {
        accepted.push(
            world
                .post(&anika.api, json!({"n": n}))
                .await
                .expect("accepted"),
        );
    }
    receiver.wait_for(3, Duration::from_secs(10)).await;
    anika.kill().await;
    let delivered_before = receiver.received().len();
    assert!(
        delivered_before < accepted.len(),
        "the kill came mid-delivery"
    );

    receiver.always(Reply::Status(204));
    let restarted = Anika::up(&env, &[]).await;
    let (missing, duplicates) =
        await_deliveries(&receiver, &accepted, Duration::from_secs(30)).await;
    assert!(
        missing.is_empty(),
        "{} of {} accepted events never arrived",
        missing.len(),
        accepted.len()
    );
    eprintln!(
        "SIGKILL mid-delivery: {} events, {duplicates} duplicates",
        accepted.len()
    );
    restarted.terminate_cleanly().await;
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn the_operator_cli_lists_replays_and_purges_dead_letters_and_replays_the_log() {
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));
    let world = World::new(&anika.api, &receiver, json!({"max_attempts": 1})).await;
    let sub = world.subscriptions[0].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = chrono::Utc::now();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            world
                .post(&anika.api, json!({"n": n}))
                .await
                .expect("accepted"),
        );
    }
    let dead_path = format!("/v1/subscriptions/{sub}/dead-letters");
    for _ in 0..100 {
        if anika.api.get(&dead_path, &world.admin).await.expect(200)["total"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (code, out, err) = run_cli(&env, &["subscriptions", "--status", "failing", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let failing = json_of(&out);
    assert_eq!(failing.as_array().unwrap().len(), 1, "{failing}");
    assert_eq!(failing[0]["id"], sub.as_str());
    assert_eq!(failing[0]["dead_letters"], 3);

    let (code, out, err) = run_cli(&env, &["dlq", "list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let summary = json_of(&out);
    assert_eq!(summary[0]["subscription_id"], sub.as_str());
    assert_eq!(summary[0]["dead_letters"], 3);

    let (code, out, err) = run_cli(&env, &["dlq", "list", "--subscription", &sub, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let list = json_of(&out);
    assert_eq!(list["in_queue"], 3);
    let mut listed: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);

    // The endpoint is fixed: replay one, then the rest.
    receiver.always(Reply::Status(204));
    let (code, out, err) = run_cli(
        &env,
        &[
            "dlq",
            "replay",
            "--subscription",
            &sub,
            "--limit",
            "1",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["replayed"], 1);
    let (code, out, _) = run_cli(&env, &["dlq", "replay", "--subscription", &sub, "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["replayed"], 2);
    let (missing, _) = await_deliveries(&receiver, &ids, Duration::from_secs(10)).await;
    assert!(missing.is_empty(), "replayed dead letters arrive");

    // Replay the log window: the three events once more.
    let before = receiver.received().len();
    let since = (started - chrono::Duration::seconds(1)).to_rfc3339();
    let (code, out, err) = run_cli(
        &env,
        &[
            "replay",
            "--subscription",
            &sub,
            "--since",
            &since,
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["enqueued"], 3);
    assert!(
        receiver
            .wait_for(before + 3, Duration::from_secs(10))
            .await
            .len()
            >= before + 3
    );

    // Dead-letter one more and purge it.
    receiver.always(Reply::Status(500));
    world
        .post(&anika.api, json!({"n": "last"}))
        .await
        .expect("accepted");
    for _ in 0..100 {
        if anika.api.get(&dead_path, &world.admin).await.expect(200)["total"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, err) = run_cli(&env, &["dlq", "purge", "--subscription", &sub, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["purged"], 1);
    assert_eq!(
        anika.api.get(&dead_path, &world.admin).await.expect(200)["total"],
        0
    );

    // Text output is a table a person can read.
    let (code, out, _) = run_cli(&env, &["subscriptions"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("SUBSCRIPTION"), "{out}");
    let (code, _, err) = run_cli(&env, &["dlq", "replay", "--subscription", "not-an-id"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("subscription id"), "{err}");

    // Each of those recoveries is in the audit log, by the command line (an operator, no key).
    let (code, out, err) = run_cli(&env, &["audit", "--json", "--limit", "1000"]).await;
    assert_eq!(code, 0, "{err}");
    let entries = json_of(&out);
    let by_cli: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["actor"] == json!({"api_key_id": null, "partner_id": null, "role": "operator"})
        })
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        by_cli,
        [
            "dead_letters.purged",
            "events.replayed",
            "dead_letters.replayed",
            "dead_letters.replayed"
        ],
        "newest first"
    );
    let (code, out, err) = run_cli(
        &env,
        &[
            "audit",
            "--action",
            "dead_letters.replayed",
            "--limit",
            "1",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let newest = json_of(&out);
    assert_eq!(newest.as_array().unwrap().len(), 1);
    assert_eq!(newest[0]["changes"]["replayed"]["new"], 2);
    assert_eq!(
        newest[0]["target"],
        json!({"type": "subscription", "id": sub})
    );
    let (code, out, _) = run_cli(&env, &["audit", "--since", &since]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("AT"), "{out}");
    assert!(
        out.contains("dead_letters.purged") && out.contains("cli (operator)"),
        "{out}"
    );
    let (code, _, err) = run_cli(&env, &["audit", "--action", "grant.given"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("grant.created"), "{err}");
    anika.terminate_cleanly().await;
}

#[tokio::test]
async fn a_dead_letter_replay_killed_halfway_loses_nothing() {
    let env = TestEnv::new().await;
    // Without the breaker, a dead endpoint dead-letters at full speed: that is the setup wanted here.
    let anika = Anika::up(&env, &[("ANIKA_CIRCUIT_BREAKER_AFTER", "0")]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));
    let world = World::new(&anika.api, &receiver, json!({"max_attempts": 1})).await;
    let sub = world.subscriptions[0].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = 2000;
    let mut ids: Vec<String> = Vec::new();
    for chunk in 0..total / 100 {
        let events: Vec<Value> = (0..100)
            .map(|n| json!({"data": {"chunk": chunk, "n": n}}))
            .collect();
        let answer = anika
            .api
            .post(
                &format!("/v1/topics/{}/events/batch", world.topic),
                &world.publisher,
                json!({"events": events}),
            )
            .await
            .expect(202);
        ids.extend(
            answer["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned()),
        );
    }
    let dead_path = format!("/v1/subscriptions/{sub}/dead-letters");
    for _ in 0..600 {
        if anika.api.get(&dead_path, &world.admin).await.expect(200)["total"] == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        anika.api.get(&dead_path, &world.admin).await.expect(200)["total"],
        total
    );
    receiver.always(Reply::Status(204));
    let failed_requests = receiver.received().len();

    // Start a replay and kill it as soon as it reports progress.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_anika"))
        .args(["dlq", "replay", "--subscription", &sub])
        .envs(support::child_env(&env, &[]))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn replay");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut progressed = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("replaying dead letters") {
            progressed = true;
            break;
        }
    }
    assert!(progressed, "the replay reported progress");
    child.kill().await.unwrap();

    // Nothing is lost: every event is still a dead letter or was delivered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered: std::collections::HashSet<String> = receiver.received()[failed_requests..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    let dead: std::collections::HashSet<String> =
        sqlx_dead_letters(&env, &sub).await.into_iter().collect();
    let lost: Vec<&String> = ids
        .iter()
        .filter(|id| !delivered.contains(*id) && !dead.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} events neither delivered nor dead-lettered after the kill",
        lost.len()
    );
    assert!(
        delivered.len() < total as usize,
        "the kill came before the end"
    );
    let in_queue = env.queue_depth(&format!("anika.dlq.{sub}")).await.unwrap() as usize;
    assert!(
        in_queue + delivered.len() >= total as usize,
        "{in_queue} queued + {} delivered",
        delivered.len()
    );

    // Running it again finishes the job.
    let (code, _, err) = run_cli(&env, &["dlq", "replay", "--subscription", &sub, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let (missing, duplicates) = await_deliveries(&receiver, &ids, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "{} never delivered", missing.len());
    eprintln!("interrupted replay: {total} dead letters, {duplicates} duplicates");
    assert_eq!(env.queue_depth(&format!("anika.dlq.{sub}")).await, Some(0));
    assert_eq!(
        anika.api.get(&dead_path, &world.admin).await.expect(200)["total"],
        0
    );
    anika.terminate_cleanly().await;
}

/// Event ids with a dead-letter record, read through the API's own database.
async fn sqlx_dead_letters(env: &TestEnv, sub: &str) -> Vec<String> {
    let pool = anika_shared::db::connect(&env.database_url, 1)
        .await
        .expect("db");
    let ids = sqlx::query_scalar(
        "SELECT event_id::text FROM dead_letters WHERE subscription_id = $1::uuid",
    )
    .bind(sub)
    .fetch_all(&pool)
    .await
    .expect("dead letters");
    pool.close().await;
    ids
}

#[tokio::test]
async fn the_openapi_document_of_anika_up_describes_exactly_the_api_contract() {
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    let api: Value = reqwest::get(format!("{}/openapi.json", anika.api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut found: Vec<String> = Vec::new();
    for (path, item) in api["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            found.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    found.sort();
    // Every route of API.md, and nothing else.
    let mut contract = vec![
        "POST /v1/auth/token",
        "GET /.well-known/jwks.json",
        "POST /v1/api-keys",
        "GET /v1/api-keys",
        "DELETE /v1/api-keys/{id}",
        "POST /v1/partners",
        "GET /v1/partners",
        "GET /v1/partners/{id}",
        "POST /v1/topics",
        "GET /v1/topics",
        "GET /v1/topics/{id}",
        "PATCH /v1/topics/{id}",
        "DELETE /v1/topics/{id}",
        "PUT /v1/topics/{id}/grants/{partner_id}",
        "DELETE /v1/topics/{id}/grants/{partner_id}",
        "GET /v1/topics/{id}/grants",
        "POST /v1/subscriptions",
        "GET /v1/subscriptions",
        "GET /v1/subscriptions/{id}",
        "PATCH /v1/partners/{id}",
        "PATCH /v1/subscriptions/{id}",
        "DELETE /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id}/rotate-secret",
        "POST /v1/topics/{id}/events",
        "POST /v1/topics/{id}/events/batch",
        "GET /v1/events",
        "GET /v1/events/{id}",
        "GET /v1/subscriptions/{id}/attempts",
        "GET /v1/subscriptions/{id}/dead-letters",
        "POST /v1/subscriptions/{id}/dead-letters/replay",
        "DELETE /v1/subscriptions/{id}/dead-letters",
        "POST /v1/subscriptions/{id}/replay",
        "GET /v1/audit-log",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    ];
    // Additions beyond API.md (which allows adding), documented in docs/console.md:
    // what the console's health panel and its "Send a test event" button use.
    contract.extend([
        "GET /v1/subscriptions/{id}/health",
        "POST /v1/subscriptions/{id}/test",
    ]);
    contract.sort();
    assert_eq!(found, contract);
    let docs = reqwest::get(format!("{}/docs/", anika.api.base))
        .await
        .unwrap();
    assert_eq!(docs.status(), 200, "the interactive docs are served");
    anika.terminate_cleanly().await;
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `anika serve <role>` on a port of its own, once it answers `/healthz`.
async fn serve(env: &TestEnv, role: &str) -> (support::Role, anika_testkit::Api) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let process = support::Role::start(env, role, &[("ANIKA_LISTEN", &listen)]);
    let api = anika_testkit::Api::new(listen.parse().unwrap());
    for _ in 0..300 {
        if reqwest::get(format!("{}/healthz", api.base))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (process, api);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("anika serve {role} did not answer within 30 s");
}

#[tokio::test]
async fn a_key_revoked_in_the_catalog_process_is_refused_by_the_ingest_process_on_the_very_next_request()
 {
    let env = TestEnv::new().await;
    let (catalog_process, catalog) = serve(&env, "catalog").await;
    let (ingest_process, ingest) = serve(&env, "ingest").await;
    let operator = catalog.token(support::OPERATOR_KEY).await;
    let dealer = catalog.partner(&operator, "dealer").await;
    let topic = catalog
        .post("/v1/topics", &dealer.admin, json!({"name": "car.chosen"}))
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = format!("/v1/topics/{topic}/events");
    for round in 0..3 {
        // A fresh publisher key each round; its token is verified (and cached) by ingest first.
        let key = catalog
            .post(
                "/v1/api-keys",
                &dealer.admin,
                json!({"role": "publisher", "name": format!("round {round}"), "partner_id": dealer.id}),
            )
            .await
            .expect(201);
        let token = catalog.token(key["api_key"].as_str().unwrap()).await;
        ingest
            .post(&events, &token, json!({"data": {"round": round}}))
            .await
            .expect(202);
        catalog
            .delete(
                &format!("/v1/api-keys/{}", key["id"].as_str().unwrap()),
                &dealer.admin,
            )
            .await
            .expect(204);
        let revoked_at = std::time::Instant::now();
        let mut after = ingest
            .post(&events, &token, json!({"data": {"round": round}}))
            .await;
        // The announcement comes with the commit; on a starved machine the listener task
        // may wake a moment after the next request (docs/architecture.md, known limits).
        while after.status == 202 && revoked_at.elapsed() < Duration::from_millis(100) {
            eprintln!(
                "round {round}: accepted {:?} after the revocation",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            after = ingest
                .post(&events, &token, json!({"data": {"round": round}}))
                .await;
        }
        assert_eq!(
            after.status, 401,
            "round {round}: the ingest process accepted a revoked key's token: {:?}",
            after.body
        );
        after.assert_problem();
    }
    catalog_process.kill().await;
    ingest_process.kill().await;
}

#[tokio::test]
async fn the_secrets_cli_checks_the_ring_rotates_the_main_key_and_a_ring_missing_a_used_key_stops_start_up()
 {
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    let receiver = Receiver::start().await;
    let world = World::new(&anika.api, &receiver, json!({})).await;
    anika.terminate_cleanly().await;

    let (code, out, err) = run_cli(&env, &["secrets", "check", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        report["opened"]["test-1"], 2,
        "the signing key and the webhook secret: {report}"
    );
    assert_eq!(report["healthy"], true);

    let (code, entry, err) = run_cli(&env, &["secrets", "new-key", "--id", "main-2"]).await;
    assert_eq!(code, 0, "{err}");
    let entry = entry.trim().to_owned();
    assert!(entry.starts_with("main-2:"), "{entry}");
    let rotating = format!("{entry},{TEST_SECRET_KEYS}");
    let (code, out, err) = run_cli_with(
        &env,
        &[("ANIKA_SECRET_KEYS", &rotating)],
        &["secrets", "rotate-main-key", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let rotated: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(rotated["rewrapped"], 2, "{rotated}");
    assert!(err.contains("the other keys may now leave"), "{err}");

    // The old ring alone: the check fails and names the key it lacks, and a role will not start.
    let (code, out, _) = run_cli(&env, &["secrets", "check"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("main-2: NOT IN ANIKA_SECRET_KEYS"), "{out}");
    let (code, _, err) = tokio::time::timeout(
        Duration::from_secs(60),
        run_cli(&env, &["serve", "catalog"]),
    )
    .await
    .expect("start-up is refused, not served");
    assert_ne!(code, 0);
    assert!(
        err.contains("`main-2`") && err.contains("ANIKA_SECRET_KEYS"),
        "{err}"
    );
    assert!(!err.contains(&entry[7..]), "never the key itself");

    // The new key alone: everything opens; deliveries go on, signed.
    let anika = Anika::up(&env, &[("ANIKA_SECRET_KEYS", &entry)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    world
        .post(&anika.api, json!({"car": "Golf"}))
        .await
        .expect("accepted");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        got[0]
            .header("webhook-signature")
            .unwrap()
            .starts_with("v1,")
    );
    anika.terminate_cleanly().await;
}
