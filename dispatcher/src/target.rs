//! The SSRF guard at delivery: resolve once, refuse if any address is blocked, connect only to what was checked.
//!
//! reqwest asks this resolver for the addresses of a host and connects to
//! exactly those, so a name that answers differently on a second lookup (DNS
//! rebinding) cannot slip past: there is no second lookup.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
};

use anika_shared::net::TargetPolicy;

/// A boxed lookup future.
pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Name resolution, replaceable in tests (to point a public-looking name at a blocked address).
pub trait Lookup: Send + Sync + 'static {
    /// The addresses of `host`.
    fn lookup(&self, host: String) -> LookupFuture;
}

/// The operating system's resolver.
#[derive(Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> LookupFuture {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A target refused by the policy; recognised in the error chain to log "blocked".
#[derive(Debug, thiserror::Error)]
#[error("blocked by the SSRF guard: {0}")]
pub struct Blocked(pub String);

/// reqwest's resolver: looks up, checks every address, hands over only checked ones.
pub struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    policy: TargetPolicy,
}

impl GuardedResolver {
    /// A resolver applying `policy` to what `lookup` returns.
    pub fn new(lookup: Arc<dyn Lookup>, policy: TargetPolicy) -> Self {
        Self { lookup, policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let lookup = Arc::clone(&self.lookup);
        let policy = self.policy.clone();
        Box::pin(async move {
            let ips = lookup.lookup(host.clone()).await?;
            if ips.is_empty() {
                return Err(format!("`{host}` has no address").into());
            }
            for ip in &ips {
                // One bad address refuses the whole name: the connector may try any of them.
                policy
                    .check_ip(*ip)
                    .map_err(|reason| Blocked(format!("`{host}` resolves to {reason}")))?;
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
