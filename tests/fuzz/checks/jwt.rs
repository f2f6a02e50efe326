//! JWT inspection and SharePoint context-token validation with a fixed client secret.
//!
//! Invariants: nothing panics; a token validates only if its HS256 signature is the HMAC of its
//! first two segments under the client secret (checked here independently of `jsonwebtoken`);
//! a token the fuzzer's claims were signed into never validates under another secret, nor once a
//! byte of its claims changes.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shared::identity::acs::ContextTokenValidator;
use shared::identity::jwt::inspect;
use shared::identity::secret::ClientSecret;
use time::OffsetDateTime;

const KEY: &[u8] = b"fuzz-context-token-key-32-bytes!";
const OTHER_KEY: &[u8] = b"another-key-that-must-never-pass";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

fn validator(key: &[u8]) -> ContextTokenValidator {
    ContextTokenValidator::new(
        CLIENT_ID,
        ClientSecret::new(STANDARD.encode(key)),
        vec!["app.example.com".to_owned(), "localhost:8443".to_owned()],
    )
}

fn sign(key: &[u8], signing_input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// True if `token`'s third segment is the HMAC of the first two under `key`.
fn signed_with(key: &[u8], token: &str) -> bool {
    let token = token.trim();
    let Some((input, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig.trim_end_matches('=')) else {
        return false;
    };
    sign(key, input) == sig
}

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // 2026-11-30: inside the lifetime of the seeds' claims, outside others'.
    let now = OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("a valid time");
    if mode % 2 == 0 {
        // Any text as a token.
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        let _ = inspect(token);
        if validator(KEY).validate(token, now).is_ok() {
            assert!(
                signed_with(KEY, token),
                "validated without the key: {token:?}"
            );
        }
    } else {
        // The fuzzer's bytes as claims, signed properly with the key.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(rest));
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sign(KEY, &input)));
        let summary = inspect(&token);
        let accepted = validator(KEY).validate(&token, now);
        if let Ok(ctx) = &accepted {
            assert!(summary.is_ok(), "validated but not inspectable: {token:?}");
            assert!(
                ctx.audience.ends_with(&format!("@{}", ctx.realm.as_str())),
                "audience {:?} is not for realm {:?}",
                ctx.audience,
                ctx.realm.as_str()
            );
        }
        assert!(validator(OTHER_KEY).validate(&token, now).is_err());
        if accepted.is_ok() && !rest.is_empty() {
            // One flipped bit in the claims: the signature no longer matches.
            let mut tampered = rest.to_vec();
            tampered[rest.len() / 2] ^= 0x01;
            let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&tampered));
            let forged = format!("{input}.{}", token.rsplit_once('.').map_or("", |(_, s)| s));
            assert!(validator(KEY).validate(&forged, now).is_err());
        }
    }
}
