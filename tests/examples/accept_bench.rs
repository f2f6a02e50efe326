//! Receiver accept latency, CPU and AWS calls per accepted upload, printed (nothing is asserted).
//!
//! `cargo run --release -p spbridge-tests --example accept_bench [uploads]`
//!
//! Signed 1 KiB and 1 MiB deliveries go through `upload_ingest::handle` against moto (Secrets
//! Manager, DynamoDB, SQS, S3); every AWS call is counted by operation with an SDK interceptor
//! on each client. The first request warms the container (secret cache, clients) and is not
//! timed. Each size runs twice: as a built request, and as the function's event path does it
//! (the payload 2.0 JSON with a base64 body read as the runtime reads it, then
//! `shared::lambda_event::request_from_event`, the handler and the response JSON). CPU is this
//! process's (all threads', from /proc) per upload; moto runs in its own process, so its time
//! is not in it. `event parse` is the event path alone, without the handler. The synchronous path it replaced uploaded inside the request; its figures (measured
//! for issue 11 on the same emulator) are printed beside these for comparison.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use shared::config::Config;
use shared::ingest::pipeline::Receiver;
use shared::jobs::queue::SqsQueue;
use shared::jobs::staging::S3Staging;
use shared::jobs::{DEFAULT_RETENTION, DynamoJobStore};
use shared::secrets::{AwsSecretStore, CachingStore, SecretStore};

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Counts calls by `Service.Operation`.
#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<BTreeMap<String, u64>>>);

impl Intercept for Calls {
    fn name(&self) -> &'static str {
        "Calls"
    }

    // The operation from the wire: JSON protocols name it in X-Amz-Target; S3 is REST.
    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request();
        let name = match req.headers().get("x-amz-target") {
            Some(t) => t.rsplit('.').next().unwrap_or(t).to_owned(),
            None => format!("S3 {}", req.method()),
        };
        *self.0.lock().unwrap().entry(name).or_default() += 1;
        Ok(())
    }
}

fn sign(id: &str, ts: i64, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(WHSEC.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn request(body: &[u8]) -> lambda_http::Request {
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut r = lambda_http::Request::new(lambda_http::Body::Binary(body.to_vec()));
    *r.method_mut() = http::Method::POST;
    *r.uri_mut() = "/upload/bench?name=bench.bin".parse().unwrap();
    let h = r.headers_mut();
    h.insert("content-type", "application/octet-stream".parse().unwrap());
    h.insert("webhook-id", id.parse().unwrap());
    h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
    h.insert("webhook-signature", sign(&id, ts, body).parse().unwrap());
    r
}

/// The payload 2.0 event API Gateway sends for `req` (binary body as base64).
fn event_json(req: &lambda_http::Request) -> Vec<u8> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
        .collect();
    let body = match req.body() {
        lambda_http::Body::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b),
        _ => unreachable!("the bench sends binary bodies"),
    };
    serde_json::to_vec(&json!({
        "version": "2.0", "routeKey": "POST /upload/{connection}",
        "rawPath": req.uri().path(), "rawQueryString": req.uri().query().unwrap_or_default(),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012", "apiId": "bench", "domainName": "bench.example",
            "http": {"method": "POST", "path": req.uri().path(), "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "bench"},
            "requestId": uuid::Uuid::new_v4().to_string(), "routeKey": "POST /upload/{connection}",
            "stage": "$default", "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 0,
        },
        "body": body, "isBase64Encoded": true,
    }))
    .unwrap()
}

/// What the function does with one event: the runtime's read of the JSON, the request, the
/// handler, the response JSON.
async fn handle_event(state: &Result<upload_ingest::State, String>, event: &[u8]) -> u16 {
    let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(event).unwrap();
    let req = shared::lambda_event::request_from_event(raw.get(), Default::default()).unwrap();
    let resp = upload_ingest::handle(state, req).await;
    let status = resp.status().as_u16();
    let out = shared::lambda_event::response_to_event(resp);
    std::hint::black_box(serde_json::to_vec(&out).unwrap());
    status
}

/// CPU time this process has used, all threads, from each thread's schedstat (the running
/// thread's figure may lag by a scheduler tick, so only sums over many uploads mean much).
fn cpu() -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let infra = spbridge_tests::JobsInfra::create(5).await;
    let calls = Calls::default();
    let sdk = &infra.sdk;
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .interceptor(calls.clone())
            .build(),
    );
    let sm = aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let prefix = spbridge_tests::unique_prefix();
    let config = Config::from_lookup(|k| (k == "SPBRIDGE_SECRET_PREFIX").then(|| prefix.clone()))
        .expect("config");
    let raw: Arc<dyn SecretStore> = Arc::new(AwsSecretStore::from_client(sm));
    raw.put(
        &format!("{prefix}senders/bench"),
        &json!({"webhook_secrets": [WHSEC]}),
        None,
    )
    .await
    .expect("sender secret");
    // Production wraps the store in the warm container's cache.
    let store: Arc<dyn SecretStore> = Arc::new(CachingStore::new(raw, config.secrets.cache_ttl));
    let receiver = Receiver::new(
        config,
        store,
        Arc::new(DynamoJobStore::new(ddb, &infra.table, DEFAULT_RETENTION)),
        Arc::new(SqsQueue::new(sqs, &infra.queue_url)),
        Arc::new(S3Staging::new(s3, &infra.bucket)),
        DEFAULT_RETENTION,
    );
    let state = Ok(upload_ingest::State::new(receiver, None));
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("receiver accept against moto ({build} build; {n} warm uploads per size and path)");
    println!(
        "{:<8} {:<8} {:>8} {:>8} {:>8}   AWS calls per accepted upload",
        "size", "path", "p50 ms", "p99 ms", "CPU ms"
    );
    for (label, size) in [("1 KiB", 1024usize), ("1 MiB", 1024 * 1024)] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        // Warm-up: the cold start's secret read and connections.
        let warm = upload_ingest::handle(&state, request(&body)).await;
        assert_eq!(warm.status(), 202, "warm-up accepted");
        for path in ["request", "event"] {
            calls.0.lock().unwrap().clear();
            let mut times = Vec::with_capacity(n);
            let mut spent = Duration::ZERO;
            for _ in 0..n {
                let req = request(&body);
                let event = (path == "event").then(|| event_json(&req));
                let (c, t) = (cpu(), Instant::now());
                let status = match &event {
                    Some(e) => handle_event(&state, e).await,
                    None => upload_ingest::handle(&state, req).await.status().as_u16(),
                };
                times.push(t.elapsed());
                spent += cpu() - c;
                assert_eq!(status, 202);
            }
            times.sort();
            let per: Vec<String> = calls
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", *v as f64 / n as f64))
                .collect();
            println!(
                "{label:<8} {path:<8} {:>8.2} {:>8.2} {:>8.2}   {}",
                pct(&times, 0.5),
                pct(&times, 0.99),
                spent.as_secs_f64() * 1000.0 / n as f64,
                per.join(", ")
            );
        }
        // The event path alone: JSON, base64 and the request, no handler and no AWS.
        let events: Vec<Vec<u8>> = (0..n).map(|_| event_json(&request(&body))).collect();
        let c = cpu();
        for e in &events {
            let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(e).unwrap();
            let req = shared::lambda_event::request_from_event(raw.get(), Default::default());
            std::hint::black_box(req.unwrap());
        }
        println!(
            "{label:<8} {:<8} {:>8} {:>8} {:>8.2}",
            "parse",
            "-",
            "-",
            (cpu() - c).as_secs_f64() * 1000.0 / n as f64
        );
    }
    println!(
        "synchronous path it replaced (issue 11, same emulator): warm 1 MiB upload 21 ms in the \
         request; 4 Secrets Manager writes per warm upload (idempotency ledger claim and answer, \
         and refresh-token writes), plus the Microsoft upload itself inside the sender's timeout"
    );
}
