//! API keys, access tokens, refresh tokens, signing keys.

use std::time::{Duration, Instant};

use anika_shared::auth::{REVOKED_REFRESH, Verifier};
use anika_testkit::Partner;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{App, OPERATOR_KEY};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

async fn exchange(app: &App, body: Value) -> crate::helpers::Answer {
    app.api
        .send(Method::POST, "/v1/auth/token", None, Some(&body))
        .await
}

#[tokio::test]
async fn an_api_key_buys_a_short_lived_eddsa_token_with_the_documented_claims() {
    let app = App::spawn().await;
    let body = exchange(
        &app,
        json!({"grant_type": "api_key", "api_key": OPERATOR_KEY}),
    )
    .await
    .expect(200);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() <= 900);
    assert!(body["refresh_token"].as_str().unwrap().len() > 40);
    let token = body["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert!(header.kid.is_some());
    let claims = claims_of(token);
    for claim in ["sub", "role", "iss", "aud", "iat", "exp", "jti", "nbf"] {
        assert!(!claims[claim].is_null(), "missing {claim}: {claims}");
    }
    assert_eq!(claims["role"], "operator");
    assert!(claims.get("pid").is_none(), "operators carry no pid");
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 900);

    let partner = app.partner("dealer").await;
    let partner_claims = claims_of(&partner.admin);
    assert_eq!(partner_claims["pid"], partner.id.as_str());
    assert_eq!(partner_claims["role"], "admin");
}

#[tokio::test]
async fn a_wrong_api_key_or_grant_type_is_refused() {
    let app = App::spawn().await;
    let wrong = exchange(
        &app,
        json!({"grant_type": "api_key", "api_key": "anika_nope"}),
    )
    .await;
    assert_eq!(wrong.status, 401);
    wrong.assert_problem();
    let unknown = exchange(&app, json!({"grant_type": "password", "password": "x"})).await;
    assert_eq!(unknown.status, 422);
    assert!(
        unknown.detail().contains("password"),
        "{}",
        unknown.detail()
    );
    let missing = exchange(&app, json!({"grant_type": "api_key"})).await;
    assert_eq!(missing.status, 422);
    assert_eq!(missing.pointers(), vec!["/api_key"]);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_ends_the_login() {
    let app = App::spawn().await;
    let first = exchange(
        &app,
        json!({"grant_type": "api_key", "api_key": OPERATOR_KEY}),
    )
    .await
    .expect(200);
    let refresh1 = first["refresh_token"].as_str().unwrap().to_owned();

    let second = exchange(
        &app,
        json!({"grant_type": "refresh_token", "refresh_token": refresh1}),
    )
    .await
    .expect(200);
    let refresh2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh1, refresh2, "refresh tokens rotate");
    app.api
        .get("/v1/partners", second["access_token"].as_str().unwrap())
        .await
        .expect(200);

    let reused = exchange(
        &app,
        json!({"grant_type": "refresh_token", "refresh_token": refresh1}),
    )
    .await;
    assert_eq!(reused.status, 401);
    assert!(
        reused.detail().contains("already used"),
        "{}",
        reused.detail()
    );
    // The whole family is revoked: the legitimate holder of refresh2 must log in again.
    let after = exchange(
        &app,
        json!({"grant_type": "refresh_token", "refresh_token": refresh2}),
    )
    .await;
    assert_eq!(after.status, 401);
}

/// A new API key of `partner` with `role`, and the tokens it bought.
async fn key_with_tokens(app: &App, partner: &Partner, role: &str) -> (Value, Value) {
    let key = app
        .api
        .post(
            "/v1/api-keys",
            &partner.admin,
            json!({"role": role, "name": "laptop"}),
        )
        .await
        .expect(201);
    let tokens = exchange(
        app,
        json!({"grant_type": "api_key", "api_key": key["api_key"].as_str().unwrap()}),
    )
    .await
    .expect(200);
    (key, tokens)
}

async fn revoke(app: &App, partner: &Partner, key: &Value) {
    app.api
        .delete(
            &format!("/v1/api-keys/{}", key["id"].as_str().unwrap()),
            &partner.admin,
        )
        .await
        .expect(204);
}

#[tokio::test]
async fn a_revoked_api_key_buys_nothing_and_its_refresh_tokens_die() {
    let app = App::spawn().await;
    let partner = app.partner("dealer").await;
    let (key, tokens) = key_with_tokens(&app, &partner, "publisher").await;
    let api_key = key["api_key"].as_str().unwrap();
    revoke(&app, &partner, &key).await;
    assert_eq!(
        exchange(&app, json!({"grant_type": "api_key", "api_key": api_key}))
            .await
            .status,
        401
    );
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(
        exchange(
            &app,
            json!({"grant_type": "refresh_token", "refresh_token": refresh})
        )
        .await
        .status,
        401
    );
}

#[tokio::test]
async fn a_revoked_api_keys_access_tokens_are_refused_at_once_here_and_by_other_processes() {
    let app = App::spawn().await;
    let partner = app.partner("dealer").await;
    let (key, tokens) = key_with_tokens(&app, &partner, "admin").await;
    let access = tokens["access_token"].as_str().unwrap();
    app.api.get("/v1/api-keys", access).await.expect(200);
    // Two other processes on the same database, each with its own verifier that has seen
    // the token: one follows the revocation announcements, one has no listener (as when
    // its connection for it is down) and must read the revoked keys before each answer.
    let config = &app.ctx.config;
    let other = || {
        Verifier::new(
            app.ctx.pool.clone(),
            &config.catalog.token_issuer,
            &config.catalog.token_audience,
        )
    };
    let (following, deaf) = (other(), other());
    following.follow();
    assert!(following.verify(access).await.is_ok());
    assert!(deaf.verify(access).await.is_ok());
    // The listener is up once it read the whole set after LISTEN: give it that moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    revoke(&app, &partner, &key).await;
    let refused = app.api.get("/v1/api-keys", access).await;
    assert_eq!(refused.status, 401, "refused at once where it was revoked");
    assert!(
        refused.body["detail"].as_str().unwrap().contains("revoked"),
        "{}",
        refused.body
    );
    assert!(
        deaf.verify(access).await.is_err(),
        "a process without the announcement accepted the token after the revocation returned"
    );
    // The announcement arrives with the commit; allow the listener task its wake-up.
    let revoked_at = Instant::now();
    while following.verify(access).await.is_ok() {
        assert!(
            revoked_at.elapsed() < Duration::from_millis(500),
            "the following process still accepts the token {:?} after the revocation (the periodic re-read is every {REVOKED_REFRESH:?})",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The partner's other keys are untouched.
    app.api
        .get("/v1/api-keys", &partner.admin)
        .await
        .expect(200);
}

/// The newest signing key, straight from the database, to forge tokens the server must still refuse.
async fn signing_key(app: &App) -> (String, Vec<u8>, Vec<u8>) {
    let (kid, sealed, public): (String, String, Vec<u8>) = sqlx::query_as(
        "SELECT kid, private_key_sealed, public_key FROM signing_keys ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.ctx.pool)
    .await
    .unwrap();
    let private = crate::secrets::open_signing_key(app, &kid, &sealed);
    (kid, private, public)
}

fn valid_claims(overrides: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "sub": uuid::Uuid::now_v7().to_string(), "role": "operator", "iss": "anika", "aud": "anika-api",
        "iat": now, "nbf": now, "exp": now + 300, "jti": "x",
    });
    for (k, v) in overrides.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn sign(kid: &str, private: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(private)).unwrap()
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let app = App::spawn().await;
    let (kid, private, public) = signing_key(&app).await;

    // Control: a token signed correctly with the real key is accepted.
    let good = sign(&kid, &private, &valid_claims(json!({})));
    app.api.get("/v1/partners", &good).await.expect(200);

    let real = app.operator.clone();
    let parts: Vec<&str> = real.split('.').collect();
    let mut forged: Vec<(&str, String)> = Vec::new();

    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    forged.push(("alg none", format!("{none_header}.{}.", parts[1])));

    let mut claims = claims_of(&real);
    claims["sub"] = json!(uuid::Uuid::now_v7().to_string());
    forged.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(claims.to_string().as_bytes()),
            parts[2]
        ),
    ));

    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs,
        &valid_claims(json!({})),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    forged.push(("HS256 keyed with the public key", hs256));
    let hs256_b64 = jsonwebtoken::encode(
        &hs,
        &valid_claims(json!({})),
        &EncodingKey::from_secret(b64(&public).as_bytes()),
    )
    .unwrap();
    forged.push(("HS256 keyed with the JWK x", hs256_b64));

    forged.push((
        "wrong audience",
        sign(
            &kid,
            &private,
            &valid_claims(json!({"aud": "someone-else"})),
        ),
    ));
    forged.push((
        "wrong issuer",
        sign(&kid, &private, &valid_claims(json!({"iss": "evil"}))),
    ));
    let past = chrono::Utc::now().timestamp() - 3600;
    forged.push((
        "expired",
        sign(
            &kid,
            &private,
            &valid_claims(json!({"iat": past - 900, "nbf": past - 900, "exp": past})),
        ),
    ));
    let future = chrono::Utc::now().timestamp() + 3600;
    forged.push((
        "not yet valid",
        sign(
            &kid,
            &private,
            &valid_claims(json!({"nbf": future, "exp": future + 300})),
        ),
    ));
    forged.push((
        "operator with a pid",
        sign(
            &kid,
            &private,
            &valid_claims(json!({"pid": uuid::Uuid::now_v7().to_string()})),
        ),
    ));

    let rng = aws_lc_rs::rand::SystemRandom::new();
    let other = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    forged.push((
        "unknown kid",
        sign("not-a-kid", other.as_ref(), &valid_claims(json!({}))),
    ));
    forged.push((
        "known kid, other key",
        sign(&kid, other.as_ref(), &valid_claims(json!({}))),
    ));
    forged.push(("garbage", "not.a.jwt".to_owned()));

    for (what, token) in forged {
        let answer = app.api.get("/v1/partners", &token).await;
        assert_eq!(answer.status, 401, "{what} was accepted: {}", answer.body);
        answer.assert_problem();
        assert_eq!(
            answer.headers.get("www-authenticate").unwrap(),
            "Bearer",
            "{what}"
        );
    }

    let missing = app.api.send(Method::GET, "/v1/partners", None, None).await;
    assert_eq!(missing.status, 401);
    assert!(missing.detail().contains("Bearer"), "{}", missing.detail());
}

#[tokio::test]
async fn a_rotated_signing_key_signs_new_tokens_while_old_ones_stay_valid() {
    let app = App::spawn().await;
    let old_token = app.operator.clone();
    let old_kid = jsonwebtoken::decode_header(&old_token)
        .unwrap()
        .kid
        .unwrap();

    let new_kid = anika_catalog::keys::rotate_signing_key(
        &app.ctx.pool,
        &app.ctx.secrets,
        &anika_shared::audit::Actor::cli(),
    )
    .await
    .unwrap();
    assert_ne!(old_kid, new_kid);

    let new_token = app.api.token(OPERATOR_KEY).await;
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .unwrap(),
        new_kid
    );
    app.api.get("/v1/partners", &new_token).await.expect(200);
    app.api.get("/v1/partners", &old_token).await.expect(200);

    let jwks = app
        .api
        .send(Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .expect(200);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{jwks}"
    );
    for key in jwks["keys"].as_array().unwrap() {
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert!(key.get("d").is_none(), "a private part was served: {key}");
    }

    // A gateway can verify a token with nothing but the JWKS.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == new_kid.as_str())
            .unwrap()
            .clone(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["anika-api"]);
    jsonwebtoken::decode::<Value>(
        &new_token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap();
}

#[tokio::test]
async fn the_bootstrap_operator_key_is_ensured_idempotently() {
    let app = App::spawn().await;
    // A second start with the same key (another process, a restart) adds nothing.
    anika_catalog::State::new(app.ctx.clone()).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE role = 'operator'")
        .fetch_one(&app.ctx.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn api_keys_are_shown_once_and_scoped_to_their_partner() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let bank = app.partner("bank").await;

    let created = app
        .api
        .post(
            "/v1/api-keys",
            &dealer.admin,
            json!({"role": "publisher", "name": "shop backend"}),
        )
        .await
        .expect(201);
    assert_eq!(created["partner_id"], dealer.id.as_str());
    assert!(created["api_key"].as_str().unwrap().starts_with("anika_"));

    let list = app.api.get("/v1/api-keys", &dealer.admin).await.expect(200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "admin + publisher + new key: {list}");
    assert!(
        items
            .iter()
            .all(|k| k.get("api_key").is_none() && k["partner_id"] == dealer.id.as_str())
    );
    assert_eq!(
        app.api.get("/v1/api-keys", &app.operator).await.expect(200)["items"]
            .as_array()
            .unwrap()
            .len(),
        6
    );

    let id = created["id"].as_str().unwrap();
    assert_eq!(
        app.api
            .delete(&format!("/v1/api-keys/{id}"), &bank.admin)
            .await
            .expect(404)["status"],
        404
    );
    assert_eq!(
        app.api.get("/v1/api-keys", &dealer.publisher).await.status,
        403
    );
    let operator_key = app
        .api
        .post(
            "/v1/api-keys",
            &dealer.admin,
            json!({"role": "operator", "name": "x"}),
        )
        .await;
    assert_eq!(operator_key.status, 403);
    let foreign = app
        .api
        .post(
            "/v1/api-keys",
            &dealer.admin,
            json!({"role": "admin", "name": "x", "partner_id": bank.id}),
        )
        .await;
    assert_eq!(foreign.status, 403);
    let unnamed = app
        .api
        .post(
            "/v1/api-keys",
            &app.operator,
            json!({"role": "admin", "name": "x"}),
        )
        .await;
    assert_eq!(unnamed.status, 422);
    assert_eq!(unnamed.pointers(), vec!["/partner_id"]);
    let nobody = app
        .api
        .post(
            "/v1/api-keys",
            &app.operator,
            json!({"role": "admin", "name": "x", "partner_id": uuid::Uuid::now_v7()}),
        )
        .await;
    assert_eq!(nobody.status, 422);
    assert_eq!(nobody.pointers(), vec!["/partner_id"]);
    let bad_role = app
        .api
        .post(
            "/v1/api-keys",
            &app.operator,
            json!({"role": "root", "name": "x"}),
        )
        .await;
    assert_eq!(bad_role.status, 422);
    assert_eq!(bad_role.pointers(), vec!["/role"]);
}
