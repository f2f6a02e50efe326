//! The log scan can fail: a logged secret is caught as it is written, after the fact, in its
//! encoded forms, and it fails the whole run even when the panic it raises is swallowed.

use std::process::Command;
use std::sync::Arc;

use spbridge_tests::secret_values::{LogScan, subscriber};

const SECRET: &str = "whsec_c2NhbnRlc3Qtc2VjcmV0LXZhbHVlLTAx";

fn with_scan(scan: &Arc<LogScan>, f: impl FnOnce()) {
    tracing::subscriber::with_default(subscriber(scan), f);
}

#[test]
fn a_remembered_secret_is_caught_as_it_is_logged_and_not_repeated() {
    let scan = Arc::new(LogScan::default());
    scan.remember("webhook secret", SECRET);
    let logged = std::panic::catch_unwind(|| {
        with_scan(&scan, || tracing::warn!(secret = SECRET, "oops"));
    });
    let panic = logged.expect_err("the logging thread panics");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("the webhook secret was logged"),
        "{message}"
    );
    assert!(
        !message.contains(SECRET),
        "the report repeats the secret: {message}"
    );
    let found = scan.final_check();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("[webhook secret]") && !found[0].contains(SECRET));
}

#[test]
fn a_value_learnt_after_it_was_logged_is_caught_at_the_end() {
    let scan = Arc::new(LogScan::default());
    with_scan(&scan, || {
        tracing::info!(
            url = "https://x.test/cb?code=AuthCode%2Fwith%2Bslash&state=1",
            "callback"
        );
        tracing::info!(refresh = "rt-\"quoted\"-0123", "answer");
        tracing::info!(
            jwt_tail = "c2lnbmF0dXJlLXNlZ21lbnQ",
            "a token's signature alone"
        );
        tracing::info!("nothing secret here");
    });
    assert!(scan.final_check().is_empty(), "nothing remembered yet");
    scan.watch(|| {
        vec![
            ("authorization code", "AuthCode/with+slash".to_owned()),
            ("refresh token", "rt-\"quoted\"-0123".to_owned()),
            (
                "access token",
                "eyJhbGciOi.eyJzdWIiOjF9.c2lnbmF0dXJlLXNlZ21lbnQ".to_owned(),
            ),
        ]
    });
    let found = scan.final_check().join("\n");
    assert!(
        found.contains("[authorization code]"),
        "percent-encoded form: {found}"
    );
    assert!(
        found.contains("[refresh token]"),
        "JSON-escaped form: {found}"
    );
    assert!(
        found.contains("[access token]"),
        "JWT signature alone: {found}"
    );
    assert_eq!(found.lines().count(), 3, "{found}");
    assert_eq!(scan.line_count(), 4);
}

const CHILD: &str = "SPBRIDGE_LOG_SCAN_CHILD";

/// In the child: the secret is logged on a thread whose panic nobody looks at, and the test
/// itself passes. Only the exit check can fail the run. In the parent: it does.
#[test]
fn a_leak_fails_the_run_even_when_its_panic_is_swallowed() {
    if std::env::var_os(CHILD).is_some() {
        spbridge_tests::secret_values::remember("client secret", SECRET);
        let _ = std::thread::spawn(|| tracing::info!(secret = SECRET, "leaked")).join();
        return;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "log_scan::a_leak_fails_the_run_even_when_its_panic_is_swallowed",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("the test binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(101), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the test itself passed: {stdout}"
    );
    assert!(stderr.contains("the client secret was logged"), "{stderr}");
    assert!(
        !stderr.contains(SECRET),
        "the report repeats the secret: {stderr}"
    );
}
