//! The rows that hold sealed secrets, as a whole: sealing, checking, re-wrapping and erasing.
//!
//! The columns are `signing_keys.private_key_sealed` (and the plain `private_key` of rows
//! from before sealing) and `subscriptions.secret` / `previous_secret`. What to write into
//! them is decided by [`crate::secret_rows`]; this module only reads and writes them.

use uuid::Uuid;

/// Whether any secret is still stored in plain text (a signing key's `private_key`, or a
/// webhook secret without the sealed prefix).
pub async fn any_plain_secrets(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM signing_keys WHERE private_key IS NOT NULL)
               OR EXISTS (SELECT 1 FROM subscriptions WHERE secret NOT LIKE 'anika-sealed:%'
                                                      OR previous_secret NOT LIKE 'anika-sealed:%') AS "any!""#
    )
    .fetch_one(db)
    .await
}

/// Takes the transaction-scoped advisory lock that serialises the sweeps over these rows
/// across processes (start-up sealing of two processes at once).
pub async fn lock_secret_rows(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('anika_secret_rows'))")
        .execute(db)
        .await?;
    Ok(())
}

/// A signing key whose private half is stored in plain text.
#[derive(Debug)]
pub struct PlainSigningKey {
    /// Its key id.
    pub kid: String,
    /// The plain PKCS#8 private key.
    pub private_key: Vec<u8>,
}

/// The signing keys stored in plain text, locked until the end of the transaction.
pub async fn list_plain_signing_keys_for_update(
    db: impl sqlx::PgExecutor<'_>,
) -> sqlx::Result<Vec<PlainSigningKey>> {
    sqlx::query_as!(
        PlainSigningKey,
        r#"SELECT kid, private_key AS "private_key!" FROM signing_keys WHERE private_key IS NOT NULL FOR UPDATE"#,
    )
    .fetch_all(db)
    .await
}

/// Stores a signing key's private half sealed, erasing its plain form.
pub async fn seal_signing_key(
    db: impl sqlx::PgExecutor<'_>,
    kid: &str,
    private_key_sealed: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE signing_keys SET private_key_sealed = $2, private_key = NULL WHERE kid = $1",
        kid,
        private_key_sealed,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A subscription's webhook secrets, as stored (sealed or not).
#[derive(Debug)]
pub struct WebhookSecrets {
    /// The subscription.
    pub id: Uuid,
    /// Its current secret.
    pub secret: String,
    /// Its previous secret, during a rotation's overlap.
    pub previous_secret: Option<String>,
}

/// The subscriptions with a webhook secret in plain text, locked until the end of the transaction.
pub async fn list_plain_webhook_secrets_for_update(
    db: impl sqlx::PgExecutor<'_>,
) -> sqlx::Result<Vec<WebhookSecrets>> {
    sqlx::query_as!(
        WebhookSecrets,
        "SELECT id, secret, previous_secret FROM subscriptions \
         WHERE secret NOT LIKE 'anika-sealed:%' OR previous_secret NOT LIKE 'anika-sealed:%' FOR UPDATE",
    )
    .fetch_all(db)
    .await
}

/// Sets a subscription's webhook secrets.
pub async fn set_webhook_secrets(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    secret: &str,
    previous_secret: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE subscriptions SET secret = $2, previous_secret = $3 WHERE id = $1",
        id,
        secret,
        previous_secret,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Every sealed value's main key id (the third `:`-part of its text) with how many values
/// use it, without opening anything.
pub async fn count_sealed_by_key_id(
    db: impl sqlx::PgExecutor<'_>,
) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT split_part(v, ':', 3) AS "key_id!", count(*) AS "count!" FROM (
               SELECT private_key_sealed AS v FROM signing_keys
               UNION ALL SELECT secret FROM subscriptions
               UNION ALL SELECT previous_secret FROM subscriptions
           ) s WHERE v LIKE 'anika-sealed:%' GROUP BY 1"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.key_id, r.count)).collect())
}

/// A signing key's stored private half, as `anika secrets check` reads it.
#[derive(Debug)]
pub struct SigningKeySecret {
    /// Its key id.
    pub kid: String,
    /// The sealed private half, if sealed.
    pub private_key_sealed: Option<String>,
    /// Whether a plain private half is (still) stored.
    pub plain: bool,
}

/// Every signing key's stored private half, by `kid`.
pub async fn list_signing_key_secrets(
    db: impl sqlx::PgExecutor<'_>,
) -> sqlx::Result<Vec<SigningKeySecret>> {
    sqlx::query_as!(
        SigningKeySecret,
        r#"SELECT kid, private_key_sealed, private_key IS NOT NULL AS "plain!" FROM signing_keys ORDER BY kid"#,
    )
    .fetch_all(db)
    .await
}

/// Up to `limit` subscriptions' webhook secrets after `after`, by id.
pub async fn list_webhook_secrets_after(
    db: impl sqlx::PgExecutor<'_>,
    after: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<WebhookSecrets>> {
    sqlx::query_as!(
        WebhookSecrets,
        "SELECT id, secret, previous_secret FROM subscriptions WHERE id > $1 ORDER BY id LIMIT $2",
        after,
        limit,
    )
    .fetch_all(db)
    .await
}

/// [`list_webhook_secrets_after`], locking the rows until the end of the transaction.
pub async fn list_webhook_secrets_after_for_update(
    db: impl sqlx::PgExecutor<'_>,
    after: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<WebhookSecrets>> {
    sqlx::query_as!(
        WebhookSecrets,
        "SELECT id, secret, previous_secret FROM subscriptions WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE",
        after,
        limit,
    )
    .fetch_all(db)
    .await
}

/// A signing key's sealed private half.
#[derive(Debug)]
pub struct SealedSigningKey {
    /// Its key id.
    pub kid: String,
    /// The sealed private half.
    pub private_key_sealed: String,
}

/// Up to `limit` sealed signing keys after `after`, by `kid`, locked until the end of the transaction.
pub async fn list_sealed_signing_keys_after_for_update(
    db: impl sqlx::PgExecutor<'_>,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<SealedSigningKey>> {
    sqlx::query_as!(
        SealedSigningKey,
        r#"SELECT kid, private_key_sealed AS "private_key_sealed!" FROM signing_keys
           WHERE kid > $1 AND private_key_sealed IS NOT NULL ORDER BY kid LIMIT $2 FOR UPDATE"#,
        after,
        limit,
    )
    .fetch_all(db)
    .await
}

/// Replaces a signing key's sealed private half (re-wrapped).
pub async fn set_signing_key_sealed(
    db: impl sqlx::PgExecutor<'_>,
    kid: &str,
    private_key_sealed: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE signing_keys SET private_key_sealed = $2 WHERE kid = $1",
        kid,
        private_key_sealed,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Replaces those of a subscription's webhook secrets that are given (re-wrapped); `None` keeps one.
pub async fn replace_webhook_secrets(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    secret: Option<&str>,
    previous_secret: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE subscriptions SET secret = coalesce($2, secret), \
         previous_secret = coalesce($3, previous_secret) WHERE id = $1",
        id,
        secret,
        previous_secret,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Erases previous webhook secrets (and their expiry) whose overlap has ended; returns how many.
pub async fn erase_expired_previous_secrets(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "UPDATE subscriptions SET previous_secret = NULL, previous_secret_expires_at = NULL \
         WHERE previous_secret_expires_at <= now() OR (previous_secret IS NOT NULL AND previous_secret_expires_at IS NULL)",
    )
    .execute(db)
    .await?
    .rows_affected())
}
