//! oauth-callback: starts and completes Microsoft sign-in and consent flows.
//!
//! Routes (API Gateway HTTP API):
//! - `GET /connect/{connection}`: 302 to the provider's authorize URL with a signed `state` and
//!   an HttpOnly nonce cookie (JSON clients get `{"authorize_url"}` instead).
//! - `GET /callback`: verifies state + cookie, redeems the code, stores the refresh token with a
//!   compare-and-swap write that also records the attempt as consumed (a replay gets 409).
//! - `POST /callback`: SharePoint's add-in launch (`SPAppToken` form field): validates the
//!   context token with the add-in's secret(s), redeems its refresh token and stores it.
//!
//! The connection secret must exist (an operator creates it with provider, auth and target; see
//! `docs/secrets.md`); sign-in fills in the tokens. The Microsoft-account token (implicit) flow
//! is refused with a message pointing to the code flow: its fragment token cannot be refreshed.

use lambda_http::{
    Body, Request, RequestExt, Response,
    http::{Method, StatusCode, header},
    request::RequestContext,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use shared::{
    access::{Access, AccessError, resource_for},
    config::{Config, join_path},
    identity::{
        AuthCode, ClientSecret, IdentityError, Token, aad_v1, acs, entra, msa, request::send_token,
    },
    oauth::{
        self,
        pages::{self, ErrorInfo, Format, SuccessInfo},
        redirect::{self, Callback, CallbackParams, RedirectSettings, RequestOrigin},
        refresh_policy::{self, ConnectionTimes, RefreshConfig},
        state::{
            CookieSettings, Flow, Nonce, ReplayKey, StateError, StateKey, StateRequest, StateSigner,
        },
    },
    secrets::{
        self, UpdateError,
        schema::{AppCredential, AuthKind, ConnectionSecret, ConnectionStatus, Provider, Target},
        update_typed,
    },
};
use time::OffsetDateTime;
use url::Url;

/// The time source; tests inject a fixed or shifted clock.
pub use shared::runtime::Clock;

/// Longest `POST /callback` body read.
pub const MAX_FORM_BODY: usize = 64 * 1024;

/// Longest connection id accepted in a path.
const MAX_CONNECTION_LEN: usize = 128;

/// What a warm container keeps between invocations.
pub type State = shared::runtime::Warm;

/// Token access for stored connections; a store that cannot be opened is a deployment fault.
async fn access(state: &State) -> Result<Access, Fail> {
    state.access().await.map_err(|e| {
        tracing::error!(error = %e, "cannot open the secret store");
        Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "misconfigured",
            "the secret store cannot be opened; see the function's logs",
        )
    })
}

/// Builds the state once per cold start. The error text names the bad variable.
pub fn init() -> Result<State, String> {
    init_with(Config::from_env().map_err(|e| e.to_string())?)
}

/// Builds the state from an already-read configuration (sign-in settings from the environment).
pub fn init_with(config: Config) -> Result<State, String> {
    State::from_config(config)
}

/// A request that ends early with an error page.
struct Fail(ErrorInfo);

impl Fail {
    fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Fail(ErrorInfo::new(status, error, message))
    }

    fn with_connection(self, id: &str) -> Self {
        Fail(self.0.with_connection(id))
    }
}

impl From<&StateError> for Fail {
    fn from(e: &StateError) -> Self {
        Fail(ErrorInfo::from(e))
    }
}

impl From<AccessError> for Fail {
    fn from(e: AccessError) -> Self {
        if e.http_status().is_server_error() {
            tracing::error!(connection = e.connection(), error = %e, "connection lookup failed");
        }
        let message = match &e {
            AccessError::NotFound { connection } => {
                format!(
                    "there is no connection named {connection:?}; an operator must create it first"
                )
            }
            AccessError::Misconfigured { .. } => {
                "the connection or its app registration is misconfigured; see the function's logs"
                    .to_owned()
            }
            AccessError::Store { .. } => "the secret store could not be reached; try again".into(),
            other => other.to_string(),
        };
        Fail::new(e.http_status(), e.code(), message).with_connection(e.connection())
    }
}

/// Answers one API Gateway request. Never panics on input; bad input gets a 4xx page.
pub async fn handle(state: &Result<State, String>, req: Request) -> Response<Body> {
    let format = Format::negotiate(header_str(&req, header::ACCEPT.as_str()));
    let result = match state {
        Ok(s) => route(s, &req, format).await,
        Err(e) => {
            tracing::error!(error = %e, "configuration error");
            Err(Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "configuration_error",
                "the function is misconfigured; see its logs",
            ))
        }
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(Fail(info)) => {
            if info.status.is_server_error() {
                tracing::error!(error = %info.error, message = %info.message, "request failed");
            } else {
                tracing::info!(error = %info.error, status = info.status.as_u16(), "request refused");
            }
            let mut resp = pages::error_page(&info, format);
            if req.uri().path() == "/callback" {
                clear_cookies(&mut resp);
            }
            resp
        }
    };
    resp.map(Body::from)
}

async fn route(state: &State, req: &Request, format: Format) -> Result<Response<String>, Fail> {
    let path = req.uri().path().trim_end_matches('/');
    match (req.method(), path) {
        (&Method::GET, p) if p.starts_with("/connect/") => {
            let access = access(state).await?;
            connect(state, &access, req, &p["/connect/".len()..], format).await
        }
        (&Method::GET, "/callback") => {
            let access = access(state).await?;
            callback_get(state, &access, req, format).await
        }
        (&Method::POST, "/callback") => {
            let access = access(state).await?;
            callback_post(state, &access, req, format).await
        }
        (_, p) if p.starts_with("/connect/") || p == "/callback" => Err(Fail::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET /connect/{connection}, GET /callback or POST /callback",
        )),
        _ => Err(Fail::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        )),
    }
}

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn connection_id(raw: &str) -> Result<&str, Fail> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_CONNECTION_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !raw.starts_with('.');
    if ok {
        Ok(raw)
    } else {
        Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_connection_id",
            "a connection id is 1-128 letters, digits, '-', '_' or '.'",
        ))
    }
}

fn oauth_provider(p: Provider) -> oauth::Provider {
    match p {
        Provider::Acs => oauth::Provider::Acs,
        Provider::AadV1 => oauth::Provider::AadV1,
        Provider::Entra => oauth::Provider::Entra,
        Provider::Msa => oauth::Provider::Msa,
    }
}

fn misconfigured(id: &str, reason: impl std::fmt::Display) -> Fail {
    tracing::error!(connection = id, reason = %reason, "connection misconfigured");
    Fail::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "misconfigured",
        "the connection or its app registration is misconfigured; see the function's logs",
    )
    .with_connection(id)
}

/// The state signer from the deployment's app credential (`state_signing_key`).
async fn signer(state: &State, access: &Access) -> Result<StateSigner, Fail> {
    let name = &state.config.secrets.app_secret;
    let app = secrets::get_typed::<AppCredential>(access.store().as_ref(), name)
        .await
        .map_err(|e| {
            tracing::error!(secret = %name, error = %e, "cannot read the state signing key");
            Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "misconfigured",
                "the sign-in key cannot be read; see the function's logs",
            )
        })?
        .value;
    let key = |k: &SecretString| {
        StateKey::from_base64(k).map_err(|e| {
            tracing::error!(secret = %name, error = %e, "state signing key unusable");
            Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "misconfigured",
                "the sign-in key is unusable; see the function's logs",
            )
        })
    };
    let current = app.state_signing_key.as_ref().ok_or_else(|| {
        tracing::error!(secret = %name, "app credential has no state_signing_key");
        Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "misconfigured",
            "no sign-in key is configured; see the function's logs",
        )
    })?;
    let mut signer = StateSigner::new(key(current)?);
    if let Some(previous) = &app.previous_state_signing_key {
        signer = signer.with_previous(key(previous)?);
    }
    Ok(signer)
}

fn request_origin(req: &Request) -> RequestOrigin<'_> {
    let (domain_name, stage) = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => {
            (ctx.domain_name.as_deref(), ctx.stage.as_deref())
        }
        _ => (None, None),
    };
    RequestOrigin {
        host: header_str(req, header::HOST.as_str()),
        forwarded_proto: header_str(req, "x-forwarded-proto"),
        domain_name,
        stage,
    }
}

fn redirect_settings(state: &State) -> RedirectSettings {
    RedirectSettings {
        public_base_url: state.config.public_base_url.clone(),
        allowed_hosts: state.lifecycle.allowed_hosts.clone(),
    }
}

fn cookie_settings(redirect_uri: &Url) -> CookieSettings {
    CookieSettings {
        secure: redirect_uri.scheme() == "https",
    }
}

fn clear_cookies(resp: &mut Response<String>) {
    for secure in [true, false] {
        pages::append_set_cookie(resp, &CookieSettings { secure }.clear_cookie());
    }
}

fn query_value(req: &Request, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn refresh_config(state: &State) -> RefreshConfig {
    let d = |s: std::time::Duration| {
        time::Duration::try_from(s).unwrap_or(refresh_policy::DEFAULT_MAX_REFRESH_TOKEN_AGE)
    };
    RefreshConfig {
        access_skew: d(state.lifecycle.refresh_access_skew),
        max_refresh_token_age: d(state.lifecycle.refresh_max_token_age),
    }
}

fn entra_authority(
    conn: &ConnectionSecret,
    app: &AppCredential,
) -> Result<entra::Authority, String> {
    conn.tenant_id
        .as_deref()
        .or(app.tenant_id.as_deref())
        .unwrap_or("common")
        .parse()
        .map_err(|e: IdentityError| e.to_string())
}

fn sharepoint_site(conn: &ConnectionSecret) -> Result<&Url, String> {
    match &conn.target {
        Target::Sharepoint { site_url, .. } => Ok(site_url),
        Target::Drive { .. } => Err("this provider needs a SharePoint site target".into()),
    }
}

/// `GET /connect/{connection}`.
async fn connect(
    state: &State,
    access: &Access,
    req: &Request,
    raw_id: &str,
    format: Format,
) -> Result<Response<String>, Fail> {
    let id = connection_id(raw_id)?;
    let conn = access.connection(id).await?.value;
    if conn.auth == AuthKind::AppOnly {
        return Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "app_only_connection",
            "this connection uses the app's own credentials; there is nothing to consent to",
        )
        .with_connection(id));
    }
    if query_value(req, "response_type").as_deref() == Some("token") {
        return Err(token_flow_refused().with_connection(id));
    }
    let app = access.app_credential(id, &conn).await?;
    let signer = signer(state, access).await?;
    let redirect_uri = redirect::redirect_uri(&redirect_settings(state), &request_origin(req))
        .map_err(|e| Fail(ErrorInfo::from(&e)))?;
    let eps = access.endpoints();
    let now = (state.clock)();

    let (scopes, resource, pkce): (Vec<String>, Option<String>, bool) = match conn.provider {
        Provider::Acs => {
            let scopes = if conn.scopes.is_empty() {
                vec!["Web.Write".to_owned()]
            } else {
                conn.scopes.clone()
            };
            (scopes, None, false)
        }
        Provider::AadV1 => {
            let resource = if conn.use_discovery {
                aad_v1::discovery_resource(eps)
            } else {
                resource_for(&conn, eps).map_err(|e| misconfigured(id, e))?
            };
            (vec![], Some(resource), false)
        }
        Provider::Entra | Provider::Msa => {
            let mut scopes: Vec<String> = resource_for(&conn, eps)
                .map_err(|e| misconfigured(id, e))?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if conn.provider == Provider::Entra {
                // An id_token names the account on the result page.
                for s in ["openid", "profile"] {
                    if !scopes.iter().any(|x| x == s) {
                        scopes.push(s.to_owned());
                    }
                }
            }
            (scopes, None, conn.provider == Provider::Entra)
        }
    };
    let issued = signer
        .issue(
            StateRequest {
                connection: id.to_owned(),
                provider: oauth_provider(conn.provider),
                flow: Flow::Code,
                redirect_uri: redirect_uri.to_string(),
                scopes: scopes.clone(),
                resource: resource.clone(),
                pkce,
            },
            now,
        )
        .map_err(|e| {
            Fail::new(
                StatusCode::BAD_REQUEST,
                "state_not_issued",
                format!("cannot start the sign-in: {e}"),
            )
        })?;

    let authorize = match conn.provider {
        Provider::Acs => {
            let site = sharepoint_site(&conn).map_err(|e| misconfigured(id, e))?;
            let parsed: Result<Vec<acs::Scope>, _> =
                scopes.iter().map(|s| s.parse::<acs::Scope>()).collect();
            let parsed = parsed.map_err(|e| misconfigured(id, e))?;
            acs::authorize_url(site, &app.client_id, &parsed, &redirect_uri, &issued.state)
        }
        Provider::AadV1 => aad_v1::authorize_url(
            eps,
            &app.client_id,
            resource.as_deref().unwrap_or_default(),
            &redirect_uri,
            &issued.state,
            None,
        ),
        Provider::Entra => {
            let authority = entra_authority(&conn, &app).map_err(|e| misconfigured(id, e))?;
            let challenge = issued
                .code_challenge
                .as_deref()
                .ok_or_else(|| misconfigured(id, "no PKCE challenge was issued"))?;
            let mut url = entra::authorize_endpoint(eps, &authority);
            url.query_pairs_mut()
                .append_pair("client_id", &app.client_id)
                .append_pair("response_type", "code")
                .append_pair("redirect_uri", redirect_uri.as_str())
                .append_pair("response_mode", "query")
                .append_pair("scope", &scopes.join(" "))
                .append_pair("state", &issued.state)
                .append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
            url
        }
        Provider::Msa => {
            let mut url = join_path(&eps.live, "oauth20_authorize.srf");
            url.query_pairs_mut()
                .append_pair("client_id", &app.client_id)
                .append_pair("scope", &scopes.join(" "))
                .append_pair("response_type", "code")
                .append_pair("redirect_uri", redirect_uri.as_str())
                .append_pair("state", &issued.state);
            url
        }
    };
    tracing::info!(connection = id, provider = %conn.provider, "sign-in started");
    let cookie = cookie_settings(&redirect_uri).set_cookie(&issued.nonce);
    Ok(pages::connect_response(&authorize, &cookie, format))
}

fn token_flow_refused() -> Fail {
    Fail::new(
        StatusCode::BAD_REQUEST,
        "token_flow_unsupported",
        "the Microsoft-account token flow returns a short-lived token in the URL fragment that \
         cannot be refreshed; spbridge uses the code flow: start again at /connect/{connection}",
    )
}

/// `GET /callback`.
async fn callback_get(
    state: &State,
    access: &Access,
    req: &Request,
    format: Format,
) -> Result<Response<String>, Fail> {
    let params = CallbackParams::parse(req.uri().query().unwrap_or(""))
        .map_err(|e| Fail(ErrorInfo::from(&e)))?;
    match params.classify().map_err(|e| Fail(ErrorInfo::from(&e)))? {
        Callback::Error { error, .. } => {
            tracing::info!(error = %error.error, "provider redirected with an error");
            Err(Fail(ErrorInfo::from_provider(&error)))
        }
        Callback::Empty => Err(token_flow_refused()),
        Callback::AdminConsent { .. } => Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "admin_consent_unexpected",
            "spbridge did not start an admin-consent flow; start the sign-in at /connect/{connection}",
        )),
        Callback::Code {
            code, state: st, ..
        } => {
            complete_code(
                state,
                access,
                req,
                AuthCode::new(code.secret().to_owned()),
                &st,
                format,
            )
            .await
        }
    }
}

fn find_nonce(req: &Request) -> Result<Option<Nonce>, StateError> {
    let cookies: Vec<&str> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for secure in [true, false] {
        let settings = CookieSettings { secure };
        if let Some(n) = settings.find_nonce(cookies.iter().copied())? {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// What a successful redemption yields, before it is stored.
struct Consented {
    token: Token,
    refresh_token: SecretString,
    realm: Option<String>,
    tenant_id: Option<String>,
    resources: Vec<String>,
    scopes: Vec<String>,
    redirect_uri: Option<Url>,
}

fn redeem_failure(id: &str, e: IdentityError) -> Fail {
    let ms = e.ms_error().cloned();
    let status_text = e.to_string();
    match e {
        IdentityError::Transient { .. } | IdentityError::BadResponse { .. } => {
            tracing::warn!(connection = id, error = %status_text, "code redemption failed");
            Fail::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "Microsoft could not be reached or answered unexpectedly; try the sign-in again",
            )
            .with_connection(id)
        }
        IdentityError::Misconfigured(_) => misconfigured(id, status_text),
        _ => {
            tracing::info!(connection = id, error = %status_text, "authorization code refused");
            let mut info = ErrorInfo::new(
                StatusCode::BAD_REQUEST,
                "code_rejected",
                "Microsoft refused the authorization code (used, expired or issued for another \
                 request); start the sign-in again at /connect",
            )
            .with_connection(id);
            info.provider_description = ms.and_then(|m| m.description);
            Fail(info)
        }
    }
}

async fn complete_code(
    state: &State,
    access: &Access,
    req: &Request,
    code: AuthCode,
    raw_state: &str,
    format: Format,
) -> Result<Response<String>, Fail> {
    // Without the cookie nothing can be verified; say so before touching the store.
    let nonce = find_nonce(req)
        .map_err(|e| Fail::from(&e))?
        .ok_or_else(|| Fail::from(&StateError::MissingCookie))?;
    // A state we issued is `payload.tag`, both base64url: refuse anything else before the key
    // is read, so junk never costs a store read.
    let well_formed = raw_state.split('.').count() == 2
        && raw_state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !well_formed {
        return Err(Fail::from(&StateError::Tampered));
    }
    let signer = signer(state, access).await?;
    let now = (state.clock)();
    let mut verified = signer
        .verify(raw_state, Some(&nonce), None, now)
        .map_err(|e| Fail::from(&e))?;
    let id = verified.claims.connection.clone();
    let key = verified.replay_key();
    let current = access.connection(&id).await?.value;
    if current.consumed_states.contains(&key) {
        return Err(Fail::from(&StateError::Replayed).with_connection(&id));
    }
    if oauth_provider(current.provider) != verified.claims.provider {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            "connection_changed",
            "the connection's provider changed during the sign-in; start again at /connect",
        )
        .with_connection(&id));
    }
    let app = access.app_credential(&id, &current).await?;
    let redirect_uri =
        Url::parse(&verified.claims.redirect_uri).map_err(|_| Fail::from(&StateError::Tampered))?;
    let http = access.http();
    let eps = access.endpoints();
    let policy = access.cache().retry;
    let secret = |s: &Option<SecretString>| {
        s.as_ref()
            .map(|s| ClientSecret::new(s.expose_secret().to_owned()))
    };
    let need_secret =
        || secret(&app.client_secret).ok_or_else(|| misconfigured(&id, "client_secret missing"));

    let consented = match current.provider {
        Provider::Acs => {
            let site = sharepoint_site(&current).map_err(|e| misconfigured(&id, e))?;
            let realm = match current.realm.as_deref().or(app.realm.as_deref()) {
                Some(r) => acs::Realm::parse(r).map_err(|e| misconfigured(&id, e))?,
                None => {
                    acs::discover_realm(http, site, &access.cache().realms, &policy)
                        .await
                        .map_err(|e| redeem_failure(&id, e))?
                        .realm
                }
            };
            let host = acs::principal_host(site).map_err(|e| misconfigured(&id, e))?;
            let acs_app = acs::AcsApp {
                client_id: app.client_id.clone(),
                secret: need_secret()?,
            };
            let token = send_token(
                http,
                &acs::code_request(eps, &acs_app, &realm, &host, &code, &redirect_uri),
                &policy,
            )
            .await
            .map_err(|e| redeem_failure(&id, e))?;
            consented(&id, token, verified.claims.scopes.clone())?.with(|c| {
                c.realm = Some(realm.as_str().to_owned());
            })
        }
        Provider::AadV1 if current.use_discovery => {
            let aad = aad_v1::AadApp {
                client_id: app.client_id.clone(),
                secret: need_secret()?,
            };
            let connected = aad_v1::connect(http, eps, &aad, &code, &redirect_uri, &policy)
                .await
                .map_err(|e| redeem_failure(&id, e))?;
            let resources: Vec<String> = connected
                .services
                .iter()
                .map(|(s, _)| s.service_resource_id.clone())
                .collect();
            let target = resource_for(&current, eps).ok();
            let pick = connected
                .services
                .iter()
                .find(|(s, _)| {
                    target.as_deref().is_some_and(|t| {
                        s.service_resource_id
                            .trim_end_matches('/')
                            .eq_ignore_ascii_case(t.trim_end_matches('/'))
                    })
                })
                .or(connected.services.first())
                .map(|(_, t)| t.clone())
                .ok_or_else(|| {
                    Fail::new(
                        StatusCode::BAD_REQUEST,
                        "no_services",
                        "the Discovery service lists no service this account can use",
                    )
                    .with_connection(&id)
                })?;
            tracing::info!(connection = %id, services = resources.len(), "AAD v1 Discovery done");
            Consented {
                refresh_token: SecretString::from(
                    connected.refresh_token.expose_secret().to_owned(),
                ),
                token: pick,
                realm: None,
                tenant_id: Some(connected.tenant_id),
                resources,
                scopes: vec![],
                redirect_uri: None,
            }
        }
        Provider::AadV1 => {
            let aad = aad_v1::AadApp {
                client_id: app.client_id.clone(),
                secret: need_secret()?,
            };
            let resource = verified.claims.resource.clone().unwrap_or_default();
            let token = send_token(
                http,
                &aad_v1::code_request(eps, "common", &aad, &code, &redirect_uri, &resource),
                &policy,
            )
            .await
            .map_err(|e| redeem_failure(&id, e))?;
            consented(&id, token, vec![])?.with(|c| c.resources = vec![resource])
        }
        Provider::Entra => {
            let authority = entra_authority(&current, &app).map_err(|e| misconfigured(&id, e))?;
            let verifier = verified
                .take_pkce_verifier()
                .ok_or_else(|| Fail::from(&StateError::Tampered))?;
            let verifier = entra::PkceVerifier::from_string(verifier.secret().to_owned())
                .map_err(|e| misconfigured(&id, e))?;
            let auth = match secret(&app.client_secret) {
                Some(s) => entra::ClientAuth::Secret(s),
                None => entra::ClientAuth::Public,
            };
            let scopes: Vec<&str> = verified.claims.scopes.iter().map(String::as_str).collect();
            let request = entra::code_request(
                eps,
                &authority,
                &app.client_id,
                &auth,
                &code,
                &redirect_uri,
                &scopes,
                verifier,
                now,
            )
            .map_err(|e| misconfigured(&id, e))?;
            let token = send_token(http, &request, &policy)
                .await
                .map_err(|e| redeem_failure(&id, e))?;
            // Refreshes ask for the resource scopes only (openid/profile are sign-in extras).
            let kept = verified
                .claims
                .scopes
                .iter()
                .filter(|s| !matches!(s.as_str(), "openid" | "profile"))
                .cloned()
                .collect();
            consented(&id, token, kept)?
        }
        Provider::Msa => {
            let app = msa::MsaApp {
                client_id: app.client_id.clone(),
                secret: secret(&app.client_secret),
            };
            let token = send_token(
                http,
                &msa::code_request(eps, &app, &code, &redirect_uri),
                &policy,
            )
            .await
            .map_err(|e| redeem_failure(&id, e))?;
            consented(&id, token, verified.claims.scopes.clone())?
                .with(|c| c.redirect_uri = Some(redirect_uri.clone()))
        }
    };
    store_consent(state, access, &id, key, consented, now, format).await
}

impl Consented {
    fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

fn consented(id: &str, token: Token, scopes: Vec<String>) -> Result<Consented, Fail> {
    let refresh_token = token
        .refresh_token
        .as_ref()
        .map(|rt| SecretString::from(rt.expose_secret().to_owned()))
        .ok_or_else(|| {
            Fail::new(
                StatusCode::BAD_GATEWAY,
                "no_refresh_token",
                "Microsoft issued no refresh token (was offline access granted?)",
            )
            .with_connection(id)
        })?;
    Ok(Consented {
        tenant_id: token.tenant_id.clone(),
        token,
        refresh_token,
        realm: None,
        resources: vec![],
        scopes,
        redirect_uri: None,
    })
}

/// Stores the consent and records the attempt as consumed, in one compare-and-swap write.
async fn store_consent(
    state: &State,
    access: &Access,
    id: &str,
    key: ReplayKey,
    c: Consented,
    now: OffsetDateTime,
    format: Format,
) -> Result<Response<String>, Fail> {
    enum Refused {
        Gone,
        Replayed,
    }
    let name = state.config.secrets.connection_secret_name(id);
    let mut written: Option<ConnectionSecret> = None;
    let result = update_typed::<ConnectionSecret, Refused, _>(
        access.store().as_ref(),
        &name,
        shared::access::SAVE_ATTEMPTS,
        |current| {
            let Some(cur) = current else {
                return Err(Refused::Gone);
            };
            let mut next = cur.clone();
            next.consumed_states
                .record(&key, now)
                .map_err(|_| Refused::Replayed)?;
            next.refresh_token = Some(c.refresh_token.clone());
            next.refresh_token_issued_at = Some(now);
            next.access_token_expires_at = c.token.expires_at;
            next.last_refreshed_at = Some(now);
            next.status = ConnectionStatus::Active;
            next.status_code = None;
            next.status_detail = None;
            next.status_at = Some(now);
            if c.realm.is_some() {
                next.realm = c.realm.clone();
            }
            if c.tenant_id.is_some() {
                next.tenant_id = c.tenant_id.clone();
            }
            if !c.resources.is_empty() {
                next.resources = c.resources.clone();
            }
            if !c.scopes.is_empty() {
                next.scopes = c.scopes.clone();
            }
            if c.redirect_uri.is_some() {
                next.redirect_uri = c.redirect_uri.clone();
            }
            if let Some(user) = &c.token.user {
                next.account = Some(user.clone());
            }
            next.generation = cur.generation.saturating_add(1);
            written = Some(next.clone());
            Ok(Some(next))
        },
    )
    .await;
    match result {
        Ok(_) => {}
        Err(UpdateError::Rejected {
            source: Refused::Replayed,
            ..
        }) => return Err(Fail::from(&StateError::Replayed).with_connection(id)),
        Err(UpdateError::Rejected {
            source: Refused::Gone,
            ..
        }) => {
            return Err(Fail::new(
                StatusCode::NOT_FOUND,
                "connection_not_found",
                "the connection was deleted during the sign-in",
            )
            .with_connection(id));
        }
        Err(UpdateError::Secret(e)) => {
            tracing::error!(connection = id, error = %e, "could not store the consent");
            return Err(Fail::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_failed",
                "the sign-in worked but its result could not be stored; try again",
            )
            .with_connection(id));
        }
    }
    let Some(stored) = written else {
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_failed",
            "the sign-in result was not stored; try again",
        ));
    };
    tracing::info!(connection = id, provider = %stored.provider, generation = stored.generation, "consent stored");
    let times = ConnectionTimes {
        provider: oauth_provider(stored.provider),
        app_only: stored.auth == AuthKind::AppOnly,
        needs_consent: false,
        has_refresh_token: true,
        access_token_expires_at: stored.access_token_expires_at,
        refresh_token_issued_at: stored.refresh_token_issued_at,
        last_refreshed_at: stored.last_refreshed_at,
    };
    let info = SuccessInfo {
        connection: id.to_owned(),
        provider: oauth_provider(stored.provider),
        account: stored.account.clone(),
        access_token_expires_at: stored.access_token_expires_at,
        next_refresh_at: refresh_policy::next_refresh_at(&times, &refresh_config(state), now),
    };
    let mut resp = pages::success_page(&info, format);
    clear_cookies(&mut resp);
    Ok(resp)
}

/// `POST /callback`: SharePoint's add-in launch with a context token.
async fn callback_post(
    state: &State,
    access: &Access,
    req: &Request,
    format: Format,
) -> Result<Response<String>, Fail> {
    let body: &[u8] = req.body().as_ref();
    if body.len() > MAX_FORM_BODY {
        return Err(Fail::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the form is larger than 64 KiB",
        ));
    }
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|_| {
        Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_form",
            "the body is not an application/x-www-form-urlencoded form",
        )
    })?;
    let field = |name: &str| -> Result<Option<&str>, Fail> {
        let mut values = form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(Fail::new(
                StatusCode::BAD_REQUEST,
                "duplicate_parameter",
                format!("the form field {name} appears more than once"),
            ));
        }
        Ok(first.filter(|v| !v.trim().is_empty()))
    };
    let Some(raw_token) = ["SPAppToken", "AppContextToken", "AccessToken"]
        .iter()
        .map(|n| field(n))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .next()
    else {
        if field("access_token")?.is_some() || field("state")?.is_some() {
            return Err(token_flow_refused());
        }
        return Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "missing_context_token",
            "POST /callback expects SharePoint's SPAppToken form field",
        ));
    };
    let host_url = field("SPHostUrl")?
        .or(field("SPSiteUrl")?)
        .map(str::to_owned);
    let id = match query_value(req, "connection")
        .or(field("connection")?.map(str::to_owned))
        .or_else(|| state.config.default_connection.clone())
    {
        Some(id) => id,
        None => {
            return Err(Fail::new(
                StatusCode::BAD_REQUEST,
                "missing_connection",
                "name the connection: POST /callback?connection={id}",
            ));
        }
    };
    let id = connection_id(&id)?.to_owned();
    let current = access.connection(&id).await?.value;
    if current.provider != Provider::Acs || current.auth != AuthKind::Delegated {
        return Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "not_an_add_in_connection",
            "context tokens are only accepted for delegated ACS connections",
        )
        .with_connection(&id));
    }
    let app = access.app_credential(&id, &current).await?;
    let site = sharepoint_site(&current)
        .map_err(|e| misconfigured(&id, e))?
        .clone();
    if let Some(h) = &host_url {
        let same = Url::parse(h).ok().is_some_and(|u| {
            u.host_str() == site.host_str()
                && u.port_or_known_default() == site.port_or_known_default()
        });
        if !same {
            return Err(Fail::new(
                StatusCode::BAD_REQUEST,
                "host_mismatch",
                "SPHostUrl is not the connection's SharePoint site",
            )
            .with_connection(&id));
        }
    }
    let primary = app
        .client_secret
        .as_ref()
        .ok_or_else(|| misconfigured(&id, "client_secret missing"))?;
    let mut hosts: Vec<String> = state.lifecycle.allowed_hosts.clone();
    if let Some(h) = header_str(req, header::HOST.as_str()) {
        hosts.push(h.trim().to_ascii_lowercase());
    }
    if let Some(base) = &state.config.public_base_url {
        if let Some(h) = base.host_str() {
            hosts.push(match base.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            });
        }
    }
    let mut validator = acs::ContextTokenValidator::new(
        app.client_id.clone(),
        ClientSecret::new(primary.expose_secret().to_owned()),
        hosts,
    );
    if let Some(s) = &app.secondary_client_secret {
        validator =
            validator.with_secondary_secret(ClientSecret::new(s.expose_secret().to_owned()));
    }
    if let Some(r) = current.realm.as_deref().or(app.realm.as_deref()) {
        validator = validator.with_realm(acs::Realm::parse(r).map_err(|e| misconfigured(&id, e))?);
    }
    let now = (state.clock)();
    let ctx = validator.validate(raw_token, now).map_err(|e| match e {
        IdentityError::InvalidToken(reason) => Fail::new(
            StatusCode::UNAUTHORIZED,
            "context_token_invalid",
            format!("the SharePoint context token was rejected: {reason}"),
        )
        .with_connection(&id),
        other => misconfigured(&id, other),
    })?;
    let key = ReplayKey {
        id: format!("ctx:{}", hex_sha256(raw_token)),
        expires_at: ctx.expires_at.unix_timestamp(),
    };
    if current.consumed_states.contains(&key) {
        return Err(Fail::from(&StateError::Replayed).with_connection(&id));
    }
    let acs_app = acs::AcsApp {
        client_id: app.client_id.clone(),
        secret: ClientSecret::new(primary.expose_secret().to_owned()),
    };
    let policy = access.cache().retry;
    let token = acs::redeem_context_token(
        access.http(),
        access.endpoints(),
        &acs_app,
        &ctx,
        &site,
        &policy,
    )
    .await
    .map_err(|e| redeem_failure(&id, e))?;
    let refresh_token = token
        .refresh_token
        .as_ref()
        .map(|r| r.expose_secret().to_owned())
        .unwrap_or_else(|| ctx.refresh_token.expose_secret().to_owned());
    let c = Consented {
        tenant_id: Some(ctx.realm.as_str().to_owned()),
        realm: Some(ctx.realm.as_str().to_owned()),
        token,
        refresh_token: SecretString::from(refresh_token),
        resources: vec![],
        scopes: vec![],
        redirect_uri: None,
    };
    store_consent(state, access, &id, key, c, now, format).await
}

fn hex_sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
