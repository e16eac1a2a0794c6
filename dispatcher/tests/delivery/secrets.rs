//! Sealed secrets at delivery: a moved ciphertext stops delivery (logged, counted, nothing
//! unsigned), a main-key rotation under load keeps every delivery verifiable, and no secret
//! reaches the logs or the metrics.

use std::{collections::HashSet, time::Duration};

use anika_shared::{
    domain::WebhookSecret,
    secret_rows,
    secrets::{Column, KeyRing, MainKeyId, Sealed, Slot},
};
use anika_testkit::{LogCapture, Receiver, TEST_SECRET_KEYS, secret_spellings};
use serde_json::json;

use crate::helpers::{OPERATOR_KEY, Setup};

fn verify(secret: &str, request: &anika_testkit::Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .is_ok()
}

#[tokio::test]
async fn a_secret_copied_from_another_subscription_stops_its_delivery_until_rotated_and_nothing_goes_out_unsigned()
 {
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
    // Someone with write access to the database gives `other` the first subscription's secret.
    sqlx::query(
        "UPDATE subscriptions SET secret = (SELECT secret FROM subscriptions WHERE id = $1::uuid) \
         WHERE id = $2::uuid",
    )
    .bind(s.sub_id())
    .bind(other_id)
    .execute(&s.app.ctx.pool)
    .await
    .unwrap();
    // The reconcile re-reads the catalog: `other` no longer opens, so its consumer stops.
    let queue = format!("anika.sub.{other_id}");
    s.app
        .eventually(
            "the consumer of `other` stops",
            Duration::from_secs(10),
            || async { s.app.env.consumers(&queue).await == Some(0) },
        )
        .await;

    s.publish(json!({"n": 1})).await;
    let got = s.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(verify(s.sub["secret"].as_str().unwrap(), &got[0]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        other_receiver.received().is_empty(),
        "nothing sent with a secret that does not open"
    );
    assert_eq!(
        s.app.env.queue_depth(&queue).await,
        Some(1),
        "the event waits"
    );
    let logged = logs.text();
    assert!(
        logged.contains("a stored webhook secret does not open")
            && logged.contains(&format!("subscriptions.secret of {other_id}")),
        "logged with its place"
    );
    assert!(
        s.app
            .ctx
            .metrics
            .render()
            .contains("anika_secrets_unopenable_total{column=\"subscriptions.secret\"}"),
        "counted"
    );

    // Rotating the secret repairs it; the waiting event goes out signed with the new one.
    let rotated = s
        .app
        .api
        .post(
            &format!("/v1/subscriptions/{other_id}/rotate-secret"),
            &s.dealer.admin,
            json!({}),
        )
        .await
        .expect(200);
    let got = other_receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert!(verify(rotated["secret"].as_str().unwrap(), &got[0]));
    assert!(
        !verify(s.sub["secret"].as_str().unwrap(), &got[0]),
        "not signed with the other subscription's secret"
    );
}

#[tokio::test]
async fn rotating_the_main_key_while_events_flow_keeps_every_delivery_verifiable_and_the_old_key_can_go()
 {
    let old = KeyRing::generate_entry(&MainKeyId::parse("old-1").unwrap());
    let new = KeyRing::generate_entry(&MainKeyId::parse("new-1").unwrap());
    let s = Setup::new(&[("secret_keys", &old)], json!({})).await;
    let old_secret = s.sub["secret"].as_str().unwrap().to_owned();
    // A rotation too, so the previous secret (sealed in its own column) is rewrapped as well.
    let rotated = s
        .app
        .api
        .post(
            &format!("/v1/subscriptions/{}/rotate-secret", s.sub_id()),
            &s.dealer.admin,
            json!({}),
        )
        .await
        .expect(200);
    let secret = rotated["secret"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;

    const EVENTS: usize = 120;
    let publishing = async {
        let mut ids = HashSet::new();
        for n in 0..EVENTS {
            ids.insert(s.publish(json!({"n": n})).await.to_string());
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        ids
    };
    let rotating = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Step 1: every role restarts with the new key first and the old one still in the ring.
        s.app.stop_dispatcher().await;
        let both = KeyRing::parse(&format!("{new},{old}")).unwrap();
        s.app.start_dispatcher_with_ring(both.clone()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Step 2: `anika secrets rotate-main-key`, while deliveries go on.
        let report = secret_rows::rewrap_all(&s.app.ctx.pool, &both)
            .await
            .unwrap();
        assert_eq!(
            report.rewrapped, 3,
            "signing key, secret, previous secret: {report:?}"
        );
        assert!(report.failed.is_empty(), "{report:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Step 3: the old key leaves the ring.
        let only_new = KeyRing::parse(&new).unwrap();
        let check = secret_rows::check(&s.app.ctx.pool, &only_new)
            .await
            .unwrap();
        assert!(check.healthy(), "{check:?}");
        s.app.stop_dispatcher().await;
        s.app.start_dispatcher_with_ring(only_new).await;
    };
    let (published, ()) = tokio::join!(publishing, rotating);

    let mut delivered = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while delivered.len() < EVENTS && std::time::Instant::now() < deadline {
        let got = s
            .receiver
            .wait_for(delivered.len() + 1, Duration::from_secs(2))
            .await;
        delivered = got
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
    }
    assert_eq!(delivered, published, "every event delivered");
    for request in s.receiver.received() {
        assert!(
            verify(&secret, &request) && verify(&old_secret, &request),
            "every delivery verifies with the current and the previous secret"
        );
    }
    // The stored values are now all under the new key, by their clear-text labels too.
    let in_use = secret_rows::key_ids_in_use(&s.app.ctx.pool).await.unwrap();
    assert_eq!(
        in_use.keys().map(MainKeyId::as_str).collect::<Vec<_>>(),
        ["new-1"]
    );
}

#[tokio::test]
async fn no_secret_the_test_creates_appears_in_the_logs_or_the_metrics() {
    let logs = LogCapture::start();
    let s = Setup::new(&[("reconcile_interval", "300ms")], json!({})).await;
    let mut secrets = vec![s.sub["secret"].as_str().unwrap().to_owned()];
    let rotated = s
        .app
        .api
        .post(
            &format!("/v1/subscriptions/{}/rotate-secret", s.sub_id()),
            &s.dealer.admin,
            json!({}),
        )
        .await
        .expect(200);
    secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..5 {
        s.publish(json!({"n": n})).await;
    }
    let got = s.receiver.wait_for(5, Duration::from_secs(10)).await;
    assert!(got.iter().all(|r| verify(&secrets[1], r)));
    anika_catalog::keys::rotate_signing_key(
        &s.app.ctx.pool,
        &s.app.ctx.secrets,
        &anika_shared::audit::Actor::cli(),
    )
    .await
    .unwrap();
    s.app.api.token(OPERATOR_KEY).await;
    // A value that does not open, for the error paths' log lines.
    let b = s
        .app
        .subscribe(&s.dealer.admin, &s.topic, &s.receiver.url("/b"), json!({}))
        .await;
    secrets.push(b["secret"].as_str().unwrap().to_owned());
    sqlx::query(
        "UPDATE subscriptions SET secret = (SELECT secret FROM subscriptions WHERE id = $1::uuid) WHERE id = $2::uuid",
    )
    .bind(s.sub_id())
    .bind(b["id"].as_str().unwrap())
    .execute(&s.app.ctx.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let logged = logs.text();
    // The capture works: it holds lines from the catalog, the dispatcher and sqlx.
    assert!(logged.contains("created a token signing key"), "captured");
    assert!(logged.contains("consumer started"), "captured at DEBUG");
    assert!(logged.contains("a stored webhook secret does not open"));
    let metrics = s.app.ctx.metrics.render();

    let mut forbidden: Vec<String> = Vec::new();
    for secret in &secrets {
        forbidden.push(secret.clone());
        forbidden.extend(secret_spellings(
            WebhookSecret::parse(secret).unwrap().key_bytes(),
        ));
    }
    let keys: Vec<(String, String)> =
        sqlx::query_as("SELECT kid, private_key_sealed FROM signing_keys")
            .fetch_all(&s.app.ctx.pool)
            .await
            .unwrap();
    assert_eq!(keys.len(), 2);
    for (kid, sealed) in keys {
        let der = s
            .app
            .ctx
            .secrets
            .open(
                &Sealed::parse(&sealed).unwrap(),
                Slot::new(Column::SigningKeyPrivateKey, &kid),
            )
            .unwrap();
        forbidden.extend(secret_spellings(&der));
        let seed_at = der.windows(2).position(|w| w == [0x04, 0x20]).unwrap() + 2;
        forbidden.extend(secret_spellings(&der[seed_at..seed_at + 32]));
    }
    let main_key = TEST_SECRET_KEYS.split_once(':').unwrap().1;
    forbidden.push(main_key.to_owned());
    forbidden.extend(secret_spellings(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, main_key).unwrap(),
    ));
    for needle in &forbidden {
        assert!(!logged.contains(needle.as_str()), "a secret in the logs");
        assert!(
            !metrics.contains(needle.as_str()),
            "a secret in the metrics"
        );
    }
    assert!(
        !logged.contains("whsec_"),
        "no webhook secret in any form in the logs"
    );
}
