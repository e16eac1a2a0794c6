//! The raw limits the pipeline sits on, measured in the same run as the pipeline itself.
//!
//! - RabbitMQ: persistent publishes with confirms through lapin, a sliding window
//!   of confirms in flight, the same message (envelope and properties) and the
//!   same queue type as a subscription queue, `mandatory` like ingest.
//! - PostgreSQL: multi-row `INSERT … SELECT FROM UNNEST` into a table shaped
//!   like `events` (same columns, jsonb, same indexes), one commit per batch.
//! - The receiver: the load generator posting straight to it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anika_shared::{
    config::QueueType,
    domain::{EventId, PartnerId, TopicId},
    envelope::{self, Envelope, EventHead},
};
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use tokio::task::JoinSet;

use super::{load::pad, receiver::Receiver};
use crate::CliError;

/// Publishes awaiting their confirm at once.
const CONFIRM_WINDOW: usize = 1024;

/// A delivery envelope like the ones the bench's events become (same size).
pub fn sample_envelope(payload_bytes: usize) -> (Vec<u8>, BasicProperties) {
    let data = format!(r#"{{"seq":123456,"pad":"{}"}}"#, pad(payload_bytes));
    let raw = serde_json::value::RawValue::from_string(data).expect("the sample is JSON");
    let id = EventId::new();
    let topic = TopicId::new();
    let body = Envelope::encode(
        &EventHead {
            id,
            topic_id: topic,
            topic: "bench.throughput",
            publisher: PartnerId::new(),
            key: None,
            received_at: id.timestamp(),
        },
        &raw,
    );
    (body, envelope::properties(id, topic, 0))
}

/// Confirmed persistent publishes per second.
pub async fn rabbitmq(
    amqp_url: &str,
    queue_type: QueueType,
    payload_bytes: usize,
    duration: Duration,
) -> Result<f64, CliError> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = format!("anika.bench.ceiling.{}", uuid::Uuid::new_v4().simple());
    let mut args = FieldTable::default();
    let kind = match queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(kind)),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            // durable, like a subscription queue.
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let (body, properties) = sample_envelope(payload_bytes);
    let mut in_flight = FuturesUnordered::new();
    let mut confirmed = 0u64;
    let started = Instant::now();
    let mut failure = None;
    while started.elapsed() < duration || !in_flight.is_empty() {
        if started.elapsed() < duration && in_flight.len() < CONFIRM_WINDOW {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    properties.clone(),
                )
                .await?;
            in_flight.push(confirm);
            continue;
        }
        match in_flight.next().await {
            Some(Ok(Confirmation::Ack(_))) => confirmed += 1,
            Some(Ok(other)) => failure = Some(format!("{other:?}")),
            Some(Err(e)) => failure = Some(e.to_string()),
            None => {}
        }
    }
    let elapsed = started.elapsed();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "ceiling measured".into()).await;
    if let Some(failure) = failure {
        return Err(format!("RabbitMQ ceiling: a publish was not confirmed: {failure}").into());
    }
    Ok(confirmed as f64 / elapsed.as_secs_f64())
}

/// Rows per second of multi-row inserts of `batch` rows from `connections` connections.
pub async fn postgres(
    database_url: &str,
    payload_bytes: usize,
    batch: usize,
    connections: usize,
    duration: Duration,
) -> Result<f64, CliError> {
    // The server's own way of connecting (same TLS choice), so the ceiling is comparable.
    let pool = anika_shared::db::connect(database_url, connections as u32).await?;
    let table = format!("anika_bench_ceiling_{}", uuid::Uuid::new_v4().simple());
    // LIKE … INCLUDING ALL: the columns, jsonb, primary key and every index of the event log.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (LIKE events INCLUDING ALL)"
    )))
    .execute(&pool)
    .await?;
    let insert = format!(
        "INSERT INTO {table} (id, topic_id, publisher_partner_id, key, data, received_at) \
         SELECT u.id, u.topic_id, u.publisher, u.key, u.data::jsonb, u.received_at \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[]) \
             AS u(id, topic_id, publisher, key, data, received_at)"
    );
    let insert: Arc<str> = Arc::from(insert);
    let rows = Arc::new(AtomicU64::new(0));
    let pad: Arc<str> = Arc::from(pad(payload_bytes));
    let topic = TopicId::new().uuid();
    let publisher = PartnerId::new().uuid();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        let (pool, insert, rows, pad) = (
            pool.clone(),
            Arc::clone(&insert),
            Arc::clone(&rows),
            Arc::clone(&pad),
        );
        tasks.spawn(async move {
            let mut seq = 0u64;
            while started.elapsed() < duration {
                let mut ids = Vec::with_capacity(batch);
                let mut data = Vec::with_capacity(batch);
                let mut times = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let id = EventId::new();
                    ids.push(id.uuid());
                    times.push(id.timestamp());
                    data.push(format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#));
                    seq += 1;
                }
                sqlx::query(sqlx::AssertSqlSafe(insert.to_string()))
                    .bind(ids)
                    .bind(vec![topic; batch])
                    .bind(vec![publisher; batch])
                    .bind(vec![None::<String>; batch])
                    .bind(data)
                    .bind(times)
                    .execute(&pool)
                    .await?;
                rows.fetch_add(batch as u64, Ordering::Relaxed);
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e.to_string()),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await;
    pool.close().await;
    if let Some(failure) = failure {
        return Err(format!("PostgreSQL ceiling: {failure}").into());
    }
    Ok(rows.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// Requests per second the receiver answers, posted by `clients` closed-loop clients.
pub async fn receiver(
    http: &reqwest::Client,
    receiver: &Receiver,
    index: u32,
    payload_bytes: usize,
    clients: usize,
    duration: Duration,
) -> f64 {
    let (body, _) = sample_envelope(payload_bytes);
    let body = bytes::Bytes::from(body);
    let url = receiver.url(index);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (http, body, url, done) = (http.clone(), body.clone(), url.clone(), Arc::clone(&done));
        tasks.spawn(async move {
            while started.elapsed() < duration {
                let id = uuid::Uuid::now_v7().to_string();
                let sent = http
                    .post(&url)
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", "0")
                    .header("webhook-signature", "v1,bench")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    receiver.take(&[index]);
    done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}
