//! The secret store: client secrets, certificates and refresh tokens as named JSON secrets.
//!
//! One small trait, [`SecretStore`], with two adapters: AWS Secrets Manager ([`AwsSecretStore`],
//! inside Lambda) and one JSON file per secret ([`FileSecretStore`], local runs). Every write is a
//! compare-and-swap on the secret's version, and [`update`] wraps read → change → write in a
//! bounded retry loop, so concurrent writers (two token refreshes, a refresh and a consent
//! callback) never lose each other's update. See `docs/secrets.md` for the design and schemas.

mod aws;
mod cache;
mod error;
mod file;
pub mod replay;
pub mod schema;

use std::{fmt, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use aws::AwsSecretStore;
pub use cache::CachingStore;
pub use error::SecretError;
pub use file::FileSecretStore;

use crate::config::{Config, SecretBackend};

/// The version of a stored secret: a Secrets Manager `VersionId`, or the file store's equivalent.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct VersionId(String);

impl VersionId {
    /// Wraps a version id as the backend reported it.
    pub fn new(id: impl Into<String>) -> Self {
        VersionId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionId({})", self.0)
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret value together with the version it was read at (the token for a later CAS write).
#[derive(Clone, PartialEq)]
pub struct Versioned<T> {
    /// The version `value` belongs to.
    pub version: VersionId,
    /// The secret's content.
    pub value: T,
}

// The value is secret material whatever T is, so Debug never prints it.
impl<T> fmt::Debug for Versioned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Versioned")
            .field("version", &self.version)
            .field("value", &format_args!("[redacted]"))
            .finish()
    }
}

/// What [`SecretStore::create_if_absent`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The secret did not exist; it now holds the given value at this version.
    Created(VersionId),
    /// The secret already existed; this is its current value, left untouched.
    Existed(Versioned<Value>),
}

/// A store of named JSON secrets with versioned, compare-and-swap writes.
///
/// Object-safe: functions hold an `Arc<dyn SecretStore>` built once per cold start.
pub trait SecretStore: Send + Sync {
    /// Reads the current value of `name` and its version.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>>;

    /// Writes `value` as the new current value of `name` if, and only if, the current version is
    /// still `expected`; `None` creates the secret and fails if it exists. Losers get
    /// [`SecretError::Conflict`]. Retrying an identical write (same name, expected version and
    /// value) after an ambiguous failure returns the same version instead of writing twice.
    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<&'a VersionId>,
    ) -> BoxFuture<'a, Result<VersionId, SecretError>>;

    /// Names of all secrets starting with `prefix`, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>>;

    /// Creates `name` with `value` unless it exists; an existing secret is returned unchanged.
    fn create_if_absent<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
    ) -> BoxFuture<'a, Result<CreateOutcome, SecretError>> {
        Box::pin(async move {
            match self.put(name, value, None).await {
                Ok(v) => Ok(CreateOutcome::Created(v)),
                Err(SecretError::Conflict { .. }) => {
                    Ok(CreateOutcome::Existed(self.get(name).await?))
                }
                Err(e) => Err(e),
            }
        })
    }
}

/// Builds the store `config` asks for, wrapped in the warm-container read cache.
///
/// Call once per cold start: for AWS this loads the SDK configuration (region, credentials,
/// `AWS_ENDPOINT_URL_SECRETS_MANAGER`) and builds the client.
pub async fn from_config(config: &Config) -> Result<Arc<dyn SecretStore>, SecretError> {
    from_config_with(config, None).await
}

/// [`from_config`] over an SDK configuration the caller has loaded already, so the function's
/// AWS clients share one HTTP client (one TLS setup, one connection pool) and one credential
/// resolution; `None` loads one.
pub async fn from_config_with(
    config: &Config,
    sdk: Option<&aws_config::SdkConfig>,
) -> Result<Arc<dyn SecretStore>, SecretError> {
    let inner: Arc<dyn SecretStore> = match (&config.secrets.backend, sdk) {
        (SecretBackend::Aws, Some(sdk)) => Arc::new(AwsSecretStore::new(sdk)),
        (SecretBackend::Aws, None) => Arc::new(AwsSecretStore::from_env().await),
        (SecretBackend::File { dir }, _) => Arc::new(FileSecretStore::open(dir)?),
    };
    Ok(Arc::new(
        CachingStore::new(inner, config.secrets.cache_ttl)
            .with_not_found_ttl(config.secrets.not_found_ttl),
    ))
}

/// How an [`update`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    /// The secret as it now stands (`None`: it does not exist and the change left it so).
    pub current: Option<Versioned<Value>>,
    /// Whether this call wrote a new version.
    pub written: bool,
    /// How many read → change → write rounds it took (1 without contention).
    pub attempts: u32,
}

/// Why an [`update`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// Reading or writing the secret failed; after `max_attempts` lost races this is `Conflict`.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The change function refused the current value.
    #[error("update of secret {name} rejected: {source}")]
    Rejected {
        /// The secret.
        name: String,
        /// The change function's error.
        #[source]
        source: E,
    },
}

/// Read → change → compare-and-swap write, retried on conflict up to `max_attempts` rounds.
///
/// Throttling answers are retried too (within the same `max_attempts` budget), after the pause
/// the store asked for, capped at [`MAX_THROTTLE_PAUSE`].
///
/// `change` sees the current value (`None` if the secret does not exist) and returns the new
/// value, or `None` to leave it as is. It may run several times, so it must not have side
/// effects beyond computing the value. A secret that disappears mid-way is treated like a
/// conflict: the next round sees `None`.
pub async fn update<E, F>(
    store: &dyn SecretStore,
    name: &str,
    max_attempts: u32,
    mut change: F,
) -> Result<UpdateOutcome, UpdateError<E>>
where
    F: FnMut(Option<&Value>) -> Result<Option<Value>, E>,
{
    let max_attempts = max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = match store.get(name).await {
            Ok(v) => Some(v),
            Err(SecretError::NotFound { .. }) => None,
            Err(SecretError::Throttled { retry_after, .. }) if attempt < max_attempts => {
                throttle_pause(name, attempt, retry_after).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let next =
            change(current.as_ref().map(|v| &v.value)).map_err(|source| UpdateError::Rejected {
                name: name.to_owned(),
                source,
            })?;
        let Some(next) = next else {
            return Ok(UpdateOutcome {
                current,
                written: false,
                attempts: attempt,
            });
        };
        let expected = current.as_ref().map(|v| &v.version);
        match store.put(name, &next, expected).await {
            Ok(version) => {
                return Ok(UpdateOutcome {
                    current: Some(Versioned {
                        version,
                        value: next,
                    }),
                    written: true,
                    attempts: attempt,
                });
            }
            Err(e @ (SecretError::Conflict { .. } | SecretError::NotFound { .. })) => {
                if attempt >= max_attempts {
                    return Err(SecretError::Conflict {
                        name: name.to_owned(),
                        expected: expected.cloned(),
                    }
                    .into());
                }
                tracing::debug!(secret = name, attempt, error = %e, "secret write lost a race; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(SecretError::Throttled { retry_after, .. }) if attempt < max_attempts => {
                throttle_pause(name, attempt, retry_after).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits as long as the store asked (at most [`MAX_THROTTLE_PAUSE`]), else a short backoff.
async fn throttle_pause(name: &str, attempt: u32, retry_after: Option<Duration>) {
    let pause = retry_after
        .unwrap_or_else(|| backoff(attempt) * 4)
        .min(MAX_THROTTLE_PAUSE);
    tracing::warn!(
        secret = name,
        attempt,
        ?pause,
        "secret store throttled; retrying"
    );
    tokio::time::sleep(pause).await;
}

/// The longest [`update`] sleeps for one throttling answer; Lambda time is billed.
pub const MAX_THROTTLE_PAUSE: Duration = Duration::from_secs(5);

/// Short, jittered pause between lost races so the losers do not collide again in lockstep.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = (5u64 << attempt.min(5)).min(100);
    Duration::from_millis(rand::random_range(1..=cap_ms))
}

/// Reads `name` and decodes it as `T`.
pub async fn get_typed<T: DeserializeOwned>(
    store: &dyn SecretStore,
    name: &str,
) -> Result<Versioned<T>, SecretError> {
    let raw = store.get(name).await?;
    let value =
        serde_json::from_value(raw.value).map_err(|e| SecretError::invalid_json(name, &e))?;
    Ok(Versioned {
        version: raw.version,
        value,
    })
}

/// Encodes `value` and writes it with [`SecretStore::put`]'s compare-and-swap.
pub async fn put_typed<T: Serialize>(
    store: &dyn SecretStore,
    name: &str,
    value: &T,
    expected: Option<&VersionId>,
) -> Result<VersionId, SecretError> {
    let json = serde_json::to_value(value).map_err(|e| SecretError::invalid_json(name, &e))?;
    store.put(name, &json, expected).await
}

/// [`update`] for a typed secret: `change` sees the decoded current value.
///
/// A stored value that does not decode as `T` fails with [`SecretError::InvalidJson`] rather
/// than being overwritten.
pub async fn update_typed<T, E, F>(
    store: &dyn SecretStore,
    name: &str,
    max_attempts: u32,
    mut change: F,
) -> Result<UpdateOutcome, UpdateError<E>>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<&T>) -> Result<Option<T>, E>,
{
    // Decode errors travel through the closure's error type and are unwrapped below.
    enum Step<E> {
        Decode(SecretError),
        User(E),
    }
    let result = update(store, name, max_attempts, |current| {
        let decoded = current
            .map(|v| {
                T::deserialize(v).map_err(|e| Step::Decode(SecretError::invalid_json(name, &e)))
            })
            .transpose()?;
        match change(decoded.as_ref()).map_err(Step::User)? {
            None => Ok(None),
            Some(next) => serde_json::to_value(&next)
                .map(Some)
                .map_err(|e| Step::Decode(SecretError::invalid_json(name, &e))),
        }
    })
    .await;
    match result {
        Ok(o) => Ok(o),
        Err(UpdateError::Secret(e)) => Err(UpdateError::Secret(e)),
        Err(UpdateError::Rejected {
            source: Step::Decode(e),
            ..
        }) => Err(UpdateError::Secret(e)),
        Err(UpdateError::Rejected {
            name,
            source: Step::User(source),
        }) => Err(UpdateError::Rejected { name, source }),
    }
}

/// Secrets Manager's rule for names: 1–512 of `A-Z a-z 0-9 / _ + = . @ -`, or a secret's ARN
/// (`arn:{partition}:secretsmanager:{region}:{account}:secret:{name}`), which is what
/// `template.yaml` passes for the secrets it creates (`!Ref` of a secret is its ARN).
pub(crate) fn validate_name(name: &str) -> Result<(), SecretError> {
    let bad = |reason: &str| {
        Err(SecretError::InvalidName {
            name: name.chars().take(600).collect(),
            reason: reason.to_owned(),
        })
    };
    let plain = match secret_arn_name(name) {
        Some(plain) => plain,
        None if name.starts_with("arn:") => return bad("is not a Secrets Manager secret ARN"),
        None => name,
    };
    if plain.is_empty() || plain.len() > 512 {
        return bad("must be 1 to 512 characters long");
    }
    if !plain
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
    {
        return bad("only letters, digits and /_+=.@- are allowed");
    }
    Ok(())
}

/// The name part of a secret ARN; `None` if `name` is not one.
fn secret_arn_name(name: &str) -> Option<&str> {
    let mut parts = name.splitn(7, ':');
    let fields: [&str; 7] = std::array::from_fn(|_| parts.next().unwrap_or(""));
    let [arn, partition, service, region, account, kind, rest] = fields;
    let well_formed = arn == "arn"
        && partition.starts_with("aws")
        && service == "secretsmanager"
        && !region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && kind == "secret";
    well_formed.then_some(rest)
}

/// The version id a write gets: derived from what is written and where, so that a retried
/// identical write (same name, same expected version, same bytes) names the same version and
/// both backends treat it as already done. 36 characters, within Secrets Manager's 32–64.
pub(crate) fn request_token(name: &str, expected: Option<&VersionId>, body: &[u8]) -> VersionId {
    let mut h = Sha256::new();
    for part in [
        name.as_bytes(),
        expected.map_or(&b""[..], |v| v.as_str().as_bytes()),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    VersionId(
        uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_secrets_manager_rules() {
        assert!(validate_name("spbridge/connections/abc-1_2+x=y.z@w").is_ok());
        // What template.yaml passes: `!Ref` of a secret is its ARN.
        assert!(
            validate_name(
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:spbridge/app-AbCdEf"
            )
            .is_ok()
        );
        assert!(
            validate_name("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:x-AbCdEf")
                .is_ok()
        );
        for bad in [
            "",
            "has space",
            "a%2Fb",
            "ünï",
            &"x".repeat(513),
            "arn:aws:s3:::bucket",
            "arn:aws:secretsmanager:eu-west-1:1234:secret:x",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:has space",
        ] {
            assert!(
                matches!(validate_name(bad), Err(SecretError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_token_is_deterministic_and_sensitive_to_every_input() {
        let v1 = VersionId::new("v1");
        let t = request_token("a", Some(&v1), b"{}");
        assert_eq!(t, request_token("a", Some(&v1), b"{}"));
        assert_ne!(t, request_token("b", Some(&v1), b"{}"));
        assert_ne!(t, request_token("a", None, b"{}"));
        assert_ne!(t, request_token("a", Some(&v1), b"[]"));
        // Length-prefixing keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            request_token("ab", Some(&VersionId::new("c")), b""),
            request_token("a", Some(&VersionId::new("bc")), b"")
        );
        assert_eq!(t.as_str().len(), 36);
    }

    /// A store that throttles its first `throttles` calls, then behaves like the file store.
    struct Flaky {
        inner: FileSecretStore,
        throttles: std::sync::atomic::AtomicU32,
    }

    impl Flaky {
        fn throttled(&self, name: &str) -> Result<(), SecretError> {
            use std::sync::atomic::Ordering;
            let left = self.throttles.load(Ordering::SeqCst);
            if left > 0 {
                self.throttles.store(left - 1, Ordering::SeqCst);
                return Err(SecretError::Throttled {
                    name: name.to_owned(),
                    retry_after: Some(Duration::from_millis(20)),
                });
            }
            Ok(())
        }
    }

    impl SecretStore for Flaky {
        fn get<'a>(
            &'a self,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
            Box::pin(async move {
                self.throttled(name)?;
                self.inner.get(name).await
            })
        }
        fn put<'a>(
            &'a self,
            name: &'a str,
            value: &'a Value,
            expected: Option<&'a VersionId>,
        ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
            Box::pin(async move {
                self.throttled(name)?;
                self.inner.put(name, value, expected).await
            })
        }
        fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
            self.inner.list(prefix)
        }
    }

    #[tokio::test]
    async fn update_retries_throttling_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Flaky {
            inner: FileSecretStore::open(dir.path()).unwrap(),
            throttles: 2.into(),
        };
        let out = update(&store, "s", 3, |_| {
            Ok::<_, String>(Some(serde_json::json!(1)))
        })
        .await
        .unwrap();
        assert_eq!((out.written, out.attempts), (true, 3));

        store
            .throttles
            .store(5, std::sync::atomic::Ordering::SeqCst);
        let e = update(&store, "s", 3, |_| {
            Ok::<_, String>(Some(serde_json::json!(2)))
        })
        .await
        .unwrap_err();
        assert!(
            matches!(e, UpdateError::Secret(SecretError::Throttled { .. })),
            "{e}"
        );
    }

    /// Someone else always writes between our read and our write.
    struct Interfering(FileSecretStore, std::sync::atomic::AtomicU32);

    impl SecretStore for Interfering {
        fn get<'a>(
            &'a self,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
            self.0.get(name)
        }
        fn put<'a>(
            &'a self,
            name: &'a str,
            value: &'a Value,
            expected: Option<&'a VersionId>,
        ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
            Box::pin(async move {
                let n = self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let cur = self.0.get(name).await.ok().map(|v| v.version);
                self.0
                    .put(name, &serde_json::json!({"other": n}), cur.as_ref())
                    .await?;
                self.0.put(name, value, expected).await
            })
        }
        fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
            self.0.list(prefix)
        }
    }

    #[tokio::test]
    async fn update_gives_up_with_conflict_after_max_attempts_and_skips_no_op_writes() {
        let dir = tempfile::tempdir().unwrap();
        let plain = FileSecretStore::open(dir.path()).unwrap();
        let store = Interfering(plain.clone(), 0.into());
        let mut rounds = 0;
        let result = update(&store, "s", 3, |_| {
            rounds += 1;
            Ok::<_, String>(Some(serde_json::json!("mine")))
        })
        .await;
        assert!(
            matches!(
                result,
                Err(UpdateError::Secret(SecretError::Conflict { .. }))
            ),
            "{result:?}"
        );
        assert_eq!(rounds, 3);
        assert_eq!(
            plain.get("s").await.unwrap().value,
            serde_json::json!({"other": 2})
        );

        let out = update(&plain, "s", 3, |_| Ok::<_, String>(None))
            .await
            .unwrap();
        assert!(!out.written);
        assert_eq!(out.current.unwrap().value, serde_json::json!({"other": 2}));

        let e = update(&plain, "s", 3, |_| Err::<Option<Value>, _>("refused"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                UpdateError::Rejected {
                    source: "refused",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.to_string(), "update of secret s rejected: refused");
    }

    #[tokio::test]
    async fn from_config_builds_the_file_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        let cfg = Config::from_lookup(|k| {
            (k == crate::config::vars::SECRET_DIR).then(|| path.display().to_string())
        })
        .unwrap();
        let store = from_config(&cfg).await.unwrap();
        let v = store
            .put("spbridge/app", &serde_json::json!({"client_id": "c"}), None)
            .await
            .unwrap();
        assert_eq!(store.get("spbridge/app").await.unwrap().version, v);
        assert!(path.join("spbridge%2Fapp.json").is_file());
    }

    #[test]
    fn versioned_debug_hides_the_value() {
        let v = Versioned {
            version: VersionId::new("v1"),
            value: serde_json::json!({"client_secret": "hunter2"}),
        };
        let dbg = format!("{v:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("[redacted]") && dbg.contains("v1"), "{dbg}");
    }
}
