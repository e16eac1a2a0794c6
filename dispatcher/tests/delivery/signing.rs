//! What a subscriber receives: the envelope, Standard Webhooks headers, verifiable signatures.

use std::time::Duration;

use serde_json::json;

use crate::helpers::Setup;

#[tokio::test]
async fn a_delivery_carries_the_envelope_and_verifies_with_an_independent_standard_webhooks_library()
 {
    let s = Setup::new(&[], json!({})).await;
    let id = s.publish(json!({"car": "Golf", "price": 21990.5})).await;
    let got = s.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let request = &got[0];
    assert_eq!(request.path, "/hook");
    assert_eq!(request.header("webhook-id"), Some(id.to_string().as_str()));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert!(request.header("user-agent").unwrap().starts_with("anika/"));
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 10);

    let body = request.json();
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["topic_id"], s.topic.as_str());
    assert_eq!(body["publisher_partner_id"], s.dealer.id.as_str());
    assert_eq!(body["data"], json!({"car": "Golf", "price": 21990.5}));
    for field in ["topic", "key", "received_at"] {
        assert!(body.get(field).is_some(), "missing {field}: {body}");
    }

    let secret = s.sub["secret"].as_str().unwrap();
    let webhook = standardwebhooks::Webhook::new(secret).unwrap();
    webhook
        .verify(&request.body, &request.headers)
        .expect("the signature verifies");
    let wrong = standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert!(
        wrong.verify(&request.body, &request.headers).is_err(),
        "another secret must not verify"
    );
}

#[tokio::test]
async fn after_a_secret_rotation_both_secrets_verify_for_a_day() {
    let s = Setup::new(&[], json!({})).await;
    let old = s.sub["secret"].as_str().unwrap().to_owned();
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
    let new = rotated["secret"].as_str().unwrap().to_owned();
    // The dispatcher hears of the rotation through NOTIFY.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.publish(json!({"n": 1})).await;
    let got = s.receiver.wait_for(1, Duration::from_secs(10)).await;
    let request = &got[0];
    let header = request.header("webhook-signature").unwrap();
    assert_eq!(
        header.split(' ').count(),
        2,
        "two signatures during rotation: {header}"
    );
    for secret in [&old, &new] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&request.body, &request.headers)
            .expect("each secret verifies");
    }
}
