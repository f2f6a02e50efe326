//! Direct upload sessions: a website's file goes from the browser straight to the staging
//! bucket, then becomes a job like any other upload.
//!
//! ```text
//! POST /uploads/{connection}/sessions            {name, folder, size, conflict, sha256?, metadata?}
//!   signed like an upload → 201 {session, status_url, complete_url, upload: put | multipart}
//! PUT  <presigned S3 URL(s)>                     the bytes (no spbridge credentials involved)
//! POST /uploads/{connection}/sessions/{id}/complete   {} or {parts: [{part_number, etag}]}
//!   signed → the object is checked (exists, declared size, SHA-256) → job queued → 202
//! ```
//!
//! The session id is the job id: the job is recorded (status `accepted`, nothing queued) when
//! the session is created, so its `status_url` works from the start and a repeated creation
//! (the same `webhook-id`) finds the same session and gets fresh URLs for it. What completion
//! needs (the checked name, folder, conflict mode, metadata, size, multipart upload id) is kept
//! in a small manifest object beside the upload in the staging bucket, so the bucket's
//! lifecycle rule ends an abandoned session with its bytes.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Digest as _;

use super::body::{check_metadata_policy, json_metadata};
use super::pipeline::{
    Answer, IngestRequest, ReceiveError, Receiver, jobs_error, refused, status_url,
};
use super::{ConflictMode, FileName, IngestError, Limits, NamePolicy, SubPath};
use crate::api::{ApiError, Kind};
use crate::config::{S3_MAX_PUT_BYTES, SessionSettings};
use crate::jobs::queue::{JobBody, JobFile, JobMessage, staged_key};
use crate::jobs::staging::{DirectError, Part, Presigned};
use crate::jobs::{DeliveryKey, JobError, JobFailure, JobId, JobStatus, NewJob};

/// The largest file a session takes: Microsoft's limit for one file in SharePoint and OneDrive
/// (250 GB). A connection's `max_file_bytes` may lower it.
pub const MAX_SESSION_BYTES: u64 = 250_000_000_000;
/// Most parts one session answers with (about 1.3 MB of URLs, well inside Lambda's 6 MB
/// answer); larger files get larger parts.
pub const MAX_PARTS: u64 = 1000;
/// How long a session can be completed: the staging bucket's lifecycle rule expires its
/// objects after 3 days (`template.yaml`).
pub const SESSION_LIFETIME: &str = "3 days";

/// How a file of a given size is uploaded to S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One presigned PUT of the whole file.
    Single,
    /// S3 multipart: `parts` presigned part PUTs of `part_bytes` each (the last one smaller).
    Multipart {
        /// Size of every part but the last.
        part_bytes: u64,
        /// Number of parts.
        parts: u64,
    },
}

/// Chooses single PUT or multipart for `size` bytes: multipart above
/// `single_put_max_bytes` (5 GiB, S3's single PUT limit, unless lowered), with parts of at
/// least `part_bytes`, grown in whole MiB so that no more than [`MAX_PARTS`] are needed.
pub fn plan(size: u64, settings: &SessionSettings) -> Plan {
    if size <= settings.single_put_max_bytes.min(S3_MAX_PUT_BYTES) {
        return Plan::Single;
    }
    const MIB: u64 = 1024 * 1024;
    let least = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    let part_bytes = settings.part_bytes.max(least).min(S3_MAX_PUT_BYTES);
    Plan::Multipart {
        part_bytes,
        parts: size.div_ceil(part_bytes),
    }
}

/// A checked `POST /uploads/{connection}/sessions` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The checked (or sanitized) file name.
    pub name: FileName,
    /// Sub-folder inside the connection's destination, if any.
    pub folder: Option<SubPath>,
    /// The file's exact size in bytes.
    pub size: u64,
    /// What to do if the name is taken.
    pub conflict: ConflictMode,
    /// The file's SHA-256, if the sender gave it.
    pub sha256: Option<[u8; 32]>,
    /// Column values to set on the stored file.
    pub metadata: BTreeMap<String, String>,
}

const SESSION_FIELDS: &str = "name, folder, size, conflict, sha256, metadata";

/// Parses a session request; every refusal names the field.
pub fn parse_session_request(
    body: &[u8],
    limits: &Limits,
    names: &NamePolicy,
) -> Result<SessionRequest, IngestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(IngestError::Json(format!(
            "expected an object with {SESSION_FIELDS}"
        )));
    };
    let text = |key: &str, v: Value| match v {
        Value::String(s) => Ok(s),
        _ => Err(IngestError::bad_field(key, "must be a string")),
    };
    let (mut name, mut folder, mut size, mut sha256) = (None, None, None, None);
    let mut conflict = ConflictMode::default();
    let mut metadata = BTreeMap::new();
    for (key, value) in obj {
        match key.as_str() {
            "name" => name = Some(text("name", value)?),
            "folder" => folder = Some(text("folder", value)?),
            "size" => {
                size = Some(value.as_u64().ok_or_else(|| {
                    IngestError::bad_field(
                        "size",
                        "must be the file's size in bytes (a whole number)",
                    )
                })?)
            }
            "conflict" => {
                conflict = text("conflict", value)?
                    .parse()
                    .map_err(|e| IngestError::bad_field("conflict", e))?
            }
            "sha256" => sha256 = Some(parse_sha256(&text("sha256", value)?)?),
            "metadata" => metadata = json_metadata(value, "", limits)?,
            other => {
                return Err(IngestError::bad_field(
                    other,
                    format!("unknown field; expected {SESSION_FIELDS}"),
                ));
            }
        }
    }
    let name = name.ok_or_else(|| IngestError::bad_field("name", "is required"))?;
    let name = names
        .file_name(&name)
        .map_err(|e| IngestError::name("name", e))?;
    // As in `POST /upload`: empty means the destination itself; anything else is checked.
    let folder = match folder.as_deref() {
        None | Some("") => None,
        Some(f) => Some(
            names
                .sub_path(f)
                .map_err(|e| IngestError::name("folder", e))?,
        ),
    };
    let size = size.ok_or_else(|| IngestError::bad_field("size", "is required"))?;
    check_metadata_policy(&metadata, names)?;
    Ok(SessionRequest {
        name,
        folder,
        size,
        conflict,
        sha256,
        metadata,
    })
}

fn parse_sha256(hex_text: &str) -> Result<[u8; 32], IngestError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut out).map_err(|_| {
        IngestError::bad_field("sha256", "must be the file's SHA-256 as 64 hex characters")
    })?;
    Ok(out)
}

/// A completion body: `{}` for a single PUT, `{"parts": [{"part_number", "etag"}]}` for
/// multipart.
fn parse_parts(body: &[u8]) -> Result<Option<Vec<Part>>, IngestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(IngestError::Json(
            "expected an object: {} or {\"parts\": [...]}".into(),
        ));
    };
    if let Some(other) = obj.keys().find(|k| *k != "parts") {
        return Err(IngestError::bad_field(
            other.as_str(),
            "unknown field; expected parts",
        ));
    }
    let Some(parts) = obj.remove("parts") else {
        return Ok(None);
    };
    let Value::Array(items) = parts else {
        return Err(IngestError::bad_field("parts", "must be an array"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let label = |f: &str| format!("parts[{i}].{f}");
            let number = item
                .get("part_number")
                .and_then(Value::as_u64)
                .and_then(|n| i32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| IngestError::bad_field(label("part_number"), "must be 1 or more"))?;
            let etag = item
                .get("etag")
                .and_then(Value::as_str)
                .filter(|e| !e.trim().is_empty())
                .ok_or_else(|| {
                    IngestError::bad_field(
                        label("etag"),
                        "must be the ETag S3 answered the part with",
                    )
                })?;
            Ok(Part {
                number,
                etag: etag.trim().to_owned(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// What completion needs, kept beside the upload as `{session}/session`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    connection: String,
    /// The creating request's delivery key and payload hash: presented again at completion
    /// to mint a status token for the same job.
    delivery: String,
    payload_hash: String,
    /// The checked file; its body is `Staged { key: "{session}/0", size }`.
    file: JobFile,
    /// The declared SHA-256, base64 (as S3 reports checksums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<Multipart>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Multipart {
    upload_id: String,
    part_bytes: u64,
    parts: u64,
}

impl Manifest {
    fn key(&self) -> &str {
        match &self.file.body {
            JobBody::Staged { key, .. } => key,
            _ => "",
        }
    }

    fn size(&self) -> u64 {
        self.file.size().unwrap_or(0)
    }

    fn new_job(&self, retention: Duration) -> NewJob {
        NewJob {
            connection: self.connection.clone(),
            delivery: DeliveryKey::from_stored(&self.delivery),
            payload_hash: self.payload_hash.clone(),
            bytes_total: Some(self.size()),
            retention,
        }
    }
}

fn manifest_key(session: &JobId) -> String {
    format!("{session}/session")
}

/// Why a session call was refused.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    #[error(
        "size: the file is {size} bytes; this connection accepts files of at most {limit} bytes"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "sha256: S3 checks a SHA-256 only for files sent in one PUT (up to 5 GiB); leave it out \
         for larger files"
    )]
    Sha256WithMultipart,
    #[error("no such upload session (a session can be completed for {SESSION_LIFETIME})")]
    NotFound,
    #[error(
        "nothing has been uploaded for this session yet: PUT the file to its upload URL (or all \
         its parts), then complete it"
    )]
    NotUploaded,
    #[error(
        "parts: this is a multipart session; send {{\"parts\": [{{\"part_number\", \"etag\"}}, ...]}}"
    )]
    PartsMissing,
    #[error("parts: this session has {expected} parts; {got} were listed")]
    PartCount { expected: u64, got: usize },
    #[error(
        "this session's multipart upload no longer exists (completed with other parts, or expired); create a new session"
    )]
    UploadGone,
    #[error("parts: S3 refused the part list ({0})")]
    PartsRejected(String),
    #[error(
        "the uploaded file is {actual} bytes but the session declared {declared}; nothing was stored, create a new session"
    )]
    SizeMismatch { actual: u64, declared: u64 },
    #[error(
        "the uploaded file's SHA-256 differs from the session's sha256; nothing was stored, create a new session"
    )]
    Sha256Mismatch,
    #[error("this session was already completed; its job's status_url shows the upload")]
    Completed,
    #[error("staging bucket: {0}")]
    Staging(DirectError),
    #[error("the session's manifest is unreadable: {0}")]
    Corrupt(String),
}

impl From<IngestError> for SessionError {
    fn from(e: IngestError) -> Self {
        SessionError::Receive(ReceiveError::Ingest(e))
    }
}

impl From<&SessionError> for ApiError {
    fn from(e: &SessionError) -> Self {
        let message = e.to_string();
        match e {
            SessionError::Receive(r) => ApiError::from(r),
            SessionError::TooLarge { .. } => ApiError::new(Kind::PayloadTooLarge, message),
            SessionError::Sha256WithMultipart
            | SessionError::PartsMissing
            | SessionError::PartCount { .. }
            | SessionError::PartsRejected(_) => ApiError::new(Kind::BadRequest, message),
            SessionError::NotFound => ApiError::new(Kind::NotFound, message),
            SessionError::NotUploaded | SessionError::Completed | SessionError::UploadGone => {
                ApiError::new(Kind::Conflict, message)
            }
            SessionError::SizeMismatch { .. } | SessionError::Sha256Mismatch => {
                ApiError::new(Kind::Unprocessable, message)
            }
            SessionError::Staging(DirectError::Unsupported) => {
                ApiError::new(Kind::ConfigurationError, message)
            }
            SessionError::Staging(_) | SessionError::Corrupt(_) => ApiError::new(
                Kind::Unavailable,
                "the staging bucket is unavailable; retry later",
            )
            .with_retry_after(Some(Duration::from_secs(2))),
        }
    }
}

fn staging(e: DirectError) -> SessionError {
    SessionError::Staging(e)
}

impl Receiver {
    /// `POST /uploads/{connection}/sessions`: 201 with where to PUT the bytes, or a 4xx/5xx
    /// naming the problem. A repeated request (same delivery) answers the same session with
    /// fresh URLs.
    pub async fn create_session(&self, req: IngestRequest<'_>) -> Answer {
        match self.run_create(&req).await {
            Ok(a) => a,
            Err(e) => refused(ApiError::from(&e), &e, &req, "upload session"),
        }
    }

    /// `POST /uploads/{connection}/sessions/{session}/complete`: checks the uploaded object and
    /// queues its job (202 with the status URL). Completing again answers the same job.
    pub async fn complete_session(&self, req: IngestRequest<'_>, session: &str) -> Answer {
        match self.run_complete(&req, session).await {
            Ok(a) => a,
            Err(e) => refused(ApiError::from(&e), &e, &req, "session completion"),
        }
    }

    async fn run_create(&self, req: &IngestRequest<'_>) -> Result<Answer, SessionError> {
        let now = (self.clock)();
        let connection = self.connection_of(req)?;
        let sender = self.authenticate(&connection, req, now).await?;
        if req.body.len() > self.limits.max_body_bytes {
            return Err(IngestError::PayloadTooLarge {
                what: "request body",
                limit: self.limits.max_body_bytes,
            }
            .into());
        }
        let names = NamePolicy::for_connection(&sender.options);
        let asked = parse_session_request(&req.body, &self.limits, &names)?;
        let limit = sender
            .options
            .max_file_bytes
            .map_or(MAX_SESSION_BYTES, |m| m.min(MAX_SESSION_BYTES));
        if asked.size > limit {
            return Err(SessionError::TooLarge {
                size: asked.size,
                limit,
            });
        }
        let settings = self.config().ingest.sessions;
        let plan = plan(asked.size, &settings);
        if asked.sha256.is_some() && plan != Plan::Single {
            return Err(SessionError::Sha256WithMultipart);
        }
        let new = NewJob {
            connection: connection.clone(),
            delivery: sender.delivery,
            payload_hash: sender.payload_hash.clone(),
            bytes_total: Some(asked.size),
            retention: self.retention,
        };
        let created = match self.jobs.create(&new, now).await {
            Err(JobError::IdReused) if sender.github => {
                return Err(ReceiveError::GitHubReplay.into());
            }
            other => other.map_err(jobs_error)?,
        };
        let session = created.job.id.clone();
        if created.job.status != JobStatus::Accepted {
            return Err(SessionError::Completed);
        }
        let existing = if created.existed {
            self.manifest(&session).await?
        } else {
            None
        };
        let manifest = match existing {
            Some(m) => m,
            None => {
                let key = staged_key(&session, 0);
                let multipart = match plan {
                    Plan::Single => None,
                    Plan::Multipart { part_bytes, parts } => Some(Multipart {
                        upload_id: self.staging.start_multipart(&key).await.map_err(staging)?,
                        part_bytes,
                        parts,
                    }),
                };
                let manifest = Manifest {
                    connection: connection.clone(),
                    delivery: new.delivery.as_str().to_owned(),
                    payload_hash: new.payload_hash.clone(),
                    file: JobFile {
                        name: asked.name.as_str().to_owned(),
                        folder: asked
                            .folder
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default(),
                        conflict: asked.conflict.into(),
                        metadata: asked.metadata,
                        body: JobBody::Staged {
                            key,
                            size: asked.size,
                            etag: None,
                        },
                    },
                    sha256: asked
                        .sha256
                        .map(|s| base64::engine::general_purpose::STANDARD.encode(s)),
                    multipart,
                };
                let text = serde_json::to_vec(&manifest)
                    .map_err(|e| SessionError::Corrupt(e.to_string()))?;
                let digest = sha2::Sha256::digest(&text).into();
                self.staging
                    .put(&manifest_key(&session), Bytes::from(text), digest)
                    .await
                    .map_err(|e| staging(DirectError::Unavailable(e.to_string())))?;
                manifest
            }
        };
        let ttl = settings.url_ttl;
        let upload = self.upload_targets(&manifest, ttl).await?;
        tracing::info!(job = %session, connection, size = manifest.size(), repeated = created.existed, request_id = req.request_id, "upload session created");
        let base = req.base_url.unwrap_or("").trim_end_matches('/');
        let status_url = status_url(req.base_url, &session, &created.token);
        let expires_at = (now + ttl).unix_timestamp();
        let mut headers = vec![("location", status_url.clone())];
        if created.existed {
            headers.push(("idempotent-replayed", "true".into()));
        }
        Ok(Answer {
            status: if created.existed { 200 } else { 201 },
            body: json!({
                "session": session.as_str(),
                "job": session.as_str(),
                "status": created.job.status.as_str(),
                "status_url": status_url,
                "complete_url": format!("{base}/uploads/{connection}/sessions/{session}/complete"),
                "expires_at": expires_at,
                "upload": upload,
            }),
            headers,
        })
    }

    /// The presigned request(s) for a session's bytes.
    async fn upload_targets(&self, m: &Manifest, ttl: Duration) -> Result<Value, SessionError> {
        let key = m.key();
        let size = m.size();
        let Some(mp) = &m.multipart else {
            let put = self
                .staging
                .presign_put(key, size, m.sha256.as_deref(), ttl)
                .await
                .map_err(staging)?;
            return Ok(
                json!({"method": "PUT", "size": size, "url": put.expose_url(),
                             "headers": headers_json(&put)}),
            );
        };
        let mut parts = Vec::new();
        for n in 1..=mp.parts {
            let start = (n - 1) * mp.part_bytes;
            let len = mp.part_bytes.min(size - start);
            let number =
                i32::try_from(n).map_err(|_| SessionError::Corrupt("part number".into()))?;
            let put = self
                .staging
                .presign_part(key, &mp.upload_id, number, len, ttl)
                .await
                .map_err(staging)?;
            parts.push(json!({"part_number": n, "offset": start, "size": len,
                              "url": put.expose_url(), "headers": headers_json(&put)}));
        }
        Ok(
            json!({"method": "multipart", "size": size, "part_bytes": mp.part_bytes,
                  "part_count": mp.parts, "parts": parts}),
        )
    }

    async fn manifest(&self, session: &JobId) -> Result<Option<Manifest>, SessionError> {
        let Some(bytes) = self
            .staging
            .read(&manifest_key(session))
            .await
            .map_err(staging)?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SessionError::Corrupt(e.to_string()))
    }

    async fn run_complete(
        &self,
        req: &IngestRequest<'_>,
        session: &str,
    ) -> Result<Answer, SessionError> {
        let now = (self.clock)();
        let connection = self.connection_of(req)?;
        let sender = self.authenticate(&connection, req, now).await?;
        let id = JobId::parse(session).map_err(|_| SessionError::NotFound)?;
        let manifest = match self.manifest(&id).await? {
            Some(m) if m.connection == connection => m,
            _ => return Err(SessionError::NotFound),
        };
        let new = manifest.new_job(self.retention);
        if new.id() != id {
            return Err(SessionError::NotFound);
        }
        let job = match self.jobs.get(&id).await {
            Ok(j) => j,
            Err(JobError::NotFound) => return Err(SessionError::NotFound),
            Err(e) => return Err(jobs_error(e).into()),
        };
        if job.status == JobStatus::Accepted {
            let parts = parse_parts(&req.body)?;
            let checked = self.check_upload(&manifest, parts, &id, now).await?;
            let mut file = manifest.file.clone();
            if let JobBody::Staged { etag, .. } = &mut file.body {
                *etag = checked;
            }
            let msg = JobMessage {
                job: id.clone(),
                connection: connection.clone(),
                files: vec![file],
                callback_url: sender.callback_url,
                max_file_bytes: sender.options.max_file_bytes,
            };
            self.queue
                .send(&msg)
                .await
                .map_err(|e| ReceiveError::Jobs(e.to_string()))?;
        }
        // The job exists since the session was made: presenting its delivery again only mints
        // a status token for this answer.
        let mut created = self.jobs.create(&new, now).await.map_err(jobs_error)?;
        created.existed = job.status != JobStatus::Accepted;
        tracing::info!(job = %id, connection, repeated = created.existed, request_id = req.request_id, "upload session completed");
        Ok(self.job_answer(created, req).await)
    }

    /// Joins a multipart upload, then checks the object: present, of the declared size and
    /// SHA-256. A wrong object is deleted and its job failed, so nothing is stored. Answers the
    /// checked object's `ETag`, which pins the version the worker may read.
    async fn check_upload(
        &self,
        m: &Manifest,
        parts: Option<Vec<Part>>,
        id: &JobId,
        now: time::OffsetDateTime,
    ) -> Result<Option<String>, SessionError> {
        let key = m.key();
        if let Some(mp) = &m.multipart {
            let mut parts = parts.ok_or(SessionError::PartsMissing)?;
            // S3 wants the list in ascending order; parallel uploads finish in any order.
            parts.sort_by_key(|p| p.number);
            if parts.len() as u64 != mp.parts {
                return Err(SessionError::PartCount {
                    expected: mp.parts,
                    got: parts.len(),
                });
            }
            let joined = self
                .staging
                .complete_multipart(key, &mp.upload_id, &parts)
                .await;
            let object = self.staging.head(key).await.map_err(staging)?;
            match (joined, object) {
                (Ok(()), _) => {}
                (Err(DirectError::Rejected(why)), _) => {
                    return Err(SessionError::PartsRejected(why));
                }
                // Joined before (a completion that failed later), or joined now with the answer
                // lost or unreadable: the object is there, and is checked below.
                (Err(DirectError::Missing(_) | DirectError::Unavailable(_)), Some(_)) => {}
                (Err(DirectError::Missing(_)), None) => return Err(SessionError::UploadGone),
                (Err(e), _) => return Err(staging(e)),
            }
        }
        let Some(object) = self.staging.head(key).await.map_err(staging)? else {
            return Err(SessionError::NotUploaded);
        };
        let etag = object.etag.clone();
        let wrong = if object.size != m.size() {
            Some(SessionError::SizeMismatch {
                actual: object.size,
                declared: m.size(),
            })
        } else {
            match (&m.sha256, object.sha256_base64) {
                (None, _) => None,
                // AWS S3 verified the signed checksum header on the PUT and recorded it.
                (Some(want), Some(got)) => (*want != got).then_some(SessionError::Sha256Mismatch),
                // A store that ignores checksums (moto, some S3-compatible ones): read it once.
                (Some(want), None) => {
                    let got = self.staging.sha256(key).await.map_err(staging)?;
                    (*want != got).then_some(SessionError::Sha256Mismatch)
                }
            }
        };
        let Some(wrong) = wrong else {
            return Ok(etag);
        };
        if let Err(e) = self.staging.delete(key).await {
            tracing::warn!(job = %id, error = %e, "could not delete a refused session upload; the lifecycle rule will");
        }
        let failure = JobFailure::from_api(&ApiError::from(&wrong));
        match self.jobs.abandon(id, &failure, now).await {
            Ok(_) | Err(JobError::Finished(_)) => Err(wrong),
            Err(e) => Err(jobs_error(e).into()),
        }
    }
}

fn headers_json(p: &Presigned) -> Value {
    Value::Object(
        p.headers
            .iter()
            .map(|(n, v)| (n.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;
    const MIB: u64 = 1024 * 1024;

    #[test]
    fn multipart_only_above_five_gib_with_bounded_part_counts() {
        let s = SessionSettings::default();
        assert_eq!(plan(0, &s), Plan::Single);
        assert_eq!(plan(5 * GIB, &s), Plan::Single);
        assert_eq!(
            plan(5 * GIB + 1, &s),
            Plan::Multipart {
                part_bytes: 64 * MIB,
                parts: 81
            }
        );
        // 250 GB needs bigger parts to stay within MAX_PARTS.
        let Plan::Multipart { part_bytes, parts } = plan(MAX_SESSION_BYTES, &s) else {
            panic!("multipart")
        };
        assert!(parts <= MAX_PARTS && part_bytes * parts >= MAX_SESSION_BYTES);
        assert_eq!(part_bytes % MIB, 0);
        // A lowered threshold (tests) cannot raise the single PUT past S3's 5 GiB.
        let small = SessionSettings {
            single_put_max_bytes: 8 * MIB,
            part_bytes: 5 * MIB,
            ..s
        };
        assert_eq!(plan(8 * MIB, &small), Plan::Single);
        assert_eq!(
            plan(12 * MIB, &small),
            Plan::Multipart {
                part_bytes: 5 * MIB,
                parts: 3
            }
        );
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let limits = Limits::default();
        let names = NamePolicy::default();
        let ok = parse_session_request(
            br#"{"name":"a.pdf","folder":"x/y","size":10,"conflict":"replace",
                 "sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                 "metadata":{"Title":"T"}}"#,
            &limits,
            &names,
        )
        .unwrap();
        assert_eq!(ok.name.as_str(), "a.pdf");
        assert_eq!(ok.folder.unwrap().as_str(), "x/y");
        assert_eq!((ok.size, ok.conflict), (10, ConflictMode::Replace));
        assert_eq!(ok.metadata["Title"], "T");
        for (body, field) in [
            (r#"{"size":1}"#, "name"),
            (r#"{"name":"a"}"#, "size"),
            (r#"{"name":"a","size":-1}"#, "size"),
            (r#"{"name":"a","size":"1"}"#, "size"),
            (r#"{"name":"a","size":1,"sha256":"zz"}"#, "sha256"),
            (r#"{"name":"a","size":1,"conflict":"merge"}"#, "conflict"),
            (r#"{"name":"a","size":1,"colour":1}"#, "colour"),
            (r#"{"name":"a/b","size":1}"#, "name"),
            (r#"{"name":"a","folder":"../x","size":1}"#, "folder"),
            (r#"{"name":"a","size":1,"metadata":[]}"#, "metadata"),
        ] {
            let e = parse_session_request(body.as_bytes(), &limits, &names).unwrap_err();
            assert!(e.to_string().starts_with(field), "{body}: {e}");
            assert_eq!(ApiError::from(&e).status().as_u16() / 100, 4, "{body}");
        }
        assert!(matches!(
            parse_session_request(b"[1]", &limits, &names),
            Err(IngestError::Json(_))
        ));
    }

    #[test]
    fn completion_bodies() {
        assert_eq!(parse_parts(b"").unwrap(), None);
        assert_eq!(parse_parts(b"{}").unwrap(), None);
        let p = parse_parts(br#"{"parts":[{"part_number":1,"etag":"\"abc\""}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(p[0].number, 1);
        assert_eq!(p[0].etag, "\"abc\"");
        for (body, field) in [
            (
                r#"{"parts":[{"part_number":0,"etag":"x"}]}"#,
                "parts[0].part_number",
            ),
            (r#"{"parts":[{"part_number":1}]}"#, "parts[0].etag"),
            (r#"{"parts":{}}"#, "parts"),
            (r#"{"etags":[]}"#, "etags"),
        ] {
            let e = parse_parts(body.as_bytes()).unwrap_err();
            assert!(e.to_string().starts_with(field), "{body}: {e}");
        }
    }

    #[test]
    fn session_errors_answer_through_the_one_table() {
        let e = SessionError::SizeMismatch {
            actual: 3,
            declared: 4,
        };
        let api = ApiError::from(&e);
        assert_eq!((api.status().as_u16(), api.code()), (422, "unprocessable"));
        let api = ApiError::from(&SessionError::NotUploaded);
        assert_eq!(api.status().as_u16(), 409);
        let api = ApiError::from(&SessionError::Staging(DirectError::Unavailable(
            "SlowDown".into(),
        )));
        assert_eq!(api.status().as_u16(), 503);
        assert!(!api.to_json().to_string().contains("SlowDown"));
    }
}
