//! oauth-callback and token-refresh end to end: real sockets to the tenant emulator, moto's
//! Secrets Manager API, the functions' handlers called with API Gateway-shaped requests.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use futures_util::future::BoxFuture;
use lambda_http::{Body, Request, Response};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use shared::{
    access::{Access, Persisted},
    config::{Config, LifecycleConfig},
    identity::TokenCache,
    secrets::{
        SecretError, SecretStore, VersionId, Versioned,
        schema::{ConnectionSecret, ConnectionStatus},
    },
};
use tenant_emulator::{Emulator, EmulatorInfo, Options, RefreshState, RunningEmulator};
use time::OffsetDateTime;
use url::Url;

/// One emulator, a moto-backed store under a fresh prefix, and the configuration pointing at both.
pub(crate) struct Env {
    pub(crate) emu: RunningEmulator,
    pub(crate) store: Arc<dyn SecretStore>,
    pub(crate) config: Config,
    pub(crate) http: reqwest::Client,
}

/// Where the browser would be sent back to (nothing listens: the test carries the redirect).
const PUBLIC_BASE: &str = "http://127.0.0.1:9";

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

async fn env_with(store: Option<Arc<dyn SecretStore>>) -> Env {
    env_full(store, Options::default()).await
}

/// An [`Env`] whose emulator starts with `opts` (e.g. the interactive sign-in page).
pub(crate) async fn env_full(store: Option<Arc<dyn SecretStore>>, opts: Options) -> Env {
    let emu = Emulator::start(opts).await.unwrap();
    spbridge_tests::secret_values::watch(emu.issued_credentials());
    let info = emu.info().clone();
    let prefix = spbridge_tests::unique_prefix();
    let vars: HashMap<&str, String> = HashMap::from([
        ("SPBRIDGE_ACS_URL", info.acs.clone()),
        ("SPBRIDGE_LOGIN_URL", info.login.clone()),
        ("SPBRIDGE_LIVE_URL", info.live.clone()),
        ("SPBRIDGE_GRAPH_URL", info.graph.clone()),
        ("SPBRIDGE_DISCOVERY_URL", info.discovery.clone()),
        ("SPBRIDGE_SECRET_BACKEND", "aws".into()),
        ("SPBRIDGE_SECRET_PREFIX", prefix.clone()),
        ("SPBRIDGE_SECRET_CACHE_TTL_SECS", "0".into()),
        ("SPBRIDGE_PUBLIC_BASE_URL", PUBLIC_BASE.into()),
    ]);
    let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let store = match store {
        Some(s) => s,
        None => Arc::new(spbridge_tests::moto_store().await),
    };
    let env = Env {
        emu,
        store,
        config,
        http: http_client(),
    };
    env.seed_apps().await;
    env
}

pub(crate) async fn env() -> Env {
    env_with(None).await
}

fn lifecycle(pairs: &[(&str, &str)]) -> LifecycleConfig {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LifecycleConfig::from_lookup(|k| map.get(k).cloned()).unwrap()
}

/// Every delegated connection is due: the skew (two days) exceeds every access-token lifetime
/// (an hour; twelve for ACS).
fn all_due() -> LifecycleConfig {
    lifecycle(&[("SPBRIDGE_REFRESH_ACCESS_SKEW_SECS", "172800")])
}

impl Env {
    pub(crate) fn info(&self) -> &EmulatorInfo {
        self.emu.info()
    }

    pub(crate) fn name(&self, rest: &str) -> String {
        format!("{}{rest}", self.config.secrets.prefix)
    }

    pub(crate) async fn put(&self, name: &str, value: Value) {
        self.store.put(name, &value, None).await.unwrap();
    }

    async fn seed_apps(&self) {
        let info = self.info().clone();
        let key = base64::engine::general_purpose::STANDARD
            .encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
        let acs = info.acs_app("acs-app").unwrap();
        let entra = info.entra_app("entra-app").unwrap();
        self.put(
            &self.name("app"),
            json!({"client_id": entra.client_id, "client_secret": entra.client_secret,
                   "tenant_id": info.tenant_id, "state_signing_key": key}),
        )
        .await;
        self.put(
            &self.name("apps/acs"),
            json!({"client_id": acs.client_id, "client_secret": acs.client_secret}),
        )
        .await;
        self.put(
            &self.name("apps/entra"),
            json!({"client_id": entra.client_id, "client_secret": entra.client_secret,
                   "certificate_pem": entra.certificate_pem, "private_key_pem": entra.private_key_pem,
                   "tenant_id": info.tenant_id}),
        )
        .await;
    }

    pub(crate) fn team(&self) -> (String, String) {
        let site = self.info().site("team").unwrap();
        (
            site.url.clone(),
            site.libraries[0].server_relative_url.clone(),
        )
    }

    /// Creates a connection skeleton as an operator would, before anyone consents.
    pub(crate) async fn connection(&self, id: &str, provider: &str) {
        let (site, _) = self.team();
        let sp = json!({"kind": "sharepoint", "site_url": site, "library": "Documents"});
        let drive = json!({"kind": "drive", "drive_id": "me"});
        let v = match provider {
            "acs" => {
                json!({"provider": "acs", "auth": "delegated", "target": sp, "status": "needs_consent",
                            "app_secret": self.name("apps/acs")})
            }
            "aad_v1" => {
                json!({"provider": "aad_v1", "auth": "delegated", "target": sp, "status": "needs_consent",
                               "app_secret": self.name("apps/entra"), "use_discovery": true})
            }
            "entra" => {
                json!({"provider": "entra", "auth": "delegated", "target": sp, "status": "needs_consent",
                              "app_secret": self.name("apps/entra"), "tenant_id": self.info().tenant_id})
            }
            "msa" => {
                json!({"provider": "msa", "auth": "delegated", "target": drive, "status": "needs_consent",
                            "app_secret": self.name("apps/entra")})
            }
            "entra_app_only" => {
                json!({"provider": "entra", "auth": "app_only", "target": sp, "status": "active",
                                       "app_secret": self.name("apps/entra")})
            }
            other => panic!("unknown provider {other}"),
        };
        self.put(&self.name(&format!("connections/{id}")), v).await;
    }

    pub(crate) async fn stored(&self, id: &str) -> Versioned<ConnectionSecret> {
        let raw = self
            .store
            .get(&self.name(&format!("connections/{id}")))
            .await
            .unwrap();
        Versioned {
            version: raw.version,
            value: serde_json::from_value(raw.value).unwrap(),
        }
    }

    /// `/connect/{id}?invite=…` with a link minted as an operator would.
    pub(crate) async fn connect_path(&self, id: &str, rebind: bool) -> String {
        let token = shared::signin::link::mint_for_connection(
            self.store.as_ref(),
            &self.config.secrets,
            id,
            shared::signin::link::DEFAULT_LINK_TTL,
            rebind,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
        format!("/connect/{id}?invite={token}")
    }

    pub(crate) fn callback(&self) -> Result<oauth_callback::State, String> {
        Ok(self.callback_state())
    }

    pub(crate) fn callback_state(&self) -> oauth_callback::State {
        oauth_callback::State::new(self.config.clone(), lifecycle(&[]), self.http.clone())
            .with_store(self.store.clone())
    }

    fn refresher(&self, lc: LifecycleConfig) -> Result<token_refresh::State, String> {
        Ok(
            token_refresh::State::new(self.config.clone(), lc, self.http.clone())
                .with_store(self.store.clone()),
        )
    }

    /// An `Access` with its own token cache: one Lambda container.
    fn access(&self) -> Access {
        Access::new(
            self.http.clone(),
            self.config.endpoints.clone(),
            Arc::new(TokenCache::default()),
            self.store.clone(),
            self.config.secrets.clone(),
        )
    }
}

pub(crate) fn get(uri: &str, headers: &[(&str, &str)]) -> Request {
    let mut b = lambda_http::http::Request::builder().method("GET").uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::Empty).unwrap()
}

pub(crate) fn body_json(resp: &Response<Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(resp.body().as_ref())
        )
    })
}

pub(crate) fn header<'a>(resp: &'a Response<Body>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// A finished `/connect` → Microsoft → `/callback` round trip, up to the callback request.
pub(crate) struct Consent {
    pub(crate) callback_query: String,
    pub(crate) cookie: String,
}

/// `GET /connect/{id}` (302 parsed), then the browser following it to the emulator, which
/// consents and redirects back with a code.
pub(crate) async fn start_consent(
    env: &Env,
    state: &Result<oauth_callback::State, String>,
    id: &str,
) -> Consent {
    let resp = oauth_callback::handle(
        state,
        get(
            &env.connect_path(id, false).await,
            &[("accept", "text/html"), ("host", "127.0.0.1:9")],
        ),
    )
    .await;
    assert_eq!(
        resp.status(),
        302,
        "{}",
        String::from_utf8_lossy(resp.body().as_ref())
    );
    let location = Url::parse(header(&resp, "location")).unwrap();
    let set_cookie = header(&resp, "set-cookie");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(
        location.query_pairs().any(|(k, _)| k == "state"),
        "{location}"
    );
    assert!(
        !location.as_str().contains(&cookie),
        "the nonce never travels in the URL"
    );

    let back = env.http.get(location.clone()).send().await.unwrap();
    assert_eq!(
        back.status(),
        302,
        "{location}: {}",
        back.text().await.unwrap_or_default()
    );
    let back = Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(back.path(), "/callback");
    assert!(back.query_pairs().any(|(k, _)| k == "code"), "{back}");
    Consent {
        callback_query: back.query().unwrap().to_owned(),
        cookie,
    }
}

pub(crate) async fn finish_consent(
    state: &Result<oauth_callback::State, String>,
    c: &Consent,
) -> Response<Body> {
    oauth_callback::handle(
        state,
        get(
            &format!("/callback?{}", c.callback_query),
            &[("accept", "application/json"), ("cookie", &c.cookie)],
        ),
    )
    .await
}

async fn sharepoint_upload(env: &Env, token: &str, name: &str, bytes: &[u8]) {
    let (site, lib) = env.team();
    let url = format!(
        "{site}/_api/web/GetFolderByServerRelativeUrl('{lib}')/Files/add(url='{name}',overwrite=true)"
    );
    let resp = env
        .http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json;odata=nometadata")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(
        env.emu.file_bytes(&format!("{lib}/{name}")).as_deref(),
        Some(bytes)
    );
}

async fn graph_upload(env: &Env, token: &str, path: &str, bytes: &[u8]) {
    let url = format!("{}/v1.0/me/drive/root:/{path}:/content", env.info().graph);
    let resp = env
        .http
        .put(url)
        .bearer_auth(token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(body["size"], json!(bytes.len()), "{body}");
}

/// The whole chain for one identity system.
async fn full_chain(provider: &str) {
    let env = env().await;
    let id = format!("{provider}-docs");
    env.connection(&id, provider).await;
    let cb = env.callback();

    let t0 = Instant::now();
    let consent = start_consent(&env, &cb, &id).await;
    let resp = finish_consent(&cb, &consent).await;
    let page = body_json(&resp);
    assert_eq!(resp.status(), 200, "{page}");
    assert_eq!(page["connection"], json!(id));
    assert_eq!(page["provider"], json!(provider));
    assert!(page["access_token_expires_at"].is_string(), "{page}");
    assert!(page["next_refresh_at"].is_string(), "{page}");
    let text = String::from_utf8_lossy(resp.body().as_ref()).into_owned();

    let first = env.stored(&id).await.value;
    let rt1 = first.refresh_token.clone().expect("refresh token stored");
    assert!(
        !text.contains(rt1.expose_secret()),
        "the page shows no token"
    );
    assert_eq!(first.status, ConnectionStatus::Active);
    assert!(first.refresh_token_issued_at.is_some() && first.access_token_expires_at.is_some());
    assert_eq!(first.consumed_states.len(), 1);
    assert_eq!(first.generation, 1);
    match provider {
        "acs" => assert_eq!(first.realm.as_deref(), Some(env.info().realm.as_str())),
        "aad_v1" => {
            assert_eq!(
                first.tenant_id.as_deref(),
                Some(env.info().tenant_id.as_str())
            );
            assert!(
                first
                    .resources
                    .iter()
                    .any(|r| r.trim_end_matches('/') == env.info().base_url),
                "{:?}",
                first.resources
            );
        }
        "msa" => assert_eq!(
            first.redirect_uri.as_ref().map(Url::as_str),
            Some(format!("{PUBLIC_BASE}/callback").as_str())
        ),
        _ => {}
    }

    // The scheduled run finds it due and refreshes it.
    let schedule: token_refresh::Trigger = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/schedule.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let report = token_refresh::handle(&env.refresher(all_due()), schedule)
        .await
        .unwrap();
    assert_eq!(
        (
            report.summary.refreshed,
            report.summary.failed,
            report.summary.needs_consent
        ),
        (1, 0, 0),
        "{report:?}"
    );
    let second = env.stored(&id).await.value;
    assert!(second.generation > first.generation);
    assert!(second.last_refreshed_at.is_some());
    let rotates = provider != "acs";
    if rotates {
        assert_ne!(
            second.refresh_token.as_ref().unwrap().expose_secret(),
            rt1.expose_secret(),
            "{provider} rotates refresh tokens and the new one is stored"
        );
    }

    // The refreshed connection's token works on an upload.
    let bearer = env.access().bearer(&id, false).await.unwrap();
    let bytes = format!("uploaded through {provider}").into_bytes();
    match provider {
        "msa" => {
            graph_upload(
                &env,
                bearer.token.expose_secret(),
                &format!("lifecycle/{id}.txt"),
                &bytes,
            )
            .await
        }
        _ => {
            sharepoint_upload(
                &env,
                bearer.token.expose_secret(),
                &format!("{id}.txt"),
                &bytes,
            )
            .await
        }
    }
    eprintln!(
        "{provider}: connect → callback → refresh → upload in {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acs_connect_refresh_upload() {
    full_chain("acs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aad_v1_with_discovery_connect_refresh_upload() {
    full_chain("aad_v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_v2_pkce_connect_refresh_upload() {
    full_chain("entra").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msa_connect_refresh_upload() {
    full_chain("msa").await;
}

pub(crate) fn error_code(resp: &Response<Body>) -> String {
    body_json(resp)["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_state_cookie_and_replay_get_clear_4xx_and_no_second_write() {
    let env = env().await;
    env.connection("e1", "entra").await;
    let cb = env.callback();

    // Missing cookie.
    let c = start_consent(&env, &cb, "e1").await;
    let resp = oauth_callback::handle(
        &cb,
        get(
            &format!("/callback?{}", c.callback_query),
            &[("accept", "application/json")],
        ),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (400, "bad_request".into())
    );

    // Tampered state: one character of the signed payload changed.
    let tampered: String = url::form_urlencoded::parse(c.callback_query.as_bytes())
        .map(|(k, v)| {
            let v = if k == "state" {
                let mut s = v.into_owned();
                let flipped = if s.starts_with('e') { "f" } else { "e" };
                s.replace_range(0..1, flipped);
                s
            } else {
                v.into_owned()
            };
            format!(
                "{k}={}",
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let resp = finish_consent(
        &cb,
        &Consent {
            callback_query: tampered,
            cookie: c.cookie.clone(),
        },
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (400, "bad_request".into())
    );

    // Someone else's cookie.
    let other = start_consent(&env, &cb, "e1").await;
    let resp = finish_consent(
        &cb,
        &Consent {
            callback_query: c.callback_query.clone(),
            cookie: other.cookie.clone(),
        },
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (403, "forbidden".into())
    );

    // Expired: the callback arrives 11 minutes after /connect.
    let late: Result<oauth_callback::State, String> =
        Ok(env.callback_state().with_clock(Arc::new(|| {
            OffsetDateTime::now_utc() + time::Duration::minutes(11)
        })));
    let resp = finish_consent(&late, &c).await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (400, "bad_request".into())
    );
    assert_eq!(
        env.stored("e1").await.value.generation,
        0,
        "nothing was written"
    );

    // The genuine callback works once …
    let resp = finish_consent(&cb, &c).await;
    assert_eq!(resp.status(), 200, "{}", body_json(&resp));
    let after_first = env.stored("e1").await;
    // … and replaying it (same code, state and cookie) is refused without a second write.
    let resp = finish_consent(&cb, &c).await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (409, "replayed".into())
    );
    let after_replay = env.stored("e1").await;
    assert_eq!(after_replay.version, after_first.version);

    // A provider error is a readable page, HTML by default.
    let resp = oauth_callback::handle(
        &cb,
        get(
            "/callback?error=access_denied&error_description=AADSTS65004%3A+User+declined+to+consent.&state=x",
            &[("accept", "text/html")],
        ),
    )
    .await;
    assert_eq!(resp.status(), 424);
    assert!(header(&resp, "content-type").starts_with("text/html"));
    assert!(String::from_utf8_lossy(resp.body().as_ref()).contains("AADSTS65004"));

    // The Microsoft-account token flow is refused with a pointer to the code flow.
    env.connection("m1", "msa").await;
    let resp = oauth_callback::handle(
        &cb,
        get(
            &format!(
                "{}&response_type=token",
                env.connect_path("m1", false).await
            ),
            &[("accept", "application/json")],
        ),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (400, "bad_request".into())
    );
    // Without a public base URL the redirect URI follows the Host, which must be allowed.
    let mut cfg = env.config.clone();
    cfg.public_base_url = None;
    let guarded: Result<oauth_callback::State, String> = Ok(oauth_callback::State::new(
        cfg,
        lifecycle(&[("SPBRIDGE_ALLOWED_HOSTS", "api.contoso.example")]),
        env.http.clone(),
    )
    .with_store(env.store.clone()));
    let resp = oauth_callback::handle(
        &guarded,
        get(
            &env.connect_path("e1", false).await,
            &[("accept", "application/json"), ("host", "evil.example")],
        ),
    )
    .await;
    assert_eq!(resp.status(), 400, "{}", body_json(&resp));
    let resp = oauth_callback::handle(
        &guarded,
        get(
            &env.connect_path("e1", false).await,
            &[
                ("accept", "application/json"),
                ("host", "api.contoso.example"),
            ],
        ),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let authorize = Url::parse(body_json(&resp)["authorize_url"].as_str().unwrap()).unwrap();
    let redirect = authorize
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(redirect, "https://api.contoso.example/callback");
    assert!(
        authorize
            .query_pairs()
            .any(|(k, v)| k == "code_challenge_method" && v == "S256")
    );

    // Unknown connection, bad id, no link: the same 403, not 5xx.
    let resp =
        oauth_callback::handle(&cb, get("/connect/nope", &[("accept", "application/json")])).await;
    assert_eq!(resp.status(), 403);
    let resp = oauth_callback::handle(
        &cb,
        get("/connect/..%2Fapp", &[("accept", "application/json")]),
    )
    .await;
    assert_eq!(resp.status(), 403);
}

pub(crate) fn post_form(uri: &str, host: &str, form: &[(&str, &str)]) -> Request {
    let body = serde_urlencoded::to_string(form).unwrap();
    lambda_http::http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("host", host)
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::Text(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_token_post_stores_the_add_in_token_and_rejects_bad_ones() {
    let env = env().await;
    env.connection("addin", "acs").await;
    let cb = env.callback();
    let acs = env.info().acs_app("acs-app").unwrap().client_id.clone();
    let host = env.info().sharepoint_host.clone();
    let (site, _) = env.team();
    let token = env.emu.context_token(&acs, "team").unwrap();

    // Bad signature: the last signature character changed.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let resp = oauth_callback::handle(
        &cb,
        post_form(
            "/callback?connection=addin",
            &host,
            &[("SPAppToken", &forged), ("SPHostUrl", &site)],
        ),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (401, "unauthorized".into())
    );

    // Wrong audience: the add-in is not served from this host.
    let resp = oauth_callback::handle(
        &cb,
        post_form(
            "/callback?connection=addin",
            "evil.example",
            &[("SPAppToken", &token), ("SPHostUrl", &site)],
        ),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (401, "unauthorized".into())
    );

    // Expired: presented 13 hours later (context tokens live 12).
    let late: Result<oauth_callback::State, String> =
        Ok(env.callback_state().with_clock(Arc::new(|| {
            OffsetDateTime::now_utc() + time::Duration::hours(13)
        })));
    let resp = oauth_callback::handle(
        &late,
        post_form(
            "/callback?connection=addin",
            &host,
            &[("SPAppToken", &token), ("SPHostUrl", &site)],
        ),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (401, "unauthorized".into())
    );
    assert_eq!(env.stored("addin").await.value.generation, 0);

    // Missing token: 400; another site: the uniform launch refusal (401).
    let resp = oauth_callback::handle(
        &cb,
        post_form("/callback?connection=addin", &host, &[("SPHostUrl", &site)]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let resp = oauth_callback::handle(
        &cb,
        post_form(
            "/callback?connection=addin",
            &host,
            &[
                ("SPAppToken", &token),
                ("SPHostUrl", "https://elsewhere.sharepoint.com/sites/x"),
            ],
        ),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (401, "unauthorized".into())
    );

    // The genuine launch.
    let resp = oauth_callback::handle(
        &cb,
        post_form(
            "/callback?connection=addin",
            &host,
            &[("SPAppToken", &token), ("SPHostUrl", &site)],
        ),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", body_json(&resp));
    let stored = env.stored("addin").await.value;
    assert!(stored.refresh_token.is_some());
    assert_eq!(stored.realm.as_deref(), Some(env.info().realm.as_str()));
    // The same token again: 409.
    let resp = oauth_callback::handle(
        &cb,
        post_form(
            "/callback?connection=addin",
            &host,
            &[("SPAppToken", &token), ("SPHostUrl", &site)],
        ),
    )
    .await;
    assert_eq!(resp.status(), 409);

    // The stored add-in token refreshes and uploads.
    let out = env.access().refresh("addin").await.unwrap();
    assert!(matches!(out.persisted, Persisted::Saved { .. }));
    let bearer = env.access().bearer("addin", false).await.unwrap();
    sharepoint_upload(
        &env,
        bearer.token.expose_secret(),
        "addin.txt",
        b"from the add-in",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_refresh_token_marks_only_that_connection_needs_consent() {
    let env = env().await;
    let cb = env.callback();
    for (id, p) in [("a", "entra"), ("b", "entra"), ("c", "msa")] {
        env.connection(id, p).await;
        let c = start_consent(&env, &cb, id).await;
        assert_eq!(finish_consent(&cb, &c).await.status(), 200);
    }
    env.connection("app", "entra_app_only").await;
    let revoked_rt = env.stored("b").await.value.refresh_token.unwrap();
    assert_eq!(
        env.emu.set_refresh_state(
            None,
            Some(revoked_rt.expose_secret()),
            RefreshState::Revoked
        ),
        1
    );

    let scheduled: token_refresh::Trigger = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/schedule.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let report = token_refresh::handle(&env.refresher(all_due()), scheduled)
        .await
        .unwrap();
    let s = report.summary;
    assert_eq!(
        (s.refreshed, s.skipped, s.failed, s.needs_consent),
        (2, 1, 0, 1),
        "{report:?}"
    );
    let b = env.stored("b").await.value;
    assert_eq!(b.status, ConnectionStatus::NeedsConsent);
    assert_eq!(b.status_code.as_deref(), Some("AADSTS50173"));
    assert!(b.status_at.is_some());
    assert_eq!(
        b.refresh_token.unwrap().expose_secret(),
        revoked_rt.expose_secret(),
        "nothing is deleted"
    );
    let entry = report
        .connections
        .iter()
        .find(|c| c.connection == "b")
        .unwrap();
    assert_eq!(entry.outcome, "needs_consent");
    assert_eq!(entry.error_type, Some("SpBridge.Fatal.NeedsConsent"));

    // The next run leaves it alone and still counts it.
    let scheduled: token_refresh::Trigger =
        serde_json::from_value(json!({"version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-22T06:00:00Z", "region": "us-east-1", "resources": [], "detail": {}}))
        .unwrap();
    let report = token_refresh::handle(&env.refresher(all_due()), scheduled)
        .await
        .unwrap();
    assert_eq!(
        (report.summary.refreshed, report.summary.needs_consent),
        (2, 1),
        "{report:?}"
    );

    // A misconfigured connection fails the run with a fatal diagnostic; the others still refresh.
    env.put(
        &env.name("connections/broken"),
        json!({"provider": "msa", "auth": "delegated", "target": {"kind": "drive", "drive_id": "me"},
               "status": "active", "refresh_token": "x", "app_secret": env.name("apps/entra")}),
    )
    .await;
    let err = token_refresh::handle(
        &env.refresher(all_due()),
        token_refresh::Trigger::Manual {
            connections: vec!["a".into(), "broken".into()],
        },
    )
    .await
    .unwrap_err();
    let token_refresh::RunFailure::ConnectionsFailed { summary, .. } = &err.0 else {
        panic!("{err:?}")
    };
    assert_eq!((summary.refreshed, summary.failed), (1, 1));
    let diag: lambda_runtime::Diagnostic = err.into();
    assert_eq!(diag.error_type, "SpBridge.Fatal.Misconfigured");
}

/// A store wrapper that records every successful connection write and delays writes a little,
/// so concurrent writers interleave the way separate Lambda containers do. It also bounds the
/// requests in flight to moto (one local Python process, which refuses connections beyond a few
/// dozen at once); the 1,000 refreshes themselves all run concurrently.
struct RecordingStore {
    inner: Arc<dyn SecretStore>,
    writes: Mutex<Vec<(String, u64, String)>>,
    in_flight: tokio::sync::Semaphore,
}

impl RecordingStore {
    fn new(inner: Arc<dyn SecretStore>) -> Self {
        RecordingStore {
            inner,
            writes: Mutex::new(Vec::new()),
            in_flight: tokio::sync::Semaphore::new(32),
        }
    }
}

impl SecretStore for RecordingStore {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
        Box::pin(async move {
            let _permit = self.in_flight.acquire().await;
            self.inner.get(name).await
        })
    }

    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<&'a VersionId>,
    ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
        Box::pin(async move {
            let jitter = uuid::Uuid::new_v4().as_bytes()[0] % 20;
            tokio::time::sleep(Duration::from_millis(jitter as u64)).await;
            let r = {
                let _permit = self.in_flight.acquire().await;
                self.inner.put(name, value, expected).await
            };
            if r.is_ok() && name.contains("/connections/") {
                let gen_ = value["generation"].as_u64().unwrap_or(0);
                let rt = value["refresh_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                self.writes
                    .lock()
                    .unwrap()
                    .push((name.to_owned(), gen_, rt));
            }
            r
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        self.inner.list(prefix)
    }
}

const RACE_CONNECTIONS: usize = 4;

/// Start times spread over five seconds, so the race runs through many generations.
fn stagger() -> Duration {
    let b = uuid::Uuid::new_v4().into_bytes();
    Duration::from_millis(u64::from(u16::from_le_bytes([b[0], b[1]]) % 5000))
}
const RACE_TASKS_EACH: usize = 250;

/// The two races take turns: together they would only measure moto.
static RACE_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sets up 4 consented Entra connections behind a recording store.
async fn race_env() -> (Env, Arc<RecordingStore>, Vec<String>) {
    let recording = Arc::new(RecordingStore::new(Arc::new(
        spbridge_tests::moto_store().await,
    )));
    let env = env_with(Some(recording.clone())).await;
    let cb = env.callback();
    let mut ids = Vec::new();
    for i in 0..RACE_CONNECTIONS {
        let id = format!("race-{i}");
        env.connection(&id, "entra").await;
        let c = start_consent(&env, &cb, &id).await;
        assert_eq!(finish_consent(&cb, &c).await.status(), 200);
        ids.push(id);
    }
    recording.writes.lock().unwrap().clear();
    // Token requests take 0, 150 or 400 ms, like a busy identity provider: a refresher that read
    // earlier may finish later.
    let login = format!("/login/{}/oauth2/v2.0/token", env.info().tenant_id);
    env.emu.add_fault(
        tenant_emulator::FaultRule::new(&login, tenant_emulator::FaultKind::Latency { ms: 400 })
            .rate(0.2),
    );
    env.emu.add_fault(
        tenant_emulator::FaultRule::new(&login, tenant_emulator::FaultKind::Latency { ms: 150 })
            .rate(0.4),
    );
    (env, recording, ids)
}

struct RaceResult {
    /// Writes per connection, in the order they landed: (generation, refresh token).
    writes: HashMap<String, Vec<(u64, String)>>,
    /// Final stored (generation, refresh token) per connection.
    stored: HashMap<String, (u64, String)>,
}

async fn race_outcome(env: &Env, rec: &RecordingStore, ids: &[String]) -> RaceResult {
    let mut writes: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for (name, g, rt) in rec.writes.lock().unwrap().iter() {
        let id = name.rsplit('/').next().unwrap().to_owned();
        writes.entry(id).or_default().push((*g, rt.clone()));
    }
    let mut stored = HashMap::new();
    for id in ids {
        let c = env.stored(id).await.value;
        stored.insert(
            id.clone(),
            (
                c.generation,
                c.refresh_token.unwrap().expose_secret().to_owned(),
            ),
        );
    }
    RaceResult { writes, stored }
}

/// Revokes, as a strict-rotation provider would, every refresh token that a newer generation
/// replaced; returns how many.
fn revoke_superseded(env: &Env, r: &RaceResult) -> usize {
    let mut n = 0;
    for w in r.writes.values() {
        let max = w.iter().map(|(g, _)| *g).max().unwrap_or(0);
        for (g, rt) in w {
            if *g < max {
                n += env
                    .emu
                    .set_refresh_state(None, Some(rt), RefreshState::Revoked);
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_refreshes_keep_the_newest_token() {
    let _turn = RACE_TURN.lock().await;
    let (env, rec, ids) = race_env().await;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..RACE_CONNECTIONS * RACE_TASKS_EACH {
        let id = ids[task % RACE_CONNECTIONS].clone();
        let access = env.access(); // its own token cache: one container each
        let start = stagger();
        tasks.spawn(async move {
            tokio::time::sleep(start).await;
            access.refresh(&id).await
        });
    }
    let mut saved = 0;
    let mut stale = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(out) => match out.persisted {
                Persisted::Saved { .. } => saved += 1,
                Persisted::AlreadyNewer { .. } => stale += 1,
                Persisted::Cached => panic!("a forced refresh never answers from the cache"),
            },
            Err(e) => panic!("refresh failed: {e}"),
        }
    }
    let elapsed = t0.elapsed();
    eprintln!(
        "race: {} refreshes on {RACE_CONNECTIONS} connections in {elapsed:?} ({saved} stored, {stale} found a newer token)",
        RACE_CONNECTIONS * RACE_TASKS_EACH
    );

    let r = race_outcome(&env, &rec, &ids).await;
    for id in &ids {
        let w = &r.writes[id];
        // Generations only ever go up: no write based on an older read landed after a newer one.
        assert!(
            w.windows(2).all(|p| p[1].0 > p[0].0),
            "{id}: generations regressed: {:?}",
            w.iter().map(|x| x.0).collect::<Vec<_>>()
        );
        let (last_gen, last_rt) = w.last().unwrap();
        assert_eq!(&r.stored[id], &(*last_gen, last_rt.clone()), "{id}");
    }
    // Even a provider that kills every replaced token leaves each connection working.
    let revoked = revoke_superseded(&env, &r);
    assert!(revoked > 0);
    let fresh = env.access();
    for id in &ids {
        fresh
            .refresh(id)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    assert_eq!(saved + stale, RACE_CONNECTIONS * RACE_TASKS_EACH);
}

/// The same race with a writer that skips the generation and version checks (last write wins),
/// as a refresher without CAS would: an older token lands last and, once the provider revokes
/// replaced tokens, the connection is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_race_without_cas_loses_the_newest_token() {
    let _turn = RACE_TURN.lock().await;
    let (env, rec, ids) = race_env().await;
    let locks: Vec<Arc<tokio::sync::Mutex<()>>> = ids
        .iter()
        .map(|_| Arc::new(tokio::sync::Mutex::new(())))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..RACE_CONNECTIONS * RACE_TASKS_EACH {
        let id = ids[task % RACE_CONNECTIONS].clone();
        let access = env.access();
        let store = env.store.clone();
        let lock = locks[task % RACE_CONNECTIONS].clone();
        let name = env.name(&format!("connections/{id}"));
        let start = stagger();
        tasks.spawn(async move {
            tokio::time::sleep(start).await;
            unguarded_refresh(&access, store.as_ref(), &lock, &name, &id).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let r = race_outcome(&env, &rec, &ids).await;
    // An older token overwrote a newer one: the stored generation went down at some write.
    let mut overwritten = 0;
    for id in &ids {
        let w = &r.writes[id];
        overwritten += w.windows(2).filter(|p| p[1].0 < p[0].0).count();
        let (last_gen, last_rt) = w.last().unwrap();
        assert_eq!(&r.stored[id], &(*last_gen, last_rt.clone()), "{id}");
    }
    assert!(
        overwritten > 0,
        "without CAS some write based on an older read lands after a newer one"
    );
    // Where the final write is such an older one, a provider that kills replaced tokens leaves
    // the connection dead.
    let behind: Vec<&String> = ids
        .iter()
        .filter(|id| r.stored[*id].0 < r.writes[*id].iter().map(|x| x.0).max().unwrap())
        .collect();
    revoke_superseded(&env, &r);
    let fresh = env.access();
    for id in &behind {
        assert!(
            fresh.refresh(id).await.is_err(),
            "{id} holds a revoked token"
        );
    }
    eprintln!(
        "no-CAS race: {overwritten} writes replaced a newer token with an older one; {}/{} connections ended on an older, revoked token",
        behind.len(),
        ids.len()
    );
}

/// A refresher without the guard: read, redeem, then overwrite whatever is stored (no check of
/// the version or generation it read: the last write wins).
async fn unguarded_refresh(
    access: &Access,
    store: &dyn SecretStore,
    lock: &tokio::sync::Mutex<()>,
    name: &str,
    id: &str,
) {
    let read = access.connection(id).await.unwrap().value;
    let app = access.app_credential(id, &read).await.unwrap();
    let source = shared::identity::TokenSource::RefreshToken {
        provider: shared::identity::RefreshProvider::Entra {
            authority: read.tenant_id.as_deref().unwrap().parse().unwrap(),
        },
        client_id: app.client_id.clone(),
        client_secret: app
            .client_secret
            .as_ref()
            .map(|s| shared::identity::ClientSecret::new(s.expose_secret().to_owned())),
        refresh_token: shared::identity::RefreshToken::new(
            read.refresh_token
                .as_ref()
                .unwrap()
                .expose_secret()
                .to_owned(),
        ),
        connection: id.to_owned(),
    };
    let scope = shared::access::resource_for(&read, access.endpoints()).unwrap();
    let token = source
        .token(
            access.http(),
            access.endpoints(),
            &TokenCache::default(),
            &scope,
            true,
        )
        .await
        .unwrap();
    let mut next = read.clone();
    let rt = token.refresh_token.unwrap().expose_secret().to_owned();
    next.refresh_token = Some(rt.into());
    next.generation = read.generation + 1;
    let value = serde_json::to_value(&next).unwrap();
    // Overwrite whatever is current now (not what was read before redeeming): last write wins.
    // The lock only keeps this writer's own get→put pair from being interleaved.
    let _serial = lock.lock().await;
    let current = store.get(name).await.unwrap();
    store
        .put(name, &value, Some(&current.version))
        .await
        .unwrap();
}

/// Code redemption falls back to the app's secondary client secret when Microsoft refuses the
/// primary as `invalid_client` (a rolled-over secret), as `Access` does on refresh. Without a
/// secondary, the same refusal is an operator's problem: 500 `misconfigured`, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_redemption_falls_back_to_the_secondary_secret() {
    let env = env().await;
    let entra = env.info().entra_app("entra-app").unwrap().clone();
    let tenant = env.info().tenant_id.clone();
    let cb = env.callback();
    for (id, secondary) in [
        ("stale-only", None),
        ("rolled-over", Some(&entra.client_secret)),
    ] {
        let app = format!("apps/{id}");
        let mut value = json!({"client_id": entra.client_id, "client_secret": "stale-secret",
                               "tenant_id": tenant});
        if let Some(s) = secondary {
            value["secondary_client_secret"] = json!(s);
        }
        env.put(&env.name(&app), value).await;
        let (site, _) = env.team();
        env.put(
            &env.name(&format!("connections/{id}")),
            json!({"provider": "entra", "auth": "delegated", "status": "needs_consent",
                   "target": {"kind": "sharepoint", "site_url": site, "library": "Documents"},
                   "app_secret": env.name(&app), "tenant_id": tenant}),
        )
        .await;
        let consent = start_consent(&env, &cb, id).await;
        let resp = finish_consent(&cb, &consent).await;
        let stored = env.stored(id).await.value;
        if secondary.is_some() {
            assert_eq!(resp.status(), 200, "{}", body_json(&resp));
            assert!(stored.refresh_token.is_some());
            assert_eq!(stored.status, ConnectionStatus::Active);
            // The stored token works: it refreshes with the same fallback.
            let out = env.access().refresh(id).await.unwrap();
            assert!(matches!(out.persisted, Persisted::Saved { .. }));
        } else {
            assert_eq!(
                (resp.status().as_u16(), error_code(&resp)),
                (500, "misconfigured".into()),
                "{}",
                body_json(&resp)
            );
            assert!(!body_json(&resp).to_string().contains("stale-secret"));
            assert!(stored.refresh_token.is_none());
            assert_eq!(stored.generation, 0);
        }
    }
}

/// The codes unification changed (issue 9): Kind decides status and `error` everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_errors_use_the_shared_kinds() {
    let env = env().await;
    let cb = env.callback();
    let json_get = |uri: &str| get(uri, &[("accept", "application/json")]);
    let answer = |resp: Response<Body>| (resp.status().as_u16(), error_code(&resp));

    // Microsoft asking for consent again is `needs_consent` (424), Microsoft's word kept.
    let resp = oauth_callback::handle(
        &cb,
        json_get("/callback?error=consent_required&error_description=AADSTS65001&state=x"),
    )
    .await;
    let body = body_json(&resp);
    assert_eq!(answer(resp), (424, "needs_consent".into()));
    assert_eq!(body["microsoft_code"], "consent_required");
    assert_eq!(body["error_description"], "AADSTS65001");
    // A declined consent also leaves the connection needing consent (424), per the Microsoft table.
    let resp = oauth_callback::handle(&cb, json_get("/callback?error=access_denied&state=x")).await;
    assert_eq!(answer(resp), (424, "needs_consent".into()));

    // /connect without a valid link is `forbidden` (403) whatever the connection; on POST
    // /callback an unknown connection, one that is no add-in and a bad token at a real add-in
    // all get the same 401 body, so a launch cannot probe which connections exist.
    let resp = oauth_callback::handle(&cb, json_get("/connect/nope")).await;
    assert_eq!(answer(resp), (403, "forbidden".into()));
    let host = env.info().sharepoint_host.clone();
    env.connection("graphy", "entra_app_only").await;
    let mut bodies = Vec::new();
    for id in ["nope", "graphy"] {
        let resp = oauth_callback::handle(
            &cb,
            post_form(
                &format!("/callback?connection={id}"),
                &host,
                &[("SPAppToken", "x.y.z")],
            ),
        )
        .await;
        let mut body = body_json(&resp);
        assert_eq!(answer(resp), (401, "unauthorized".into()), "{id}");
        body.as_object_mut().map(|o| o.remove("connection"));
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1]);

    // A form over 64 KiB is `payload_too_large` (413).
    let big = "x".repeat(70 * 1024);
    let resp = oauth_callback::handle(
        &cb,
        post_form("/callback?connection=nope", &host, &[("SPAppToken", &big)]),
    )
    .await;
    assert_eq!(answer(resp), (413, "payload_too_large".into()));

    // Bad ids, app-only connections and a missing token are `bad_request` (400).
    let resp = oauth_callback::handle(&cb, json_get("/connect/.hidden")).await;
    assert_eq!(answer(resp), (403, "forbidden".into()));
    // No link can be minted for an app-only connection: nothing to consent to.
    env.connection("ao", "entra_app_only").await;
    let refused = shared::signin::link::mint_for_connection(
        env.store.as_ref(),
        &env.config.secrets,
        "ao",
        shared::signin::link::DEFAULT_LINK_TTL,
        false,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap_err();
    assert!(refused.contains("nothing to sign in to"), "{refused}");
    let resp = oauth_callback::handle(&cb, json_get("/callback")).await;
    assert_eq!(answer(resp), (400, "bad_request".into()));

    // A replayed callback is `replayed` (409): covered with the real flow above; here a state
    // whose attempt is already recorded, through the same engine, answers the same.
    env.connection("e2", "entra").await;
    let c = start_consent(&env, &cb, "e2").await;
    assert_eq!(finish_consent(&cb, &c).await.status(), 200);
    assert_eq!(
        answer(finish_consent(&cb, &c).await),
        (409, "replayed".into())
    );

    // An unknown route is `not_found`, a wrong method `method_not_allowed`.
    let resp = oauth_callback::handle(&cb, json_get("/elsewhere")).await;
    assert_eq!(answer(resp), (404, "not_found".into()));
    let resp = oauth_callback::handle(
        &cb,
        lambda_http::http::Request::builder()
            .method("DELETE")
            .uri("/callback")
            .header("accept", "application/json")
            .body(Body::Empty)
            .unwrap(),
    )
    .await;
    assert_eq!(answer(resp), (405, "method_not_allowed".into()));
}

/// The state is signed with the key in `{prefix}state-key` once that secret exists; a sign-in
/// started under the legacy key (the app credential's) finishes when it is the `previous_key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_use_the_state_key_secret_and_survive_its_rotation() {
    let env = env().await;
    env.connection("e3", "entra").await;
    let cb = env.callback();
    let started_before = start_consent(&env, &cb, "e3").await;
    let app: Value = env.store.get(&env.name("app")).await.unwrap().value;
    let legacy = app["state_signing_key"].as_str().unwrap().to_owned();
    let new_key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    env.put(
        &env.name("state-key"),
        json!({"key": new_key, "previous_key": legacy}),
    )
    .await;
    let resp = finish_consent(&cb, &started_before).await;
    assert_eq!(resp.status(), 200, "{}", body_json(&resp));

    // A new sign-in is signed with the new key, so it still verifies once the legacy key is
    // dropped; one whose key is rotated away without a `previous_key` is refused.
    let started_after = start_consent(&env, &cb, "e3").await;
    set_state_key(&env, json!({"key": new_key})).await;
    let resp = finish_consent(&cb, &started_after).await;
    assert_eq!(resp.status(), 200, "{}", body_json(&resp));
    let resp = finish_consent(&cb, &start_consent_with_key_removed(&env, &cb).await).await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (400, "bad_request".into()),
        "{}",
        body_json(&resp)
    );
}

/// Starts a sign-in, then rotates the state key without keeping the old one.
async fn start_consent_with_key_removed(
    env: &Env,
    cb: &Result<oauth_callback::State, String>,
) -> Consent {
    let c = start_consent(env, cb, "e3").await;
    let other = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    set_state_key(env, json!({"key": other})).await;
    c
}

/// Replaces the state-key secret (a compare-and-swap on its current version).
async fn set_state_key(env: &Env, value: Value) {
    let name = env.name("state-key");
    let current = env.store.get(&name).await.unwrap().version;
    env.store.put(&name, &value, Some(&current)).await.unwrap();
}

/// A run near its Lambda deadline starts no refresh: the due connections are deferred with their
/// tokens untouched, and the next run, with time, refreshes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_out_of_time_defers_due_connections_to_the_next_run() {
    let env = env().await;
    let cb = env.callback();
    for id in ["a", "b"] {
        env.connection(id, "entra").await;
        let c = start_consent(&env, &cb, id).await;
        assert_eq!(finish_consent(&cb, &c).await.status(), 200);
    }
    let before = env.stored("a").await.value;
    let manual = || token_refresh::Trigger::Manual {
        connections: vec!["a".into(), "b".into()],
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Less time left than the stop margin: nothing may start.
    let deadline = now_ms + token_refresh::STOP_MARGIN.as_millis() as u64 - 1_000;
    let report = token_refresh::handle_until(&env.refresher(all_due()), manual(), Some(deadline))
        .await
        .unwrap();
    let s = report.summary;
    assert_eq!((s.refreshed, s.deferred, s.failed), (0, 2, 0), "{report:?}");
    assert!(report.connections.iter().all(|c| c.outcome == "deferred"));
    let untouched = env.stored("a").await.value;
    assert_eq!(untouched.generation, before.generation);
    assert_eq!(
        untouched.refresh_token.unwrap().expose_secret(),
        before.refresh_token.unwrap().expose_secret()
    );

    // With the margin and a minute to spare, both go.
    let deadline = now_ms + token_refresh::STOP_MARGIN.as_millis() as u64 + 60_000;
    let report = token_refresh::handle_until(&env.refresher(all_due()), manual(), Some(deadline))
        .await
        .unwrap();
    let s = report.summary;
    assert_eq!((s.refreshed, s.deferred), (2, 0), "{report:?}");
    assert!(env.stored("a").await.value.generation > before.generation);
}
