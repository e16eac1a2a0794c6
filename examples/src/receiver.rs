//! A partner's webhook endpoint: verifies every delivery, drops duplicates, hands the rest on.
//!
//! One receiver listens on a loopback port and serves one path per subscription
//! (`/hooks/<name>`), each with its own secret. A delivery whose Standard Webhooks
//! signature does not verify is refused with 401 before anything reads it; one whose
//! `webhook-id` was already handled here is answered 204 without calling the handler
//! again (anika delivers at least once, so duplicates do happen). A handler error
//! answers 500 (503 for an event that cannot be applied yet), so anika retries; only a
//! handled delivery counts as seen.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use serde::Deserialize;
use serde_json::Value;
use standardwebhooks::Webhook;
use tokio::sync::oneshot;

use crate::Error;

/// One event as anika delivers it.
#[derive(Clone, Debug, Deserialize)]
pub struct Delivery {
    /// The event id (also in `webhook-id`).
    pub id: String,
    /// The topic's id.
    pub topic_id: String,
    /// The topic's name.
    pub topic: String,
    /// The partner that published it.
    pub publisher_partner_id: String,
    /// When anika accepted it.
    pub received_at: String,
    /// What the publisher sent.
    pub data: Value,
}

/// What a handler did with a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// It changed the partner's state.
    Applied,
    /// The partner's own storage had seen this event id already.
    Duplicate,
}

/// A partner's reaction to the events it receives.
pub trait Handler: Send + Sync + 'static {
    /// Handles one verified delivery that arrived on the path of subscription `hook`.
    fn handle(
        &self,
        hook: &str,
        delivery: Delivery,
    ) -> impl Future<Output = Result<Handled, Error>> + Send;
}

/// Counts of what a receiver did, for the examples' summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Deliveries handed to the handler that applied them.
    pub applied: u64,
    /// Deliveries dropped as repeats of an id seen before (here or in the handler's storage).
    pub duplicates: u64,
    /// Requests refused because their signature did not verify.
    pub bad_signatures: u64,
}

struct Shared<H> {
    handler: H,
    hooks: RwLock<HashMap<String, Arc<Webhook>>>,
    seen: Mutex<HashSet<String>>,
    counts: Mutex<Counts>,
}

/// A running webhook endpoint on `127.0.0.1`.
pub struct Receiver<H> {
    addr: SocketAddr,
    shared: Arc<Shared<H>>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl<H: Handler> Receiver<H> {
    /// Starts listening on a free loopback port.
    pub async fn start(handler: H) -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            handler,
            hooks: RwLock::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
            counts: Mutex::new(Counts::default()),
        });
        let app = Router::new()
            .route("/hooks/{hook}", post(receive::<H>))
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "webhook receiver stopped");
            }
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// The URL of the path for subscription `hook`.
    pub fn url(&self, hook: &str) -> String {
        format!("http://{}/hooks/{hook}", self.addr)
    }

    /// Accepts deliveries on `hook`'s path signed with `secret` (`whsec_…`).
    pub fn register(&self, hook: &str, secret: &str) -> Result<(), Error> {
        let webhook = Webhook::new(secret).map_err(|e| Error::Secret(e.to_string()))?;
        self.shared
            .hooks
            .write()
            .expect("hooks lock")
            .insert(hook.to_owned(), Arc::new(webhook));
        Ok(())
    }

    /// The handler, to read the partner's state.
    pub fn handler(&self) -> &H {
        &self.shared.handler
    }

    /// What the receiver did so far.
    pub fn counts(&self) -> Counts {
        *self.shared.counts.lock().expect("counts lock")
    }

    /// Stops listening (the partner "goes down"): anika's deliveries fail from now on.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server may have ended on its own already; then there is nobody to tell.
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take()
            && let Err(error) = server.await
        {
            tracing::error!(%error, "webhook receiver task failed");
        }
    }
}

async fn receive<H: Handler>(
    State(shared): State<Arc<Shared<H>>>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let webhook = shared.hooks.read().expect("hooks lock").get(&hook).cloned();
    let Some(webhook) = webhook else {
        return StatusCode::NOT_FOUND;
    };
    if webhook.verify(&body, &headers).is_err() {
        shared.counts.lock().expect("counts lock").bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Some(id) = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return StatusCode::BAD_REQUEST;
    };
    if shared.seen.lock().expect("seen lock").contains(&id) {
        shared.counts.lock().expect("counts lock").duplicates += 1;
        return StatusCode::NO_CONTENT;
    }
    let delivery: Delivery = match serde_json::from_slice(&body) {
        Ok(delivery) => delivery,
        Err(error) => {
            tracing::warn!(%error, %hook, "delivery is not an anika envelope");
            return StatusCode::BAD_REQUEST;
        }
    };
    match shared.handler.handle(&hook, delivery).await {
        Ok(handled) => {
            shared.seen.lock().expect("seen lock").insert(id);
            let mut counts = shared.counts.lock().expect("counts lock");
            match handled {
                Handled::Applied => counts.applied += 1,
                Handled::Duplicate => counts.duplicates += 1,
            }
            StatusCode::NO_CONTENT
        }
        // Not yet applicable (it depends on an event still on its way): anika brings it again.
        Err(error @ Error::Pending(_)) => {
            tracing::info!(%error, %hook, %id, "delivery refused for now");
            StatusCode::SERVICE_UNAVAILABLE
        }
        Err(error) => {
            // anika retries on 5xx; the cause stays here, in the partner's log.
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), %hook, %id, "handling a delivery failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}
