//! The bench's webhook receiver: answers 204 at once and records `webhook-id` and arrival time.
//!
//! Kept cheap so that it is not what the bench measures: arrivals go into a
//! few sharded vectors (consecutive requests take different shards, so two
//! runtime threads rarely meet on a lock), and only a sample of the requests
//! (one in `verify_every`) has its Standard Webhooks signature checked, with
//! the independent `standardwebhooks` implementation.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use standardwebhooks::Webhook;

/// Shards of the arrival log.
const SHARDS: usize = 16;

/// One request the receiver got.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// `webhook-id` as a number (0 when missing or not a UUID).
    pub id: u128,
    /// Which subscription's path it came in on.
    pub sub: u32,
    /// When the handler ran.
    pub at: Instant,
}

struct Shared {
    shards: Vec<Mutex<Vec<Arrival>>>,
    count: AtomicU64,
    secrets: RwLock<HashMap<u32, Arc<Webhook>>>,
    verify_every: u64,
    verified: AtomicU64,
    bad_signatures: AtomicU64,
}

/// A receiver listening on a loopback port.
#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts listening on `127.0.0.1:0`.
    pub async fn start(verify_every: u64) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Vec::with_capacity(1 << 16)))
                .collect(),
            count: AtomicU64::new(0),
            secrets: RwLock::new(HashMap::new()),
            verify_every: verify_every.max(1),
            verified: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/s/{sub}", post(receive))
            .route("/slow/{ms}", post(slow))
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// The URL a subscription with receiver index `sub` points at.
    pub fn url(&self, sub: u32) -> String {
        format!("http://{}/s/{sub}", self.addr)
    }

    /// A URL that answers 204 after `delay` and records nothing (the noisy neighbour's endpoint).
    pub fn slow_url(&self, delay: Duration) -> String {
        format!("http://{}/slow/{}", self.addr, delay.as_millis())
    }

    /// Remembers the secret of subscription `sub` so that samples of it can be verified.
    pub fn register(&self, sub: u32, secret: &str) -> Result<(), String> {
        let webhook = Webhook::new(secret).map_err(|e| format!("subscription secret: {e}"))?;
        self.shared
            .secrets
            .write()
            .expect("secrets lock")
            .insert(sub, Arc::new(webhook));
        Ok(())
    }

    /// Requests received so far (all subscriptions).
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Signatures checked and signatures that did not verify.
    pub fn signatures(&self) -> (u64, u64) {
        (
            self.shared.verified.load(Ordering::Relaxed),
            self.shared.bad_signatures.load(Ordering::Relaxed),
        )
    }

    /// Takes every arrival recorded so far (of the given subscriptions; others are dropped).
    pub fn take(&self, subs: &[u32]) -> Vec<Arrival> {
        let mut all = Vec::new();
        for shard in &self.shared.shards {
            let mut taken = std::mem::take(&mut *shard.lock().expect("arrival shard"));
            taken.retain(|a| subs.contains(&a.sub));
            all.append(&mut taken);
        }
        all.sort_unstable_by_key(|a| a.at);
        all
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(sub): Path<u32>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let n = shared.count.fetch_add(1, Ordering::Relaxed);
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .map_or(0, |u| u.as_u128());
    if n.is_multiple_of(shared.verify_every) {
        let webhook = shared
            .secrets
            .read()
            .expect("secrets lock")
            .get(&sub)
            .cloned();
        if let Some(webhook) = webhook {
            match webhook.verify(&body, &headers) {
                Ok(()) => shared.verified.fetch_add(1, Ordering::Relaxed),
                Err(_) => shared.bad_signatures.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
    let shard = n as usize % SHARDS;
    shared.shards[shard]
        .lock()
        .expect("arrival shard")
        .push(Arrival { id, sub, at });
    StatusCode::NO_CONTENT
}

/// A slow endpoint: answers after the number of milliseconds in its path, keeps no record.
async fn slow(Path(ms): Path<u64>) -> StatusCode {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    StatusCode::NO_CONTENT
}
