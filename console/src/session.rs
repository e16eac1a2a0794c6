//! Console sessions: who is signed in, their tokens (kept on the server), and the CSRF token.
//!
//! The browser holds only a random session id in an HttpOnly, SameSite=Strict cookie;
//! the access and refresh tokens never leave the server. Sessions live in this
//! process's memory: a restart signs everyone out, and several processes behind a
//! load balancer need sticky sessions (see docs/console.md).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use serde::Deserialize;

/// The cookie that carries the session id.
pub const COOKIE: &str = "anika_console";

/// A session not used for this long is forgotten (the refresh token then ages out unused).
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 3600);

/// Refresh the access token when it has less than this left (or a quarter of its
/// lifetime, for short-lived tokens), so a request never reaches the API with a
/// token that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// 32 random bytes, base64url: unguessable, and safe in a cookie or a form field.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A session id as the cookie carries it; only ids of the right shape are looked up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id.
    fn new() -> Self {
        Self(random_token())
    }

    /// Reads an id from a cookie value: 43 base64url characters, nothing else.
    pub fn parse(value: &str) -> Option<Self> {
        (value.len() == 43
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(value.to_owned()))
    }

    /// The id as text, for the cookie.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The role of the signed-in principal, as its access token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the platform.
    Operator,
    /// Manages one partner.
    Admin,
    /// Posts and reads one partner's events.
    Publisher,
}

impl Role {
    /// The role's name as people read it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Admin => "admin",
            Self::Publisher => "publisher",
        }
    }
}

/// Who is signed in: read from the access token's claims (for navigation only;
/// every decision about access is the API's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    /// The role.
    pub role: Role,
    /// The partner, absent for operators.
    pub partner_id: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    role: Role,
    pid: Option<String>,
}

impl Who {
    /// Reads the claims of an access token the API just issued (the signature was
    /// the API's business; the console only needs to know which menu to draw).
    pub fn from_access_token(token: &str) -> Option<Self> {
        let payload = token.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let claims: Claims = serde_json::from_slice(&bytes).ok()?;
        Some(Self {
            role: claims.role,
            partner_id: claims.pid,
        })
    }
}

/// The tokens of one session.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// The bearer token for `/v1`.
    pub access: String,
    /// When `access` expires (by the API's `expires_in`).
    pub access_expires: Instant,
    /// How long before `access_expires` it is refreshed.
    pub refresh_margin: Duration,
    /// The refresh token; used at most once (the API rotates it).
    pub refresh: String,
}

impl Tokens {
    /// Tokens as the token endpoint returned them at `now`.
    pub fn issued(access: String, expires_in: u64, refresh: String, now: Instant) -> Self {
        let lifetime = Duration::from_secs(expires_in);
        Self {
            access,
            access_expires: now + lifetime,
            refresh_margin: REFRESH_MARGIN.min(lifetime / 4),
            refresh,
        }
    }
}

impl Tokens {
    /// Whether the access token must be refreshed before the next API call.
    pub fn need_refresh(&self, now: Instant) -> bool {
        self.access_expires.saturating_duration_since(now) < self.refresh_margin
    }
}

/// One signed-in session.
#[derive(Debug)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Who is signed in.
    pub who: Who,
    /// The CSRF token every changing form must carry.
    pub csrf: String,
    /// The tokens; the lock also serialises refreshes, because the API treats a
    /// refresh token presented twice as stolen and revokes the whole login.
    pub tokens: tokio::sync::Mutex<Tokens>,
    last_used: Mutex<Instant>,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Every session of this process.
#[derive(Clone, Debug, Default)]
pub struct Sessions(Arc<Mutex<HashMap<SessionId, Arc<Session>>>>);

impl Sessions {
    /// Starts a session for `who` with `tokens`.
    pub fn start(&self, who: Who, tokens: Tokens) -> Arc<Session> {
        let session = Arc::new(Session {
            id: SessionId::new(),
            who,
            csrf: random_token(),
            tokens: tokio::sync::Mutex::new(tokens),
            last_used: Mutex::new(Instant::now()),
        });
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| !idle(s, now));
        map.insert(session.id.clone(), Arc::clone(&session));
        session
    }

    /// The live session with this id, marked as used now.
    pub fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let session = map.get(id)?;
        if idle(session, now) {
            map.remove(id);
            return None;
        }
        *session.last_used.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Some(Arc::clone(session))
    }

    /// Ends a session; returns it so its refresh token can be spent.
    pub fn end(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
    }
}

fn idle(session: &Session, now: Instant) -> bool {
    let last = *session.last_used.lock().unwrap_or_else(|e| e.into_inner());
    now.saturating_duration_since(last) > IDLE_LIMIT
}

/// The `Set-Cookie` value that starts a session.
pub fn session_cookie(id: &SessionId, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict{secure}",
        id.as_str()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// Whether cookies get `Secure`: when people reach the server over https.
pub fn cookies_secure(public_url: Option<&str>) -> bool {
    public_url.is_some_and(|u| u.trim().to_ascii_lowercase().starts_with("https://"))
}

/// The session id in a `Cookie` header, if there is one of the right shape.
pub fn session_id_from_cookies(header: &str) -> Option<SessionId> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| SessionId::parse(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_is_found_among_other_cookies_and_only_in_its_shape() {
        let id = SessionId::new();
        let header = format!("theme=dark; {COOKIE}={}; other=1", id.as_str());
        assert_eq!(session_id_from_cookies(&header), Some(id));
        assert_eq!(session_id_from_cookies(&format!("{COOKIE}=short")), None);
        assert_eq!(session_id_from_cookies("theme=dark"), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_only_over_https() {
        let id = SessionId::new();
        let plain = session_cookie(&id, cookies_secure(Some("http://localhost:8080")));
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = session_cookie(&id, cookies_secure(Some("HTTPS://anika.example")));
        assert!(tls.ends_with("; Secure"));
        assert!(!cookies_secure(None));
    }

    #[test]
    fn an_access_token_is_refreshed_shortly_before_it_expires() {
        let now = Instant::now();
        let usual = Tokens::issued("a".into(), 900, "r".into(), now);
        assert!(!usual.need_refresh(now + Duration::from_secs(860)));
        assert!(usual.need_refresh(now + Duration::from_secs(880)));
        assert!(usual.need_refresh(now + Duration::from_secs(1000)));
        // A 10 s token is not refreshed on every request, only in its last 2.5 s.
        let short = Tokens::issued("a".into(), 10, "r".into(), now);
        assert!(!short.need_refresh(now + Duration::from_secs(5)));
        assert!(short.need_refresh(now + Duration::from_secs(8)));
    }

    #[test]
    fn who_is_read_from_the_token_claims() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"role":"admin","pid":"p1","sub":"k"}"#);
        let who = Who::from_access_token(&format!("h.{claims}.s")).unwrap();
        assert_eq!(who.role, Role::Admin);
        assert_eq!(who.partner_id.as_deref(), Some("p1"));
        assert!(Who::from_access_token("not a token").is_none());
    }

    #[test]
    fn the_csrf_token_must_match_exactly() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let s = sessions.start(
            Who {
                role: Role::Operator,
                partner_id: None,
            },
            Tokens::issued("a".into(), 900, "r".into(), now),
        );
        let csrf = s.csrf.clone();
        assert!(s.csrf_matches(&csrf));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&csrf[1..]));
        assert!(sessions.get(&s.id).is_some());
        assert!(sessions.end(&s.id).is_some());
        assert!(sessions.get(&s.id).is_none(), "an ended session is gone");
    }
}
