//! `anika bench`: a shim that runs the `anika-bench` binary, so that the product binary
//! carries none of the load generator.

use std::{ffi::OsString, os::unix::process::CommandExt, process::Command};

use crate::cli::CliError;

/// Replaces this process with `anika-bench <args>`, found next to this binary or on `PATH`.
pub fn exec(args: &[OsString]) -> Result<(), CliError> {
    let sibling = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("anika-bench"))
        .filter(|path| path.is_file());
    let program = sibling.unwrap_or_else(|| "anika-bench".into());
    // `exec` returns only when it could not start the program.
    let error = Command::new(&program).args(args).exec();
    Err(format!(
        "cannot run {} ({error}); build it with `cargo build --release -p anika-bench`",
        program.display()
    )
    .into())
}
