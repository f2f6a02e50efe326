//! In-memory token cache with single-flight renewal.
//!
//! One [`TokenCache`] lives per warm container. Each key has its own async mutex: the first
//! caller for a stale key fetches while the others wait on the lock and then read its result,
//! so N concurrent callers cost one token request.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use time::OffsetDateTime;

use super::{acs::RealmCache, error::IdentityError, request::RetryPolicy, token::Token};

/// What a cached token is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Authority or realm, e.g. `https://login.microsoftonline.com/{tenant}`.
    pub authority: String,
    /// Client id.
    pub client_id: String,
    /// Resource (v1, ACS) or scope (v2, MSA).
    pub target: String,
    /// The user or connection the token acts for; `None` for app-only tokens.
    pub user: Option<String>,
}

struct Entry {
    token: Token,
    fetched: Instant,
}

#[derive(Default)]
struct SlotState {
    entry: Option<Entry>,
    /// The last fetch's error and when it ended: handed to the callers that waited for it.
    failure: Option<(Instant, IdentityError)>,
}

type Slot = Arc<tokio::sync::Mutex<SlotState>>;

/// Tokens, ACS realms and the retry policy shared by a warm container.
pub struct TokenCache {
    slots: Mutex<HashMap<CacheKey, Slot>>,
    skew: Duration,
    default_lifetime: Duration,
    /// Realms discovered per SharePoint host.
    pub realms: RealmCache,
    /// How token requests retry transient faults.
    pub retry: RetryPolicy,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .field("skew", &self.skew)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache that renews tokens `skew` before they expire.
    pub fn new(skew: Duration) -> Self {
        TokenCache {
            slots: Mutex::new(HashMap::new()),
            skew,
            // Tokens sent without any expiry are kept this long.
            default_lifetime: Duration::from_secs(300),
            realms: RealmCache::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// Replaces the retry policy (tests shorten it).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Number of keys ever seen.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True if no key was ever seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: &CacheKey) -> Slot {
        // A poisoned map only means another thread panicked mid-insert; the map is still usable.
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone()).or_default().clone()
    }

    fn fresh(&self, e: &Entry) -> bool {
        match e.token.expires_at {
            Some(_) => e.token.is_fresh(OffsetDateTime::now_utc(), self.skew),
            None => e.fetched.elapsed() < self.default_lifetime,
        }
    }

    /// Returns a fresh cached token or runs `fetch` once for all concurrent callers of `key`.
    ///
    /// With `force`, a token cached before this call is not used (the caller saw it rejected
    /// with a 401); a token another caller fetched while this one waited is.
    /// An error is shared with the callers that were waiting for that fetch, not cached for
    /// later ones.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: &CacheKey,
        force: bool,
        fetch: F,
    ) -> Result<Token, IdentityError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, IdentityError>>,
    {
        let asked = Instant::now();
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some((at, err)) = &guard.failure {
            if *at > asked {
                return Err(err.clone());
            }
        }
        if let Some(e) = guard.entry.as_ref() {
            let usable = if force {
                e.fetched > asked
            } else {
                self.fresh(e)
            };
            if usable {
                return Ok(e.token.clone());
            }
        }
        match fetch().await {
            Ok(token) => {
                guard.entry = Some(Entry {
                    token: token.clone(),
                    fetched: Instant::now(),
                });
                guard.failure = None;
                Ok(token)
            }
            Err(err) => {
                guard.failure = Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }

    /// Drops a key's token so the next call fetches.
    pub async fn invalidate(&self, key: &CacheKey) {
        let slot = self.slot(key);
        let mut state = slot.lock().await;
        state.entry = None;
        state.failure = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::identity::{
        request::{HttpRequest, send_token},
        testserver,
    };

    fn key(t: &str) -> CacheKey {
        CacheKey {
            authority: "a".into(),
            client_id: "c".into(),
            target: t.into(),
            user: None,
        }
    }

    fn token(expires_in: u64) -> Token {
        Token::from_json(
            &testserver::token_body("t", expires_in),
            OffsetDateTime::now_utc(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_request_over_a_real_socket() {
        let server = testserver::start(Duration::from_millis(200), |n, _| {
            (
                200,
                vec![],
                testserver::token_body(&format!("at-{n}"), 3600),
            )
        })
        .await;
        let http = testserver::client();
        let cache = Arc::new(TokenCache::default());
        let url = server.url.join("/token").unwrap();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (cache, http, url) = (cache.clone(), http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let req = HttpRequest::post_form(url, vec![]);
                cache
                    .get_or_fetch(&key("r"), false, || async {
                        send_token(&http, &req, &RetryPolicy::default()).await
                    })
                    .await
            }));
        }
        for t in tasks {
            let tok = t.await.unwrap().unwrap();
            assert_eq!(tok.access_token.expose_secret(), "at-0");
        }
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn renews_ahead_of_expiry_and_on_force() {
        let cache = TokenCache::new(Duration::from_secs(300));
        let calls = AtomicUsize::new(0);
        let fetch = |life| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok(token(life)) }
        };
        // Expires inside the skew: every call renews.
        cache
            .get_or_fetch(&key("short"), false, || fetch(100))
            .await
            .unwrap();
        cache
            .get_or_fetch(&key("short"), false, || fetch(100))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Long-lived: cached.
        cache
            .get_or_fetch(&key("long"), false, || fetch(3600))
            .await
            .unwrap();
        cache
            .get_or_fetch(&key("long"), false, || fetch(3600))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Forced: fetched again.
        cache
            .get_or_fetch(&key("long"), true, || fetch(3600))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        cache.invalidate(&key("long")).await;
        cache
            .get_or_fetch(&key("long"), false, || fetch(3600))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn concurrent_forced_callers_share_one_renewal() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        cache
            .get_or_fetch(&key("k"), false, || async { Ok(token(3600)) })
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(&key("k"), true, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(token(3600))
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_is_shared_by_its_waiters_only() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(&key("f"), false, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<Token, _>(IdentityError::Protocol("down".into()))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Err(IdentityError::Protocol(_))));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A caller arriving after the failure tries again.
        let t = cache
            .get_or_fetch(&key("f"), false, || async { Ok(token(3600)) })
            .await;
        assert!(t.is_ok());
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = TokenCache::default();
        let r = cache
            .get_or_fetch(&key("e"), false, || async {
                Err(IdentityError::Protocol("boom".into()))
            })
            .await;
        assert!(r.is_err());
        let t = cache
            .get_or_fetch(&key("e"), false, || async { Ok(token(3600)) })
            .await;
        assert!(t.is_ok());
    }
}
