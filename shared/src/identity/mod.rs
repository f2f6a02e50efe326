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
pub use secret::{AccessToken, AuthCode, ClientSecret, RefreshToken};
pub use source::{RefreshProvider, TokenSource};
pub use token::Token;
