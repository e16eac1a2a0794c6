//! Where an example's narration goes: stdout for a reader, nowhere (or a log) for the tests.

use std::sync::Arc;

/// Where each line goes.
type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// A sink for the lines an example prints as it runs.
#[derive(Clone)]
pub struct Say(Option<Sink>);

impl Say {
    /// Prints every line to stdout.
    pub fn stdout() -> Self {
        // The narration is the point of an example binary.
        #[allow(clippy::print_stdout)]
        fn print(line: &str) {
            println!("{line}");
        }
        Self(Some(Arc::new(print)))
    }

    /// Sends every line to stderr (shown by `cargo test` only when a test fails).
    pub fn stderr() -> Self {
        Self(Some(Arc::new(|line: &str| eprintln!("{line}"))))
    }

    /// Drops every line.
    pub fn quiet() -> Self {
        Self(None)
    }

    /// Says one line.
    pub fn line(&self, line: impl AsRef<str>) {
        if let Some(sink) = &self.0 {
            sink(line.as_ref());
        }
    }
}
