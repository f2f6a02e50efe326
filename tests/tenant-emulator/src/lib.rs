//! # tenant-emulator
//!
//! A local HTTP(S) server that behaves like the Microsoft endpoints spbridge talks to — ACS,
//! Azure AD v1 and Entra v2, login.live.com, the Office 365 Discovery service, SharePoint REST
//! and Microsoft Graph — closely enough that independent clients (Office365-REST-Python-Client,
//! MSAL for Python) run against it. It powers integration tests, benchmarks, fault injection and
//! the local demo.
//!
//! ## Layout (everything is one `host:port`, routed by path prefix)
//!
//! | Service | Base URL | Endpoints |
//! |---|---|---|
//! | ACS | `{base}/acs` | `POST /acs/{realm}/tokens/OAuth/2` |
//! | Azure AD / Entra | `{base}/login` | `/login/{tenant}/oauth2/{authorize,token}` (v1), `/login/{tenant}/oauth2/v2.0/{authorize,token}`, `/login/{tenant}/discovery/v2.0/keys`, `/login/{tenant}/v2.0/.well-known/openid-configuration`, `/login/common/discovery/instance` |
//! | login.live.com | `{base}/live` | `/live/oauth20_authorize.srf`, `/live/oauth20_token.srf`, `/live/oauth20_logout.srf` |
//! | Discovery | `{base}/discovery` | `GET /discovery/v1.0/me/services` |
//! | Graph | `{base}/graph` | `/graph/v1.0/{drives/{id},sites/{id}/drive,me/drive}/...`, upload URLs under `/graph/_upload/{session}` |
//! | SharePoint | `{base}` (host = `127.0.0.1:{port}`) | `/sites/{name}/_api/...`, `/sites/{name}/_vti_bin/client.svc`, `/sites/{name}/_layouts/15/{OAuthAuthorize,AppRedirect}.aspx`, OneDrive at `/personal/{user}/...` |
//! | Admin | `{base}/_emulator` | `GET info`, `GET files`, `GET files/content?path=`, `GET uploads`, `GET/POST/DELETE faults`, `POST refresh-tokens`, `POST context-token` |
//!
//! `{tenant}` is the tenant id (which is also the ACS realm), `common`, `organizations`,
//! `consumers` or `contoso.onmicrosoft.com`.
//!
//! ## Tenant model
//!
//! One tenant; sites `/sites/team` (libraries `Shared Documents` titled Documents, and `Reports`),
//! `/sites/other`, and the OneDrive of `alex@contoso.onmicrosoft.com`; one Graph drive per library.
//! Apps: an ACS app (`acs-app`, app-only policy FullControl on `/sites/team` only), an Entra app
//! with secret and certificate and `Sites.ReadWrite.All` (`entra-app`), one with `Sites.Selected`
//! granted on `/sites/team` (`selected-app`), and a public client (`public-app`). Users consent
//! automatically.
//!
//! Context tokens are HS256-signed with the base64-decoded ACS client secret (as SharePoint's
//! `TokenHelper` expects).
//!
//! ## Fidelity notes
//!
//! Shapes follow the recorded samples in the handout fixtures (checked by `tests/shapes.rs`).
//! Where no sample exists the emulator approximates: ACS error codes other than ACS50012 and
//! ACS50011 (e.g. ACS70002 for bad codes/refresh tokens, ACS50001 for a bad resource), the
//! `x-ms-diagnostics` numbers other than 3000003, the Graph `unauthenticated` error for an
//! upload URL called with an `Authorization` header, and SharePoint's message for a wrong chunk
//! offset. A chunked upload that fills the empty placeholder file keeps version 1.0 (as the
//! PnP recording shows); every other replace adds a major version.
//!
//! ## Faults
//!
//! [`FaultRule`]s (latency, 429/503 with `Retry-After`, token endpoint outage, TCP reset after N
//! request-body bytes) are scoped by path prefix, hit with a seeded RNG at a given rate and
//! optionally a limited number of times; set them in [`Options::faults`], with CLI flags, with
//! [`RunningEmulator::add_fault`] or `POST /_emulator/faults` (a rule or an array of rules, e.g.
//! `{"path_prefix":"/graph","kind":"status","status":429,"retry_after":2,"rate":0.5}`).

// Handlers short-circuit with the HTTP response itself as the error; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

mod aad;
mod acs;
mod admin;
pub mod blob;
pub mod faults;
mod graph;
mod keys;
mod live;
mod model;
pub mod origin;
mod server;
mod sharepoint;
mod tokens;
mod util;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

pub use faults::{FaultKind, FaultRule};
pub use model::{RefreshState, Right};
pub use server::{LoopbackTls, loopback_tls};
pub use tokens::{TokenError, verify_hs256};

/// How to start an emulator.
#[derive(Clone, Debug)]
pub struct Options {
    /// Port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Serve HTTPS with a freshly generated CA.
    pub tls: bool,
    /// Where to write PEM files and a copy of stored files (a temp dir when None).
    pub state_dir: Option<PathBuf>,
    /// Fault rules active from the start.
    pub faults: Vec<FaultRule>,
    /// Seed of the fault RNG.
    pub seed: u64,
    /// Lifetime of Graph upload sessions.
    pub upload_session_ttl: Duration,
    /// Lifetime of issued access tokens.
    pub access_token_ttl: Duration,
    /// Lifetime of authorization codes.
    pub code_ttl: Duration,
    /// Lifetime of refresh tokens.
    pub refresh_token_ttl: Duration,
    /// A refresh token unused this long expires for inactivity (AADSTS700082).
    pub refresh_inactivity_ttl: Duration,
    /// Entra's authorize shows a sign-in page (Accept / Cancel) instead of consenting at once, so
    /// a browser walks through it as a user would (`scripts/dev` and the browser tests).
    pub interactive_sign_in: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: 0,
            tls: false,
            state_dir: None,
            faults: vec![],
            seed: 42,
            upload_session_ttl: Duration::from_secs(3600),
            access_token_ttl: Duration::from_secs(3599),
            code_ttl: Duration::from_secs(600),
            refresh_token_ttl: Duration::from_secs(90 * 86400),
            refresh_inactivity_ttl: Duration::from_secs(30 * 86400),
            interactive_sign_in: false,
        }
    }
}

/// A document library as the emulator serves it.
#[derive(Clone, Serialize)]
pub struct LibraryInfo {
    /// List title (`Documents`).
    pub title: String,
    /// Server-relative URL of its root folder.
    pub server_relative_url: String,
    /// Graph drive id.
    pub drive_id: String,
}

/// A site as the emulator serves it.
#[derive(Clone, Serialize)]
pub struct SiteInfo {
    /// Short name (`team`).
    pub name: String,
    /// Absolute URL.
    pub url: String,
    /// Server-relative URL.
    pub server_relative_url: String,
    /// Graph site id (`{host},{siteId},{webId}`).
    pub graph_id: String,
    /// Document libraries.
    pub libraries: Vec<LibraryInfo>,
}

/// A pre-registered ACS app.
#[derive(Clone, Serialize)]
pub struct AcsAppInfo {
    /// Name in this emulator.
    pub name: String,
    /// Client id (GUID).
    pub client_id: String,
    /// Client secret (base64).
    pub client_secret: String,
    /// Registered redirect URI.
    pub redirect_uri: String,
    /// Sites (server-relative) whose app-only policy grants this app.
    pub app_only_sites: Vec<String>,
}

/// A pre-registered Entra app.
#[derive(Clone, Serialize)]
pub struct EntraAppInfo {
    /// Name in this emulator.
    pub name: String,
    /// Client id (GUID).
    pub client_id: String,
    /// Client secret, when it has one.
    pub client_secret: Option<String>,
    /// Certificate PEM, when it has one.
    pub certificate_pem: Option<String>,
    /// Private key PEM of that certificate.
    pub private_key_pem: Option<String>,
    /// Path of the certificate PEM file.
    pub certificate_path: Option<String>,
    /// Path of the private key PEM file.
    pub private_key_path: Option<String>,
    /// SHA-1 thumbprint, hex upper case.
    pub thumbprint_sha1: Option<String>,
    /// SHA-256 thumbprint, hex upper case.
    pub thumbprint_sha256: Option<String>,
    /// Application roles granted.
    pub roles: Vec<String>,
    /// Sites granted through Sites.Selected.
    pub selected_sites: Vec<String>,
    /// Registered redirect URI.
    pub redirect_uri: String,
}

/// A user for delegated flows.
#[derive(Clone, Serialize)]
pub struct UserInfo {
    /// Sign-in name.
    pub upn: String,
    /// Object id.
    pub oid: String,
}

/// Everything a client needs: base URLs, tenant, sites and credentials. Serializes to the one
/// JSON line the CLI prints.
#[derive(Clone, Serialize)]
pub struct EmulatorInfo {
    /// `http(s)://127.0.0.1:{port}`.
    pub base_url: String,
    /// ACS base (`{base}/acs`).
    pub acs: String,
    /// Azure AD base (`{base}/login`).
    pub login: String,
    /// login.live.com base (`{base}/live`).
    pub live: String,
    /// Graph base (`{base}/graph`).
    pub graph: String,
    /// Discovery base (`{base}/discovery`).
    pub discovery: String,
    /// The SharePoint host (`127.0.0.1:{port}`).
    pub sharepoint_host: String,
    /// Tenant id.
    pub tenant_id: String,
    /// ACS realm (same GUID as the tenant id).
    pub realm: String,
    /// Sites.
    pub sites: Vec<SiteInfo>,
    /// ACS apps.
    pub acs_apps: Vec<AcsAppInfo>,
    /// Entra apps.
    pub entra_apps: Vec<EntraAppInfo>,
    /// Users.
    pub users: Vec<UserInfo>,
    /// CA certificate path when serving TLS.
    pub ca_pem_path: Option<String>,
    /// Directory holding PEMs and stored files.
    pub state_dir: String,
}

impl std::fmt::Debug for EmulatorInfo {
    // Credentials stay out of Debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorInfo")
            .field("base_url", &self.base_url)
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

impl EmulatorInfo {
    /// The site with this short name.
    pub fn site(&self, name: &str) -> Option<&SiteInfo> {
        self.sites.iter().find(|s| s.name == name)
    }
    /// The ACS app with this name.
    pub fn acs_app(&self, name: &str) -> Option<&AcsAppInfo> {
        self.acs_apps.iter().find(|a| a.name == name)
    }
    /// The Entra app with this name.
    pub fn entra_app(&self, name: &str) -> Option<&EntraAppInfo> {
        self.entra_apps.iter().find(|a| a.name == name)
    }
}

/// A stored file or folder, for inspection.
#[derive(Clone, Debug, Serialize)]
pub struct StoredItem {
    /// Server-relative path.
    pub path: String,
    /// Folder or file.
    pub is_folder: bool,
    /// Current size in bytes.
    pub size: u64,
    /// SharePoint UniqueId.
    pub unique_id: String,
    /// Graph item id.
    pub item_id: String,
    /// Current UIVersionLabel.
    pub version_label: String,
    /// All versions (label, size).
    pub versions: Vec<(String, u64)>,
    /// List item fields that were set.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Current ETag.
    pub etag: String,
}

/// An open upload session, for inspection.
#[derive(Clone, Debug, Serialize)]
pub struct OpenUpload {
    /// `sharepoint` or `graph`.
    pub api: String,
    /// Upload id or Graph session id.
    pub id: String,
    /// Target server-relative path.
    pub path: String,
    /// Bytes received so far.
    pub received: u64,
}

/// What to register with [`RunningEmulator::add_entra_app`].
#[derive(Clone, Debug, Default)]
pub struct EntraAppSpec {
    /// Name in this emulator.
    pub name: String,
    /// Application roles (`Sites.ReadWrite.All`, `Sites.Selected`, …).
    pub roles: Vec<String>,
    /// Sites (server-relative URLs) granted through Sites.Selected.
    pub selected_sites: Vec<String>,
    /// Give it a client secret.
    pub secret: bool,
    /// Register the crate's test certificate for it.
    pub certificate: bool,
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding or file I/O failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Key material or TLS setup failed.
    #[error("crypto setup: {0}")]
    Crypto(String),
}

pub(crate) struct Cfg {
    pub base: String,
    pub host: String,
    pub hostname: String,
    pub tenant: String,
    pub signer: tokens::Signer,
    pub opts: Options,
    pub state_dir: PathBuf,
}

impl Cfg {
    pub fn login(&self) -> String {
        format!("{}/login", self.base)
    }
    pub fn acs(&self) -> String {
        format!("{}/acs", self.base)
    }
    pub fn graph(&self) -> String {
        format!("{}/graph", self.base)
    }
}

pub(crate) struct Shared {
    pub cfg: Cfg,
    pub info: std::sync::OnceLock<serde_json::Value>,
    db: Mutex<model::Db>,
    faults: Mutex<faults::Faults>,
}

impl Shared {
    pub fn db(&self) -> MutexGuard<'_, model::Db> {
        // A panicked handler must not take the whole emulator down.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Mirrors a file's current bytes under `{state_dir}/files/{server-relative path}`.
    pub fn persist(&self, n: &model::Node) {
        if let Some(v) = n.current() {
            let target = self
                .cfg
                .state_dir
                .join("files")
                .join(n.path.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = v.content.write_to(&target);
        }
    }
    pub fn faults(&self) -> MutexGuard<'_, faults::Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Entry point.
pub struct Emulator;

impl Emulator {
    /// Binds 127.0.0.1, builds the tenant and serves in the background until the returned
    /// handle is dropped.
    pub async fn start(opts: Options) -> Result<RunningEmulator, StartError> {
        server::start(opts).await
    }
}

/// A running emulator: its info plus inspection and fault-injection handles.
pub struct RunningEmulator {
    info: EmulatorInfo,
    shared: Arc<Shared>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl RunningEmulator {
    /// Base URLs, tenant and credentials.
    pub fn info(&self) -> &EmulatorInfo {
        &self.info
    }

    /// A function listing every credential this emulator holds or issued so far (app secrets,
    /// private keys, signed tokens, authorization codes, refresh and Live tokens), labelled,
    /// for the test suite's log scan. It keeps the emulator's state alive, not its server.
    pub fn issued_credentials(
        &self,
    ) -> impl Fn() -> Vec<(&'static str, String)> + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || {
            let mut out: Vec<(&'static str, String)> = Vec::new();
            for t in shared.cfg.signer.issued() {
                out.push(("token the emulator signed", t));
            }
            let pem_lines = |pem: &str| {
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .take(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            for l in pem_lines(&shared.cfg.signer.cert.key_pem) {
                out.push(("emulator signing key", l));
            }
            let db = shared.db();
            for a in &db.acs_apps {
                out.push(("ACS client secret", a.secret.clone()));
            }
            for a in &db.entra_apps {
                if let Some(s) = &a.secret {
                    out.push(("Entra client secret", s.clone()));
                }
                for l in a.key_pem.as_deref().map(pem_lines).unwrap_or_default() {
                    out.push(("Entra app private key", l));
                }
            }
            out.extend(
                db.issued_codes
                    .iter()
                    .map(|c| ("authorization code", c.clone())),
            );
            out.extend(db.refresh.keys().map(|t| ("refresh token", t.clone())));
            out.extend(
                db.live_tokens
                    .keys()
                    .map(|t| ("Live access token", t.clone())),
            );
            out
        }
    }

    /// Every stored file and folder.
    pub fn files(&self) -> Vec<StoredItem> {
        admin::list_items(&self.shared.db())
    }

    /// The current bytes of the file at this server-relative path.
    pub fn file_bytes(&self, path: &str) -> Option<Vec<u8>> {
        self.shared
            .db()
            .get(path)
            .and_then(|n| n.current().map(|v| v.content.to_vec()))
    }

    /// Size and hex SHA-256 of the current content of the file at this server-relative path,
    /// without reading a spilled file back.
    pub fn file_digest(&self, path: &str) -> Option<(u64, String)> {
        self.shared.db().get(path).and_then(|n| {
            n.current()
                .map(|v| (v.content.len() as u64, v.content.sha256_hex()))
        })
    }

    /// Ends every open Graph upload session now (as Graph does to idle sessions, and to all
    /// sessions after about a day): their URLs answer 404 `itemNotFound` from here on.
    pub fn expire_graph_sessions(&self) -> usize {
        let mut db = self.shared.db();
        let t = crate::util::now();
        for s in db.graph_uploads.values_mut() {
            s.expires = t;
        }
        db.graph_uploads.len()
    }

    /// Fault: the next Graph upload session to hold `bytes` bytes expires right after that
    /// fragment (its next request answers 404 `itemNotFound`), once.
    pub fn expire_graph_session_at(&self, bytes: u64) {
        self.shared.db().graph_expire_at = Some(bytes);
    }

    /// Metadata of one stored item.
    pub fn item(&self, path: &str) -> Option<StoredItem> {
        self.shared.db().get(path).map(admin::stored_item)
    }

    /// Open SharePoint and Graph upload sessions.
    pub fn open_uploads(&self) -> Vec<OpenUpload> {
        admin::open_uploads(&self.shared.db())
    }

    /// Adds a fault rule.
    pub fn add_fault(&self, rule: FaultRule) {
        self.shared.faults().rules.push(rule);
    }

    /// Removes all fault rules.
    pub fn clear_faults(&self) {
        self.shared.faults().rules.clear();
    }

    /// Sets the state of refresh tokens (one token, or all of a client when `token` is None).
    /// Returns how many tokens changed.
    pub fn set_refresh_state(
        &self,
        client_id: Option<&str>,
        token: Option<&str>,
        state: RefreshState,
    ) -> usize {
        admin::set_refresh_state(&mut self.shared.db(), client_id, token, state)
    }

    /// Withdraws (or restores) the users' consent to a client: refreshes answer AADSTS65001.
    pub fn set_consent_revoked(&self, client_id: &str, revoked: bool) {
        let mut db = self.shared.db();
        if revoked {
            db.consent_revoked.insert(client_id.to_lowercase());
        } else {
            db.consent_revoked.remove(&client_id.to_lowercase());
        }
    }

    /// Registers an ACS app with app-only rights on sites (server-relative URLs). Not part of
    /// [`RunningEmulator::info`], which is the start-up snapshot.
    pub fn add_acs_app(&self, name: &str, grants: &[(&str, Right)]) -> AcsAppInfo {
        let app = model::AcsApp {
            name: name.to_string(),
            client_id: util::new_guid(),
            secret: util::new_secret(),
            redirect_uri: "https://localhost/callback".into(),
            app_only: grants.iter().map(|(s, r)| (s.to_string(), *r)).collect(),
        };
        let info = AcsAppInfo {
            name: app.name.clone(),
            client_id: app.client_id.clone(),
            client_secret: app.secret.clone(),
            redirect_uri: app.redirect_uri.clone(),
            app_only_sites: app.app_only.keys().cloned().collect(),
        };
        self.shared.db().acs_apps.push(app);
        info
    }

    /// Sets (Some) or removes (None) an ACS app's app-only right on a site; false when the app
    /// is unknown.
    pub fn set_acs_grant(&self, client_id: &str, site: &str, right: Option<Right>) -> bool {
        let mut db = self.shared.db();
        let Some(app) = db
            .acs_apps
            .iter_mut()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
        else {
            return false;
        };
        match right {
            Some(r) => {
                app.app_only.insert(site.to_string(), r);
            }
            None => {
                app.app_only.remove(site);
            }
        }
        true
    }

    /// Registers an Entra app (secret and/or the crate's test certificate).
    pub fn add_entra_app(&self, spec: EntraAppSpec) -> Result<EntraAppInfo, StartError> {
        let cert = keys::cert_info(keys::APP_CERT_PEM, keys::APP_KEY_PEM)
            .map_err(|e| StartError::Crypto(e.to_string()))?;
        let c = spec.certificate;
        let app = model::EntraApp {
            name: spec.name.clone(),
            client_id: util::new_guid(),
            secret: spec.secret.then(util::new_secret),
            cert_pem: c.then(|| cert.cert_pem.clone()),
            key_pem: c.then(|| cert.key_pem.clone()),
            thumbprint_sha1: c.then(|| cert.sha1.clone()),
            thumbprint_sha256: c.then(|| cert.sha256.clone()),
            cert_public_der: c.then(|| cert.public_key_der.clone()),
            roles: spec.roles,
            selected_sites: spec.selected_sites,
            redirect_uri: "https://localhost/callback".into(),
            public_client: !spec.secret && !c,
        };
        let info = EntraAppInfo {
            name: app.name.clone(),
            client_id: app.client_id.clone(),
            client_secret: app.secret.clone(),
            certificate_pem: app.cert_pem.clone(),
            private_key_pem: app.key_pem.clone(),
            certificate_path: None,
            private_key_path: None,
            thumbprint_sha1: app.thumbprint_sha1.as_ref().map(hex::encode_upper),
            thumbprint_sha256: app.thumbprint_sha256.as_ref().map(hex::encode_upper),
            roles: app.roles.clone(),
            selected_sites: app.selected_sites.clone(),
            redirect_uri: app.redirect_uri.clone(),
        };
        self.shared.db().entra_apps.push(app);
        Ok(info)
    }

    /// Replaces an Entra app's Sites.Selected grants; false when the app is unknown.
    pub fn set_selected_sites(&self, client_id: &str, sites: &[&str]) -> bool {
        let mut db = self.shared.db();
        match db
            .entra_apps
            .iter_mut()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
        {
            Some(app) => {
                app.selected_sites = sites.iter().map(|s| s.to_string()).collect();
                true
            }
            None => false,
        }
    }

    /// Mints a SharePoint context token (SPAppToken) for an ACS app and a site.
    pub fn context_token(&self, client_id: &str, site_name: &str) -> Option<String> {
        acs::mint_context_token(&self.shared, client_id, site_name)
    }
}
