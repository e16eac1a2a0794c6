//! Secrets at rest: nothing in clear in any table, sealed values bound to their row and column,
//! plain rows of an earlier version sealed at start-up, a ring that lacks a used key refused.

use anika_shared::{
    Context,
    domain::WebhookSecret,
    secret_rows,
    secrets::{Column, KeyRing, Sealed, Slot},
};
use anika_testkit::{TEST_SECRET_KEYS, secret_spellings};
use serde_json::json;

use crate::helpers::{App, OPERATOR_KEY};

/// The Ed25519 private key (PKCS#8 DER) of signing key `kid`, opened with the test ring.
pub fn open_signing_key(app: &App, kid: &str, sealed: &str) -> Vec<u8> {
    app.ctx
        .secrets
        .open(
            &Sealed::parse(sealed).expect("sealed"),
            Slot::new(Column::SigningKeyPrivateKey, kid),
        )
        .expect("the signing key opens")
        .to_vec()
}

/// A stored webhook secret of subscription `id`, opened and shown as `whsec_…`.
pub fn open_webhook_secret(app: &App, id: &str, column: Column, stored: &str) -> String {
    WebhookSecret::open(stored, &app.ctx.secrets, Slot::new(column, id))
        .expect("the webhook secret opens")
        .expose()
}

/// Every row of every table of the database, as JSON text, one row per line.
async fn dump_every_table(app: &App) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&app.ctx.pool)
    .await
    .unwrap();
    assert!(tables.len() > 5, "{tables:?}");
    let mut dump = String::new();
    for table in tables {
        let sql = format!(
            "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM \"{table}\" t"
        );
        let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&app.ctx.pool)
            .await
            .unwrap();
        dump.push_str(&rows);
        dump.push('\n');
    }
    dump
}

/// The 32-byte Ed25519 seed inside a PKCS#8 document (the OCTET STRING of 32 bytes).
fn ed25519_seed(pkcs8: &[u8]) -> Vec<u8> {
    let at = pkcs8
        .windows(2)
        .position(|w| w == [0x04, 0x20])
        .expect("the seed's OCTET STRING");
    pkcs8[at + 2..at + 34].to_vec()
}

/// Every signing private key, opened: (kid, PKCS#8 DER).
async fn signing_keys(app: &App) -> Vec<(String, Vec<u8>)> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT kid, private_key_sealed FROM signing_keys")
            .fetch_all(&app.ctx.pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(kid, sealed)| {
            let der = open_signing_key(app, &kid, &sealed);
            (kid, der)
        })
        .collect()
}

#[tokio::test]
async fn no_signing_key_and_no_webhook_secret_is_in_clear_in_any_column_of_any_table() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let mut shown = Vec::new();
    for _ in 0..2 {
        let sub = app.subscription(&dealer.admin, &topic).await;
        shown.push(sub["secret"].as_str().unwrap().to_owned());
        let rotated = app
            .api
            .post(
                &format!(
                    "/v1/subscriptions/{}/rotate-secret",
                    sub["id"].as_str().unwrap()
                ),
                &dealer.admin,
                json!({}),
            )
            .await
            .expect(200);
        shown.push(rotated["secret"].as_str().unwrap().to_owned());
    }
    anika_catalog::keys::rotate_signing_key(
        &app.ctx.pool,
        &app.ctx.secrets,
        &anika_shared::audit::Actor::cli(),
    )
    .await
    .unwrap();
    // A token from the new key, so it was opened and used.
    app.api.token(OPERATOR_KEY).await;
    let keys = signing_keys(&app).await;
    assert_eq!(keys.len(), 2, "the first key and the rotated-in one");

    let dump = dump_every_table(&app).await;
    assert!(
        dump.contains("anika-sealed:v1:test-1:"),
        "sealed values are there"
    );
    assert!(!dump.contains("whsec_"), "a whsec_ secret in clear");
    for secret in &shown {
        let bytes = WebhookSecret::parse(secret).unwrap().key_bytes().to_vec();
        for spelling in secret_spellings(&bytes) {
            assert!(!dump.contains(&spelling), "webhook secret bytes in clear");
        }
    }
    for (kid, der) in &keys {
        for material in [der.clone(), ed25519_seed(der)] {
            for spelling in secret_spellings(&material) {
                assert!(!dump.contains(&spelling), "signing key {kid} in clear");
            }
        }
    }
}

#[tokio::test]
async fn a_sealed_secret_copied_to_another_row_or_column_does_not_open() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let a = app.subscription(&dealer.admin, &topic).await;
    let b = app.subscription(&dealer.admin, &topic).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    sqlx::query(
        "UPDATE subscriptions SET secret = (SELECT secret FROM subscriptions WHERE id = $1::uuid), \
                                  previous_secret = (SELECT secret FROM subscriptions WHERE id = $1::uuid), \
                                  previous_secret_expires_at = now() + interval '1 hour' \
         WHERE id = $2::uuid",
    )
    .bind(a_id)
    .bind(b_id)
    .execute(&app.ctx.pool)
    .await
    .unwrap();

    let report = secret_rows::check(&app.ctx.pool, &app.ctx.secrets)
        .await
        .unwrap();
    assert!(!report.healthy());
    let refused: Vec<&str> = report
        .refused
        .iter()
        .map(|(slot, _)| slot.as_str())
        .collect();
    assert_eq!(
        refused,
        [
            format!("subscriptions.secret of {b_id}"),
            format!("subscriptions.previous_secret of {b_id}"),
        ],
        "{report:?}"
    );
    assert!(
        report.refused[0].1.contains("moved from another row"),
        "{report:?}"
    );
    // Moving a signing key's sealed value to another kid is refused the same way.
    let sealed: String = sqlx::query_scalar("SELECT private_key_sealed FROM signing_keys LIMIT 1")
        .fetch_one(&app.ctx.pool)
        .await
        .unwrap();
    assert!(
        app.ctx
            .secrets
            .open(
                &Sealed::parse(&sealed).unwrap(),
                Slot::new(Column::SigningKeyPrivateKey, "another-kid")
            )
            .is_err()
    );

    // Rotating the broken subscription's secret repairs it (without overlap: the old one is unusable).
    let rotated = app
        .api
        .post(
            &format!("/v1/subscriptions/{b_id}/rotate-secret"),
            &dealer.admin,
            json!({}),
        )
        .await
        .expect(200);
    let (secret, previous): (String, Option<String>) =
        sqlx::query_as("SELECT secret, previous_secret FROM subscriptions WHERE id = $1::uuid")
            .bind(b_id)
            .fetch_one(&app.ctx.pool)
            .await
            .unwrap();
    assert_eq!(
        open_webhook_secret(&app, b_id, Column::SubscriptionSecret, &secret),
        rotated["secret"].as_str().unwrap()
    );
    assert_eq!(previous, None);
    let metrics = app.ctx.metrics.render();
    assert!(
        metrics.contains("anika_secrets_unopenable_total{column=\"subscriptions.secret\"}"),
        "counted"
    );
}

#[tokio::test]
async fn plain_text_secrets_of_an_earlier_version_are_sealed_at_start_up_by_one_of_two_racing_processes()
 {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app.subscription(&dealer.admin, &topic).await;
    let id = sub["id"].as_str().unwrap();
    let (kid, der) = signing_keys(&app).await.remove(0);
    // What a database of the previous version holds: everything in clear.
    let (plain, previous) = (
        WebhookSecret::generate().expose(),
        WebhookSecret::generate().expose(),
    );
    sqlx::query(
        "UPDATE subscriptions SET secret = $2, previous_secret = $3, \
         previous_secret_expires_at = now() + interval '1 hour' WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(&plain)
    .bind(&previous)
    .execute(&app.ctx.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE signing_keys SET private_key = $2, private_key_sealed = NULL WHERE kid = $1",
    )
    .bind(&kid)
    .bind(&der)
    .execute(&app.ctx.pool)
    .await
    .unwrap();

    // Two processes start at once.
    let config = || app.env.config(&[]);
    let (one, two) = tokio::join!(
        Context::connect(config(), "first"),
        Context::connect(config(), "second")
    );
    one.expect("the first starts");
    two.expect("the second starts");

    let (secret, stored_previous): (String, String) =
        sqlx::query_as("SELECT secret, previous_secret FROM subscriptions WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&app.ctx.pool)
            .await
            .unwrap();
    assert_eq!(
        open_webhook_secret(&app, id, Column::SubscriptionSecret, &secret),
        plain
    );
    assert_eq!(
        open_webhook_secret(
            &app,
            id,
            Column::SubscriptionPreviousSecret,
            &stored_previous
        ),
        previous
    );
    let (clear, sealed): (Option<Vec<u8>>, String) =
        sqlx::query_as("SELECT private_key, private_key_sealed FROM signing_keys WHERE kid = $1")
            .bind(&kid)
            .fetch_one(&app.ctx.pool)
            .await
            .unwrap();
    assert_eq!(clear, None, "the plain DER is gone");
    assert_eq!(open_signing_key(&app, &kid, &sealed), der);
    let report = secret_rows::check(&app.ctx.pool, &app.ctx.secrets)
        .await
        .unwrap();
    assert!(report.healthy(), "{report:?}");
    assert_eq!(report.total(), 3, "{report:?}");
}

#[tokio::test]
async fn start_up_with_a_ring_that_lacks_a_key_in_use_fails_and_names_the_key() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    app.subscription(&dealer.admin, &topic).await;

    let other =
        KeyRing::generate_entry(&anika_shared::secrets::MainKeyId::parse("other-2").unwrap());
    let error = Context::connect(app.env.config(&[("secret_keys", &other)]), "wrong ring")
        .await
        .expect_err("a ring without test-1 is refused");
    let message = error.to_string();
    assert!(message.contains("`test-1`"), "{message}");
    assert!(message.contains("ANIKA_SECRET_KEYS"), "{message}");
    assert!(!message.contains(&other[8..]), "never the key itself");

    // With test-1 anywhere in the ring it starts.
    let both = format!("{other},{TEST_SECRET_KEYS}");
    Context::connect(app.env.config(&[("secret_keys", &both)]), "both")
        .await
        .expect("starts with the key in the ring");
    // Without any ring it refuses before touching the database, and says what to do.
    let mut unset = app.env.config(&[]);
    unset.secret_keys = None;
    let message = Context::connect(unset, "no ring")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ANIKA_SECRET_KEYS is not set"),
        "{message}"
    );
}

#[tokio::test]
async fn rotating_the_main_key_rewraps_every_value_and_then_the_old_key_can_go() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app.subscription(&dealer.admin, &topic).await;
    let id = sub["id"].as_str().unwrap();
    app.api
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            &dealer.admin,
            json!({}),
        )
        .await
        .expect(200);

    let new = KeyRing::generate_entry(&anika_shared::secrets::MainKeyId::parse("new-1").unwrap());
    let rotating = KeyRing::parse(&format!("{new},{TEST_SECRET_KEYS}")).unwrap();
    let report = secret_rows::rewrap_all(&app.ctx.pool, &rotating)
        .await
        .unwrap();
    assert_eq!((report.rewrapped, report.current), (3, 0), "{report:?}");
    assert!(report.failed.is_empty());
    let again = secret_rows::rewrap_all(&app.ctx.pool, &rotating)
        .await
        .unwrap();
    assert_eq!((again.rewrapped, again.current), (0, 3), "idempotent");

    let only_new = KeyRing::parse(&new).unwrap();
    let report = secret_rows::check(&app.ctx.pool, &only_new).await.unwrap();
    assert!(report.healthy(), "{report:?}");
    assert_eq!(report.opened.values().sum::<u64>(), 3);
    // The old ring alone no longer opens anything, and says which key it lacks.
    let old_only = secret_rows::check(&app.ctx.pool, &app.ctx.secrets)
        .await
        .unwrap();
    assert_eq!(
        old_only
            .unknown
            .keys()
            .map(|k| k.as_str())
            .collect::<Vec<_>>(),
        ["new-1"]
    );
    // A catalog on the new ring alone signs tokens with the rewrapped signing key.
    let ctx = Context::connect(app.env.config(&[("secret_keys", &new)]), "new ring")
        .await
        .expect("starts on the new ring");
    let state = anika_catalog::State::new(ctx).await.expect("catalog");
    let token = state
        .signer
        .issue(
            anika_shared::domain::ApiKeyId::from(uuid::Uuid::now_v7()),
            None,
            anika_shared::domain::Role::Operator,
        )
        .await
        .expect("signed with the rewrapped key");
    assert!(!token.is_empty());
}
