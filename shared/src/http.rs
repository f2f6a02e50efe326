//! The one outbound HTTP client, built once per cold start.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use time::{OffsetDateTime, macros::format_description};
use tokio::time::Instant;

use crate::config::HttpConfig;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The extra CA file cannot be read.
    #[error("cannot read extra CA file {path}: {source}")]
    ReadCa {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The extra CA file holds no certificate.
    #[error("extra CA file {path} holds no usable PEM certificate: {reason}")]
    BadCa {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// reqwest refused the settings.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Builds the shared `reqwest::Client`: timeouts set, redirects off (OAuth endpoints answer with
/// redirects that must be seen, not followed), and the optional extra CA trusted.
pub fn build_client(cfg: &HttpConfig) -> Result<reqwest::Client, HttpClientError> {
    let mut builder = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("spbridge/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cfg.extra_ca_pem {
        let pem = std::fs::read(path).map_err(|source| HttpClientError::ReadCa {
            path: path.display().to_string(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| HttpClientError::BadCa {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| HttpClientError::Build(e.to_string()))
}

/// Parses `Retry-After`: delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, relative to `now`; a past date means "now").
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fmt = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, &fmt)
        .ok()?
        .assume_utc();
    let delta = at - now;
    Some(if delta.is_negative() {
        Duration::ZERO
    } else {
        delta.unsigned_abs()
    })
}

/// How hard one request is retried. The one retry engine is [`retry`]; every retrying caller
/// (identity token calls, uploads, the `source_url` fetch) runs through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// First backoff when the server names no `Retry-After`; doubles per attempt.
    pub base_delay: Duration,
    /// Cap of one backoff, and the longest `Retry-After` waited out; a longer one ends retrying
    /// at once and the caller relays the wait.
    pub max_delay: Duration,
    /// Cap of all waiting within one [`Budget`] (one upload, one token call).
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
    /// The wait before attempt `attempt + 1` when the server named none: exponential with
    /// "equal jitter" (half fixed, half random) so that parallel callers spread out.
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

/// The waiting one piece of work may still do: the Lambda deadline and the policy's total wait,
/// shared by every request of that work (all chunks of one upload). Counts retries for reports.
#[derive(Debug)]
pub struct Budget {
    deadline: Option<Instant>,
    waited: Mutex<Duration>,
    retries: AtomicU32,
}

impl Budget {
    /// A budget ending at `deadline` (none: only the policy's total wait bounds it).
    pub fn new(deadline: Option<Instant>) -> Self {
        Budget {
            deadline,
            waited: Mutex::new(Duration::ZERO),
            retries: AtomicU32::new(0),
        }
    }

    /// When the caller must have an answer.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Retries (and other recoveries) counted so far.
    pub fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Counts a recovery that needed no wait (a resent remainder, a renewed token).
    pub fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Sleeps `wait` unless that would pass the deadline or `policy`'s total wait.
    pub async fn pause(&self, policy: &RetryPolicy, wait: Duration) -> Result<(), GaveUp> {
        if self.deadline.is_some_and(|d| Instant::now() + wait > d) {
            return Err(GaveUp::Deadline);
        }
        {
            let mut waited = self.waited.lock().map_err(|_| GaveUp::Budget)?;
            if *waited + wait > policy.max_total_wait {
                return Err(GaveUp::Budget);
            }
            *waited += wait;
        }
        self.count_retry();
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Next<T> {
    /// Finished (success or a failure retrying cannot fix): return it.
    Done(T),
    /// Worth another attempt. `retry_after` is the server's `Retry-After` (honoured: never
    /// shortened, and a longer one than `max_delay` ends retrying); `last` is what to return if
    /// no attempt is left.
    Again {
        /// The server's `Retry-After`, if it named one.
        retry_after: Option<Duration>,
        /// The answer to give up with.
        last: T,
    },
}

/// Why [`retry`] stopped before the work succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// `max_attempts` were made.
    Attempts,
    /// The server's `Retry-After` is longer than `max_delay`.
    WaitTooLong,
    /// The next wait would pass the total wait budget.
    Budget,
    /// The next wait would pass the deadline.
    Deadline,
}

/// The end of [`retry`]: the last answer, attempts made, and why retrying stopped early (with
/// the wait that was not taken), if it did.
#[derive(Debug)]
pub struct Retried<T> {
    /// The last attempt's answer.
    pub value: T,
    /// Attempts made.
    pub attempts: u32,
    /// Why retrying stopped, and the wait it would have needed.
    pub gave_up: Option<(GaveUp, Duration)>,
}

/// Runs `attempt(n)` (n from 1) until it is [`Next::Done`] or `policy` and `budget` allow no
/// further wait. Waits the server's `Retry-After` when named, else a jittered backoff.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, budget: &Budget, mut attempt: F) -> Retried<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Next<T>>,
{
    let max = policy.max_attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        let (named, last) = match attempt(n).await {
            Next::Done(value) => {
                return Retried {
                    value,
                    attempts: n,
                    gave_up: None,
                };
            }
            Next::Again { retry_after, last } => (retry_after, last),
        };
        let wait = named.unwrap_or_else(|| policy.backoff(n));
        let stop = if named.is_some_and(|w| w > policy.max_delay) {
            Err(GaveUp::WaitTooLong)
        } else if n >= max {
            Err(GaveUp::Attempts)
        } else {
            tracing::info!(attempt = n, wait_ms = wait.as_millis() as u64, "retrying");
            budget.pause(policy, wait).await
        };
        if let Err(why) = stop {
            return Retried {
                value: last,
                attempts: n,
                gave_up: Some((why, wait)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = datetime!(2015-10-21 07:27:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            max_total_wait: Duration::from_secs(60),
        }
    }

    /// Runs the engine over scripted answers: each is "again" with that Retry-After (or none);
    /// past the script, done.
    async fn run(
        p: &RetryPolicy,
        budget: &Budget,
        script: &[Option<Duration>],
    ) -> (Retried<u32>, Duration) {
        let start = Instant::now();
        let r = retry(p, budget, |n| {
            let step = script.get(n as usize - 1).copied();
            async move {
                match step {
                    Some(retry_after) => Next::Again {
                        retry_after,
                        last: n,
                    },
                    None => Next::Done(n),
                }
            }
        })
        .await;
        (r, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded() {
        let b = Budget::new(None);
        let (r, _) = run(&policy(3), &b, &[None; 10]).await;
        assert_eq!((r.value, r.attempts), (3, 3));
        assert_eq!(r.gave_up.map(|g| g.0), Some(GaveUp::Attempts));
        assert_eq!(b.retries(), 2);
        let (r, _) = run(&policy(3), &Budget::new(None), &[None]).await;
        assert_eq!((r.value, r.attempts, r.gave_up), (2, 2, None));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_exactly() {
        let w = Some(Duration::from_secs(7));
        let (r, took) = run(&policy(5), &Budget::new(None), &[w, w]).await;
        assert_eq!((r.value, r.gave_up), (3, None));
        assert_eq!(took, Duration::from_secs(14));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_over_the_cap_budget_or_deadline_ends_retrying() {
        let long = Some(Duration::from_secs(31));
        let (r, took) = run(&policy(5), &Budget::new(None), &[long]).await;
        assert_eq!(
            r.gave_up,
            Some((GaveUp::WaitTooLong, Duration::from_secs(31)))
        );
        assert_eq!(took, Duration::ZERO);

        let p = RetryPolicy {
            max_total_wait: Duration::from_secs(25),
            ..policy(10)
        };
        let w = Some(Duration::from_secs(10));
        let (r, took) = run(&p, &Budget::new(None), &[w, w, w]).await;
        assert_eq!(
            (r.attempts, r.gave_up.map(|g| g.0)),
            (3, Some(GaveUp::Budget))
        );
        assert_eq!(took, Duration::from_secs(20));

        let deadline = Budget::new(Some(Instant::now() + Duration::from_secs(15)));
        let (r, took) = run(&policy(10), &deadline, &[w, w]).await;
        assert_eq!(r.gave_up.map(|g| g.0), Some(GaveUp::Deadline));
        assert_eq!(took, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_shared_by_every_request_of_one_piece_of_work() {
        let p = RetryPolicy {
            max_total_wait: Duration::from_secs(12),
            ..policy(10)
        };
        let b = Budget::new(None);
        let w = Some(Duration::from_secs(5));
        let (first, _) = run(&p, &b, &[w, w]).await;
        assert_eq!(first.gave_up, None);
        let (second, _) = run(&p, &b, &[w]).await;
        assert_eq!(second.gave_up.map(|g| g.0), Some(GaveUp::Budget));
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_total_wait: Duration::from_secs(10),
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
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
            seen.insert(b3);
        }
        assert!(seen.len() > 10, "backoff is jittered");
    }
}
