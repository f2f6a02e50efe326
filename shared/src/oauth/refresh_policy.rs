//! When token-refresh acts on a connection, how a failed refresh is classified, what a run
//! reports, and a bounded-concurrency runner that keeps one connection's failure from stopping
//! the others.
//!
//! # Why these defaults
//!
//! | limit | source | what keeps it from lapsing |
//! |---|---|---|
//! | Entra / Azure AD v1 refresh tokens die after **90 days without use** | Microsoft identity platform token lifetimes | a refresh at least every [`DEFAULT_MAX_REFRESH_TOKEN_AGE`] (7 days) uses and rolls the token, leaving 83 days of slack for outages |
//! | Microsoft-account refresh tokens are likewise sliding | login.live.com | same weekly refresh |
//! | ACS (SharePoint add-in) refresh tokens last **6 months from issue** | SharePoint low-trust add-in docs | the weekly refresh stores any new refresh token ACS returns (resetting `refresh_token_issued_at`) and finds a revoked token within a week; if ACS keeps returning the same token nothing can extend it, and [`acs_refresh_token_lapses_at`] says when consent must be renewed |
//! | access tokens live about an hour | all four | refreshed when they expire within [`DEFAULT_ACCESS_SKEW`] |
//!
//! With the template's default schedule (`rate(6 hours)`) and hour-long access tokens, every run
//! finds an active delegated connection due by access-token expiry and refreshes it: the refresh
//! token is exercised four times a day and a revoked consent shows up as `needs_consent` within
//! six hours, before an upload fails. The 7-day rule is the backstop when the schedule is made
//! slower or the stored access-token expiry is missing.
//!
//! # Failure classification
//!
//! [`RefreshFailure::classify`] (in [`crate::microsoft`]) maps Microsoft's answer to what
//! token-refresh does next, from the one table of Microsoft codes (`docs/microsoft-errors.md`):
//! needs consent → mark the connection `needs_consent` (`SpBridge.Fatal.NeedsConsent`); throttled
//! or transient → retry on the next run (`SpBridge.Retryable.*`); misconfigured → an operator fixes
//! the app registration or secret (`SpBridge.Fatal.Misconfigured`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tokio::task::JoinSet;

use super::Provider;

/// Refresh when the access token expires within this long.
pub const DEFAULT_ACCESS_SKEW: Duration = Duration::minutes(10);
/// Refresh when the refresh token has not been used for this long (see the module docs).
pub const DEFAULT_MAX_REFRESH_TOKEN_AGE: Duration = Duration::days(7);
/// How long an ACS refresh token lives from issue.
pub const ACS_REFRESH_TOKEN_LIFETIME: Duration = Duration::days(182);

/// Token-refresh's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshConfig {
    /// Refresh when the access token expires within this long.
    pub access_skew: Duration,
    /// Refresh when the refresh token was last used (issued or redeemed) this long ago.
    pub max_refresh_token_age: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            access_skew: DEFAULT_ACCESS_SKEW,
            max_refresh_token_age: DEFAULT_MAX_REFRESH_TOKEN_AGE,
        }
    }
}

/// What the policy reads from a connection secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimes {
    /// The identity system.
    pub provider: Provider,
    /// App-only connections hold no refresh token: tokens are minted when needed.
    pub app_only: bool,
    /// The stored status is `needs_consent`.
    pub needs_consent: bool,
    /// A refresh token is stored (the Microsoft-account token flow yields none).
    pub has_refresh_token: bool,
    /// When the last access token expires.
    pub access_token_expires_at: Option<OffsetDateTime>,
    /// When the stored refresh token was issued.
    pub refresh_token_issued_at: Option<OffsetDateTime>,
    /// When a refresh last succeeded.
    pub last_refreshed_at: Option<OffsetDateTime>,
}

/// Why a connection is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueReason {
    /// The access token expires within the skew (or already has).
    AccessTokenExpiring {
        /// Its expiry.
        expires_at: OffsetDateTime,
    },
    /// The refresh token has not been used for `max_refresh_token_age`.
    RefreshTokenAge {
        /// When it was last issued or used.
        last_used_at: OffsetDateTime,
    },
    /// Nothing says when the refresh token was issued or last used.
    NeverRefreshed,
}

/// Why token-refresh leaves a connection alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A person must consent again first.
    NeedsConsent,
    /// App-only: nothing to keep alive.
    AppOnly,
    /// No refresh token stored.
    NoRefreshToken,
}

/// What token-refresh does with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Refresh now.
    Due(DueReason),
    /// Nothing to do until `next_at`.
    NotDue {
        /// The first time a run would find it due.
        next_at: OffsetDateTime,
    },
    /// Never refreshed in this state.
    Skip(SkipReason),
}

/// Decides what token-refresh does with a connection at `now`.
pub fn decide(times: &ConnectionTimes, config: &RefreshConfig, now: OffsetDateTime) -> Decision {
    if times.needs_consent {
        return Decision::Skip(SkipReason::NeedsConsent);
    }
    if times.app_only {
        return Decision::Skip(SkipReason::AppOnly);
    }
    if !times.has_refresh_token {
        return Decision::Skip(SkipReason::NoRefreshToken);
    }
    let at_due = times
        .access_token_expires_at
        .map(|expires_at| (expires_at, expires_at - config.access_skew));
    if let Some((expires_at, due_at)) = at_due {
        if now >= due_at {
            return Decision::Due(DueReason::AccessTokenExpiring { expires_at });
        }
    }
    let Some(last_used_at) = last_use(times) else {
        return Decision::Due(DueReason::NeverRefreshed);
    };
    let rt_due_at = last_used_at + config.max_refresh_token_age;
    if now >= rt_due_at {
        return Decision::Due(DueReason::RefreshTokenAge { last_used_at });
    }
    let next_at = match at_due {
        Some((_, due_at)) => due_at.min(rt_due_at),
        None => rt_due_at,
    };
    Decision::NotDue { next_at }
}

/// When a run will next find the connection due (`now` if it is due already); `None` when it is
/// skipped. For the success page's "next scheduled refresh".
pub fn next_refresh_at(
    times: &ConnectionTimes,
    config: &RefreshConfig,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    match decide(times, config, now) {
        Decision::Due(_) => Some(now),
        Decision::NotDue { next_at } => Some(next_at),
        Decision::Skip(_) => None,
    }
}

/// When an ACS connection's refresh token lapses for good (issue + 6 months), so consent can be
/// renewed before; `None` for other providers, whose refresh tokens slide.
pub fn acs_refresh_token_lapses_at(times: &ConnectionTimes) -> Option<OffsetDateTime> {
    match times.provider {
        Provider::Acs => times
            .refresh_token_issued_at
            .map(|t| t + ACS_REFRESH_TOKEN_LIFETIME),
        _ => None,
    }
}

fn last_use(times: &ConnectionTimes) -> Option<OffsetDateTime> {
    match (times.refresh_token_issued_at, times.last_refreshed_at) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

pub use crate::microsoft::{MsCode, RefreshFailure};

/// How one connection fared in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new token was obtained and stored.
    Refreshed,
    /// Not due yet.
    NotDue,
    /// Left alone.
    Skipped(SkipReason),
    /// The refresh failed.
    Failed(RefreshFailure),
    /// Due, but the run stopped starting refreshes before its time ran out; the next run takes it.
    Deferred,
}

/// What a token-refresh run did. `needs_consent` counts every connection that needs a person,
/// whether it was found so in this run or already marked; `skipped` counts the ones not due,
/// app-only or without a refresh token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Refreshed and stored.
    pub refreshed: usize,
    /// Not due, app-only, or without a refresh token.
    pub skipped: usize,
    /// Failed for a reason other than consent.
    pub failed: usize,
    /// Needing a person to consent again.
    pub needs_consent: usize,
    /// Due but left for the next run: the run would not have finished within its time.
    #[serde(default)]
    pub deferred: usize,
}

impl Summary {
    /// Counts one connection's outcome.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Refreshed => self.refreshed += 1,
            Outcome::Skipped(SkipReason::NeedsConsent)
            | Outcome::Failed(RefreshFailure::NeedsConsent) => self.needs_consent += 1,
            Outcome::NotDue | Outcome::Skipped(_) => self.skipped += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Deferred => self.deferred += 1,
        }
    }
}

/// Why an item of [`run_bounded`] has no result of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError<E> {
    /// The item's function returned an error.
    #[error("failed: {0}")]
    Failed(E),
    /// The item's function panicked; the message is the panic payload if it was a string.
    #[error("panicked: {0}")]
    Panicked(String),
    /// The task was cancelled (the runtime is shutting down).
    #[error("cancelled")]
    Cancelled,
}

/// Runs `f` on every item with at most `limit` (at least 1) running at once, each in its own
/// task, and returns every item with its result in input order. An error or a panic in one item
/// is reported for that item only; the others run to completion.
pub async fn run_bounded<I, T, E, F, Fut>(
    items: Vec<I>,
    limit: usize,
    f: F,
) -> Vec<(I, Result<T, RunError<E>>)>
where
    I: Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let limit = limit.max(1);
    let f = Arc::new(f);
    let mut results: Vec<Option<Result<T, RunError<E>>>> =
        std::iter::repeat_with(|| None).take(items.len()).collect();
    let mut index_of = HashMap::new();
    let mut set = JoinSet::new();
    let mut next = 0;
    loop {
        while set.len() < limit {
            let Some(item) = items.get(next).cloned() else {
                break;
            };
            let f = Arc::clone(&f);
            // Calling `f` inside the task means a panic while building the future is caught too.
            let handle = set.spawn(async move { f(item).await });
            index_of.insert(handle.id(), next);
            next += 1;
        }
        let Some(joined) = set.join_next_with_id().await else {
            break;
        };
        let (id, result) = match joined {
            Ok((id, r)) => (id, r.map_err(RunError::Failed)),
            Err(e) => {
                let id = e.id();
                let err = if e.is_panic() {
                    RunError::Panicked(panic_message(e.into_panic()))
                } else {
                    RunError::Cancelled
                };
                (id, Err(err))
            }
        };
        if let Some(slot) = index_of.remove(&id).and_then(|i| results.get_mut(i)) {
            *slot = Some(result);
        }
    }
    items
        .into_iter()
        .zip(results)
        .map(|(item, r)| (item, r.unwrap_or(Err(RunError::Cancelled))))
        .collect()
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 06:00 UTC);

    fn active() -> ConnectionTimes {
        ConnectionTimes {
            provider: Provider::Entra,
            app_only: false,
            needs_consent: false,
            has_refresh_token: true,
            access_token_expires_at: Some(NOW + Duration::minutes(50)),
            refresh_token_issued_at: Some(NOW - Duration::days(2)),
            last_refreshed_at: Some(NOW - Duration::days(2)),
        }
    }

    #[test]
    fn policy_table() {
        let cfg = RefreshConfig::default();
        let cases: Vec<(&str, ConnectionTimes, Decision)> = vec![
            (
                "fresh: not due until the access token nears expiry",
                active(),
                Decision::NotDue {
                    next_at: NOW + Duration::minutes(40),
                },
            ),
            (
                "access token expires within the skew",
                ConnectionTimes {
                    access_token_expires_at: Some(NOW + Duration::minutes(5)),
                    ..active()
                },
                Decision::Due(DueReason::AccessTokenExpiring {
                    expires_at: NOW + Duration::minutes(5),
                }),
            ),
            (
                "access token long expired",
                ConnectionTimes {
                    access_token_expires_at: Some(NOW - Duration::hours(5)),
                    ..active()
                },
                Decision::Due(DueReason::AccessTokenExpiring {
                    expires_at: NOW - Duration::hours(5),
                }),
            ),
            (
                "refresh token unused for 8 days",
                ConnectionTimes {
                    access_token_expires_at: None,
                    refresh_token_issued_at: Some(NOW - Duration::days(30)),
                    last_refreshed_at: Some(NOW - Duration::days(8)),
                    ..active()
                },
                Decision::Due(DueReason::RefreshTokenAge {
                    last_used_at: NOW - Duration::days(8),
                }),
            ),
            (
                "no access-token expiry: due at refresh-token age",
                ConnectionTimes {
                    access_token_expires_at: None,
                    ..active()
                },
                Decision::NotDue {
                    next_at: NOW + Duration::days(5),
                },
            ),
            (
                "a long-lived access token does not defer the weekly refresh",
                ConnectionTimes {
                    access_token_expires_at: Some(NOW + Duration::days(30)),
                    ..active()
                },
                Decision::NotDue {
                    next_at: NOW + Duration::days(5),
                },
            ),
            (
                "nothing known about the refresh token",
                ConnectionTimes {
                    access_token_expires_at: None,
                    refresh_token_issued_at: None,
                    last_refreshed_at: None,
                    ..active()
                },
                Decision::Due(DueReason::NeverRefreshed),
            ),
            (
                "needs consent is skipped even when due",
                ConnectionTimes {
                    needs_consent: true,
                    access_token_expires_at: Some(NOW - Duration::days(1)),
                    ..active()
                },
                Decision::Skip(SkipReason::NeedsConsent),
            ),
            (
                "app-only",
                ConnectionTimes {
                    app_only: true,
                    has_refresh_token: false,
                    ..active()
                },
                Decision::Skip(SkipReason::AppOnly),
            ),
            (
                "token flow without refresh token",
                ConnectionTimes {
                    provider: Provider::Msa,
                    has_refresh_token: false,
                    ..active()
                },
                Decision::Skip(SkipReason::NoRefreshToken),
            ),
        ];
        for (name, times, want) in cases {
            assert_eq!(decide(&times, &cfg, NOW), want, "{name}");
        }
    }

    #[test]
    fn defaults_never_let_a_refresh_token_lapse() {
        // A connection refreshed whenever due, by a run every 6 hours, never gets near Entra's
        // 90-day inactivity window or a week of idleness, even with no access-token expiry known.
        let cfg = RefreshConfig::default();
        let mut t = ConnectionTimes {
            access_token_expires_at: None,
            ..active()
        };
        let mut now = NOW;
        let mut longest_idle = Duration::ZERO;
        for _ in 0..(4 * 200) {
            now += Duration::hours(6);
            let idle = now - last_use(&t).unwrap();
            longest_idle = longest_idle.max(idle);
            if let Decision::Due(_) = decide(&t, &cfg, now) {
                t.last_refreshed_at = Some(now);
            }
        }
        assert!(longest_idle <= Duration::days(7) + Duration::hours(6));
        // At least 80 days of slack before Entra's 90-day inactivity limit.
        assert!(Duration::days(90) - cfg.max_refresh_token_age >= Duration::days(80));
        assert!(cfg.max_refresh_token_age < ACS_REFRESH_TOKEN_LIFETIME);
    }

    #[test]
    fn next_refresh_and_acs_lapse() {
        let cfg = RefreshConfig::default();
        assert_eq!(
            next_refresh_at(&active(), &cfg, NOW),
            Some(NOW + Duration::minutes(40))
        );
        let due = ConnectionTimes {
            access_token_expires_at: Some(NOW),
            ..active()
        };
        assert_eq!(next_refresh_at(&due, &cfg, NOW), Some(NOW));
        let skipped = ConnectionTimes {
            needs_consent: true,
            ..active()
        };
        assert_eq!(next_refresh_at(&skipped, &cfg, NOW), None);
        let acs = ConnectionTimes {
            provider: Provider::Acs,
            ..active()
        };
        assert_eq!(
            acs_refresh_token_lapses_at(&acs),
            Some(NOW - Duration::days(2) + Duration::days(182))
        );
        assert_eq!(acs_refresh_token_lapses_at(&active()), None);
    }

    #[test]
    fn lambda_error_types() {
        use RefreshFailure::*;
        assert_eq!(
            NeedsConsent.lambda_error_type(),
            "SpBridge.Fatal.NeedsConsent"
        );
        assert_eq!(
            Throttled.lambda_error_type(),
            "SpBridge.Retryable.Throttled"
        );
        assert_eq!(
            Transient.lambda_error_type(),
            "SpBridge.Retryable.Transient"
        );
        assert_eq!(
            Misconfigured.lambda_error_type(),
            "SpBridge.Fatal.Misconfigured"
        );
        for f in [NeedsConsent, Throttled, Transient, Misconfigured] {
            assert_eq!(
                f.is_retryable(),
                f.lambda_error_type().contains(".Retryable."),
                "{f:?}"
            );
        }
    }

    #[test]
    fn summary_counts_and_serialises() {
        let mut s = Summary::default();
        for o in [
            Outcome::Refreshed,
            Outcome::Refreshed,
            Outcome::NotDue,
            Outcome::Skipped(SkipReason::AppOnly),
            Outcome::Skipped(SkipReason::NeedsConsent),
            Outcome::Failed(RefreshFailure::NeedsConsent),
            Outcome::Failed(RefreshFailure::Transient),
            Outcome::Failed(RefreshFailure::Misconfigured),
            Outcome::Deferred,
        ] {
            s.record(o);
        }
        assert_eq!(
            s,
            Summary {
                refreshed: 2,
                skipped: 2,
                failed: 2,
                needs_consent: 2,
                deferred: 1,
            }
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"refreshed":2,"skipped":2,"failed":2,"needs_consent":2,"deferred":1}"#
        );
        // A summary written before `deferred` existed still reads.
        assert_eq!(
            serde_json::from_str::<Summary>(
                r#"{"refreshed":2,"skipped":2,"failed":2,"needs_consent":2}"#
            )
            .unwrap(),
            Summary { deferred: 0, ..s }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bounded_runner_respects_the_limit_and_isolates_failures() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let items: Vec<u32> = (0..20).collect();
        let (a, b) = (Arc::clone(&in_flight), Arc::clone(&max_seen));
        let results = run_bounded(items, 3, move |i: u32| {
            let (in_flight, max_seen) = (Arc::clone(&a), Arc::clone(&b));
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(5 + u64::from(i % 4) * 3))
                    .await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                match i {
                    4 => Err(format!("item {i} failed")),
                    7 => panic!("item {i} panicked"),
                    _ => Ok(i * 10),
                }
            }
        })
        .await;
        let max = max_seen.load(Ordering::SeqCst);
        assert_eq!(max, 3, "at most 3 in flight, and the limit was used");
        assert_eq!(results.len(), 20);
        for (idx, (item, r)) in results.iter().enumerate() {
            assert_eq!(*item as usize, idx, "input order kept");
            match item {
                4 => assert_eq!(r, &Err(RunError::Failed("item 4 failed".to_owned()))),
                7 => assert_eq!(r, &Err(RunError::Panicked("item 7 panicked".to_owned()))),
                i => assert_eq!(r, &Ok(i * 10)),
            }
        }
    }

    #[tokio::test]
    async fn bounded_runner_edge_cases() {
        let empty: Vec<(u8, Result<u8, RunError<()>>)> =
            run_bounded(Vec::<u8>::new(), 4, |i| async move { Ok(i) }).await;
        assert!(empty.is_empty());
        // A limit of 0 still makes progress, one at a time.
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Arc::clone(&in_flight), Arc::clone(&max_seen));
        let r = run_bounded(vec![1u8, 2, 3], 0, move |i| {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            async move {
                b.fetch_max(a.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                a.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, ()>(i)
            }
        })
        .await;
        assert_eq!(r.iter().filter(|(_, r)| r.is_ok()).count(), 3);
        assert_eq!(max_seen.load(Ordering::SeqCst), 1);
    }
}
