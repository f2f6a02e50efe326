//! token-refresh's run: keeps every stored refresh token alive.
//!
//! A run lists the connection secrets under the prefix (or takes the ones a manual run names),
//! refreshes every delegated connection that is due ([`refresh_policy::decide`]; a manual run
//! refreshes the named ones now) through [`Access::refresh`], which stores rotated refresh tokens
//! with [`crate::access::write_tokens`]. A refused refresh token marks the connection
//! `needs_consent` (one warning line; nothing deleted). Connections run concurrently, bounded by
//! `SPBRIDGE_REFRESH_CONCURRENCY`; one failing does not stop the others. Refreshes start at most
//! [`MAX_REFRESHES_PER_SECOND`] a second, so the refresh-token writes they make stay under
//! Secrets Manager's write quota however fast the store and token endpoint answer. A run given a
//! time to stop by ([`run_until`]) starts no refresh after it: the due connections left over are
//! reported `deferred` and stay due for the next run, so no refresh is cut off mid-write by the
//! Lambda timeout.
//!
//! The run returns its [`Report`] when every connection ended well (refreshed, skipped or found
//! needing consent). If any failed otherwise it returns a [`RunFailure`] whose
//! [`RunFailure::error_type`] says whether retrying may help (`SpBridge.Retryable.*`) or not
//! (`SpBridge.Fatal.*`).

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use time::OffsetDateTime;

use crate::{
    access::{Access, AccessError},
    oauth::refresh_policy::{
        self, ConnectionTimes, Decision, Outcome, RefreshConfig, RefreshFailure, SkipReason,
        Summary,
    },
    runtime::{Clock, Warm},
    secrets::{
        SecretError,
        schema::{AuthKind, ConnectionSecret, ConnectionStatus},
    },
};

/// Refreshes a run starts per second. Each stores its tokens with two writes, `PutSecretValue`
/// and the `UpdateSecretVersionStage` that makes it current only if nobody else wrote first, and
/// Secrets Manager allows 50 of those together a second per Region (one quota for
/// `PutSecretValue`, `UpdateSecret`, `UpdateSecretVersionStage`, ...), shared with
/// upload-worker and oauth-callback. 20 makes 40 writes a second and leaves them room. At this
/// pace a run gets through 10,000 due connections in about 500 s.
pub const MAX_REFRESHES_PER_SECOND: u32 = 20;

/// Spaces the starts of refreshes evenly, across all of a run's tasks.
struct Pacer {
    interval: Duration,
    next: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Pacer {
    fn per_second(n: u32) -> Pacer {
        Pacer {
            interval: Duration::from_secs(1) / n.max(1),
            next: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits for this caller's slot.
    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// How one connection fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionReport {
    /// The connection id.
    pub connection: String,
    /// `refreshed`, `not_due`, `skipped`, `needs_consent` or `failed`.
    pub outcome: &'static str,
    /// Why it was skipped, or Microsoft's code / the failure class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The Lambda error type of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<&'static str>,
    /// Whether a new refresh token was stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rotated: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The counts.
    #[serde(flatten)]
    pub summary: Summary,
    /// Each connection, in listing order.
    pub connections: Vec<ConnectionReport>,
}

/// Why a run failed. Converts to a Lambda [`Diagnostic`] whose `errorType` says whether a retry
/// may help.
#[derive(Debug, thiserror::Error)]
pub enum RunFailure {
    /// The function's configuration is unusable.
    #[error("configuration error: {0}")]
    Config(String),
    /// The secret store could not be opened or listed.
    #[error("secret store: {0}")]
    Store(#[source] SecretError),
    /// Some connections failed (others may have been refreshed).
    #[error("{failed} connection(s) failed ({class:?}); summary: {summary:?}")]
    ConnectionsFailed {
        /// How many.
        failed: usize,
        /// The class deciding the error type: retryable if any failure is.
        class: RefreshFailure,
        /// The whole run's report.
        report: Box<Report>,
        /// The counts.
        summary: Summary,
    },
}

impl RunFailure {
    /// The Lambda diagnostic `errorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            RunFailure::Config(_) => RefreshFailure::Misconfigured.lambda_error_type(),
            RunFailure::Store(e) => match e {
                SecretError::Throttled { .. }
                | SecretError::Backend { .. }
                | SecretError::Conflict { .. } => RefreshFailure::Transient.lambda_error_type(),
                _ => RefreshFailure::Misconfigured.lambda_error_type(),
            },
            RunFailure::ConnectionsFailed { class, .. } => class.lambda_error_type(),
        }
    }

    /// Whether retrying the run may help.
    pub fn is_retryable(&self) -> bool {
        self.error_type().starts_with("SpBridge.Retryable")
    }
}

/// Which connections a run refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// Run by hand: refresh these now, due or not.
    Manual(Vec<String>),
    /// The schedule: every stored connection that is due.
    Scheduled,
}

/// One token-refresh run with no time limit (a test, or a caller that knows the run is small).
pub async fn run(state: &Warm, what: Run) -> Result<Report, RunFailure> {
    run_until(state, what, None).await
}

/// One token-refresh run that starts no refresh at or after `stop_by`; the due connections it
/// did not start are reported `deferred` (see [`Outcome::Deferred`]).
pub async fn run_until(
    state: &Warm,
    what: Run,
    stop_by: Option<tokio::time::Instant>,
) -> Result<Report, RunFailure> {
    let access = Arc::new(state.access().await.map_err(RunFailure::Store)?);
    let (ids, forced) = match what {
        Run::Manual(connections) => (connections, true),
        Run::Scheduled => {
            let prefix = state.config.secrets.connections_prefix();
            let names = access
                .store()
                .list(&prefix)
                .await
                .map_err(RunFailure::Store)?;
            let ids = names
                .into_iter()
                .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
                .filter(|id| !id.is_empty())
                .collect();
            (ids, false)
        }
    };
    let started = std::time::Instant::now();
    let cfg = Arc::new(Settings {
        refresh: super::refresh_config(state),
        forced,
        check_app_only: state.lifecycle.check_app_only,
        certificate_warning: state.lifecycle.certificate_warning,
        clock: state.clock.clone(),
        pacer: Pacer::per_second(MAX_REFRESHES_PER_SECOND),
        stop_by,
    });
    let results = refresh_policy::run_bounded(
        ids,
        state.lifecycle.refresh_concurrency,
        move |id: String| {
            let access = access.clone();
            let cfg = cfg.clone();
            async move { Ok::<_, std::convert::Infallible>(one(&access, &cfg, &id).await) }
        },
    )
    .await;

    let mut report = Report::default();
    let mut worst: Option<RefreshFailure> = None;
    for (id, r) in results {
        let (outcome, mut entry) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(connection = %id, error = %e, "refresh task did not finish");
                let class = RefreshFailure::Transient;
                (
                    Outcome::Failed(class),
                    ConnectionReport {
                        connection: id.clone(),
                        outcome: "failed",
                        detail: Some(e.to_string()),
                        error_type: Some(class.lambda_error_type()),
                        rotated: false,
                    },
                )
            }
        };
        entry.connection = id;
        report.summary.record(outcome);
        if let Outcome::Failed(class) = outcome {
            if class != RefreshFailure::NeedsConsent {
                worst = Some(match worst {
                    Some(w) if w.is_retryable() => w,
                    _ if class.is_retryable() => class,
                    Some(w) => w,
                    None => class,
                });
            }
        }
        report.connections.push(entry);
    }
    let s = report.summary;
    tracing::info!(
        refreshed = s.refreshed,
        skipped = s.skipped,
        failed = s.failed,
        needs_consent = s.needs_consent,
        deferred = s.deferred,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "token-refresh run finished"
    );
    if s.deferred > 0 {
        tracing::warn!(
            deferred = s.deferred,
            "due connections left for the next run: this run's time ran out (raise the function's \
             Timeout or run the schedule more often)"
        );
    }
    match worst {
        None => Ok(report),
        Some(class) => Err(RunFailure::ConnectionsFailed {
            failed: s.failed,
            class,
            summary: s,
            report: Box::new(report),
        }),
    }
}

struct Settings {
    refresh: RefreshConfig,
    forced: bool,
    check_app_only: bool,
    certificate_warning: Duration,
    clock: Clock,
    pacer: Pacer,
    stop_by: Option<tokio::time::Instant>,
}

/// The policy's view of a connection.
pub fn connection_times(conn: &ConnectionSecret) -> ConnectionTimes {
    ConnectionTimes {
        provider: conn.provider,
        app_only: conn.auth == AuthKind::AppOnly,
        needs_consent: conn.status == ConnectionStatus::NeedsConsent,
        has_refresh_token: conn.refresh_token.is_some(),
        access_token_expires_at: conn.access_token_expires_at,
        refresh_token_issued_at: conn.refresh_token_issued_at,
        last_refreshed_at: conn.last_refreshed_at,
    }
}

fn report(outcome: &'static str, detail: Option<String>) -> ConnectionReport {
    ConnectionReport {
        connection: String::new(),
        outcome,
        detail,
        error_type: None,
        rotated: false,
    }
}

fn failed(e: &AccessError) -> (Outcome, ConnectionReport) {
    let class = e.failure();
    let (outcome, detail) = match e {
        AccessError::NeedsConsent { code, .. } => ("needs_consent", code.clone()),
        other => ("failed", other.to_string()),
    };
    if class != RefreshFailure::NeedsConsent {
        tracing::error!(connection = e.connection(), error = %e, error_type = class.lambda_error_type(), "refresh failed");
    }
    (
        Outcome::Failed(class),
        ConnectionReport {
            error_type: Some(class.lambda_error_type()),
            ..report(outcome, Some(detail))
        },
    )
}

async fn one(access: &Access, cfg: &Settings, id: &str) -> (Outcome, ConnectionReport) {
    let conn = match access.connection(id).await {
        Ok(c) => c.value,
        Err(e) => return failed(&e),
    };
    let now = (cfg.clock)();
    let times = connection_times(&conn);
    let decision = match refresh_policy::decide(&times, &cfg.refresh, now) {
        Decision::NotDue { .. } if cfg.forced => {
            Decision::Due(refresh_policy::DueReason::NeverRefreshed)
        }
        d => d,
    };
    match decision {
        Decision::Skip(SkipReason::AppOnly) if cfg.check_app_only => {
            check_app_only(access, cfg, id, &conn, now).await
        }
        Decision::Skip(reason) => {
            let label = match reason {
                SkipReason::NeedsConsent => "needs_consent",
                _ => "skipped",
            };
            let detail = match reason {
                SkipReason::NeedsConsent => conn.status_code.clone(),
                SkipReason::AppOnly => Some("app_only".into()),
                SkipReason::NoRefreshToken => Some("no_refresh_token".into()),
            };
            (Outcome::Skipped(reason), report(label, detail))
        }
        Decision::NotDue { next_at } => (
            Outcome::NotDue,
            report("not_due", Some(format!("next at {next_at}"))),
        ),
        Decision::Due(reason) => {
            cfg.pacer.wait().await;
            // Checked after the pacer's wait, which may itself run past the stop.
            if cfg
                .stop_by
                .is_some_and(|stop| tokio::time::Instant::now() >= stop)
            {
                return (
                    Outcome::Deferred,
                    report(
                        "deferred",
                        Some("the run's time ran out; the next run refreshes it".into()),
                    ),
                );
            }
            match access.refresh(id).await {
                Ok(out) => {
                    tracing::info!(connection = id, ?reason, rotated = out.rotated, persisted = ?out.persisted, "refreshed");
                    (
                        Outcome::Refreshed,
                        ConnectionReport {
                            rotated: out.rotated,
                            ..report("refreshed", None)
                        },
                    )
                }
                Err(e) => failed(&e),
            }
        }
    }
}

/// App-only: a token proves the credential works; a certificate close to expiry is warned about.
async fn check_app_only(
    access: &Access,
    cfg: &Settings,
    id: &str,
    conn: &ConnectionSecret,
    now: OffsetDateTime,
) -> (Outcome, ConnectionReport) {
    let mut detail = "app_only credential ok".to_owned();
    if let Ok(app) = access.app_credential(id, conn).await {
        if let Some(pem) = &app.certificate_pem {
            match certificate_not_after(pem.as_bytes()) {
                Some(not_after) => {
                    let left = not_after - now;
                    let warn = time::Duration::try_from(cfg.certificate_warning)
                        .unwrap_or(time::Duration::days(30));
                    if left <= warn {
                        tracing::warn!(connection = id, %not_after, days_left = left.whole_days(), "app certificate expires soon; rotate it");
                        detail = format!("certificate expires {not_after}");
                    }
                }
                None => tracing::warn!(connection = id, "app certificate_pem cannot be parsed"),
            }
        }
    }
    match access.bearer(id, false).await {
        Ok(_) => (
            Outcome::Skipped(SkipReason::AppOnly),
            report("skipped", Some(detail)),
        ),
        Err(e) => failed(&e),
    }
}

/// The `notAfter` of the first certificate in a PEM bundle.
pub fn certificate_not_after(pem: &[u8]) -> Option<OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refreshes_start_no_faster_than_the_write_quota_allows() {
        let pacer = Arc::new(Pacer::per_second(MAX_REFRESHES_PER_SECOND));
        let started = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..101 {
            let pacer = pacer.clone();
            tasks.spawn(async move {
                pacer.wait().await;
                tokio::time::Instant::now()
            });
        }
        let mut starts = tasks.join_all().await;
        starts.sort();
        // 101 starts at 20 a second: the first at once, the last 5 s later, 50 ms apart, which
        // is 40 quota writes a second (two per refresh) under Secrets Manager's 50.
        assert_eq!(starts[0], started);
        assert_eq!(starts[100] - started, Duration::from_millis(5000));
        for pair in starts.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(50));
        }
    }

    #[test]
    fn certificate_expiry_is_read_from_the_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["spbridge".into()]).unwrap();
        let not_after = OffsetDateTime::from_unix_timestamp(
            OffsetDateTime::now_utc().unix_timestamp() + 10 * 86400,
        )
        .unwrap();
        params.not_after = not_after;
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(certificate_not_after(pem.as_bytes()), Some(not_after));
        assert_eq!(certificate_not_after(b"not a certificate"), None);
    }

    #[test]
    fn error_types_say_whether_a_retry_helps() {
        let failed = |class| RunFailure::ConnectionsFailed {
            failed: 1,
            class,
            report: Box::default(),
            summary: Summary::default(),
        };
        assert_eq!(
            failed(RefreshFailure::Throttled).error_type(),
            "SpBridge.Retryable.Throttled"
        );
        assert!(failed(RefreshFailure::Transient).is_retryable());
        assert!(!failed(RefreshFailure::Misconfigured).is_retryable());
        let config = RunFailure::Config("SPBRIDGE_CLOUD is invalid".into());
        assert_eq!(config.error_type(), "SpBridge.Fatal.Misconfigured");
        assert!(config.to_string().contains("SPBRIDGE_CLOUD"));
        let store = RunFailure::Store(SecretError::Throttled {
            name: "x".into(),
            retry_after: None,
        });
        assert!(store.is_retryable());
    }
}
