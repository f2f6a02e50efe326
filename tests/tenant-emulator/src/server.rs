//! Binding, TLS, the accept loop (with a per-connection kill switch for reset faults) and the
//! dispatcher that applies faults and routes by path prefix.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use futures_util::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;

use crate::util::{Req, json};
use crate::{
    AcsAppInfo, Cfg, EmulatorInfo, EntraAppInfo, LibraryInfo, Options, RunningEmulator, Shared,
    SiteInfo, StartError, UserInfo,
};

/// Lets a handler drop its own connection (reset fault).
#[derive(Clone)]
pub(crate) struct ConnKill(pub Arc<Notify>);

pub(crate) async fn start(opts: Options) -> Result<RunningEmulator, StartError> {
    let listener = TcpListener::bind(("127.0.0.1", opts.port)).await?;
    let port = listener.local_addr()?.port();
    let scheme = if opts.tls { "https" } else { "http" };
    let host = format!("127.0.0.1:{port}");
    let base = format!("{scheme}://{host}");
    let state_dir = match &opts.state_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("tenant-emulator-{port}")),
    };
    std::fs::create_dir_all(&state_dir)?;

    let signing =
        crate::keys::cert_info(crate::keys::SIGNING_CERT_PEM, crate::keys::SIGNING_KEY_PEM)
            .map_err(|e| StartError::Crypto(e.to_string()))?;
    let app_cert = crate::keys::cert_info(crate::keys::APP_CERT_PEM, crate::keys::APP_KEY_PEM)
        .map_err(|e| StartError::Crypto(e.to_string()))?;
    let signer =
        crate::tokens::Signer::new(signing).map_err(|e| StartError::Crypto(e.to_string()))?;

    let (tls, ca_pem_path) = if opts.tls {
        let LoopbackTls {
            acceptor, ca_pem, ..
        } = loopback_tls()?;
        let path = state_dir.join("ca.pem");
        std::fs::write(&path, ca_pem)?;
        (Some(acceptor), Some(path))
    } else {
        (None, None)
    };

    let cert_path = state_dir.join("app-cert.pem");
    let key_path = state_dir.join("app-key.pem");
    std::fs::write(&cert_path, &app_cert.cert_pem)?;
    std::fs::write(&key_path, &app_cert.key_pem)?;

    let db = crate::model::Db::seeded(&app_cert);
    let tenant = uuid::Uuid::new_v4().to_string();
    let cfg = Cfg {
        base: base.clone(),
        host: host.clone(),
        hostname: "127.0.0.1".into(),
        tenant: tenant.clone(),
        signer,
        opts: opts.clone(),
        state_dir: state_dir.clone(),
    };
    let info = build_info(&cfg, &db, ca_pem_path, &cert_path, &key_path);
    let shared = Arc::new(Shared {
        faults: Mutex::new(crate::faults::Faults::new(opts.faults.clone(), opts.seed)),
        db: Mutex::new(db),
        cfg,
        info: std::sync::OnceLock::new(),
    });
    let _ = shared
        .info
        .set(serde_json::to_value(&info).unwrap_or_default());
    std::fs::write(
        state_dir.join("info.json"),
        serde_json::to_vec_pretty(&info).unwrap_or_default(),
    )?;

    let app = axum::Router::new()
        .fallback(dispatch)
        .with_state(shared.clone());
    let (tx, rx) = watch::channel(false);
    tokio::spawn(accept_loop(listener, app, tls, rx));
    Ok(RunningEmulator {
        info,
        shared,
        _shutdown: tx,
    })
}

fn build_info(
    cfg: &Cfg,
    db: &crate::model::Db,
    ca: Option<PathBuf>,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> EmulatorInfo {
    let sites = db
        .sites
        .iter()
        .map(|s| SiteInfo {
            name: s.name.clone(),
            url: format!("{}{}", cfg.base, s.server_relative_url),
            server_relative_url: s.server_relative_url.clone(),
            graph_id: format!("{},{},{}", cfg.host, s.site_id, s.web_id),
            libraries: s
                .libraries
                .iter()
                .map(|l| LibraryInfo {
                    title: l.title.clone(),
                    server_relative_url: l.root.clone(),
                    drive_id: l.drive_id.clone(),
                })
                .collect(),
        })
        .collect();
    let hexu = |b: &Option<Vec<u8>>| b.as_ref().map(hex::encode_upper);
    EmulatorInfo {
        base_url: cfg.base.clone(),
        acs: cfg.acs(),
        login: cfg.login(),
        live: format!("{}/live", cfg.base),
        graph: cfg.graph(),
        discovery: format!("{}/discovery", cfg.base),
        sharepoint_host: cfg.host.clone(),
        tenant_id: cfg.tenant.clone(),
        realm: cfg.tenant.clone(),
        sites,
        acs_apps: db
            .acs_apps
            .iter()
            .map(|a| AcsAppInfo {
                name: a.name.clone(),
                client_id: a.client_id.clone(),
                client_secret: a.secret.clone(),
                redirect_uri: a.redirect_uri.clone(),
                app_only_sites: a.app_only.keys().cloned().collect(),
            })
            .collect(),
        entra_apps: db
            .entra_apps
            .iter()
            .map(|a| EntraAppInfo {
                name: a.name.clone(),
                client_id: a.client_id.clone(),
                client_secret: a.secret.clone(),
                certificate_pem: a.cert_pem.clone(),
                private_key_pem: a.key_pem.clone(),
                certificate_path: a.cert_pem.as_ref().map(|_| cert_path.display().to_string()),
                private_key_path: a.key_pem.as_ref().map(|_| key_path.display().to_string()),
                thumbprint_sha1: hexu(&a.thumbprint_sha1),
                thumbprint_sha256: hexu(&a.thumbprint_sha256),
                roles: a.roles.clone(),
                selected_sites: a.selected_sites.clone(),
                redirect_uri: a.redirect_uri.clone(),
            })
            .collect(),
        users: db
            .users
            .iter()
            .map(|u| UserInfo {
                upn: u.upn.clone(),
                oid: u.oid.clone(),
            })
            .collect(),
        ca_pem_path: ca.map(|p| p.display().to_string()),
        state_dir: cfg.state_dir.display().to_string(),
    }
}

/// A TLS server identity for 127.0.0.1 and localhost, issued by a fresh test CA.
pub struct LoopbackTls {
    /// Serves the leaf certificate (HTTP/1.1 only).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The CA certificate, PEM, for clients that take a root.
    pub ca_pem: String,
    /// Base64 SHA-256 of the leaf's SubjectPublicKeyInfo, for Chromium's
    /// `--ignore-certificate-errors-spki-list`, which trusts exactly this key.
    pub leaf_spki_sha256: String,
}

/// Makes a [`LoopbackTls`]; the emulator's own `--tls` uses the same.
pub fn loopback_tls() -> Result<LoopbackTls, StartError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let c = |e: rcgen::Error| StartError::Crypto(e.to_string());
    let ca_key = KeyPair::generate().map_err(c)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(c)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tenant-emulator test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).map_err(c)?;
    let leaf_key = KeyPair::generate().map_err(c)?;
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(c)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).map_err(c)?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Crypto(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .map_err(|e| StartError::Crypto(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    use base64::Engine as _;
    use sha2::Digest as _;
    Ok(LoopbackTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_pem: ca.pem(),
        leaf_spki_sha256: base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(leaf_key.public_key_der())),
    })
}

async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // A second handle on the socket lets a reset fault set a zero linger at kill time.
        let Ok((stream, dup)) = split_dup(stream) else {
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let k = kill.clone();
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnKill(k.clone()));
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    let Ok(s) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(s), svc);
                    tokio::select! { _ = conn => {}, _ = kill.notified() => reset(dup) }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! { _ = conn => {}, _ = kill.notified() => reset(dup) }
                }
            }
        });
    }
}

fn split_dup(
    stream: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let dup = std_stream.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(std_stream)?, dup))
}

/// Closing a socket whose linger is zero sends a TCP reset instead of a FIN.
fn reset(dup: std::net::TcpStream) {
    if let Ok(s) = tokio::net::TcpStream::from_std(dup) {
        let _ = s.set_zero_linger();
    }
}

const MAX_BODY: usize = 512 * 1024 * 1024;

async fn dispatch(
    axum::extract::State(st): axum::extract::State<Arc<Shared>>,
    req: Request<Body>,
) -> Response {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_string();
    let path = percent_encoding::percent_decode_str(&raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            // `+` stays literal in SharePoint paths; decode only percent escapes.
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    let dec = |s: &str| {
                        percent_encoding::percent_decode_str(&s.replace('+', " "))
                            .decode_utf8_lossy()
                            .into_owned()
                    };
                    (dec(k), dec(v))
                })
                .collect()
        })
        .unwrap_or_default();

    let admin = path.starts_with("/_emulator");
    let decision = if admin {
        crate::faults::Decision::default()
    } else {
        st.faults().decide(&path)
    };
    if decision.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(decision.latency_ms)).await;
    }
    if let Some((status, retry_after)) = decision.status {
        return fault_response(&path, status, retry_after);
    }

    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "the request body could not be read"}),
            );
        };
        buf.extend_from_slice(&chunk);
        if let Some(limit) = decision.reset_after
            && buf.len() as u64 >= limit
        {
            if let Some(kill) = parts.extensions.get::<ConnKill>() {
                kill.0.notify_one();
            }
            // The connection task drops the socket; this future is dropped with it.
            std::future::pending::<()>().await;
        }
        if buf.len() > MAX_BODY {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({"error": "request body too large"}),
            );
        }
    }
    let r = Req {
        method: parts.method,
        path,
        query,
        headers: parts.headers,
        body: buf.into(),
    };
    let resp = route(&st, r).await;
    if decision.omit_next_ranges && resp.status() == StatusCode::ACCEPTED {
        return omit_next_ranges(resp).await;
    }
    resp
}

/// The same 202, without `nextExpectedRanges` (fault `OmitNextExpectedRanges`).
async fn omit_next_ranges(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("nextExpectedRanges");
    }
    let mut parts = parts;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(v.to_string()))
}

async fn route(st: &Arc<Shared>, r: Req) -> Response {
    let p = r.path.clone();
    let lower = p.to_ascii_lowercase();
    if lower.starts_with("/_emulator") {
        crate::admin::handle(st, r).await
    } else if lower.starts_with("/acs/") {
        crate::acs::token_endpoint(st, r)
    } else if lower.starts_with("/login/") {
        crate::aad::handle(st, r)
    } else if lower.starts_with("/live/") {
        crate::live::handle(st, r)
    } else if lower.starts_with("/discovery/") {
        crate::live::discovery(st, r)
    } else if lower.starts_with("/graph/") {
        crate::graph::handle(st, r)
    } else if lower.starts_with("/sites/") || lower.starts_with("/personal/") {
        crate::sharepoint::handle(st, r)
    } else {
        json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "error_description": format!("The emulator serves nothing at {p}")}),
        )
    }
}

fn fault_response(path: &str, status: u16, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = if path.starts_with("/graph") {
        let c = if status == 429 {
            "activityLimitReached"
        } else {
            "serviceNotAvailable"
        };
        serde_json::json!({"error": {"code": c, "message": "Injected fault: the service is throttling or unavailable.", "innerError": {"date": crate::util::sp_time(crate::util::now()).trim_end_matches('Z'), "request-id": crate::util::new_guid()}}})
    } else if path.starts_with("/sites") || path.starts_with("/personal") {
        serde_json::json!({"odata.error": {"code": "-2147024860, Microsoft.SharePoint.SPQueryThrottledException", "message": {"lang": "en-US", "value": "Injected fault: the request was throttled."}}})
    } else {
        serde_json::json!({"error": "temporarily_unavailable", "error_description": "Injected fault: the service is temporarily unavailable."})
    };
    let mut r = json(code, &body);
    if let Some(s) = retry_after {
        r = crate::util::with_header(r, "retry-after", &s.to_string());
    }
    r
}
