//! The dealer–bank example: `examples/dealer-bank/run` (see its README).

use std::path::Path;

use anika_examples::{Say, Target, dealer_bank};
use clap::Parser;

/// Runs the dealer–bank flow against a running anika.
#[derive(Parser)]
struct Args {
    /// anika's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An operator API key (default: the one scripts/up stored in .anika/operator-key).
    #[arg(long, env = "ANIKA_OPERATOR_KEY")]
    operator_key: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Warnings and errors only (RUST_LOG overrides): the narration is on stdout.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let outcome = match Target::from_args(
        args.url,
        args.operator_key,
        Path::new(".anika/operator-key"),
    ) {
        Ok(target) => dealer_bank::run(&target, &Say::stdout()).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dealer_bank: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
