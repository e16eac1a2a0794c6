//! Access-token verification and the `Principal` extractor every `/v1` route uses.
//!
//! Tokens are EdDSA (Ed25519) JWTs. The verifier accepts only that algorithm,
//! picks the key by `kid` from the keys in PostgreSQL (reloading when it meets an
//! unknown one, so a key rotated in by another process is picked up), and checks
//! `iss`, `aud`, `exp` and `nbf`. A token whose API key was revoked is refused
//! too: the verifier keeps the set of revoked keys, updated at once in the
//! process that revokes and, in every other, by the announcement on
//! [`REVOCATIONS`] sent in the revoking transaction; a process whose listener is
//! down reads the set before each verification instead. The set is also re-read
//! every [`REVOKED_REFRESH`], as a safety net.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::{ApiKeyId, PartnerId, Role},
    problem::Problem,
};

/// The claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The API key the token was obtained with.
    pub sub: String,
    /// The partner, absent for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// `operator`, `admin` or `publisher`.
    pub role: Role,
    /// Issuer (`ANIKA_TOKEN_ISSUER`).
    pub iss: String,
    /// Audience (`ANIKA_TOKEN_AUDIENCE`).
    pub aud: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds).
    pub nbf: i64,
    /// Expires (unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

/// Who is calling: built only from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    key_id: ApiKeyId,
    partner: Option<PartnerId>,
    role: Role,
}

impl Principal {
    /// The API key behind the token.
    pub fn key_id(&self) -> ApiKeyId {
        self.key_id
    }

    /// The caller's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The caller's partner; `None` for operators.
    pub fn partner(&self) -> Option<PartnerId> {
        self.partner
    }

    /// Whether the caller runs the platform.
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// Whether the caller belongs to `partner` (any role) or is an operator.
    pub fn sees_partner(&self, partner: PartnerId) -> bool {
        self.is_operator() || self.partner == Some(partner)
    }

    /// Whether the caller may manage `partner`'s resources (its admin, or an operator).
    pub fn administers(&self, partner: PartnerId) -> bool {
        self.is_operator() || (self.role == Role::Admin && self.partner == Some(partner))
    }

    fn from_claims(claims: &Claims) -> Result<Self, AuthError> {
        let key_id = ApiKeyId::parse(&claims.sub)
            .map_err(|_| AuthError::Invalid("malformed `sub` claim".into()))?;
        let partner = match &claims.pid {
            Some(pid) => Some(
                PartnerId::parse(pid)
                    .map_err(|_| AuthError::Invalid("malformed `pid` claim".into()))?,
            ),
            None => None,
        };
        if (claims.role == Role::Operator) != partner.is_none() {
            return Err(AuthError::Invalid("`pid` does not fit the role".into()));
        }
        Ok(Self {
            key_id,
            partner,
            role: claims.role,
        })
    }
}

/// Why a token was refused (always a 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error(
        "missing bearer token: send `Authorization: Bearer <access token>` (get one at POST /v1/auth/token)"
    )]
    Missing,
    /// The token is malformed, forged, expired or for someone else.
    #[error("invalid access token: {0}")]
    Invalid(String),
    /// The signing keys or the revoked API keys could not be read.
    #[error("cannot read the signing keys or the revoked API keys")]
    Keys(#[source] sqlx::Error),
}

impl From<AuthError> for Problem {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Keys(e) => crate::problem::problem_from_db(&e)
                .unwrap_or_else(|| crate::problem::internal_error(&e)),
            other => Problem::unauthorized(other.to_string()),
        }
    }
}

/// Verified tokens kept so a hot path pays one hash, not one signature check, per request.
const CACHE_CAPACITY: usize = 65_536;

/// How old the set of revoked API keys may get while revocations are followed live
/// (a safety net: the set is then also re-read this often, by one verification).
pub const REVOKED_REFRESH: Duration = Duration::from_secs(60);

/// The `LISTEN` channel on which a revocation is announced (payload: the key's id),
/// in the revoking transaction, so every process hears of it when it commits.
pub const REVOCATIONS: &str = "anika_revoked_keys";

/// The revoked API keys as last read, plus what this process revoked or heard of since.
#[derive(Debug, Default)]
struct Revoked {
    keys: HashSet<ApiKeyId>,
    /// When the last read of the whole set from PostgreSQL began.
    read_at: Option<Instant>,
    /// Revoked here or announced, and when: kept across a re-read that may have
    /// started before the commit.
    recent: Vec<(ApiKeyId, Instant)>,
    /// Whether announcements are followed: the listener is connected and read the
    /// whole set after it started listening. Without it, every verification waits
    /// for a read of the set that began after the request arrived.
    live: bool,
}

/// Checks access tokens against the signing keys stored in PostgreSQL.
pub struct Verifier {
    pool: PgPool,
    issuer: String,
    audience: String,
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    last_reload: tokio::sync::Mutex<Option<Instant>>,
    cache: Mutex<HashMap<[u8; 32], (Principal, i64)>>,
    /// API keys whose tokens are refused.
    revoked: RwLock<Revoked>,
    /// Held by the one verification re-reading `revoked`.
    revoked_reload: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens of `issuer` meant for `audience`.
    pub fn new(pool: PgPool, issuer: impl Into<String>, audience: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            pool,
            issuer: issuer.into(),
            audience: audience.into(),
            keys: RwLock::new(HashMap::new()),
            last_reload: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            revoked: RwLock::new(Revoked::default()),
            revoked_reload: tokio::sync::Mutex::new(()),
        })
    }

    /// Verifies a bearer token and returns who it speaks for.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = chrono::Utc::now().timestamp();
        let cached = match self.cache.lock().expect("cache lock").get(&digest) {
            Some((principal, exp)) if *exp > now => Some(principal.clone()),
            _ => None,
        };
        if let Some(principal) = cached {
            self.refuse_revoked(&principal).await?;
            return Ok(principal);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token ({e})")))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("the token has no `kid`".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            AuthError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet".to_owned(),
                ErrorKind::InvalidAudience => "the token is for another audience".to_owned(),
                ErrorKind::InvalidIssuer => "the token is from another issuer".to_owned(),
                ErrorKind::InvalidSignature => "the signature does not verify".to_owned(),
                _ => format!("{e}"),
            })
        })?;
        let principal = Principal::from_claims(&data.claims)?;
        self.refuse_revoked(&principal).await?;
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (_, exp)| *exp > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(digest, (principal.clone(), data.claims.exp));
        Ok(principal)
    }

    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, AuthError> {
        if let Some(key) = self.keys.read().expect("keys lock").get(kid) {
            return Ok(Arc::clone(key));
        }
        {
            // Reload at most once a second, so a flood of forged kids cannot hammer the database.
            let mut last = self.last_reload.lock().await;
            let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if due {
                self.reload().await?;
                *last = Some(Instant::now());
            }
        }
        self.keys
            .read()
            .expect("keys lock")
            .get(kid)
            .cloned()
            .ok_or_else(|| {
                AuthError::Invalid("the token's `kid` names no known signing key".into())
            })
    }

    /// Loads every key that may still verify tokens (retired ones until their tokens expired).
    pub async fn reload(&self) -> Result<(), AuthError> {
        let rows = crate::store::keys::list_verifying_keys(&self.pool)
            .await
            .map_err(AuthError::Keys)?;
        let keys = rows
            .into_iter()
            .map(|key| (key.kid, Arc::new(DecodingKey::from_ed_der(&key.public_key))))
            .collect();
        *self.keys.write().expect("keys lock") = keys;
        Ok(())
    }

    /// Refuses tokens of `key` from now on in this process (the revoking one, and
    /// every process that hears the announcement on [`REVOCATIONS`]).
    pub fn revoked(&self, key: ApiKeyId) {
        let mut revoked = self.revoked.write().expect("revoked lock");
        revoked.keys.insert(key);
        revoked.recent.push((key, Instant::now()));
    }

    /// Follows revocations announced on [`REVOCATIONS`] until the verifier is dropped:
    /// listens, then reads the whole set (so nothing revoked before listening is
    /// missed), then applies each announcement as it comes. While the listener is down,
    /// every verification reads the set itself first (see [`Revoked::live`]).
    pub fn follow(self: &Arc<Self>) {
        let verifier = Arc::downgrade(self);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let listening = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(REVOCATIONS).await?;
                    Ok::<_, sqlx::Error>(listener)
                }
                .await;
                match listening {
                    Ok(listener) => {
                        backoff = Duration::from_millis(100);
                        if !follow_announcements(&verifier, listener).await {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, ?backoff, "cannot listen for revoked API keys; every verification reads them meanwhile");
                    }
                }
                let Some(alive) = verifier.upgrade() else {
                    return;
                };
                alive.revoked.write().expect("revoked lock").live = false;
                drop(alive);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    async fn refuse_revoked(&self, principal: &Principal) -> Result<(), AuthError> {
        let arrived = Instant::now();
        let (live, loaded) = {
            let revoked = self.revoked.read().expect("revoked lock");
            (revoked.live, revoked.read_at)
        };
        if !live || loaded.is_none() {
            // Nothing announces revocations to this process now: wait for a read of the
            // set that began after this request arrived (one read serves every request
            // that was waiting for it).
            let _one_reader = self.revoked_reload.lock().await;
            let read_at = self.revoked.read().expect("revoked lock").read_at;
            if read_at.is_none_or(|at| at < arrived) {
                self.reload_revoked(true).await?;
            }
        } else if loaded.is_some_and(|at| at.elapsed() >= REVOKED_REFRESH)
            && let Ok(_one_reader) = self.revoked_reload.try_lock()
        {
            self.reload_revoked(false).await?;
        }
        if self
            .revoked
            .read()
            .expect("revoked lock")
            .keys
            .contains(&principal.key_id)
        {
            return Err(AuthError::Invalid("its API key was revoked".into()));
        }
        Ok(())
    }

    /// Reads the whole set of revoked keys. When `required`, a failure refuses the
    /// request (nothing else can vouch for the key); otherwise the last set stays.
    async fn reload_revoked(&self, required: bool) -> Result<(), AuthError> {
        let started = Instant::now();
        // Revoked keys are few (people revoke keys, not programs), so all of them are read.
        let read = crate::store::keys::list_revoked_api_key_ids(&self.pool).await;
        match read {
            Ok(ids) => {
                let mut revoked = self.revoked.write().expect("revoked lock");
                revoked.recent.retain(|(_, at)| *at >= started);
                let mut keys: HashSet<ApiKeyId> = ids.into_iter().map(ApiKeyId::from).collect();
                keys.extend(revoked.recent.iter().map(|(key, _)| *key));
                revoked.keys = keys;
                revoked.read_at = Some(started);
                Ok(())
            }
            Err(e) if required => Err(AuthError::Keys(e)),
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read the revoked API keys; using the last set");
                self.revoked.write().expect("revoked lock").read_at = Some(Instant::now());
                Ok(())
            }
        }
    }
}

/// Applies announcements until the listener fails (true: listen again) or the verifier
/// is gone (false). Marks the verifier live once the whole set was read after `LISTEN`.
async fn follow_announcements(
    verifier: &std::sync::Weak<Verifier>,
    mut listener: sqlx::postgres::PgListener,
) -> bool {
    {
        let Some(alive) = verifier.upgrade() else {
            return false;
        };
        let _one_reader = alive.revoked_reload.lock().await;
        if let Err(e) = alive.reload_revoked(true).await {
            tracing::warn!(error = %e, "cannot read the revoked API keys after listening; retrying");
            return true;
        }
        alive.revoked.write().expect("revoked lock").live = true;
    }
    loop {
        let received = listener.try_recv().await;
        let Some(alive) = verifier.upgrade() else {
            return false;
        };
        match received {
            Ok(Some(notification)) => match uuid::Uuid::parse_str(notification.payload()) {
                Ok(id) => alive.revoked(ApiKeyId::from(id)),
                Err(_) => tracing::warn!(
                    payload = notification.payload(),
                    "an unreadable revocation announcement; ignored"
                ),
            },
            // The connection broke: announcements may have been missed.
            Ok(None) => {
                tracing::warn!("lost the revocation listener's connection; reconnecting");
                alive.revoked.write().expect("revoked lock").live = false;
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the revocation listener failed; reconnecting");
                alive.revoked.write().expect("revoked lock").live = false;
                return true;
            }
        }
    }
}

impl<S> FromRequestParts<S> for Principal
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        Ok(verifier.verify(token).await?)
    }
}

/// A token's id claim: a random UUID.
pub fn new_jti() -> String {
    Uuid::new_v4().to_string()
}
