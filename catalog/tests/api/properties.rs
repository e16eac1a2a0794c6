//! Property tests: whatever a client sends, the catalog answers 2xx or 4xx, never 5xx.

use proptest::{prelude::*, test_runner::TestRunner};
use reqwest::Method;
use serde_json::{Map, Value};

use crate::helpers::App;

/// Strings a careless or hostile client sends: NULs, escapes, control characters, long text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => Just("\u{0}".to_owned()),
        1 => Just("\\u0000".to_owned()),
        // A time chrono reads but PostgreSQL cannot store: the likeliest 500 in a cursor.
        3 => Just("-5000-01-01T00:00:00Z".to_owned()),
        1 => Just("x".repeat(3000)),
        1 => "[a-z.]{1,12}",
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

/// A body that looks like what a route expects, with any of its fields replaced by junk.
fn body(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(fields), json_value()), 0..5).prop_map(|members| {
        Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Map<_, _>>(),
        )
    })
}

#[test]
fn any_body_or_query_sent_to_the_partner_and_topic_routes_gets_no_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, dealer, topic) = runtime.block_on(async {
        let app = App::spawn().await;
        let dealer = app.partner("dealer").await;
        let topic = app.topic(&dealer.admin, "t").await;
        (app, dealer, topic)
    });
    let partner_path = format!("/v1/partners/{}", dealer.id);
    let topic_path = format!("/v1/topics/{topic}");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        body(&[
            "name",
            "description",
            "schema",
            "ingest_rate_per_s",
            "ingest_burst",
        ]),
        0..4usize,
        text(),
    );
    runner
        .run(&strategy, |(body, route, query)| {
            let (method, path, token) = match route {
                0 => (Method::PATCH, partner_path.clone(), app.operator.clone()),
                1 => (
                    Method::POST,
                    "/v1/partners".to_owned(),
                    app.operator.clone(),
                ),
                2 => (Method::PATCH, topic_path.clone(), dealer.admin.clone()),
                _ => (Method::POST, "/v1/topics".to_owned(), dealer.admin.clone()),
            };
            let answers = runtime.block_on(async {
                let written = app
                    .api
                    .send(method.clone(), &path, Some(&token), Some(&body))
                    .await;
                let listed = app
                    .api
                    .get(
                        &format!("/v1/topics?name={}", percent_encode(&query)),
                        &dealer.admin,
                    )
                    .await;
                // A cursor is only opaque to the client: forge well-formed ones around any text.
                let forged = anika_shared::page::encode_cursor(&(&query, uuid::Uuid::now_v7()));
                let paged = app
                    .api
                    .get(&format!("/v1/partners?cursor={forged}"), &app.operator)
                    .await;
                [written, listed, paged]
            });
            for answer in answers {
                prop_assert!(
                    answer.status < 500,
                    "{method} {path} {body} / {query:?} -> {} {}",
                    answer.status,
                    answer.body
                );
            }
            Ok(())
        })
        .unwrap();
    drop(app);
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
