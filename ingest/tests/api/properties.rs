//! Property tests: whatever a publisher posts or searches for, ingest answers 2xx or 4xx, never 5xx.

use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Map, Value};

use crate::helpers::App;

/// Strings a careless or hostile client sends: NULs, escapes, odd times, long text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => Just("\u{0}".to_owned()),
        1 => Just("\\u0000".to_owned()),
        // Times chrono reads but PostgreSQL cannot store, often: they are the likeliest 500.
        3 => Just("-5000-01-01T00:00:00Z".to_owned()),
        1 => Just("+262143-12-31T23:59:59Z".to_owned()),
        1 => Just("\u{d7ff}\u{fffd}".to_owned()),
        1 => Just("k".repeat(300)),
        1 => "[a-z]{1,8}",
        1 => any::<String>(),
    ]
}

/// Any JSON, a few levels deep, with those strings as values and member names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object with some of `fields` (and sometimes an unknown one), each any JSON.
fn object(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(fields), json_value()), 0..4).prop_map(|members| {
        Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Map<_, _>>(),
        )
    })
}

/// Raw bytes of a request body: mostly JSON-shaped, sometimes broken.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let event = object(&["data", "key", "idempotency_key", "extra"]);
    prop_oneof![
        4 => object(&["data", "key", "extra"]).prop_map(|v| v.to_string().into_bytes()),
        3 => prop::collection::vec(event, 0..4).prop_map(|events| {
            serde_json::json!({ "events": events }).to_string().into_bytes()
        }),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Every byte but letters and digits as `%XX`, so the query carries exactly `text`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn any_event_post_or_search_gets_no_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, dealer, topic) = runtime.block_on(async {
        let app = App::spawn().await;
        let dealer = app.partner("dealer").await;
        let topic = app
            .topic(
                &dealer.admin,
                "t",
                Some(serde_json::json!({"type": ["object", "array", "string", "null"]})),
            )
            .await;
        (app, dealer, topic)
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let params =
        prop::sample::select(&["since", "until", "key", "contains", "cursor", "limit"][..]);
    let strategy = (
        body(),
        any::<bool>(),
        params,
        text(),
        prop::option::of(text()),
    );
    runner
        .run(&strategy, |(body, batch, param, value, idempotency_key)| {
            let path = if batch {
                format!("/v1/topics/{topic}/events/batch")
            } else {
                format!("/v1/topics/{topic}/events")
            };
            // Header values must be visible ASCII; anything else is the client library's problem.
            let idempotency_key = idempotency_key.filter(|k| {
                !batch && !k.is_empty() && k.bytes().all(|b| (0x21..0x7f).contains(&b))
            });
            // A cursor is only opaque to the client: forge well-formed ones around any text.
            let value = if param == "cursor" {
                anika_shared::page::encode_cursor(&(&value, uuid::Uuid::now_v7()))
            } else {
                value
            };
            let search = format!(
                "/v1/events?topic_id={topic}&{param}={}",
                percent_encode(&value)
            );
            let (posted, searched) = runtime.block_on(async {
                let posted = app
                    .post_raw(
                        &dealer.publisher,
                        &path,
                        body.clone(),
                        idempotency_key.as_deref(),
                    )
                    .await;
                let searched = app.api.get(&search, &dealer.admin).await;
                (posted, searched)
            });
            prop_assert!(
                posted.status < 500,
                "POST {path} {:?} -> {} {}",
                String::from_utf8_lossy(&body),
                posted.status,
                posted.body
            );
            prop_assert!(
                searched.status < 500,
                "GET {search} -> {} {}",
                searched.status,
                searched.body
            );
            Ok(())
        })
        .unwrap();
    drop(app);
}
