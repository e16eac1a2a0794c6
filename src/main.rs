//! The `anika` binary: every role and every operator tool behind one command.

use std::process::ExitCode;

use clap::Parser;

mod admin;
mod bench;
mod cli;
mod ops;
mod secrets;
mod serve;

/// mimalloc instead of glibc's malloc: the request paths allocate many small, short-lived
/// buffers on several threads, where glibc spends its time consolidating and unlinking chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let mut source = std::error::Error::source(&*error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
