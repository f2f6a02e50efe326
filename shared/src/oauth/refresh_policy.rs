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
//! [`RefreshFailure::classify`] maps Microsoft's answer to what token-refresh does next:
//!
//! | class | examples | action | Lambda error type |
//! |---|---|---|---|
//! | [`RefreshFailure::NeedsConsent`] | `invalid_grant`, `interaction_required`, `consent_required`, `login_required`, AADSTS 70008, 700082, 50173, 65001, 50076, 53003, 50079, 50078, 50132, 50133, 700084, 70043, 700081, 54005, 50057, 50055, 65004 | mark the connection `needs_consent`; a person must run `/connect` again | `SpBridge.Fatal.NeedsConsent` |
//! | [`RefreshFailure::Throttled`] | HTTP 429, `slow_down`, AADSTS 50196, 50053 | retry on the next run (or after `Retry-After`) | `SpBridge.Retryable.Throttled` |
//! | [`RefreshFailure::Transient`] | HTTP 5xx, `temporarily_unavailable`, `server_error`, AADSTS 90033, 50000; unknown errors without a 4xx status | retry on the next run | `SpBridge.Retryable.Transient` |
//! | [`RefreshFailure::Misconfigured`] | `invalid_client`, `unauthorized_client`, `invalid_request`, `invalid_scope`, `invalid_resource`, `unsupported_grant_type`, AADSTS 7000215, 7000222, 700016, 700027, 70011, 500011, 50011, 90002, 50049, 7000112, 50194, 50148; ACS50001, ACS50012, ACS70002; unknown errors with a 4xx status | an operator fixes the app registration or secret; retrying will not help | `SpBridge.Fatal.Misconfigured` |
//!
//! ACS answers today with the same `AADSTS` codes as Entra (e.g. `AADSTS7000222` for an expired
//! add-in secret); the older `ACS`-prefixed codes are recognised too. A specific code wins over the
//! generic OAuth `error` word, except that HTTP 429 always means throttled.

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

/// What kind of failure a refresh hit (see the module docs for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshFailure {
    /// The grant is gone or needs a person (expired, revoked, MFA, conditional access, consent).
    NeedsConsent,
    /// Microsoft asked us to slow down.
    Throttled,
    /// A fault that may pass by itself.
    Transient,
    /// The app registration, its secret or the request is wrong.
    Misconfigured,
}

const NEEDS_CONSENT_CODES: &[u64] = &[
    70008, 700082, 50173, 65001, 50076, 53003, 53000, 53001, 50079, 50078, 50132, 50133, 700084,
    70043, 700081, 54005, 50057, 50055, 65004, 50126, 50158, 50089, 70000,
];
const THROTTLED_CODES: &[u64] = &[50196, 50053];
const TRANSIENT_CODES: &[u64] = &[90033, 50000];
const MISCONFIGURED_CODES: &[u64] = &[
    7000215, 7000222, 700016, 700027, 700024, 70011, 500011, 50011, 90002, 50049, 7000112, 50194,
    50148, 900144, 90014, 700054, 65005, 9002313,
];
const ACS_MISCONFIGURED_CODES: &[u64] = &[50001, 50012, 70002];

/// A Microsoft error code: `AADSTS70008`, `ACS50012`, or a bare `70008` (from `error_codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsCode {
    /// Entra / Azure AD (also what ACS sends today).
    Aadsts(u64),
    /// Legacy ACS code.
    Acs(u64),
}

impl MsCode {
    /// Reads a code from a string such as `AADSTS700082`, `ACS50012` or `700082`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (digits, make): (&str, fn(u64) -> MsCode) =
            if let Some(d) = strip_prefix_ignore_case(s, "AADSTS") {
                (d, MsCode::Aadsts)
            } else if let Some(d) = strip_prefix_ignore_case(s, "ACS") {
                (d, MsCode::Acs)
            } else {
                (s, MsCode::Aadsts)
            };
        if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(make)
    }

    /// Finds the first code in free text, e.g. an `error_description` starting
    /// `AADSTS700082: The refresh token has expired…`.
    pub fn find_in(text: &str) -> Option<Self> {
        let upper = text.to_ascii_uppercase();
        for prefix in ["AADSTS", "ACS"] {
            let mut rest = upper.as_str();
            while let Some(at) = rest.find(prefix) {
                let after = &rest[at + prefix.len()..];
                let end = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                if end > 0 {
                    return MsCode::parse(&format!("{prefix}{}", &after[..end]));
                }
                rest = after;
            }
        }
        None
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl RefreshFailure {
    /// Classifies a failed token request from its OAuth `error` word (or a bare code), Microsoft's
    /// code if known (`AADSTS…`, `ACS…`, a number, or an `error_description` containing one) and
    /// the HTTP status. See the module docs for the table.
    pub fn classify(error: &str, ms_code: Option<&str>, http_status: Option<u16>) -> Self {
        if http_status == Some(429) {
            return RefreshFailure::Throttled;
        }
        let code = ms_code
            .and_then(|c| MsCode::parse(c).or_else(|| MsCode::find_in(c)))
            .or_else(|| MsCode::parse(error));
        match code {
            Some(MsCode::Aadsts(n)) if NEEDS_CONSENT_CODES.contains(&n) => {
                return RefreshFailure::NeedsConsent;
            }
            Some(MsCode::Aadsts(n)) if THROTTLED_CODES.contains(&n) => {
                return RefreshFailure::Throttled;
            }
            Some(MsCode::Aadsts(n)) if TRANSIENT_CODES.contains(&n) => {
                return RefreshFailure::Transient;
            }
            Some(MsCode::Aadsts(n)) if MISCONFIGURED_CODES.contains(&n) => {
                return RefreshFailure::Misconfigured;
            }
            Some(MsCode::Acs(n)) if ACS_MISCONFIGURED_CODES.contains(&n) => {
                return RefreshFailure::Misconfigured;
            }
            _ => {}
        }
        if http_status.is_some_and(|s| s >= 500) {
            return RefreshFailure::Transient;
        }
        match error.trim().to_ascii_lowercase().as_str() {
            "invalid_grant"
            | "interaction_required"
            | "consent_required"
            | "login_required"
            | "access_denied" => RefreshFailure::NeedsConsent,
            "slow_down" => RefreshFailure::Throttled,
            "temporarily_unavailable" | "server_error" => RefreshFailure::Transient,
            "invalid_client"
            | "unauthorized_client"
            | "invalid_request"
            | "invalid_scope"
            | "invalid_resource"
            | "invalid_instance"
            | "unsupported_grant_type"
            | "unsupported_response_type" => RefreshFailure::Misconfigured,
            // Unknown: a 4xx is a refusal nobody will retry away; anything else may pass.
            _ if http_status.is_some_and(|s| (400..500).contains(&s)) => {
                RefreshFailure::Misconfigured
            }
            _ => RefreshFailure::Transient,
        }
    }

    /// Whether a later attempt may succeed without anyone acting.
    pub fn is_retryable(self) -> bool {
        matches!(self, RefreshFailure::Throttled | RefreshFailure::Transient)
    }

    /// The Lambda diagnostic `errorType` to report when this failure ends an invocation.
    pub fn lambda_error_type(self) -> &'static str {
        match self {
            RefreshFailure::NeedsConsent => "SpBridge.Fatal.NeedsConsent",
            RefreshFailure::Throttled => "SpBridge.Retryable.Throttled",
            RefreshFailure::Transient => "SpBridge.Retryable.Transient",
            RefreshFailure::Misconfigured => "SpBridge.Fatal.Misconfigured",
        }
    }
}

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
    fn failure_classification_table() {
        use RefreshFailure::*;
        let cases: &[(&str, Option<&str>, Option<u16>, RefreshFailure)] = &[
            ("invalid_grant", None, Some(400), NeedsConsent),
            ("interaction_required", None, Some(400), NeedsConsent),
            ("consent_required", None, Some(400), NeedsConsent),
            (
                "invalid_grant",
                Some("AADSTS70008"),
                Some(400),
                NeedsConsent,
            ),
            (
                "invalid_grant",
                Some(
                    "AADSTS700082: The refresh token has expired due to inactivity. The token was issued on 2026-01-01.",
                ),
                Some(400),
                NeedsConsent,
            ),
            (
                "invalid_grant",
                Some("AADSTS50173"),
                Some(400),
                NeedsConsent,
            ),
            ("invalid_grant", Some("65001"), Some(400), NeedsConsent),
            (
                "interaction_required",
                Some("AADSTS50076"),
                Some(400),
                NeedsConsent,
            ),
            (
                "invalid_grant",
                Some("AADSTS53003"),
                Some(400),
                NeedsConsent,
            ),
            ("AADSTS700082", None, None, NeedsConsent),
            // A specific misconfiguration code beats the generic word.
            (
                "invalid_client",
                Some("AADSTS7000215"),
                Some(401),
                Misconfigured,
            ),
            (
                "invalid_client",
                Some("AADSTS7000222"),
                Some(401),
                Misconfigured,
            ),
            (
                "unauthorized_client",
                Some("AADSTS700016"),
                Some(400),
                Misconfigured,
            ),
            (
                "invalid_scope",
                Some("AADSTS70011"),
                Some(400),
                Misconfigured,
            ),
            (
                "invalid_resource",
                Some("AADSTS500011"),
                Some(400),
                Misconfigured,
            ),
            (
                "invalid_request",
                Some("AADSTS90002"),
                Some(400),
                Misconfigured,
            ),
            ("invalid_client", None, Some(401), Misconfigured),
            // ACS.
            ("invalid_client", Some("ACS50012"), Some(401), Misconfigured),
            (
                "invalid_request",
                Some("ACS70002: Error validating credentials. ACS50012: Authentication failed."),
                Some(400),
                Misconfigured,
            ),
            ("invalid_grant", Some("ACS50027"), Some(400), NeedsConsent),
            // Throttling and faults.
            ("invalid_grant", Some("AADSTS70008"), Some(429), Throttled),
            ("", None, Some(429), Throttled),
            ("slow_down", None, Some(400), Throttled),
            ("invalid_request", Some("AADSTS50196"), Some(400), Throttled),
            ("temporarily_unavailable", None, Some(503), Transient),
            ("server_error", None, Some(500), Transient),
            ("", None, Some(502), Transient),
            ("", Some("AADSTS90033"), Some(400), Transient),
            ("server_error", None, None, Transient),
            // Unknown.
            ("something_new", None, Some(400), Misconfigured),
            ("something_new", None, None, Transient),
        ];
        for (error, code, status, want) in cases {
            assert_eq!(
                RefreshFailure::classify(error, *code, *status),
                *want,
                "{error} {code:?} {status:?}"
            );
        }
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
    fn ms_codes() {
        assert_eq!(MsCode::parse("AADSTS70008"), Some(MsCode::Aadsts(70008)));
        assert_eq!(MsCode::parse("aadsts70008"), Some(MsCode::Aadsts(70008)));
        assert_eq!(MsCode::parse("ACS50012"), Some(MsCode::Acs(50012)));
        assert_eq!(MsCode::parse("700082"), Some(MsCode::Aadsts(700082)));
        assert_eq!(MsCode::parse("invalid_grant"), None);
        assert_eq!(MsCode::parse("AADSTS"), None);
        assert_eq!(MsCode::parse("99999999999999999999999"), None);
        assert_eq!(
            MsCode::find_in("Trace: x. AADSTS50173: The provided grant has expired"),
            Some(MsCode::Aadsts(50173))
        );
        assert_eq!(MsCode::find_in("no code here; ACS"), None);
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
        ] {
            s.record(o);
        }
        assert_eq!(
            s,
            Summary {
                refreshed: 2,
                skipped: 2,
                failed: 2,
                needs_consent: 2
            }
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"refreshed":2,"skipped":2,"failed":2,"needs_consent":2}"#
        );
        assert_eq!(
            serde_json::from_str::<Summary>(
                r#"{"refreshed":2,"skipped":2,"failed":2,"needs_consent":2}"#
            )
            .unwrap(),
            s
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
