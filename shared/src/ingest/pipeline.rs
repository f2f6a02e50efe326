//! The receiver: one upload request from start to `202 Accepted`.
//!
//! connection → sender check → body parsing and every name, size and `source_url` rule → job
//! record (conditional create in DynamoDB: a repeated delivery finds its job) → queue message
//! (small bodies inline, larger ones staged in S3) → `202 {job, status, status_url}`. The worker
//! ([`crate::jobs::worker`]) does the upload. `Prefer: wait=N` waits for the job's end.
//!
//! One job per request, however many files a multipart request carries: the sender's delivery
//! (one `webhook-id`) is the unit it retries and deduplicates, the job answers as the
//! synchronous path did (one object, or an array for several files), and the worker records
//! each stored file on the job so a retried job skips the files that already landed.
//!
//! The function crate only converts between `lambda_http` and [`IngestRequest`] / [`Answer`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::sender::{ReplayKey, Sender};
use super::{
    ConflictMode, Content, IncomingFile, IngestError, Limits, NamePolicy, RawRequest, parse_request,
};
use crate::api::{ApiError, Kind};
use crate::config::Config;
use crate::jobs::queue::{Conflict, INLINE_LIMIT, JobBody, JobFile, JobMessage, JobQueue};
use crate::jobs::staging::Staging;
use crate::jobs::staging::StagingError;
pub use crate::jobs::upload::{TokenError, TokenProvider};
use crate::jobs::{
    Created, DeliveryKey, Job, JobError, JobId, JobStatus, JobStore, NewJob, StatusToken,
    payload_hash,
};
use crate::secrets::schema::UploadOptions;
use crate::secrets::{SecretError, SecretStore};
use crate::upload::source::{SourceUrlPolicy, check_source_url};

/// Time kept back from the Lambda deadline to write the answer.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(3);
/// The longest `Prefer: wait` honoured (API Gateway cuts a request at 30 s).
pub const MAX_WAIT: Duration = Duration::from_secs(25);

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
    /// Where this API is reachable (`https://host/stage`), for `status_url`; `None` gives a
    /// URL relative to the host.
    pub base_url: Option<&'a str>,
}

/// An HTTP answer: status, JSON body and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// Extra headers (`Location`, `Retry-After`, `Preference-Applied`, …).
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    /// The header `name`, if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<ApiError> for Answer {
    fn from(api: ApiError) -> Self {
        let mut headers = Vec::new();
        if let Some(secs) = api.retry_after_secs() {
            headers.push(("retry-after", secs.to_string()));
        }
        Answer {
            status: api.status().as_u16(),
            body: api.to_json(),
            headers,
        }
    }
}

/// Why a request was refused; its [`ApiError`] is the answer.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The request was refused before anything was recorded (sender, body, names, sizes).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The connection named in the path does not exist or its name is not valid.
    #[error("unknown connection {0:?}")]
    UnknownConnection(String),
    /// `POST /upload` without a default connection configured.
    #[error("no connection named in the path and no default connection configured")]
    NoDefaultConnection,
    /// `source_url` points somewhere it must not.
    #[error("source_url is not allowed: {0}")]
    SourceForbidden(String),
    /// The delivery id was used before with another body.
    #[error("this webhook-id was already used for a different body")]
    IdReused,
    /// A GitHub-style body already delivered under another (or no) `X-GitHub-Delivery`.
    #[error(
        "this body was already delivered with another X-GitHub-Delivery; GitHub-style \
         signatures carry no timestamp, so a repeat under a new id is refused as a replay"
    )]
    GitHubReplay,
    /// The job table, queue or staging bucket failed; the sender's retry finds the same job.
    #[error("{0}")]
    Jobs(String),
    /// The secret store failed; the store's text (secret names, ARNs) goes to the log only.
    #[error("secret store: {0}")]
    Store(#[from] SecretError),
}

impl From<&ReceiveError> for ApiError {
    fn from(e: &ReceiveError) -> Self {
        let message = e.to_string();
        match e {
            ReceiveError::Ingest(e) => ApiError::from(e),
            ReceiveError::UnknownConnection(_) => ApiError::new(Kind::ConnectionNotFound, message),
            ReceiveError::NoDefaultConnection => ApiError::new(Kind::ConfigurationError, message),
            ReceiveError::SourceForbidden(_) => ApiError::new(Kind::BadRequest, message),
            ReceiveError::IdReused | ReceiveError::GitHubReplay => {
                ApiError::new(Kind::Replayed, message)
            }
            ReceiveError::Jobs(_) => ApiError::new(
                Kind::Unavailable,
                "the upload could not be queued; retry later (a retry finds the same job)",
            )
            .with_retry_after(Some(Duration::from_secs(2))),
            ReceiveError::Store(s) => s.to_api_error(),
        }
    }
}

pub(super) fn jobs_error(e: JobError) -> ReceiveError {
    match e {
        JobError::IdReused => ReceiveError::IdReused,
        other => ReceiveError::Jobs(other.to_string()),
    }
}

/// Who sent a request and what the connection allows.
pub(super) struct Accepting {
    pub(super) delivery: DeliveryKey,
    /// What a repeat must match: the body's SHA-256, and for GitHub-style senders also the
    /// `X-GitHub-Delivery` it came with (GitHub's own redelivery keeps it).
    pub(super) payload_hash: String,
    /// SHA-256 of the request body, computed once for the payload hash and the staging PUT.
    pub(super) body_sha256: [u8; 32],
    pub(super) github: bool,
    pub(super) options: UploadOptions,
    pub(super) callback_url: Option<url::Url>,
}

/// Everything a warm receiver keeps: the secret store (sender secrets only), the job table, the
/// queue, the staging bucket and the clock.
pub struct Receiver {
    config: Config,
    store: Arc<dyn SecretStore>,
    pub(super) jobs: Arc<dyn JobStore>,
    pub(super) queue: Arc<dyn JobQueue>,
    pub(super) staging: Arc<dyn Staging>,
    pub(super) clock: Clock,
    pub(super) limits: Limits,
    pub(super) retention: Duration,
}

impl Receiver {
    /// A receiver over its adapters; jobs are kept `retention` after their last change.
    pub fn new(
        config: Config,
        store: Arc<dyn SecretStore>,
        jobs: Arc<dyn JobStore>,
        queue: Arc<dyn JobQueue>,
        staging: Arc<dyn Staging>,
        retention: Duration,
    ) -> Self {
        Receiver {
            config,
            store,
            jobs,
            queue,
            staging,
            clock: system_clock(),
            limits: Limits::default(),
            retention,
        }
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

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Accepts one upload request: 202 (or 201/4xx after `Prefer: wait`), or a 4xx/5xx naming
    /// the problem. Never panics on input.
    pub async fn accept(&self, req: IngestRequest<'_>) -> Answer {
        match self.run(&req).await {
            Ok(a) => a,
            Err(e) => self.refuse(&e, &req, "upload"),
        }
    }

    /// Logs a refusal (warn for 5xx, info for 4xx) and answers it.
    fn refuse(&self, e: &ReceiveError, req: &IngestRequest<'_>, what: &str) -> Answer {
        refused(ApiError::from(e), e, req, what)
    }

    /// The connection a request names, or the default one.
    pub(super) fn connection_of(&self, req: &IngestRequest<'_>) -> Result<String, ReceiveError> {
        match req.connection {
            Some(c) => Ok(c.to_owned()),
            None => self
                .config
                .default_connection
                .clone()
                .ok_or(ReceiveError::NoDefaultConnection),
        }
    }

    async fn run(&self, req: &IngestRequest<'_>) -> Result<Answer, ReceiveError> {
        let now = (self.clock)();
        let connection = self.connection_of(req)?;
        let sender = self.authenticate(&connection, req, now).await?;
        let mut limits = self.limits;
        if let Some(max) = sender.options.max_file_bytes {
            limits.max_file_bytes = limits
                .max_file_bytes
                .min(usize::try_from(max).unwrap_or(usize::MAX));
        }
        let names = NamePolicy::for_connection(&sender.options);
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
        // The worker fetches; the receiver refuses what must never be fetched.
        let policy = SourceUrlPolicy {
            allow_http: sender.options.allow_http_source,
            allow_loopback: self.config.ingest.source_allow_loopback,
        };
        for f in &files {
            if let Content::SourceUrl(url) = &f.content {
                check_source_url(url, policy).map_err(ReceiveError::SourceForbidden)?;
            }
        }
        let bytes_total = files
            .iter()
            .map(|f| match &f.content {
                Content::Bytes(b) => Some(b.len() as u64),
                Content::SourceUrl(_) => None,
            })
            .sum();
        let new = NewJob {
            connection: connection.clone(),
            delivery: sender.delivery,
            payload_hash: sender.payload_hash.clone(),
            bytes_total,
            retention: self.retention,
        };
        let body = BodyDigest {
            body: &req.body,
            sha256: sender.body_sha256,
        };
        let planned = plan_message(&connection, files, sender.callback_url, &new, Some(body));
        // The job row and the staged bodies are written at once. Both keys are known before
        // either write: a repeat of this delivery rewrites the same bytes under the same key,
        // and a different body under a reused id gets keys of its own, so it never touches this
        // job's objects. The message goes only after both, so no worker sees a job without its
        // bodies.
        let (created, stored) = tokio::join!(
            self.jobs.create(&new, now),
            store_staged(self.staging.as_ref(), &planned.staged)
        );
        let created = match created {
            Err(JobError::IdReused) => {
                delete_staged(self.staging.as_ref(), &planned.staged).await;
                return Err(if sender.github {
                    ReceiveError::GitHubReplay
                } else {
                    ReceiveError::IdReused
                });
            }
            other => other.map_err(jobs_error)?,
        };
        // A job still `accepted` may have been recorded by a delivery that failed to enqueue
        // it: send again (a duplicate message is harmless, the worker's lease sorts it out).
        if !created.existed || created.job.status == JobStatus::Accepted {
            stored.map_err(|e| ReceiveError::Jobs(e.to_string()))?;
            let mut msg = planned.message;
            msg.max_file_bytes = sender.options.max_file_bytes;
            self.queue
                .send(&msg)
                .await
                .map_err(|e| ReceiveError::Jobs(e.to_string()))?;
        } else if created.job.status.is_final() {
            // The worker deleted the job's bodies when it ended; this repeat's copies are left
            // over. An unfinished job's worker may be reading them (the same bytes): kept.
            delete_staged(self.staging.as_ref(), &planned.staged).await;
        }
        tracing::info!(job = %created.job.id, connection, repeated = created.existed, request_id = req.request_id, "upload accepted");
        Ok(self.job_answer(created, req).await)
    }

    /// `202 {job, status, status_url}` for a recorded job, or its end after `Prefer: wait`.
    pub(super) async fn job_answer(&self, created: Created, req: &IngestRequest<'_>) -> Answer {
        let status_url = status_url(req.base_url, &created.job.id, &created.token);
        let mut job = created.job;
        let wait = prefer_wait(req.headers);
        if let Some(wait) = wait {
            let mut until = Instant::now() + wait;
            if let Some(d) = req.deadline {
                until = until.min(d.checked_sub(DEADLINE_MARGIN).unwrap_or(d));
            }
            job = self.wait_for(job, until).await;
        }
        let mut answer = finished_answer(&job).unwrap_or_else(|| Answer {
            status: 202,
            body: json!({
                "job": job.id.as_str(),
                "status": job.status.as_str(),
                "status_url": status_url,
            }),
            headers: Vec::new(),
        });
        answer.headers.push(("location", status_url));
        if let Some(w) = wait {
            answer
                .headers
                .push(("preference-applied", format!("wait={}", w.as_secs())));
        }
        if created.existed {
            answer.headers.push(("idempotent-replayed", "true".into()));
        }
        answer
    }

    /// Polls the job until it ends or `until`; a read failure just ends the wait.
    async fn wait_for(&self, mut job: Job, until: Instant) -> Job {
        let mut pause = Duration::from_millis(50);
        while !job.status.is_final() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            tokio::time::sleep(pause.min(until - now)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
            match self.jobs.get(&job.id).await {
                Ok(j) => job = j,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "could not read the job while waiting");
                    break;
                }
            }
        }
        job
    }

    /// `GET /uploads/{job}?token=…`: the job's status to whoever holds its token. An unknown
    /// job, a malformed id and a wrong token give the same 404.
    pub async fn status(&self, job: &str, token: Option<&str>) -> Answer {
        let hidden = || Answer::from(ApiError::new(Kind::NotFound, "no such upload job"));
        let (Ok(id), Some(token)) = (JobId::parse(job), token) else {
            return hidden();
        };
        match self.jobs.get(&id).await {
            Ok(j) if j.token_matches(&StatusToken::from_presented(token)) => Answer {
                status: 200,
                body: j.to_json(),
                headers: Vec::new(),
            },
            Ok(_) | Err(JobError::NotFound) => hidden(),
            Err(e) => {
                tracing::warn!(job, error = %e, "could not read a job");
                ApiError::new(
                    Kind::Unavailable,
                    "the job store is unavailable; retry later",
                )
                .with_retry_after(Some(Duration::from_secs(2)))
                .into()
            }
        }
    }

    /// Checks the sender against the connection's sender secret (never its Microsoft
    /// credentials). An unknown connection refuses like a wrong signature.
    pub(super) async fn authenticate(
        &self,
        connection: &str,
        req: &IngestRequest<'_>,
        now: OffsetDateTime,
    ) -> Result<Accepting, ReceiveError> {
        let sender = Sender::load(self.store.as_ref(), &self.config, connection).await?;
        let verified = sender
            .verify(req.headers, &req.body, now)
            .map_err(IngestError::from)?;
        let key = sender.replay_key(&verified, &req.body);
        // One pass over the body: a GitHub-style key has hashed it already.
        let body_sha256: [u8; 32] = match &key {
            Some(ReplayKey::Body { sha256, .. }) => {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(sha256, &mut raw)
                    .map_err(|e| ReceiveError::Jobs(format!("the body digest is not hex: {e}")))?;
                raw
            }
            _ => Sha256::digest(&req.body).into(),
        };
        let body_hash = hex::encode(body_sha256);
        let (delivery, payload, github) = match key {
            Some(ReplayKey::WebhookId(id)) => (DeliveryKey::webhook_id(&id), body_hash, false),
            // GitHub signs neither its delivery id nor a time: the body names the delivery, and
            // a repeat under another (or no) X-GitHub-Delivery is a replay, refused.
            Some(ReplayKey::Body { sha256, delivery }) => {
                let salted = format!("{sha256}:{}", delivery.unwrap_or_default());
                (
                    DeliveryKey::github_body(&sha256),
                    payload_hash(salted.as_bytes()),
                    true,
                )
            }
            None => (DeliveryKey::unkeyed(), body_hash, false),
        };
        Ok(Accepting {
            delivery,
            payload_hash: payload,
            body_sha256,
            github,
            options: sender.options(),
            callback_url: sender.secret().and_then(|s| s.callback_url.clone()),
        })
    }
}

impl From<ConflictMode> for Conflict {
    fn from(m: ConflictMode) -> Self {
        match m {
            ConflictMode::Fail => Conflict::Fail,
            ConflictMode::Replace => Conflict::Replace,
            ConflictMode::Rename => Conflict::Rename,
        }
    }
}

/// Logs a refusal with its internal text `message` (warn for 5xx, info for 4xx) and answers
/// `api`, which says only what the sender may know.
pub(super) fn refused(
    api: ApiError,
    message: &dyn std::fmt::Display,
    req: &IngestRequest<'_>,
    what: &str,
) -> Answer {
    let (status, code) = (api.status().as_u16(), api.code());
    if status >= 500 {
        tracing::warn!(status, error = code, message = %message, request_id = req.request_id, "{what} refused");
    } else {
        tracing::info!(status, error = code, message = %message, request_id = req.request_id, "{what} refused");
    }
    api.into()
}

/// A request body and its SHA-256, so a file that is the whole body is not hashed again.
#[derive(Debug, Clone, Copy)]
pub struct BodyDigest<'a> {
    /// The request body.
    pub body: &'a Bytes,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// The SHA-256 of `file`: the body's when `file` is the body itself (a raw upload).
fn digest_of(file: &Bytes, body: Option<BodyDigest<'_>>) -> [u8; 32] {
    match body {
        Some(b) if file.as_ptr() == b.body.as_ptr() && file.len() == b.body.len() => b.sha256,
        _ => Sha256::digest(file).into(),
    }
}

/// One body to store in the staging bucket before the job's message is sent.
#[derive(Debug, Clone)]
pub struct StagedBody {
    /// Its key.
    pub key: String,
    /// Its bytes.
    pub body: Bytes,
    /// Their SHA-256, which the bucket checks.
    pub sha256: [u8; 32],
}

/// A job message and the bodies it refers to in the staging bucket, not yet stored.
#[derive(Debug)]
pub struct PlannedMessage {
    /// The message to send once the bodies are stored.
    pub message: JobMessage,
    /// The bodies to store first.
    pub staged: Vec<StagedBody>,
}

/// The staging key of file `index` of `new`'s job: the job id and the first 16 hex digits of
/// its payload hash, so a different body under a reused delivery id can never overwrite it.
fn staging_key(new: &NewJob, index: usize) -> String {
    let hash = new.payload_hash.get(..16).unwrap_or(&new.payload_hash);
    format!("{}/{hash}/{index}", new.id())
}

/// Builds the job message for checked `files` of `new`'s job: small bodies inline, the rest
/// staged once the inline budget is spent. `body` is the request body with its digest, when
/// known. Nothing is written.
pub fn plan_message(
    connection: &str,
    files: Vec<IncomingFile>,
    callback_url: Option<url::Url>,
    new: &NewJob,
    body: Option<BodyDigest<'_>>,
) -> PlannedMessage {
    let mut budget = INLINE_LIMIT;
    let mut out = Vec::with_capacity(files.len());
    let mut staged = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let job_body = match f.content {
            Content::SourceUrl(url) => JobBody::SourceUrl { url },
            Content::Bytes(b) => {
                let encoded = base64::encoded_len(b.len(), true).unwrap_or(usize::MAX);
                if encoded <= budget {
                    budget -= encoded;
                    JobBody::Inline {
                        base64: base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD,
                            &b,
                        ),
                    }
                } else {
                    let key = staging_key(new, i);
                    let size = b.len() as u64;
                    staged.push(StagedBody {
                        key: key.clone(),
                        sha256: digest_of(&b, body),
                        body: b,
                    });
                    JobBody::Staged {
                        key,
                        size,
                        etag: None,
                    }
                }
            }
        };
        out.push(JobFile {
            name: f.name.as_str().to_owned(),
            folder: f.folder.map(|p| p.as_str().to_owned()).unwrap_or_default(),
            conflict: f.conflict.into(),
            metadata: f.metadata,
            body: job_body,
        });
    }
    PlannedMessage {
        message: JobMessage {
            job: new.id(),
            connection: connection.to_owned(),
            files: out,
            callback_url,
            max_file_bytes: None,
        },
        staged,
    }
}

/// Builds the job message for `files` of the recorded job `new` and stores its staged bodies
/// (for callers that record the job first; the receiver writes both at once).
pub async fn job_message(
    new: &NewJob,
    connection: &str,
    files: Vec<IncomingFile>,
    callback_url: Option<url::Url>,
    staging: &dyn Staging,
) -> Result<JobMessage, StagingError> {
    let planned = plan_message(connection, files, callback_url, new, None);
    store_staged(staging, &planned.staged).await?;
    Ok(planned.message)
}

/// Stores every planned body, at once.
pub async fn store_staged(
    staging: &dyn Staging,
    staged: &[StagedBody],
) -> Result<(), StagingError> {
    futures_util::future::try_join_all(
        staged
            .iter()
            .map(|s| staging.put(&s.key, s.body.clone(), s.sha256)),
    )
    .await
    .map(|_| ())
}

/// Deletes bodies no job will read; a failure is logged, and the bucket's lifecycle rule
/// removes what is left.
async fn delete_staged(staging: &dyn Staging, staged: &[StagedBody]) {
    for s in staged {
        if let Err(e) = staging.delete(&s.key).await {
            tracing::warn!(key = %s.key, error = %e, "could not delete a staged body no job uses");
        }
    }
}

/// The answer for a job that ended during `Prefer: wait`: 201 with the result, or the
/// failure's own status and error body (with the job id).
fn finished_answer(job: &Job) -> Option<Answer> {
    match job.status {
        JobStatus::Done => Some(Answer {
            status: 201,
            body: job.result.clone().unwrap_or(Value::Null),
            headers: Vec::new(),
        }),
        JobStatus::Failed => {
            let api = job
                .error
                .as_ref()
                .map(|f| f.to_api_error())
                .unwrap_or_else(|| ApiError::new(Kind::Internal, "the upload failed"))
                .with_detail("job", job.id.as_str());
            Some(api.into())
        }
        JobStatus::Accepted | JobStatus::Uploading => None,
    }
}

/// `{base}/uploads/{job}?token={token}`: a capability URL (only the token's hash is stored).
pub(super) fn status_url(base: Option<&str>, job: &JobId, token: &StatusToken) -> String {
    let base = base.unwrap_or("").trim_end_matches('/');
    format!("{base}/uploads/{job}?token={}", token.expose())
}

/// The `wait` of an RFC 7240 `Prefer` header, capped at [`MAX_WAIT`]; other preferences and
/// malformed values are ignored, as the RFC asks.
pub fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| {
            let p = p.split(';').next()?.trim();
            let (k, v) = p.split_once('=')?;
            if !k.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            v.trim().trim_matches('"').parse::<u64>().ok()
        })
        .next()
        .map(|n| Duration::from_secs(n).min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_is_parsed_and_capped() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("prefer", v.parse().unwrap());
            m
        };
        assert_eq!(prefer_wait(&h("wait=5")), Some(Duration::from_secs(5)));
        assert_eq!(
            prefer_wait(&h("respond-async, wait=100")),
            Some(Duration::from_secs(25))
        );
        assert_eq!(
            prefer_wait(&h("Wait = \"3\"")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(prefer_wait(&h("return=minimal")), None);
        assert_eq!(prefer_wait(&h("wait=soon")), None);
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
    }

    #[test]
    fn errors_answer_through_the_one_table_and_hide_the_store() {
        let store = ReceiveError::Store(SecretError::Backend {
            name: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:spbridge/senders/x".into(),
            op: "read",
            code: None,
            message: "boom".into(),
        });
        let a = Answer::from(ApiError::from(&store));
        assert_eq!(a.status, 503);
        assert!(!a.body.to_string().contains("arn:"), "{}", a.body);
        let a = Answer::from(ApiError::from(&ReceiveError::IdReused));
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (409, Some("replayed"))
        );
        let a = Answer::from(ApiError::from(&ReceiveError::SourceForbidden("x".into())));
        assert_eq!(a.status, 400);
    }
}
