//! Microsoft identity protocols: one module per identity system, one token type, one error type.
//!
//! - [`acs`]: SharePoint low-trust add-ins (Azure ACS): realm discovery, app-only, code and
//!   refresh grants, context tokens.
//! - [`aad_v1`]: Azure AD v1 multi-tenant apps with the Office 365 Discovery service.
//! - [`entra`]: Microsoft identity platform v2 (PKCE, client secret or certificate assertion).
//! - [`msa`]: Microsoft accounts at login.live.com.
//!
//! Every flow builds its HTTP exchange as data ([`request::HttpRequest`]) and sends it through
//! [`request::send_token`], so tests assert the exact request and retries live in one place.
//! [`source::TokenSource`] is the simple entry point for the upload and callback code.

pub mod aad_v1;
pub mod acs;
pub mod cache;
pub mod entra;
pub mod error;
pub mod jwt;
pub mod msa;
pub mod request;
pub mod secret;
pub mod source;
pub mod token;
pub mod www_authenticate;

#[cfg(test)]
pub(crate) mod testserver;

pub use cache::{CacheKey, TokenCache};
pub use error::{IdentityError, MsError};
pub use request::{HttpRequest, RetryPolicy};
pub use secret::{AccessToken, AuthCode, ClientSecret, PkceVerifier, RefreshToken};
pub use source::{RefreshProvider, TokenSource};
pub use token::Token;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Every credential-bearing type, printed with `{:?}`, shows `[redacted]` and no secret.
    #[test]
    fn debug_of_every_credential_type_is_redacted() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/identity");
        let cert = entra::CertificateCredential::from_pem(
            &std::fs::read(format!("{dir}/test-client-assertion.cert.pem")).unwrap(),
            &std::fs::read(format!("{dir}/test-client-assertion.key.pem")).unwrap(),
        )
        .unwrap();
        let s = || ClientSecret::new("SECRET-VALUE");
        let printed = [
            format!("{:?}", cert),
            format!("{:?}", entra::ClientAuth::Certificate(Arc::new(cert))),
            format!("{:?}", entra::ClientAuth::Secret(s())),
            format!("{:?}", entra::PkceVerifier::generate()),
            format!(
                "{:?}",
                acs::AcsApp {
                    client_id: "c".into(),
                    secret: s()
                }
            ),
            format!(
                "{:?}",
                aad_v1::AadApp {
                    client_id: "c".into(),
                    secret: s()
                }
            ),
            format!(
                "{:?}",
                msa::MsaApp {
                    client_id: "c".into(),
                    secret: Some(s())
                }
            ),
            format!(
                "{:?}",
                acs::ContextTokenValidator::new("c", s(), vec![]).with_secondary_secret(s())
            ),
            format!("{:?}", AccessToken::new("SECRET-VALUE")),
            format!("{:?}", RefreshToken::new("SECRET-VALUE")),
            format!("{:?}", AuthCode::new("SECRET-VALUE")),
            format!(
                "{:?}",
                Token::from_json(
                    r#"{"access_token":"SECRET-VALUE","refresh_token":"SECRET-VALUE"}"#,
                    time::OffsetDateTime::now_utc()
                )
                .unwrap()
            ),
            format!(
                "{:?}",
                HttpRequest::post_form(
                    url::Url::parse("https://h/t").unwrap(),
                    vec![(
                        "client_secret".into(),
                        request::Field::secret("SECRET-VALUE")
                    )]
                )
                .header(
                    "Authorization",
                    request::Field::secret("Bearer SECRET-VALUE")
                )
            ),
        ];
        for p in printed {
            assert!(p.contains("[redacted]"), "{p}");
            assert!(
                !p.contains("SECRET-VALUE") && !p.contains("PRIVATE KEY"),
                "{p}"
            );
        }
    }
}
