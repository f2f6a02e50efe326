//! The OAuth `state` parameter, the browser cookie it is bound to, and the PKCE verifier derived
//! from that cookie.
//!
//! `GET /connect/{connection}` calls [`StateSigner::issue`]: it draws a random [`Nonce`], puts it in
//! an `HttpOnly` cookie ([`CookieSettings::set_cookie`]) and signs a `state` that carries the
//! SHA-256 of the nonce plus everything the callback needs ([`StateClaims`]). The PKCE verifier is
//! `base64url(HMAC(key, "spbridge-pkce-v1" 0 nonce))`, so `GET /callback` recomputes it from the
//! cookie: no server-side session and no verifier in any URL.
//!
//! The callback calls [`StateSigner::verify`] with the cookie's nonce, then records
//! [`VerifiedState::replay_key`] in the connection secret's [`ConsumedStates`] in the same
//! compare-and-swap write that stores the tokens, so a replayed callback is refused before a second
//! write.
//!
//! Wire format: `base64url(json claims) "." base64url(HMAC-SHA256(key, "spbridge-state-v1" 0 payload))`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

use super::Provider;

type HmacSha256 = Hmac<Sha256>;

/// How long a sign-in attempt stays valid: the `state` expiry and the cookie's `Max-Age`.
pub const STATE_LIFETIME: Duration = Duration::minutes(10);
/// Shortest accepted signing key, in bytes (the HMAC-SHA256 output size).
pub const MIN_KEY_LEN: usize = 32;
/// Longest `state` [`StateSigner::verify`] looks at; anything longer is refused unparsed.
pub const MAX_STATE_LEN: usize = 4096;
/// The only PKCE method spbridge uses.
pub const PKCE_METHOD: &str = "S256";

const MAC_DOMAIN: &[u8] = b"spbridge-state-v1\0";
const PKCE_DOMAIN: &[u8] = b"spbridge-pkce-v1\0";
const NONCE_BYTES: usize = 32;
/// base64url without padding of 32 bytes.
const NONCE_CHARS: usize = 43;
const CLAIMS_VERSION: u8 = 1;
const MAX_CONNECTION_LEN: usize = 128;

/// A key that signs `state` and derives PKCE verifiers. At least [`MIN_KEY_LEN`] bytes; `Debug`
/// prints `[redacted]` and the bytes are zeroed on drop.
pub struct StateKey(SecretBox<[u8]>);

impl StateKey {
    /// Takes raw key bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, StateKeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(StateKeyError::TooShort { len: bytes.len() });
        }
        Ok(StateKey(SecretBox::from(bytes)))
    }

    /// Decodes a base64 key (standard or URL-safe alphabet, padded or not), as a secret store
    /// would hold it.
    pub fn from_base64(encoded: &SecretString) -> Result<Self, StateKeyError> {
        let s = encoded.expose_secret().trim();
        let bytes = [URL_SAFE_NO_PAD, URL_SAFE, STANDARD, STANDARD_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(s).ok())
            .ok_or(StateKeyError::NotBase64)?;
        Self::new(bytes)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this never fails; the fallback keeps it panic-free.
        <HmacSha256 as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()))
    }

    fn sign(&self, payload: &str) -> [u8; 32] {
        self.tag(MAC_DOMAIN, payload)
    }

    fn verifies(&self, payload: &str, tag: &[u8]) -> bool {
        self.verifies_tag(MAC_DOMAIN, payload, tag)
    }

    /// HMAC-SHA256 of `domain || payload`. Each use of the key has its own `\0`-terminated
    /// domain, so a tag made for one use (a `state`, a connect link) never verifies as another.
    pub(crate) fn tag(&self, domain: &[u8], payload: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(domain);
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is [`StateKey::tag`] of `domain || payload`, compared in constant time.
    pub(crate) fn verifies_tag(&self, domain: &[u8], payload: &str, tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(domain);
        mac.update(payload.as_bytes());
        mac.verify_slice(tag).is_ok()
    }

    fn pkce_verifier(&self, nonce: &Nonce) -> PkceVerifier {
        let mut mac = self.mac();
        mac.update(PKCE_DOMAIN);
        mac.update(nonce.0.expose_secret().as_bytes());
        // 32 bytes → 43 base64url characters, all in RFC 7636's unreserved set.
        PkceVerifier::derived(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey([redacted])")
    }
}

/// Why a [`StateKey`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateKeyError {
    /// Fewer than [`MIN_KEY_LEN`] bytes.
    #[error("the state signing key has {len} bytes; at least 32 are required")]
    TooShort {
        /// Length given.
        len: usize,
    },
    /// Not valid base64.
    #[error("the state signing key is not valid base64")]
    NotBase64,
}

/// The random value held in the browser cookie. 32 random bytes, base64url (43 characters).
/// `Debug` prints `[redacted]`: together with the key it yields the PKCE verifier.
pub struct Nonce(SecretString);

impl Nonce {
    /// Draws a fresh nonce from the thread-local CSPRNG.
    pub fn generate() -> Self {
        let bytes: [u8; NONCE_BYTES] = rand::random();
        Nonce(SecretString::from(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts a cookie value if it has the shape [`Nonce::generate`] produces.
    pub fn parse(value: &str) -> Option<Self> {
        let ok = value.len() == NONCE_CHARS
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Nonce(SecretString::from(value.to_owned())))
    }

    fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.expose_secret().as_bytes()).into()
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce([redacted])")
    }
}

pub use crate::identity::secret::{PkceError, PkceVerifier};

/// Which response the provider was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// Authorization code (`response_type=code`), answered on `GET /callback?code=…`.
    Code,
    /// Entra admin consent (`/adminconsent`), answered with `admin_consent=True`.
    AdminConsent,
}

/// What a sign-in attempt needs at the callback. Nothing in here is secret: the `state` travels
/// through the browser and the provider in clear (signed, not encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateClaims {
    #[serde(rename = "v")]
    version: u8,
    /// The connection being connected.
    #[serde(rename = "c")]
    pub connection: String,
    /// The identity system asked.
    #[serde(rename = "p")]
    pub provider: Provider,
    /// The response type asked for.
    #[serde(rename = "f")]
    pub flow: Flow,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// base64url SHA-256 of the cookie nonce; also the replay id.
    #[serde(rename = "nh")]
    pub nonce_hash: String,
    /// The `redirect_uri` sent to the authorize endpoint; the code redemption must repeat it.
    #[serde(rename = "r")]
    pub redirect_uri: String,
    /// Scopes requested (Entra, MSA).
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Resource requested (Azure AD v1, ACS).
    #[serde(rename = "res", default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Whether a PKCE challenge was sent, so the redemption must send the verifier.
    #[serde(rename = "pk", default)]
    pub pkce: bool,
    /// Started from a connect link minted for re-binding: the sign-in may replace the
    /// connection's bound account.
    #[serde(rename = "rb", default, skip_serializing_if = "std::ops::Not::not")]
    pub rebind: bool,
}

impl StateClaims {
    /// When the attempt started.
    pub fn issued_at(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.iat).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// When the attempt stops being accepted.
    pub fn expires_at(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.exp).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// What `GET /connect/{connection}` asks [`StateSigner::issue`] to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRequest {
    /// The connection id.
    pub connection: String,
    /// The identity system.
    pub provider: Provider,
    /// The response type.
    pub flow: Flow,
    /// The redirect URI sent to the authorize endpoint.
    pub redirect_uri: String,
    /// Scopes requested, if any.
    pub scopes: Vec<String>,
    /// Resource requested, if any.
    pub resource: Option<String>,
    /// Whether to send a PKCE challenge.
    pub pkce: bool,
    /// Whether the attempt may re-bind the connection to another account.
    pub rebind: bool,
}

/// A freshly signed sign-in attempt.
#[derive(Debug)]
pub struct IssuedState {
    /// The `state` query parameter for the authorize URL.
    pub state: String,
    /// The nonce for the cookie ([`CookieSettings::set_cookie`]).
    pub nonce: Nonce,
    /// The `code_challenge` (method [`PKCE_METHOD`]) when PKCE was requested.
    pub code_challenge: Option<String>,
    /// What was signed.
    pub claims: StateClaims,
}

/// Why a `state` could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The connection id is empty or longer than 128 bytes.
    #[error("the connection id must have 1 to 128 characters")]
    BadConnection,
    /// The signed `state` would be longer than [`MAX_STATE_LEN`].
    #[error("the state parameter would be {len} characters, more than the 4096 allowed")]
    TooLong {
        /// Length it would have had.
        len: usize,
    },
    /// The claims could not be encoded.
    #[error("the state claims could not be encoded: {0}")]
    Encode(String),
}

/// Why the callback refused a `state`. Every variant is the browser's or the attacker's doing,
/// so each maps to a 4xx ([`StateError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The callback carried no `state`.
    #[error("the callback has no state parameter; start the sign-in again from /connect")]
    Missing,
    /// Malformed, signed with an unknown key, or altered.
    #[error("the state parameter is malformed or its signature does not match")]
    Tampered,
    /// Older than [`STATE_LIFETIME`].
    #[error("the sign-in attempt expired at {expired_at}; start it again")]
    Expired {
        /// When it expired.
        expired_at: OffsetDateTime,
    },
    /// The browser sent no sign-in cookie.
    #[error(
        "the sign-in cookie is missing; finish the sign-in in the browser that started it, with cookies enabled"
    )]
    MissingCookie,
    /// The cookie belongs to another sign-in attempt (or is malformed).
    #[error(
        "the sign-in cookie belongs to another sign-in attempt; start again and finish one attempt at a time"
    )]
    CookieMismatch,
    /// The `state` names another connection than the request.
    #[error("the sign-in attempt was for connection {in_state:?}, not {expected:?}")]
    WrongConnection {
        /// Connection the request named.
        expected: String,
        /// Connection the state names.
        in_state: String,
    },
    /// The `state` was already consumed.
    #[error("this sign-in response was already used; start the sign-in again")]
    Replayed,
}

/// Signs and verifies `state` with a current key and, during rotation, a previous one.
#[derive(Debug)]
pub struct StateSigner {
    current: StateKey,
    previous: Option<StateKey>,
}

impl StateSigner {
    /// Signs with `current` and accepts only `current`.
    pub fn new(current: StateKey) -> Self {
        StateSigner {
            current,
            previous: None,
        }
    }

    /// Also accepts states signed with `previous` (and derives their PKCE verifier with it) so
    /// attempts started just before a key rotation still complete.
    pub fn with_previous(mut self, previous: StateKey) -> Self {
        self.previous = Some(previous);
        self
    }

    /// Starts a sign-in attempt with a fresh random nonce.
    pub fn issue(
        &self,
        request: StateRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedState, IssueError> {
        self.issue_with_nonce(request, Nonce::generate(), now)
    }

    /// Starts a sign-in attempt with a given nonce (tests; callers use [`StateSigner::issue`]).
    pub fn issue_with_nonce(
        &self,
        request: StateRequest,
        nonce: Nonce,
        now: OffsetDateTime,
    ) -> Result<IssuedState, IssueError> {
        if request.connection.is_empty() || request.connection.len() > MAX_CONNECTION_LEN {
            return Err(IssueError::BadConnection);
        }
        let iat = now.unix_timestamp();
        let claims = StateClaims {
            version: CLAIMS_VERSION,
            connection: request.connection,
            provider: request.provider,
            flow: request.flow,
            iat,
            exp: iat + STATE_LIFETIME.whole_seconds(),
            nonce_hash: URL_SAFE_NO_PAD.encode(nonce.hash()),
            redirect_uri: request.redirect_uri,
            scopes: request.scopes,
            resource: request.resource,
            pkce: request.pkce,
            rebind: request.rebind,
        };
        let json = serde_json::to_vec(&claims).map_err(|e| IssueError::Encode(e.to_string()))?;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = URL_SAFE_NO_PAD.encode(self.current.sign(&payload));
        let state = format!("{payload}.{tag}");
        if state.len() > MAX_STATE_LEN {
            return Err(IssueError::TooLong { len: state.len() });
        }
        let code_challenge = claims
            .pkce
            .then(|| self.current.pkce_verifier(&nonce).challenge());
        Ok(IssuedState {
            state,
            nonce,
            code_challenge,
            claims,
        })
    }

    /// Checks a `state` from the callback against the cookie's nonce at time `now`.
    ///
    /// Order: signature (`Tampered`), expiry (`Expired`), `expected_connection` when the request
    /// names one (`WrongConnection`), then the cookie (`MissingCookie`, `CookieMismatch`).
    /// Replays are caught by [`ConsumedStates::record`]. An `iat` ahead of `now` (clock skew
    /// between instances) is accepted: the signed `exp`, at most [`STATE_LIFETIME`] after `iat`,
    /// bounds the attempt either way.
    pub fn verify(
        &self,
        state: &str,
        cookie_nonce: Option<&Nonce>,
        expected_connection: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<VerifiedState, StateError> {
        if state.is_empty() {
            return Err(StateError::Missing);
        }
        if state.len() > MAX_STATE_LEN {
            return Err(StateError::Tampered);
        }
        let (payload, tag) = state.split_once('.').ok_or(StateError::Tampered)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| StateError::Tampered)?;
        let key = if self.current.verifies(payload, &tag) {
            &self.current
        } else {
            match &self.previous {
                Some(previous) if previous.verifies(payload, &tag) => previous,
                _ => return Err(StateError::Tampered),
            }
        };
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| StateError::Tampered)?;
        let claims: StateClaims =
            serde_json::from_slice(&json).map_err(|_| StateError::Tampered)?;
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if claims.version != CLAIMS_VERSION
            || lifetime <= 0
            || lifetime > STATE_LIFETIME.whole_seconds()
        {
            return Err(StateError::Tampered);
        }
        if now.unix_timestamp() >= claims.exp {
            return Err(StateError::Expired {
                expired_at: claims.expires_at(),
            });
        }
        if let Some(expected) = expected_connection {
            if expected != claims.connection {
                return Err(StateError::WrongConnection {
                    expected: expected.to_owned(),
                    in_state: claims.connection,
                });
            }
        }
        let nonce = cookie_nonce.ok_or(StateError::MissingCookie)?;
        let expected_hash = URL_SAFE_NO_PAD
            .decode(&claims.nonce_hash)
            .map_err(|_| StateError::Tampered)?;
        if !bool::from(nonce.hash().as_slice().ct_eq(&expected_hash)) {
            return Err(StateError::CookieMismatch);
        }
        let pkce_verifier = claims.pkce.then(|| key.pkce_verifier(nonce));
        Ok(VerifiedState {
            claims,
            pkce_verifier,
        })
    }
}

/// A `state` that passed [`StateSigner::verify`]. Not `Clone` (it holds the PKCE verifier).
#[derive(Debug)]
pub struct VerifiedState {
    /// What the attempt asked for.
    pub claims: StateClaims,
    /// The recomputed PKCE verifier, when the attempt used PKCE.
    pub pkce_verifier: Option<PkceVerifier>,
}

impl VerifiedState {
    /// The stable id of this attempt, to record in the connection secret so the callback runs
    /// once: the nonce hash (public, unlike the nonce).
    pub fn replay_key(&self) -> ReplayKey {
        ReplayKey {
            id: self.claims.nonce_hash.clone(),
            expires_at: self.claims.exp,
        }
    }

    /// Takes the PKCE verifier out, for the token request.
    pub fn take_pkce_verifier(&mut self) -> Option<PkceVerifier> {
        self.pkce_verifier.take()
    }
}

pub use crate::secrets::replay::{ConsumedStates, MAX_CONSUMED_STATES, ReplayKey};

/// The sign-in cookie's name and attributes.
///
/// `SameSite=Lax` lets the cookie ride along on the provider's top-level `GET` redirect to
/// `/callback`, but not on cross-site `POST`s, so
/// `response_mode=form_post` must not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieSettings {
    /// `true` (the default) for HTTPS: the `__Host-` name and the `Secure` attribute. `false` only
    /// for plain-HTTP local runs, where browsers refuse `Secure` cookies.
    pub secure: bool,
}

impl Default for CookieSettings {
    fn default() -> Self {
        CookieSettings { secure: true }
    }
}

/// Cookie name on HTTPS.
pub const COOKIE_NAME: &str = "__Host-spbridge_oauth";
/// Cookie name on plain-HTTP local runs (the `__Host-` prefix requires `Secure`).
pub const INSECURE_COOKIE_NAME: &str = "spbridge_oauth";

impl CookieSettings {
    /// The cookie's name.
    pub fn name(&self) -> &'static str {
        if self.secure {
            COOKIE_NAME
        } else {
            INSECURE_COOKIE_NAME
        }
    }

    fn attributes(&self, max_age: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("Path=/; Max-Age={max_age}; HttpOnly{secure}; SameSite=Lax")
    }

    /// The `Set-Cookie` value that stores `nonce` for [`STATE_LIFETIME`].
    pub fn set_cookie(&self, nonce: &Nonce) -> String {
        format!(
            "{}={}; {}",
            self.name(),
            nonce.0.expose_secret(),
            self.attributes(STATE_LIFETIME.whole_seconds())
        )
    }

    /// The `Set-Cookie` value that deletes the cookie (sent with every callback answer).
    pub fn clear_cookie(&self) -> String {
        format!("{}=; {}", self.name(), self.attributes(0))
    }

    /// Finds the nonce in `Cookie` header values (`a=1; b=2`) or in API Gateway v2's `cookies`
    /// array (`["a=1", "b=2"]`); both shapes may be mixed.
    ///
    /// `Ok(None)` when no cookie has our name, `Err(CookieMismatch)` when ours are all malformed.
    pub fn find_nonce<'a, I>(&self, cookies: I) -> Result<Option<Nonce>, StateError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut seen = false;
        for pair in cookies.into_iter().flat_map(|h| h.split(';')) {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            if name.trim() != self.name() {
                continue;
            }
            seen = true;
            // RFC 6265 allows the value in double quotes.
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if let Some(nonce) = Nonce::parse(value) {
                return Ok(Some(nonce));
            }
        }
        if seen {
            Err(StateError::CookieMismatch)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 06:00 UTC);

    fn key(byte: u8) -> StateKey {
        StateKey::new(vec![byte; 32]).unwrap()
    }

    fn request(pkce: bool) -> StateRequest {
        StateRequest {
            connection: "contoso-docs".into(),
            provider: Provider::Entra,
            flow: Flow::Code,
            redirect_uri: "https://abc123.execute-api.us-east-1.amazonaws.com/callback".into(),
            scopes: vec!["offline_access".into(), "Files.ReadWrite.All".into()],
            resource: None,
            pkce,
            rebind: false,
        }
    }

    fn nonce_copy(n: &Nonce) -> Nonce {
        Nonce::parse(n.0.expose_secret()).unwrap()
    }

    /// Flips one bit of the character at `index` in a base64url string, keeping it base64url.
    fn flip(s: &str, index: usize) -> String {
        let mut bytes = s.as_bytes().to_vec();
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn round_trip_carries_claims_and_pkce() {
        let signer = StateSigner::new(key(1));
        let issued = signer.issue(request(true), NOW).unwrap();
        let cookie = nonce_copy(&issued.nonce);
        let mut verified = signer
            .verify(
                &issued.state,
                Some(&cookie),
                None,
                NOW + Duration::minutes(9),
            )
            .unwrap();
        assert_eq!(verified.claims, issued.claims);
        assert_eq!(verified.claims.connection, "contoso-docs");
        assert_eq!(verified.claims.provider, Provider::Entra);
        assert_eq!(verified.claims.scopes.len(), 2);
        assert_eq!(verified.claims.expires_at(), NOW + Duration::minutes(10));
        let verifier = verified.take_pkce_verifier().unwrap();
        assert_eq!(
            Some(verifier.challenge()),
            issued.code_challenge,
            "the callback recomputes the verifier whose challenge /connect sent"
        );
        // The verifier is nowhere in the state.
        assert!(!issued.state.contains(verifier.expose_secret()));
        let json = URL_SAFE_NO_PAD
            .decode(issued.state.split('.').next().unwrap())
            .unwrap();
        assert!(
            !String::from_utf8(json)
                .unwrap()
                .contains(verifier.expose_secret())
        );
    }

    #[test]
    fn flipped_payload_or_mac_is_tampered() {
        let signer = StateSigner::new(key(1));
        let issued = signer.issue(request(false), NOW).unwrap();
        let cookie = nonce_copy(&issued.nonce);
        let dot = issued.state.find('.').unwrap();
        for index in [0, dot / 2, dot - 1, dot + 1, issued.state.len() - 2] {
            let bad = flip(&issued.state, index);
            assert_ne!(bad, issued.state);
            assert_eq!(
                signer.verify(&bad, Some(&cookie), None, NOW).unwrap_err(),
                StateError::Tampered,
                "flipped at {index}"
            );
        }
        for bad in ["", "nodot", ".", "a.b", "%%%.%%%", &"x".repeat(5000)] {
            let err = signer.verify(bad, Some(&cookie), None, NOW).unwrap_err();
            assert!(
                matches!(err, StateError::Tampered | StateError::Missing),
                "{bad:?}: {err:?}"
            );
        }
        // A payload re-signed by someone without the key: swap in other claims, keep the MAC.
        let other = signer
            .issue(
                StateRequest {
                    connection: "evil".into(),
                    ..request(false)
                },
                NOW,
            )
            .unwrap();
        let spliced = format!(
            "{}.{}",
            other.state.split('.').next().unwrap(),
            issued.state.split('.').nth(1).unwrap()
        );
        assert_eq!(
            signer
                .verify(&spliced, Some(&cookie), None, NOW)
                .unwrap_err(),
            StateError::Tampered
        );
    }

    #[test]
    fn expired_after_ten_minutes() {
        let signer = StateSigner::new(key(1));
        let issued = signer.issue(request(false), NOW).unwrap();
        let cookie = nonce_copy(&issued.nonce);
        let err = signer
            .verify(
                &issued.state,
                Some(&cookie),
                None,
                NOW + Duration::minutes(11),
            )
            .unwrap_err();
        assert_eq!(
            err,
            StateError::Expired {
                expired_at: NOW + Duration::minutes(10)
            }
        );
        // Exactly at expiry is already too late.
        assert!(
            signer
                .verify(&issued.state, Some(&cookie), None, NOW + STATE_LIFETIME)
                .is_err()
        );
    }

    #[test]
    fn missing_and_wrong_cookie() {
        let signer = StateSigner::new(key(1));
        let issued = signer.issue(request(true), NOW).unwrap();
        assert_eq!(
            signer.verify(&issued.state, None, None, NOW).unwrap_err(),
            StateError::MissingCookie
        );
        let other = Nonce::generate();
        assert_eq!(
            signer
                .verify(&issued.state, Some(&other), None, NOW)
                .unwrap_err(),
            StateError::CookieMismatch
        );
    }

    #[test]
    fn wrong_connection() {
        let signer = StateSigner::new(key(1));
        let issued = signer.issue(request(false), NOW).unwrap();
        let cookie = nonce_copy(&issued.nonce);
        let err = signer
            .verify(&issued.state, Some(&cookie), Some("fabrikam"), NOW)
            .unwrap_err();
        assert_eq!(
            err,
            StateError::WrongConnection {
                expected: "fabrikam".into(),
                in_state: "contoso-docs".into()
            }
        );
        assert!(
            signer
                .verify(&issued.state, Some(&cookie), Some("contoso-docs"), NOW)
                .is_ok()
        );
    }

    #[test]
    fn key_rotation_accepts_previous_and_rejects_unknown() {
        let old = StateSigner::new(key(1));
        let issued = old.issue(request(true), NOW).unwrap();
        let cookie = nonce_copy(&issued.nonce);

        let rotated = StateSigner::new(key(2)).with_previous(key(1));
        let mut verified = rotated
            .verify(&issued.state, Some(&cookie), None, NOW)
            .unwrap();
        // The verifier is derived with the key that signed the state.
        assert_eq!(
            Some(verified.take_pkce_verifier().unwrap().challenge()),
            issued.code_challenge
        );

        let unrelated = StateSigner::new(key(3)).with_previous(key(2));
        assert_eq!(
            unrelated
                .verify(&issued.state, Some(&cookie), None, NOW)
                .unwrap_err(),
            StateError::Tampered
        );
    }

    #[test]
    fn keys_shorter_than_32_bytes_are_refused() {
        assert_eq!(
            StateKey::new(vec![0; 31]).unwrap_err(),
            StateKeyError::TooShort { len: 31 }
        );
        let b64 = SecretString::from(STANDARD.encode([7u8; 48]));
        assert!(StateKey::from_base64(&b64).is_ok());
        let short = SecretString::from(URL_SAFE_NO_PAD.encode([7u8; 16]));
        assert!(matches!(
            StateKey::from_base64(&short),
            Err(StateKeyError::TooShort { len: 16 })
        ));
        assert_eq!(
            StateKey::from_base64(&SecretString::from("not base64!")).unwrap_err(),
            StateKeyError::NotBase64
        );
        assert_eq!(format!("{:?}", key(9)), "StateKey([redacted])");
    }

    #[test]
    fn pkce_verifier_is_stable_rfc_valid_and_redacted() {
        let signer = StateSigner::new(key(1));
        let nonce = Nonce::parse(&URL_SAFE_NO_PAD.encode([0x42u8; 32])).unwrap();
        let a = signer.current.pkce_verifier(&nonce);
        let b = signer.current.pkce_verifier(&nonce);
        assert_eq!(a.expose_secret(), b.expose_secret());
        // Pinned: changing the derivation would break attempts in flight during a deploy.
        assert_eq!(
            a.expose_secret(),
            "h6P_adyOymJSU-DgyhOrAxpKtk9F1eFriFTZHdPgVwg"
        );
        assert_eq!(a.expose_secret().len(), 43);
        assert!(PkceVerifier::new(a.expose_secret().to_owned()).is_ok());
        let other_key = key(2).pkce_verifier(&nonce);
        assert_ne!(a.expose_secret(), other_key.expose_secret());
        let other_nonce = signer.current.pkce_verifier(&Nonce::generate());
        assert_ne!(a.expose_secret(), other_nonce.expose_secret());
        assert_eq!(format!("{a:?}"), "PkceVerifier([redacted])");
        assert_eq!(format!("{nonce:?}"), "Nonce([redacted])");
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let v = PkceVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into()).unwrap();
        assert_eq!(v.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert_eq!(
            PkceVerifier::new("short".into()).unwrap_err(),
            PkceError::Length { len: 5 }
        );
        assert_eq!(
            PkceVerifier::new(format!("{}+", "a".repeat(43))).unwrap_err(),
            PkceError::Charset
        );
        assert!(PkceVerifier::new("a".repeat(129)).is_err());
        assert!(PkceVerifier::new("~._-".repeat(32)).is_ok());
    }

    #[test]
    fn issue_refuses_bad_connection_and_oversized_state() {
        let signer = StateSigner::new(key(1));
        let empty = StateRequest {
            connection: String::new(),
            ..request(false)
        };
        assert_eq!(
            signer.issue(empty, NOW).unwrap_err(),
            IssueError::BadConnection
        );
        let huge = StateRequest {
            scopes: vec!["x".repeat(4000)],
            ..request(false)
        };
        assert!(matches!(
            signer.issue(huge, NOW),
            Err(IssueError::TooLong { .. })
        ));
    }

    #[test]
    fn replay_is_refused_and_the_set_stays_bounded() {
        let signer = StateSigner::new(key(1));
        let mut consumed = ConsumedStates::new();
        let issued = signer.issue(request(false), NOW).unwrap();
        let cookie = nonce_copy(&issued.nonce);
        let verified = signer
            .verify(&issued.state, Some(&cookie), None, NOW)
            .unwrap();
        let key1 = verified.replay_key();
        // Stable: the same state gives the same key.
        let again = signer
            .verify(&issued.state, Some(&cookie), None, NOW)
            .unwrap();
        assert_eq!(again.replay_key(), key1);

        consumed.record(&key1, NOW).unwrap();
        assert_eq!(
            consumed.record(&key1, NOW + Duration::minutes(1)),
            Err(crate::secrets::replay::AlreadyConsumed)
        );

        // Many live attempts: never more than the bound, newest kept.
        let mut last = None;
        for _ in 0..40 {
            let k = signer
                .issue(request(false), NOW)
                .map(|i| ReplayKey {
                    id: i.claims.nonce_hash.clone(),
                    expires_at: i.claims.exp,
                })
                .unwrap();
            consumed.record(&k, NOW).unwrap();
            last = Some(k);
            assert!(consumed.len() <= MAX_CONSUMED_STATES);
        }
        assert_eq!(consumed.len(), MAX_CONSUMED_STATES);
        assert!(consumed.contains(last.as_ref().unwrap()));

        // Expired entries are dropped on the next write.
        let fresh = ReplayKey {
            id: "fresh".into(),
            expires_at: (NOW + Duration::minutes(30)).unix_timestamp(),
        };
        consumed
            .record(&fresh, NOW + Duration::minutes(20))
            .unwrap();
        assert_eq!(consumed.len(), 1);

        // Serde round trip, and an oversized stored list is trimmed to the newest.
        let json = serde_json::to_string(&consumed).unwrap();
        assert!(json.starts_with("[{\"id\":\"fresh\",\"exp\":"), "{json}");
        assert_eq!(
            serde_json::from_str::<ConsumedStates>(&json).unwrap(),
            consumed
        );
        let many: Vec<ReplayKey> = (0..50)
            .map(|i| ReplayKey {
                id: format!("k{i}"),
                expires_at: 0,
            })
            .collect();
        let read: ConsumedStates =
            serde_json::from_value(serde_json::to_value(&many).unwrap()).unwrap();
        assert_eq!(read.len(), MAX_CONSUMED_STATES);
        assert_eq!(read.iter().last().unwrap().id, "k49");
    }

    #[test]
    fn cookie_building_and_parsing() {
        let settings = CookieSettings::default();
        let nonce = Nonce::generate();
        let value = nonce.0.expose_secret().to_owned();
        let set = settings.set_cookie(&nonce);
        assert_eq!(
            set,
            format!(
                "__Host-spbridge_oauth={value}; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"
            )
        );
        assert_eq!(
            settings.clear_cookie(),
            "__Host-spbridge_oauth=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
        );
        let local = CookieSettings { secure: false };
        assert!(local.set_cookie(&nonce).starts_with("spbridge_oauth="));
        assert!(!local.set_cookie(&nonce).contains("Secure"));

        // Cookie header form.
        let header = format!("a=1; __Host-spbridge_oauth={value}; b=2");
        let found = settings.find_nonce([header.as_str()]).unwrap().unwrap();
        assert_eq!(found.0.expose_secret(), value);
        // API Gateway v2 `cookies` array form, quoted value.
        let list = [
            "a=1".to_owned(),
            format!("__Host-spbridge_oauth=\"{value}\""),
        ];
        let found = settings
            .find_nonce(list.iter().map(String::as_str))
            .unwrap()
            .unwrap();
        assert_eq!(found.0.expose_secret(), value);
        // Absent, and present but malformed.
        assert!(settings.find_nonce(["a=1; b=2"]).unwrap().is_none());
        assert!(settings.find_nonce(Vec::<&str>::new()).unwrap().is_none());
        assert_eq!(
            settings
                .find_nonce(["__Host-spbridge_oauth=short"])
                .unwrap_err(),
            StateError::CookieMismatch
        );
        // The `cookies` array of a real API Gateway v2 event (handout), with and without ours.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/aws/aws-lambda-rust-runtime_lambda-http_apigw_v2_proxy_request.json"
        );
        let event: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut list: Vec<String> = event["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(list.len(), 2);
        assert!(
            settings
                .find_nonce(list.iter().map(String::as_str))
                .unwrap()
                .is_none()
        );
        list.push(format!("__Host-spbridge_oauth={value}"));
        let found = settings
            .find_nonce(list.iter().map(String::as_str))
            .unwrap()
            .unwrap();
        assert_eq!(found.0.expose_secret(), value);
        // The insecure name is not read by the secure settings.
        let insecure_header = format!("spbridge_oauth={value}");
        assert!(
            settings
                .find_nonce([insecure_header.as_str()])
                .unwrap()
                .is_none()
        );
    }
}
