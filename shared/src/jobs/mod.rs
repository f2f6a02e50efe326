//! Background uploads: jobs and idempotency ([`JobStore`], DynamoDB in [`dynamo`]), the queue
//! that carries them ([`queue`], SQS), staged bodies ([`staging`], S3) and the worker that runs
//! them ([`worker`]).
//!
//! A job is keyed by connection + delivery key, so however often a delivery arrives it makes
//! one job (and one file). Its status only moves forward: `accepted → uploading → done | failed`.
//! At most one worker holds a job at a time: the lease is taken with a conditional update and
//! each taking bumps `generation`, so a worker whose lease was taken over cannot write.

pub mod callback;
pub mod dynamo;
pub mod fetch;
pub mod queue;
pub mod settings;
pub mod staging;
pub mod upload;
pub mod worker;

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;

use crate::api::{ApiError, Kind};
use crate::upload::resume::{ResumeState, Session};

pub use dynamo::DynamoJobStore;
pub use settings::JobsConfig;

/// How long a job record is kept after its last change (DynamoDB TTL), unless configured.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A job's id: 32 hex characters derived from connection + delivery key, so the same delivery
/// always names the same job. Knowing an id grants nothing; reading a job needs its
/// [`StatusToken`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// The id of `delivery` on `connection`.
    pub fn of(connection: &str, delivery: &DeliveryKey) -> Self {
        let mut h = Sha256::new();
        h.update(connection.as_bytes());
        h.update([0]);
        h.update(delivery.as_str().as_bytes());
        JobId(hex::encode(&h.finalize()[..16]))
    }

    /// Parses an id from a URL or a message: exactly 32 lowercase hex characters.
    pub fn parse(s: &str) -> Result<Self, JobError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(JobId(s.to_owned()))
        } else {
            Err(JobError::BadId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = JobError;
    fn try_from(s: String) -> Result<Self, JobError> {
        JobId::parse(&s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What makes a delivery the same delivery: the sender's `webhook-id`, or a GitHub delivery id
/// together with the body's SHA-256 (GitHub reuses the id on "redeliver" with the same body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryKey(String);

impl DeliveryKey {
    /// A Standard Webhooks `webhook-id`.
    pub fn webhook_id(id: &str) -> Self {
        DeliveryKey(format!("wh:{id}"))
    }

    /// A GitHub `X-GitHub-Delivery` and the body's hex SHA-256.
    pub fn github(delivery: &str, body_sha256: &str) -> Self {
        DeliveryKey(format!("gh:{delivery}:{body_sha256}"))
    }

    /// A GitHub-style delivery, identified by the body's hex SHA-256 alone: GitHub signs
    /// neither its delivery id nor a time, so a replay under another id is the same delivery.
    pub fn github_body(body_sha256: &str) -> Self {
        DeliveryKey(format!("gh:{body_sha256}"))
    }

    /// A key as a job records it ([`Job::delivery`]), to present the same delivery again (a
    /// direct upload session's completion mints its status token this way).
    pub fn from_stored(stored: &str) -> Self {
        DeliveryKey(stored.to_owned())
    }

    /// A request that carries no delivery id (an unsigned sender): a fresh random key, so every
    /// such request is its own job.
    pub fn unkeyed() -> Self {
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        DeliveryKey(format!("rnd:{}", hex::encode(raw)))
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hex SHA-256 of a body, the job's payload hash.
pub fn payload_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The capability in a job's `status_url`. Only its SHA-256 is stored; `Debug` is redacted.
pub struct StatusToken(SecretString);

impl StatusToken {
    /// 32 random bytes, base64url.
    pub fn generate() -> Self {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        StatusToken(SecretString::from(text))
    }

    /// A token as presented by a caller.
    pub fn from_presented(token: &str) -> Self {
        StatusToken(SecretString::from(token.to_owned()))
    }

    /// The token, for building the status URL only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Hex SHA-256 of the token, as stored on the job.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.expose_secret().as_bytes()))
    }
}

impl fmt::Debug for StatusToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusToken([redacted])")
    }
}

/// Where a job is. Only moves forward; `Done` and `Failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Recorded and queued; no worker has started it.
    Accepted,
    /// A worker is uploading (or was, and the job will be retried).
    Uploading,
    /// The file(s) landed; the job's result holds the answer.
    Done,
    /// The job ended without a file; the job's error says why.
    Failed,
}

impl JobStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Accepted => "accepted",
            JobStatus::Uploading => "uploading",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accepted" => JobStatus::Accepted,
            "uploading" => JobStatus::Uploading,
            "done" => JobStatus::Done,
            "failed" => JobStatus::Failed,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Failed)
    }
}

/// Why a job failed, in the shape of every API error (`{error, message}`) plus Microsoft's code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// The [`Kind`] code, e.g. `conflict` or `needs_consent`.
    pub error: String,
    /// What went wrong, for the sender.
    pub message: String,
    /// Microsoft's error code, when Microsoft gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microsoft_code: Option<String>,
    /// Why Microsoft refused the token (the doctor's diagnosis), for 401/403 answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Value>,
}

impl JobFailure {
    /// A failure of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        JobFailure {
            error: kind.code().to_owned(),
            message: message.into(),
            microsoft_code: None,
            diagnosis: None,
        }
    }

    /// The `{error, message, microsoft_code}` of an API error.
    pub fn from_api(e: &ApiError) -> Self {
        JobFailure {
            error: e.code().to_owned(),
            message: e.message.clone(),
            microsoft_code: e
                .details
                .get("microsoft_code")
                .and_then(|c| c.as_str())
                .map(str::to_owned),
            diagnosis: e.details.get("diagnosis").cloned(),
        }
    }

    /// The failure as an [`ApiError`] (what a status read shows).
    pub fn to_api_error(&self) -> ApiError {
        let kind = Kind::ALL
            .iter()
            .copied()
            .find(|k| k.code() == self.error)
            .unwrap_or(Kind::Internal);
        let mut e = ApiError::new(kind, self.message.clone());
        if let Some(c) = &self.microsoft_code {
            e = e.with_detail("microsoft_code", c.clone());
        }
        if let Some(d) = &self.diagnosis {
            e = e.with_detail("diagnosis", d.clone());
        }
        e
    }
}

/// Bytes moved so far, over all of a job's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes stored in the target so far.
    pub done: u64,
    /// All bytes of the job, when known (a `source_url` may not say).
    pub total: Option<u64>,
}

/// The record of a `callback_url` delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackRecord {
    /// The `webhook-id` the callback was signed with.
    pub id: String,
    /// The final HTTP status, or `None` when no answer came.
    pub status: Option<u16>,
    /// Attempts made.
    pub attempts: u32,
    /// Whether the receiver took it (2xx).
    pub delivered: bool,
    /// When the last attempt ended (Unix seconds).
    pub at: i64,
}

/// A resumable upload's checkpoint: which file, and where its upload session and source stand.
/// `Debug` never shows the Graph session URL (see [`SessionUrl`]).
///
/// [`SessionUrl`]: crate::upload::resume::SessionUrl
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The file's index in the job.
    pub file: usize,
    /// The session and the offset the target holds.
    #[serde(flatten)]
    pub state: ResumeState,
    /// The offset the source is read from next (the same as the target's: a chunk read but not
    /// stored is read again).
    pub source_offset: u64,
    /// Times this file started again from byte 0 (an origin that ignored `Range`, an expired
    /// Graph session); bounded, so such a file cannot loop from invocation to invocation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Checkpoint {
    /// What a status read shows: the file, the target, the offsets; never the session URL.
    pub fn to_status(&self) -> Value {
        let target = match &self.state.session {
            Some(Session::Sharepoint { .. }) => "sharepoint",
            Some(Session::Graph { .. }) => "graph",
            None => "none",
        };
        serde_json::json!({
            "file": self.file,
            "target": target,
            "bytes_stored": self.state.offset,
            "source_offset": self.source_offset,
            "bytes_total": self.state.total,
            "restarts": self.restarts,
        })
    }
}

/// A worker's hold on a job, proven on every write by `owner` and `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job: JobId,
    /// Who holds it (the worker's invocation id).
    pub owner: String,
    /// Incremented on every taking; a write with an older generation is refused.
    pub generation: u64,
    /// When the lease lapses and another worker may take the job.
    pub until: OffsetDateTime,
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The id.
    pub id: JobId,
    /// The connection it uploads to.
    pub connection: String,
    /// The delivery key (`wh:…` or `gh:…`).
    pub delivery: String,
    /// Hex SHA-256 of the delivery's body: the same key with another body is refused.
    pub payload_hash: String,
    /// Where it is.
    pub status: JobStatus,
    /// Worker attempts started.
    pub attempts: u32,
    /// Bytes moved.
    pub progress: Progress,
    /// The answer once done (what the synchronous path would have answered with 201).
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<JobFailure>,
    /// Answers for files already stored, by file index (so a retry skips them).
    pub files_done: Vec<Option<Value>>,
    /// The callback delivery, once tried.
    pub callback: Option<CallbackRecord>,
    /// The current lease holder and its expiry, if any.
    pub lease: Option<(String, OffsetDateTime)>,
    /// Lease generation.
    pub generation: u64,
    /// Where the file in progress stands, saved between chunks.
    pub checkpoint: Option<Checkpoint>,
    /// What happened on the way that a sender should know (a restart from byte 0 and why).
    pub notes: Vec<String>,
    /// Invocations that ran out of time and handed the job on (not failed attempts).
    pub handoffs: u32,
    /// When the job was created.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
    /// When DynamoDB may delete it (TTL, Unix seconds).
    pub expires_at: i64,
    token_hashes: Vec<String>,
}

impl Job {
    /// Whether `token` opens this job's status (constant-time against each stored hash).
    pub fn token_matches(&self, token: &StatusToken) -> bool {
        let h = token.hash();
        self.token_hashes
            .iter()
            .any(|s| bool::from(s.as_bytes().ct_eq(h.as_bytes())))
    }

    /// The status body: `{job, status, attempts, progress, result | error, callback}`.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "job": self.id.as_str(),
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "progress": {"bytes_done": self.progress.done, "bytes_total": self.progress.total},
            "created_at": self.created_at.unix_timestamp(),
            "updated_at": self.updated_at.unix_timestamp(),
        });
        if let Some(r) = &self.result {
            v["result"] = r.clone();
        }
        if let Some(e) = &self.error {
            v["error"] = e.to_api_error().to_json();
        }
        if let Some(c) = &self.callback {
            v["callback"] = serde_json::to_value(c).unwrap_or(Value::Null);
        }
        if let Some(cp) = &self.checkpoint
            && !self.status.is_final()
        {
            v["resume"] = cp.to_status();
        }
        if self.handoffs > 0 {
            v["handoffs"] = self.handoffs.into();
        }
        if !self.notes.is_empty() {
            v["notes"] = self.notes.clone().into();
        }
        v
    }
}

/// What a receiver records for a delivery.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The connection.
    pub connection: String,
    /// The delivery key.
    pub delivery: DeliveryKey,
    /// Hex SHA-256 of the body ([`payload_hash`]).
    pub payload_hash: String,
    /// All bytes of the job, when known.
    pub bytes_total: Option<u64>,
    /// How long to keep the record after its last change.
    pub retention: Duration,
}

impl NewJob {
    /// The id the job will have.
    pub fn id(&self) -> JobId {
        JobId::of(&self.connection, &self.delivery)
    }
}

/// The answer to [`JobStore::create`].
#[derive(Debug)]
pub struct Created {
    /// The job (new, or the one this delivery made before).
    pub job: Job,
    /// A token that opens the job's status; a repeated delivery gets a token of its own.
    pub token: StatusToken,
    /// True when this delivery had already made the job.
    pub existed: bool,
}

/// How a job ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored; the answer body.
    Done(Value),
    /// Not stored, and retrying would not help.
    Failed(JobFailure),
}

/// Why a job operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// The text is not a job id.
    #[error("not a job id")]
    BadId,
    /// There is no such job (or it expired).
    #[error("no such job")]
    NotFound,
    /// The delivery key was used before with another body.
    #[error("this delivery id was already used for a different body")]
    IdReused,
    /// Another worker holds the job until `until`.
    #[error("the job is leased by another worker")]
    LeaseHeld {
        /// When the lease lapses.
        until: OffsetDateTime,
    },
    /// The job has ended; nothing may change it.
    #[error("the job has already ended ({})", .0.status.as_str())]
    Finished(Box<Job>),
    /// The lease was lost (taken over, or expired and re-taken): this worker must stop.
    #[error("the lease on the job was lost")]
    LeaseLost,
    /// DynamoDB throttled or failed; retry later.
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// A stored item cannot be read (a bug or a hand edit).
    #[error("job record unreadable: {0}")]
    Corrupt(String),
}

impl JobError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobError::Unavailable(_) | JobError::LeaseHeld { .. })
    }
}

/// The jobs port: records deliveries, hands out leases, moves status forward.
///
/// Every write after `create` is conditional, so two workers never both write a job and a
/// finished job never changes.
pub trait JobStore: Send + Sync {
    /// Records `new` unless its delivery already made a job; either way answers the job and a
    /// fresh status token. The same key with another payload hash is [`JobError::IdReused`].
    fn create<'a>(
        &'a self,
        new: &'a NewJob,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Created, JobError>>;

    /// Reads a job (strongly consistent).
    fn get<'a>(&'a self, id: &'a JobId) -> BoxFuture<'a, Result<Job, JobError>>;

    /// Takes the job for `owner` until `until`, if it has not ended and no other lease is live;
    /// counts an attempt and marks it uploading.
    fn acquire<'a>(
        &'a self,
        id: &'a JobId,
        owner: &'a str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(Lease, Job), JobError>>;

    /// Records file `index`'s answer and the bytes done, under the lease.
    fn file_done<'a>(
        &'a self,
        lease: &'a Lease,
        index: usize,
        answer: &'a Value,
        progress: Progress,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>>;

    /// Ends the job under the lease (and releases the lease).
    fn finish<'a>(
        &'a self,
        lease: &'a Lease,
        outcome: &'a Outcome,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Job, JobError>>;

    /// Saves `checkpoint` (and the bytes done, and `note` if any) under the lease: refused with
    /// [`JobError::LeaseLost`] once another worker took the job.
    fn checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        checkpoint: Option<&'a Checkpoint>,
        progress: Progress,
        note: Option<&'a str>,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>>;

    /// Gives the lease back because the invocation's time ran out: counts a hand-off instead of
    /// an attempt, so the next invocation continues from the checkpoint.
    fn hand_off<'a>(
        &'a self,
        lease: &'a Lease,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>>;

    /// Gives the lease back without ending the job, so the next delivery can take it at once.
    fn release<'a>(
        &'a self,
        lease: &'a Lease,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>>;

    /// Fails a job without a lease: for the dead-letter path, where no worker can finish it.
    fn abandon<'a>(
        &'a self,
        id: &'a JobId,
        failure: &'a JobFailure,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Job, JobError>>;

    /// Records the callback delivery on a finished job.
    fn record_callback<'a>(
        &'a self,
        id: &'a JobId,
        record: &'a CallbackRecord,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_keyed_by_connection() {
        let d = DeliveryKey::webhook_id("msg_1");
        assert_eq!(JobId::of("a", &d), JobId::of("a", &d));
        assert_ne!(JobId::of("a", &d), JobId::of("b", &d));
        assert_ne!(
            JobId::of("a", &d),
            JobId::of("a", &DeliveryKey::github("msg_1", "00"))
        );
        assert!(JobId::parse(JobId::of("a", &d).as_str()).is_ok());
        assert!(JobId::parse("../etc").is_err());
        assert!(JobId::parse(&"A".repeat(32)).is_err());
    }

    #[test]
    fn status_tokens_are_redacted_and_hashed() {
        let t = StatusToken::generate();
        assert_eq!(format!("{t:?}"), "StatusToken([redacted])");
        assert_eq!(t.hash().len(), 64);
        assert_ne!(t.hash(), StatusToken::generate().hash());
        assert_eq!(StatusToken::from_presented(t.expose()).hash(), t.hash());
    }

    #[test]
    fn failures_keep_the_api_shape() {
        let mut f = JobFailure::new(Kind::Conflict, "a file already exists at /x");
        f.microsoft_code = Some("-2130575257".into());
        let v = f.to_api_error().to_json();
        assert_eq!(v["error"], "conflict");
        assert_eq!(v["microsoft_code"], "-2130575257");
        assert_eq!(f.to_api_error().status().as_u16(), 409);
    }
}
