//! Redacted newtypes for every secret the identity code handles.
//!
//! Each prints `[redacted]` in `Debug` and can only be read through `expose_secret`, which is
//! called where a form field or header is built.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }

            /// The secret itself; call only where it goes on the wire.
            pub fn expose_secret(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self::new(value)
            }
        }
    };
}

secret_type!(
    /// An OAuth access token.
    AccessToken
);
secret_type!(
    /// An OAuth refresh token.
    RefreshToken
);
secret_type!(
    /// An app's client secret (ACS, Entra or Microsoft account).
    ClientSecret
);
secret_type!(
    /// An authorization code from a redirect.
    AuthCode
);
secret_type!(
    /// A signed JWT client assertion.
    ClientAssertion
);

/// A PKCE code verifier (RFC 7636): the one verifier type of the codebase. Single use: not
/// `Clone`; `Debug` prints `[redacted]`; exposed only for the token request's `code_verifier`.
///
/// ```compile_fail
/// fn needs_clone<T: Clone>() {}
/// needs_clone::<shared::identity::PkceVerifier>();
/// ```
pub struct PkceVerifier(SecretString);

impl PkceVerifier {
    /// 32 random bytes, base64url: 43 characters (RFC 7636 §4.1).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        PkceVerifier(SecretString::from(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts an existing verifier: 43–128 characters of `[A-Za-z0-9-._~]`.
    pub fn new(value: String) -> Result<Self, PkceError> {
        let len = value.len();
        if !(43..=128).contains(&len) {
            return Err(PkceError::Length { len });
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(PkceError::Charset);
        }
        Ok(PkceVerifier(SecretString::from(value)))
    }

    /// A verifier derived by the state signer (base64url of a MAC: always valid).
    pub(crate) fn derived(value: String) -> Self {
        PkceVerifier(SecretString::from(value))
    }

    /// The `S256` challenge: `base64url(SHA-256(verifier))`, no padding.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.expose_secret().as_bytes()))
    }

    /// The verifier itself, for the token request's `code_verifier` form field only.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PkceVerifier([redacted])")
    }
}

/// Why a PKCE verifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkceError {
    /// RFC 7636 §4.1 requires 43 to 128 characters.
    #[error("a PKCE verifier has 43 to 128 characters, not {len}")]
    Length {
        /// The length given.
        len: usize,
    },
    /// Only `[A-Za-z0-9-._~]` is allowed.
    #[error("a PKCE verifier may only use A-Z, a-z, 0-9, '-', '.', '_' and '~'")]
    Charset,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let all = format!(
            "{:?} {:?} {:?} {:?} {:?}",
            AccessToken::new("at-value"),
            RefreshToken::new("rt-value"),
            ClientSecret::new("cs-value"),
            AuthCode::new("code-value"),
            ClientAssertion::new("assertion-value"),
        );
        assert!(!all.contains("value"), "{all}");
        assert_eq!(all.matches("[redacted]").count(), 5, "{all}");
    }
}
