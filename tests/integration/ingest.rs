//! upload-ingest end to end: API Gateway events through `upload_ingest::handle`, secrets in moto,
//! tokens and files in the tenant emulator, `source_url` from a local HTTP server.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use lambda_http::{Body, Request, RequestExt as _, Response};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use shared::access::Access;
use shared::config::Config;
use shared::identity::TokenCache;
use shared::ingest::Limits;
use shared::ingest::pipeline::{Receiver, TokenError, TokenProvider};
use shared::jobs::callback::Callbacks;
use shared::jobs::upload::Uploader;
use shared::jobs::worker::{Worker, WorkerSettings};
use shared::secrets::SecretStore;
use shared::upload::RetryPolicy;
use tenant_emulator::{Emulator, FaultKind, FaultRule, Options, RunningEmulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// `webhook-timestamp` of the upload samples in `events/`.
const EVENT_TS: i64 = 1_795_327_200;
const MIB: usize = 1024 * 1024;
pub(crate) const SP_LIB: &str = "/sites/team/Shared Documents";

fn byte_at(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i >> 17) as u8
}

fn content(len: usize) -> Vec<u8> {
    (0..len as u64).map(byte_at).collect()
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs like a Standard Webhooks sender (for binary bodies the Python library cannot take).
fn sign(id: &str, ts: i64, body: &[u8]) -> String {
    sign_with(WHSEC, id, ts, body)
}

/// The same with another `whsec_` secret.
pub(crate) fn sign_with(whsec: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(whsec.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    spbridge_tests::secret_values::remember("webhook signature", &sig);
    format!("v1,{sig}")
}

/// Headers signed by the Python `standardwebhooks` library (tests/python/sign_webhook.py).
fn python_sign(id: &str, ts: i64, body: &str) -> HashMap<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/sign_webhook.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            "--secret",
            WHSEC,
            "--body",
            body,
            "--msg-id",
            id,
            "--timestamp",
            &ts.to_string(),
        ])
        .output()
        .expect("python3 runs (the venv with standardwebhooks must be on PATH)");
    assert!(
        out.status.success(),
        "sign_webhook.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sign_webhook.py prints JSON headers")
}

/// An API Gateway v2 event for `POST {path}?{query}` with a base64 body, parsed by lambda_http.
pub(crate) fn event(path: &str, query: &str, headers: &[(&str, String)], body: &[u8]) -> Request {
    let mut h = serde_json::Map::new();
    h.insert(
        "host".into(),
        json!("abc123.execute-api.us-east-1.amazonaws.com"),
    );
    for (k, v) in headers {
        h.insert((*k).to_owned(), json!(v));
    }
    let ev = json!({
        "version": "2.0",
        "routeKey": "POST /upload/{connection}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": h,
        "requestContext": {
            "accountId": "123456789012", "apiId": "api-id",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com", "domainPrefix": "abc123",
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.10", "userAgent": "test"},
            "requestId": "req-1", "routeKey": "POST /upload/{connection}", "stage": "$default",
            "time": "22/Nov/2026:07:00:00 +0000", "timeEpoch": 1_795_327_200_000u64
        },
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true
    });
    lambda_http::request::from_str(&ev.to_string()).expect("event parses")
}

/// A signed raw upload: `content-type` octet-stream, name and other settings in the query.
pub(crate) fn signed_raw(path: &str, query: &str, id: &str, body: &[u8]) -> Request {
    let ts = now_secs();
    event(
        path,
        query,
        &[
            ("content-type", "application/octet-stream".into()),
            ("webhook-id", id.into()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sign(id, ts, body)),
        ],
        body,
    )
}

pub(crate) fn signed_json(path: &str, id: &str, body: &Value) -> Request {
    let ts = now_secs();
    let bytes = body.to_string().into_bytes();
    event(
        path,
        "",
        &[
            ("content-type", "application/json".into()),
            ("webhook-id", id.into()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sign(id, ts, &bytes)),
        ],
        &bytes,
    )
}

pub(crate) fn new_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

async fn answer(resp: Response<Body>) -> (u16, Value, HashMap<String, String>) {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::Null),
        Body::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        Body::Empty => Value::Null,
        _ => Value::Null,
    };
    (status, body, headers)
}

/// Emulator tokens per connection: ACS app-only for SharePoint, Entra client credentials for
/// Graph, or (to exercise the doctor) an Entra secret-based token sent to SharePoint.
struct EmulatorTokens {
    access: Access,
    emu: tenant_emulator::EmulatorInfo,
    kinds: HashMap<String, TokenKind>,
    calls: AtomicU32,
    forced: AtomicU32,
    /// Every token handed out, to prove none reaches a log line or an answer.
    issued: std::sync::Mutex<Vec<String>>,
}

#[derive(Clone, Copy)]
enum TokenKind {
    /// The production path: `shared::access::Access` with the stored app credentials.
    Access,
    /// An Entra client-credentials (secret) token sent to SharePoint, which refuses it.
    EntraSecretForSharePoint,
}

impl EmulatorTokens {
    /// The token SharePoint refuses: Entra client credentials with a secret, for SharePoint.
    async fn entra_secret_token(&self) -> Result<SecretString, TokenError> {
        let info = &self.emu;
        let app = info.entra_app("entra-app").expect("entra-app");
        let form = [
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", app.client_id.clone()),
            (
                "client_secret",
                app.client_secret.clone().unwrap_or_default(),
            ),
            ("scope", format!("http://{}/.default", info.sharepoint_host)),
        ];
        let resp = reqwest::Client::new()
            .post(format!(
                "{}/{}/oauth2/v2.0/token",
                info.login, info.tenant_id
            ))
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Transient(format!("token endpoint: {e}")))?;
        let body: Value = resp
            .json()
            .await
            .map_err(|e| TokenError::Transient(format!("token JSON: {e}")))?;
        body["access_token"]
            .as_str()
            .map(|t| SecretString::from(t.to_owned()))
            .ok_or_else(|| TokenError::Misconfigured(format!("no token: {body}")))
    }
}

impl TokenProvider for EmulatorTokens {
    fn bearer<'a>(
        &'a self,
        connection: &'a str,
        force_refresh: bool,
    ) -> BoxFuture<'a, Result<SecretString, TokenError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if force_refresh {
                self.forced.fetch_add(1, Ordering::Relaxed);
            }
            let token = match self
                .kinds
                .get(connection)
                .copied()
                .unwrap_or(TokenKind::Access)
            {
                TokenKind::Access => {
                    TokenProvider::bearer(&self.access, connection, force_refresh).await
                }
                TokenKind::EntraSecretForSharePoint => self.entra_secret_token().await,
            }?;
            if let Ok(mut issued) = self.issued.lock() {
                issued.push(token.expose_secret().to_owned());
            }
            Ok(token)
        })
    }
}

/// A sender secret holding WHSEC, plus `extra` fields.
pub(crate) fn sender_json(extra: Value) -> Value {
    let mut v = json!({"webhook_secrets": [WHSEC]});
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v
}

pub(crate) struct World {
    emu: RunningEmulator,
    state: Result<upload_ingest::State, String>,
    tokens: Arc<EmulatorTokens>,
    pub(crate) store: Arc<dyn SecretStore>,
    pub(crate) prefix: String,
    pub(crate) infra: spbridge_tests::JobsInfra,
    pub(crate) worker_state: Arc<Result<upload_worker::State, String>>,
    workers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Ok(workers) = self.workers.lock() {
            for w in workers.iter() {
                w.abort();
            }
        }
    }
}

/// The ARN the test workers give job-queue records (the DLQ's is its real one).
pub(crate) const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:jobs";

#[derive(Default)]
pub(crate) struct Setup {
    pub(crate) opts: Options,
    pub(crate) env: Vec<(&'static str, String)>,
    pub(crate) limits: Limits,
    pub(crate) clock: Option<i64>,
    /// Worker loops polling the queue (default 1).
    pub(crate) workers: usize,
    /// Queue visibility timeout and worker lease in seconds (default 30 and 60).
    pub(crate) visibility_secs: Option<u32>,
    /// maxReceiveCount (default 3).
    pub(crate) max_receives: Option<u32>,
    /// Start no worker loop (the test runs its own).
    pub(crate) no_workers: bool,
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(2),
        max_total_wait: Duration::from_secs(60),
    }
}

impl World {
    pub(crate) async fn start(setup: Setup) -> World {
        let emu = Emulator::start(setup.opts).await.expect("emulator starts");
        spbridge_tests::secret_values::remember("webhook secret", WHSEC);
        spbridge_tests::secret_values::watch(emu.issued_credentials());
        let info = emu.info().clone();
        let prefix = spbridge_tests::unique_prefix();
        let mut env: HashMap<&str, String> = HashMap::from([
            ("SPBRIDGE_SECRET_PREFIX", prefix.clone()),
            ("SPBRIDGE_SECRET_BACKEND", "aws".into()),
            ("SPBRIDGE_GRAPH_URL", info.graph.clone()),
            ("SPBRIDGE_ACS_URL", info.acs.clone()),
            ("SPBRIDGE_LOGIN_URL", info.login.clone()),
            ("SPBRIDGE_DEFAULT_CONNECTION", "contoso-docs".into()),
            ("SPBRIDGE_SOURCE_URL_ALLOW_LOOPBACK", "true".into()),
            ("SPBRIDGE_SECRET_CACHE_TTL_SECS", "0".into()),
        ]);
        for (k, v) in setup.env {
            env.insert(k, v);
        }
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("config");
        let store: Arc<dyn SecretStore> = Arc::new(spbridge_tests::moto_store().await);
        let site = info.site("team").expect("site team").clone();
        let drive_id = site.libraries[0].drive_id.clone();
        let put = |name: String, v: Value| {
            let store = store.clone();
            async move { store.put(&name, &v, None).await.expect("secret written") }
        };
        put(format!("{prefix}webhook"), json!({"secrets": [WHSEC]})).await;
        // App credentials: the ACS add-in for SharePoint, the Entra app (secret) for Graph.
        let acs = info.acs_app("acs-app").expect("acs-app");
        put(
            format!("{prefix}acs-app"),
            json!({"client_id": acs.client_id, "client_secret": acs.client_secret,
                   "realm": info.realm, "tenant_id": info.tenant_id}),
        )
        .await;
        let entra = info.entra_app("entra-app").expect("entra-app");
        put(
            format!("{prefix}app"),
            json!({"client_id": entra.client_id, "client_secret": entra.client_secret,
                   "tenant_id": info.tenant_id}),
        )
        .await;
        let acs_app = format!("{prefix}acs-app");
        let sp = |extra: Value| {
            let mut v = json!({
                "provider": "acs", "auth": "app_only", "status": "active",
                "app_secret": acs_app, "realm": info.realm,
                "target": {"kind": "sharepoint", "site_url": site.url, "library": "Shared Documents"},
            });
            if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
                m.extend(e);
            }
            v
        };
        put(format!("{prefix}connections/contoso-docs"), sp(json!({}))).await;
        put(
            format!("{prefix}connections/docs-inbox"),
            json!({
                "provider": "acs", "auth": "app_only", "status": "active",
                "app_secret": acs_app, "realm": info.realm,
                "target": {"kind": "sharepoint", "site_url": site.url, "library": "Shared Documents",
                           "base_folder": "inbox"},
            }),
        )
        .await;
        put(format!("{prefix}connections/open"), sp(json!({}))).await;
        put(
            format!("{prefix}connections/drive"),
            json!({"provider": "entra", "auth": "app_only", "status": "active",
                   "tenant_id": info.tenant_id,
                   "target": {"kind": "drive", "drive_id": drive_id}}),
        )
        .await;
        put(
            format!("{prefix}connections/secret-cert"),
            json!({"provider": "entra", "auth": "app_only", "status": "active",
                   "target": {"kind": "sharepoint", "site_url": site.url, "library": "Shared Documents"}}),
        )
        .await;
        put(
            format!("{prefix}connections/lapsed"),
            sp(json!({"status": "needs_consent", "status_code": "invalid_grant"})),
        )
        .await;
        // Sender secrets: what upload-ingest reads. Every connection here shares WHSEC; the
        // attack tests give connections their own.
        for (id, extra) in [
            ("contoso-docs", json!({})),
            (
                "docs-inbox",
                json!({"sanitize_names": true, "blocked_extensions": ["exe", "zip"],
                       "max_file_bytes": 2 * MIB}),
            ),
            (
                "open",
                json!({"allow_unsigned": true, "github_signature": true, "github_secrets": [WHSEC]}),
            ),
            ("drive", json!({})),
            ("secret-cert", json!({})),
            ("lapsed", json!({})),
            ("alex", json!({})),
            // A sender secret whose connection secret is missing: 404 after authentication.
            ("orphan", json!({})),
        ] {
            put(format!("{prefix}senders/{id}"), sender_json(extra)).await;
        }
        let http = shared::http::build_client(&config.http).expect("client");
        let access = Access::new(
            http.clone(),
            config.endpoints.clone(),
            Arc::new(TokenCache::new(Duration::from_secs(300))),
            store.clone(),
            config.secrets.clone(),
        );
        let tokens = Arc::new(EmulatorTokens {
            access,
            emu: info.clone(),
            kinds: HashMap::from([(
                "secret-cert".to_owned(),
                TokenKind::EntraSecretForSharePoint,
            )]),
            calls: AtomicU32::new(0),
            forced: AtomicU32::new(0),
            issued: std::sync::Mutex::new(Vec::new()),
        });
        let max_receives = setup.max_receives.unwrap_or(3);
        let visibility = setup.visibility_secs.unwrap_or(30);
        let infra = spbridge_tests::JobsInfra::create_with(max_receives, visibility).await;
        let (jobs, queue, staging) = infra.adapters();
        let mut receiver = Receiver::new(
            config.clone(),
            store.clone(),
            Arc::new(jobs.clone()),
            Arc::new(queue.clone()),
            Arc::new(staging.clone()),
            shared::jobs::DEFAULT_RETENTION,
        )
        .with_limits(setup.limits);
        if let Some(ts) = setup.clock {
            receiver = receiver.with_clock(Arc::new(move || {
                time::OffsetDateTime::from_unix_timestamp(ts).unwrap()
            }));
        }
        let uploader = Uploader::new(
            http.clone(),
            config.endpoints.graph.clone(),
            config.ingest.chunk_bytes,
            tokens.clone(),
        )
        .with_retry(fast_retries());
        let worker = Worker {
            jobs: Arc::new(jobs),
            queue: Arc::new(queue),
            staging: Arc::new(staging),
            store: store.clone(),
            secrets: config.secrets.clone(),
            uploader,
            callbacks: Callbacks::new(http.clone()),
            sources: shared::jobs::fetch::source_client(&config.http, true).expect("client"),
            max_source_bytes: config.ingest.max_source_bytes,
            settings: WorkerSettings {
                max_receives,
                // Shorter than the visibility, so a killed worker's lease has lapsed when its
                // message comes back.
                lease: Duration::from_secs(u64::from(visibility) * 2 / 3),
                base_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(2),

                ..WorkerSettings::default()
            },
            clock: Arc::new(time::OffsetDateTime::now_utc),
        };
        let worker_state = Arc::new(Ok(upload_worker::State::new(
            worker,
            Some(infra.dlq_arn.clone()),
        )));
        let count = if setup.no_workers {
            0
        } else {
            setup.workers.max(1)
        };
        let workers = (0..count)
            .map(|_| spbridge_tests::spawn_worker(worker_state.clone(), &infra, QUEUE_ARN))
            .collect();
        let state = Ok(upload_ingest::State::new(receiver, None));
        World {
            emu,
            state,
            tokens,
            store,
            prefix,
            infra,
            worker_state,
            workers: std::sync::Mutex::new(workers),
        }
    }

    /// Sends `req` as is.
    pub(crate) async fn send_raw(&self, req: Request) -> (u16, Value, HashMap<String, String>) {
        answer(upload_ingest::handle(&self.state, req).await).await
    }

    /// Sends `req` with `Prefer: wait=20` (unless it has a `Prefer`), so the answer is the
    /// job's end: 201 with the result, or the failure.
    pub(crate) async fn send(&self, mut req: Request) -> (u16, Value, HashMap<String, String>) {
        if !req.headers().contains_key("prefer") {
            req.headers_mut()
                .insert("prefer", http::HeaderValue::from_static("wait=20"));
        }
        answer(upload_ingest::handle(&self.state, req).await).await
    }

    /// The receiver's configuration.
    pub(crate) fn state_config(&self) -> Config {
        self.state.as_ref().unwrap().receiver().config().clone()
    }

    /// The emulator.
    pub(crate) fn emu(&self) -> &RunningEmulator {
        &self.emu
    }

    /// Starts one more worker loop, stopped with the world.
    pub(crate) fn add_worker(&self) {
        let h = spbridge_tests::spawn_worker(self.worker_state.clone(), &self.infra, QUEUE_ARN);
        self.workers.lock().unwrap().push(h);
    }

    /// `GET /uploads/{job}?token=`.
    pub(crate) async fn status(
        &self,
        job: &str,
        token: &str,
    ) -> (u16, Value, HashMap<String, String>) {
        let mut r = Request::default();
        *r.uri_mut() = format!("/uploads/{job}?token={token}").parse().unwrap();
        answer(upload_ingest::handle(&self.state, r).await).await
    }

    /// Every file and folder in the emulated tenant, with its size and version (what a library
    /// "unchanged" means in the attack tests).
    pub(crate) fn library(&self) -> Vec<(String, u64, String)> {
        let mut v: Vec<_> = self
            .emu
            .files()
            .into_iter()
            .map(|i| (i.path, i.size, i.version_label))
            .collect();
        v.sort();
        v
    }

    pub(crate) fn bytes(&self, path: &str) -> Option<Vec<u8>> {
        self.emu.file_bytes(path)
    }

    pub(crate) fn assert_no_half_files(&self) {
        assert!(
            self.emu.open_uploads().is_empty(),
            "open uploads left behind: {:?}",
            self.emu.open_uploads()
        );
    }
}

/// A local HTTP/1.1 server answering every GET with `len` generated bytes and a Content-Length.
async fn serve_generated(len: u64) -> String {
    serve(len, true).await
}

/// The same without Content-Length: the body ends when the connection closes.
async fn serve_generated_unannounced(len: u64) -> String {
    serve(len, false).await
}

async fn serve(len: u64, announce: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let length = if announce {
                    format!("content-length: {len}\r\n")
                } else {
                    String::new()
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\n{length}content-type: application/octet-stream\r\nconnection: close\r\n\r\n"
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut at = 0u64;
                while at < len {
                    let n = (len - at).min(64 * 1024);
                    let frame: Vec<u8> = (at..at + n).map(byte_at).collect();
                    if sock.write_all(&frame).await.is_err() {
                        return;
                    }
                    at += n;
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}/file.bin")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sample_events_are_accepted_at_their_timestamp() {
    let w = World::start(Setup {
        clock: Some(EVENT_TS + 30),
        ..Setup::default()
    })
    .await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");
    let raw = std::fs::read_to_string(format!("{dir}/upload-raw.json")).unwrap();
    let (status, body, _) = w.send(lambda_http::request::from_str(&raw).unwrap()).await;
    assert_eq!(status, 201, "{body}");
    let path = format!("{SP_LIB}/reports/2026/report-2026-11.pdf");
    assert_eq!(body["path"], path);
    assert_eq!(body["conflict_outcome"], "created");
    let ev: Value = serde_json::from_str(&raw).unwrap();
    let sent = base64::engine::general_purpose::STANDARD
        .decode(ev["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(w.bytes(&path).unwrap(), sent);
    assert_eq!(body["size"], sent.len());

    let multi = std::fs::read_to_string(format!("{dir}/upload-multipart.json")).unwrap();
    let (status, body, _) = w
        .send(lambda_http::request::from_str(&multi).unwrap())
        .await;
    assert_eq!(status, 201, "{body}");
    let list = body.as_array().expect("two files give a list");
    assert_eq!(list.len(), 2);
    for (i, expected) in [
        (0, "Invoice 0001\nTotal: 42.00 EUR\n"),
        (1, "Invoice 0002\nTotal: 17.50 EUR\n"),
    ] {
        let p = format!("{SP_LIB}/invoices/2026/invoice-000{}.txt", i + 1);
        assert_eq!(list[i]["path"], p);
        assert_eq!(w.bytes(&p).unwrap(), expected.as_bytes());
        assert_eq!(
            w.emu.item(&p).unwrap().fields.get("Title"),
            Some(&json!("November invoices")),
            "metadata.Title set"
        );
    }

    // The same sample ten minutes later is a replay outside the tolerance: 401.
    let late = World::start(Setup {
        clock: Some(EVENT_TS + 600),
        ..Setup::default()
    })
    .await;
    let (status, body, _) = late
        .send(lambda_http::request::from_str(&raw).unwrap())
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("too old"),
        "{body}"
    );
    assert!(late.emu.files().iter().all(|f| f.is_folder));
}

#[tokio::test]
async fn python_signed_requests_pass_and_tampered_expired_unsigned_fail() {
    let w = World::start(Setup::default()).await;
    let body = json!({"path": "python/hello.txt", "content_base64": "aGVsbG8gZnJvbSBweXRob24=",
                      "metadata": {"Title": "From Python"}})
    .to_string();
    let id = new_id();
    let ts = now_secs();
    let h = python_sign(&id, ts, &body);
    let headers = |h: &HashMap<String, String>| -> Vec<(&str, String)> {
        vec![
            ("content-type", "application/json".into()),
            ("webhook-id", h["webhook-id"].clone()),
            ("webhook-timestamp", h["webhook-timestamp"].clone()),
            ("webhook-signature", h["webhook-signature"].clone()),
        ]
    };
    let (status, resp, _) = w
        .send(event(
            "/upload/contoso-docs",
            "",
            &headers(&h),
            body.as_bytes(),
        ))
        .await;
    assert_eq!(status, 201, "{resp}");
    let path = format!("{SP_LIB}/python/hello.txt");
    assert_eq!(w.bytes(&path).unwrap(), b"hello from python");
    assert_eq!(
        w.emu.item(&path).unwrap().fields.get("Title"),
        Some(&json!("From Python"))
    );

    // Tampered: one byte of the body changed, headers kept.
    let tampered = body.replace("hello.txt", "hellO.txt");
    let (status, resp, _) = w
        .send(event(
            "/upload/contoso-docs",
            "",
            &headers(&h),
            tampered.as_bytes(),
        ))
        .await;
    assert_eq!(status, 401);
    assert_eq!(resp["error"], "unauthorized");
    assert!(
        resp["message"]
            .as_str()
            .unwrap()
            .contains("no matching signature")
    );

    // Expired: signed by Python ten minutes ago.
    let old = python_sign(&new_id(), ts - 600, &body);
    let (status, resp, _) = w
        .send(event(
            "/upload/contoso-docs",
            "",
            &headers(&old),
            body.as_bytes(),
        ))
        .await;
    assert_eq!(status, 401);
    assert!(
        resp["message"].as_str().unwrap().contains("too old"),
        "{resp}"
    );

    // Unsigned, and signed for an unknown connection: 401 like any wrong signature, so strangers
    // learn nothing; a sender with a valid signature whose connection is missing gets 404.
    let (status, resp, _) = w
        .send(event(
            "/upload/contoso-docs",
            "name=x.txt",
            &[("content-type", "text/plain".into())],
            b"x",
        ))
        .await;
    assert_eq!(status, 401);
    assert!(resp["message"].as_str().unwrap().contains("not signed"));
    let (status, _, _) = w
        .send(event(
            "/upload/nobody",
            "name=x.txt",
            &[("content-type", "text/plain".into())],
            b"x",
        ))
        .await;
    assert_eq!(status, 401);
    let (status, resp, _) = w
        .send(signed_raw("/upload/nobody", "name=x.txt", &new_id(), b"x"))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, resp, _) = w
        .send(signed_raw("/upload/orphan", "name=x.txt", &new_id(), b"x"))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (404, Some("connection_not_found"))
    );

    // A connection that allows unsigned requests and GitHub signatures.
    let (status, resp, _) = w
        .send(event(
            "/upload/open",
            "name=unsigned.txt",
            &[("content-type", "text/plain".into())],
            b"u",
        ))
        .await;
    assert_eq!(status, 201, "{resp}");
    let mut mac = Hmac::<Sha256>::new_from_slice(WHSEC.as_bytes()).unwrap();
    mac.update(b"gh");
    let gh = format!("sha256={}", hex_of(&mac.finalize().into_bytes()));
    let (status, resp, _) = w
        .send(event(
            "/upload/open",
            "name=github.txt",
            &[
                ("content-type", "text/plain".into()),
                ("x-hub-signature-256", gh),
                ("x-github-delivery", new_id()),
            ],
            b"gh",
        ))
        .await;
    assert_eq!(status, 201, "{resp}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/github.txt")).unwrap(), b"gh");
    // A wrong GitHub signature is refused even though unsigned requests would pass: a signature
    // that is present must be right.
    let (status, resp, _) = w
        .send(event(
            "/upload/open",
            "name=github-bad.txt",
            &[
                ("content-type", "text/plain".into()),
                ("x-hub-signature-256", format!("sha256={}", "0".repeat(64))),
            ],
            b"gh",
        ))
        .await;
    assert_eq!(status, 401, "{resp}");
    assert!(w.bytes(&format!("{SP_LIB}/github-bad.txt")).is_none());

    // A connection that needs consent again: 424.
    let (status, resp, _) = w
        .send(signed_raw("/upload/lapsed", "name=x.txt", &new_id(), b"x"))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (424, Some("needs_consent"))
    );
}

pub(crate) fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn sizes_land_identical_on_sharepoint_and_graph() {
    let w = World::start(Setup::default()).await;
    let big = serve_generated(50 * MIB as u64).await;
    for (conn, dir) in [("contoso-docs", "sp"), ("drive", "graph")] {
        for len in [0usize, 1024, 5 * MIB] {
            let data = content(len);
            let q = format!("name=f{len}.bin&folder=sizes%2F{dir}");
            let (status, body, _) = w
                .send(signed_raw(&format!("/upload/{conn}"), &q, &new_id(), &data))
                .await;
            assert_eq!(status, 201, "{conn} {len}: {body}");
            assert_eq!(body["size"], len, "{conn} {len}");
            assert_eq!(body["chunks"], 1, "{conn} {len}: a simple upload");
            let stored = w
                .bytes(&format!("{SP_LIB}/sizes/{dir}/f{len}.bin"))
                .unwrap();
            assert!(stored == data, "{conn} {len}: bytes differ");
        }
        // 50 MiB through source_url: chunked (10 MiB chunks), streamed.
        let env = json!({"path": format!("sizes/{dir}/big.bin"), "source_url": big});
        let (status, body, _) = w
            .send(signed_json(&format!("/upload/{conn}"), &new_id(), &env))
            .await;
        assert_eq!(status, 201, "{conn} 50 MiB: {body}");
        assert_eq!(body["size"], 50 * MIB);
        assert_eq!(
            body["chunks"], 5,
            "{conn}: 50 MiB goes in five 10 MiB chunks"
        );
        let stored = w.bytes(&format!("{SP_LIB}/sizes/{dir}/big.bin")).unwrap();
        assert_eq!(stored.len(), 50 * MIB);
        assert!(
            stored
                .iter()
                .enumerate()
                .all(|(i, b)| *b == byte_at(i as u64)),
            "{conn}: 50 MiB bytes differ"
        );
    }
    w.assert_no_half_files();
}

#[tokio::test]
async fn conflict_modes_and_metadata() {
    let w = World::start(Setup::default()).await;
    for (conn, dir) in [("contoso-docs", "csp"), ("drive", "cgraph")] {
        let url = format!("/upload/{conn}");
        let q = |mode: &str| format!("name=a.txt&folder={dir}&conflict={mode}");
        let (s, b, _) = w
            .send(signed_raw(&url, &q("fail"), &new_id(), b"one"))
            .await;
        assert_eq!(
            (s, b["conflict_outcome"].as_str()),
            (201, Some("created")),
            "{b}"
        );
        let (s, b, _) = w
            .send(signed_raw(&url, &q("fail"), &new_id(), b"two"))
            .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (409, Some("conflict")),
            "{conn}: {b}"
        );
        let path = format!("{SP_LIB}/{dir}/a.txt");
        assert_eq!(
            w.bytes(&path).unwrap(),
            b"one",
            "fail leaves the file alone"
        );
        let (s, b, _) = w
            .send(signed_raw(&url, &q("replace"), &new_id(), b"three"))
            .await;
        assert_eq!(
            (s, b["conflict_outcome"].as_str()),
            (201, Some("replaced")),
            "{b}"
        );
        assert_eq!(w.bytes(&path).unwrap(), b"three");
        let (s, b, _) = w
            .send(signed_raw(&url, &q("rename"), &new_id(), b"four"))
            .await;
        assert_eq!(
            (s, b["conflict_outcome"].as_str()),
            (201, Some("renamed")),
            "{b}"
        );
        assert_eq!(b["renamed_from"], "a.txt");
        assert_eq!(
            b["path"].as_str().unwrap().rsplit('/').next(),
            Some("a 1.txt")
        );
        assert_eq!(
            w.bytes(&format!("{SP_LIB}/{dir}/a 1.txt")).unwrap(),
            b"four"
        );
        assert_eq!(w.bytes(&path).unwrap(), b"three");
    }
    // Metadata through query parameters and headers (SharePoint).
    let id = new_id();
    let ts = now_secs();
    let body = b"meta".to_vec();
    let req = event(
        "/upload/contoso-docs",
        "name=m.txt&folder=meta&metadata.Title=Quarterly%20report",
        &[
            ("content-type", "text/plain".into()),
            ("x-metadata-category", "Finance".into()),
            ("webhook-id", id.clone()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sign(&id, ts, &body)),
        ],
        &body,
    );
    let (s, b, _) = w.send(req).await;
    assert_eq!(s, 201, "{b}");
    let item = w.emu.item(&format!("{SP_LIB}/meta/m.txt")).unwrap();
    assert_eq!(item.fields.get("Title"), Some(&json!("Quarterly report")));
    assert_eq!(item.fields.get("category"), Some(&json!("Finance")));
    assert_eq!(item.versions.len(), 1, "metadata creates no extra version");
    // Metadata on a drive target is refused before uploading.
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/drive",
            "name=m.txt&metadata.Title=x",
            &new_id(),
            b"m",
        ))
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(w.bytes(&format!("{SP_LIB}/m.txt")).is_none());
}

#[tokio::test]
async fn thirty_percent_throttling_still_lands_everything() {
    let faults = vec![
        FaultRule::new(
            "/sites/team/_api",
            FaultKind::Status {
                status: 429,
                retry_after: Some(0),
            },
        )
        .rate(0.15),
        FaultRule::new(
            "/sites/team/_api",
            FaultKind::Status {
                status: 503,
                retry_after: Some(0),
            },
        )
        .rate(0.15),
        FaultRule::new(
            "/graph",
            FaultKind::Status {
                status: 429,
                retry_after: Some(0),
            },
        )
        .rate(0.15),
        FaultRule::new(
            "/graph",
            FaultKind::Status {
                status: 503,
                retry_after: Some(0),
            },
        )
        .rate(0.15),
    ];
    let w = World::start(Setup {
        opts: Options {
            faults,
            seed: 7,
            ..Options::default()
        },
        env: vec![("SPBRIDGE_UPLOAD_CHUNK_BYTES", (320 * 1024 * 2).to_string())],
        ..Setup::default()
    })
    .await;
    let mut landed = 0;
    let mut retries = 0;
    for conn in ["contoso-docs", "drive"] {
        for (i, len) in [0usize, 1024, 100_000, 3 * MIB + 17]
            .into_iter()
            .enumerate()
        {
            let data = content(len);
            let q = format!("name=t{i}.bin&folder=throttle%2F{conn}&metadata.Title=T{i}");
            let q = if conn == "drive" {
                format!("name=t{i}.bin&folder=throttle%2F{conn}")
            } else {
                q
            };
            let (s, b, _) = w
                .send(signed_raw(&format!("/upload/{conn}"), &q, &new_id(), &data))
                .await;
            assert_eq!(s, 201, "{conn} {len}: {b}");
            assert!(
                w.bytes(&format!("{SP_LIB}/throttle/{conn}/t{i}.bin"))
                    .unwrap()
                    == data
            );
            landed += 1;
            retries += b["retries"].as_u64().unwrap();
        }
    }
    assert_eq!(landed, 8);
    assert!(
        retries >= 5,
        "the injected faults were hit: {retries} retries"
    );
    w.assert_no_half_files();
}

#[tokio::test]
async fn a_reset_mid_chunk_completes_or_cancels_cleanly() {
    let w = World::start(Setup {
        env: vec![("SPBRIDGE_UPLOAD_CHUNK_BYTES", (320 * 1024).to_string())],
        ..Setup::default()
    })
    .await;
    let src = serve_generated(3 * 320 * 1024 + 5).await;
    for (conn, prefix) in [
        (
            "contoso-docs",
            "/sites/team/_api/web/GetFileByServerRelativePath",
        ),
        ("drive", "/graph/_upload"),
    ] {
        for (label, rule) in [
            (
                "once",
                FaultRule::new(prefix, FaultKind::ResetAfter { bytes: 100_000 }).times(1),
            ),
            (
                "always",
                FaultRule::new(prefix, FaultKind::ResetAfter { bytes: 100_000 }),
            ),
        ] {
            w.emu.add_fault(rule);
            let path = format!("reset/{conn}-{label}.bin");
            let env = json!({"path": path, "source_url": src});
            let (s, b, _) = w
                .send(signed_json(&format!("/upload/{conn}"), &new_id(), &env))
                .await;
            w.emu.clear_faults();
            let stored = w.bytes(&format!("{SP_LIB}/{path}"));
            match s {
                201 => {
                    let data = stored.expect("a 201 means the file is there");
                    assert_eq!(data.len(), 3 * 320 * 1024 + 5);
                    assert!(
                        data.iter()
                            .enumerate()
                            .all(|(i, b)| *b == byte_at(i as u64))
                    );
                }
                _ => {
                    assert!(matches!(s, 502 | 503), "{conn} {label}: {s} {b}");
                    assert!(
                        stored.is_none(),
                        "{conn} {label}: a failed upload left a file"
                    );
                }
            }
            if label == "once" {
                assert_eq!(s, 201, "{conn}: one reset is survived: {b}");
                assert!(
                    b["retries"].as_u64().unwrap() >= 1,
                    "{conn}: the reset was hit: {b}"
                );
            }
            w.assert_no_half_files();
        }
    }
}

#[tokio::test]
async fn bad_inputs_get_the_documented_4xx() {
    let w = World::start(Setup {
        limits: Limits {
            max_body_bytes: MIB,
            max_file_bytes: MIB,
            ..Limits::default()
        },
        ..Setup::default()
    })
    .await;
    let url = "/upload/contoso-docs";
    let cases: Vec<(&str, Request, u16, &str, &str)> = vec![
        (
            "traversal",
            signed_raw(url, "name=a.txt&folder=..%2Fsecret", &new_id(), b"x"),
            400,
            "invalid_path",
            "folder",
        ),
        (
            "encoded traversal",
            signed_raw(url, "name=a.txt&folder=a%252e%252e", &new_id(), b"x"),
            400,
            "invalid_path",
            "folder",
        ),
        (
            "absolute",
            signed_json(
                url,
                &new_id(),
                &json!({"path": "/etc/a.txt", "content_base64": "eA=="}),
            ),
            400,
            "invalid_path",
            "path",
        ),
        (
            "illegal name",
            signed_raw(url, "name=a%2Ab.txt", &new_id(), b"x"),
            422,
            "invalid_name",
            "*",
        ),
        (
            "reserved name",
            signed_raw(url, "name=CON.txt", &new_id(), b"x"),
            422,
            "invalid_name",
            "reserved",
        ),
        (
            "blocked extension",
            signed_raw(url, "name=setup.exe", &new_id(), b"x"),
            422,
            "invalid_name",
            "exe",
        ),
        (
            "oversize",
            signed_raw(url, "name=big.bin", &new_id(), &content(MIB + 1)),
            413,
            "payload_too_large",
            "1048576 bytes",
        ),
        (
            "bad conflict",
            signed_raw(url, "name=a.txt&conflict=merge", &new_id(), b"x"),
            400,
            "bad_request",
            "conflict",
        ),
        (
            "bad base64",
            signed_json(
                url,
                &new_id(),
                &json!({"path": "a.txt", "content_base64": "%%%not base64"}),
            ),
            400,
            "bad_request",
            "content_base64",
        ),
        (
            "no name",
            signed_raw(url, "", &new_id(), b"x"),
            400,
            "bad_request",
            "name",
        ),
    ];
    for (label, req, status, code, needle) in cases {
        let (s, b, _) = w.send(req).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (status, Some(code)),
            "{label}: {b}"
        );
        assert!(
            b["message"].as_str().unwrap_or("").contains(needle),
            "{label}: message should name {needle:?}: {b}"
        );
    }
    // Wrong content type, broken multipart and broken JSON, each signed correctly.
    let raw = |ct: &str, body: &[u8]| {
        let id = new_id();
        let ts = now_secs();
        event(
            url,
            "",
            &[
                ("content-type", ct.to_owned()),
                ("webhook-id", id.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sign(&id, ts, body)),
            ],
            body,
        )
    };
    for (label, req, status, code) in [
        ("multipart/mixed", raw("multipart/mixed; boundary=x", b"--x--"), 415, "unsupported_media_type"),
        ("form-urlencoded", raw("application/x-www-form-urlencoded", b"a=b"), 415, "unsupported_media_type"),
        ("broken multipart", raw("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nno end"), 400, "bad_request"),
        ("broken JSON", raw("application/json", b"{\"path\": \"a.txt\", "), 400, "bad_request"),
        ("JSON of the wrong shape", raw("application/json", b"[1, 2]"), 400, "bad_request"),
    ] {
        let (s, b, _) = w.send(req).await;
        assert_eq!((s, b["error"].as_str()), (status, Some(code)), "{label}: {b}");
    }
    // Routing: unknown path, wrong method.
    let mut get = signed_raw(url, "name=a.txt", &new_id(), b"x");
    *get.method_mut() = lambda_http::http::Method::GET;
    assert_eq!(w.send(get).await.0, 405);
    assert_eq!(
        w.send(signed_raw("/other", "", &new_id(), b"x")).await.0,
        404
    );
    // The connection's own rules: sanitized names, its blocked list, its size limit, base folder.
    let inbox = "/upload/docs-inbox";
    let (s, b, _) = w
        .send(signed_raw(inbox, "name=a%3Ab.txt", &new_id(), b"s"))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["path"], format!("{SP_LIB}/inbox/a_b.txt"));
    let (s, _, _) = w
        .send(signed_raw(inbox, "name=x.zip", &new_id(), b"z"))
        .await;
    assert_eq!(s, 422);
    let (s, _, _) = w
        .send(signed_raw(inbox, "name=ok.exe", &new_id(), b"z"))
        .await;
    assert_eq!(s, 422);
    let big = serve_generated(3 * MIB as u64).await;
    let (s, b, _) = w
        .send(signed_json(
            inbox,
            &new_id(),
            &json!({"path": "big.bin", "source_url": big}),
        ))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    // Without Content-Length the limit is enforced while streaming: 413, and nothing is stored.
    let sneaky = serve_generated_unannounced(3 * MIB as u64).await;
    let (s, b, _) = w
        .send(signed_json(
            inbox,
            &new_id(),
            &json!({"path": "sneaky.bin", "source_url": sneaky}),
        ))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    assert!(w.bytes(&format!("{SP_LIB}/inbox/sneaky.bin")).is_none());
    // An unannounced source within the limit is fine on SharePoint (its chunks need no total).
    let small = serve_generated_unannounced(MIB as u64 + 7).await;
    let (s, b, _) = w
        .send(signed_json(
            inbox,
            &new_id(),
            &json!({"path": "unannounced.bin", "source_url": small}),
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        w.bytes(&format!("{SP_LIB}/inbox/unannounced.bin")).unwrap(),
        content(MIB + 7)
    );
    // SSRF: metadata and private addresses are refused without a request.
    for target in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/x",
        "http://[fd00:ec2::254]/",
    ] {
        let (s, b, _) = w
            .send(signed_json(
                url,
                &new_id(),
                &json!({"path": "s.bin", "source_url": target}),
            ))
            .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("bad_request")),
            "{target}: {b}"
        );
    }
    // No file was created by any refused request.
    assert!(w.bytes(&format!("{SP_LIB}/a.txt")).is_none());
    assert!(w.bytes(&format!("{SP_LIB}/big.bin")).is_none());
    assert!(w.bytes(&format!("{SP_LIB}/inbox/big.bin")).is_none());
    w.assert_no_half_files();
}

#[tokio::test]
async fn a_repeated_webhook_id_returns_the_first_answer_and_one_file() {
    let w = World::start(Setup::default()).await;
    let id = new_id();
    let req = || {
        signed_raw(
            "/upload/contoso-docs",
            "name=once.txt&conflict=rename",
            &id,
            b"once",
        )
    };
    let (s1, b1, h1) = w.send(req()).await;
    assert_eq!(s1, 201, "{b1}");
    assert!(!h1.contains_key("idempotent-replayed"));
    let (s2, b2, h2) = w.send(req()).await;
    assert_eq!((s2, &b2), (201, &b1));
    assert_eq!(
        h2.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    let path = format!("{SP_LIB}/once.txt");
    assert_eq!(w.emu.item(&path).unwrap().versions.len(), 1);
    assert!(
        w.bytes(&format!("{SP_LIB}/once 1.txt")).is_none(),
        "no renamed duplicate"
    );
    // The same id with another body is refused.
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/contoso-docs",
            "name=once.txt",
            &id,
            b"other",
        ))
        .await;
    assert_eq!((s, b["error"].as_str()), (409, Some("replayed")));

    // Two deliveries at once: one job, both see its end.
    let id = new_id();
    let data = content(2 * MIB);
    let mk = || {
        signed_raw(
            "/upload/contoso-docs",
            "name=race.bin&conflict=rename",
            &id,
            &data,
        )
    };
    let (a, b) = tokio::join!(w.send(mk()), w.send(mk()));
    assert_eq!((a.0, b.0), (201, 201), "{} {}", a.1, b.1);
    assert_eq!(a.1, b.1, "the same job's result");
    assert!(
        w.bytes(&format!("{SP_LIB}/race 1.bin")).is_none(),
        "no duplicate file"
    );
    assert_eq!(w.bytes(&format!("{SP_LIB}/race.bin")).unwrap(), data);
    // A multi-file delivery whose second file conflicts: 409 naming what landed; the same
    // delivery again gets the same answer and changes nothing.
    let (s, _, _) = w
        .send(signed_raw(
            "/upload/contoso-docs",
            "name=second.txt&folder=multi",
            &new_id(),
            b"old",
        ))
        .await;
    assert_eq!(s, 201);
    let boundary = "XyZ";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\nmulti\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"first.txt\"\r\n\r\none\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"second.txt\"\r\n\r\ntwo\r\n\
         --{boundary}--\r\n"
    );
    let id = new_id();
    let mk = || {
        let ts = now_secs();
        event(
            "/upload/contoso-docs",
            "",
            &[
                (
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                ),
                ("webhook-id", id.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sign(&id, ts, multipart.as_bytes())),
            ],
            multipart.as_bytes(),
        )
    };
    let (s1, b1, _) = w.send(mk()).await;
    assert_eq!((s1, b1["error"].as_str()), (409, Some("conflict")), "{b1}");
    assert!(
        b1["message"]
            .as_str()
            .unwrap()
            .contains("1 earlier file(s) were stored"),
        "{b1}"
    );
    assert_eq!(
        w.bytes(&format!("{SP_LIB}/multi/first.txt")).unwrap(),
        b"one"
    );
    assert_eq!(
        w.bytes(&format!("{SP_LIB}/multi/second.txt")).unwrap(),
        b"old"
    );
    let (s2, b2, h2) = w.send(mk()).await;
    assert_eq!((s2, &b2), (409, &b1));
    assert_eq!(
        h2.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        w.emu
            .item(&format!("{SP_LIB}/multi/first.txt"))
            .unwrap()
            .versions
            .len(),
        1
    );

    // Deliveries are remembered in the jobs table: no Secrets Manager ledger is written.
    assert!(
        w.store
            .get(&format!("{}idempotency/contoso-docs", w.prefix))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_then_explained() {
    let w = World::start(Setup::default()).await;
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/secret-cert",
            "name=doc.txt",
            &new_id(),
            b"d",
        ))
        .await;
    assert_eq!((s, b["error"].as_str()), (502, Some("bad_gateway")), "{b}");
    assert_eq!(
        b["diagnosis"]["cause"], "secret_instead_of_certificate",
        "{b}"
    );
    assert_eq!(b["diagnosis"]["token"]["appidacr"], "1");
    assert!(
        b["diagnosis"]["x_ms_diagnostics"]
            .as_str()
            .unwrap()
            .contains("Unsupported app only token")
    );
    assert!(b["message"].as_str().unwrap().contains("certificate"));
    assert_eq!(
        w.tokens.forced.load(Ordering::Relaxed),
        1,
        "renewed exactly once"
    );
    // No token text in the answer.
    let text = b.to_string();
    assert!(!text.contains("eyJ"), "a token leaked: {text}");
}

#[tokio::test]
async fn a_wait_ends_before_the_deadline_with_202_and_the_job_lands_later() {
    let w = World::start(Setup {
        opts: Options {
            faults: vec![
                FaultRule::new(
                    "/sites/team/_api",
                    FaultKind::Status {
                        status: 503,
                        retry_after: Some(1),
                    },
                )
                .times(3),
            ],
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    let id = new_id();
    let req = signed_raw("/upload/contoso-docs", "name=late.txt", &id, b"late");
    let mut ctx = lambda_http::Context::default();
    ctx.deadline = (SystemTime::now() + Duration::from_secs(5))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let started = std::time::Instant::now();
    let (s, b, h) = w.send(req.with_lambda_context(ctx)).await;
    // Prefer: wait=20 is cut to the deadline less the margin: 202 with the job, in time.
    assert_eq!(s, 202, "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered before the deadline"
    );
    let url = b["status_url"].as_str().unwrap().to_owned();
    assert_eq!(h["location"], url);
    assert_eq!(h["preference-applied"], "wait=20");
    // The worker keeps going after the answer; the status URL shows the file.
    let path = url.split("/uploads/").nth(1).unwrap();
    let (job, token) = path.split_once("?token=").unwrap();
    let mut last = Value::Null;
    for _ in 0..200 {
        let (s, body, _) = w.status(job, token).await;
        assert_eq!(s, 200, "{body}");
        last = body;
        if last["status"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["status"], "done", "{last}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/late.txt")).unwrap(), b"late");
    // Anyone without the token learns nothing, not even that the job exists.
    let (s1, b1, _) = w.status(job, "wrong").await;
    let (s2, b2, _) = w.status(&"0".repeat(32), token).await;
    assert_eq!((s1, &b1), (s2, &b2));
    assert_eq!(s1, 404, "{b1}");
}

#[tokio::test]
async fn one_log_line_per_upload_and_never_a_token() {
    // Every line of the binary, captured by the log scan's one subscriber (main.rs).
    let logs = spbridge_tests::secret_values::capture();

    let w = World::start(Setup::default()).await;
    let data = content(300_000);
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/contoso-docs",
            "name=logged.bin&folder=logs",
            &new_id(),
            &data,
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/drive",
            "name=logged.bin&folder=glogs",
            &new_id(),
            &data,
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, _, _) = w
        .send(signed_raw(
            "/upload/secret-cert",
            "name=doc.txt",
            &new_id(),
            b"d",
        ))
        .await;
    assert_eq!(s, 502);

    let text = logs.lines().join("\n");
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Other tests log too; this test's uploads are the ones into logs/ and glogs/.
    let uploads: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "upload")
        .filter(|l| {
            let p = l["fields"]["path"].as_str().unwrap_or("");
            p.ends_with("/logs/logged.bin") || p.ends_with("/glogs/logged.bin")
        })
        .collect();
    assert_eq!(uploads.len(), 2, "one line per upload: {text}");
    for (line, conn) in uploads.iter().zip(["contoso-docs", "drive"]) {
        let f = &line["fields"];
        assert_eq!(f["connection"], conn, "{line}");
        assert_eq!(f["size"], 300_000);
        assert!(
            f["path"].as_str().unwrap().ends_with("/logged.bin"),
            "{line}"
        );
        assert!(
            f["duration_ms"].is_u64() && f["chunks"] == 1 && f["retries"].is_u64(),
            "{line}"
        );
    }
    let refused = lines
        .iter()
        .find(|l| l["fields"]["message"] == "the service refused the access token")
        .expect("the doctor's line");
    assert_eq!(refused["fields"]["cause"], "secret_instead_of_certificate");
    let issued = w.tokens.issued.lock().unwrap().clone();
    assert!(
        issued.len() >= 3,
        "tokens were handed out: {}",
        issued.len()
    );
    for token in issued {
        // Any long piece of a token would do; the signature part is unique to it.
        let tail = token.rsplit('.').next().unwrap_or(&token);
        assert!(tail.len() > 8);
        assert!(!text.contains(tail), "a token reached the logs");
    }
}

/// A refresh token from the emulator's Entra v2 authorization-code flow (client secret).
pub(crate) async fn delegated_refresh_token(
    info: &tenant_emulator::EmulatorInfo,
    scope: &str,
) -> String {
    let app = info.entra_app("entra-app").expect("entra-app");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .get(format!(
            "{}/{}/oauth2/v2.0/authorize",
            info.login, info.tenant_id
        ))
        .query(&[
            ("client_id", app.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", app.redirect_uri.as_str()),
            ("scope", scope),
            ("state", "s1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let code = url::Url::parse(&loc)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code in the redirect");
    let body: Value = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            info.login, info.tenant_id
        ))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", app.redirect_uri.as_str()),
            ("client_id", app.client_id.as_str()),
            (
                "client_secret",
                app.client_secret.as_deref().unwrap_or_default(),
            ),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh token: {body}"))
        .to_owned()
}

#[tokio::test]
async fn a_delegated_connection_uploads_then_answers_424_once_consent_is_withdrawn() {
    let w = World::start(Setup::default()).await;
    let info = w.emu.info().clone();
    let scope = "https://graph.microsoft.com/Files.ReadWrite.All offline_access";
    let rt = delegated_refresh_token(&info, scope).await;
    let drive_id = info.site("team").unwrap().libraries[0].drive_id.clone();
    w.store
        .put(
            &format!("{}connections/alex", w.prefix),
            &json!({"provider": "entra", "auth": "delegated", "status": "active",
                    "tenant_id": info.tenant_id, "refresh_token": rt,
                    "scopes": ["https://graph.microsoft.com/Files.ReadWrite.All"],
                    "target": {"kind": "drive", "drive_id": drive_id}}),
            None,
        )
        .await
        .unwrap();
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/alex",
            "name=mine.txt&folder=delegated",
            &new_id(),
            b"mine",
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        w.bytes(&format!("{SP_LIB}/delegated/mine.txt")).unwrap(),
        b"mine"
    );
    // The rotated refresh token was stored by Access.
    let stored = w
        .store
        .get(&format!("{}connections/alex", w.prefix))
        .await
        .unwrap();
    assert_ne!(
        stored.value["refresh_token"],
        json!(rt),
        "rotated token stored"
    );

    // The user withdraws consent; the next token refresh is refused.
    let app = info.entra_app("entra-app").unwrap();
    w.emu.set_consent_revoked(&app.client_id, true);
    // Another container (or token-refresh) refreshes and finds the grant refused: Access marks
    // the connection needs_consent in the store. This container's cached access token would
    // still work, but the stored status wins: the sender is told to have the user reconnect.
    let access_fresh = Access::new(
        reqwest::Client::new(),
        w.state
            .as_ref()
            .unwrap()
            .receiver()
            .config()
            .endpoints
            .clone(),
        Arc::new(TokenCache::new(Duration::from_secs(300))),
        w.store.clone(),
        w.state
            .as_ref()
            .unwrap()
            .receiver()
            .config()
            .secrets
            .clone(),
    );
    let err = access_fresh.bearer("alex", true).await.unwrap_err();
    assert_eq!(
        shared::api::ApiError::from(&err).code(),
        "needs_consent",
        "{err}"
    );
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/alex",
            "name=later.txt&folder=delegated",
            &new_id(),
            b"x",
        ))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (424, Some("needs_consent")),
        "{b}"
    );
    assert!(w.bytes(&format!("{SP_LIB}/delegated/later.txt")).is_none());
}
