//! The job message and the SQS queue that carries it.
//!
//! A message names the job and holds each file's checked name, folder, conflict mode and
//! metadata, and its body: inline (base64) while the message stays under [`INLINE_LIMIT`],
//! otherwise an S3 key in the staging bucket, or the `source_url` to fetch.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use url::Url;

use super::JobId;

/// Most base64 body bytes carried inside one message. SQS takes 256 KiB per message; the rest
/// is headroom for names, metadata and JSON.
pub const INLINE_LIMIT: usize = 192 * 1024;
/// SQS's message size limit.
pub const SQS_MAX_MESSAGE: usize = 256 * 1024;

/// What to do when the name is taken (the request's `conflict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// Refuse.
    Fail,
    /// Overwrite.
    Replace,
    /// Store under a new name.
    Rename,
}

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobBody {
    /// In the message, base64.
    Inline {
        /// The bytes, standard base64.
        base64: String,
    },
    /// In the staging bucket.
    Staged {
        /// The object key.
        key: String,
        /// Its size.
        size: u64,
        /// The object's `ETag` when someone outside spbridge wrote it (a direct upload): the
        /// worker reads only that version, so bytes PUT again after completion are refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etag: Option<String>,
    },
    /// To be fetched by the worker (the same SSRF rules as the receiver's).
    SourceUrl {
        /// The URL (may carry a signed query; never logged).
        url: Url,
    },
}

/// One file of a job, already checked by the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    /// The checked file name.
    pub name: String,
    /// Sub-folder inside the connection's destination folder (empty for none).
    #[serde(default)]
    pub folder: String,
    /// Conflict mode.
    pub conflict: Conflict,
    /// Column values to set (SharePoint only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The bytes.
    pub body: JobBody,
}

impl JobFile {
    /// The byte count, when known before reading.
    pub fn size(&self) -> Option<u64> {
        match &self.body {
            JobBody::Inline { base64 } => {
                let pad = base64.bytes().rev().take_while(|b| *b == b'=').count();
                Some((base64.len() / 4 * 3).saturating_sub(pad) as u64)
            }
            JobBody::Staged { size, .. } => Some(*size),
            JobBody::SourceUrl { .. } => None,
        }
    }
}

/// The queue message of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The job.
    pub job: JobId,
    /// The connection.
    pub connection: String,
    /// The files, in request order.
    pub files: Vec<JobFile>,
    /// Where to POST the final result, if the connection asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<Url>,
    /// The connection's `max_file_bytes`, which also bounds a `source_url` download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
}

impl JobMessage {
    /// The staged object keys this message refers to.
    pub fn staged_keys(&self) -> impl Iterator<Item = &str> {
        self.files.iter().filter_map(|f| match &f.body {
            JobBody::Staged { key, .. } => Some(key.as_str()),
            _ => None,
        })
    }

    /// All bytes of the job, when every file's size is known.
    pub fn total_bytes(&self) -> Option<u64> {
        self.files.iter().map(JobFile::size).sum()
    }
}

/// The staging key of file `index` of `job`.
pub fn staged_key(job: &JobId, index: usize) -> String {
    format!("{job}/{index}")
}

/// Decodes an inline body.
pub fn inline_bytes(base64: &str) -> Option<Bytes> {
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .ok()
        .map(Bytes::from)
}

/// Why the queue refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The message would exceed SQS's limit (a bug: bodies should have been staged).
    #[error("the job message is {0} bytes, over SQS's limit")]
    TooLarge(usize),
    /// SQS failed or throttled; retry later.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

/// The queue port.
pub trait JobQueue: Send + Sync {
    /// Sends a job message.
    fn send<'a>(&'a self, msg: &'a JobMessage) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Hides a received message for `wait` (its next delivery comes after it).
    fn delay<'a>(
        &'a self,
        receipt: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
}

/// The SQS adapter (a standard queue).
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`.
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
        }
    }
}

fn unavailable<E: ProvideErrorMetadata + std::error::Error, R>(e: &SdkError<E, R>) -> QueueError {
    QueueError::Unavailable(match e.as_service_error() {
        Some(s) => s.code().unwrap_or("error").to_owned(),
        None => "could not reach SQS".to_owned(),
    })
}

impl JobQueue for SqsQueue {
    fn send<'a>(&'a self, msg: &'a JobMessage) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let body =
                serde_json::to_string(msg).map_err(|e| QueueError::Unavailable(e.to_string()))?;
            if body.len() > SQS_MAX_MESSAGE {
                return Err(QueueError::TooLarge(body.len()));
            }
            self.client
                .send_message()
                .queue_url(&self.url)
                .message_body(body)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(&e))
        })
    }

    fn delay<'a>(
        &'a self,
        receipt: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            // SQS allows at most 12 hours.
            let secs = wait.as_secs().clamp(0, 43_200) as i32;
            self.client
                .change_message_visibility()
                .queue_url(&self.url)
                .receipt_handle(receipt)
                .visibility_timeout(secs)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(&e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_sizes_are_known() {
        let id = JobId::of("c", &super::super::DeliveryKey::webhook_id("m"));
        let msg = JobMessage {
            job: id.clone(),
            connection: "c".into(),
            files: vec![JobFile {
                name: "a.txt".into(),
                folder: String::new(),
                conflict: Conflict::Fail,
                metadata: BTreeMap::new(),
                body: JobBody::Inline {
                    base64: "aGVsbG8h".into(),
                },
            }],
            callback_url: None,
            max_file_bytes: None,
        };
        let text = serde_json::to_string(&msg).unwrap();
        assert!(text.contains(r#""kind":"inline""#));
        let back: JobMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.total_bytes(), Some(6));
        assert_eq!(inline_bytes("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(staged_key(&id, 2), format!("{id}/2"));
    }
}
