//! Issuing and checking JWTs: RS256 access tokens, HS256 context tokens, client assertions.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::keys::CertInfo;
use crate::util::b64url;

/// The emulator's token-signing key and its public forms.
pub struct Signer {
    enc: EncodingKey,
    dec: DecodingKey,
    pub kid: String,
    pub cert: CertInfo,
    /// Every token signed, for the test suite's log scan.
    issued: std::sync::Mutex<Vec<String>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid")]
    Immature,
    #[error("the audience is invalid")]
    Audience,
    #[error("the token could not be validated: {0}")]
    Other(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::Immature,
            K::InvalidSignature => TokenError::BadSignature,
            K::InvalidAudience => TokenError::Audience,
            K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => TokenError::Malformed,
            other => TokenError::Other(format!("{other:?}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("bad signing key: {0}")]
pub struct KeyError(String);

impl Signer {
    pub fn new(cert: CertInfo) -> Result<Signer, KeyError> {
        let enc = EncodingKey::from_rsa_pem(cert.key_pem.as_bytes())
            .map_err(|e| KeyError(e.to_string()))?;
        let dec = DecodingKey::from_rsa_der(&cert.public_key_der);
        let kid = b64url(&cert.sha1);
        Ok(Signer {
            enc,
            dec,
            kid,
            cert,
            issued: Default::default(),
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.x5t = Some(self.kid.clone());
        // Signing a JSON value with a valid key cannot fail; an empty token fails every check.
        let token = jsonwebtoken::encode(&header, claims, &self.enc).unwrap_or_default();
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(token.clone());
        token
    }

    /// Every token this signer made.
    pub fn issued(&self) -> Vec<String> {
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks signature, `exp` and `nbf` (numbers or, as ACS writes them, strings).
    pub fn verify(&self, token: &str) -> Result<Value, TokenError> {
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_aud = false;
        v.validate_exp = false;
        v.required_spec_claims = HashSet::new();
        let data = jsonwebtoken::decode::<Value>(token, &self.dec, &v)?;
        check_times(&data.claims)?;
        Ok(data.claims)
    }

    /// The JWKS document published at `discovery/v2.0/keys`.
    pub fn jwks(&self, issuer: &str) -> Value {
        json!({"keys": [{
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64url(&self.cert.modulus),
            "e": b64url(&self.cert.exponent),
            "x5c": [crate::util::b64(&self.cert.der)],
            "issuer": issuer,
        }]})
    }
}

fn num(v: Option<&Value>) -> Option<i64> {
    match v? {
        // Some clients (MSAL Python) write fractional seconds.
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn check_times(claims: &Value) -> Result<(), TokenError> {
    let now = crate::util::unix_now();
    if let Some(exp) = num(claims.get("exp"))
        && exp <= now
    {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = num(claims.get("nbf"))
        && nbf > now + 300
    {
        return Err(TokenError::Immature);
    }
    Ok(())
}

/// HS256 with the given key (context tokens).
pub fn sign_hs256(key: &[u8], claims: &Value) -> String {
    let header = Header::new(Algorithm::HS256);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).unwrap_or_default()
}

/// Verifies an HS256 token (tests use this to check context tokens).
pub fn verify_hs256(key: &[u8], token: &str) -> Result<Value, TokenError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_aud = false;
    v.validate_exp = false;
    v.required_spec_claims = HashSet::new();
    let data = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(key), &v)?;
    check_times(&data.claims)?;
    Ok(data.claims)
}

/// Why a client assertion was refused (all map to AADSTS700027 or a neighbour).
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("Client assertion contains an invalid signature. [Reason - The key was not found.]")]
    UnknownKey,
    #[error("Client assertion failed signature validation.")]
    Signature,
    #[error("Client assertion is not within its valid time range.")]
    Expired,
    #[error("Client assertion audience claim does not match Realm issuer.")]
    Audience,
    #[error("The client assertion has already been used (jti replay).")]
    Replay,
    #[error("Client assertion is malformed: {0}")]
    Malformed(String),
}

/// Verifies a client assertion against the registered certificate; returns its `jti`.
pub fn verify_assertion(
    assertion: &str,
    client_id: &str,
    cert_sha1: &[u8],
    cert_sha256: &[u8],
    public_key_der: &[u8],
    audiences: &[String],
) -> Result<Option<String>, AssertionError> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|e| AssertionError::Malformed(e.to_string()))?;
    // Base64url with or without padding, as clients differ.
    let same = |given: &str, digest: &[u8]| given.trim_end_matches('=') == b64url(digest);
    let matches = header
        .x5t_s256
        .as_deref()
        .map(|t| same(t, cert_sha256))
        .or_else(|| header.x5t.as_deref().map(|t| same(t, cert_sha1)))
        .unwrap_or(false);
    if !matches {
        return Err(AssertionError::UnknownKey);
    }
    let alg = header.alg;
    if !matches!(alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(AssertionError::Malformed(format!(
            "unsupported alg {alg:?}"
        )));
    }
    let mut v = Validation::new(alg);
    v.validate_aud = false;
    v.validate_exp = false;
    v.required_spec_claims = HashSet::new();
    let data =
        jsonwebtoken::decode::<Value>(assertion, &DecodingKey::from_rsa_der(public_key_der), &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AssertionError::Signature,
                _ => AssertionError::Malformed(e.to_string()),
            })?;
    let c = data.claims;
    let exp = num(c.get("exp")).ok_or(AssertionError::Expired)?;
    if exp <= crate::util::unix_now() {
        return Err(AssertionError::Expired);
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x.eq_ignore_ascii_case(a)),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|a| a.as_str())
            .any(|a| audiences.iter().any(|x| x.eq_ignore_ascii_case(a))),
        _ => false,
    };
    if !aud_ok {
        return Err(AssertionError::Audience);
    }
    let iss_ok = c.get("iss").and_then(Value::as_str) == Some(client_id)
        && c.get("sub").and_then(Value::as_str) == Some(client_id);
    if !iss_ok {
        return Err(AssertionError::Malformed(
            "iss and sub must be the client id".into(),
        ));
    }
    Ok(c.get("jti").and_then(Value::as_str).map(str::to_string))
}
