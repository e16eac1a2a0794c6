//! Dead-letter replays and purges and log replays are in the audit log with their counts.

use anika_testkit::Reply;
use base64::Engine as _;
use chrono::{Duration as Span, Utc};
use serde_json::{Value, json};

use crate::{
    helpers::Setup,
    recovery::{logged_event, with_dead_letters},
};

/// The entries about the subscription of `s` with `action`, as the operator sees them.
async fn entries(s: &Setup, action: &str) -> Vec<Value> {
    let page = s
        .app
        .api
        .get(
            &format!("/v1/audit-log?action={action}&target_id={}", s.sub_id()),
            &s.app.operator,
        )
        .await
        .expect(200);
    page["items"].as_array().unwrap().clone()
}

/// The `actor` an entry made with `token` carries.
fn actor_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    json!({"api_key_id": claims["sub"], "partner_id": claims["pid"], "role": claims["role"]})
}

#[tokio::test]
async fn replays_and_purges_each_write_one_entry_with_their_principal_and_counts() {
    let s = with_dead_letters(3).await;
    s.receiver.always(Reply::Status(204));
    let sub = s.sub_id();
    let target = json!({"type": "subscription", "id": sub});
    let admin = actor_of(&s.dealer.admin);

    s.app
        .api
        .post(
            &format!("/v1/subscriptions/{sub}/dead-letters/replay"),
            &s.dealer.admin,
            json!({"limit": 2}),
        )
        .await
        .expect(202);
    let replayed = entries(&s, "dead_letters.replayed").await;
    assert_eq!(replayed.len(), 1, "{replayed:#?}");
    assert_eq!(replayed[0]["actor"], admin);
    assert_eq!(replayed[0]["target"], target);
    assert_eq!(
        replayed[0]["changes"],
        json!({"replayed": {"old": null, "new": 2}, "kept": {"old": null, "new": 0},
               "limit": {"old": null, "new": 2}})
    );

    s.app
        .api
        .delete(
            &format!("/v1/subscriptions/{sub}/dead-letters"),
            &s.app.operator,
        )
        .await
        .expect(200);
    let purged = entries(&s, "dead_letters.purged").await;
    assert_eq!(purged.len(), 1, "{purged:#?}");
    assert_eq!(purged[0]["actor"], actor_of(&s.app.operator));
    assert_eq!(purged[0]["target"], target);
    assert_eq!(
        purged[0]["changes"],
        json!({"purged": {"old": null, "new": 1}})
    );

    let now = Utc::now();
    logged_event(
        &s.app,
        &s.topic,
        &s.dealer.id,
        now - Span::minutes(10),
        json!({"n": "logged"}),
    )
    .await;
    let since = now - Span::hours(1);
    let replay = format!("/v1/subscriptions/{sub}/replay");
    let enqueued = s
        .app
        .api
        .post(
            &replay,
            &s.dealer.admin,
            json!({"since": since, "until": now}),
        )
        .await
        .expect(202);
    assert_eq!(enqueued["enqueued"], 1);
    // A refused replay (an empty window) did nothing, so it records nothing.
    let refused = s
        .app
        .api
        .post(
            &replay,
            &s.dealer.admin,
            json!({"since": now, "until": since}),
        )
        .await;
    assert_eq!(refused.status, 422);
    let logged = entries(&s, "events.replayed").await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(logged[0]["actor"], admin);
    assert_eq!(logged[0]["target"], target);
    let changes = &logged[0]["changes"];
    assert_eq!(changes["enqueued"]["new"], 1);
    assert_eq!(changes["refused"]["new"], 0);
    let at = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .unwrap()
    };
    assert_eq!(at(&changes["since"]["new"]), since);
    assert_eq!(at(&changes["until"]["new"]), now);

    // The subscription's own admins see these entries too.
    let theirs = s
        .app
        .api
        .get("/v1/audit-log?target_type=subscription", &s.dealer.admin)
        .await
        .expect(200);
    let actions: Vec<&str> = theirs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "dead_letters.replayed",
        "dead_letters.purged",
        "events.replayed",
    ] {
        assert!(actions.contains(&action), "{actions:?}");
    }
}

#[tokio::test]
async fn an_endpoint_disabled_by_anika_is_in_the_audit_log_as_the_system_with_its_reason() {
    let s = Setup::new(&[], json!({})).await;
    s.receiver.always(Reply::Status(410));
    s.publish(json!({"n": 1})).await;
    let path = format!("/v1/subscriptions/{}", s.sub_id());
    s.app
        .eventually(
            "the subscription is disabled",
            std::time::Duration::from_secs(10),
            || async {
                s.app.api.get(&path, &s.dealer.admin).await.expect(200)["status"] == "disabled"
            },
        )
        .await;
    let updated = entries(&s, "subscription.updated").await;
    assert_eq!(updated.len(), 1, "{updated:#?}");
    assert_eq!(
        updated[0]["actor"],
        json!({"api_key_id": null, "partner_id": null, "role": "system"})
    );
    assert_eq!(
        updated[0]["changes"]["status"],
        json!({"old": "active", "new": "disabled"})
    );
    assert!(
        updated[0]["changes"]["disabled_reason"]["new"]
            .as_str()
            .unwrap()
            .contains("410")
    );
    // The subscription's admins see why it stopped.
    let theirs = s
        .app
        .api
        .get("/v1/audit-log?action=subscription.updated", &s.dealer.admin)
        .await
        .expect(200);
    assert_eq!(theirs["items"].as_array().unwrap().len(), 1);
}
