//! Browser tests: a function's `lambda_http` handler behind a real HTTP(S) port on 127.0.0.1, as a
//! Lambda function URL would front it, and Node scripts that drive Debian's Chromium through
//! `playwright-core` (`tests/browser/`).
//!
//! Requests reach the handler the way Lambda delivers them: each is turned into an API Gateway v2
//! (function URL) event and parsed by `lambda_http` itself, so cookies arrive in the event's
//! `cookies` array and the body is base64, exactly as in production.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Builds the function-URL event Lambda would deliver for this request and parses it with
/// `lambda_http`.
pub fn gateway_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Request {
    let mut h: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<Value> = vec![];
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        if k == "cookie" {
            cookies.extend(v.split(';').map(|c| json!(c.trim())));
            continue;
        }
        // API Gateway joins repeated headers with commas.
        h.entry(k)
            .and_modify(|e| {
                e.push(',');
                e.push_str(v)
            })
            .or_insert_with(|| v.clone());
    }
    let host = h.get("host").cloned().unwrap_or_else(|| "127.0.0.1".into());
    let mut ev = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": h,
        "requestContext": {
            "accountId": "anonymous", "apiId": "local", "domainName": host, "domainPrefix": "local",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": h.get("user-agent").cloned().unwrap_or_default()},
            "requestId": uuid::Uuid::new_v4().to_string(), "routeKey": "$default", "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 1_796_083_200_000u64
        },
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true
    });
    if !cookies.is_empty() {
        ev["cookies"] = Value::Array(cookies);
    }
    lambda_http::request::from_str(&ev.to_string()).expect("a function URL event parses")
}

/// A handler served on 127.0.0.1 until dropped.
pub struct Front {
    /// `http://127.0.0.1:<port>` or `https://127.0.0.1:<port>`.
    pub base: String,
    stop: watch::Sender<bool>,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

type Handler = Arc<
    dyn Fn(Request) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// Binds a port first, so the caller can build the function's configuration (its public base
/// URL) before the handler exists.
pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1")
}

/// Serves `handler` over plain HTTP on `listener`.
pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Front
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    start(listener, None, handler)
}

/// Serves `handler` over TLS (the emulator's loopback certificate) on `listener`.
pub fn serve_tls<F, Fut>(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, handler: F) -> Front
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    start(listener, Some(tls), handler)
}

fn start<F, Fut>(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Front
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let port = listener.local_addr().expect("local addr").port();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                _ = stopped.changed() => return,
            };
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(answer(&handler, req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Front {
        base: format!("{scheme}://127.0.0.1:{port}"),
        stop,
    }
}

async fn answer(
    handler: &Handler,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<bytes::Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let request = gateway_request(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &headers,
        &body,
    );
    let (rp, rb) = handler(request).await.into_parts();
    let bytes = match rb {
        Body::Empty => bytes::Bytes::new(),
        Body::Text(t) => t.into(),
        Body::Binary(b) => b.into(),
        _ => bytes::Bytes::new(),
    };
    hyper::Response::from_parts(rp, Full::new(bytes))
}

/// Debian's Chromium; browser tests fail (never skip) without it.
pub fn chromium() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("SPBRIDGE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        p.exists(),
        "{} is missing: install Debian's chromium (bash scripts/test does)",
        p.display()
    );
    p
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Runs `node tests/browser/<script>` with `env` (plus `CHROMIUM`) and returns what it printed
/// on stdout; a non-zero exit fails the test with both streams.
pub async fn run_node(script: &str, env: &[(&str, String)]) -> String {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `npm ci --prefix tests/browser` (bash scripts/test does)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join(script))
        .current_dir(&dir)
        .env("CHROMIUM", chromium())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(180), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} ran over 180 s"))
        .unwrap_or_else(|e| panic!("node {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "node {script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
