//! A stored subscription status that is none of the known ones (a newer version's, or one
//! written by hand past the CHECK) is an error, logged and counted, never read as "active".

use anika_testkit::LogCapture;

use crate::helpers::App;

#[tokio::test]
async fn an_unknown_stored_status_is_an_error_that_is_logged_and_counted_not_a_fallback() {
    let logs = LogCapture::start();
    let app = App::spawn().await;
    let dealer = app.partner("dealer").await;
    let topic = app.topic(&dealer.admin, "t").await;
    let sub = app.subscription(&dealer.admin, &topic).await;
    let id = sub["id"].as_str().unwrap();
    sqlx::query("ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check")
        .execute(&app.ctx.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE subscriptions SET status = 'archived' WHERE id = $1::uuid")
        .bind(id)
        .execute(&app.ctx.pool)
        .await
        .unwrap();

    let one = app
        .api
        .get(&format!("/v1/subscriptions/{id}"), &dealer.admin)
        .await;
    assert_eq!(one.status, 500, "not shown as active: {:?}", one.body);
    let list = app.api.get("/v1/subscriptions", &dealer.admin).await;
    assert_eq!(
        list.status, 500,
        "not dropped from the list: {:?}",
        list.body
    );
    assert!(
        logs.text()
            .contains("`archived` is not a subscription status"),
        "logged with the value"
    );
    assert!(
        app.ctx
            .metrics
            .render()
            .contains("anika_stored_values_unreadable_total{type=\"subscription status\"}"),
        "counted"
    );
}
