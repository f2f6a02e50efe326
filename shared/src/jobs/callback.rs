//! The final-result callback: a Standard Webhooks POST to the connection's `callback_url`,
//! signed with the connection's webhook secret, retried with bounded backoff.
//!
//! The `webhook-id` is `cb_{job}` on every attempt, so a receiver that deduplicates on it sees
//! one event however often it is delivered.

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use url::Url;

use super::{CallbackRecord, Job, JobStatus};
use crate::upload::source::{SourceUrlPolicy, check_source_url};
use crate::webhook::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookSecret};

/// How callbacks are sent.
#[derive(Debug, Clone)]
pub struct Callbacks {
    http: reqwest::Client,
    /// Attempts, the first included.
    pub attempts: u32,
    /// First backoff; doubles per attempt.
    pub base_delay: Duration,
    /// Longest single wait (also caps a `Retry-After`).
    pub max_delay: Duration,
    /// Whether loopback addresses may be called (local runs and tests only).
    pub allow_loopback: bool,
}

impl Callbacks {
    /// Over `http` (timeouts set, redirects off): 4 attempts, 1 s doubling to at most 30 s.
    pub fn new(http: reqwest::Client) -> Self {
        Callbacks {
            http,
            attempts: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            allow_loopback: false,
        }
    }

    /// The event body for `job`: `{type, timestamp, data}`.
    pub fn payload(job: &Job, now: OffsetDateTime) -> Value {
        let kind = match job.status {
            JobStatus::Done => "upload.completed",
            _ => "upload.failed",
        };
        let ts = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        json!({"type": kind, "timestamp": ts, "data": job.to_json()})
    }

    /// POSTs `job`'s final state to `url`, signed with `secret`; answers what happened.
    pub async fn deliver(&self, url: &Url, secret: &WebhookSecret, job: &Job) -> CallbackRecord {
        let id = format!("cb_{}", job.id);
        let mut record = CallbackRecord {
            id: id.clone(),
            status: None,
            attempts: 0,
            delivered: false,
            at: 0,
        };
        // The same address rules as a source_url: https on 443 (loopback only in tests).
        let policy = SourceUrlPolicy {
            allow_http: false,
            allow_loopback: self.allow_loopback,
        };
        if let Err(reason) = check_source_url(url, policy) {
            tracing::warn!(job = %job.id, %reason, "callback_url refused; not called");
            record.at = OffsetDateTime::now_utc().unix_timestamp();
            return record;
        }
        let now = OffsetDateTime::now_utc();
        let body = Self::payload(job, now).to_string();
        let ts = now.unix_timestamp();
        let signature = webhook::sign(secret, &id, ts, body.as_bytes());
        for attempt in 1..=self.attempts.max(1) {
            record.attempts = attempt;
            let sent = self
                .http
                .post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(HEADER_ID, &id)
                .header(HEADER_TIMESTAMP, ts.to_string())
                .header(HEADER_SIGNATURE, &signature)
                .body(body.clone())
                .send()
                .await;
            let wait = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    record.status = Some(status.as_u16());
                    if status.is_success() {
                        record.delivered = true;
                        break;
                    }
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        break; // The receiver refused it; repeating will not change that.
                    }
                    resp.headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| crate::http::parse_retry_after(v, OffsetDateTime::now_utc()))
                }
                Err(e) => {
                    record.status = None;
                    tracing::info!(job = %job.id, attempt, error = %crate::upload::error::describe_transport(&e), "callback not delivered");
                    None
                }
            };
            if attempt < self.attempts {
                let backoff = self.base_delay.saturating_mul(1 << (attempt - 1).min(16));
                tokio::time::sleep(wait.unwrap_or(backoff).min(self.max_delay)).await;
            }
        }
        record.at = OffsetDateTime::now_utc().unix_timestamp();
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobId, Progress};

    fn job() -> Job {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        Job {
            id: JobId::parse(&"ab".repeat(16)).unwrap(),
            connection: "c".into(),
            delivery: "wh:m".into(),
            payload_hash: String::new(),
            status: JobStatus::Failed,
            attempts: 1,
            progress: Progress::default(),
            result: None,
            error: None,
            files_done: Vec::new(),
            callback: None,
            lease: None,
            generation: 1,
            checkpoint: None,
            notes: Vec::new(),
            handoffs: 0,
            created_at: now,
            updated_at: now,
            expires_at: 0,
            token_hashes: vec!["secret-hash".into()],
        }
    }

    #[tokio::test]
    async fn private_and_plain_http_targets_are_never_called() {
        let secret = WebhookSecret::from_raw(b"k".to_vec()).unwrap();
        let cb = Callbacks::new(reqwest::Client::new());
        for url in [
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest",
            "http://example.com/hook",
            "https://127.0.0.1/hook",
        ] {
            let r = cb.deliver(&url.parse().unwrap(), &secret, &job()).await;
            assert_eq!((r.attempts, r.delivered), (0, false), "{url}");
        }
    }

    #[test]
    fn the_payload_names_the_outcome_and_hides_token_hashes() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let p = Callbacks::payload(&job(), now);
        assert_eq!(p["type"], "upload.failed");
        assert_eq!(p["data"]["job"], "ab".repeat(16));
        assert!(!p.to_string().contains("secret-hash"));
    }
}
