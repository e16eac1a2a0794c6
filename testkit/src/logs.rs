//! Looking for secrets where they must not be: the spellings of secret bytes, and a capture of the log.

use std::sync::{Arc, Mutex};

/// The ways secret bytes could show up in a dump or a log: hex (both cases) and base64
/// (standard and URL-safe, with and without padding).
pub fn secret_spellings(bytes: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    let hex = hex::encode(bytes);
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut all = vec![hex.to_uppercase(), hex];
    all.extend(engines.iter().map(|e| e.encode(bytes)));
    all.dedup();
    all
}

/// Everything logged on this thread while it lives, at every level, as text: to look for
/// secrets in. Use it from a `#[tokio::test]` (one thread): the tasks the test spawns log
/// on the same thread, whatever global subscriber another test installed.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl std::fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCapture").finish_non_exhaustive()
    }
}

/// The writer of a [`LogCapture`].
#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CaptureWriter {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogCapture {
    /// Starts capturing: TRACE for anika and sqlx, DEBUG for the other libraries.
    pub fn start() -> Self {
        use tracing_subscriber::layer::SubscriberExt as _;
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let filter = tracing_subscriber::EnvFilter::new(
            "debug,anika_shared=trace,anika_catalog=trace,anika_ingest=trace,anika_dispatcher=trace,sqlx=trace",
        );
        let subscriber = tracing_subscriber::registry().with(filter).with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(CaptureWriter(Arc::clone(&buffer))),
        );
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().expect("log buffer")).into_owned()
    }
}
