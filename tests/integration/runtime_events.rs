//! The HTTP functions behind a real Lambda Runtime API: events that `lambda_http` 1.3 panics on
//! (a raw query with `"` or a space, a body marked base64 that is not) reach spbridge's handler,
//! or get the adapter's 400, instead of failing the invocation (`shared::lambda_event`).
//!
//! Each test runs `http-function` (tests/bin) as a process of its own, as Lambda runs the
//! function, and plays the Runtime API on 127.0.0.1: it hands out one event per
//! `GET …/invocation/next` and records what comes back on `…/response` or `…/error`.

use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};

const PREFIX: &str = "/2018-06-01/runtime";

/// What the function posted back for one invocation: `response` or `error`, and the JSON.
#[derive(Debug)]
struct Answer {
    kind: String,
    body: Value,
}

/// A Runtime API serving `events` in order, one per poll; later polls wait forever.
async fn runtime_api(events: Vec<Value>) -> (String, mpsc::UnboundedReceiver<Answer>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let events = Arc::new(Mutex::new(events.into_iter().enumerate()));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (events, tx) = (events.clone(), tx.clone());
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (events, tx) = (events.clone(), tx.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let reply = |status: u16| {
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                        };
                        if path == format!("{PREFIX}/invocation/next") {
                            let next = events.lock().await.next();
                            let Some((i, event)) = next else {
                                std::future::pending::<()>().await;
                                unreachable!()
                            };
                            let deadline = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .expect("clock")
                                .as_millis()
                                + 30_000;
                            let resp = reply(200)
                                .header("lambda-runtime-aws-request-id", format!("req-{i}"))
                                .header("lambda-runtime-deadline-ms", deadline.to_string())
                                .header(
                                    "lambda-runtime-invoked-function-arn",
                                    "arn:aws:lambda:eu-west-1:123456789012:function:test",
                                )
                                .header(
                                    "lambda-runtime-trace-id",
                                    "Root=1-5759e988-bd862e3fe1be46a994272793",
                                )
                                .body(Full::new(Bytes::from(event.to_string())))
                                .expect("response");
                            return Ok::<_, Infallible>(resp);
                        }
                        let kind = path.rsplit('/').next().unwrap_or("").to_owned();
                        let body = body
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b).ok())
                            .unwrap_or(Value::Null);
                        let _ = tx.send(Answer { kind, body });
                        Ok(reply(202)
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .expect("response"))
                    }
                });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, rx)
}

/// Runs `http-function <mode>` against a Runtime API serving `events`; returns one answer per
/// event (in order), then stops the process.
async fn invoke(mode: &str, events: Vec<Value>) -> Vec<Answer> {
    let n = events.len();
    let (api, mut answers) = runtime_api(events).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_http-function"))
        .arg(mode)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs([
            ("AWS_LAMBDA_RUNTIME_API", api.as_str()),
            ("AWS_LAMBDA_FUNCTION_NAME", "spbridge-test"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/spbridge-test"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "test"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            // Nothing here may reach AWS: a refused port.
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("SPBRIDGE_SECRET_BACKEND", "file"),
            (
                "SPBRIDGE_SECRET_DIR",
                secrets.path().to_str().expect("utf-8 path"),
            ),
            ("SPBRIDGE_JOBS_TABLE", "jobs"),
            (
                "SPBRIDGE_JOB_QUEUE_URL",
                "http://127.0.0.1:9/123456789012/jobs",
            ),
            (
                "SPBRIDGE_DEAD_LETTER_QUEUE_ARN",
                "arn:aws:sqs:eu-west-1:123456789012:dlq",
            ),
            ("SPBRIDGE_STAGING_BUCKET", "staging"),
            (
                "SPBRIDGE_PUBLIC_BASE_URL",
                "https://spbridge.example/callback",
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn http-function");
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), answers.recv()).await {
            Ok(Some(a)) => got.push(a),
            _ => {
                let _ = child.start_kill();
                let out = child.wait_with_output().await.expect("output");
                panic!(
                    "{mode}: {} of {n} answers; stderr:\n{}",
                    got.len(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let _ = child.start_kill();
    got
}

/// The fuzz reproducer: `GET /connect/x?a="b c{` as API Gateway hands it over.
fn reproducer() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/aws_events/raw-query-quote"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reproducer")).expect("JSON")
}

/// An unsigned upload to `/upload/contoso` with `query` as its raw query.
fn upload(query: &str) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "POST /upload/{connection}",
        "rawPath": "/upload/contoso",
        "rawQueryString": query,
        "headers": {
            "host": "abc123.execute-api.eu-west-1.amazonaws.com",
            "content-type": "application/octet-stream",
            "x-forwarded-proto": "https"
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
            "http": {"method": "POST", "path": "/upload/contoso", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.10", "userAgent": "curl/8.5.0"},
            "requestId": "r1",
            "routeKey": "POST /upload/{connection}",
            "stage": "$default",
            "timeEpoch": 1583348638390u64
        },
        "pathParameters": {"connection": "contoso"},
        "body": "aGVsbG8=",
        "isBase64Encoded": true
    })
}

/// The status and the JSON body of a payload 2.0 response.
fn status_and_json(a: &Answer) -> (i64, Value) {
    assert_eq!(a.kind, "response", "the invocation failed: {}", a.body);
    let status = a.body["statusCode"].as_i64().expect("statusCode");
    let body = a.body["body"].as_str().unwrap_or("{}");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn queries_lambda_http_panics_on_reach_the_upload_route_and_get_its_401() {
    let queries = [
        "name=\"a b\".txt",
        "x={<\u{7f}>}",
        "token=%zz&name=r\u{e9}sum\u{e9} 1.pdf",
        "a=1#b",
    ];
    let answers = invoke("ingest", queries.iter().map(|q| upload(q)).collect()).await;
    for (q, a) in queries.iter().zip(&answers) {
        let (status, body) = status_and_json(a);
        // The upload route's own answer to an unsigned request: spbridge code ran.
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{q}: {body}"
        );
    }
}

#[tokio::test]
async fn the_fuzz_reproducer_gets_the_connect_pages_answer() {
    let answers = invoke("callback", vec![reproducer()]).await;
    let (status, body) = status_and_json(&answers[0]);
    // /connect without an operator's link: the same 403 for every connection (oauth-callback).
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn a_body_marked_base64_that_is_not_gets_400_naming_it() {
    let mut bad = upload("a=1");
    bad["body"] = "not base64!".into();
    let answers = invoke("ingest", vec![bad, upload("a=1")]).await;
    let (status, body) = status_and_json(&answers[0]);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap_or("").contains("base64"),
        "{body}"
    );
    // The process lives on: the next event is answered normally.
    assert_eq!(status_and_json(&answers[1]).0, 401);
}

#[tokio::test]
async fn lambda_http_run_alone_fails_these_invocations() {
    // Why the adapter exists: through lambda_http::run the same event fails the invocation
    // (API Gateway turns that into a 5xx) before spbridge code runs.
    let answers = invoke("ingest-lambda-http", vec![upload("name=\"a b\".txt")]).await;
    assert_eq!(answers[0].kind, "error", "{:?}", answers[0]);
    assert!(
        answers[0].body.to_string().contains("panic"),
        "{:?}",
        answers[0]
    );
}
