//! Waiting out a short outage of a store before a write that must not be lost gives up.
//!
//! Some writes follow an effect that cannot be taken back: a file that landed, a refresh token
//! Microsoft already rotated. If the store is briefly unreachable, failing at once would lose the
//! record of that effect; the SDK's own retries cover only a second or two. These writes are
//! tried again at [`PAUSES`] before the caller's usual retry path takes over.

use std::future::Future;
use std::time::Duration;

/// The pauses between tries: 250 ms doubling, about 8 s in all.
pub const PAUSES: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Runs `op` until it succeeds, fails for a reason `is_outage` does not accept, or has been
/// tried once more than there are [`PAUSES`].
pub async fn retry<T, E, F, Fut>(is_outage: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    for pause in PAUSES {
        match op().await {
            Err(e) if is_outage(&e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "store unavailable; trying the write again");
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
    op().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_waited_out_and_other_errors_are_not() {
        let mut calls = 0;
        let out: Result<u32, String> = retry(
            |e: &String| e == "down",
            || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err("down".to_owned()) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(out, Ok(3));

        let mut calls = 0;
        let out: Result<u32, String> = retry(
            |e: &String| e == "down",
            || {
                calls += 1;
                async { Err("refused".to_owned()) }
            },
        )
        .await;
        assert_eq!((out, calls), (Err("refused".to_owned()), 1));

        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let out: Result<u32, String> = retry(
            |e: &String| e == "down",
            || {
                calls += 1;
                async { Err("down".to_owned()) }
            },
        )
        .await;
        assert_eq!((out, calls), (Err("down".to_owned()), PAUSES.len() + 1));
        assert_eq!(started.elapsed(), PAUSES.iter().sum::<Duration>());
    }
}
