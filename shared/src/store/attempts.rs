//! Delivery attempts, dead letters and the endpoint health derived from them.

// ---- moved by helper 1 ----

/// Deletes the dead letters of a subscription (it is being deleted).
pub async fn delete_subscription_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    subscription: uuid::Uuid,
) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM dead_letters WHERE subscription_id = $1",
        subscription,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes the dead letters of several subscriptions (deleted with their topic).
pub async fn delete_subscriptions_dead_letters(
    db: impl sqlx::PgExecutor<'_>,
    subscriptions: &[uuid::Uuid],
) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM dead_letters WHERE subscription_id = ANY($1)",
        subscriptions,
    )
    .execute(db)
    .await?;
    Ok(())
}
