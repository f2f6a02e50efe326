//! The JSON Lambda hands the functions: API Gateway HTTP API (v2) events through `lambda_http`'s
//! request deserialisation, and SQS events with the worker's job messages in them.
//!
//! API Gateway events go through `shared::lambda_event::request_from_event`, the adapter the HTTP
//! functions' `main.rs` use in front of `lambda_http` (which panics on URIs it cannot build).
//!
//! Invariants: nothing panics, including inside the adapter (libFuzzer's panic hook aborts even on
//! the panic the adapter catches as a last resort, and the replay checks it was not needed); a
//! request keeps its path inside the `http` types' rules and its query decodes to the bytes sent;
//! an SQS event that parses serialises to JSON that parses to the same event.

use aws_lambda_events::sqs::SqsEvent;
use lambda_http::Context;
use shared::jobs::queue::JobMessage;
use shared::lambda_event;

/// The raw query's bytes after percent-decoding (invalid escapes kept as they are).
fn decoded(q: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(q).collect()
}

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match lambda_event::request_from_event(text, Context::default()) {
        Ok(req) => {
            let uri = req.uri();
            assert!(
                uri.path().starts_with('/') || uri.path().is_empty(),
                "{uri}"
            );
            let _ = req.method().as_str();
            let _ = req.body().len();
            let v: serde_json::Value = serde_json::from_str(text).expect("the adapter parsed it");
            let raw_path = v.get("rawPath").and_then(|p| p.as_str()).unwrap_or("");
            if let Some(sent) = v.get("rawQueryString").and_then(|q| q.as_str())
                && !sent.is_empty()
                && !raw_path.contains(['?', '#'])
            {
                let got = uri.query().unwrap_or("");
                assert_eq!(
                    decoded(got),
                    decoded(sent),
                    "query changed: {sent:?} -> {got:?}"
                );
            }
        }
        Err(e) => {
            assert_eq!(e.status().as_u16(), 400, "{e}");
            assert_ne!(
                e.message,
                lambda_event::UNCONVERTIBLE,
                "lambda_http panicked on it"
            );
        }
    }
    if let Ok(event) = serde_json::from_str::<SqsEvent>(text) {
        let again = serde_json::to_string(&event).expect("an SQS event serialises");
        let back: SqsEvent = serde_json::from_str(&again).expect("its own JSON parses");
        assert_eq!(
            serde_json::to_value(&back).expect("serialises"),
            serde_json::to_value(&event).expect("serialises"),
            "SQS event changed in a round trip"
        );
        // Each body as the worker reads it: a job message that parses keeps its meaning.
        for body in event.records.iter().filter_map(|r| r.body.as_deref()) {
            if let Ok(msg) = serde_json::from_str::<JobMessage>(body) {
                let again = serde_json::to_string(&msg).expect("a job message serialises");
                assert_eq!(serde_json::from_str::<JobMessage>(&again).ok(), Some(msg));
            }
        }
    }
}
