//! The task tracker example ("Popug"): `examples/tracker/run` (see its README).

use std::path::Path;

use anika_examples::{
    Say, Target,
    tracker::{self, Day},
};
use clap::Parser;

/// Plays the tracker's scripted day against a running anika.
#[derive(Parser)]
struct Args {
    /// anika's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An operator API key (default: the one scripts/up stored in .anika/operator-key).
    #[arg(long, env = "ANIKA_OPERATOR_KEY")]
    operator_key: Option<String>,
    /// Where the services keep their schemas (the database is created if missing).
    #[arg(
        long,
        env = "POPUG_DATABASE_URL",
        default_value = "postgres://localhost/anika_popug"
    )]
    database_url: String,
    /// Play the day without Billing's outage (to compare Billing's books with a run that had it).
    #[arg(long)]
    no_outage: bool,
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
    let day = Day {
        billing_outage: !args.no_outage,
        ..Day::default()
    };
    let outcome = match Target::from_args(
        args.url,
        args.operator_key,
        Path::new(".anika/operator-key"),
    ) {
        Ok(target) => tracker::run(&target, &args.database_url, &day, &Say::stdout()).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(outcome) if outcome.checks().iter().all(|(_, holds)| *holds) => {
            std::process::ExitCode::SUCCESS
        }
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("tracker: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
