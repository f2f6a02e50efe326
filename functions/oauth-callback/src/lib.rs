//! oauth-callback: starts and completes Microsoft sign-in and consent flows.
//!
//! Routes (API Gateway HTTP API), each a call into [`shared::signin`]:
//! - `GET /connect/{connection}?invite={link}`: with a valid operator-minted link (single use),
//!   302 to the provider's authorize URL with a signed `state` and an HttpOnly nonce cookie (JSON
//!   clients get `{"authorize_url"}` instead). Without one, the same 403 for every connection id.
//! - `GET /callback`: verifies state + cookie, redeems the code, stores the refresh token and
//!   records the attempt as used (a replay gets 409 `replayed`).
//! - `POST /callback`: SharePoint's add-in launch (`SPAppToken` form field).
//!
//! Every failure is one [`ApiError`] ([`api_error`] is the one mapping), shown as JSON or as an
//! HTML page by content negotiation. The Microsoft-account token (implicit) flow is refused.

use lambda_http::{
    Body, Request, RequestExt, Response,
    http::{Method, header},
    request::RequestContext,
};
use shared::{
    api::{ApiError, Kind},
    config::Config,
    oauth::{
        pages::{self, Format},
        redirect::{self, Callback, CallbackParams, RedirectSettings, RequestOrigin},
        state::{CookieSettings, Nonce, StateError},
    },
    signin::{
        self, Launch, Reason, SignInError,
        form::{LaunchForm, add_in_hosts},
    },
};

/// The time source; tests inject a fixed or shifted clock.
pub use shared::runtime::Clock;

/// Longest `POST /callback` body read.
pub use shared::signin::form::MAX_FORM_BODY;

/// What a warm container keeps between invocations.
pub type State = shared::runtime::Warm;

/// Builds the state once per cold start. The error text names the bad variable.
pub fn init() -> Result<State, String> {
    init_with(Config::from_env().map_err(|e| e.to_string())?)
}

/// Builds the state from an already-read configuration (sign-in settings from the environment).
pub fn init_with(config: Config) -> Result<State, String> {
    State::from_config(config)
}

/// Answers one API Gateway request. Never panics on input; bad input gets a 4xx page.
pub async fn handle(state: &Result<State, String>, req: Request) -> Response<Body> {
    let format = Format::negotiate(header_str(&req, header::ACCEPT.as_str()));
    let result = match state {
        Ok(s) => route(s, &req, format).await,
        Err(e) => {
            tracing::error!(error = %e, "configuration error");
            Err(ApiError::new(
                Kind::ConfigurationError,
                "the function is misconfigured; see its logs",
            ))
        }
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!(error = e.code(), message = %e.message, "request failed");
            } else {
                tracing::info!(
                    error = e.code(),
                    status = e.status().as_u16(),
                    "request refused"
                );
            }
            let mut resp = pages::error_page(&e, format);
            if req.uri().path() == "/callback" {
                clear_cookies(&mut resp);
            }
            resp
        }
    };
    resp.map(Body::from)
}

async fn route(state: &State, req: &Request, format: Format) -> Result<Response<String>, ApiError> {
    let path = req.uri().path().trim_end_matches('/');
    let access = || async {
        state.access().await.map_err(|e| {
            tracing::error!(error = %e, "cannot open the secret store");
            ApiError::new(
                Kind::Misconfigured,
                "the secret store cannot be opened; see the function's logs",
            )
        })
    };
    let done = |info| {
        let mut resp = pages::success_page(&info, format);
        clear_cookies(&mut resp);
        resp
    };
    match (req.method(), path) {
        (&Method::GET, p) if p.starts_with("/connect/") => {
            let id = &p["/connect/".len()..];
            if query_value(req, "response_type").as_deref() == Some("token") {
                return Err(api_error(Reason::TokenFlowRefused.into()));
            }
            let settings = RedirectSettings {
                public_base_url: state.config.public_base_url.clone(),
                allowed_hosts: state.lifecycle.allowed_hosts.clone(),
            };
            let redirect_uri = redirect::redirect_uri(&settings, &request_origin(req))
                .map_err(|e| api_error(e.into()))?;
            let invite = query_value(req, "invite");
            let started =
                signin::connect(state, &access().await?, id, invite.as_deref(), redirect_uri)
                    .await
                    .map_err(api_error)?;
            Ok(pages::connect_response(
                &started.authorize_url,
                &started.set_cookie,
                format,
            ))
        }
        (&Method::GET, "/callback") => {
            let access = access().await?;
            let (code, raw_state) = callback_code(req).map_err(api_error)?;
            let nonce = find_nonce(req).map_err(|e| api_error(e.into()))?;
            let info = signin::complete_code(state, &access, code, &raw_state, nonce)
                .await
                .map_err(api_error)?;
            Ok(done(info))
        }
        (&Method::POST, "/callback") => {
            let access = access().await?;
            let form = LaunchForm::parse(req.body().as_ref()).map_err(api_error)?;
            let connection = match query_value(req, "connection") {
                Some(c) => Some(c),
                None => form
                    .field("connection")
                    .map_err(api_error)?
                    .map(str::to_owned),
            }
            .or_else(|| state.config.default_connection.clone())
            .ok_or_else(|| bad("name the connection: POST /callback?connection={id}"))?;
            let launch = Launch {
                context_token: form.context_token().map_err(api_error)?,
                host_url: form.host_url().map_err(api_error)?,
                connection: &connection,
                hosts: add_in_hosts(state, header_str(req, header::HOST.as_str())),
            };
            let info = signin::launch(state, &access, launch)
                .await
                .map_err(api_error)?;
            Ok(done(info))
        }
        (_, p) if p.starts_with("/connect/") || p == "/callback" => Err(ApiError::new(
            Kind::MethodNotAllowed,
            "use GET /connect/{connection}, GET /callback or POST /callback",
        )),
        _ => Err(ApiError::new(Kind::NotFound, "no such route")),
    }
}

const MISCONFIGURED: &str =
    "the connection or its app registration is misconfigured; see the function's logs";

/// The one mapping from a sign-in failure to an answer. Internals are logged, never echoed.
pub fn api_error(e: SignInError) -> ApiError {
    use shared::access::AccessError as A;
    let api = match e.reason {
        Reason::BadInput(m) => ApiError::new(Kind::BadRequest, m),
        Reason::TooLarge(m) => ApiError::new(Kind::PayloadTooLarge, m),
        Reason::Redirect(r) => ApiError::new(Kind::BadRequest, r.to_string()),
        Reason::Callback(c) => ApiError::new(Kind::BadRequest, c.to_string()),
        Reason::State(s) => ApiError::new(state_kind(&s), s.to_string()),
        Reason::Provider(p) => shared::signin::error::provider_api_error(&p),
        r @ (Reason::TokenFlowRefused | Reason::AppOnly | Reason::NoServices) => {
            ApiError::new(Kind::BadRequest, r.to_string())
        }
        // An add-in launch is unauthenticated until its token verifies: every refusal before
        // that reads the same, so a caller learns nothing of the connection (why is logged).
        r @ (Reason::ContextTokenInvalid(_) | Reason::NotAnAddIn | Reason::HostMismatch) => {
            tracing::info!(reason = %r, "add-in launch refused");
            return ApiError::new(Kind::Unauthorized, LAUNCH_REFUSED);
        }
        r @ Reason::ConnectionChanged => ApiError::new(Kind::Conflict, r.to_string()),
        r @ Reason::AccountMismatch => ApiError::new(Kind::AccountMismatch, r.to_string()),
        // One answer whatever the connection: no `connection` detail either.
        r @ Reason::LinkRequired => return ApiError::new(Kind::Forbidden, r.to_string()),
        Reason::Access(a) => {
            let kind = match a.as_ref() {
                A::NotFound { .. } => Kind::ConnectionNotFound,
                A::NeedsConsent { .. } => Kind::NeedsConsent,
                A::Throttled { .. } => Kind::Throttled,
                A::Transient { .. } => Kind::Unavailable,
                A::Store { .. } if a.is_retryable() => Kind::Unavailable,
                A::Misconfigured { .. } | A::Store { .. } => Kind::Misconfigured,
            };
            let message = match a.as_ref() {
                A::NotFound { connection } => format!(
                    "there is no connection named {connection:?}; an operator must create it first"
                ),
                A::NeedsConsent { code, .. } => format!(
                    "the connection needs consent again ({code}); sign in at /connect/{{connection}}"
                ),
                A::Throttled { .. } | A::Transient { .. } | A::Store { .. }
                    if kind != Kind::Misconfigured =>
                {
                    "Microsoft or the secret store is busy; try again".into()
                }
                _ => {
                    tracing::error!(error = %a, "connection lookup failed");
                    MISCONFIGURED.into()
                }
            };
            ApiError::new(kind, message).with_retry_after(a.retry_after())
        }
        Reason::Misconfigured(m) => {
            tracing::error!(connection = ?e.connection, reason = %m, "misconfigured");
            ApiError::new(Kind::Misconfigured, MISCONFIGURED)
        }
        r @ Reason::CodeRejected(_) => {
            let mut api = ApiError::new(Kind::BadRequest, r.to_string());
            if let Reason::CodeRejected(Some(ms)) = &r {
                api = api.with_detail(
                    "microsoft_code",
                    ms.code.clone().unwrap_or_else(|| ms.error.clone()),
                );
            }
            api
        }
        r @ (Reason::Unavailable(_) | Reason::StoreUnavailable(_) | Reason::StoreFailed(_)) => {
            tracing::warn!(connection = ?e.connection, error = ?r, "sign-in could not finish");
            ApiError::new(Kind::Unavailable, r.to_string())
        }
        r @ Reason::NoRefreshToken => ApiError::new(Kind::BadGateway, r.to_string()),
        r @ Reason::ConnectionGone => ApiError::new(Kind::ConnectionNotFound, r.to_string()),
    };
    match e.connection {
        Some(c) => api.with_detail("connection", c),
        None => api,
    }
}

fn state_kind(e: &StateError) -> Kind {
    match e {
        StateError::Replayed => Kind::Replayed,
        StateError::CookieMismatch | StateError::WrongConnection { .. } => Kind::Forbidden,
        _ => Kind::BadRequest,
    }
}

const LAUNCH_REFUSED: &str = "the SharePoint launch could not be verified for this connection; open the add-in from SharePoint again";

fn bad(message: &str) -> ApiError {
    ApiError::new(Kind::BadRequest, message)
}

/// The code and state of `GET /callback`, or why there are none.
fn callback_code(req: &Request) -> Result<(shared::identity::AuthCode, String), SignInError> {
    let params = CallbackParams::parse(req.uri().query().unwrap_or(""))?;
    match params.classify()? {
        Callback::Error { error, .. } => {
            tracing::info!(error = %error.error, "provider redirected with an error");
            Err(Reason::Provider(Box::new(error)).into())
        }
        Callback::Empty => Err(Reason::TokenFlowRefused.into()),
        Callback::AdminConsent { .. } => Err(Reason::BadInput(
            "spbridge did not start an admin-consent flow; start the sign-in at /connect/{connection}".into(),
        )
        .into()),
        Callback::Code { code, state, .. } => Ok((code, state)),
    }
}

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
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
