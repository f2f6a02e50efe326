//! How uploads send a request: through the one retry engine ([`crate::http::retry`]), with the
//! upload's own rules on top: which statuses are worth repeating for a request, and "renew the
//! token once on 401".

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::{BearerSource, MicrosoftError, UploadError};
pub use crate::http::RetryPolicy;
use crate::http::{Budget, GaveUp, Next, parse_retry_after, retry};

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
    /// Deadline, waiting so far and retries, shared by every request of the upload.
    pub budget: &'a Budget,
    /// `None` for pre-authenticated URLs (Graph's `uploadUrl` must not get our token).
    pub bearer: Option<&'a dyn BearerSource>,
}

/// One attempt's answer before the engine decides.
enum Sent {
    Response(reqwest::Response),
    /// Throttled: Microsoft's error body, kept for the caller.
    Throttled(Box<MicrosoftError>),
    Network(reqwest::Error),
    Token(UploadError),
}

impl Sender<'_> {
    /// Sends the request `build` makes, as often as the policy allows. Returns the last response
    /// (success or an error status the caller maps), [`UploadError::Throttled`] when throttling
    /// outlasts the attempts, budget or deadline, or a network error.
    pub async fn send(
        &self,
        safety: Safety,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UploadError> {
        let token: Mutex<Option<SecretString>> = Mutex::new(match self.bearer {
            Some(b) => Some(b.bearer(false).await?),
            None => None,
        });
        let renewed = std::sync::atomic::AtomicBool::new(false);
        let (token, renewed, build) = (&token, &renewed, &build);
        let done = retry(self.policy, self.budget, |_| async move {
            let mut rb = build(self.http);
            let current = token.lock().ok().and_then(|t| t.clone());
            if let Some(t) = &current {
                rb = rb.bearer_auth(t.expose_secret());
            }
            let resp = match rb.send().await {
                Ok(resp) => resp,
                Err(e) if safety == Safety::Idempotent => {
                    tracing::info!(error = %super::error::describe_transport(&e), "network error");
                    return Next::Again {
                        retry_after: None,
                        last: Sent::Network(e),
                    };
                }
                Err(e) => return Next::Done(Sent::Network(e)),
            };
            let status = resp.status().as_u16();
            // The token policy: a 401 renews the token once, and the request goes again at once.
            if status == 401
                && let Some(b) = self.bearer
                && !renewed.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                return match b.bearer(true).await {
                    Ok(fresh) => {
                        if let Ok(mut t) = token.lock() {
                            *t = Some(fresh);
                        }
                        Next::Again {
                            retry_after: Some(Duration::ZERO),
                            last: Sent::Response(resp),
                        }
                    }
                    Err(e) => Next::Done(Sent::Token(e)),
                };
            }
            let throttled = status == 429 || status == 503;
            let fault = matches!(status, 500 | 502 | 504) && safety == Safety::Idempotent;
            if !throttled && !fault {
                return Next::Done(Sent::Response(resp));
            }
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
            tracing::info!(status, "retryable answer");
            let last = if throttled {
                // Read the body (it frees the connection) and keep Microsoft's code and id.
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap_or_default();
                Sent::Throttled(Box::new(MicrosoftError::parse(status, &headers, &body)))
            } else {
                Sent::Response(resp)
            };
            Next::Again { retry_after, last }
        })
        .await;
        let wait = done.gave_up.map(|(_, w)| w);
        match done.value {
            Sent::Response(resp) => Ok(resp),
            Sent::Token(e) => Err(e),
            Sent::Network(e) => Err(UploadError::transport(&e)),
            Sent::Throttled(ms) => Err(UploadError::Throttled {
                // Honouring Retry-After means not coming back sooner than it says.
                retry_after: wait.unwrap_or(Duration::from_secs(1)),
                microsoft: Some(ms),
            }),
        }
    }

    /// Sleeps `wait` unless that would pass the deadline or the upload's waiting budget.
    pub async fn pause(&self, wait: Duration) -> Result<(), GaveUp> {
        self.budget.pause(self.policy, wait).await
    }
}
