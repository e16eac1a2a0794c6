//! API keys, refresh tokens and the signing keys: issuing, rotating, revoking and resolving a caller.
//!
//! Secrets (API keys, refresh tokens) are stored only as their hashes; the callers hash.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Takes the transaction-scoped advisory lock that serialises creating and rotating signing keys.
pub async fn lock_signing_keys(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('anika_signing_keys'))")
        .execute(db)
        .await?;
    Ok(())
}

/// The `kid` of an active (not retired) signing key, if there is one.
pub async fn any_active_signing_kid(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!("SELECT kid FROM signing_keys WHERE retired_at IS NULL LIMIT 1")
        .fetch_optional(db)
        .await
}

/// Retires every active signing key, returning their `kid`s.
pub async fn retire_signing_keys(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL RETURNING kid"
    )
    .fetch_all(db)
    .await
}

/// Stores a new EdDSA signing key: its private half sealed (as text), its public half in clear.
pub async fn insert_signing_key(
    db: impl sqlx::PgExecutor<'_>,
    kid: &str,
    private_key_sealed: &str,
    public_key: &[u8],
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO signing_keys (kid, algorithm, private_key_sealed, public_key) VALUES ($1, 'EdDSA', $2, $3)",
        kid,
        private_key_sealed,
        public_key,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The signing key that signs: the newest active one.
#[derive(Debug)]
pub struct ActiveSigningKey {
    /// Its key id.
    pub kid: String,
    /// Its private half, sealed; `None` while an older version's clear key awaits sealing.
    pub private_key_sealed: Option<String>,
}

/// Reads the newest active signing key.
pub async fn get_active_signing_key(
    db: impl sqlx::PgExecutor<'_>,
) -> sqlx::Result<Option<ActiveSigningKey>> {
    sqlx::query_as!(
        ActiveSigningKey,
        "SELECT kid, private_key_sealed FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_optional(db)
    .await
}

/// A public key that verifies tokens.
#[derive(Debug)]
pub struct VerifyingKey {
    /// Its key id.
    pub kid: String,
    /// The Ed25519 public key.
    pub public_key: Vec<u8>,
}

/// The keys that may still verify tokens: the active ones and those retired less than a
/// day ago, newest first.
pub async fn list_verifying_keys(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<VerifyingKey>> {
    sqlx::query_as!(
        VerifyingKey,
        "SELECT kid, public_key FROM signing_keys \
         WHERE retired_at IS NULL OR retired_at > now() - interval '1 day' ORDER BY created_at DESC",
    )
    .fetch_all(db)
    .await
}

/// Ensures an active operator key with this hash exists (named `bootstrap`), un-revoking it
/// if it was revoked. `Some(false)`: it was created; `Some(true)`: it existed.
pub async fn ensure_operator_key(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    key_hash: &[u8],
) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar!(
        r#"INSERT INTO api_keys (id, partner_id, role, name, key_hash) VALUES ($1, NULL, 'operator', 'bootstrap', $2)
           ON CONFLICT (key_hash) DO UPDATE SET revoked_at = NULL
           RETURNING (xmax <> 0) AS "revived!""#,
        id,
        key_hash,
    )
    .fetch_optional(db)
    .await
}

/// An API key to create.
#[derive(Debug)]
pub struct NewApiKey<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its partner; `None` for an operator key.
    pub partner_id: Option<Uuid>,
    /// Its role (`operator`, `admin`, `publisher`).
    pub role: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The hash of the key.
    pub key_hash: &'a [u8],
}

/// Creates an API key.
pub async fn insert_api_key(db: impl sqlx::PgExecutor<'_>, key: NewApiKey<'_>) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO api_keys (id, partner_id, role, name, key_hash) VALUES ($1, $2, $3, $4, $5)",
        key.id,
        key.partner_id,
        key.role,
        key.name,
        key.key_hash,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The principal an API key stands for.
#[derive(Debug)]
pub struct ApiKeyPrincipal {
    /// The key's id.
    pub id: Uuid,
    /// Its role, as stored.
    pub role: String,
    /// Its partner; `None` for an operator key.
    pub partner_id: Option<Uuid>,
}

/// Resolves an active (not revoked) API key by its hash.
pub async fn find_active_api_key(
    db: impl sqlx::PgExecutor<'_>,
    key_hash: &[u8],
) -> sqlx::Result<Option<ApiKeyPrincipal>> {
    sqlx::query_as!(
        ApiKeyPrincipal,
        "SELECT id, role, partner_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        key_hash,
    )
    .fetch_optional(db)
    .await
}

/// A refresh token with its API key, as the token endpoint checks it.
#[derive(Debug)]
pub struct RefreshTokenRow {
    /// The login (chain of tokens) it belongs to.
    pub family_id: Uuid,
    /// Whether it was used or revoked already.
    pub spent: bool,
    /// Whether it has expired.
    pub expired: bool,
    /// Its API key's id.
    pub id: Uuid,
    /// Its API key's role, as stored.
    pub role: String,
    /// Its API key's partner.
    pub partner_id: Option<Uuid>,
    /// Whether its API key was revoked.
    pub key_revoked: bool,
}

/// Reads a refresh token by its hash, locking it until the end of the transaction.
pub async fn get_refresh_token_for_update(
    db: impl sqlx::PgExecutor<'_>,
    token_hash: &[u8],
) -> sqlx::Result<Option<RefreshTokenRow>> {
    sqlx::query_as!(
        RefreshTokenRow,
        r#"SELECT r.family_id, (r.used_at IS NOT NULL OR r.revoked_at IS NOT NULL) AS "spent!",
                  r.expires_at <= now() AS "expired!", k.id, k.role, k.partner_id,
                  k.revoked_at IS NOT NULL AS "key_revoked!"
           FROM refresh_tokens r JOIN api_keys k ON k.id = r.api_key_id
           WHERE r.token_hash = $1 FOR UPDATE OF r"#,
        token_hash,
    )
    .fetch_optional(db)
    .await
}

/// Revokes every not yet revoked refresh token of a login.
pub async fn revoke_refresh_family(
    db: impl sqlx::PgExecutor<'_>,
    family: Uuid,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
        family,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Marks a refresh token used.
pub async fn spend_refresh_token(
    db: impl sqlx::PgExecutor<'_>,
    token_hash: &[u8],
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
        token_hash,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Stores a new refresh token of a login.
pub async fn insert_refresh_token(
    db: impl sqlx::PgExecutor<'_>,
    token_hash: &[u8],
    family: Uuid,
    api_key: Uuid,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO refresh_tokens (token_hash, family_id, api_key_id, expires_at) VALUES ($1, $2, $3, $4)",
        token_hash,
        family,
        api_key,
        expires_at,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// An active API key as listed (never its hash).
#[derive(Debug)]
pub struct ApiKeyRow {
    /// The key's id.
    pub id: Uuid,
    /// Its role, as stored.
    pub role: String,
    /// Its name.
    pub name: String,
    /// Its partner; `None` for an operator key.
    pub partner_id: Option<Uuid>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Lists a page of active API keys (of `partner`, or all), in creation order after `after`.
pub async fn list_api_keys(
    db: impl sqlx::PgExecutor<'_>,
    partner: Option<Uuid>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<ApiKeyRow>> {
    sqlx::query_as!(
        ApiKeyRow,
        "SELECT id, role, name, partner_id, created_at FROM api_keys \
         WHERE revoked_at IS NULL AND ($1::uuid IS NULL OR partner_id = $1) \
           AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3)) \
         ORDER BY created_at, id LIMIT $4",
        partner,
        after.map(|a| a.0),
        after.map(|a| a.1),
        limit,
    )
    .fetch_all(db)
    .await
}

/// A revoked key: its partner, when it was revoked before this call (if it was), and now.
#[derive(Debug)]
pub struct RevokedApiKey {
    /// Its partner.
    pub partner_id: Option<Uuid>,
    /// When it had been revoked before; `None` if this call revoked it.
    pub was: Option<DateTime<Utc>>,
    /// When it is revoked.
    pub revoked_at: DateTime<Utc>,
}

/// Revokes an API key (of `partner`, if given); a repeated revoke keeps the first time.
/// `None`: no such key (of that partner).
pub async fn revoke_api_key(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
) -> sqlx::Result<Option<RevokedApiKey>> {
    // `was` is the row before this statement: a repeated revoke changes nothing.
    sqlx::query_as!(
        RevokedApiKey,
        r#"UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
           FROM (SELECT id, revoked_at AS was FROM api_keys WHERE id = $1 FOR UPDATE) old
           WHERE k.id = old.id AND ($2::uuid IS NULL OR k.partner_id = $2)
           RETURNING k.partner_id AS "partner_id?", old.was AS "was?", k.revoked_at AS "revoked_at!""#,
        id,
        partner,
    )
    .fetch_optional(db)
    .await
}

/// Revokes the not yet revoked refresh tokens of an API key.
pub async fn revoke_api_key_refresh_tokens(
    db: impl sqlx::PgExecutor<'_>,
    api_key: Uuid,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE api_key_id = $1 AND revoked_at IS NULL",
        api_key,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The ids of every revoked API key.
pub async fn list_revoked_api_key_ids(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!("SELECT id FROM api_keys WHERE revoked_at IS NOT NULL")
        .fetch_all(db)
        .await
}
