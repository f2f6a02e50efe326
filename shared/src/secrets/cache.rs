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

/// Keeps successful reads for `ttl`, so a warm Lambda container does not call Secrets Manager
/// on every request. A successful write replaces the entry; a lost write (conflict) or a
/// vanished secret drops it, so the retry reads fresh. A zero `ttl` disables caching.
pub struct CachingStore {
    inner: Arc<dyn SecretStore>,
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Versioned<Value>)>>,
}

impl CachingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        CachingStore {
            inner,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets every cached read.
    pub fn clear(&self) {
        self.entries().clear();
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, (Instant, Versioned<Value>)>> {
        // The map holds only clones; a panic while holding the lock cannot leave it half-written.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, name: &str, value: Versioned<Value>) {
        if !self.ttl.is_zero() {
            self.entries()
                .insert(name.to_owned(), (Instant::now() + self.ttl, value));
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
                .map(|(_, v)| v.clone());
            if let Some(v) = hit {
                return Ok(v);
            }
            match self.inner.get(name).await {
                Ok(v) => {
                    self.remember(name, v.clone());
                    Ok(v)
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
                        Versioned {
                            version: version.clone(),
                            value: value.clone(),
                        },
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
