//! The JSON Lambda hands the functions: API Gateway HTTP API (v2) events through `lambda_http`'s
//! request deserialisation, and SQS events with the worker's job messages in them.
//!
//! Invariants: nothing panics; an SQS event that parses serialises to JSON that parses to the same
//! event; an API Gateway event that parses keeps its path and method inside the `http` types'
//! rules.

use aws_lambda_events::sqs::SqsEvent;
use shared::jobs::queue::JobMessage;

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = lambda_http::request::from_str(text) {
        let uri = req.uri();
        assert!(
            uri.path().starts_with('/') || uri.path().is_empty(),
            "{uri}"
        );
        let _ = req.method().as_str();
        let _ = req.body().len();
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
