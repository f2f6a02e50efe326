//! One upload request from start to answer: connection → sender check → idempotency claim →
//! body parsing → name and path rules → upload → answer.
//!
//! The function crate only converts between `lambda_http` and [`IngestRequest`] /
//! [`IngestResponse`]; everything else is here so it can be tested without Lambda. Tokens come
//! from a [`TokenProvider`] (the lifecycle's access layer in production, emulator tokens in
//! tests); the clock is injectable so recorded events verify at their own timestamp.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Method};
use secrecy::SecretString;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;
use url::Url;

use super::idempotency::{Claim, ClaimToken, Idempotency, StoredResponse, body_digest};
use super::sender::{ReplayKey, Sender};
use super::{
    ConflictMode, Content, IncomingFile, IngestError, Limits, RawRequest, parse_request,
    server_relative_path,
};
use crate::access::{Access, AccessError};
use crate::api::{ApiError, Kind};
use crate::config::Config;
use crate::http::Next;
use crate::secrets::schema::{self, AuthKind, ConnectionSecret, ConnectionStatus, Target};
use crate::secrets::{SecretError, SecretStore};
use crate::upload::doctor::{self, Diagnosis, Service};
use crate::upload::graph::{DriveRef, GraphClient, GraphOptions};
use crate::upload::sharepoint::{SharePointClient, SharePointOptions, SharePointTarget};
use crate::upload::{
    BearerSource, ConflictBehavior, ConflictOutcome, FieldValue, RetryPolicy, UploadError,
    UploadOutcome, UploadRequest, UploadSource,
};

/// Time kept back from the Lambda deadline to write the answer and the ledger.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(3);
/// Retry-After given when the Lambda would time out before Microsoft lets us in.
pub const DEADLINE_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Where uploads get a connection's access token.
///
/// Production: [`crate::access::Access`] (app-only or delegated, persisting rotated refresh
/// tokens). `force_refresh` asks for a new token after a 401.
pub trait TokenProvider: Send + Sync {
    /// The access token for `connection`'s upload target.
    fn bearer<'a>(
        &'a self,
        connection: &'a str,
        force_refresh: bool,
    ) -> BoxFuture<'a, Result<SecretString, TokenError>>;
}

/// Why no token could be had, in the terms the answer needs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// A person must sign in or consent again (424).
    #[error("{0}")]
    NeedsConsent(String),
    /// Microsoft throttled the token request (503 with Retry-After).
    #[error("{message}")]
    Throttled {
        /// Server-requested wait.
        retry_after: Option<Duration>,
        /// What failed.
        message: String,
    },
    /// A network fault or Microsoft server error outlasted the retries (502).
    #[error("{0}")]
    Transient(String),
    /// The connection or app registration is wrong; an operator must fix it (500).
    #[error("{0}")]
    Misconfigured(String),
}

impl From<AccessError> for TokenError {
    fn from(e: AccessError) -> Self {
        let message = e.to_string();
        match e {
            AccessError::NeedsConsent { .. } => TokenError::NeedsConsent(message),
            AccessError::Throttled { retry_after, .. } => TokenError::Throttled {
                retry_after,
                message,
            },
            AccessError::Transient { .. } => TokenError::Transient(message),
            AccessError::Store { .. } if e.is_retryable() => TokenError::Transient(message),
            AccessError::NotFound { .. }
            | AccessError::Misconfigured { .. }
            | AccessError::Store { .. } => TokenError::Misconfigured(message),
        }
    }
}

impl TokenProvider for Access {
    fn bearer<'a>(
        &'a self,
        connection: &'a str,
        force_refresh: bool,
    ) -> BoxFuture<'a, Result<SecretString, TokenError>> {
        Box::pin(async move {
            Access::bearer(self, connection, force_refresh)
                .await
                .map(|b| b.token)
                .map_err(TokenError::from)
        })
    }
}

/// The current time; tests pin it to a recorded event's timestamp.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// One request as the function received it (API Gateway base64 already decoded).
#[derive(Debug)]
pub struct IngestRequest<'a> {
    /// `{connection}` from the path, or `None` for `POST /upload`.
    pub connection: Option<&'a str>,
    /// HTTP method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    /// The body bytes.
    pub body: Bytes,
    /// When the Lambda invocation times out.
    pub deadline: Option<Instant>,
    /// API Gateway's request id, for the log.
    pub request_id: Option<&'a str>,
}

/// The answer: status, JSON body and optional `Retry-After` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
    /// True when this is a remembered answer to a repeated `webhook-id`.
    pub replayed: bool,
}

/// Why a request failed; its [`ApiError`] is the HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The request was refused before uploading (sender, body, names, sizes).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The connection named in the path does not exist or its name is not valid.
    #[error("unknown connection {0:?}")]
    UnknownConnection(String),
    /// `POST /upload` without a default connection configured.
    #[error("no connection named in the path and no default connection configured")]
    NoDefaultConnection,
    /// The connection needs a user to sign in again.
    #[error("connection {connection:?} needs consent again ({code}); run the connect flow")]
    NeedsConsent {
        /// The connection.
        connection: String,
        /// Microsoft's code behind it.
        code: String,
    },
    /// Another delivery of this `webhook-id` is being uploaded right now.
    #[error("this webhook-id is being processed by another request; retry later")]
    InFlight {
        /// Suggested wait.
        retry_after: Duration,
    },
    /// This `webhook-id` was used before for a different body.
    #[error("this webhook-id was already used for a different body")]
    IdReused,
    /// A GitHub-style body seen before under another or no `X-GitHub-Delivery`.
    #[error(
        "this body was already delivered within the idempotency window under another or no \
         X-GitHub-Delivery; GitHub-style signatures carry no timestamp, so a repeat is refused"
    )]
    Duplicate,
    /// `source_url` points somewhere it must not (a private, link-local or metadata address).
    #[error("source_url is not allowed: {0}")]
    SourceForbidden(String),
    /// `source_url` announced or delivered more than allowed.
    #[error("the file at source_url is larger than the limit of {limit} bytes")]
    SourceTooLarge {
        /// The limit.
        limit: u64,
    },
    /// `source_url` answered with a client error or a redirect.
    #[error("source_url: {0}")]
    SourceRefused(String),
    /// The upload failed; `diagnosis` explains a refused token.
    #[error("{error}")]
    Upload {
        /// The upload client's error.
        error: UploadError,
        /// Why the token was refused, for 401/403.
        diagnosis: Option<Box<Diagnosis>>,
    },
    /// The Lambda would time out before the upload could finish.
    #[error("the upload could not finish before the function's deadline; retry later")]
    Deadline,
    /// Some files of a multi-file request landed before one failed.
    #[error("{source} ({} earlier file(s) were stored; see uploaded)", uploaded.len())]
    Partial {
        /// The answers for the files that landed.
        uploaded: Vec<Value>,
        /// Why the next file failed.
        source: Box<PipelineError>,
    },
    /// The secret store failed.
    #[error("secret store: {0}")]
    Store(#[from] SecretError),
    /// The deployment is misconfigured (a secret is missing or invalid).
    #[error("configuration error: {0}")]
    Config(String),
}

impl PipelineError {
    /// Whether the request's own content decided the answer (400, 409, 413, 415, 422), so a
    /// repeated delivery gets the same answer from the idempotency ledger. Everything else
    /// (throttling, outages, missing consent or configuration, a missing library) releases the
    /// claim so the sender's retry runs again.
    pub fn is_final(&self) -> bool {
        if let PipelineError::Partial { source, .. } = self {
            return source.is_final();
        }
        matches!(
            ApiError::from(self).status().as_u16(),
            400 | 409 | 413 | 415 | 422
        ) && !matches!(self, PipelineError::InFlight { .. })
    }

    /// The answer to give.
    fn response(&self) -> IngestResponse {
        let api = ApiError::from(self);
        IngestResponse {
            status: api.status().as_u16(),
            retry_after: api.retry_after_secs(),
            body: api.to_json(),
            replayed: false,
        }
    }
}

impl From<&PipelineError> for ApiError {
    fn from(e: &PipelineError) -> Self {
        let message = e.to_string();
        match e {
            PipelineError::Partial { source, uploaded } => {
                let mut api = ApiError::from(source.as_ref());
                api.message = message;
                api.with_detail("uploaded", Value::Array(uploaded.clone()))
            }
            PipelineError::Ingest(e) => ApiError::from(e),
            PipelineError::Upload { error, diagnosis } => {
                let mut api = ApiError::from(error);
                if let Some(d) = diagnosis {
                    api.message = format!("{error}: {}", d.explanation);
                    api = api
                        .with_detail("diagnosis", serde_json::to_value(d).unwrap_or(Value::Null));
                }
                api
            }
            PipelineError::UnknownConnection(_) => ApiError::new(Kind::ConnectionNotFound, message),
            // The route exists; the deployment lacks SPBRIDGE_DEFAULT_CONNECTION.
            PipelineError::NoDefaultConnection | PipelineError::Config(_) => {
                ApiError::new(Kind::ConfigurationError, message)
            }
            PipelineError::NeedsConsent { code, .. } => ApiError::new(Kind::NeedsConsent, message)
                .with_detail("microsoft_code", code.clone()),
            PipelineError::InFlight { retry_after } => {
                ApiError::new(Kind::InProgress, message).with_retry_after(Some(*retry_after))
            }
            PipelineError::IdReused | PipelineError::Duplicate => {
                ApiError::new(Kind::Replayed, message)
            }
            PipelineError::SourceForbidden(_) | PipelineError::SourceRefused(_) => {
                ApiError::new(Kind::BadRequest, message)
            }
            PipelineError::SourceTooLarge { .. } => ApiError::new(Kind::PayloadTooLarge, message),
            PipelineError::Deadline => ApiError::new(Kind::Unavailable, message)
                .with_retry_after(Some(DEADLINE_RETRY_AFTER)),
            PipelineError::Store(SecretError::Throttled { retry_after, .. }) => ApiError::new(
                Kind::Throttled,
                "the secret store is throttling; retry later",
            )
            .with_retry_after(Some(retry_after.unwrap_or(Duration::from_secs(1)))),
            // The store's text names secrets and ARNs: it goes to the log only.
            PipelineError::Store(e) => e.to_api_error(),
        }
    }
}

/// Everything a warm container keeps: clients, store, token provider, clock.
pub struct Pipeline {
    config: Config,
    http: reqwest::Client,
    source_http: reqwest::Client,
    store: Arc<dyn SecretStore>,
    tokens: Arc<dyn TokenProvider>,
    clock: Clock,
    limits: Limits,
    retry: RetryPolicy,
}

impl Pipeline {
    /// Builds the pipeline. `http` is the shared client (Microsoft calls); a second client for
    /// `source_url` is built here with the SSRF-guarding resolver and no total timeout (a large
    /// download streams for minutes; a read timeout still ends a stalled one).
    pub fn new(
        config: Config,
        http: reqwest::Client,
        store: Arc<dyn SecretStore>,
        tokens: Arc<dyn TokenProvider>,
    ) -> Result<Self, String> {
        let source_http = source_client(&config)?;
        Ok(Pipeline {
            config,
            http,
            source_http,
            store,
            tokens,
            clock: system_clock(),
            limits: Limits::default(),
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces the clock (tests pin it to an event's timestamp).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the body limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Replaces the retry policy of Microsoft calls.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The secret store.
    pub fn store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Answers one request. Never panics on input; every refusal is a 4xx naming the problem.
    pub async fn handle(&self, req: IngestRequest<'_>) -> IngestResponse {
        match self.run(&req).await {
            Ok(r) => r,
            Err(e) => {
                let api = ApiError::from(&e);
                let (status, code) = (api.status().as_u16(), api.code());
                if status >= 500 {
                    tracing::warn!(status, error = code, message = %e, request_id = req.request_id, "upload refused");
                } else {
                    tracing::info!(status, error = code, message = %e, request_id = req.request_id, "upload refused");
                }
                e.response()
            }
        }
    }

    async fn run(&self, req: &IngestRequest<'_>) -> Result<IngestResponse, PipelineError> {
        let now = (self.clock)();
        let connection = match req.connection {
            Some(c) => c.to_owned(),
            None => self
                .config
                .default_connection
                .clone()
                .ok_or(PipelineError::NoDefaultConnection)?,
        };
        // The sender secret alone decides who may send; an unknown connection refuses like a
        // wrong signature, so only senders that sign correctly learn what exists.
        let sender = Sender::load(self.store.as_ref(), &self.config, &connection)
            .await
            .map_err(PipelineError::Store)?;
        let verified = sender
            .verify(req.headers, &req.body, now)
            .map_err(IngestError::from)?;
        let conn = self.load_connection(&connection).await?;
        if conn.status == ConnectionStatus::NeedsConsent {
            return Err(PipelineError::NeedsConsent {
                connection,
                code: conn.status_code.clone().unwrap_or_else(|| "unknown".into()),
            });
        }

        let idem = Idempotency::new(
            self.store.as_ref(),
            &self.config.secrets,
            self.config.ingest.idempotency_window,
        );
        let claim = match sender.replay_key(&verified, &req.body) {
            Some(key) => {
                let claimed = match &key {
                    ReplayKey::WebhookId(id) => {
                        idem.claim(&connection, id, &body_digest(&req.body), now)
                            .await
                    }
                    ReplayKey::Body { sha256, delivery } => {
                        idem.claim_body(&connection, sha256, delivery.as_deref(), now)
                            .await
                    }
                };
                match claimed.map_err(|e| match e {
                    super::idempotency::IdempotencyError::Store(s) => PipelineError::Store(s),
                    other => PipelineError::Config(other.to_string()),
                })? {
                    Claim::Claimed(t) => Some(t),
                    Claim::Replay(r) => {
                        tracing::info!(
                            connection,
                            key = ?key,
                            status = r.status,
                            "repeated delivery answered from the ledger"
                        );
                        return Ok(IngestResponse {
                            status: r.status,
                            body: r.body,
                            retry_after: None,
                            replayed: true,
                        });
                    }
                    Claim::InFlight { retry_after } => {
                        return Err(PipelineError::InFlight { retry_after });
                    }
                    Claim::Mismatch => return Err(PipelineError::IdReused),
                    Claim::Duplicate => return Err(PipelineError::Duplicate),
                }
            }
            None => None,
        };

        let result = self.upload_all(req, &connection, &conn, &sender).await;
        self.settle(&idem, claim.as_ref(), &result).await;
        result
    }

    /// Records a success in the ledger, or releases the claim so a retry uploads again.
    async fn settle(
        &self,
        idem: &Idempotency<'_>,
        claim: Option<&ClaimToken>,
        result: &Result<IngestResponse, PipelineError>,
    ) {
        let Some(token) = claim else { return };
        let remembered = match result {
            Ok(r) => Some(StoredResponse {
                status: r.status,
                body: r.body.clone(),
            }),
            // The request itself decided these; the same delivery would get them again.
            Err(e) if e.is_final() => {
                let answer = e.response();
                Some(StoredResponse {
                    status: answer.status,
                    body: answer.body,
                })
            }
            // Transient, or fixable by an operator: the sender's retry must run again.
            Err(_) => None,
        };
        let outcome = match remembered {
            Some(r) => idem.complete(token, r, (self.clock)()).await,
            None => idem.release(token).await,
        };
        if let Err(e) = outcome {
            // The file state is already decided; a stale claim expires on its own.
            tracing::warn!(error = %e, "could not update the idempotency ledger");
        }
    }

    async fn load_connection(&self, id: &str) -> Result<ConnectionSecret, PipelineError> {
        if !super::sender::valid_connection_id(id) {
            return Err(PipelineError::UnknownConnection(
                id.chars().take(64).collect(),
            ));
        }
        match schema::connection(self.store.as_ref(), &self.config.secrets, id).await {
            Ok(c) => Ok(c.value),
            Err(SecretError::NotFound { .. }) => Err(PipelineError::UnknownConnection(id.into())),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload_all(
        &self,
        req: &IngestRequest<'_>,
        connection: &str,
        conn: &ConnectionSecret,
        sender: &Sender,
    ) -> Result<IngestResponse, PipelineError> {
        let limits = sender.limits(self.limits);
        let names = sender.name_policy();
        let files = parse_request(
            RawRequest {
                method: req.method,
                headers: req.headers,
                query: req.query,
                body: req.body.clone(),
            },
            &limits,
            &names,
        )
        .await?;
        let dest = Destination::of(conn)?;
        // Check every file's path before the first byte moves, so a bad second file does not
        // leave the first one behind.
        let mut planned = Vec::with_capacity(files.len());
        for file in files {
            let full = server_relative_path(&dest.base_path(), file.folder.as_ref(), &file.name)
                .map_err(|e| IngestError::InvalidName {
                    field: "path".into(),
                    source: e,
                })?;
            if !file.metadata.is_empty() && matches!(dest, Destination::Drive { .. }) {
                return Err(IngestError::BadField {
                    field: "metadata".into(),
                    reason: "metadata fields can only be set on a SharePoint library target".into(),
                }
                .into());
            }
            planned.push((file, full));
        }
        let deadline = req
            .deadline
            .map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(d));
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(PipelineError::Deadline);
        }
        let max_source = sender
            .options()
            .max_file_bytes
            .map_or(self.config.ingest.max_source_bytes, |m| {
                m.min(self.config.ingest.max_source_bytes)
            });
        let mut answers = Vec::with_capacity(planned.len());
        for (file, full) in planned {
            let started = Instant::now();
            let outcome = self
                .upload_one(connection, &dest, &file, deadline, max_source)
                .await;
            match outcome {
                Ok(o) => {
                    tracing::info!(
                        connection,
                        size = o.size,
                        path = %o.path,
                        duration_ms = started.elapsed().as_millis() as u64,
                        chunks = o.chunks,
                        retries = o.retries,
                        conflict = conflict_name(&o.conflict_outcome),
                        request_id = req.request_id,
                        "upload"
                    );
                    answers.push(outcome_json(&o));
                }
                Err(e) => {
                    tracing::warn!(
                        connection,
                        path = %full,
                        duration_ms = started.elapsed().as_millis() as u64,
                        error = ApiError::from(&e).code(),
                        request_id = req.request_id,
                        "upload failed"
                    );
                    if answers.is_empty() {
                        return Err(e);
                    }
                    return Err(PipelineError::Partial {
                        uploaded: answers,
                        source: Box::new(e),
                    });
                }
            }
        }
        let body = if answers.len() == 1 {
            answers.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(answers)
        };
        Ok(IngestResponse {
            status: 201,
            body,
            retry_after: None,
            replayed: false,
        })
    }

    async fn upload_one(
        &self,
        connection: &str,
        dest: &Destination,
        file: &IncomingFile,
        deadline: Option<Instant>,
        max_source: u64,
    ) -> Result<UploadOutcome, PipelineError> {
        let (source, overflow) = match &file.content {
            Content::Bytes(b) => (UploadSource::from_bytes(b.clone()), None),
            Content::SourceUrl(url) => {
                let (s, flag) = self.fetch_source(url, max_source, deadline).await?;
                (s, Some(flag))
            }
        };
        let mut folder = dest.base_folder().to_owned();
        if let Some(sub) = &file.folder {
            if !folder.is_empty() {
                folder.push('/');
            }
            folder.push_str(sub.as_str());
        }
        let request = UploadRequest {
            folder,
            file_name: file.name.as_str().to_owned(),
            conflict: match file.conflict {
                ConflictMode::Fail => ConflictBehavior::Fail,
                ConflictMode::Replace => ConflictBehavior::Replace,
                ConflictMode::Rename => ConflictBehavior::Rename,
            },
            fields: file
                .metadata
                .iter()
                .map(|(k, v)| FieldValue {
                    name: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            deadline,
        };
        let bearer = Arc::new(ConnectionBearer::new(self.tokens.clone(), connection));
        let result = match dest {
            Destination::SharePoint { target, .. } => {
                let client = SharePointClient::new(
                    self.http.clone(),
                    bearer.clone(),
                    SharePointOptions {
                        chunk_size: self.config.ingest.chunk_bytes,
                        retry: self.retry.clone(),
                    },
                );
                client.upload(target, &request, source).await
            }
            Destination::Drive { drive } => {
                let client = GraphClient::new(
                    self.http.clone(),
                    self.config.endpoints.graph.clone(),
                    bearer.clone(),
                    GraphOptions {
                        chunk_size: self.config.ingest.chunk_bytes,
                        retry: self.retry.clone(),
                    },
                );
                client.upload(drive, &request, source).await
            }
        };
        result.map_err(|error| {
            if overflow.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
                return PipelineError::SourceTooLarge { limit: max_source };
            }
            if let Some(reason) = bearer.misconfigured() {
                return PipelineError::Config(reason);
            }
            if matches!(error, UploadError::Throttled { .. })
                && deadline.is_some_and(|d| d <= Instant::now() + DEADLINE_MARGIN)
            {
                tracing::warn!(connection, "answering 503: the function's deadline is near");
            }
            let diagnosis = match &error {
                UploadError::Unauthorized { diagnostics, .. }
                | UploadError::Forbidden { diagnostics, .. } => {
                    let token = bearer.last_token();
                    let d = doctor::diagnose(
                        token.as_ref(),
                        diagnostics,
                        dest.service(),
                        (self.clock)(),
                    );
                    tracing::warn!(
                        connection,
                        cause = d.cause.as_str(),
                        explanation = %d.explanation,
                        aud = ?d.token.as_ref().map(|t| &t.aud),
                        roles = ?d.token.as_ref().map(|t| &t.roles),
                        appidacr = ?d.token.as_ref().and_then(|t| t.appidacr.as_deref()),
                        x_ms_diagnostics = ?d.x_ms_diagnostics,
                        www_authenticate = ?d.www_authenticate,
                        "the service refused the access token"
                    );
                    Some(Box::new(d))
                }
                _ => None,
            };
            PipelineError::Upload { error, diagnosis }
        })
    }

    /// Opens `url` for streaming, refusing forbidden addresses and announced oversize bodies; the
    /// returned flag turns true if the body grows past `max` while streaming.
    async fn fetch_source(
        &self,
        url: &Url,
        max: u64,
        deadline: Option<Instant>,
    ) -> Result<(UploadSource, Arc<AtomicBool>), PipelineError> {
        check_source_url(url, self.config.ingest.source_allow_loopback)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        // Throttling and connection faults are retried by the one engine: a Retry-After longer
        // than 5 s is honoured by giving up, never shortened.
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            max_total_wait: Duration::from_secs(10),
        };
        let budget = crate::http::Budget::new(deadline);
        let resp = crate::http::retry(&policy, &budget, |_| async {
            let sent = self.source_http.get(url.clone()).send().await;
            match &sent {
                Ok(r) if r.status() == 429 || r.status() == 503 => Next::Again {
                    retry_after: r
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| crate::http::parse_retry_after(v, OffsetDateTime::now_utc())),
                    last: sent,
                },
                Err(e) if e.is_connect() || e.is_timeout() => Next::Again {
                    retry_after: None,
                    last: sent,
                },
                _ => Next::Done(sent),
            }
        })
        .await
        .value;
        let resp = resp.map_err(|e| {
            if is_forbidden_resolution(&e) {
                PipelineError::SourceForbidden(format!("{host} resolves to a forbidden address"))
            } else {
                PipelineError::Upload {
                    error: UploadError::Source(format!(
                        "fetching from {host}: {}",
                        crate::upload::error::describe_transport(&e)
                    )),
                    diagnosis: None,
                }
            }
        })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(PipelineError::SourceRefused(format!(
                "{host} answered {status} (a redirect); give the final URL"
            )));
        }
        if status.is_client_error() {
            return Err(PipelineError::SourceRefused(format!(
                "{host} answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(PipelineError::Upload {
                error: UploadError::Source(format!("{host} answered {status}")),
                diagnosis: None,
            });
        }
        let len = resp.content_length();
        if len.is_some_and(|l| l > max) {
            return Err(PipelineError::SourceTooLarge { limit: max });
        }
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = overflow.clone();
        let seen = Arc::new(AtomicU64::new(0));
        let frames = resp.bytes_stream().map(move |r| {
            let frame = r.map_err(|e| io::Error::other(format!("source broke off: {e}")))?;
            let total = seen.fetch_add(frame.len() as u64, Ordering::Relaxed) + frame.len() as u64;
            if total > max {
                flag.store(true, Ordering::Relaxed);
                return Err(io::Error::other("the source is larger than the limit"));
            }
            Ok(frame)
        });
        Ok((UploadSource::from_stream(frames, len), overflow))
    }
}

fn conflict_name(o: &ConflictOutcome) -> &'static str {
    match o {
        ConflictOutcome::Created => "created",
        ConflictOutcome::Replaced => "replaced",
        ConflictOutcome::Renamed { .. } => "renamed",
    }
}

fn outcome_json(o: &UploadOutcome) -> Value {
    let mut v = json!({
        "path": o.path,
        "web_url": o.web_url,
        "size": o.size,
        "id": o.id,
        "etag": o.etag,
        "conflict_outcome": conflict_name(&o.conflict_outcome),
        "chunks": o.chunks,
        "retries": o.retries,
    });
    if let ConflictOutcome::Renamed { from } = &o.conflict_outcome {
        v["renamed_from"] = Value::String(from.clone());
    }
    v
}

/// Where a connection's files go.
enum Destination {
    SharePoint {
        target: SharePointTarget,
        base_folder: String,
        host: String,
    },
    Drive {
        drive: DriveRef,
    },
}

impl Destination {
    fn of(conn: &ConnectionSecret) -> Result<Self, PipelineError> {
        match &conn.target {
            Target::Sharepoint {
                site_url,
                library,
                base_folder,
            } => {
                // `library` is a server-relative URL, or the library's URL name under the site.
                let library_url = if library.starts_with('/') {
                    library.clone()
                } else {
                    format!(
                        "{}/{}",
                        site_url.path().trim_end_matches('/'),
                        library.trim_matches('/')
                    )
                };
                let target = SharePointTarget::new(site_url.clone(), &library_url)
                    .map_err(|e| PipelineError::Config(format!("connection target: {e}")))?;
                let host = match site_url.port() {
                    Some(p) => format!("{}:{p}", site_url.host_str().unwrap_or_default()),
                    None => site_url.host_str().unwrap_or_default().to_owned(),
                };
                Ok(Destination::SharePoint {
                    target,
                    base_folder: base_folder.trim_matches('/').to_owned(),
                    host,
                })
            }
            Target::Drive { drive_id } => Ok(Destination::Drive {
                drive: match drive_id {
                    schema::DriveRef::Me => {
                        if conn.auth == AuthKind::AppOnly {
                            return Err(PipelineError::Config(
                                "an app-only connection cannot use drive_id \"me\"".into(),
                            ));
                        }
                        DriveRef::Me
                    }
                    schema::DriveRef::Id(id) => DriveRef::Drive(id.clone()),
                },
            }),
        }
    }

    fn base_folder(&self) -> &str {
        match self {
            Destination::SharePoint { base_folder, .. } => base_folder,
            Destination::Drive { .. } => "",
        }
    }

    /// The decoded path the 400-character rule counts from.
    fn base_path(&self) -> String {
        match self {
            Destination::SharePoint {
                target,
                base_folder,
                ..
            } if !base_folder.is_empty() => format!("{}/{base_folder}", target.library()),
            Destination::SharePoint { target, .. } => target.library().to_owned(),
            Destination::Drive { .. } => String::new(),
        }
    }

    fn service(&self) -> Service<'_> {
        match self {
            Destination::SharePoint { host, .. } => Service::SharePoint { host },
            Destination::Drive { .. } => Service::Graph,
        }
    }
}

/// A connection's token source as the upload clients want it, remembering the last token so the
/// doctor can decode the one that was refused.
struct ConnectionBearer {
    tokens: Arc<dyn TokenProvider>,
    connection: String,
    last: Mutex<Option<SecretString>>,
    misconfigured: Mutex<Option<String>>,
}

impl ConnectionBearer {
    fn new(tokens: Arc<dyn TokenProvider>, connection: &str) -> Self {
        ConnectionBearer {
            tokens,
            connection: connection.to_owned(),
            last: Mutex::new(None),
            misconfigured: Mutex::new(None),
        }
    }

    fn last_token(&self) -> Option<SecretString> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Set when the token source said the deployment is misconfigured (a 500, not a 502).
    fn misconfigured(&self) -> Option<String> {
        self.misconfigured.lock().ok().and_then(|m| m.clone())
    }
}

impl BearerSource for ConnectionBearer {
    fn bearer(&self, force_refresh: bool) -> BoxFuture<'_, Result<SecretString, UploadError>> {
        Box::pin(async move {
            let token = match self.tokens.bearer(&self.connection, force_refresh).await {
                Ok(t) => t,
                Err(e) => {
                    return Err(match e {
                        TokenError::NeedsConsent(m) => UploadError::NeedsConsent(m),
                        TokenError::Throttled {
                            retry_after,
                            message,
                        } => {
                            tracing::warn!(connection = %self.connection, %message, "token request throttled");
                            UploadError::Throttled {
                                retry_after: retry_after.unwrap_or(Duration::from_secs(5)),
                                microsoft: None,
                            }
                        }
                        TokenError::Transient(m) => UploadError::Upstream {
                            status: 0,
                            microsoft_code: None,
                            message: format!("getting an access token: {m}"),
                        },
                        TokenError::Misconfigured(m) => {
                            if let Ok(mut slot) = self.misconfigured.lock() {
                                *slot = Some(m.clone());
                            }
                            UploadError::Upstream {
                                status: 0,
                                microsoft_code: None,
                                message: format!("getting an access token: {m}"),
                            }
                        }
                    });
                }
            };
            if let Ok(mut last) = self.last.lock() {
                *last = Some(token.clone());
            }
            Ok(token)
        })
    }
}

// ---- source_url SSRF guard ----

/// Whether a `source_url` may connect to `ip`. Loopback only with the test flag; private,
/// link-local (169.254.0.0/16, the cloud metadata range), shared, multicast and unspecified
/// addresses never.
pub fn source_ip_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(v4, allow_loopback),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_allowed(v4, allow_loopback);
            }
            if v6.is_loopback() {
                return allow_loopback;
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254 (EC2 metadata)
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xa9fe, 0xa9fe)) // NAT64 of 169.254.169.254
        }
    }
}

fn v4_allowed(v4: Ipv4Addr, allow_loopback: bool) -> bool {
    if v4.is_loopback() {
        return allow_loopback;
    }
    let o = v4.octets();
    !(v4.is_link_local()
        || v4.is_private()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64)) // 100.64.0.0/10 shared address space
}

fn check_source_url(url: &Url, allow_loopback: bool) -> Result<(), PipelineError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PipelineError::SourceForbidden(
            "only http and https are allowed".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(PipelineError::SourceForbidden(
            "credentials in the URL are not allowed".into(),
        ));
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") && !allow_loopback => {
            return Err(PipelineError::SourceForbidden(
                "localhost is not allowed".into(),
            ));
        }
        Some(url::Host::Domain(_)) => None,
        None => return Err(PipelineError::SourceForbidden("the URL has no host".into())),
    };
    if let Some(ip) = ip
        && !source_ip_allowed(ip, allow_loopback)
    {
        return Err(PipelineError::SourceForbidden(format!(
            "{ip} is a private, loopback or link-local address"
        )));
    }
    Ok(())
}

const FORBIDDEN_RESOLUTION: &str = "resolves only to forbidden addresses";

fn is_forbidden_resolution(e: &reqwest::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if s.to_string().contains(FORBIDDEN_RESOLUTION) {
            return true;
        }
        src = s.source();
    }
    false
}

/// Resolves names with the system resolver and drops every address a `source_url` must not
/// reach, so DNS cannot point a harmless-looking name at the metadata service.
struct GuardedResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| source_ip_allowed(a.ip(), allow))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} {FORBIDDEN_RESOLUTION}").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn source_client(config: &Config) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(config.http.connect_timeout)
        .read_timeout(config.http.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("spbridge/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver {
            allow_loopback: config.ingest.source_allow_loopback,
        }))
        .build()
        .map_err(|e| format!("cannot build the source_url client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssrf_guard() {
        let no = |s: &str| !source_ip_allowed(s.parse().unwrap(), false);
        assert!(no("169.254.169.254"));
        assert!(no("169.254.170.2"));
        assert!(no("127.0.0.1"));
        assert!(no("10.1.2.3"));
        assert!(no("192.168.0.1"));
        assert!(no("172.16.5.4"));
        assert!(no("100.100.100.200"));
        assert!(no("0.0.0.0"));
        assert!(no("::1"));
        assert!(no("fe80::1"));
        assert!(no("fd00:ec2::254"));
        assert!(no("::ffff:169.254.169.254"));
        assert!(source_ip_allowed("203.0.113.9".parse().unwrap(), false));
        assert!(source_ip_allowed("2606:4700::1111".parse().unwrap(), false));
        // The test flag opens loopback only.
        assert!(source_ip_allowed("127.0.0.1".parse().unwrap(), true));
        assert!(source_ip_allowed("::1".parse().unwrap(), true));
        assert!(!source_ip_allowed("169.254.169.254".parse().unwrap(), true));
        assert!(!source_ip_allowed("10.0.0.1".parse().unwrap(), true));
    }

    #[test]
    fn source_url_checks() {
        let check = |u: &str, lo: bool| check_source_url(&Url::parse(u).unwrap(), lo);
        assert!(check("http://169.254.169.254/latest/meta-data/", true).is_err());
        assert!(check("http://[fd00:ec2::254]/", true).is_err());
        assert!(check("http://localhost:80/x", false).is_err());
        assert!(check("http://127.0.0.1:8080/x", false).is_err());
        assert!(check("http://127.0.0.1:8080/x", true).is_ok());
        assert!(check("ftp://example.com/x", true).is_err());
        assert!(check("https://user:pw@example.com/x", true).is_err());
        assert!(check("https://files.example.com/x", false).is_ok());
    }

    #[tokio::test]
    async fn resolver_drops_forbidden_addresses() {
        use reqwest::dns::Resolve as _;
        let r = GuardedResolver {
            allow_loopback: false,
        };
        let err = match r.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must not resolve to an allowed address"),
            Err(e) => e,
        };
        assert!(err.to_string().contains(FORBIDDEN_RESOLUTION));
        let r = GuardedResolver {
            allow_loopback: true,
        };
        assert!(r.resolve("localhost".parse().unwrap()).await.is_ok());
    }

    #[test]
    fn error_mapping() {
        let cases: Vec<(PipelineError, u16, &str)> = vec![
            (
                PipelineError::UnknownConnection("x".into()),
                404,
                "connection_not_found",
            ),
            (
                PipelineError::NoDefaultConnection,
                500,
                "configuration_error",
            ),
            (PipelineError::IdReused, 409, "replayed"),
            (
                PipelineError::SourceForbidden("10.0.0.1".into()),
                400,
                "bad_request",
            ),
            (
                PipelineError::Upload {
                    error: UploadError::MetadataRejected {
                        path: "/a".into(),
                        fields: vec![],
                    },
                    diagnosis: None,
                },
                422,
                "unprocessable",
            ),
            (
                PipelineError::Upload {
                    error: UploadError::Upstream {
                        status: 500,
                        microsoft_code: None,
                        message: "x".into(),
                    },
                    diagnosis: None,
                },
                502,
                "bad_gateway",
            ),
            (
                PipelineError::Store(SecretError::Backend {
                    name: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x".into(),
                    op: "read",
                    code: None,
                    message: "boom".into(),
                }),
                503,
                "unavailable",
            ),
            (
                PipelineError::NeedsConsent {
                    connection: "c".into(),
                    code: "invalid_grant".into(),
                },
                424,
                "needs_consent",
            ),
            (
                PipelineError::InFlight {
                    retry_after: Duration::from_secs(30),
                },
                409,
                "in_progress",
            ),
            (
                PipelineError::SourceTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                PipelineError::Upload {
                    error: UploadError::Throttled {
                        retry_after: Duration::from_secs(7),
                        microsoft: None,
                    },
                    diagnosis: None,
                },
                503,
                "throttled",
            ),
            (PipelineError::Deadline, 503, "unavailable"),
            (
                PipelineError::Store(SecretError::Throttled {
                    name: "n".into(),
                    retry_after: None,
                }),
                503,
                "throttled",
            ),
        ];
        for (e, status, code) in cases {
            let r = e.response();
            assert_eq!(
                (r.status, r.body["error"].as_str()),
                (status, Some(code)),
                "{e:?}"
            );
            // Store errors never leak the secret's name.
            assert!(!r.body.to_string().contains("arn:aws"), "{}", r.body);
        }
        let t = PipelineError::Upload {
            error: UploadError::Throttled {
                retry_after: Duration::from_secs(7),
                microsoft: None,
            },
            diagnosis: None,
        };
        assert_eq!(t.response().retry_after, Some(7));
        assert!(!t.is_final(), "throttling releases the idempotency claim");
        assert!(
            !PipelineError::InFlight {
                retry_after: Duration::from_secs(1)
            }
            .is_final()
        );
        let conflict = PipelineError::Upload {
            error: UploadError::Conflict {
                path: "/a".into(),
                microsoft: None,
            },
            diagnosis: None,
        };
        assert!(conflict.is_final());
        let partial = PipelineError::Partial {
            uploaded: vec![json!({"path": "/first"})],
            source: Box::new(conflict),
        };
        let r = partial.response();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (409, Some("conflict"))
        );
        assert!(partial.is_final());
        assert_eq!(r.body["uploaded"][0]["path"], "/first");
        assert!(
            !PipelineError::NeedsConsent {
                connection: "c".into(),
                code: "x".into()
            }
            .is_final()
        );
        assert_eq!(PipelineError::Deadline.response().retry_after, Some(30));
    }
}
