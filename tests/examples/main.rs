//! The examples of `examples/`, end to end against the real `anika` binary.
//!
//! Each test starts `anika up` as a child process with its own database and vhost and
//! runs an example exactly as its binary does (the flows are library functions of
//! `anika-examples`), then checks what each partner ended up with.

#[path = "../support/mod.rs"]
mod support;

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicU64, Ordering},
};

use anika_examples::{
    Error, Say, Target, dealer_bank,
    receiver::{Delivery, Handled, Handler, Receiver},
    tracker::{self, Day},
};
use anika_testkit::TestEnv;
use support::{Anika, OPERATOR_KEY};

fn target(anika: &Anika) -> Target {
    Target {
        url: anika.api.base.clone(),
        operator_key: OPERATOR_KEY.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_dealer_bank_flow_the_dealer_sees_the_banks_offer_for_each_car_and_the_insurer_only_the_dealers_topic()
 {
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;

    let outcome = dealer_bank::run(&target(&anika), &Say::stderr())
        .await
        .expect("the dealer-bank flow runs to the end");

    let cars: BTreeSet<&str> = outcome.cars.iter().map(|c| c.event_id.as_str()).collect();
    assert_eq!(
        cars.len(),
        dealer_bank::CARS.len(),
        "every car was published once"
    );
    let offered: Vec<&str> = outcome
        .dealer_saw
        .iter()
        .map(|s| s.car_event_id.as_str())
        .collect();
    assert_eq!(
        offered.iter().copied().collect::<BTreeSet<_>>(),
        cars,
        "the dealer saw an offer for each chosen car"
    );
    assert_eq!(offered.len(), cars.len(), "and exactly one for each");
    assert!(outcome.dealer_saw.iter().all(|s| s.topic == "loan.offered"));
    for seen in &outcome.dealer_saw {
        let (_, _, price) = dealer_bank::CARS
            .iter()
            .find(|(customer, _, _)| *customer == seen.customer)
            .expect("a customer of the day");
        let offer = dealer_bank::loan_offer(*price);
        assert!(
            seen.text.contains(&dealer_bank::euros(offer.monthly_cents)),
            "{seen:?}"
        );
    }

    let quoted: BTreeSet<&str> = outcome
        .insurer_saw
        .iter()
        .map(|s| s.car_event_id.as_str())
        .collect();
    assert_eq!(quoted, cars, "the insurer quoted each chosen car");
    assert!(
        outcome.insurer_saw.iter().all(|s| s.topic == "car.chosen"),
        "the insurer received nothing but the dealer's topic: {:?}",
        outcome.insurer_saw
    );
    assert_eq!(outcome.insurer_topics, vec!["car.chosen".to_owned()]);
    assert!(
        matches!(outcome.insurer_refused_with, Some(403 | 404)),
        "the insurer may not subscribe to the bank's offers: {:?}",
        outcome.insurer_refused_with
    );
    anika.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_day_books_each_payout_once_everywhere_and_billing_rebuilt_by_replay_equals_a_day_without_outage()
 {
    let env = TestEnv::new().await;
    let anika = Anika::up(&env, &[]).await;
    let target = target(&anika);
    let day = Day::default();

    let calm = tracker::run(
        &target,
        &env.database_url,
        &Day {
            billing_outage: false,
            ..day.clone()
        },
        &Say::stderr(),
    )
    .await
    .expect("a day without outage runs to the end");
    let stormy = tracker::run(&target, &env.database_url, &day, &Say::stderr())
        .await
        .expect("a day with Billing's outage runs to the end");

    for outcome in [&calm, &stormy] {
        let closed = (day.closed_before_noon + day.closed_after_noon) as i64;
        assert_eq!(outcome.history.created, day.tasks as i64);
        assert_eq!(outcome.history.closed, closed);
        assert!(
            outcome.history.assigned > day.tasks as i64,
            "the bulk reassignment reassigned open tasks"
        );
        assert_eq!(
            outcome.payouts.len() as i64,
            closed,
            "Accounts booked one payout per close"
        );
        let booked: Vec<&str> = outcome
            .payouts
            .iter()
            .map(|p| p.event_id.as_str())
            .collect();
        let billed: Vec<&str> = outcome
            .billing_payout_ids
            .iter()
            .map(String::as_str)
            .collect();
        let mailed: Vec<&str> = outcome
            .mails
            .iter()
            .map(|m| m.payout_event_id.as_str())
            .collect();
        assert_eq!(billed, booked, "Billing recorded every payout exactly once");
        assert_eq!(mailed, booked, "Mailer sent exactly one mail per payout");
        assert_eq!(outcome.analytics.assigned, outcome.history.assigned);
        assert_eq!(outcome.analytics.closed, outcome.history.closed);
        assert_eq!(outcome.analytics.tasks, outcome.history.created);
        assert_eq!(
            outcome.analytics.assigned_per_user,
            outcome.history.assigned_per_user
        );
        for (check, holds) in outcome.checks() {
            assert!(holds, "{check}");
        }
    }

    let recovery = stormy
        .recovery
        .as_ref()
        .expect("the stormy day had an outage");
    assert_eq!(
        recovery.before_outage, day.closed_before_noon,
        "Billing had the morning's payouts when it went down, and lost them"
    );
    assert!(
        recovery.failed_attempts > 0,
        "anika's deliveries to Billing failed while it was down"
    );
    assert_eq!(
        recovery.replayed,
        stormy.payouts.len() as u64,
        "the replay re-delivered the whole day's payouts"
    );
    assert_eq!(
        (
            recovery.replayed_again,
            recovery.dropped_as_duplicates,
            recovery.applied_again
        ),
        (stormy.payouts.len() as u64, stormy.payouts.len() as u64, 0),
        "a second replay to a restarted Billing is dropped by its storage, event by event"
    );
    assert_eq!(
        stormy.billing_books, calm.billing_books,
        "after the wipe and the replay, Billing's books equal those of a day without outage"
    );
    assert_eq!(
        stormy.balances, calm.balances,
        "both days booked the same amounts"
    );
    anika.terminate().await;
}

/// Counts the deliveries it is handed.
#[derive(Default)]
struct Counting(AtomicU64);

impl Handler for Counting {
    async fn handle(&self, _hook: &str, _delivery: Delivery) -> Result<Handled, Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Handled::Applied)
    }
}

#[tokio::test]
async fn the_examples_receiver_refuses_a_bad_signature_and_hands_a_repeated_webhook_id_on_once() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut receiver = Receiver::start(Counting::default())
        .await
        .expect("receiver");
    receiver.register("hook", secret).expect("secret");
    let body = serde_json::json!({
        "id": "01937a4e-0000-7000-8000-000000000001", "topic_id": "t", "topic": "car.chosen",
        "publisher_partner_id": "p", "key": null, "received_at": "2026-12-01T00:00:00Z",
        "data": {"customer": "Ada"},
    })
    .to_string();
    let now = chrono::Utc::now().timestamp();
    let send = async |signer: &str| {
        let signature = standardwebhooks::Webhook::new(signer)
            .expect("secret")
            .sign("01937a4e-0000-7000-8000-000000000001", now, body.as_bytes())
            .expect("sign");
        reqwest::Client::new()
            .post(receiver.url("hook"))
            .header("webhook-id", "01937a4e-0000-7000-8000-000000000001")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    };

    assert_eq!(
        send("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await,
        401,
        "a wrong secret's signature"
    );
    assert_eq!(send(secret).await, 204);
    assert_eq!(send(secret).await, 204, "a repeat is acknowledged");
    assert_eq!(
        receiver.handler().0.load(Ordering::SeqCst),
        1,
        "but handled once"
    );
    let counts = receiver.counts();
    assert_eq!(
        (counts.applied, counts.duplicates, counts.bad_signatures),
        (1, 1, 1)
    );
    receiver.stop().await;
}
