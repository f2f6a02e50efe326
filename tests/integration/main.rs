//! Integration tests, one binary made of modules.

mod attacks;
mod browser;
mod deliveries;
mod events;
mod fuzz_corpus;
mod ingest;
mod isolation;
mod jobs;
mod layering;
mod lifecycle;
mod log_scan;
mod outages;
mod resume;
mod runtime_events;
mod secrets;
mod sessions;
mod signin;
mod template;
mod template_iam;
mod token_writes;
mod upload_clients;

/// The log scan's subscriber, installed before any test runs so that every line is scanned
/// (`tests/support/secret_values.rs`).
#[ctor::ctor(unsafe)]
fn capture_every_log_line() {
    spbridge_tests::secret_values::capture();
}
