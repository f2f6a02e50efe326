//! Exactly-once uploads per `webhook-id`: a small ledger per connection in the secret store.
//!
//! GitHub-style requests sign neither a timestamp nor their `X-GitHub-Delivery`, so a captured
//! one could be sent again with a fresh delivery id at any time. They are keyed by the body's
//! SHA-256 instead ([`Idempotency::claim_body`], ledger key `sha256:{hex}`): within the window,
//! the same body again gets the first answer only under the same delivery id (GitHub's own
//! redelivery), and is refused ([`Claim::Duplicate`]) with another or no delivery id.
//!
//! Webhook senders retry until they see a 2xx, and they retry with the same `webhook-id`. The
//! ledger `{prefix}idempotency/{connection}` maps each recent id to `pending` (an upload is under
//! way) or `done` (with the answer that was given). An upload is *claimed* with a compare-and-swap
//! write before any byte moves, so of two concurrent deliveries only one uploads; the other sees
//! `pending` and gets a 409 with `Retry-After`. A delivery seen again after `done` gets the first
//! answer again and creates no file.
//!
//! The ledger is bounded: entries older than the window are dropped on every write, and when it
//! holds more than [`MAX_ENTRIES`] (Secrets Manager values are at most 64 KiB) the oldest go
//! first. A `pending` claim older than [`STALE_PENDING`] (longer than any Lambda can run) is
//! treated as abandoned, so a crashed invocation does not block its id forever.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::SecretsConfig;
use crate::secrets::{SecretError, SecretStore, UpdateError, update};

/// Most ids kept per connection.
pub const MAX_ENTRIES: usize = 150;
/// Largest serialized ledger written, in bytes (Secrets Manager allows 65 536).
pub const MAX_LEDGER_BYTES: usize = 60 * 1024;
/// A `pending` claim older than this is considered abandoned (Lambda runs at most 15 minutes).
pub const STALE_PENDING: Duration = Duration::from_secs(16 * 60);
/// What a concurrent duplicate is told to wait.
pub const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// CAS rounds before giving up on a contended ledger.
const MAX_ATTEMPTS: u32 = 8;
/// Largest answer remembered; a larger one is stored as a summary.
const MAX_RESPONSE_BYTES: usize = 4 * 1024;

/// The name of a connection's ledger secret.
pub fn ledger_name(cfg: &SecretsConfig, connection: &str) -> String {
    format!("{}idempotency/{}", cfg.prefix, connection)
}

/// A remembered answer: status and JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EntryState {
    Pending,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    state: EntryState,
    /// Unix seconds of the claim (pending) or completion (done).
    at: i64,
    /// SHA-256 of the request body, hex: an id reused for other content is refused.
    body_sha256: String,
    /// Unique per claim, so a completion never overwrites someone else's claim.
    claim: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<StoredResponse>,
    /// Body-keyed entries: the `X-GitHub-Delivery` of the delivery that claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delivery: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ledger {
    #[serde(default)]
    entries: BTreeMap<String, Entry>,
}

/// What [`Idempotency::claim`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This invocation owns the id and must upload, then call [`Idempotency::complete`] or
    /// [`Idempotency::release`].
    Claimed(ClaimToken),
    /// The id was already handled; answer this again.
    Replay(StoredResponse),
    /// Another invocation is uploading this id right now.
    InFlight {
        /// How long the sender should wait.
        retry_after: Duration,
    },
    /// The id was used before for a different body.
    Mismatch,
    /// This body was delivered before under another (or no) delivery id: a replay.
    Duplicate,
}

/// Proof of a claim, handed back to complete or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    connection: String,
    webhook_id: String,
    claim: String,
}

/// Why the ledger could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The secret store failed (after its own retries).
    #[error("idempotency ledger: {0}")]
    Store(#[from] SecretError),
    /// The ledger secret holds something that is not a ledger.
    #[error("idempotency ledger {name} is not valid: {reason}")]
    Corrupt {
        /// The secret.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The ledger of every connection, over one secret store.
pub struct Idempotency<'a> {
    store: &'a dyn SecretStore,
    secrets: &'a SecretsConfig,
    window: Duration,
}

/// The SHA-256 of a request body, hex.
pub fn body_digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

impl<'a> Idempotency<'a> {
    /// A ledger over `store`, remembering ids for `window`.
    pub fn new(store: &'a dyn SecretStore, secrets: &'a SecretsConfig, window: Duration) -> Self {
        Idempotency {
            store,
            secrets,
            window,
        }
    }

    /// Claims `webhook_id` for `connection` at `now`, or reports why not.
    pub async fn claim(
        &self,
        connection: &str,
        webhook_id: &str,
        body_sha256: &str,
        now: OffsetDateTime,
    ) -> Result<Claim, IdempotencyError> {
        self.claim_entry(connection, webhook_id, body_sha256, None, now)
            .await
    }

    /// Claims a GitHub-style request by its body's SHA-256 (key `sha256:{hex}`): the same body
    /// within the window is answered again only under the same `delivery` id, and is
    /// [`Claim::Duplicate`] under another or none.
    pub async fn claim_body(
        &self,
        connection: &str,
        body_sha256: &str,
        delivery: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Claim, IdempotencyError> {
        let key = format!("sha256:{body_sha256}");
        self.claim_entry(connection, &key, body_sha256, Some(delivery), now)
            .await
    }

    /// `delivery`: `None` for id-keyed entries; `Some(d)` for body-keyed ones.
    async fn claim_entry(
        &self,
        connection: &str,
        webhook_id: &str,
        body_sha256: &str,
        delivery: Option<Option<&str>>,
        now: OffsetDateTime,
    ) -> Result<Claim, IdempotencyError> {
        let name = ledger_name(self.secrets, connection);
        let claim_id = uuid::Uuid::new_v4().to_string();
        let window = self.window;
        let mut found: Option<Claim> = None;
        self.run(&name, |ledger| {
            prune(ledger, now, window);
            found = match ledger.entries.get(webhook_id) {
                Some(e) if e.body_sha256 != body_sha256 && delivery.is_none() => {
                    Some(Claim::Mismatch)
                }
                // Without a signed timestamp only the same delivery id marks a retry.
                Some(e) if delivery.is_some_and(|d| d.is_none() || e.delivery.as_deref() != d) => {
                    Some(Claim::Duplicate)
                }
                Some(Entry {
                    state: EntryState::Done,
                    response: Some(r),
                    ..
                }) => Some(Claim::Replay(r.clone())),
                Some(e)
                    if e.state == EntryState::Pending
                        && now.unix_timestamp() - e.at < STALE_PENDING.as_secs() as i64 =>
                {
                    Some(Claim::InFlight {
                        retry_after: IN_FLIGHT_RETRY_AFTER,
                    })
                }
                _ => None,
            };
            if found.is_some() {
                return false;
            }
            ledger.entries.insert(
                webhook_id.to_owned(),
                Entry {
                    state: EntryState::Pending,
                    at: now.unix_timestamp(),
                    body_sha256: body_sha256.to_owned(),
                    claim: claim_id.clone(),
                    response: None,
                    delivery: delivery.flatten().map(str::to_owned),
                },
            );
            true
        })
        .await?;
        Ok(found.unwrap_or_else(|| {
            Claim::Claimed(ClaimToken {
                connection: connection.to_owned(),
                webhook_id: webhook_id.to_owned(),
                claim: claim_id.clone(),
            })
        }))
    }

    /// Records the answer for a claimed id, so later deliveries get it again.
    pub async fn complete(
        &self,
        token: &ClaimToken,
        response: StoredResponse,
        now: OffsetDateTime,
    ) -> Result<(), IdempotencyError> {
        let name = ledger_name(self.secrets, &token.connection);
        let response = bounded(response);
        let window = self.window;
        self.run(&name, |ledger| {
            prune(ledger, now, window);
            match ledger.entries.get_mut(&token.webhook_id) {
                Some(e) if e.claim == token.claim => {
                    e.state = EntryState::Done;
                    e.at = now.unix_timestamp();
                    e.response = Some(response.clone());
                    true
                }
                // Our claim was pruned or taken over: record the answer anyway, it is the truth.
                None => {
                    ledger.entries.insert(
                        token.webhook_id.clone(),
                        Entry {
                            state: EntryState::Done,
                            at: now.unix_timestamp(),
                            body_sha256: String::new(),
                            claim: token.claim.clone(),
                            response: Some(response.clone()),
                            delivery: None,
                        },
                    );
                    true
                }
                Some(_) => false,
            }
        })
        .await
    }

    /// Drops a claim whose upload failed, so the sender's retry runs the upload again.
    pub async fn release(&self, token: &ClaimToken) -> Result<(), IdempotencyError> {
        let name = ledger_name(self.secrets, &token.connection);
        self.run(&name, |ledger| {
            let ours = ledger
                .entries
                .get(&token.webhook_id)
                .is_some_and(|e| e.claim == token.claim && e.state == EntryState::Pending);
            if ours {
                ledger.entries.remove(&token.webhook_id);
            }
            ours
        })
        .await
    }

    /// Read → change → CAS write of the ledger; `change` returns whether to write.
    async fn run(
        &self,
        name: &str,
        mut change: impl FnMut(&mut Ledger) -> bool,
    ) -> Result<(), IdempotencyError> {
        let result = update(self.store, name, MAX_ATTEMPTS, |current: Option<&Value>| {
            let mut ledger: Ledger = match current {
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| e.to_string())?,
                None => Ledger::default(),
            };
            if !change(&mut ledger) {
                return Ok(None);
            }
            shrink(&mut ledger);
            serde_json::to_value(&ledger)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(UpdateError::Secret(e)) => Err(e.into()),
            Err(UpdateError::Rejected { name, source }) => Err(IdempotencyError::Corrupt {
                name,
                reason: source,
            }),
        }
    }
}

/// Drops entries older than the window, and abandoned claims.
fn prune(ledger: &mut Ledger, now: OffsetDateTime, window: Duration) {
    let now = now.unix_timestamp();
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    ledger.entries.retain(|_, e| match e.state {
        EntryState::Done => now.saturating_sub(e.at) < window,
        EntryState::Pending => {
            now.saturating_sub(e.at) < window.max(STALE_PENDING.as_secs() as i64)
        }
    });
}

/// Keeps the ledger within [`MAX_ENTRIES`] and [`MAX_LEDGER_BYTES`], oldest `done` entries first.
fn shrink(ledger: &mut Ledger) {
    let too_big = |l: &Ledger| {
        l.entries.len() > MAX_ENTRIES
            || serde_json::to_vec(l).map_or(true, |v| v.len() > MAX_LEDGER_BYTES)
    };
    while too_big(ledger) {
        // Pending claims are kept while any done entry can go: dropping one could let a
        // concurrent duplicate upload twice.
        let victim = ledger
            .entries
            .iter()
            .min_by_key(|(_, e)| (e.state == EntryState::Pending, e.at))
            .map(|(k, _)| k.clone());
        match victim {
            Some(k) => {
                ledger.entries.remove(&k);
            }
            None => break,
        }
    }
}

/// Keeps a remembered answer small: a large multi-file answer keeps only what a sender needs.
fn bounded(response: StoredResponse) -> StoredResponse {
    let len = serde_json::to_vec(&response.body).map_or(usize::MAX, |v| v.len());
    if len <= MAX_RESPONSE_BYTES {
        return response;
    }
    let summary = match &response.body {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| serde_json::json!({ "path": i.get("path"), "id": i.get("id") }))
                .collect(),
        ),
        other => serde_json::json!({ "path": other.get("path"), "id": other.get("id") }),
    };
    StoredResponse {
        status: response.status,
        body: summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SecretBackend, SecretsConfig};
    use crate::secrets::FileSecretStore;

    fn cfg(dir: &std::path::Path) -> SecretsConfig {
        SecretsConfig {
            backend: SecretBackend::File {
                dir: dir.to_owned(),
            },
            prefix: "spbridge/".into(),
            app_secret: "spbridge/app".into(),
            webhook_secret: "spbridge/webhook".into(),
            state_key_secret: "spbridge/state-key".into(),
            cache_ttl: Duration::ZERO,
            not_found_ttl: Duration::ZERO,
        }
    }

    fn at(ts: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(ts).unwrap()
    }

    fn ok_response() -> StoredResponse {
        StoredResponse {
            status: 201,
            body: serde_json::json!({"path": "/a.txt", "id": "1"}),
        }
    }

    #[tokio::test]
    async fn claim_then_replay_then_window_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSecretStore::open(dir.path()).unwrap();
        let cfg = cfg(dir.path());
        let idem = Idempotency::new(&store, &cfg, Duration::from_secs(3600));
        let sha = body_digest(b"x");
        let Claim::Claimed(token) = idem.claim("c", "msg_1", &sha, at(1000)).await.unwrap() else {
            panic!("first delivery must claim");
        };
        // A concurrent duplicate waits.
        assert!(matches!(
            idem.claim("c", "msg_1", &sha, at(1001)).await.unwrap(),
            Claim::InFlight { .. }
        ));
        idem.complete(&token, ok_response(), at(1002))
            .await
            .unwrap();
        assert_eq!(
            idem.claim("c", "msg_1", &sha, at(1003)).await.unwrap(),
            Claim::Replay(ok_response())
        );
        // Same id, other body.
        assert_eq!(
            idem.claim("c", "msg_1", &body_digest(b"y"), at(1004))
                .await
                .unwrap(),
            Claim::Mismatch
        );
        // Other connection: independent.
        assert!(matches!(
            idem.claim("d", "msg_1", &sha, at(1005)).await.unwrap(),
            Claim::Claimed(_)
        ));
        // After the window the id is new again.
        assert!(matches!(
            idem.claim("c", "msg_1", &sha, at(1002 + 3600))
                .await
                .unwrap(),
            Claim::Claimed(_)
        ));
    }

    #[tokio::test]
    async fn release_and_stale_claims() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSecretStore::open(dir.path()).unwrap();
        let cfg = cfg(dir.path());
        let idem = Idempotency::new(&store, &cfg, Duration::from_secs(86400));
        let sha = body_digest(b"x");
        let Claim::Claimed(t) = idem.claim("c", "m", &sha, at(0)).await.unwrap() else {
            panic!()
        };
        idem.release(&t).await.unwrap();
        let Claim::Claimed(_) = idem.claim("c", "m", &sha, at(1)).await.unwrap() else {
            panic!("released id is claimable again")
        };
        // Abandoned: a claim older than STALE_PENDING is taken over.
        let later = 1 + STALE_PENDING.as_secs() as i64 + 1;
        assert!(matches!(
            idem.claim("c", "m", &sha, at(later)).await.unwrap(),
            Claim::Claimed(_)
        ));
    }

    #[tokio::test]
    async fn github_bodies_are_refused_under_a_fresh_or_missing_delivery_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSecretStore::open(dir.path()).unwrap();
        let cfg = cfg(dir.path());
        let idem = Idempotency::new(&store, &cfg, Duration::from_secs(3600));
        let sha = body_digest(b"push");
        let Claim::Claimed(t) = idem
            .claim_body("c", &sha, Some("d1"), at(10))
            .await
            .unwrap()
        else {
            panic!("first delivery claims");
        };
        idem.complete(&t, ok_response(), at(11)).await.unwrap();
        // GitHub's redelivery (same id): the first answer again.
        assert_eq!(
            idem.claim_body("c", &sha, Some("d1"), at(12))
                .await
                .unwrap(),
            Claim::Replay(ok_response())
        );
        // A replayer's fresh or missing id: refused.
        for d in [Some("d2"), None] {
            assert_eq!(
                idem.claim_body("c", &sha, d, at(13)).await.unwrap(),
                Claim::Duplicate,
                "{d:?}"
            );
        }
        // Without a delivery id even the first sender's retry is a duplicate.
        let other = body_digest(b"other");
        assert!(matches!(
            idem.claim_body("c", &other, None, at(14)).await.unwrap(),
            Claim::Claimed(_)
        ));
        assert_eq!(
            idem.claim_body("c", &other, None, at(15)).await.unwrap(),
            Claim::Duplicate
        );
        // Another body is new; after the window the same body is new again.
        assert!(matches!(
            idem.claim_body("c", &body_digest(b"new"), Some("d3"), at(16))
                .await
                .unwrap(),
            Claim::Claimed(_)
        ));
        assert!(matches!(
            idem.claim_body("c", &sha, Some("d9"), at(11 + 3600))
                .await
                .unwrap(),
            Claim::Claimed(_)
        ));
    }

    #[test]
    fn shrink_keeps_pending_and_newest() {
        let mut l = Ledger::default();
        for i in 0..(MAX_ENTRIES as i64 + 10) {
            l.entries.insert(
                format!("id{i}"),
                Entry {
                    state: if i == 0 {
                        EntryState::Pending
                    } else {
                        EntryState::Done
                    },
                    at: i,
                    body_sha256: "0".repeat(64),
                    claim: "c".into(),
                    response: Some(ok_response()),
                    delivery: None,
                },
            );
        }
        shrink(&mut l);
        assert_eq!(l.entries.len(), MAX_ENTRIES);
        assert!(l.entries.contains_key("id0"), "pending claim kept");
        assert!(!l.entries.contains_key("id1"), "oldest done dropped");
        assert!(serde_json::to_vec(&l).unwrap().len() <= MAX_LEDGER_BYTES);
    }

    #[test]
    fn large_answers_are_summarised() {
        let big: Vec<Value> = (0..100)
            .map(|i| serde_json::json!({"path": format!("/f{i}"), "id": i, "web_url": "x".repeat(100)}))
            .collect();
        let r = bounded(StoredResponse {
            status: 201,
            body: Value::Array(big),
        });
        assert!(serde_json::to_vec(&r.body).unwrap().len() < 8 * 1024);
        assert_eq!(r.body[5]["path"], "/f5");
    }
}
