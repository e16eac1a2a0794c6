//! Maintenance: partitions ahead, retention as partition drops, expired keys and records removed.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{App, eventually};

async fn partitions(app: &App, parent: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 ORDER BY 1",
    )
    .bind(parent)
    .fetch_all(&app.ctx.pool)
    .await
    .unwrap()
}

async fn count(app: &App, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.ctx.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn maintenance_keeps_partitions_ahead_and_removes_what_is_past_retention() {
    let app = App::spawn_with(&[("maintenance_interval", "200ms"), ("retention", "3days")]).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let fresh = app
        .post_event(
            &dealer.publisher,
            &topic,
            json!({"data": 1}),
            Some("fresh-key"),
        )
        .await
        .expect(202);

    // A week of partitions ahead (from yesterday), for events and attempts.
    let days: Vec<String> = sqlx::query_scalar(
        "SELECT to_char((now() AT TIME ZONE 'UTC')::date + d, 'YYYYMMDD') FROM generate_series(-1, 6) AS d",
    )
    .fetch_all(&app.ctx.pool)
    .await
    .unwrap();
    for parent in ["events", "attempts"] {
        let existing = partitions(&app, parent).await;
        for day in &days {
            assert!(
                existing.contains(&format!("{parent}_{day}")),
                "{parent}_{day} in {existing:?}"
            );
        }
    }

    // Old data: a partition from ten days ago with rows in it, rows 400 days old in the default
    // partitions (no partition for that day), an old skip, a stale idempotency key, a used refresh token.
    let topic_id: uuid::Uuid = topic.parse().unwrap();
    let partner_id: uuid::Uuid = dealer.id.parse().unwrap();
    // All of it in one transaction: maintenance runs every 200 ms and must not clean up
    // half of it before the checks below have seen it (the partition functions' advisory
    // lock, taken here by the first one, holds its drops off until the commit).
    let mut tx = app.ctx.pool.begin().await.unwrap();
    for parent in ["events", "attempts"] {
        sqlx::query("SELECT anika_ensure_partitions($1, (now() AT TIME ZONE 'UTC')::date - 10, 1)")
            .bind(parent)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let old_partition: String = sqlx::query_scalar(
        "SELECT 'events_' || to_char((now() AT TIME ZONE 'UTC')::date - 10, 'YYYYMMDD')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let in_tx: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = $1")
        .bind(&old_partition)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(in_tx, 1, "{old_partition} exists");
    for days in [10, 400] {
        sqlx::query(
            "INSERT INTO events (id, topic_id, publisher_partner_id, data, received_at) \
             VALUES (gen_random_uuid(), $1, $2, '{}', now() - make_interval(days => $3))",
        )
        .bind(topic_id)
        .bind(partner_id)
        .bind(days)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO attempts (id, subscription_id, event_id, attempt, status, duration_ms, at) \
             VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 1, 'succeeded', 5, now() - make_interval(days => $1))",
        )
        .bind(days)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    let tx_count = async |tx: &mut sqlx::PgConnection, sql: &'static str| -> i64 {
        sqlx::query_scalar(sql).fetch_one(tx).await.unwrap()
    };
    assert_eq!(
        tx_count(&mut tx, "SELECT count(*) FROM events_default").await,
        1
    );
    assert_eq!(
        tx_count(
            &mut tx,
            "SELECT count(*) FROM events WHERE received_at < now() - interval '3 days'"
        )
        .await,
        2
    );
    sqlx::query("INSERT INTO skips (subscription_id, event_id, reason, at) VALUES (gen_random_uuid(), gen_random_uuid(), 'old', now() - interval '10 days'), (gen_random_uuid(), gen_random_uuid(), 'recent', now())")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO idempotency_keys (topic_id, key, event_id, received_at, request_hash, created_at) VALUES ($1, 'stale', gen_random_uuid(), now(), '\\x00', now() - interval '25 hours')")
        .bind(topic_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let tokens_before = tx_count(&mut tx, "SELECT count(*) FROM refresh_tokens").await;
    // Expired two days ago: gone. Used (rotated) two days ago but valid for weeks: kept,
    // since presenting it again is how its theft is detected.
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '2 days' WHERE token_hash = (SELECT token_hash FROM refresh_tokens LIMIT 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, api_key_id, expires_at, used_at) \
                 SELECT '\\x01', family_id, api_key_id, now() + interval '20 days', now() - interval '2 days' FROM refresh_tokens LIMIT 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let cleaned = eventually(Duration::from_secs(10), || async {
        !partitions(&app, "events").await.contains(&old_partition)
            && count(&app, "SELECT count(*) FROM events_default").await == 0
            && count(
                &app,
                "SELECT count(*) FROM events WHERE received_at < now() - interval '3 days'",
            )
            .await
                == 0
            && count(
                &app,
                "SELECT count(*) FROM attempts WHERE at < now() - interval '3 days'",
            )
            .await
                == 0
            && count(&app, "SELECT count(*) FROM skips").await == 1
            && count(
                &app,
                "SELECT count(*) FROM idempotency_keys WHERE key = 'stale'",
            )
            .await
                == 0
            && count(&app, "SELECT count(*) FROM refresh_tokens").await == tokens_before
            && count(
                &app,
                "SELECT count(*) FROM refresh_tokens WHERE token_hash = '\\x01'",
            )
            .await
                == 1
    })
    .await;
    assert!(cleaned, "maintenance removed everything past retention");
    assert!(
        !partitions(&app, "attempts")
            .await
            .iter()
            .any(|p| p.ends_with(&old_partition[7..]))
    );
    // What is within retention stays.
    assert_eq!(
        count(&app, "SELECT count(*) FROM skips WHERE reason = 'recent'").await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM idempotency_keys WHERE key = 'fresh-key'"
        )
        .await,
        1
    );
    let id = fresh["id"].as_str().unwrap();
    app.api
        .get(&format!("/v1/events/{id}"), &dealer.admin)
        .await
        .expect(200);
    assert_eq!(app.events_in_log(&topic).await, 1);
}

#[tokio::test]
async fn a_previous_webhook_secret_is_erased_once_its_overlap_has_ended() {
    let app = App::spawn_with(&[("maintenance_interval", "200ms")]).await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t", None).await;
    let (_, ended) = app.subscribe(&dealer.admin, &topic).await;
    let (_, running) = app.subscribe(&dealer.admin, &topic).await;
    for id in [&ended, &running] {
        app.api
            .post(
                &format!("/v1/subscriptions/{id}/rotate-secret"),
                &dealer.admin,
                json!({}),
            )
            .await
            .expect(200);
    }
    // The overlap of one of them ended a minute ago.
    sqlx::query(
        "UPDATE subscriptions SET previous_secret_expires_at = now() - interval '1 minute' WHERE id = $1::uuid",
    )
    .bind(&ended)
    .execute(&app.ctx.pool)
    .await
    .unwrap();

    let previous = |id: String| {
        let pool = app.ctx.pool.clone();
        async move {
            sqlx::query_as::<_, (Option<String>, Option<chrono::DateTime<chrono::Utc>>)>(
                "SELECT previous_secret, previous_secret_expires_at FROM subscriptions WHERE id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            previous(ended.clone()).await == (None, None)
        })
        .await,
        "the ended previous secret and its expiry are erased"
    );
    let (kept, until) = previous(running.clone()).await;
    assert!(
        kept.is_some() && until.is_some(),
        "a running overlap is kept"
    );
}

#[tokio::test]
async fn the_audit_log_is_partitioned_ahead_and_kept_for_its_own_longer_retention() {
    let app = App::spawn_with(&[
        ("maintenance_interval", "200ms"),
        ("retention", "3days"),
        ("audit_retention", "30days"),
    ])
    .await;
    let pool = &app.ctx.pool;
    let days: Vec<String> = sqlx::query_scalar(
        "SELECT to_char((now() AT TIME ZONE 'UTC')::date + d, 'YYYYMMDD') FROM generate_series(-1, 6) AS d",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let existing = partitions(&app, "audit_log").await;
    for day in &days {
        assert!(
            existing.contains(&format!("audit_log_{day}")),
            "audit_log_{day} in {existing:?}"
        );
    }
    // Entries 10 days old (past the event log's retention, within the audit log's), and 40
    // days old: one in a partition of that day, one in the default partition.
    for back in [10, 40] {
        sqlx::query(
            "SELECT anika_ensure_partitions('audit_log', (now() AT TIME ZONE 'UTC')::date - $1, 1)",
        )
        .bind(back)
        .execute(pool)
        .await
        .unwrap();
    }
    for back in [10, 40, 400] {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor_role, action, target_type, target_id) \
             VALUES (gen_random_uuid(), now() - make_interval(days => $1), 'operator', 'topic.created', 'topic', 'x')",
        )
        .bind(back)
        .execute(pool)
        .await
        .unwrap();
    }
    let old_partition: String = sqlx::query_scalar(
        "SELECT 'audit_log_' || to_char((now() AT TIME ZONE 'UTC')::date - 40, 'YYYYMMDD')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    // (No check of the rows' places here: maintenance runs every 200 ms and may already
    // have dropped the 40-day partition; either way those entries must go.)

    let cleaned = eventually(Duration::from_secs(10), || async {
        !partitions(&app, "audit_log").await.contains(&old_partition)
            && count(&app, "SELECT count(*) FROM audit_log_default").await == 0
    })
    .await;
    assert!(cleaned, "entries past ANIKA_AUDIT_RETENTION are gone");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit_log WHERE at < now() - interval '3 days'"
        )
        .await,
        1,
        "the entry 10 days old outlives the event log's 3 days"
    );
}
