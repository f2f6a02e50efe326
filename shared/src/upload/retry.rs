//! Bounded retries: throttling (`429`, `503` with `Retry-After`), server faults and network
//! faults, an expired token, and the caller's deadline.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::{Attempt, BearerSource, UploadError};
pub use crate::http::parse_retry_after;

/// How hard one request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff when the service gives no `Retry-After`; doubles per attempt.
    pub base_delay: Duration,
    /// Cap of one backoff, and the longest `Retry-After` waited out; a longer one ends the
    /// upload as [`UploadError::Throttled`] carrying it.
    pub max_delay: Duration,
    /// Cap of all waiting within one upload; beyond it the upload stops as
    /// [`UploadError::Throttled`].
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_total_wait: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` when the service named none: exponential with
    /// "equal jitter" (half fixed, half random) so that parallel uploads spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter_ms = half.as_millis() as u64;
        let jitter = if jitter_ms == 0 {
            0
        } else {
            rand::random_range(0..=jitter_ms)
        };
        half + Duration::from_millis(jitter)
    }
}

/// Whether a failed request may be sent again as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Safety {
    /// Repeat on throttling, 5xx and network faults.
    Idempotent,
    /// Repeat only on throttling (429/503: the service did not act); other faults go back to
    /// the caller, which knows how to recover (Graph asks the session where it stands).
    ThrottleOnly,
}

/// One upload's way of sending requests.
pub(crate) struct Sender<'a> {
    pub http: &'a reqwest::Client,
    pub policy: &'a RetryPolicy,
    pub attempt: &'a Attempt,
    /// `None` for pre-authenticated URLs (Graph's `uploadUrl` must not get our token).
    pub bearer: Option<&'a dyn BearerSource>,
    /// Waiting done so far in this upload, shared across requests.
    pub waited: &'a std::sync::Mutex<Duration>,
}

impl Sender<'_> {
    /// Sends the request `build` makes, as often as the policy allows. Returns the last response
    /// (success or an error status the caller maps), [`UploadError::Throttled`] when throttling
    /// outlasts the budget or deadline, or a network error.
    pub async fn send(
        &self,
        safety: Safety,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UploadError> {
        let mut token: Option<SecretString> = match self.bearer {
            Some(b) => Some(b.bearer(false).await?),
            None => None,
        };
        let mut refreshed = false;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut rb = build(self.http);
            if let Some(t) = &token {
                rb = rb.bearer_auth(t.expose_secret());
            }
            match rb.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status == 401
                        && !refreshed
                        && let Some(b) = self.bearer
                    {
                        refreshed = true;
                        token = Some(b.bearer(true).await?);
                        self.attempt.count_retry();
                        continue;
                    }
                    let throttled = status == 429 || status == 503;
                    let fault = matches!(status, 500 | 502 | 504) && safety == Safety::Idempotent;
                    if !throttled && !fault {
                        return Ok(resp);
                    }
                    let named = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
                    let wait = named.unwrap_or_else(|| self.policy.backoff(tries));
                    // Honouring Retry-After means not coming back sooner: a longer wait than
                    // the policy allows ends the upload, and the caller relays the wait.
                    if throttled && wait > self.policy.max_delay {
                        return Err(UploadError::Throttled { retry_after: wait });
                    }
                    if tries >= self.policy.max_attempts {
                        return if throttled {
                            Err(UploadError::Throttled { retry_after: wait })
                        } else {
                            Ok(resp)
                        };
                    }
                    // Read what is left of the body so the connection can be reused.
                    let _ = resp.bytes().await;
                    tracing::info!(status, wait_ms = wait.as_millis() as u64, tries, "retrying");
                    self.pause(wait)
                        .await
                        .map_err(|()| UploadError::Throttled { retry_after: wait })?;
                }
                Err(e) => {
                    if safety != Safety::Idempotent || tries >= self.policy.max_attempts {
                        return Err(UploadError::transport(&e));
                    }
                    let wait = self.policy.backoff(tries);
                    tracing::info!(error = %super::error::describe_transport(&e), tries, "retrying after network error");
                    self.pause(wait)
                        .await
                        .map_err(|()| UploadError::transport(&e))?;
                }
            }
        }
    }

    /// Sleeps `wait` unless that would pass the deadline or the upload's waiting budget.
    pub async fn pause(&self, wait: Duration) -> Result<(), ()> {
        if let Some(deadline) = self.attempt.deadline
            && Instant::now() + wait > deadline
        {
            return Err(());
        }
        {
            let mut waited = self.waited.lock().map_err(|_| ())?;
            if *waited + wait > self.policy.max_total_wait {
                return Err(());
            }
            *waited += wait;
        }
        self.attempt.count_retry();
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_total_wait: Duration::from_secs(10),
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = p.backoff(3);
            assert!(
                b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
                "{b3:?}"
            );
            let b9 = p.backoff(9);
            assert!(
                b9 >= Duration::from_millis(500) && b9 <= Duration::from_millis(1000),
                "{b9:?}"
            );
        }
    }

    #[tokio::test]
    async fn pause_refuses_to_pass_the_deadline_or_budget() {
        let http = reqwest::Client::new();
        let policy = RetryPolicy {
            max_total_wait: Duration::from_millis(30),
            ..RetryPolicy::default()
        };
        let waited = std::sync::Mutex::new(Duration::ZERO);
        let attempt = Attempt::new(Some(Instant::now() + Duration::from_secs(5)));
        let s = Sender {
            http: &http,
            policy: &policy,
            attempt: &attempt,
            bearer: None,
            waited: &waited,
        };
        assert!(
            s.pause(Duration::from_secs(6)).await.is_err(),
            "passes deadline"
        );
        assert!(s.pause(Duration::from_millis(20)).await.is_ok());
        assert!(
            s.pause(Duration::from_millis(20)).await.is_err(),
            "over budget"
        );
        assert_eq!(attempt.retries(), 1);
    }
}
