//! Logging setup shared by the functions.

/// Installs a JSON `tracing` subscriber for CloudWatch: no ANSI, no timestamp (Lambda adds one).
///
/// The level comes from `RUST_LOG` (default `info`). Calling it twice is harmless.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .without_time()
        .with_current_span(false)
        .with_target(false)
        .with_env_filter(filter)
        .try_init();
}
