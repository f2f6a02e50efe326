//! The secret store against moto's Secrets Manager API over a real socket.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aws_sdk_secretsmanager::error::DisplayErrorContext;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use shared::access::{TokenWrite, WriteBasis, write_tokens};
use shared::secrets::{
    AwsSecretStore, CachingStore, CreateOutcome, SecretError, SecretStore, VersionId, Versioned,
    schema::{self, ConnectionSecret},
    update,
};
use spbridge_tests::{moto_client, moto_store, unique_prefix};
use tokio::sync::Barrier;

/// All versions of a secret moto holds, with their stages.
async fn versions(name: &str) -> Vec<(String, Vec<String>)> {
    let out = moto_client()
        .await
        .list_secret_version_ids()
        .secret_id(name)
        .include_deprecated(true)
        .send()
        .await
        .unwrap();
    out.versions()
        .iter()
        .map(|v| {
            (
                v.version_id().unwrap_or_default().to_owned(),
                v.version_stages().to_vec(),
            )
        })
        .collect()
}

#[tokio::test]
async fn put_then_get_roundtrips_and_reads_follow_awscurrent() {
    let store = moto_store().await;
    let name = format!("{}app", unique_prefix());

    let v1 = store
        .put(
            &name,
            &json!({"client_id": "c1", "client_secret": "s1"}),
            None,
        )
        .await
        .unwrap();
    let got = store.get(&name).await.unwrap();
    assert_eq!(got.version, v1);
    assert_eq!(got.value, json!({"client_id": "c1", "client_secret": "s1"}));

    // After the CAS moved AWSCURRENT with UpdateSecretVersionStage, reads see the new value.
    let v2 = store
        .put(&name, &json!({"client_id": "c2"}), Some(&v1))
        .await
        .unwrap();
    let got = store.get(&name).await.unwrap();
    assert_eq!(
        (got.version, got.value),
        (v2.clone(), json!({"client_id": "c2"}))
    );

    let stages = versions(&name).await;
    let current: Vec<_> = stages
        .iter()
        .filter(|(_, s)| s.iter().any(|s| s == "AWSCURRENT"))
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(current, [v2.as_str()]);
    assert!(
        stages
            .iter()
            .any(|(id, s)| id == v1.as_str() && s.iter().any(|s| s == "AWSPREVIOUS"))
    );
}

#[tokio::test]
async fn missing_secrets_are_not_found() {
    let store = moto_store().await;
    let name = format!("{}nothing", unique_prefix());
    let e = store.get(&name).await.unwrap_err();
    assert!(
        matches!(&e, SecretError::NotFound { name: n } if *n == name),
        "{e}"
    );
    let e = store
        .put(
            &name,
            &json!(1),
            Some(&VersionId::new("00000000-0000-0000-0000-000000000000")),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
    let e = store.get("not a valid name").await.unwrap_err();
    assert!(matches!(e, SecretError::InvalidName { .. }), "{e}");
}

#[tokio::test]
async fn stale_version_gets_a_typed_conflict_and_the_winner_stays() {
    let store = moto_store().await;
    let name = format!("{}conn", unique_prefix());
    let v1 = store.put(&name, &json!({"rt": "a"}), None).await.unwrap();
    let v2 = store
        .put(&name, &json!({"rt": "b"}), Some(&v1))
        .await
        .unwrap();

    let e = store
        .put(&name, &json!({"rt": "c"}), Some(&v1))
        .await
        .unwrap_err();
    match &e {
        SecretError::Conflict { name: n, expected } => {
            assert_eq!(n, &name);
            assert_eq!(expected.as_ref(), Some(&v1));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(!e.to_string().contains("\"rt\""), "{e}");
    let got = store.get(&name).await.unwrap();
    assert_eq!((got.version, got.value), (v2, json!({"rt": "b"})));

    // Creating what exists is a conflict too; create_if_absent returns what is there.
    let e = store
        .put(&name, &json!({"rt": "z"}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, SecretError::Conflict { expected: None, .. }),
        "{e}"
    );
    match store
        .create_if_absent(&name, &json!({"rt": "z"}))
        .await
        .unwrap()
    {
        CreateOutcome::Existed(v) => assert_eq!(v.value, json!({"rt": "b"})),
        other => panic!("expected Existed, got {other:?}"),
    }
}

#[tokio::test]
async fn identical_retries_create_no_new_version() {
    let store = moto_store().await;
    let name = format!("{}conn", unique_prefix());

    let v1 = store.put(&name, &json!({"n": 1}), None).await.unwrap();
    assert_eq!(store.put(&name, &json!({"n": 1}), None).await.unwrap(), v1);

    let v2 = store.put(&name, &json!({"n": 2}), Some(&v1)).await.unwrap();
    // The same write retried (as after a timeout whose request had in fact landed).
    assert_eq!(
        store.put(&name, &json!({"n": 2}), Some(&v1)).await.unwrap(),
        v2
    );
    assert_eq!(
        store.put(&name, &json!({"n": 2}), Some(&v1)).await.unwrap(),
        v2
    );

    let ids: BTreeSet<String> = versions(&name)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, BTreeSet::from([v1.to_string(), v2.to_string()]));
    assert_eq!(store.get(&name).await.unwrap().version, v2);
}

#[tokio::test]
async fn cache_serves_reads_for_its_ttl_and_tracks_own_writes() {
    let raw: Arc<dyn SecretStore> = Arc::new(moto_store().await);
    let ttl = Duration::from_millis(800);
    let cached = CachingStore::new(raw.clone(), ttl);
    let name = format!("{}app", unique_prefix());

    let v1 = cached.put(&name, &json!({"n": 1}), None).await.unwrap();
    // Another container writes; this one keeps serving its cached read until the TTL passes.
    let started = Instant::now();
    let v2 = raw.put(&name, &json!({"n": 2}), Some(&v1)).await.unwrap();
    let seen = cached.get(&name).await.unwrap();
    assert!(started.elapsed() < ttl, "moto too slow for this TTL");
    assert_eq!((seen.version, seen.value), (v1.clone(), json!({"n": 1})));

    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let seen = cached.get(&name).await.unwrap();
    assert_eq!(
        (seen.version.clone(), seen.value),
        (v2.clone(), json!({"n": 2}))
    );

    // A conflict through the cache drops the entry, so the retry reads fresh.
    let v3 = raw.put(&name, &json!({"n": 3}), Some(&v2)).await.unwrap();
    let e = cached
        .put(&name, &json!({"n": 99}), Some(&v2))
        .await
        .unwrap_err();
    assert!(e.is_conflict(), "{e}");
    assert_eq!(cached.get(&name).await.unwrap().version, v3);
}

#[tokio::test]
async fn list_returns_exactly_the_names_under_a_prefix() {
    let store = moto_store().await;
    let prefix = unique_prefix();
    let mut expected = Vec::new();
    for id in ["c", "a", "b"] {
        let name = format!("{prefix}connections/{id}");
        store.put(&name, &json!({}), None).await.unwrap();
        expected.push(name);
    }
    store
        .put(&format!("{prefix}app"), &json!({}), None)
        .await
        .unwrap();
    expected.sort();

    assert_eq!(
        store.list(&format!("{prefix}connections/")).await.unwrap(),
        expected
    );
    assert_eq!(store.list(&prefix).await.unwrap().len(), 4);
    assert!(store.list(&unique_prefix()).await.unwrap().is_empty());
}

/// Makes every writer's first read wait until all writers have read, so all of them start
/// from the same version: the worst case for lost updates, every run.
struct FirstReadBarrier {
    inner: Arc<dyn SecretStore>,
    barrier: Arc<Barrier>,
    waited: AtomicBool,
}

impl SecretStore for FirstReadBarrier {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
        Box::pin(async move {
            let v = self.inner.get(name).await;
            if !self.waited.swap(true, Ordering::SeqCst) {
                self.barrier.wait().await;
            }
            v
        })
    }
    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<&'a VersionId>,
    ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
        self.inner.put(name, value, expected)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        self.inner.list(prefix)
    }
}

/// The same writer with the compare-and-swap removed: reads like the real store, writes with a
/// plain `PutSecretValue` (AWSCURRENT, last writer wins), ignoring which version it read.
struct NoCasStore(AwsSecretStore);

impl SecretStore for NoCasStore {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
        self.0.get(name)
    }
    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<&'a VersionId>,
    ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
        Box::pin(async move {
            if expected.is_none() {
                // Creating the secret is not what the control is about.
                return self.0.put(name, value, None).await;
            }
            let out = self
                .0
                .client()
                .put_secret_value()
                .secret_id(name)
                .secret_string(value.to_string())
                .send()
                .await
                .map_err(|e| SecretError::Backend {
                    name: name.to_owned(),
                    op: "write",
                    code: None,
                    message: DisplayErrorContext(&e).to_string(),
                })?;
            Ok(VersionId::new(out.version_id().unwrap_or_default()))
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        self.0.list(prefix)
    }
}

struct RaceResult {
    ids_kept: BTreeSet<u64>,
    attempts: u32,
    elapsed: Duration,
}

/// `writers` tasks each append their id to one JSON array through [`update`].
async fn race(store: Arc<dyn SecretStore>, writers: u64) -> RaceResult {
    let name = format!("{}race", unique_prefix());
    store.put(&name, &json!([]), None).await.unwrap();
    let barrier = Arc::new(Barrier::new(writers as usize));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|id| {
            let writer = FirstReadBarrier {
                inner: store.clone(),
                barrier: barrier.clone(),
                waited: AtomicBool::new(false),
            };
            let name = name.clone();
            tokio::spawn(async move {
                let outcome = update(&writer, &name, 2 * writers as u32, |current| {
                    let mut ids = current.cloned().unwrap_or_else(|| json!([]));
                    ids.as_array_mut().ok_or("not an array")?.push(json!(id));
                    Ok::<_, &str>(Some(ids))
                })
                .await
                .unwrap_or_else(|e| panic!("writer {id}: {e}"));
                assert!(outcome.written);
                outcome.attempts
            })
        })
        .collect();
    let mut attempts = 0;
    for t in tasks {
        attempts += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let ids_kept = store
        .get(&name)
        .await
        .unwrap()
        .value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    RaceResult {
        ids_kept,
        attempts,
        elapsed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_write_loses_no_update() {
    const WRITERS: u64 = 24;
    let cas = race(Arc::new(moto_store().await), WRITERS).await;
    eprintln!(
        "CAS race: {WRITERS} writers, {} rounds ({} lost races retried), {:?}",
        cas.attempts,
        cas.attempts - WRITERS as u32,
        cas.elapsed
    );
    assert_eq!(cas.ids_kept, (0..WRITERS).collect(), "an update was lost");
    // All writers started from the same version, so all but one must have lost and retried.
    assert!(
        cas.attempts >= 2 * WRITERS as u32 - 1,
        "attempts: {}",
        cas.attempts
    );

    // Control: the identical workload without the compare-and-swap loses updates.
    let blind = race(Arc::new(NoCasStore(moto_store().await)), WRITERS).await;
    eprintln!(
        "no-CAS control: {} of {WRITERS} ids kept, {} rounds, {:?}",
        blind.ids_kept.len(),
        blind.attempts,
        blind.elapsed
    );
    assert_eq!(
        blind.attempts, WRITERS as u32,
        "without CAS nobody notices a conflict"
    );
    assert!(
        blind.ids_kept.len() < WRITERS as usize,
        "the control lost nothing"
    );
}

#[tokio::test]
async fn sequential_cas_throughput() {
    let store = moto_store().await;
    let name = format!("{}seq", unique_prefix());
    let mut version = store.put(&name, &json!(0), None).await.unwrap();
    const OPS: u32 = 40;
    let started = Instant::now();
    for i in 1..=OPS {
        let current = store.get(&name).await.unwrap();
        assert_eq!(current.version, version);
        version = store.put(&name, &json!(i), Some(&version)).await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "sequential get+CAS put against moto: {OPS} rounds in {elapsed:?} ({:.0} rounds/s)",
        f64::from(OPS) / elapsed.as_secs_f64()
    );
    assert_eq!(store.get(&name).await.unwrap().value, json!(OPS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_keep_only_one_token_per_generation() {
    let store: Arc<dyn SecretStore> = Arc::new(moto_store().await);
    let mut cfg = shared::config::Config::from_lookup(|_| None)
        .unwrap()
        .secrets;
    cfg.prefix = unique_prefix();
    let conn: ConnectionSecret = serde_json::from_value(json!({
        "provider": "entra", "auth": "delegated",
        "target": {"kind": "drive", "drive_id": "me"},
        "refresh_token": "rt-gen-1", "status": "active", "scopes": ["Files.ReadWrite"],
        "generation": 1
    }))
    .unwrap();
    shared::secrets::put_typed(&*store, &cfg.connection_secret_name("c1"), &conn, None)
        .await
        .unwrap();

    // Two refreshes both read generation 1 and both try to store their new token through the
    // one write path.
    let refresh = |rt: &str| {
        let write = TokenWrite {
            refresh_token: Some(rt.to_owned().into()),
            ..TokenWrite::default()
        };
        let basis = WriteBasis::Refresh {
            generation: 1,
            now: time::OffsetDateTime::now_utc(),
        };
        (write, basis)
    };
    let (ra, rb) = tokio::join!(
        write_tokens(&*store, &cfg, "c1", refresh("rt-from-a")),
        write_tokens(&*store, &cfg, "c1", refresh("rt-from-b"))
    );
    let outcomes = [ra.unwrap(), rb.unwrap()];
    let saved: Vec<bool> = outcomes.iter().map(|w| w.saved).collect();
    assert_eq!(saved.iter().filter(|s| **s).count(), 1, "{saved:?}");

    use secrecy::ExposeSecret;
    let stored = schema::connection(&*store, &cfg, "c1").await.unwrap();
    let winner = if saved[0] { "rt-from-a" } else { "rt-from-b" };
    assert_eq!(stored.value.refresh_token.unwrap().expose_secret(), winner);
    assert_eq!(stored.value.generation, 2);
}

const FROM_CONFIG_CHILD: &str = "SPBRIDGE_TEST_FROM_CONFIG_SECRET";

/// Runs itself in a child process whose environment is only what a Lambda would have, so
/// `from_config` has to find moto through `AWS_ENDPOINT_URL_SECRETS_MANAGER`.
#[tokio::test]
async fn from_config_reaches_secrets_manager_through_the_endpoint_variable() {
    if let Ok(name) = std::env::var(FROM_CONFIG_CHILD) {
        let cfg = shared::config::Config::from_env().unwrap();
        assert_eq!(cfg.secrets.backend, shared::config::SecretBackend::Aws);
        let store = shared::secrets::from_config(&cfg).await.unwrap();
        store
            .put(&name, &json!({"via": "from_config"}), None)
            .await
            .unwrap();
        assert_eq!(store.get(&name).await.unwrap().value["via"], "from_config");
        return;
    }

    let moto = spbridge_tests::moto();
    let name = format!("{}from-config", unique_prefix());
    let exe = std::env::current_exe().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(exe);
    child
        .args([
            "--exact",
            "secrets::from_config_reaches_secrets_manager_through_the_endpoint_variable",
            "--test-threads=1",
            "--quiet",
        ])
        .env_clear()
        .env(FROM_CONFIG_CHILD, &name)
        .env("HOME", home.path())
        .env("AWS_LAMBDA_FUNCTION_NAME", "spbridge-token-refresh")
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let out = tokio::task::spawn_blocking(move || child.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = moto_store().await.get(&name).await.unwrap();
    assert_eq!(got.value, json!({"via": "from_config"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_follows_pagination_past_one_page() {
    use futures_util::{StreamExt, TryStreamExt};
    let store = moto_store().await;
    let prefix = unique_prefix();
    // ListSecrets pages hold at most 100 names.
    let names: Vec<String> = (0..130)
        .map(|i| format!("{prefix}connections/c{i:03}"))
        .collect();
    let empty = json!({});
    futures_util::stream::iter(names.iter())
        .map(|n| store.put(n, &empty, None))
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(store.list(&prefix).await.unwrap(), names);
}

/// Answers every request with one canned HTTP response, for errors moto cannot produce.
async fn canned_server(status: u16, body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head and its body, then answer and close.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

async fn store_at(url: &str) -> AwsSecretStore {
    AwsSecretStore::from_client(spbridge_tests::secrets_client(url, false).await)
}

#[tokio::test]
async fn service_errors_map_to_typed_errors_without_leaking_bodies() {
    let url = canned_server(
        400,
        r#"{"__type":"AccessDeniedException","message":"User is not authorized to perform secretsmanager:GetSecretValue"}"#,
    )
    .await;
    let e = store_at(&url).await.get("spbridge/app").await.unwrap_err();
    match &e {
        SecretError::AccessDenied { name, message } => {
            assert_eq!(name, "spbridge/app");
            assert!(
                message.contains("secretsmanager:GetSecretValue"),
                "{message}"
            );
        }
        other => panic!("expected AccessDenied, got {other:?}"),
    }

    let url = canned_server(
        400,
        r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
    )
    .await;
    let e = store_at(&url)
        .await
        .put("s", &json!(1), None)
        .await
        .unwrap_err();
    assert!(matches!(e, SecretError::Throttled { .. }), "{e:?}");

    let url = canned_server(
        400,
        r#"{"__type":"LimitExceededException","message":"too many versions"}"#,
    )
    .await;
    let e = store_at(&url).await.get("s").await.unwrap_err();
    match &e {
        SecretError::Backend { code, op, .. } => {
            assert_eq!(code.as_deref(), Some("LimitExceededException"));
            assert_eq!(*op, "read");
        }
        other => panic!("expected Backend, got {other:?}"),
    }

    // A response the SDK cannot parse carries the body; the error must not.
    let url = canned_server(
        200,
        r#"{"Name":"s","VersionId":["x"],"SecretString":"hunter2-in-the-body"}"#,
    )
    .await;
    let e = store_at(&url).await.get("s").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Backend { code: None, .. }),
        "{e:?}"
    );
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");

    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = store_at(&format!("http://127.0.0.1:{port}"))
        .await
        .get("s")
        .await
        .unwrap_err();
    assert!(
        matches!(e, SecretError::Backend { code: None, .. }),
        "{e:?}"
    );
}
