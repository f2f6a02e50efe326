//! The JSON Lambda hands the functions: API Gateway HTTP API (v2) events through `lambda_http`'s
//! request deserialisation, and SQS events with the worker's job messages in them.
//!
//! Invariants: nothing panics; an SQS event that parses serialises to JSON that parses to the same
//! event; an API Gateway event that parses keeps its path and method inside the `http` types'
//! rules.

use aws_lambda_events::sqs::SqsEvent;
use shared::jobs::queue::JobMessage;

/// False for an event `lambda_http` 1.3 panics on instead of refusing (it `expect`s the
/// `http::Request` it builds, `request.rs`), so the rest of the target can still run:
/// - `isBase64Encoded` with a body that is not base64, or a host (`host` header, else
///   `requestContext.domainName`) or `x-forwarded-proto` that is not a URI authority / scheme:
///   API Gateway sets those itself, no caller can send them;
/// - a `rawQueryString` with characters a URI may not hold (`"`, `{`, space…): OPEN DEFECT, a
///   caller can send those (e.g. `curl 'https://…/upload?name="a"'`), and the invocation then
///   fails before any spbridge code runs. The fix belongs in the functions' `main.rs` (percent-
///   encode the raw query before `lambda_http` converts the event); the reproducer is
///   `corpus/aws_events/crash-e4601db5…` with its query made so.
fn lambda_http_takes(text: &str) -> bool {
    use base64::Engine as _;
    use std::str::FromStr as _;
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return true;
    };
    let str_at = |p: &str| v.pointer(p).and_then(|x| x.as_str());
    let encoded = v.get("isBase64Encoded") == Some(&serde_json::Value::Bool(true));
    if let Some(body) = str_at("/body")
        && encoded
        && base64::engine::general_purpose::STANDARD
            .decode(body)
            .is_err()
    {
        return false;
    }
    // The host is the `host` header, else the request context's domain name.
    let host = str_at("/headers/host").or_else(|| str_at("/requestContext/domainName"));
    let bad_host = |h: &str| {
        http::uri::Authority::from_str(h).is_err()
            || url::Url::parse(&format!("https://{h}/")).is_err()
    };
    if host.is_some_and(bad_host)
        || str_at("/headers/x-forwarded-proto")
            .is_some_and(|p| http::uri::Scheme::from_str(p).is_err())
    {
        return false;
    }
    str_at("/rawQueryString")
        .is_none_or(|q| http::uri::PathAndQuery::from_str(&format!("/?{q}")).is_ok())
}

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if lambda_http_takes(text)
        && let Ok(req) = lambda_http::request::from_str(text)
    {
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
