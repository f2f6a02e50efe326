//! One job file into its connection's target, with the upload clients of [`crate::upload`], and
//! the judgement of a failure: retry later (transient) or end the job (permanent).
//!
//! Retryability is the upload error's own ([`UploadError::is_transient`]) or the token
//! source's ([`TokenError`]); nothing here decides it a second time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use serde_json::{Value, json};
use url::Url;

use super::JobFailure;
use super::queue::{Conflict, JobFile};
use crate::access::{Access, AccessError};
use crate::api::{ApiError, Kind};
use crate::secrets::schema::{self, AuthKind, ConnectionSecret, Target};
use crate::upload::doctor::{self, Service};
use crate::upload::graph::{DriveRef, GraphClient, GraphOptions};
use crate::upload::resume::{Resume, Resumed, Session};
use crate::upload::sharepoint::{SharePointClient, SharePointOptions, SharePointTarget};
use crate::upload::{
    BearerSource, ConflictBehavior, ConflictOutcome, FieldValue, RetryPolicy, UploadError,
    UploadOptions, UploadOutcome, UploadRequest, UploadSource,
};

/// How one attempt at a job went wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// Retrying cannot help: the job ends with this.
    Permanent(JobFailure),
    /// Throttling or an outage: try again later (after `retry_after`, if the service said).
    Transient {
        /// What happened.
        failure: JobFailure,
        /// The service's wait.
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    /// A permanent failure of `kind`.
    pub fn permanent(kind: Kind, message: impl Into<String>) -> Self {
        Attempt::Permanent(JobFailure::new(kind, message))
    }

    /// A transient failure of `kind`.
    pub fn transient(
        kind: Kind,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        Attempt::Transient {
            failure: JobFailure::new(kind, message),
            retry_after,
        }
    }
}

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
    /// Microsoft throttled the token request, or was unavailable and said when to come back
    /// (429/503 with Retry-After).
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
            // Keep the token endpoint's Retry-After: the job's retry must wait for it.
            AccessError::Transient {
                retry_after: Some(wait),
                ..
            } => TokenError::Throttled {
                retry_after: Some(wait),
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

/// Uploads job files.
#[derive(Clone)]
pub struct Uploader {
    http: reqwest::Client,
    graph: Url,
    chunk_size: usize,
    retry: RetryPolicy,
    tokens: Arc<dyn TokenProvider>,
}

impl Uploader {
    /// Uploads over `http` with tokens from `tokens`; Graph at `graph`.
    pub fn new(
        http: reqwest::Client,
        graph: Url,
        chunk_size: usize,
        tokens: Arc<dyn TokenProvider>,
    ) -> Self {
        Uploader {
            http,
            graph,
            chunk_size,
            retry: RetryPolicy::default(),
            tokens,
        }
    }

    /// Replaces the per-request retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Fetches `connection`'s access token into the token cache ahead of its upload, which then
    /// finds it cached or joins this fetch. An error is left for that upload to report.
    pub async fn warm_token(&self, connection: &str) {
        let _ = self.tokens.bearer(connection, false).await;
    }

    /// Uploads `file` (its bytes in `source`) for `connection`.
    pub async fn upload(
        &self,
        connection: &str,
        conn: &ConnectionSecret,
        file: &JobFile,
        source: UploadSource,
    ) -> Result<UploadOutcome, Attempt> {
        match self
            .upload_with(connection, conn, file, source, None)
            .await?
        {
            Resumed::Done(o) => Ok(o),
            Resumed::Paused(_) | Resumed::Restart(..) => Err(Attempt::permanent(
                Kind::Internal,
                "the upload stopped without a resumable session",
            )),
        }
    }

    /// [`Uploader::upload`] resumably: `source` starts at `resume.state.offset`, the state is
    /// saved after each chunk, and the upload pauses at `resume.stop_at`.
    pub async fn upload_resumable(
        &self,
        connection: &str,
        conn: &ConnectionSecret,
        file: &JobFile,
        source: UploadSource,
        resume: Resume<'_>,
    ) -> Result<Resumed, Attempt> {
        self.upload_with(connection, conn, file, source, Some(resume))
            .await
    }

    /// Ends a saved session for good (cancel + delete the placeholder we made, or DELETE the
    /// Graph session), so nothing half-written stays behind.
    pub async fn abort(&self, connection: &str, conn: &ConnectionSecret, session: &Session) {
        let bearer = Arc::new(JobBearer {
            tokens: self.tokens.clone(),
            connection: connection.to_owned(),
            refused: Mutex::new(None),
            last: Mutex::new(None),
        });
        let opts = UploadOptions {
            chunk_size: self.chunk_size,
            retry: self.retry.clone(),
        };
        match (&conn.target, session) {
            (
                Target::Sharepoint {
                    site_url, library, ..
                },
                Session::Sharepoint { .. },
            ) => {
                let Ok(target) = sharepoint_target(site_url, library) else {
                    return;
                };
                SharePointClient::new(self.http.clone(), bearer, opts)
                    .abort(&target, session)
                    .await;
            }
            (Target::Drive { .. }, Session::Graph { .. }) => {
                GraphClient::new(self.http.clone(), self.graph.clone(), bearer, opts)
                    .abort(session)
                    .await;
            }
            _ => tracing::warn!(
                connection,
                "a saved session does not match the connection's target"
            ),
        }
    }

    async fn upload_with(
        &self,
        connection: &str,
        conn: &ConnectionSecret,
        file: &JobFile,
        source: UploadSource,
        resume: Option<Resume<'_>>,
    ) -> Result<Resumed, Attempt> {
        let bearer = Arc::new(JobBearer {
            tokens: self.tokens.clone(),
            connection: connection.to_owned(),
            refused: Mutex::new(None),
            last: Mutex::new(None),
        });
        let started = std::time::Instant::now();
        let mut host = String::new();
        let mut request = UploadRequest {
            folder: String::new(),
            file_name: file.name.clone(),
            conflict: match file.conflict {
                Conflict::Fail => ConflictBehavior::Fail,
                Conflict::Replace => ConflictBehavior::Replace,
                Conflict::Rename => ConflictBehavior::Rename,
            },
            fields: file
                .metadata
                .iter()
                .map(|(name, value)| FieldValue {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            deadline: None,
        };
        let result = match &conn.target {
            Target::Sharepoint {
                site_url,
                library,
                base_folder,
            } => {
                let target = sharepoint_target(site_url, library).map_err(|e| {
                    Attempt::permanent(Kind::Misconfigured, format!("connection target: {e}"))
                })?;
                request.folder = join(base_folder.trim_matches('/'), &file.folder);
                host = match site_url.port() {
                    Some(p) => format!("{}:{p}", site_url.host_str().unwrap_or_default()),
                    None => site_url.host_str().unwrap_or_default().to_owned(),
                };
                let opts = SharePointOptions {
                    chunk_size: self.chunk_size,
                    retry: self.retry.clone(),
                };
                let client = SharePointClient::new(self.http.clone(), bearer.clone(), opts);
                match resume {
                    Some(r) => client.upload_resumable(&target, &request, source, r).await,
                    None => client
                        .upload(&target, &request, source)
                        .await
                        .map(Resumed::Done),
                }
            }
            Target::Drive { drive_id } => {
                let drive = match drive_id {
                    schema::DriveRef::Me if conn.auth == AuthKind::AppOnly => {
                        return Err(Attempt::permanent(
                            Kind::Misconfigured,
                            "an app-only connection cannot use drive_id \"me\"",
                        ));
                    }
                    schema::DriveRef::Me => DriveRef::Me,
                    schema::DriveRef::Id(id) => DriveRef::Drive(id.clone()),
                };
                request.folder = file.folder.clone();
                let opts = GraphOptions {
                    chunk_size: self.chunk_size,
                    retry: self.retry.clone(),
                };
                let client =
                    GraphClient::new(self.http.clone(), self.graph.clone(), bearer.clone(), opts);
                match resume {
                    Some(r) => client.upload_resumable(&drive, &request, source, r).await,
                    None => client
                        .upload(&drive, &request, source)
                        .await
                        .map(Resumed::Done),
                }
            }
        };
        let refused = bearer.refused.lock().ok().and_then(|mut r| r.take());
        match &result {
            Ok(Resumed::Done(o)) => tracing::info!(
                connection,
                size = o.size,
                path = %o.path,
                duration_ms = started.elapsed().as_millis() as u64,
                chunks = o.chunks,
                retries = o.retries,
                "upload"
            ),
            Ok(Resumed::Paused(state)) => tracing::info!(
                connection,
                offset = state.offset,
                duration_ms = started.elapsed().as_millis() as u64,
                "upload paused"
            ),
            Ok(Resumed::Restart(_, why)) => tracing::info!(connection, why, "upload restarts"),
            Err(e) => tracing::warn!(
                connection,
                error = ApiError::from(e).code(),
                duration_ms = started.elapsed().as_millis() as u64,
                "upload failed"
            ),
        }
        result.map_err(|e| match refused {
            Some(t) => token_attempt(t),
            None => {
                let mut attempt = upload_attempt(&e);
                if let (
                    UploadError::Unauthorized { diagnostics, .. }
                    | UploadError::Forbidden { diagnostics, .. },
                    Attempt::Permanent(f),
                ) = (&e, &mut attempt)
                {
                    let service = if host.is_empty() {
                        Service::Graph
                    } else {
                        Service::SharePoint { host: &host }
                    };
                    let token = bearer.last.lock().ok().and_then(|l| l.clone());
                    let d = doctor::diagnose(
                        token.as_ref(),
                        diagnostics,
                        service,
                        time::OffsetDateTime::now_utc(),
                    );
                    tracing::warn!(
                        connection,
                        cause = d.cause.as_str(),
                        explanation = %d.explanation,
                        "the service refused the access token"
                    );
                    f.message = format!("{e}: {}", d.explanation);
                    f.diagnosis = serde_json::to_value(&d).ok();
                }
                attempt
            }
        })
    }
}

/// The connection's library as a [`SharePointTarget`] (a relative library is below the site).
fn sharepoint_target(site_url: &Url, library: &str) -> Result<SharePointTarget, UploadError> {
    let library_url = if library.starts_with('/') {
        library.to_owned()
    } else {
        let site = site_url.path().trim_end_matches('/');
        format!("{site}/{}", library.trim_matches('/'))
    };
    SharePointTarget::new(site_url.clone(), &library_url)
}

fn join(base: &str, sub: &str) -> String {
    match (base.is_empty(), sub.is_empty()) {
        (_, true) => base.to_owned(),
        (true, false) => sub.to_owned(),
        (false, false) => format!("{base}/{sub}"),
    }
}

/// A connection's tokens for the upload clients, keeping the token source's own error.
struct JobBearer {
    tokens: Arc<dyn TokenProvider>,
    connection: String,
    refused: Mutex<Option<TokenError>>,
    // The last token handed out, so the doctor can decode the one that was refused.
    last: Mutex<Option<SecretString>>,
}

impl BearerSource for JobBearer {
    fn bearer(&self, force_refresh: bool) -> BoxFuture<'_, Result<SecretString, UploadError>> {
        Box::pin(async move {
            self.tokens
                .bearer(&self.connection, force_refresh)
                .await
                .inspect(|t| {
                    if let Ok(mut last) = self.last.lock() {
                        *last = Some(t.clone());
                    }
                })
                .map_err(|e| {
                    let message = format!("getting an access token: {e}");
                    if let Ok(mut slot) = self.refused.lock() {
                        *slot = Some(e);
                    }
                    // The upload stops here; the kept TokenError decides what happens next.
                    UploadError::BadInput(message)
                })
        })
    }
}

fn token_attempt(e: TokenError) -> Attempt {
    let message = e.to_string();
    match e {
        TokenError::NeedsConsent(_) => Attempt::permanent(Kind::NeedsConsent, message),
        TokenError::Throttled { retry_after, .. } => {
            Attempt::transient(Kind::Throttled, message, retry_after)
        }
        TokenError::Transient(_) => Attempt::transient(Kind::Unavailable, message, None),
        TokenError::Misconfigured(_) => Attempt::permanent(Kind::Misconfigured, message),
    }
}

/// The job's view of an upload error: the one error table ([`ApiError`]'s `From<&UploadError>`)
/// names it, and [`UploadError::is_transient`] says whether another attempt may help.
pub fn upload_attempt(e: &UploadError) -> Attempt {
    let api = ApiError::from(e);
    let failure = JobFailure::from_api(&api);
    if e.is_transient() {
        Attempt::Transient {
            failure,
            retry_after: api.retry_after,
        }
    } else {
        Attempt::Permanent(failure)
    }
}

/// The answer for one stored file, as the synchronous path gives it.
pub fn outcome_json(o: &UploadOutcome) -> Value {
    let conflict = match &o.conflict_outcome {
        ConflictOutcome::Created => "created",
        ConflictOutcome::Replaced => "replaced",
        ConflictOutcome::Renamed { .. } => "renamed",
    };
    let mut v = json!({
        "path": o.path, "web_url": o.web_url, "size": o.size, "id": o.id, "etag": o.etag,
        "conflict_outcome": conflict, "chunks": o.chunks, "retries": o.retries,
    });
    if let ConflictOutcome::Renamed { from } = &o.conflict_outcome {
        v["renamed_from"] = Value::String(from.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability_follows_the_upload_error() {
        let throttled = UploadError::Throttled {
            retry_after: Duration::from_secs(7),
            microsoft: None,
        };
        assert_eq!(
            upload_attempt(&throttled),
            Attempt::transient(
                Kind::Throttled,
                throttled.to_string(),
                Some(Duration::from_secs(7))
            )
        );
        let conflict = UploadError::Conflict {
            path: "/a".into(),
            microsoft: None,
        };
        assert!(
            matches!(upload_attempt(&conflict), Attempt::Permanent(f) if f.error == "conflict")
        );
        let outage = UploadError::Upstream {
            status: 503,
            microsoft_code: None,
            message: "down".into(),
        };
        assert!(matches!(upload_attempt(&outage), Attempt::Transient { .. }));
        let consent = token_attempt(TokenError::NeedsConsent("invalid_grant".into()));
        assert!(matches!(consent, Attempt::Permanent(f) if f.error == "needs_consent"));
    }

    #[test]
    fn a_token_endpoint_outage_keeps_its_retry_after() {
        let down = |retry_after| AccessError::Transient {
            connection: "c".into(),
            retry_after,
            detail: "503 temporarily_unavailable".into(),
        };
        let attempt = token_attempt(TokenError::from(down(Some(Duration::from_secs(4)))));
        assert!(
            matches!(attempt, Attempt::Transient { retry_after: Some(w), .. } if w == Duration::from_secs(4)),
            "{attempt:?}"
        );
        let attempt = token_attempt(TokenError::from(down(None)));
        assert!(
            matches!(
                attempt,
                Attempt::Transient {
                    retry_after: None,
                    ..
                }
            ),
            "{attempt:?}"
        );
    }

    #[test]
    fn folders_join_without_empty_segments() {
        assert_eq!(join("", ""), "");
        assert_eq!(join("inbox", ""), "inbox");
        assert_eq!(join("", "a/b"), "a/b");
        assert_eq!(join("inbox", "a"), "inbox/a");
    }
}
