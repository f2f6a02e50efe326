//! upload-ingest: the HTTP endpoint webhooks POST files to.
//!
//! This crate only translates between API Gateway (`lambda_http`) and
//! [`shared::ingest::pipeline`]; the behaviour lives there.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lambda_http::{Body, Request, RequestExt as _, Response};
use shared::access::Access;
use shared::api::{ApiError, Kind};
use shared::config::Config;
use shared::identity::TokenCache;
use shared::ingest::pipeline::{IngestRequest, IngestResponse, Pipeline, TokenProvider};
use tokio::sync::OnceCell;

/// What a warm container keeps between invocations.
pub struct State {
    /// Configuration read at cold start.
    pub config: Config,
    /// The shared HTTP client.
    pub http: reqwest::Client,
    tokens: Option<Arc<dyn TokenProvider>>,
    pipeline: OnceCell<Result<Pipeline, String>>,
}

impl State {
    /// A state whose pipeline is already built (tests: a moto store and emulator tokens).
    pub fn with_pipeline(config: Config, http: reqwest::Client, pipeline: Pipeline) -> Self {
        State {
            config,
            http,
            tokens: None,
            pipeline: OnceCell::new_with(Some(Ok(pipeline))),
        }
    }

    /// Uses `tokens` for access tokens instead of the default provider.
    pub fn with_tokens(mut self, tokens: Arc<dyn TokenProvider>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Builds the pipeline now (at cold start) instead of on the first request; the error names
    /// what is wrong.
    pub async fn warm(&self) -> Result<(), String> {
        self.pipeline()
            .await
            .as_ref()
            .map(|_| ())
            .map_err(Clone::clone)
    }

    /// The pipeline, built once (the secret store's client needs async set-up).
    async fn pipeline(&self) -> &Result<Pipeline, String> {
        self.pipeline
            .get_or_init(|| async {
                let store = shared::secrets::from_config(&self.config)
                    .await
                    .map_err(|e| e.to_string())?;
                let tokens = match &self.tokens {
                    Some(t) => t.clone(),
                    None => default_tokens(&self.config, &self.http, &store)?,
                };
                Pipeline::new(self.config.clone(), self.http.clone(), store, tokens)
            })
            .await
    }
}

/// The production token provider: [`Access`] over the warm container's token cache.
fn default_tokens(
    config: &Config,
    http: &reqwest::Client,
    store: &Arc<dyn shared::secrets::SecretStore>,
) -> Result<Arc<dyn TokenProvider>, String> {
    Ok(Arc::new(Access::new(
        http.clone(),
        config.endpoints.clone(),
        Arc::new(TokenCache::new(TOKEN_SKEW)),
        store.clone(),
        config.secrets.clone(),
    )))
}

/// Tokens are renewed this long before they expire, so an upload never starts with a token
/// that dies mid-way.
const TOKEN_SKEW: Duration = Duration::from_secs(300);

/// Builds the state once per cold start. The error text names the bad variable.
pub fn init() -> Result<State, String> {
    init_with(Config::from_env().map_err(|e| e.to_string())?)
}

/// Builds the state from an already-read configuration.
pub fn init_with(config: Config) -> Result<State, String> {
    let http = shared::http::build_client(&config.http).map_err(|e| e.to_string())?;
    Ok(State {
        config,
        http,
        tokens: None,
        pipeline: OnceCell::new(),
    })
}

/// Answers one API Gateway request.
pub async fn handle(state: &Result<State, String>, req: Request) -> Response<Body> {
    let state = match state {
        Ok(s) => s,
        Err(e) => return error(ApiError::new(Kind::ConfigurationError, e.as_str())),
    };
    let Some(connection) = route(&req) else {
        return error(ApiError::new(Kind::NotFound, "no such route"));
    };
    let connection = connection.as_deref();
    if req.method() != lambda_http::http::Method::POST {
        return error(ApiError::new(Kind::MethodNotAllowed, "use POST to upload"));
    }
    let pipeline = match state.pipeline().await {
        Ok(p) => p,
        Err(e) => return error(ApiError::new(Kind::ConfigurationError, e.as_str())),
    };
    let context = req.lambda_context_ref();
    let deadline = context.and_then(|c| instant_of(c.deadline(), SystemTime::now()));
    let request_id = context.map(|c| c.request_id.clone());
    let query = req.uri().query().map(str::to_owned);
    let body = match req.body() {
        Body::Empty => shared::upload::Bytes::new(),
        Body::Text(t) => shared::upload::Bytes::copy_from_slice(t.as_bytes()),
        Body::Binary(b) => shared::upload::Bytes::copy_from_slice(b),
        _ => shared::upload::Bytes::new(),
    };
    let answer = pipeline
        .handle(IngestRequest {
            connection,
            method: req.method(),
            headers: req.headers(),
            query: query.as_deref(),
            body,
            deadline,
            request_id: request_id.as_deref(),
        })
        .await;
    respond(answer)
}

/// `Some(None)` for `/upload`, `Some(Some(id))` for `/upload/{id}`, `None` for anything else.
/// API Gateway's `{connection}` path parameter wins; otherwise the path is read, allowing a stage
/// prefix (`/prod/upload/x`) in front.
fn route(req: &Request) -> Option<Option<String>> {
    let path = req.uri().path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = segments.iter().rposition(|s| *s == "upload")?;
    let from_path = match &segments[at + 1..] {
        [] => None,
        [id] => Some((*id).to_owned()),
        _ => return None,
    };
    // A stage prefix is one segment at most.
    if at > 1 {
        return None;
    }
    let param = req
        .path_parameters_ref()
        .and_then(|p| p.first("connection"))
        .map(str::to_owned);
    Some(param.or(from_path))
}

/// The Lambda deadline (wall clock) as a monotonic instant.
///
/// `None` when the deadline is implausible: `cargo lambda watch` sends the timeout (e.g. 600000 ms)
/// where Lambda sends an epoch time, which would otherwise read as long past and refuse every upload.
fn instant_of(deadline: SystemTime, now: SystemTime) -> Option<tokio::time::Instant> {
    const PLAUSIBLE_PAST: Duration = Duration::from_secs(24 * 3600);
    match deadline.duration_since(now) {
        Ok(left) => Some(tokio::time::Instant::now() + left),
        Err(e) if e.duration() <= PLAUSIBLE_PAST => Some(tokio::time::Instant::now()),
        Err(_) => None,
    }
}

fn respond(answer: IngestResponse) -> Response<Body> {
    let mut builder = Response::builder()
        .status(answer.status)
        .header("content-type", "application/json");
    if let Some(secs) = answer.retry_after {
        builder = builder.header("retry-after", secs.to_string());
    }
    if answer.replayed {
        builder = builder.header("idempotent-replayed", "true");
    }
    builder
        .body(Body::from(answer.body.to_string()))
        .unwrap_or_default()
}

fn error(e: ApiError) -> Response<Body> {
    e.to_response().map(Body::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_from_lambda_count_and_a_local_runner_timeout_is_ignored() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_327_200);
        let soon = instant_of(now + Duration::from_secs(20), now).unwrap();
        let left = soon - tokio::time::Instant::now();
        assert!(left > Duration::from_secs(19) && left <= Duration::from_secs(20));
        // A deadline just passed is still a deadline: answer 503 rather than start.
        assert!(instant_of(now - Duration::from_secs(2), now).is_some());
        // cargo lambda watch's 600000 ms reads as 1970: no deadline rather than "already over".
        let local = SystemTime::UNIX_EPOCH + Duration::from_millis(600_000);
        assert!(instant_of(local, now).is_none());
    }

    fn req(path: &str) -> Request {
        let mut r = Request::default();
        *r.uri_mut() = path.parse().unwrap();
        r
    }

    #[test]
    fn routes() {
        assert_eq!(route(&req("/upload")), Some(None));
        assert_eq!(route(&req("/upload/")), Some(None));
        assert_eq!(
            route(&req("/upload/contoso-docs")),
            Some(Some("contoso-docs".into()))
        );
        assert_eq!(route(&req("/prod/upload/x")), Some(Some("x".into())));
        assert_eq!(route(&req("/upload/a/b")), None);
        assert_eq!(route(&req("/a/b/upload/x")), None);
        assert_eq!(route(&req("/connect/x")), None);
        assert_eq!(route(&req("/")), None);
    }

    #[tokio::test]
    async fn a_configuration_error_is_a_500_naming_it() {
        let state: Result<State, String> = Err("SPBRIDGE_CLOUD is invalid".into());
        let resp = handle(&state, req("/upload")).await;
        assert_eq!(resp.status(), 500);
        let Body::Text(t) = resp.body() else {
            panic!("JSON text body")
        };
        assert!(t.contains("SPBRIDGE_CLOUD"));
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        assert_eq!(v["error"], "configuration_error");
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
}
