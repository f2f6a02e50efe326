//! Redacted newtypes for every secret the identity code handles.
//!
//! Each prints `[redacted]` in `Debug` and can only be read through `expose_secret`, which is
//! called where a form field or header is built.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

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
