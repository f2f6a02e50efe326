//! Every sample event in `events/` parses and reaches the matching function's handler.

use std::path::PathBuf;

use lambda_http::{Body, Request};
use shared::config::Config;

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events")
}

fn test_config() -> Config {
    // The file store under a fresh temporary directory, so handlers that open it write nothing
    // into the repository.
    let dir =
        std::env::temp_dir().join(format!("spbridge-events-{}", uuid::Uuid::new_v4().simple()));
    let dir = dir.to_string_lossy().into_owned();
    Config::from_lookup(|k| (k == "SPBRIDGE_SECRET_DIR").then(|| dir.clone()))
        .expect("a secret dir alone is a valid config")
}

fn http_request(json: &str) -> Request {
    lambda_http::request::from_str(json).expect("API Gateway v2 event parses")
}

#[tokio::test]
async fn every_event_file_parses_and_routes() {
    let mut seen = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(events_dir())
        .expect("events/ exists")
        .map(|e| e.expect("readable entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".json"),
            "events/ holds only JSON events, found {name}"
        );
        let json = std::fs::read_to_string(&path).unwrap();
        match name.split(['-', '.']).next().unwrap() {
            "connect" | "callback" => {
                let req = http_request(&json);
                assert!(
                    req.uri().path() == "/callback" || req.uri().path().starts_with("/connect/"),
                    "{name}: unexpected path {}",
                    req.uri().path()
                );
                let state = oauth_callback::init_with(test_config());
                let resp = oauth_callback::handle(&state, req).await;
                // A 404 may name the unknown connection; only "no such route" means unrouted.
                let body = String::from_utf8_lossy(resp.body().as_ref()).into_owned();
                assert!(
                    resp.status() != 404 || !body.contains("no such route"),
                    "{name} is not routed by oauth-callback"
                );
                assert!(
                    resp.status().is_client_error(),
                    "{name}: {} {body}",
                    resp.status()
                );
            }
            "upload" => {
                let req = http_request(&json);
                assert_eq!(req.method(), "POST", "{name}");
                assert!(req.uri().path().starts_with("/upload"), "{name}");
                // API Gateway flagged the body base64; lambda_http hands us the decoded bytes.
                assert!(
                    matches!(req.body(), Body::Binary(b) if !b.is_empty()),
                    "{name}"
                );
                let jobs = shared::jobs::JobsConfig::from_lookup(|k| {
                    matches!(
                        k,
                        "SPBRIDGE_JOBS_TABLE"
                            | "SPBRIDGE_JOB_QUEUE_URL"
                            | "SPBRIDGE_STAGING_BUCKET"
                    )
                    .then(|| "spbridge-events".to_owned())
                })
                .expect("jobs config");
                let sdk = spbridge_tests::moto_sdk_config().await;
                let state = upload_ingest::init_with(test_config(), &jobs, &sdk, None).await;
                let resp = upload_ingest::handle(&state, req).await;
                assert_ne!(resp.status(), 404, "{name} is not routed by upload-ingest");
            }
            "schedule" => {
                let trigger: token_refresh::Trigger =
                    serde_json::from_str(&json).expect("schedule event parses");
                assert!(
                    matches!(trigger, token_refresh::Trigger::Scheduled(_)),
                    "{name}"
                );
                let state = token_refresh::init_with(test_config());
                token_refresh::handle(&state, trigger)
                    .await
                    .expect("scheduled run succeeds");
            }
            "sqs" => {
                let event: aws_lambda_events::event::sqs::SqsEvent =
                    serde_json::from_str(&json).expect("SQS event parses");
                let ids: Vec<String> = event
                    .records
                    .iter()
                    .map(|r| r.message_id.clone().expect("messageId"))
                    .collect();
                assert!(!ids.is_empty(), "{name}");
                for r in &event.records {
                    let msg: shared::jobs::queue::JobMessage =
                        serde_json::from_str(r.body.as_deref().unwrap_or_default())
                            .unwrap_or_else(|e| panic!("{name}: body is not a job message: {e}"));
                    assert!(!msg.files.is_empty(), "{name}");
                }
                // A worker without configuration keeps every message for a later delivery.
                let state: Result<upload_worker::State, String> = Err("not configured".into());
                let ctx = lambda_runtime::Context::default();
                let answer =
                    upload_worker::handle(&state, lambda_runtime::LambdaEvent::new(event, ctx))
                        .await;
                let failed: Vec<String> = answer
                    .batch_item_failures
                    .iter()
                    .map(|f| f.item_identifier.clone())
                    .collect();
                assert_eq!(failed, ids, "{name}");
            }
            other => panic!("events/{name}: no function takes events named {other}-*"),
        }
        seen.push(name);
    }
    for expected in [
        "connect.json",
        "callback-get.json",
        "callback-post.json",
        "upload-raw.json",
        "upload-multipart.json",
        "upload-session.json",
        "upload-session-complete.json",
        "schedule.json",
        "sqs-upload.json",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "events/{expected} is missing"
        );
    }
}

#[test]
fn manual_refresh_payload_parses() {
    let t: token_refresh::Trigger =
        serde_json::from_str(r#"{"connections":["contoso-docs"]}"#).unwrap();
    assert!(
        matches!(t, token_refresh::Trigger::Manual { connections } if connections == ["contoso-docs"])
    );
}

#[tokio::test]
async fn config_error_is_a_clear_response_not_a_panic() {
    let state: Result<upload_ingest::State, String> =
        Err("environment variable SPBRIDGE_CLOUD is invalid: unknown cloud".into());
    let req = http_request(&std::fs::read_to_string(events_dir().join("upload-raw.json")).unwrap());
    let resp = upload_ingest::handle(&state, req).await;
    assert_eq!(resp.status(), 500);
    let body = std::str::from_utf8(resp.body().as_ref())
        .unwrap()
        .to_owned();
    assert!(body.contains("SPBRIDGE_CLOUD"), "{body}");
}
