//! The warm-container read cache in front of a store.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::time::Instant;

use super::{SecretError, SecretStore, VersionId, Versioned};

/// What the cache remembers about one name.
#[derive(Clone)]
enum Entry {
    Found(Versioned<Value>),
    /// The store said `NotFound`.
    Missing,
}

/// Keeps successful reads for `ttl`, so a warm Lambda container does not call Secrets Manager
/// on every request, and `NotFound` answers for a shorter `not_found_ttl`, so a stream of
/// requests for made-up connection names costs one store call per name and period, not one per
/// request. A successful write replaces the entry; a lost write (conflict) or any other failed
/// read drops it, so the retry reads fresh. A zero TTL disables that half of the cache.
pub struct CachingStore {
    inner: Arc<dyn SecretStore>,
    ttl: Duration,
    not_found_ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Entry)>>,
}

impl CachingStore {
    /// Wraps `inner`; `NotFound` answers are not cached until [`CachingStore::with_not_found_ttl`].
    pub fn new(inner: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        CachingStore {
            inner,
            ttl,
            not_found_ttl: Duration::ZERO,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Also remembers `NotFound` for `ttl` (zero: never).
    pub fn with_not_found_ttl(mut self, ttl: Duration) -> Self {
        self.not_found_ttl = ttl;
        self
    }

    /// Forgets every cached read.
    pub fn clear(&self) {
        self.entries().clear();
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, (Instant, Entry)>> {
        // The map holds only clones; a panic while holding the lock cannot leave it half-written.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, name: &str, entry: Entry) {
        let ttl = match entry {
            Entry::Found(_) => self.ttl,
            Entry::Missing => self.not_found_ttl,
        };
        if ttl.is_zero() {
            self.forget(name);
        } else {
            self.entries()
                .insert(name.to_owned(), (Instant::now() + ttl, entry));
        }
    }

    fn forget(&self, name: &str) {
        self.entries().remove(name);
    }
}

impl SecretStore for CachingStore {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
        Box::pin(async move {
            let hit = self
                .entries()
                .get(name)
                .filter(|(expires, _)| Instant::now() < *expires)
                .map(|(_, e)| e.clone());
            match hit {
                Some(Entry::Found(v)) => return Ok(v),
                Some(Entry::Missing) => {
                    return Err(SecretError::NotFound {
                        name: name.to_owned(),
                    });
                }
                None => {}
            }
            match self.inner.get(name).await {
                Ok(v) => {
                    self.remember(name, Entry::Found(v.clone()));
                    Ok(v)
                }
                Err(e @ SecretError::NotFound { .. }) => {
                    self.remember(name, Entry::Missing);
                    Err(e)
                }
                Err(e) => {
                    self.forget(name);
                    Err(e)
                }
            }
        })
    }

    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<&'a VersionId>,
    ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
        Box::pin(async move {
            match self.inner.put(name, value, expected).await {
                Ok(version) => {
                    self.remember(
                        name,
                        Entry::Found(Versioned {
                            version: version.clone(),
                            value: value.clone(),
                        }),
                    );
                    Ok(version)
                }
                Err(e) => {
                    // After a failed write we no longer know what is stored.
                    self.forget(name);
                    Err(e)
                }
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        self.inner.list(prefix)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::secrets::FileSecretStore;

    #[tokio::test(start_paused = true)]
    async fn reads_are_cached_for_the_ttl_and_writes_refresh_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let backing: Arc<dyn SecretStore> = Arc::new(FileSecretStore::open(dir.path()).unwrap());
        let cached = CachingStore::new(backing.clone(), Duration::from_secs(60));

        let v1 = backing.put("s", &json!({"n": 1}), None).await.unwrap();
        assert_eq!(cached.get("s").await.unwrap().value, json!({"n": 1}));

        // Someone else writes behind the cache's back: within the TTL we still see the old value.
        backing.put("s", &json!({"n": 2}), Some(&v1)).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(cached.get("s").await.unwrap().value, json!({"n": 1}));
        tokio::time::advance(Duration::from_secs(2)).await;
        let fresh = cached.get("s").await.unwrap();
        assert_eq!(fresh.value, json!({"n": 2}));

        // Our own write is visible at once.
        let v3 = cached
            .put("s", &json!({"n": 3}), Some(&fresh.version))
            .await
            .unwrap();
        assert_eq!(cached.get("s").await.unwrap().version, v3);

        // A conflict drops the entry, so the next read goes to the store.
        backing.put("s", &json!({"n": 4}), Some(&v3)).await.unwrap();
        let err = cached
            .put("s", &json!({"n": 5}), Some(&v3))
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert_eq!(cached.get("s").await.unwrap().value, json!({"n": 4}));
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_is_remembered_for_its_own_ttl_and_a_write_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let backing: Arc<dyn SecretStore> = Arc::new(FileSecretStore::open(dir.path()).unwrap());
        let cached = CachingStore::new(backing.clone(), Duration::from_secs(60))
            .with_not_found_ttl(Duration::from_secs(30));

        assert!(matches!(
            cached.get("s").await,
            Err(SecretError::NotFound { .. })
        ));
        // Created behind the cache's back: still missing here until the 30 s are over.
        backing.put("s", &json!(1), None).await.unwrap();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(matches!(
            cached.get("s").await,
            Err(SecretError::NotFound { .. })
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cached.get("s").await.unwrap().value, json!(1));

        // Our own create is visible at once, also with the found-cache off.
        let uncached = CachingStore::new(backing.clone(), Duration::ZERO)
            .with_not_found_ttl(Duration::from_secs(30));
        assert!(uncached.get("t").await.is_err());
        uncached.put("t", &json!(2), None).await.unwrap();
        assert_eq!(uncached.get("t").await.unwrap().value, json!(2));
    }

    #[tokio::test]
    async fn zero_ttl_disables_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let backing: Arc<dyn SecretStore> = Arc::new(FileSecretStore::open(dir.path()).unwrap());
        let cached = CachingStore::new(backing.clone(), Duration::ZERO);
        let v1 = backing.put("s", &json!(1), None).await.unwrap();
        assert_eq!(cached.get("s").await.unwrap().value, json!(1));
        backing.put("s", &json!(2), Some(&v1)).await.unwrap();
        assert_eq!(cached.get("s").await.unwrap().value, json!(2));
    }
}
