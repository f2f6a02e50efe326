//! Who may send to a connection: its sender secret (`{prefix}senders/{id}`) as a verifier.
//!
//! The receiver reads only this secret, never the connection's Microsoft credentials. Each
//! connection verifies with its own `whsec_` list, so a request signed for one connection is
//! refused at every other; the deployment-wide `{prefix}webhook` secret counts only where the
//! sender secret sets `accept_deployment_secret`.
//!
//! ```text
//! let sender = Sender::load(store, &config, "contoso-docs").await?;
//! let verified = sender.verify(&headers, &body, now)?;     // 401 on any failure
//! let key = sender.replay_key(&verified, &body);            // the job's delivery key
//! ```

use http::HeaderMap;
use rand::RngCore as _;
use secrecy::ExposeSecret as _;
use time::OffsetDateTime;

use super::{Limits, NamePolicy};
use crate::config::Config;
use crate::jobs::payload_hash as body_digest;
use crate::secrets::schema::{self, SenderSecret, UploadOptions};
use crate::secrets::{SecretError, SecretStore};
use crate::webhook::{Verified, WebhookError, WebhookSecret, WebhookVerifier};

/// Longest accepted connection id.
pub const MAX_CONNECTION_ID: usize = 128;

/// Whether `id` can name a connection (letters, digits, `.`, `_`, `-`; not starting with `.`).
/// Other ids are never looked up: they cannot form a secret name.
pub fn valid_connection_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CONNECTION_ID
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// One connection's senders, as the receiver sees them.
#[derive(Debug)]
pub struct Sender {
    connection: String,
    secret: Option<SenderSecret>,
    verifier: WebhookVerifier,
}

/// The ledger key of one verified request: what makes two deliveries "the same".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayKey {
    /// Standard Webhooks: the signed `webhook-id` (a sender's retry repeats it).
    WebhookId(String),
    /// GitHub style: the body's SHA-256 (hex), with `X-GitHub-Delivery` if sent. GitHub signs
    /// neither a timestamp nor the delivery id, so the body is the only thing a replayer cannot
    /// change; a repeat with a different or missing delivery id is refused.
    Body {
        /// SHA-256 of the body, hex.
        sha256: String,
        /// `X-GitHub-Delivery`, if the request carried one.
        delivery: Option<String>,
    },
}

impl Sender {
    /// Loads connection `connection`'s sender secret (through the store's warm cache) and, if
    /// it accepts the deployment-wide secret, that too.
    ///
    /// An unknown connection (no sender secret, or an id that cannot name one) is not an
    /// error: it loads as a sender that refuses every request exactly as a known connection
    /// refuses a wrong signature, so the answers do not tell strangers which connections exist.
    /// Errors are store failures and misshaped secrets; answer them with
    /// [`SecretError::to_api_error`].
    pub async fn load(
        store: &dyn SecretStore,
        config: &Config,
        connection: &str,
    ) -> Result<Sender, SecretError> {
        if !valid_connection_id(connection) {
            return Ok(Sender::unknown(connection));
        }
        let secret = match schema::sender(store, &config.secrets, connection).await {
            Ok(s) => s.value,
            Err(SecretError::NotFound { .. }) => return Ok(Sender::unknown(connection)),
            Err(e) => return Err(e),
        };
        let mut standard = Vec::with_capacity(secret.webhook_secrets.len());
        for s in &secret.webhook_secrets {
            // validate() has parsed every one; a failure here cannot happen, but stay total.
            if let Ok(k) = WebhookSecret::from_whsec(s.expose_secret()) {
                standard.push(k);
            }
        }
        if secret.accept_deployment_secret {
            let deployment = schema::webhook_secrets(store, &config.secrets).await?;
            for s in &deployment.value.secrets {
                let k = WebhookSecret::from_whsec(s.expose_secret()).map_err(|e| {
                    SecretError::InvalidJson {
                        name: config.secrets.webhook_secret.clone(),
                        reason: e.to_string(),
                    }
                })?;
                standard.push(k);
            }
        }
        let mut verifier =
            WebhookVerifier::standard(standard).allow_unsigned(secret.allow_unsigned);
        if secret.github_signature {
            let github = secret
                .github_secrets
                .iter()
                .filter_map(|s| WebhookSecret::from_raw(s.expose_secret().as_bytes()).ok())
                .collect();
            verifier = verifier.with_github(github);
        }
        Ok(Sender {
            connection: connection.to_owned(),
            secret: Some(secret),
            verifier,
        })
    }

    /// A sender for a connection that does not exist: a random key nobody holds, so every
    /// request fails the way a wrong signature fails at a real connection.
    fn unknown(connection: &str) -> Sender {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let verifier = match WebhookSecret::from_raw(key.to_vec()) {
            Ok(k) => WebhookVerifier::standard(vec![k]),
            Err(_) => WebhookVerifier::standard(Vec::new()),
        };
        Sender {
            connection: connection.chars().take(MAX_CONNECTION_ID).collect(),
            secret: None,
            verifier,
        }
    }

    /// The connection id from the request.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// The stored sender secret; `None` for an unknown connection.
    pub fn secret(&self) -> Option<&SenderSecret> {
        self.secret.as_ref()
    }

    /// Authenticates a request (headers and the exact body bytes) at `now`. Every failure is a
    /// 401 through [`crate::ingest::IngestError::Unauthorized`].
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Verified, WebhookError> {
        let verified = self.verifier.verify(headers, body, now)?;
        if self.secret.is_none() {
            // Unreachable (nobody holds the random key); refuse like a wrong signature anyway.
            return Err(WebhookError::NoMatchingSignature);
        }
        Ok(verified)
    }

    /// The options that validate a request (defaults for an unknown connection).
    pub fn options(&self) -> UploadOptions {
        self.secret
            .as_ref()
            .map(|s| s.upload.clone())
            .unwrap_or_default()
    }

    /// The name and metadata rules of this connection.
    pub fn name_policy(&self) -> NamePolicy {
        NamePolicy::for_connection(&self.options())
    }

    /// `base` narrowed by the connection's `max_file_bytes`.
    pub fn limits(&self, base: Limits) -> Limits {
        let mut limits = base;
        if let Some(max) = self.options().max_file_bytes {
            limits.max_file_bytes = limits
                .max_file_bytes
                .min(usize::try_from(max).unwrap_or(usize::MAX));
        }
        limits
    }

    /// The idempotency key of a verified request; `None` for unsigned requests (nothing about
    /// them is authenticated, so nothing can be deduplicated safely).
    pub fn replay_key(&self, verified: &Verified, body: &[u8]) -> Option<ReplayKey> {
        match verified {
            Verified::StandardWebhooks { webhook_id, .. } => {
                Some(ReplayKey::WebhookId(webhook_id.clone()))
            }
            Verified::GitHub { delivery_id } => Some(ReplayKey::Body {
                sha256: body_digest(body),
                delivery: delivery_id.clone(),
            }),
            Verified::Unsigned => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use http::HeaderValue;
    use serde_json::json;
    use sha2::Sha256;

    use super::*;
    use crate::secrets::FileSecretStore;

    const A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const B: &str = "whsec_c2Vjb25kLWNvbm5lY3Rpb24tc2VjcmV0LWtleQ==";
    const DEPLOYMENT: &str = "whsec_ZGVwbG95bWVudC13aWRlLXNlY3JldC1rZXk=";

    fn signed(whsec: &str, id: &str, ts: i64, body: &[u8]) -> HeaderMap {
        let key = base64::engine::general_purpose::STANDARD
            .decode(whsec.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert(
            "webhook-timestamp",
            HeaderValue::from_str(&ts.to_string()).unwrap(),
        );
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(&format!("v1,{sig}")).unwrap(),
        );
        h
    }

    async fn world() -> (tempfile::TempDir, Arc<dyn SecretStore>, Config) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(FileSecretStore::open(dir.path()).unwrap());
        let config = Config::from_lookup(|_| None).unwrap();
        let put = |n: &str, v: serde_json::Value| {
            let store = store.clone();
            let n = n.to_owned();
            async move { store.put(&n, &v, None).await.unwrap() }
        };
        put("spbridge/webhook", json!({"secrets": [DEPLOYMENT]})).await;
        put("spbridge/senders/a", json!({"webhook_secrets": [A]})).await;
        put(
            "spbridge/senders/b",
            json!({"webhook_secrets": [B], "accept_deployment_secret": true}),
        )
        .await;
        (dir, store, config)
    }

    #[tokio::test]
    async fn each_connection_verifies_with_its_own_secrets_only() {
        let (_d, store, config) = world().await;
        let now = OffsetDateTime::from_unix_timestamp(1_795_327_200).unwrap();
        let ts = now.unix_timestamp();
        let a = Sender::load(&*store, &config, "a").await.unwrap();
        let b = Sender::load(&*store, &config, "b").await.unwrap();
        let for_a = signed(A, "msg_1", ts, b"x");
        assert!(a.verify(&for_a, b"x", now).is_ok());
        assert_eq!(
            b.verify(&for_a, b"x", now),
            Err(WebhookError::NoMatchingSignature)
        );
        // The deployment secret counts only where the sender secret accepts it.
        let deployment = signed(DEPLOYMENT, "msg_2", ts, b"x");
        assert!(b.verify(&deployment, b"x", now).is_ok());
        assert_eq!(
            a.verify(&deployment, b"x", now),
            Err(WebhookError::NoMatchingSignature)
        );
        // Unknown and invalid ids answer exactly like a wrong signature at a real connection.
        for id in ["nobody", "../a", ""] {
            let u = Sender::load(&*store, &config, id).await.unwrap();
            assert!(u.secret().is_none());
            assert_eq!(
                u.verify(&for_a, b"x", now),
                a.verify(&signed(B, "msg_1", ts, b"x"), b"x", now)
            );
            assert_eq!(
                u.verify(&HeaderMap::new(), b"x", now),
                a.verify(&HeaderMap::new(), b"x", now)
            );
        }
    }

    #[tokio::test]
    async fn rolling_any_listed_secret_verifies_and_the_newest_signs() {
        let (_d, store, config) = world().await;
        store
            .put(
                "spbridge/senders/r",
                &json!({"webhook_secrets": [B, A]}),
                None,
            )
            .await
            .unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_795_327_200).unwrap();
        let r = Sender::load(&*store, &config, "r").await.unwrap();
        for key in [A, B] {
            let h = signed(key, "msg", now.unix_timestamp(), b"y");
            assert!(r.verify(&h, b"y", now).is_ok(), "{key}");
        }
        let newest = r.secret().unwrap().signing_secret().unwrap();
        assert_eq!(newest.expose_secret(), B);
    }

    #[tokio::test]
    async fn misshaped_sender_secrets_are_errors_that_name_no_secret() {
        let (_d, store, config) = world().await;
        for (id, v, field) in [
            (
                "bad1",
                json!({"webhook_secrets": ["whsec_!!!"]}),
                "webhook_secrets[0]",
            ),
            ("bad2", json!({"github_signature": true}), "github_secrets"),
            ("bad3", json!({}), "webhook_secrets"),
        ] {
            store
                .put(&format!("spbridge/senders/{id}"), &v, None)
                .await
                .unwrap();
            let e = Sender::load(&*store, &config, id).await.unwrap_err();
            assert!(
                matches!(&e, SecretError::InvalidJson { reason, .. } if reason.contains(field)),
                "{id}: {e}"
            );
            assert_eq!(e.to_api_error().status().as_u16(), 500);
        }
    }

    #[test]
    fn github_requests_are_keyed_by_their_body() {
        let s = Sender::unknown("x");
        let k = s.replay_key(
            &Verified::GitHub {
                delivery_id: Some("d1".into()),
            },
            b"hello",
        );
        assert_eq!(
            k,
            Some(ReplayKey::Body {
                sha256: body_digest(b"hello"),
                delivery: Some("d1".into())
            })
        );
        assert_eq!(s.replay_key(&Verified::Unsigned, b"hello"), None);
    }
}
