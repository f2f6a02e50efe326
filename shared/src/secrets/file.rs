//! The local file store: one JSON file per secret, the default outside Lambda.
//!
//! Unix only (file modes and `flock`), like every place spbridge runs.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use futures_util::future::BoxFuture;
use rustix::fs::{FlockOperation, flock};
use serde_json::Value;

use super::{SecretError, SecretStore, VersionId, Versioned, request_token, validate_name};

/// Serialises writers inside this process; the `flock` below serialises processes.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

const LOCK_FILE: &str = ".lock";
const SUFFIX: &str = ".json";

/// Secrets as files `{dir}/{name}.json` (`/` in the name written as `%2F`), mode 0600,
/// each holding `{"version": "...", "value": ...}`.
///
/// Writes go to a temporary file in the same directory, are fsynced and renamed over the old
/// file, so a reader sees the old or the new secret, never half of one. The compare-and-swap
/// runs under a process-wide mutex plus an exclusive `flock` on `{dir}/.lock`.
#[derive(Debug, Clone)]
pub struct FileSecretStore {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    version: VersionId,
    value: Value,
}

impl FileSecretStore {
    /// Uses `dir`, creating it (mode 0700) if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SecretError> {
        let dir = dir.as_ref().to_path_buf();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error(&dir.display().to_string(), "create directory", e))?;
        Ok(FileSecretStore { dir })
    }

    /// The directory holding the secrets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `name` (which must be a valid secret name).
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{}{SUFFIX}", name.replace('/', "%2F")))
    }

    fn get_blocking(&self, name: &str) -> Result<Versioned<Value>, SecretError> {
        validate_name(name)?;
        match read_stored(&self.path_of(name), name)? {
            Some(s) => Ok(Versioned {
                version: s.version,
                value: s.value,
            }),
            None => Err(SecretError::NotFound {
                name: name.to_owned(),
            }),
        }
    }

    fn put_blocking(
        &self,
        name: &str,
        value: Value,
        expected: Option<VersionId>,
    ) -> Result<VersionId, SecretError> {
        validate_name(name)?;
        let body = serde_json::to_vec(&value).map_err(|e| SecretError::invalid_json(name, &e))?;
        let token = request_token(name, expected.as_ref(), &body);
        let path = self.path_of(name);

        let _in_process = WRITE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let _across_processes = self.lock_dir(name)?;

        let current = read_stored(&path, name)?.map(|s| s.version);
        match (current, &expected) {
            // An identical write already landed (a retry after an ambiguous failure).
            (Some(cur), _) if cur == token => return Ok(token),
            (Some(cur), Some(exp)) if cur == *exp => {}
            (None, None) => {}
            (None, Some(_)) => {
                return Err(SecretError::NotFound {
                    name: name.to_owned(),
                });
            }
            (Some(_), _) => {
                return Err(SecretError::Conflict {
                    name: name.to_owned(),
                    expected,
                });
            }
        }
        let stored = Stored {
            version: token.clone(),
            value,
        };
        let bytes =
            serde_json::to_vec_pretty(&stored).map_err(|e| SecretError::invalid_json(name, &e))?;
        self.write_atomic(&path, &bytes)
            .map_err(|e| io_error(name, "write", e))?;
        Ok(token)
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<String>, SecretError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error(prefix, "list", e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(prefix, "list", e))?;
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|f| f.strip_suffix(SUFFIX)) else {
                continue;
            };
            let name = stem.replace("%2F", "/");
            // Files that do not decode to a valid name are not ours.
            if validate_name(&name).is_ok() && name.starts_with(prefix) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Holds an exclusive `flock` on the directory's lock file until the returned file drops.
    fn lock_dir(&self, name: &str) -> Result<File, SecretError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join(LOCK_FILE))
            .map_err(|e| io_error(name, "lock", e))?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| io_error(name, "lock", e.into()))?;
        Ok(file)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn read_stored(path: &Path, name: &str) -> Result<Option<Stored>, SecretError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(name, "read", e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| SecretError::invalid_json(name, &e))
}

fn io_error(name: &str, op: &'static str, e: io::Error) -> SecretError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => SecretError::AccessDenied {
            name: name.to_owned(),
            message: e.to_string(),
        },
        _ => SecretError::Backend {
            name: name.to_owned(),
            op,
            code: None,
            message: e.to_string(),
        },
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    name: &str,
    op: &'static str,
    f: impl FnOnce() -> Result<T, SecretError> + Send + 'static,
) -> Result<T, SecretError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(SecretError::Backend {
            name: name.to_owned(),
            op,
            code: None,
            message: format!("file store task failed: {e}"),
        })
    })
}

impl SecretStore for FileSecretStore {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
        let this = self.clone();
        let owned = name.to_owned();
        Box::pin(blocking(name, "read", move || this.get_blocking(&owned)))
    }

    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<&'a VersionId>,
    ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
        let this = self.clone();
        let owned = name.to_owned();
        let (value, expected) = (value.clone(), expected.cloned());
        Box::pin(blocking(name, "write", move || {
            this.put_blocking(&owned, value, expected)
        }))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        let this = self.clone();
        let owned = prefix.to_owned();
        Box::pin(blocking(prefix, "list", move || this.list_blocking(&owned)))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, os::unix::fs::MetadataExt, sync::Arc};

    use serde_json::json;

    use super::*;
    use crate::secrets::{CreateOutcome, update};

    fn store() -> (tempfile::TempDir, FileSecretStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSecretStore::open(dir.path().join("secrets")).unwrap();
        (dir, store)
    }

    fn dir_entries(store: &FileSecretStore) -> BTreeSet<String> {
        fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn roundtrip_writes_mode_0600_files_and_leaves_no_temp_files() {
        let (_tmp, store) = store();
        let v1 = store
            .put(
                "spbridge/connections/c1",
                &json!({"refresh_token": "rt-1"}),
                None,
            )
            .await
            .unwrap();
        let got = store.get("spbridge/connections/c1").await.unwrap();
        assert_eq!(got.version, v1);
        assert_eq!(got.value, json!({"refresh_token": "rt-1"}));

        let path = store.path_of("spbridge/connections/c1");
        assert_eq!(
            path.file_name().unwrap(),
            "spbridge%2Fconnections%2Fc1.json"
        );
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(store.dir()).unwrap().mode() & 0o777, 0o700);

        let v2 = store
            .put(
                "spbridge/connections/c1",
                &json!({"refresh_token": "rt-2"}),
                Some(&v1),
            )
            .await
            .unwrap();
        assert_ne!(v1, v2);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            dir_entries(&store),
            BTreeSet::from([
                ".lock".to_owned(),
                "spbridge%2Fconnections%2Fc1.json".to_owned()
            ])
        );
    }

    #[tokio::test]
    async fn writes_replace_the_file_by_rename_never_in_place() {
        let (tmp, store) = store();
        let v1 = store.put("s", &json!({"k": "old"}), None).await.unwrap();
        // A hard link keeps the old inode reachable: an in-place write would change it too.
        let old = tmp.path().join("old-link");
        fs::hard_link(store.path_of("s"), &old).unwrap();
        let old_inode = fs::metadata(&old).unwrap().ino();

        store
            .put("s", &json!({"k": "new"}), Some(&v1))
            .await
            .unwrap();

        let old_bytes: Stored = serde_json::from_slice(&fs::read(&old).unwrap()).unwrap();
        assert_eq!(old_bytes.value, json!({"k": "old"}));
        assert_ne!(fs::metadata(store.path_of("s")).unwrap().ino(), old_inode);
        assert_eq!(store.get("s").await.unwrap().value, json!({"k": "new"}));
    }

    #[tokio::test]
    async fn stale_versions_conflict_and_identical_retries_are_idempotent() {
        let (_tmp, store) = store();
        let v1 = store.put("s", &json!(1), None).await.unwrap();

        // Creating again: conflict, unless it is the very same create being retried.
        assert_eq!(store.put("s", &json!(1), None).await.unwrap(), v1);
        let e = store.put("s", &json!(9), None).await.unwrap_err();
        assert!(
            matches!(e, SecretError::Conflict { expected: None, .. }),
            "{e}"
        );

        let v2 = store.put("s", &json!(2), Some(&v1)).await.unwrap();
        // The same write retried returns the same version and writes nothing new.
        assert_eq!(store.put("s", &json!(2), Some(&v1)).await.unwrap(), v2);
        // A different write from the stale version loses.
        let e = store.put("s", &json!(3), Some(&v1)).await.unwrap_err();
        assert!(
            matches!(&e, SecretError::Conflict { expected: Some(v), .. } if *v == v1),
            "{e}"
        );
        assert_eq!(store.get("s").await.unwrap().value, json!(2));

        let e = store
            .put("missing", &json!(1), Some(&v1))
            .await
            .unwrap_err();
        assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
        let e = store.get("missing").await.unwrap_err();
        assert!(matches!(e, SecretError::NotFound { .. }), "{e}");

        match store.create_if_absent("s", &json!(7)).await.unwrap() {
            CreateOutcome::Existed(v) => assert_eq!(v.value, json!(2)),
            other => panic!("expected Existed, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_read_modify_write_loses_nothing() {
        let (_tmp, store) = store();
        // Two store values on one directory behave like two processes sharing it.
        let stores: [Arc<dyn SecretStore>; 2] = [
            Arc::new(store.clone()),
            Arc::new(FileSecretStore::open(store.dir()).unwrap()),
        ];
        let writers = 24;
        let mut tasks = Vec::new();
        for i in 0..writers {
            let s = stores[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                update(&*s, "shared", 2 * writers as u32, |cur| {
                    let mut ids = cur.cloned().unwrap_or_else(|| json!([]));
                    ids.as_array_mut().ok_or("not an array")?.push(json!(i));
                    Ok::<_, &str>(Some(ids))
                })
                .await
                .unwrap()
                .attempts
            }));
        }
        let mut attempts = 0;
        for t in tasks {
            attempts += t.await.unwrap();
        }
        let ids: BTreeSet<u64> = store
            .get("shared")
            .await
            .unwrap()
            .value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids, (0..writers as u64).collect());
        assert!(attempts >= writers as u32);
    }

    #[tokio::test]
    async fn list_decodes_names_and_skips_foreign_files() {
        let (_tmp, store) = store();
        for n in ["p/connections/a", "p/connections/b", "p/app", "other"] {
            store.put(n, &json!({}), None).await.unwrap();
        }
        fs::write(store.dir().join(".0000.tmp"), b"half").unwrap();
        fs::write(store.dir().join("bad name.json"), b"{}").unwrap();
        fs::write(store.dir().join("README"), b"x").unwrap();
        assert_eq!(
            store.list("p/connections/").await.unwrap(),
            ["p/connections/a", "p/connections/b"]
        );
        assert_eq!(store.list("").await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn bad_names_and_corrupt_files_get_typed_errors_without_values() {
        let (_tmp, store) = store();
        let e = store.get("has space").await.unwrap_err();
        assert!(matches!(e, SecretError::InvalidName { .. }), "{e}");
        // Dots and slashes are legal in names but cannot climb out of the directory.
        assert_eq!(store.path_of("../etc/passwd").parent(), Some(store.dir()));
        let e = store.get("../etc/passwd").await.unwrap_err();
        assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
        fs::write(store.path_of("broken"), br#"{"version": "v", "value": "#).unwrap();
        let e = store.get("broken").await.unwrap_err();
        assert!(matches!(e, SecretError::InvalidJson { .. }), "{e}");
        fs::write(store.path_of("wrong"), br#"{"value": "hunter2"}"#).unwrap();
        let e = store.get("wrong").await.unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
