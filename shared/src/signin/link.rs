//! Operator-minted connect links: `GET /connect/{connection}?invite={token}`.
//!
//! A sign-in starts only from a link an operator minted (`spbridge-admin mint-link`). The token
//! is `base64url(claims).base64url(tag)`, where the tag is HMAC-SHA256 under the state-signing
//! key with its own domain (`spbridge-connect-link-v1\0`), so a `state` can never pass as a link
//! or the other way round. Using the state key (rather than a key of its own) keeps the secret
//! where it already is: only oauth-callback and operators can read `{prefix}state-key`, and
//! rotating that key (with `previous_key`) rotates links too. Claims: the connection, the expiry
//! (default 24 h), a random id, and whether the sign-in may re-bind the connection to another
//! account. A link is single use: `/connect` records its id in the connection secret
//! (`consumed_links`) with a compare-and-swap write before redirecting.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use url::Url;

use crate::config::SecretsConfig;
use crate::oauth::state::{ReplayKey, StateKey, StateKeyError};
use crate::secrets::SecretStore;
use crate::secrets::schema::{self, AuthKind, StateKeys};

const LINK_DOMAIN: &[u8] = b"spbridge-connect-link-v1\0";
const CLAIMS_VERSION: u8 = 1;
/// How long a link stays valid unless the operator asks otherwise.
pub const DEFAULT_LINK_TTL: Duration = Duration::hours(24);
/// The longest validity a link may be minted with.
pub const MAX_LINK_TTL: Duration = Duration::days(30);
/// Longest token accepted (a real one is about 150 characters).
const MAX_TOKEN_LEN: usize = 1024;

/// What a verified link says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectLink {
    #[serde(rename = "v")]
    version: u8,
    /// The connection it opens.
    #[serde(rename = "c")]
    pub connection: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Random id (hex), recorded when the link is used.
    #[serde(rename = "n")]
    pub id: String,
    /// The sign-in may replace the connection's bound account.
    #[serde(rename = "rb", default, skip_serializing_if = "std::ops::Not::not")]
    pub rebind: bool,
}

impl ConnectLink {
    /// The key recorded in the connection's `consumed_links` when the link is used.
    pub fn replay_key(&self) -> ReplayKey {
        ReplayKey {
            id: format!("link:{}", self.id),
            expires_at: self.exp,
        }
    }

    /// When the link stops working.
    pub fn expires_at(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.exp).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Why a link was not accepted (for the log and the minting tool; a browser is told only that
/// the link is not valid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a token this deployment minted, or altered.
    #[error("the link is malformed or its signature does not match")]
    BadSignature,
    /// Past its expiry.
    #[error("the link expired")]
    Expired,
    /// Minted for another connection.
    #[error("the link was minted for another connection")]
    WrongConnection,
    /// A TTL outside 1 minute to 30 days was asked for.
    #[error("a link is valid for 1 minute to 30 days")]
    BadTtl,
    /// The state key cannot be used.
    #[error("the state-signing key: {0}")]
    Key(#[from] StateKeyError),
}

/// Mints and verifies connect links with the state-signing keys.
#[derive(Debug)]
pub struct LinkSigner {
    current: StateKey,
    previous: Option<StateKey>,
}

impl LinkSigner {
    /// A signer over the state keys (the previous key still verifies).
    pub fn new(keys: &StateKeys) -> Result<Self, LinkError> {
        Ok(LinkSigner {
            current: StateKey::from_base64(&keys.key)?,
            previous: keys
                .previous_key
                .as_ref()
                .map(StateKey::from_base64)
                .transpose()?,
        })
    }

    /// A link token for `connection`, valid for `ttl` from `now`.
    pub fn mint(
        &self,
        connection: &str,
        ttl: Duration,
        rebind: bool,
        now: OffsetDateTime,
    ) -> Result<String, LinkError> {
        if ttl < Duration::minutes(1) || ttl > MAX_LINK_TTL {
            return Err(LinkError::BadTtl);
        }
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let claims = ConnectLink {
            version: CLAIMS_VERSION,
            connection: connection.to_owned(),
            exp: (now + ttl).unix_timestamp(),
            id: hex::encode(id),
            rebind,
        };
        let json = serde_json::to_vec(&claims).map_err(|_| LinkError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = URL_SAFE_NO_PAD.encode(self.current.tag(LINK_DOMAIN, &payload));
        Ok(format!("{payload}.{tag}"))
    }

    /// Checks a token from `/connect/{connection}?invite=` at `now`: signature, expiry, and that
    /// it was minted for `connection`. Whether it was used already is the caller's to check.
    pub fn verify(
        &self,
        token: &str,
        connection: &str,
        now: OffsetDateTime,
    ) -> Result<ConnectLink, LinkError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(LinkError::BadSignature);
        }
        let (payload, tag) = token.split_once('.').ok_or(LinkError::BadSignature)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| LinkError::BadSignature)?;
        let signed = self.current.verifies_tag(LINK_DOMAIN, payload, &tag)
            || self
                .previous
                .as_ref()
                .is_some_and(|k| k.verifies_tag(LINK_DOMAIN, payload, &tag));
        if !signed {
            return Err(LinkError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| LinkError::BadSignature)?;
        let link: ConnectLink =
            serde_json::from_slice(&json).map_err(|_| LinkError::BadSignature)?;
        if link.version != CLAIMS_VERSION {
            return Err(LinkError::BadSignature);
        }
        if now.unix_timestamp() >= link.exp {
            return Err(LinkError::Expired);
        }
        if link.connection != connection {
            return Err(LinkError::WrongConnection);
        }
        Ok(link)
    }
}

/// Mints a link for connection `connection` with the deployment's state keys, as
/// `spbridge-admin mint-link` does: the connection must exist and be delegated (an app-only one
/// has nothing to sign in to). Returns the `invite` token.
pub async fn mint_for_connection(
    store: &dyn SecretStore,
    cfg: &SecretsConfig,
    connection: &str,
    ttl: Duration,
    rebind: bool,
    now: OffsetDateTime,
) -> Result<String, String> {
    let conn = schema::connection(store, cfg, connection)
        .await
        .map_err(|e| e.to_string())?
        .value;
    if conn.auth == AuthKind::AppOnly {
        return Err(format!(
            "connection {connection} is app-only; there is nothing to sign in to"
        ));
    }
    let keys = schema::state_keys(store, cfg)
        .await
        .map_err(|e| e.to_string())?;
    LinkSigner::new(&keys)
        .and_then(|s| s.mint(connection, ttl, rebind, now))
        .map_err(|e| e.to_string())
}

/// The link to hand out: `{base}/connect/{connection}?invite={token}`, `base` being the
/// oauth-callback function's public URL (`SPBRIDGE_PUBLIC_BASE_URL`).
pub fn link_url(base: &Url, connection: &str, token: &str) -> Url {
    let mut url = crate::config::join_path(base, &format!("connect/{connection}"));
    url.query_pairs_mut().append_pair("invite", token);
    url
}

/// Parses a TTL such as `24h`, `90m`, `7d` or `3600s` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, LinkError> {
    let text = text.trim();
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = num.parse().map_err(|_| LinkError::BadTtl)?;
    let ttl = match unit {
        "" | "s" => Duration::seconds(n),
        "m" => Duration::minutes(n),
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        _ => return Err(LinkError::BadTtl),
    };
    if ttl < Duration::minutes(1) || ttl > MAX_LINK_TTL {
        return Err(LinkError::BadTtl);
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::oauth::state::{Flow, StateRequest, StateSigner};
    use crate::secrets::schema::Provider;

    const KEY: &str = "q3Z0mJ8c1sV4yT6uW9xA2bD5eG7hK0nP3rS6vY9zB2cE5fH8";
    const OTHER: &str = "b3RoZXIta2V5LW9mLWF0LWxlYXN0LXRoaXJ0eS10d28tYnl0ZXM=";

    fn keys(key: &str, previous: Option<&str>) -> StateKeys {
        StateKeys {
            key: SecretString::from(key.to_owned()),
            previous_key: previous.map(|p| SecretString::from(p.to_owned())),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_327_200).unwrap()
    }

    #[test]
    fn a_minted_link_opens_its_connection_until_it_expires() {
        let s = LinkSigner::new(&keys(KEY, None)).unwrap();
        let t = s.mint("demo-user", DEFAULT_LINK_TTL, true, now()).unwrap();
        let link = s.verify(&t, "demo-user", now()).unwrap();
        assert!(link.rebind);
        assert_eq!(link.expires_at(), now() + Duration::hours(24));
        assert!(link.replay_key().id.starts_with("link:"));
        assert_eq!(
            s.verify(&t, "other", now()),
            Err(LinkError::WrongConnection)
        );
        assert_eq!(
            s.verify(&t, "demo-user", now() + Duration::hours(24)),
            Err(LinkError::Expired)
        );
        // Two links never share an id.
        let t2 = s.mint("demo-user", DEFAULT_LINK_TTL, false, now()).unwrap();
        assert_ne!(s.verify(&t2, "demo-user", now()).unwrap().id, link.id);
    }

    #[test]
    fn altered_foreign_or_state_tokens_are_refused() {
        let s = LinkSigner::new(&keys(KEY, None)).unwrap();
        let t = s.mint("a", DEFAULT_LINK_TTL, false, now()).unwrap();
        // Claims swapped for a rebind link, old tag kept.
        let forged_claims = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({"v": 1, "c": "a", "exp": 9_999_999_999i64, "n": "00", "rb": true}))
                .unwrap(),
        );
        let forged = format!("{forged_claims}.{}", t.split('.').nth(1).unwrap());
        for bad in [forged.as_str(), "", "x", "x.y", &t[..t.len() - 2]] {
            assert_eq!(
                s.verify(bad, "a", now()),
                Err(LinkError::BadSignature),
                "{bad}"
            );
        }
        let other = LinkSigner::new(&keys(OTHER, None)).unwrap();
        assert_eq!(other.verify(&t, "a", now()), Err(LinkError::BadSignature));
        // A sign-in `state` signed with the same key is not a link (separate domains).
        let state =
            StateSigner::new(StateKey::from_base64(&SecretString::from(KEY.to_owned())).unwrap())
                .issue(
                    StateRequest {
                        connection: "a".into(),
                        provider: Provider::Entra,
                        flow: Flow::Code,
                        redirect_uri: "https://x/callback".into(),
                        scopes: vec![],
                        resource: None,
                        pkce: false,
                        rebind: false,
                    },
                    now(),
                )
                .unwrap();
        assert_eq!(
            s.verify(&state.state, "a", now()),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn links_survive_a_key_rotation_and_ttls_are_bounded() {
        let old = LinkSigner::new(&keys(OTHER, None)).unwrap();
        let t = old.mint("a", DEFAULT_LINK_TTL, false, now()).unwrap();
        let rotated = LinkSigner::new(&keys(KEY, Some(OTHER))).unwrap();
        assert!(rotated.verify(&t, "a", now()).is_ok());
        assert_eq!(parse_ttl("24h").unwrap(), Duration::hours(24));
        assert_eq!(parse_ttl("90m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::days(7));
        assert_eq!(parse_ttl("3600").unwrap(), Duration::hours(1));
        for bad in ["", "h", "10s", "31d", "5x", "-1h"] {
            assert_eq!(parse_ttl(bad), Err(LinkError::BadTtl), "{bad}");
        }
        assert_eq!(
            rotated.mint("a", Duration::days(31), false, now()),
            Err(LinkError::BadTtl)
        );
    }
}
