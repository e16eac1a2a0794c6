//! Key material: API keys and refresh tokens (random, stored hashed) and the Ed25519 token-signing keys.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anika_shared::{
    audit::{self, Action, Actor, Changes, Target},
    auth::{Claims, new_jti},
    domain::{ApiKeyId, PartnerId, Role, random_bytes},
    secrets::{Column, KeyRing, Sealed, Slot},
    store::keys,
};
use aws_lc_rs::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::error::{Error, Result};

/// A new API key: recognisable prefix, 256 random bits.
pub fn new_api_key() -> String {
    format!(
        "anika_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

/// A new opaque refresh token.
pub fn new_refresh_token() -> String {
    format!(
        "anika_rt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

/// How secrets are stored: SHA-256. They carry 256 random bits, so a slow
/// password hash would add latency and a DoS lever without adding safety.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates an Ed25519 signing key if none is active (several processes may race: an advisory lock settles it).
pub async fn ensure_signing_key(pool: &PgPool, ring: &KeyRing) -> Result<()> {
    let mut tx = pool.begin().await?;
    keys::lock_signing_keys(&mut *tx).await?;
    let active = keys::any_active_signing_kid(&mut *tx).await?;
    if active.is_none() {
        insert_signing_key(&mut tx, ring).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rotates in a new signing key for `actor`, sealed with `ring`; the previous ones stop
/// signing but keep verifying for a day. The audit entry names the new and the retired
/// `kid`s, never a key.
pub async fn rotate_signing_key(pool: &PgPool, ring: &KeyRing, actor: &Actor) -> Result<String> {
    let mut tx = pool.begin().await?;
    keys::lock_signing_keys(&mut *tx).await?;
    let retired = keys::retire_signing_keys(&mut *tx).await?;
    let kid = insert_signing_key(&mut tx, ring).await?;
    audit::record(
        &mut tx,
        actor,
        Action::SigningKeyRotated,
        &Target::signing_key(&kid),
        Changes::new().diff("active_kid", &retired.first(), &Some(&kid)),
    )
    .await?;
    tx.commit().await?;
    Ok(kid)
}

/// Generates a key and stores its private half sealed (the kid is the associated data).
async fn insert_signing_key(conn: &mut PgConnection, ring: &KeyRing) -> Result<String> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|e| Error::Keys(format!("generate Ed25519 key: {e}")))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| Error::Keys(format!("read Ed25519 key: {e}")))?;
    let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<12>());
    let sealed = ring.seal(
        pkcs8.as_ref(),
        Slot::new(Column::SigningKeyPrivateKey, &kid),
    )?;
    keys::insert_signing_key(conn, &kid, &sealed.to_text(), pair.public_key().as_ref()).await?;
    tracing::info!(kid = %kid, "created a token signing key");
    Ok(kid)
}

/// Signs access tokens with the newest active key.
pub struct Signer {
    pool: PgPool,
    ring: Arc<KeyRing>,
    issuer: String,
    audience: String,
    ttl: std::time::Duration,
    parsed: Mutex<HashMap<String, EncodingKey>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for tokens of `issuer` meant for `audience`, valid for `ttl`, opening keys with `ring`.
    pub fn new(
        pool: PgPool,
        ring: Arc<KeyRing>,
        issuer: String,
        audience: String,
        ttl: std::time::Duration,
    ) -> Self {
        Self {
            pool,
            ring,
            issuer,
            audience,
            ttl,
            parsed: Mutex::new(HashMap::new()),
        }
    }

    /// The lifetime of the tokens it signs.
    pub fn ttl(&self) -> std::time::Duration {
        self.ttl
    }

    /// Signs an access token for an API key's principal.
    pub async fn issue(
        &self,
        key_id: ApiKeyId,
        partner: Option<PartnerId>,
        role: Role,
    ) -> Result<String> {
        // Read the current key each time: another process may have rotated it in,
        // and tokens are issued rarely next to the requests that use them.
        let keys::ActiveSigningKey {
            kid,
            private_key_sealed: sealed,
        } = keys::get_active_signing_key(&self.pool)
            .await?
            .ok_or_else(|| Error::Keys("no active signing key".into()))?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: key_id.to_string(),
            pid: partner.map(|p| p.to_string()),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: new_jti(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        if let Some(key) = self.parsed.lock().expect("signer lock").get(&kid) {
            return Ok(jsonwebtoken::encode(&header, &claims, key)?);
        }
        let key = self.open(&kid, sealed.as_deref())?;
        let token = jsonwebtoken::encode(&header, &claims, &key)?;
        self.parsed.lock().expect("signer lock").insert(kid, key);
        Ok(token)
    }

    /// The signing key of `kid` from its sealed form; the plain DER is wiped once parsed.
    fn open(&self, kid: &str, sealed: Option<&str>) -> Result<EncodingKey> {
        let slot = Slot::new(Column::SigningKeyPrivateKey, kid);
        let opened = sealed
            .ok_or_else(|| Error::Keys(format!("signing key {kid} is not sealed yet")))
            .and_then(|text| Ok(self.ring.open(&Sealed::parse(text)?, slot)?))
            .inspect_err(|e| {
                metrics::counter!(anika_shared::meters::SECRETS_UNOPENABLE, "column" => slot.column().name())
                    .increment(1);
                tracing::error!(kid, error = %e, "the active signing key does not open; no token can be issued");
            })?;
        // jsonwebtoken keeps its own copy of the DER for as long as the key is cached.
        Ok(EncodingKey::from_ed_der(&opened))
    }
}
