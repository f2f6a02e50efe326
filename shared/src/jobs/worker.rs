//! The worker: runs queued jobs to their end.
//!
//! For each message: take the job's lease, stream each file's body (inline, staged or
//! `source_url`) into the target, record each file as it lands, end the job, delete its staged
//! bodies, POST the callback. Transient failures hand the message back to SQS with a visibility
//! of exponential backoff (or the service's `Retry-After`, if longer); permanent ones end the
//! job. On the last allowed receive a transient failure ends the job too, so only a worker
//! that dies (timeout, crash) sends a message to the dead-letter queue, whose consumer
//! ([`Received::dead_letter`]) then fails the job.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use super::callback::Callbacks;
use super::queue::{JobBody, JobMessage, JobQueue, inline_bytes};
use super::staging::{Staging, StagingError};
use super::upload::{Attempt, Uploader, outcome_json};
use super::{Job, JobError, JobFailure, JobStore, Lease, Outcome, Progress};
use crate::api::Kind;
use crate::config::SecretsConfig;
use crate::secrets::schema::{self, ConnectionStatus};
use crate::secrets::{SecretError, SecretStore};
use crate::upload::UploadSource;
use crate::webhook::WebhookSecret;

/// The current time; tests pin it.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// A job write after a file landed: losing it would make the job's retry meet its own file
/// (a conflict, or a second copy under `rename`), so a short job-store outage is waited out.
async fn record<T, F, Fut>(write: F) -> Result<T, JobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, JobError>>,
{
    crate::outage::retry(|e| matches!(e, JobError::Unavailable(_)), write).await
}

/// Worker tuning.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The queue's `maxReceiveCount`: the receive on which a transient failure ends the job.
    pub max_receives: u32,
    /// How long a lease lasts: the function's timeout, so a killed worker's lease has lapsed by
    /// the time SQS delivers the message again.
    pub lease: Duration,
    /// First redelivery delay; doubles per receive.
    pub base_backoff: Duration,
    /// Longest redelivery delay.
    pub max_backoff: Duration,
}

impl Default for WorkerSettings {
    /// 5 receives, a 15-minute lease, 10 s doubling to at most 15 minutes.
    fn default() -> Self {
        WorkerSettings {
            max_receives: 5,
            lease: Duration::from_secs(900),
            base_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(900),
        }
    }
}

impl WorkerSettings {
    /// The redelivery delay after receive number `receive` (1-based), at least `retry_after`.
    pub fn backoff(&self, receive: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << receive.saturating_sub(1).min(20));
        exp.min(self.max_backoff)
            .max(retry_after.unwrap_or_default())
    }
}

/// One SQS message as the worker needs it.
#[derive(Debug, Clone)]
pub struct Received {
    /// SQS's message id (what a batch failure names).
    pub message_id: String,
    /// The receipt handle (to change the visibility).
    pub receipt: String,
    /// The body: a [`JobMessage`].
    pub body: String,
    /// `ApproximateReceiveCount`.
    pub receive_count: u32,
    /// True when the message came from the dead-letter queue.
    pub dead_letter: bool,
}

/// What to tell SQS about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (done, failed for good, or nothing left to do): delete it.
    Ack,
    /// Deliver it again after this long.
    Retry(Duration),
}

/// Everything a warm worker keeps.
pub struct Worker {
    /// Jobs.
    pub jobs: Arc<dyn JobStore>,
    /// The queue (to delay retried messages).
    pub queue: Arc<dyn JobQueue>,
    /// Staged bodies.
    pub staging: Arc<dyn Staging>,
    /// Connection secrets.
    pub store: Arc<dyn SecretStore>,
    /// Where the secrets are.
    pub secrets: SecretsConfig,
    /// The upload step.
    pub uploader: Uploader,
    /// The callback sender.
    pub callbacks: Callbacks,
    /// The `source_url` client ([`super::fetch::source_client`]: SSRF-guarded resolver).
    pub sources: reqwest::Client,
    /// Largest `source_url` body fetched.
    pub max_source_bytes: u64,
    /// Tuning.
    pub settings: WorkerSettings,
    /// Now.
    pub clock: Clock,
}

impl Worker {
    /// Runs a batch concurrently; answers the ids of messages SQS must deliver again (their
    /// visibility already set to the backoff).
    pub async fn run_batch(&self, batch: Vec<Received>, owner: &str) -> Vec<String> {
        let runs = batch.iter().map(|m| async move {
            let d = self.process(m, owner).await;
            (m, d)
        });
        let mut failed = Vec::new();
        for (m, d) in futures_util::future::join_all(runs).await {
            if let Disposition::Retry(wait) = d {
                if let Err(e) = self.queue.delay(&m.receipt, wait).await {
                    // The queue's own visibility timeout still brings it back.
                    tracing::warn!(message_id = %m.message_id, error = %e, "could not set the retry delay");
                }
                failed.push(m.message_id.clone());
            }
        }
        failed
    }

    /// Runs one message as `owner` (the invocation's request id).
    pub async fn process(&self, m: &Received, owner: &str) -> Disposition {
        let msg: JobMessage = match serde_json::from_str(&m.body) {
            Ok(msg) => msg,
            Err(e) => {
                // No job can be named; keeping it would only loop it to the dead-letter queue.
                tracing::error!(message_id = %m.message_id, error = %e, "unreadable job message dropped");
                return Disposition::Ack;
            }
        };
        if m.dead_letter {
            return self.dead_letter(&msg, m).await;
        }
        let now = (self.clock)();
        let until = now + self.settings.lease;
        let (lease, job) = match self.jobs.acquire(&msg.job, owner, until, now).await {
            Ok(taken) => taken,
            Err(JobError::Finished(job)) => {
                // A repeat of a finished job: only the cleanup and callback may be missing.
                self.after(&msg, &job).await;
                return Disposition::Ack;
            }
            Err(JobError::LeaseHeld { until }) => {
                let left = (until - now).max(time::Duration::ZERO);
                return Disposition::Retry(
                    Duration::try_from(left).unwrap_or_default() + Duration::from_secs(1),
                );
            }
            Err(JobError::NotFound) => {
                tracing::warn!(job = %msg.job, "message for a job that does not exist (expired?)");
                self.cleanup(&msg).await;
                return Disposition::Ack;
            }
            Err(e) => {
                tracing::warn!(job = %msg.job, error = %e, "could not take the job");
                return Disposition::Retry(self.settings.backoff(m.receive_count, None));
            }
        };
        tracing::info!(job = %msg.job, connection = %msg.connection, attempt = job.attempts, receive = m.receive_count, "job started");
        let outcome = match self.run(&lease, &job, &msg).await {
            Ok(answer) => Outcome::Done(answer),
            Err(Attempt::Permanent(f)) => Outcome::Failed(f),
            Err(Attempt::Transient {
                failure,
                retry_after,
            }) if m.receive_count < self.settings.max_receives => {
                tracing::info!(job = %msg.job, error = %failure.error, message = %failure.message, "job will be retried");
                if let Err(e) = self.jobs.release(&lease, (self.clock)()).await {
                    tracing::warn!(job = %msg.job, error = %e, "could not release the lease");
                }
                return Disposition::Retry(self.settings.backoff(m.receive_count, retry_after));
            }
            Err(Attempt::Transient { mut failure, .. }) => {
                failure.message = format!(
                    "gave up after {} attempts: {}",
                    m.receive_count, failure.message
                );
                Outcome::Failed(failure)
            }
        };
        match record(|| self.jobs.finish(&lease, &outcome, (self.clock)())).await {
            Ok(job) => {
                tracing::info!(job = %job.id, status = job.status.as_str(), "job ended");
                self.after(&msg, &job).await;
                Disposition::Ack
            }
            Err(JobError::Unavailable(e)) => {
                tracing::warn!(job = %msg.job, error = %e, "could not record the job's end");
                Disposition::Retry(self.settings.backoff(m.receive_count, None))
            }
            Err(e) => {
                // Lease lost or already ended: someone else owns the outcome.
                tracing::warn!(job = %msg.job, error = %e, "job's end not recorded");
                Disposition::Ack
            }
        }
    }

    /// Uploads the files not yet stored; answers the 201 body the synchronous path would give.
    async fn run(&self, lease: &Lease, job: &Job, msg: &JobMessage) -> Result<Value, Attempt> {
        let conn =
            match schema::connection(self.store.as_ref(), &self.secrets, &msg.connection).await {
                Ok(c) => c.value,
                Err(SecretError::NotFound { .. }) => {
                    return Err(Attempt::permanent(
                        Kind::ConnectionNotFound,
                        format!("the connection {:?} no longer exists", msg.connection),
                    ));
                }
                Err(e @ (SecretError::Throttled { .. } | SecretError::Backend { .. })) => {
                    return Err(Attempt::transient(Kind::Unavailable, e.to_string(), None));
                }
                Err(e) => return Err(Attempt::permanent(Kind::Misconfigured, e.to_string())),
            };
        if conn.status == ConnectionStatus::NeedsConsent {
            let code = conn.status_code.as_deref().unwrap_or("unknown");
            return Err(Attempt::permanent(
                Kind::NeedsConsent,
                format!("the connection needs consent again ({code}); run the connect flow"),
            ));
        }
        let total = msg.total_bytes();
        let mut done = 0u64;
        let mut answers = Vec::with_capacity(msg.files.len());
        for (i, file) in msg.files.iter().enumerate() {
            if let Some(Some(answer)) = job.files_done.get(i) {
                done += answer["size"].as_u64().unwrap_or(0);
                answers.push(answer.clone());
                continue;
            }
            let source = self.open(&file.body, msg.max_file_bytes).await?;
            let stored = self
                .uploader
                .upload(&msg.connection, &conn, file, source)
                .await
                .map_err(|a| with_earlier(source_too_large(a), answers.len()))?;
            done += stored.size;
            let answer = outcome_json(&stored);
            let progress = Progress { done, total };
            match record(|| {
                self.jobs
                    .file_done(lease, i, &answer, progress, (self.clock)())
            })
            .await
            {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(job = %job.id, error = %e, "could not record a stored file")
                }
                Err(e) => return Err(Attempt::permanent(Kind::Internal, e.to_string())),
            }
            answers.push(answer);
        }
        Ok(if answers.len() == 1 {
            answers.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(answers)
        })
    }

    async fn open(&self, body: &JobBody, max: Option<u64>) -> Result<UploadSource, Attempt> {
        let max = max.map_or(self.max_source_bytes, |m| m.min(self.max_source_bytes));
        match body {
            JobBody::Inline { base64 } => inline_bytes(base64)
                .map(UploadSource::from_bytes)
                .ok_or_else(|| {
                    Attempt::permanent(Kind::BadRequest, "the inline body is not base64")
                }),
            JobBody::Staged { key, .. } => self.staging.open(key).await.map_err(|e| match e {
                StagingError::Missing(_) => Attempt::permanent(Kind::Internal, e.to_string()),
                StagingError::Unavailable(_) => {
                    Attempt::transient(Kind::Unavailable, e.to_string(), None)
                }
            }),
            JobBody::SourceUrl { url } => {
                let policy = crate::upload::RetryPolicy::default();
                let source = UploadSource::from_url(&self.sources, url, &policy, None)
                    .await
                    .map_err(|e| {
                        if e.to_string().contains(super::fetch::FORBIDDEN_RESOLUTION) {
                            Attempt::permanent(
                                Kind::BadRequest,
                                "source_url resolves to a forbidden address",
                            )
                        } else {
                            super::upload::upload_attempt(&e)
                        }
                    })?;
                if source.len().is_some_and(|l| l > max) {
                    return Err(Attempt::permanent(
                        Kind::PayloadTooLarge,
                        format!("the file at source_url is larger than the limit of {max} bytes"),
                    ));
                }
                Ok(source.capped(max))
            }
        }
    }

    /// Fails the job of a message that outlived every receive (the worker died each time).
    async fn dead_letter(&self, msg: &JobMessage, m: &Received) -> Disposition {
        let failure = JobFailure::new(
            Kind::Internal,
            "the upload did not finish after every allowed attempt (the worker timed out or \
             crashed); the message was moved to the dead-letter queue",
        );
        match self.jobs.abandon(&msg.job, &failure, (self.clock)()).await {
            Ok(job) => {
                tracing::error!(job = %job.id, connection = %msg.connection, receive = m.receive_count, "poison job marked failed");
                self.after(msg, &job).await;
                Disposition::Ack
            }
            Err(JobError::Finished(job)) => {
                self.after(msg, &job).await;
                Disposition::Ack
            }
            Err(JobError::NotFound) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(job = %msg.job, error = %e, "could not fail the dead-lettered job");
                Disposition::Retry(self.settings.backoff(m.receive_count, None))
            }
        }
    }

    /// After a job ended: delete its staged bodies and deliver its callback once.
    async fn after(&self, msg: &JobMessage, job: &Job) {
        if !job.status.is_final() {
            return;
        }
        self.cleanup(msg).await;
        let Some(url) = &msg.callback_url else {
            return;
        };
        if job.callback.as_ref().is_some_and(|c| c.delivered) {
            return;
        }
        let secret = match self.signing_secret(&msg.connection).await {
            Some(s) => s,
            None => {
                tracing::warn!(job = %job.id, "no webhook secret to sign the callback with; not sent");
                return;
            }
        };
        let record = self.callbacks.deliver(url, &secret, job).await;
        tracing::info!(job = %job.id, delivered = record.delivered, status = ?record.status, attempts = record.attempts, "callback");
        if let Err(e) = self
            .jobs
            .record_callback(&job.id, &record, (self.clock)())
            .await
        {
            tracing::warn!(job = %job.id, error = %e, "could not record the callback");
        }
    }

    async fn cleanup(&self, msg: &JobMessage) {
        for key in msg.staged_keys() {
            if let Err(e) = self.staging.delete(key).await {
                // The bucket's lifecycle rule removes it later.
                tracing::warn!(job = %msg.job, error = %e, "could not delete a staged body");
            }
        }
    }

    /// The newest of the connection's own sender secrets; the deployment-wide secret only for a
    /// sender secret that accepts it and holds none of its own.
    async fn signing_secret(&self, connection: &str) -> Option<WebhookSecret> {
        use secrecy::ExposeSecret as _;
        let sender = schema::sender(self.store.as_ref(), &self.secrets, connection)
            .await
            .ok()?
            .value;
        if let Some(newest) = sender.signing_secret() {
            return WebhookSecret::from_whsec(newest.expose_secret()).ok();
        }
        if !sender.accept_deployment_secret {
            return None;
        }
        let secrets = schema::webhook_secrets(self.store.as_ref(), &self.secrets)
            .await
            .ok()?;
        secrets
            .value
            .secrets
            .iter()
            .find_map(|s| WebhookSecret::from_whsec(s.expose_secret()).ok())
    }
}

/// A `source_url` body that grew past its cap ([`UploadSource::capped`]) is the sender's
/// doing: permanent, 413, whatever error the stream's end surfaced as.
fn source_too_large(a: Attempt) -> Attempt {
    let (Attempt::Permanent(f) | Attempt::Transient { failure: f, .. }) = &a;
    match f
        .message
        .find("the file at source_url is larger than the limit")
    {
        Some(at) => Attempt::permanent(Kind::PayloadTooLarge, f.message[at..].to_owned()),
        None => a,
    }
}

/// Notes files already stored when a later one fails.
fn with_earlier(a: Attempt, earlier: usize) -> Attempt {
    if earlier == 0 {
        return a;
    }
    let note = |f: &mut JobFailure| {
        f.message = format!("{} ({earlier} earlier file(s) were stored)", f.message);
    };
    match a {
        Attempt::Permanent(mut f) => {
            note(&mut f);
            Attempt::Permanent(f)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_honours_retry_after() {
        let s = WorkerSettings::default();
        assert_eq!(s.backoff(1, None), Duration::from_secs(10));
        assert_eq!(s.backoff(3, None), Duration::from_secs(40));
        assert_eq!(s.backoff(30, None), Duration::from_secs(900));
        assert_eq!(
            s.backoff(1, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
    }
}
