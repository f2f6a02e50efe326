//! The worker: runs queued jobs to their end.
//!
//! For each message: take the job's lease, stream each file's body (inline, staged or
//! `source_url`) into the target, record each file as it lands, end the job, delete its staged
//! bodies, POST the callback. Transient failures hand the message back to SQS with a visibility
//! of exponential backoff (or the service's `Retry-After`, if longer); permanent ones end the
//! job. On the last allowed receive a transient failure ends the job too, so only a worker
//! that dies (timeout, crash) sends a message to the dead-letter queue, whose consumer
//! ([`Received::dead_letter`]) then fails the job.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use serde_json::Value;
use time::OffsetDateTime;

use super::callback::Callbacks;
use super::queue::{JobBody, JobFile, JobMessage, JobQueue, inline_bytes};
use super::staging::{Staging, StagingError};
use super::upload::{Attempt, Uploader, outcome_json};
use super::{Checkpoint, Job, JobError, JobFailure, JobStore, Lease, Outcome, Progress};
use crate::api::Kind;
use crate::config::SecretsConfig;
use crate::secrets::schema::ConnectionSecret;
use crate::secrets::schema::{self, ConnectionStatus};
use crate::secrets::{SecretError, SecretStore};
use crate::upload::UploadError;
use crate::upload::UploadSource;
use crate::upload::resume::{Resume, ResumeState, Resumed};
use crate::upload::source::Opened;
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
    /// One invocation's working time (`SPBRIDGE_WORKER_BUDGET_SECS`); `None`: until the Lambda
    /// deadline less `margin`. When it runs out, the job is saved and handed on between chunks.
    pub budget: Option<Duration>,
    /// Time kept back before the Lambda deadline: one chunk's upload and the hand-off must fit.
    pub margin: Duration,
    /// Times one invocation reopens a source that broke off, before it gives the job back.
    pub source_reopens: u32,
}

impl Default for WorkerSettings {
    /// 5 receives, a 15-minute lease, 10 s doubling to at most 15 minutes, a 60 s margin.
    fn default() -> Self {
        WorkerSettings {
            max_receives: 5,
            lease: Duration::from_secs(900),
            base_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(900),
            budget: None,
            margin: Duration::from_secs(60),
            source_reopens: 3,
        }
    }
}

impl WorkerSettings {
    /// When an invocation that started `now` stops starting chunks: `now + budget`, or the
    /// Lambda deadline less the margin, whichever comes first (`None`: no limit known).
    pub fn stop_at(
        &self,
        now: tokio::time::Instant,
        lambda_deadline: Option<std::time::SystemTime>,
    ) -> Option<tokio::time::Instant> {
        let by_budget = self.budget.map(|b| now + b);
        let by_deadline = lambda_deadline.map(|d| {
            let left = d
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(self.margin);
            now + left
        });
        match (by_budget, by_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

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
    /// Time ran out and the job was checkpointed: send the message again as a new one (so the
    /// hand-off is not counted as a receive) and delete this one.
    HandOff,
}

/// How a run of a job's files ended, when it did not fail.
enum Ran {
    /// Every file stored; the answer.
    Done(Value),
    /// Checkpointed and the lease given back: another invocation continues.
    HandedOff,
    /// Another worker took the job over; it owns the outcome.
    LeaseLost,
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
    /// visibility already set to the backoff). Uploads stop between chunks at `stop_at` and
    /// hand their jobs on.
    pub async fn run_batch(
        &self,
        batch: Vec<Received>,
        owner: &str,
        stop_at: Option<tokio::time::Instant>,
    ) -> Vec<String> {
        let runs = batch.iter().map(|m| async move {
            let d = self.process(m, owner, stop_at).await;
            (m, d)
        });
        let mut failed = Vec::new();
        for (m, d) in futures_util::future::join_all(runs).await {
            let wait = match d {
                Disposition::Ack => continue,
                Disposition::Retry(wait) => wait,
                Disposition::HandOff => match self.hand_on(m).await {
                    Ok(()) => continue,
                    // Not re-sent: this message comes back instead (counted as a receive).
                    Err(()) => Duration::ZERO,
                },
            };
            if let Err(e) = self.queue.delay(&m.receipt, wait).await {
                // The queue's own visibility timeout still brings it back.
                tracing::warn!(message_id = %m.message_id, error = %e, "could not set the retry delay");
            }
            failed.push(m.message_id.clone());
        }
        failed
    }

    /// Sends a handed-off job's message again, as a new message.
    async fn hand_on(&self, m: &Received) -> Result<(), ()> {
        let msg: JobMessage = serde_json::from_str(&m.body).map_err(|_| ())?;
        self.queue.send(&msg).await.map_err(|e| {
            tracing::warn!(job = %msg.job, error = %e, "could not re-enqueue a handed-off job");
        })
    }

    /// Runs one message as `owner` (the invocation's request id); uploads stop between chunks
    /// at `stop_at`.
    pub async fn process(
        &self,
        m: &Received,
        owner: &str,
        stop_at: Option<tokio::time::Instant>,
    ) -> Disposition {
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
        // The connection secret is read while the lease is taken (one round trip fewer on a
        // cold start): a read has nothing to undo when the lease is refused, and nothing is
        // uploaded before the lease is held.
        let (acquired, conn) = tokio::join!(
            self.jobs.acquire(&msg.job, owner, until, now),
            self.connection(&msg.connection)
        );
        let (lease, job) = match acquired {
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
        tracing::info!(job = %msg.job, connection = %msg.connection, attempt = job.attempts, receive = m.receive_count, resumed = job.checkpoint.is_some(), "job started");
        let outcome = match self.run(&lease, &job, &msg, conn, stop_at).await {
            Ok(Ran::Done(answer)) => Outcome::Done(answer),
            Ok(Ran::HandedOff) => return Disposition::HandOff,
            Ok(Ran::LeaseLost) => {
                tracing::warn!(job = %msg.job, "another worker took the job over; stopping");
                return Disposition::Ack;
            }
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
        if let Outcome::Failed(_) = &outcome {
            self.abort_saved(&lease, &msg).await;
        }
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

    /// Uploads the files not yet stored with `conn` (the connection read beside the lease);
    /// answers the 201 body the synchronous path would give.
    async fn run(
        &self,
        lease: &Lease,
        job: &Job,
        msg: &JobMessage,
        conn: Result<ConnectionSecret, Attempt>,
        stop_at: Option<tokio::time::Instant>,
    ) -> Result<Ran, Attempt> {
        let conn = conn?;
        let pending = (0..msg.files.len()).any(|i| !matches!(job.files_done.get(i), Some(Some(_))));
        let files = self.files(lease, job, msg, &conn, stop_at);
        if !pending {
            return files.await;
        }
        // The token is fetched while the first body is opened (the staged GET): the upload's
        // own request for it joins this fetch in the token cache, or finds its token cached.
        // Joined, not raced: a fetch dropped midway could lose a rotated refresh token.
        let ((), ran) = tokio::join!(self.uploader.warm_token(&msg.connection), files);
        ran
    }

    /// The file loop of [`Worker::run`].
    async fn files(
        &self,
        lease: &Lease,
        job: &Job,
        msg: &JobMessage,
        conn: &ConnectionSecret,
        stop_at: Option<tokio::time::Instant>,
    ) -> Result<Ran, Attempt> {
        let total = msg.total_bytes();
        let mut done = 0u64;
        let mut answers = Vec::with_capacity(msg.files.len());
        for (i, file) in msg.files.iter().enumerate() {
            if let Some(Some(answer)) = job.files_done.get(i) {
                done += answer["size"].as_u64().unwrap_or(0);
                answers.push(answer.clone());
                continue;
            }
            let saved = job.checkpoint.clone().filter(|c| c.file == i);
            let cx = FileRun {
                worker: self,
                lease,
                msg,
                conn,
                index: i,
                file,
                done_before: done,
                total,
                stop_at,
                restarts: Arc::new(AtomicU32::new(0)),
            };
            let stored = match cx.run(saved).await {
                Ok(FileEnd::Stored(o)) => {
                    #[cfg(feature = "test-hooks")]
                    crate::upload::resume::exit_at("after_store");
                    o
                }
                Ok(FileEnd::HandedOff) => return Ok(Ran::HandedOff),
                Ok(FileEnd::LeaseLost) => return Ok(Ran::LeaseLost),
                Err(a) => return Err(with_earlier(source_too_large(a), answers.len())),
            };
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
                Err(JobError::LeaseLost) => return Ok(Ran::LeaseLost),
                Err(e) => return Err(Attempt::permanent(Kind::Internal, e.to_string())),
            }
            answers.push(answer);
        }
        Ok(Ran::Done(if answers.len() == 1 {
            answers.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(answers)
        }))
    }

    /// The connection's secret, or why the job cannot use it.
    async fn connection(&self, id: &str) -> Result<ConnectionSecret, Attempt> {
        let conn = match schema::connection(self.store.as_ref(), &self.secrets, id).await {
            Ok(c) => c.value,
            Err(SecretError::NotFound { .. }) => {
                return Err(Attempt::permanent(
                    Kind::ConnectionNotFound,
                    format!("the connection {id:?} no longer exists"),
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
        Ok(conn)
    }

    /// A job that ends without its file: end the saved upload session, so no half-written file
    /// stays behind. Best effort (Graph and SharePoint also expire abandoned sessions).
    async fn abort_saved(&self, lease: &Lease, msg: &JobMessage) {
        if let Ok(job) = self.jobs.get(&lease.job).await {
            self.abort_session(&job, msg).await;
        }
    }

    async fn abort_session(&self, job: &Job, msg: &JobMessage) {
        let Some(session) = job
            .checkpoint
            .as_ref()
            .and_then(|c| c.state.session.as_ref())
        else {
            return;
        };
        let Ok(conn) = self.connection(&msg.connection).await else {
            return;
        };
        tracing::info!(job = %job.id, "ending the failed job's upload session");
        self.uploader.abort(&msg.connection, &conn, session).await;
    }

    /// Opens file `index`'s body from byte `offset` (a `Range` for `source_url`; staged
    /// bodies skip to it). [`Opened::start`] says where the source really starts.
    async fn open_at(
        &self,
        body: &JobBody,
        max: Option<u64>,
        offset: u64,
    ) -> Result<Opened, Attempt> {
        let max = max.map_or(self.max_source_bytes, |m| m.min(self.max_source_bytes));
        match body {
            JobBody::Inline { base64 } => inline_bytes(base64)
                .map(|b| {
                    let total = b.len() as u64;
                    let at = (offset.min(total)) as usize;
                    Opened {
                        source: UploadSource::from_bytes(b.slice(at..)),
                        start: at as u64,
                        total: Some(total),
                    }
                })
                .ok_or_else(|| {
                    Attempt::permanent(Kind::BadRequest, "the inline body is not base64")
                }),
            JobBody::Staged { key, size, etag } => {
                let from = offset.min(*size);
                let source = self
                    .staging
                    .open(key, from, etag.as_deref())
                    .await
                    .map_err(|e| match e {
                        StagingError::Missing(_) => {
                            Attempt::permanent(Kind::Internal, e.to_string())
                        }
                        StagingError::Changed(_) => {
                            Attempt::permanent(Kind::Unprocessable, e.to_string())
                        }
                        StagingError::Unavailable(_) => {
                            Attempt::transient(Kind::Unavailable, e.to_string(), None)
                        }
                    })?;
                Ok(Opened {
                    source,
                    start: from,
                    total: Some(*size),
                })
            }
            JobBody::SourceUrl { url } => {
                let policy = crate::upload::RetryPolicy::default();
                let opened = UploadSource::from_url_at(&self.sources, url, offset, &policy, None)
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
                if opened.total.is_some_and(|l| l > max) {
                    return Err(Attempt::permanent(
                        Kind::PayloadTooLarge,
                        format!("the file at source_url is larger than the limit of {max} bytes"),
                    ));
                }
                let cap = max.saturating_sub(opened.start);
                Ok(Opened {
                    source: opened.source.capped(cap),
                    ..opened
                })
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
                self.abort_session(&job, msg).await;
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

/// How one file's run ended, when it did not fail.
enum FileEnd {
    Stored(crate::upload::UploadOutcome),
    HandedOff,
    LeaseLost,
}

/// One file of a job, run resumably: from its checkpoint, saving a new one after each chunk.
struct FileRun<'a> {
    worker: &'a Worker,
    lease: &'a Lease,
    msg: &'a JobMessage,
    conn: &'a ConnectionSecret,
    index: usize,
    file: &'a JobFile,
    /// Bytes of earlier files stored.
    done_before: u64,
    total: Option<u64>,
    stop_at: Option<tokio::time::Instant>,
    /// Restarts from byte 0 so far (saved in the checkpoint).
    restarts: Arc<AtomicU32>,
}

/// Restarts from byte 0 one file may take before its job fails.
const MAX_RESTARTS: u32 = 3;

impl FileRun<'_> {
    async fn run(&self, saved: Option<Checkpoint>) -> Result<FileEnd, Attempt> {
        let w = self.worker;
        let restarts = saved.as_ref().map_or(0, |c| c.restarts);
        self.restarts.store(restarts, Ordering::SeqCst);
        let mut state = saved.map_or_else(ResumeState::fresh, |c| c.state);
        let lost = Arc::new(AtomicBool::new(false));
        let latest = Arc::new(Mutex::new(state.clone()));
        let mut reopens = 0u32;
        loop {
            let opened = self
                .worker
                .open_at(&self.file.body, self.msg.max_file_bytes, state.offset)
                .await?;
            if opened.start != state.offset {
                let note = format!(
                    "file {}: the origin ignored the Range request (answered 200, not 206), so the \
                     upload started again from byte 0 instead of {}",
                    self.index, state.offset
                );
                tracing::info!(job = %self.lease.job, offset = state.offset, "origin ignored Range; restarting the file");
                self.restarted()?;
                // The session stays in the state: SharePoint starts a new upload id on the same
                // placeholder, Graph deletes the session and opens a new one.
                state.offset = 0;
                if let Err(e) = self.save(&state, Some(&note)).await {
                    return self.save_failed(e);
                }
            }
            let save = self.save_hook(lost.clone(), latest.clone());
            let resume = Resume {
                state: state.clone(),
                save: &save,
                stop_at: self.stop_at,
            };
            let result = w
                .uploader
                .upload_resumable(
                    &self.msg.connection,
                    self.conn,
                    self.file,
                    opened.source,
                    resume,
                )
                .await;
            if lost.load(Ordering::SeqCst) {
                return Ok(FileEnd::LeaseLost);
            }
            match result {
                Ok(Resumed::Done(o)) => return Ok(FileEnd::Stored(o)),
                Ok(Resumed::Paused(_)) => {
                    tracing::info!(job = %self.lease.job, file = self.index, "time is up; handing the job on");
                    return match w.jobs.hand_off(self.lease, (w.clock)()).await {
                        Ok(()) => Ok(FileEnd::HandedOff),
                        Err(JobError::LeaseLost | JobError::Finished(_)) => Ok(FileEnd::LeaseLost),
                        Err(e) => Err(Attempt::transient(Kind::Unavailable, e.to_string(), None)),
                    };
                }
                Ok(Resumed::Restart(fresh, why)) => {
                    self.restarted()?;
                    let note = format!("file {}: {why}", self.index);
                    state = fresh;
                    if let Err(e) = self.save(&state, Some(&note)).await {
                        return self.save_failed(e);
                    }
                }
                Err(a) if is_source_break(&a) && reopens < w.settings.source_reopens => {
                    // The origin broke off mid-chunk: read again from the last stored byte.
                    reopens += 1;
                    state = latest.lock().map(|l| l.clone()).unwrap_or(state);
                    tracing::info!(job = %self.lease.job, offset = state.offset, reopens, "the source broke off; reopening it at the checkpoint");
                }
                Err(a) => return Err(a),
            }
        }
    }

    /// Counts a restart from byte 0; past [`MAX_RESTARTS`] the file fails for good.
    fn restarted(&self) -> Result<(), Attempt> {
        let n = self.restarts.fetch_add(1, Ordering::SeqCst) + 1;
        if n > MAX_RESTARTS {
            return Err(Attempt::permanent(
                Kind::BadGateway,
                format!(
                    "file {}: started again from byte 0 {n} times (the origin ignores Range, or \
                     the upload session keeps expiring); serve source_url with HTTP Range \
                     support so the upload can continue across invocations",
                    self.index
                ),
            ));
        }
        Ok(())
    }

    /// The hook the upload calls after each chunk: saves the checkpoint under the lease.
    fn save_hook(
        &self,
        lost: Arc<AtomicBool>,
        latest: Arc<Mutex<ResumeState>>,
    ) -> impl Fn(ResumeState) -> BoxFuture<'static, Result<(), UploadError>> + Send + Sync + 'static
    {
        let jobs = self.worker.jobs.clone();
        let clock = self.worker.clock.clone();
        let lease = self.lease.clone();
        let restarts = self.restarts.clone();
        let (index, before, total) = (self.index, self.done_before, self.total);
        move |state: ResumeState| {
            let (jobs, clock, lease, lost, latest) = (
                jobs.clone(),
                clock.clone(),
                lease.clone(),
                lost.clone(),
                latest.clone(),
            );
            let restarts = restarts.load(Ordering::SeqCst);
            Box::pin(async move {
                let cp = Checkpoint {
                    file: index,
                    source_offset: state.offset,
                    state,
                    restarts,
                };
                let progress = Progress {
                    done: before + cp.state.offset,
                    total,
                };
                match jobs
                    .checkpoint(&lease, Some(&cp), progress, None, clock())
                    .await
                {
                    Ok(()) => {
                        if let Ok(mut l) = latest.lock() {
                            *l = cp.state;
                        }
                        Ok(())
                    }
                    Err(e @ (JobError::LeaseLost | JobError::Finished(_) | JobError::NotFound)) => {
                        lost.store(true, Ordering::SeqCst);
                        Err(UploadError::BadInput(format!(
                            "the checkpoint was refused: {e}"
                        )))
                    }
                    Err(e) => Err(UploadError::Upstream {
                        status: 503,
                        microsoft_code: None,
                        message: format!("saving the checkpoint: {e}"),
                    }),
                }
            })
        }
    }

    async fn save(&self, state: &ResumeState, note: Option<&str>) -> Result<(), JobError> {
        let cp = Checkpoint {
            file: self.index,
            source_offset: state.offset,
            state: state.clone(),
            restarts: self.restarts.load(Ordering::SeqCst),
        };
        let progress = Progress {
            done: self.done_before + state.offset,
            total: self.total,
        };
        let w = self.worker;
        w.jobs
            .checkpoint(self.lease, Some(&cp), progress, note, (w.clock)())
            .await
    }

    fn save_failed(&self, e: JobError) -> Result<FileEnd, Attempt> {
        match e {
            JobError::LeaseLost | JobError::Finished(_) | JobError::NotFound => {
                Ok(FileEnd::LeaseLost)
            }
            e => Err(Attempt::transient(Kind::Unavailable, e.to_string(), None)),
        }
    }
}

/// Whether an attempt failed because the source broke off: [`UploadError::Source`]'s text
/// (the attempt keeps the error's words, not its variant).
fn is_source_break(a: &Attempt) -> bool {
    matches!(a, Attempt::Transient { failure, .. }
        if failure.message.starts_with("reading the content failed"))
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
