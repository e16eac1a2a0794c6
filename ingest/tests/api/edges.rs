//! Isolation and zero loss at the edges: quotas, the bounded backlog, and the HTTP edge's own bounds.

use std::time::Duration;

use anika_testkit::TestEnv;
use reqwest::Method;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{Answer, App, Proxy, eventually};

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header: {:?}", answer.headers))
}

fn retry_after(answer: &Answer) -> u64 {
    header(answer, "retry-after")
        .parse()
        .expect("Retry-After in whole seconds")
}

/// While requests are refused for overload the service endpoints still answer; once the
/// `held` requests end, a post is admitted again within 5 s.
async fn admitted_again_after<T>(app: &App, held: T, token: &str, topic: &str) -> bool {
    app.api
        .send(Method::GET, "/healthz", None, None)
        .await
        .expect(200);
    drop(held);
    eventually(Duration::from_secs(5), || async {
        app.post_event(token, topic, json!({"data": "after"}), None)
            .await
            .status
            == 202
    })
    .await
}

/// A refusal for overload: a problem document, `Retry-After` of a second or more, and a
/// detail that names what ran out (`why`).
fn assert_overloaded(answer: &Answer, why: &str) {
    answer.assert_problem();
    assert!(retry_after(answer) >= 1);
    assert!(answer.detail().contains(why), "{}", answer.detail());
}

#[tokio::test]
async fn a_partner_over_its_ingest_quota_gets_a_429_with_rate_limit_headers_and_nothing_is_written()
{
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let other = app.partner("other").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let other_topic = app.topic(&other.admin, "t", None).await;
    let batch_path = format!("/v1/topics/{topic}/events/batch");
    let three = json!({"events": [{"data": 1}, {"data": 2}, {"data": 3}]});
    // Unlimited by default, and the quota is learnt with the first event.
    for _ in 0..5 {
        app.post_event(&dealer.publisher, &topic, json!({"data": 0}), None)
            .await
            .expect(202);
    }

    let partner = app
        .api
        .patch(
            &format!("/v1/partners/{}", dealer.id),
            &app.operator,
            json!({"ingest_rate_per_s": 1, "ingest_burst": 3}),
        )
        .await
        .expect(200);
    assert_eq!(
        (&partner["ingest_rate_per_s"], &partner["ingest_burst"]),
        (&json!(1), &json!(3))
    );
    // The catalog's NOTIFY reaches ingest asynchronously; it must take effect promptly.
    let limited = eventually(Duration::from_secs(5), || async {
        app.post_event(&dealer.publisher, &topic, json!({"data": 0}), None)
            .await
            .status
            == 429
    })
    .await;
    assert!(limited, "the new quota applies without a restart");
    let in_log = app.events_in_log(&topic).await;
    let outbox = app.outbox_len().await;

    // Every principal of the partner shares the one bucket, and a batch counts each event.
    let answer = app
        .api
        .post(&batch_path, &dealer.admin, three.clone())
        .await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    answer.assert_problem();
    let wait = retry_after(&answer);
    assert!((1..=3).contains(&wait), "Retry-After {wait}");
    assert_eq!(header(&answer, "ratelimit-policy"), "\"default\";q=1;w=1");
    assert_eq!(
        header(&answer, "ratelimit"),
        format!("\"default\";r=0;t={wait}")
    );
    assert!(
        answer.detail().contains("1 events per second"),
        "{}",
        answer.detail()
    );
    let single = app
        .post_event(&dealer.admin, &topic, json!({"data": 1}), Some("k1"))
        .await;
    assert_eq!(single.status, 429);
    assert!(retry_after(&single) >= 1);
    assert_eq!(app.events_in_log(&topic).await, in_log, "no event row");
    // The publisher may still be removing the rows of events accepted before: fewer is fine.
    assert!(app.outbox_len().await <= outbox, "no outbox row");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.ctx.pool)
        .await
        .unwrap();
    assert_eq!(kept, 0, "a refused event claims no idempotency key");

    // More events at once than the bucket holds can never pass: that is not a 429.
    let four = json!({"events": [{"data": 1}, {"data": 2}, {"data": 3}, {"data": 4}]});
    let answer = app.api.post(&batch_path, &dealer.publisher, four).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.pointers(), vec!["/events"]);

    // Another partner is not slowed down at all, and without a quota gets no RateLimit headers.
    for n in 0..20 {
        let answer = app
            .post_event(&other.publisher, &other_topic, json!({"data": n}), None)
            .await;
        assert!(!answer.headers.contains_key("ratelimit"));
        answer.expect(202);
    }
    // Once the bucket refilled, the whole burst goes through at once, and the answer says
    // what is left: nothing, full again in 3 s.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let answer = app
        .api
        .post(&batch_path, &dealer.publisher, three.clone())
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(header(&answer, "ratelimit-policy"), "\"default\";q=1;w=1");
    assert_eq!(header(&answer, "ratelimit"), "\"default\";r=0;t=3");

    app.api
        .patch(
            &format!("/v1/partners/{}", dealer.id),
            &app.operator,
            json!({"ingest_rate_per_s": null}),
        )
        .await
        .expect(200);
    let unlimited = eventually(Duration::from_secs(5), || async {
        app.api
            .post(&batch_path, &dealer.publisher, three.clone())
            .await
            .status
            == 202
    })
    .await;
    assert!(unlimited, "null removes the limit");
    for _ in 0..10 {
        app.post_event(&dealer.publisher, &topic, json!({"data": 0}), None)
            .await
            .expect(202);
    }
}

#[tokio::test]
async fn past_the_bounded_backlog_posts_get_a_503_and_every_accepted_event_is_published() {
    let env = TestEnv::new().await;
    let proxy = Proxy::start().await;
    let url = proxy.amqp_url(&env.vhost);
    let app = App::spawn_in(
        env,
        &[
            ("amqp_url", &url),
            ("max_backlog", "5"),
            ("outbox_relay_interval", "100ms"),
            ("outbox_relay_after", "300ms"),
        ],
    )
    .await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "car.chosen", None).await;
    let (queue, _) = app.subscribe(&dealer.admin, &topic).await;
    let first = app
        .post_event(&dealer.publisher, &topic, json!({"data": {"n": 0}}), None)
        .await
        .expect(202);
    let mut accepted = vec![first["id"].as_str().unwrap().to_owned()];
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.outbox_len().await == 0
        })
        .await
    );

    proxy.cut();
    let mut refused = 0;
    for n in 1..=12 {
        let answer = app
            .post_event(&dealer.publisher, &topic, json!({"data": {"n": n}}), None)
            .await;
        match answer.status {
            202 => accepted.push(answer.body["id"].as_str().unwrap().to_owned()),
            503 => {
                assert_overloaded(&answer, "ANIKA_MAX_BACKLOG");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(accepted.len(), 6, "the first event, then 5 up to the bound");
    assert_eq!(refused, 7);
    let batch = app
        .api
        .post(
            &format!("/v1/topics/{topic}/events/batch"),
            &dealer.publisher,
            json!({"events": [{"data": 1}]}),
        )
        .await;
    assert_eq!(batch.status, 503);
    assert!(retry_after(&batch) >= 1);
    assert_eq!(
        app.events_in_log(&topic).await,
        6,
        "nothing refused was written"
    );
    assert_eq!(app.outbox_len().await, 5);

    proxy.restore();
    let messages = app.take(&queue, 6, Duration::from_secs(30)).await;
    let mut got: Vec<String> = messages
        .iter()
        .map(|m| m.json()["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    got.dedup();
    accepted.sort();
    assert_eq!(got, accepted, "every event that got a 202 is published");
    // Drained, the bound lets events in again.
    let open = eventually(Duration::from_secs(10), || async {
        app.post_event(&dealer.publisher, &topic, json!({"data": 99}), None)
            .await
            .status
            == 202
    })
    .await;
    assert!(open, "accepting again once the backlog drained");
}

/// Sends the head of a POST whose body is `length` bytes, and nothing of the body yet.
async fn open_post(app: &App, token: &str, path: &str, length: usize) -> TcpStream {
    let addr = app.api.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads what the server sends until it closes the connection (or `limit` passes).
async fn read_answer(stream: &mut TcpStream, limit: Duration) -> String {
    let mut response = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Sends `body` a byte every 100 ms until the server stops reading; returns the stream.
async fn trickle(mut stream: TcpStream, body: &[u8]) -> TcpStream {
    for byte in body {
        if stream.write_all(&[*byte]).await.is_err() {
            break; // closed by the server: that is the point
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stream
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_gets_a_408_and_others_are_served_meanwhile() {
    let app = App::spawn_with(&[("request_read_timeout", "1s")]).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let path = format!("/v1/topics/{topic}/events");
    let event = br#"{"data": {"slow": "loris", "padding": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
    let new_topic = br#"{"name": "slow.loris", "description": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    // Ingest reads its bodies itself, the catalog through the shared extractor: both are bounded.
    let ingest = trickle(
        open_post(&app, &dealer.publisher, &path, event.len()).await,
        event,
    );
    let catalog = trickle(
        open_post(&app, &dealer.admin, "/v1/topics", new_topic.len()).await,
        new_topic,
    );
    let others = async {
        // Meanwhile the server serves others as usual.
        for n in 0..5 {
            app.post_event(&dealer.publisher, &topic, json!({"data": n}), None)
                .await
                .expect(202);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (ingest, catalog, ()) = tokio::join!(ingest, catalog, others);
    for mut stream in [ingest, catalog] {
        let text = read_answer(&mut stream, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(text.contains("ANIKA_REQUEST_READ_TIMEOUT"), "{text}");
    }
    assert_eq!(
        app.events_in_log(&topic).await,
        5,
        "the slow event is not stored"
    );
    let topics = app.api.get("/v1/topics", &dealer.admin).await.expect(200);
    assert!(
        !topics.to_string().contains("slow.loris"),
        "nor the slow topic"
    );
}

#[tokio::test]
async fn past_the_in_flight_caps_requests_get_a_503_with_retry_after_and_service_endpoints_still_answer()
 {
    let app = App::spawn_with(&[
        ("request_read_timeout", "30s"),
        ("max_requests_in_flight", "2"),
    ])
    .await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let path = format!("/v1/topics/{topic}/events");
    // Two requests that hold their slot: their bodies never come.
    let stuck = [
        open_post(&app, &dealer.publisher, &path, 100).await,
        open_post(&app, &dealer.publisher, &path, 100).await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = app
        .post_event(&dealer.publisher, &topic, json!({"data": 1}), None)
        .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_overloaded(&answer, "ANIKA_MAX_REQUESTS_IN_FLIGHT");
    let topics = app.api.get("/v1/topics", &dealer.admin).await;
    assert_eq!(topics.status, 503, "every /v1 route shares the cap");
    let served = admitted_again_after(&app, stuck, &dealer.publisher, &topic).await;
    assert!(served, "slots are given back when the requests end");
    assert_eq!(app.events_in_log(&topic).await, 1);
}

#[tokio::test]
async fn while_a_queue_stands_the_edge_admits_fewer_at_once_and_refuses_the_rest_with_a_503() {
    // A target no request meets: every interval shows a standing queue.
    let app = App::spawn_with(&[("shed_target", "1us"), ("request_read_timeout", "30s")]).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let path = format!("/v1/topics/{topic}/events");
    // One at a time over several intervals: a standing queue lowers the limit to the floor,
    // and one request in flight is far below it.
    let mut accepted = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < 3 * anika_shared::edge::SHED_INTERVAL {
        app.post_event(&dealer.publisher, &topic, json!({"data": accepted}), None)
            .await
            .expect(202);
        accepted += 1;
    }
    // The floor's worth of requests in flight: their bodies never come, so no interval closes.
    let mut stuck = Vec::new();
    for _ in 0..anika_shared::edge::SHED_FLOOR {
        stuck.push(open_post(&app, &dealer.publisher, &path, 100).await);
    }
    let mut refused = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while refused.is_none() && std::time::Instant::now() < deadline {
        let answer = app
            .post_event(&dealer.publisher, &topic, json!({"data": "probe"}), None)
            .await;
        match answer.status {
            // Until every held request has been read, one more still fits.
            202 => accepted += 1,
            503 => refused = Some(answer),
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    let answer = refused.expect("past the admission limit a request is refused");
    // "queue up": the admission limit refused it, not the cap of 4,096.
    assert_overloaded(&answer, "queue up");
    let served = admitted_again_after(&app, stuck, &dealer.publisher, &topic).await;
    assert!(
        served,
        "once the held requests end, requests are admitted again"
    );
    assert_eq!(
        app.events_in_log(&topic).await,
        accepted + 1,
        "a refusal writes nothing"
    );
}

#[tokio::test]
async fn past_the_body_bytes_in_flight_a_request_gets_a_503_before_its_body_is_held() {
    let app = App::spawn_with(&[
        ("request_read_timeout", "30s"),
        ("max_event_bytes", "4096"),
        ("max_batch_bytes", "4096"),
        ("max_body_bytes_in_flight", "4096"),
    ])
    .await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let path = format!("/v1/topics/{topic}/events");
    // A body of 4000 bytes, all but the last one sent: the server holds 3999 bytes for it.
    let body = format!(r#"{{"data": "{}"}}"#, "x".repeat(4000 - 12));
    assert_eq!(body.len(), 4000);
    let mut stuck = open_post(&app, &dealer.publisher, &path, body.len()).await;
    stuck
        .write_all(&body.as_bytes()[..body.len() - 1])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = app
        .post_event(
            &dealer.publisher,
            &topic,
            json!({"data": "y".repeat(200)}),
            None,
        )
        .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_overloaded(&answer, "ANIKA_MAX_BODY_BYTES_IN_FLIGHT");
    // The held request completes normally, and gives its bytes back.
    stuck
        .write_all(&body.as_bytes()[body.len() - 1..])
        .await
        .unwrap();
    let text = read_answer(&mut stuck, Duration::from_secs(2)).await;
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    app.post_event(
        &dealer.publisher,
        &topic,
        json!({"data": "y".repeat(200)}),
        None,
    )
    .await
    .expect(202);
}

#[tokio::test]
async fn a_16_mib_batch_of_tiny_events_is_refused_while_parsing_naming_the_limit() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    // Never closed: had the whole array been parsed before counting, this would be "not JSON".
    let mut body = String::from(r#"{"events":["#);
    while body.len() + 2 <= 16 << 20 {
        body.push_str("0,");
    }
    let answer = app
        .post_raw(
            &dealer.publisher,
            &format!("/v1/topics/{topic}/events/batch"),
            body.into_bytes(),
            None,
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    answer.assert_problem();
    assert_eq!(answer.pointers(), vec!["/events"]);
    assert!(answer.detail().contains("1000"), "{}", answer.detail());
    assert_eq!(app.events_in_log(&topic).await, 0);
}

#[tokio::test]
async fn times_postgresql_cannot_store_are_400s_naming_the_parameter() {
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    app.post_event(&dealer.publisher, &topic, json!({"data": 1}), None)
        .await
        .expect(202);
    let far_cursor =
        anika_shared::page::encode_cursor(&("-5000-01-01T00:00:00Z", uuid::Uuid::now_v7()));
    for (query, names) in [
        ("since=-5000-01-01T00:00:00Z".to_owned(), "since"),
        ("until=%2B10000-01-01T00:00:00Z".to_owned(), "until"),
        ("since=0000-01-01T00:00:00Z".to_owned(), "since"),
        (format!("cursor={far_cursor}"), "cursor"),
        (format!("topic_id={topic}&cursor={far_cursor}"), "cursor"),
        ("key=a%00b".to_owned(), "key"),
    ] {
        for token in [&dealer.admin, &app.operator] {
            let answer = app.api.get(&format!("/v1/events?{query}"), token).await;
            assert_eq!(answer.status, 400, "{query}: {}", answer.body);
            answer.assert_problem();
            assert!(
                answer.detail().contains(names),
                "{query}: {}",
                answer.detail()
            );
        }
    }
    // The edges of the range still work.
    app.api
        .get(
            "/v1/events?since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
            &dealer.admin,
        )
        .await
        .expect(200);
}
