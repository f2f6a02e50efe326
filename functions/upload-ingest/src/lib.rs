//! upload-ingest: the HTTP endpoint webhooks POST files to, and where senders read a job.
//!
//! `POST /upload[/{connection}]` answers 202 with the job; `GET /uploads/{job}?token=` shows it.
//! `POST /uploads/{connection}/sessions` opens a direct upload session (presigned S3 URLs) and
//! `POST /uploads/{connection}/sessions/{session}/complete` queues its job.
//! This crate only translates between API Gateway (`lambda_http`) and
//! [`shared::ingest::pipeline::Receiver`]; the behaviour lives there.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lambda_http::{Body, Request, RequestExt as _, Response};
use shared::api::{ApiError, Kind};
use shared::config::Config;
use shared::ingest::pipeline::{Answer, IngestRequest, Receiver};
use shared::jobs::JobsConfig;

/// What a warm container keeps between invocations.
pub struct State {
    receiver: Receiver,
    /// `SPBRIDGE_INGEST_BASE_URL`: the public URL of this API (status URLs start with it);
    /// unset, it is read from the request's `Host` and stage.
    base_url: Option<String>,
}

impl State {
    /// A state over a receiver built elsewhere (tests).
    pub fn new(receiver: Receiver, base_url: Option<String>) -> Self {
        State { receiver, base_url }
    }

    /// The receiver.
    pub fn receiver(&self) -> &Receiver {
        &self.receiver
    }
}

/// Builds the state once per cold start: configuration, secret store, job table, queue and
/// staging bucket. The error text names what is wrong.
pub async fn init() -> Result<State, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let jobs = JobsConfig::from_env()?;
    let sdk = aws_config::load_from_env().await;
    let base_url = std::env::var("SPBRIDGE_INGEST_BASE_URL")
        .ok()
        .filter(|v| !v.is_empty());
    init_with(config, &jobs, &sdk, base_url).await
}

/// Builds the state from read settings and an SDK configuration.
pub async fn init_with(
    config: Config,
    jobs: &JobsConfig,
    sdk: &aws_config::SdkConfig,
    base_url: Option<String>,
) -> Result<State, String> {
    let store = shared::secrets::from_config_with(&config, Some(sdk))
        .await
        .map_err(|e| e.to_string())?;
    let (table, queue, staging) = jobs.connect(sdk);
    let receiver = Receiver::new(
        config,
        store,
        Arc::new(table),
        Arc::new(queue),
        Arc::new(staging),
        jobs.retention,
    );
    Ok(State::new(receiver, base_url))
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `/upload` (`None`) or `/upload/{connection}`; `prefix` is a stage in front.
    Upload {
        connection: Option<String>,
        prefix: String,
    },
    /// `/uploads/{job}`.
    Status { job: String },
    /// `/uploads/{connection}/sessions`.
    CreateSession { connection: String, prefix: String },
    /// `/uploads/{connection}/sessions/{session}/complete`.
    CompleteSession {
        connection: String,
        session: String,
        prefix: String,
    },
}

/// Answers one API Gateway request.
pub async fn handle(state: &Result<State, String>, mut req: Request) -> Response<Body> {
    let state = match state {
        Ok(s) => s,
        Err(e) => return error(ApiError::new(Kind::ConfigurationError, e.as_str())),
    };
    let method = req.method().clone();
    match (route(&req), method.as_str()) {
        (None, _) => error(ApiError::new(Kind::NotFound, "no such route")),
        (Some(Route::Status { job }), "GET" | "HEAD") => {
            let token = query_param(req.uri().query(), "token");
            respond(state.receiver.status(&job, token.as_deref()).await)
        }
        (Some(Route::Status { .. }), _) => error(ApiError::new(
            Kind::MethodNotAllowed,
            "use GET to read an upload job",
        )),
        (Some(Route::Upload { .. }), m) if m != "POST" && m != "PUT" => {
            error(ApiError::new(Kind::MethodNotAllowed, "use POST to upload"))
        }
        (Some(Route::CreateSession { .. } | Route::CompleteSession { .. }), m) if m != "POST" => {
            error(ApiError::new(
                Kind::MethodNotAllowed,
                "use POST for upload sessions",
            ))
        }
        (Some(Route::Upload { connection, prefix }), _) => {
            let incoming = Incoming::read(state, &mut req, &prefix);
            let r = incoming.request(&req, connection.as_deref());
            respond(state.receiver.accept(r).await)
        }
        (Some(Route::CreateSession { connection, prefix }), _) => {
            let incoming = Incoming::read(state, &mut req, &prefix);
            let r = incoming.request(&req, Some(&connection));
            respond(state.receiver.create_session(r).await)
        }
        (
            Some(Route::CompleteSession {
                connection,
                session,
                prefix,
            }),
            _,
        ) => {
            let incoming = Incoming::read(state, &mut req, &prefix);
            let r = incoming.request(&req, Some(&connection));
            respond(state.receiver.complete_session(r, &session).await)
        }
    }
}

/// What a POST carries besides its headers, owned for the [`IngestRequest`] borrowing it.
struct Incoming {
    base: Option<String>,
    body: shared::upload::Bytes,
    query: Option<String>,
    deadline: Option<tokio::time::Instant>,
    request_id: Option<String>,
}

impl Incoming {
    fn read(state: &State, req: &mut Request, prefix: &str) -> Incoming {
        // Moved out, not copied: the body can be megabytes.
        let body = match std::mem::take(req.body_mut()) {
            Body::Text(t) => shared::upload::Bytes::from(t.into_bytes()),
            Body::Binary(b) => shared::upload::Bytes::from(b),
            _ => shared::upload::Bytes::new(),
        };
        let context = req.lambda_context_ref();
        Incoming {
            base: state
                .base_url
                .clone()
                .or_else(|| base_from_host(req, prefix)),
            body,
            query: req.uri().query().map(str::to_owned),
            deadline: context.and_then(|c| instant_of(c.deadline(), SystemTime::now())),
            request_id: context.map(|c| c.request_id.clone()),
        }
    }

    fn request<'a>(&'a self, req: &'a Request, connection: Option<&'a str>) -> IngestRequest<'a> {
        IngestRequest {
            connection,
            method: req.method(),
            headers: req.headers(),
            query: self.query.as_deref(),
            body: self.body.clone(),
            deadline: self.deadline,
            request_id: self.request_id.as_deref(),
            base_url: self.base.as_deref(),
        }
    }
}

/// Reads the route; API Gateway's `{connection}` path parameter wins over the path. A stage
/// prefix (`/prod/upload/x`) of one segment is allowed.
fn route(req: &Request) -> Option<Route> {
    let path = req.uri().path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = segments
        .iter()
        .rposition(|s| *s == "upload" || *s == "uploads")?;
    // `/uploads/{connection}/sessions…` holds its keyword first (a connection may be called
    // `upload`); the stage prefix is one segment at most.
    let at = match segments.iter().position(|s| *s == "uploads") {
        Some(first @ 0..=1) if segments.get(first + 2) == Some(&"sessions") => first,
        _ => at,
    };
    if at > 1 {
        return None;
    }
    let prefix: String = segments[..at].iter().map(|s| format!("/{s}")).collect();
    let param = |name: &str, from_path: &str| {
        req.path_parameters_ref()
            .and_then(|p| p.first(name))
            .unwrap_or(from_path)
            .to_owned()
    };
    match (segments[at], &segments[at + 1..]) {
        ("uploads", [job]) => Some(Route::Status {
            job: (*job).to_owned(),
        }),
        ("uploads", [connection, "sessions"]) => Some(Route::CreateSession {
            connection: param("connection", connection),
            prefix,
        }),
        ("uploads", [connection, "sessions", session, "complete"]) => {
            Some(Route::CompleteSession {
                connection: param("connection", connection),
                session: param("session", session),
                prefix,
            })
        }
        ("upload", rest) => {
            let from_path = match rest {
                [] => None,
                [id] => Some((*id).to_owned()),
                _ => return None,
            };
            let param = req
                .path_parameters_ref()
                .and_then(|p| p.first("connection"))
                .map(str::to_owned);
            Some(Route::Upload {
                connection: param.or(from_path),
                prefix,
            })
        }
        _ => None,
    }
}

/// `scheme://host{prefix}` from the request, for the status URL.
fn base_from_host(req: &Request, prefix: &str) -> Option<String> {
    let host = req.headers().get("host")?.to_str().ok()?;
    let scheme = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("https");
    Some(format!("{scheme}://{host}{prefix}"))
}

/// One query parameter, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The Lambda deadline (wall clock) as a monotonic instant.
///
/// `None` when the deadline is implausible: `cargo lambda watch` sends the timeout (e.g. 600000 ms)
/// where Lambda sends an epoch time, which would otherwise read as long past.
fn instant_of(deadline: SystemTime, now: SystemTime) -> Option<tokio::time::Instant> {
    const PLAUSIBLE_PAST: Duration = Duration::from_secs(24 * 3600);
    match deadline.duration_since(now) {
        Ok(left) => Some(tokio::time::Instant::now() + left),
        Err(e) if e.duration() <= PLAUSIBLE_PAST => Some(tokio::time::Instant::now()),
        Err(_) => None,
    }
}

fn respond(answer: Answer) -> Response<Body> {
    let mut builder = Response::builder()
        .status(answer.status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store");
    for (name, value) in &answer.headers {
        builder = builder.header(*name, value.as_str());
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
        assert!(instant_of(now - Duration::from_secs(2), now).is_some());
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
        let up = |c: Option<&str>, p: &str| {
            Some(Route::Upload {
                connection: c.map(str::to_owned),
                prefix: p.into(),
            })
        };
        assert_eq!(route(&req("/upload")), up(None, ""));
        assert_eq!(route(&req("/upload/")), up(None, ""));
        assert_eq!(
            route(&req("/upload/contoso-docs")),
            up(Some("contoso-docs"), "")
        );
        assert_eq!(route(&req("/prod/upload/x")), up(Some("x"), "/prod"));
        assert_eq!(
            route(&req("/prod/uploads/abc")),
            Some(Route::Status { job: "abc".into() })
        );
        assert_eq!(route(&req("/uploads")), None);
        assert_eq!(route(&req("/upload/a/b")), None);
        assert_eq!(route(&req("/a/b/upload/x")), None);
        assert_eq!(route(&req("/connect/x")), None);
        let create = |c: &str, p: &str| {
            Some(Route::CreateSession {
                connection: c.into(),
                prefix: p.into(),
            })
        };
        assert_eq!(route(&req("/uploads/docs/sessions")), create("docs", ""));
        assert_eq!(
            route(&req("/prod/uploads/docs/sessions")),
            create("docs", "/prod")
        );
        assert_eq!(
            route(&req("/uploads/upload/sessions")),
            create("upload", "")
        );
        assert_eq!(
            route(&req("/uploads/docs/sessions/abc/complete")),
            Some(Route::CompleteSession {
                connection: "docs".into(),
                session: "abc".into(),
                prefix: "".into()
            })
        );
        assert_eq!(route(&req("/uploads/docs/sessions/abc")), None);
        assert_eq!(route(&req("/uploads/docs/other")), None);
        assert_eq!(route(&req("/")), None);
        assert_eq!(
            query_param(Some("a=1&token=x%2By"), "token").as_deref(),
            Some("x+y")
        );
    }

    #[tokio::test]
    async fn a_configuration_error_is_a_500_naming_it() {
        let state: Result<State, String> = Err("SPBRIDGE_JOBS_TABLE is not set".into());
        let resp = handle(&state, req("/upload")).await;
        assert_eq!(resp.status(), 500);
        let Body::Text(t) = resp.body() else {
            panic!("JSON text body")
        };
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        assert_eq!(v["error"], "configuration_error");
        assert!(t.contains("SPBRIDGE_JOBS_TABLE"));
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
}
