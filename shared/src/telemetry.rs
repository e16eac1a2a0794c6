//! Logging: human lines on a terminal, one JSON object per line otherwise.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls (tests) are no-ops.
///
/// `RUST_LOG` overrides the default filter (`info`, with the chatty drivers at `warn`).
pub fn init(format: LogFormat) {
    // lapin logs every message a mandatory publish gets back at WARN, payload included; an
    // event on a topic nobody subscribes to is normal, so those lines are silenced.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "info,sqlx=warn,lapin=warn,lapin::returned_messages=error,amq_protocol=warn,hyper=warn,reqwest=warn",
        )
    });
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    // Already installed (several apps in one test process): keep the first, which logs this.
    if let Err(e) = result {
        tracing::debug!(error = %e, "a log subscriber is already installed; keeping it");
    }
}
