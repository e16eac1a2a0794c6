//! The `anika` binary: every role and every operator tool behind one command.

use std::process::ExitCode;

use clap::Parser;

mod admin;
mod bench;
mod cli;
mod ops;
mod serve;

/// mimalloc instead of glibc's malloc: the request paths allocate many small, short-lived
/// buffers on several threads, where glibc spends its time consolidating and unlinking chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (v2 and v3); `libmimalloc-sys` names
/// the options around it but not this one.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps freed memory for reuse instead of returning it to the OS after mimalloc's default
/// delay. Under delivery load the server frees and reallocates the same working set (bounded
/// by prefetch and concurrency) continuously; returning it made the kernel zero fresh huge
/// pages on every reuse, 11 % of the server's CPU in the fan-out benchmark. An operator's
/// `MIMALLOC_PURGE_DELAY` still wins.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    keep_freed_memory();
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
