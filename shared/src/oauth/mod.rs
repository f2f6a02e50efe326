//! Provider-independent building blocks of the sign-in flows (`GET /connect/{connection}` →
//! Microsoft → `GET|POST /callback`) and of token-refresh.
//!
//! Nothing here performs I/O: the identity protocols, the secret store and the Lambda handlers
//! call into these pieces.
//!
//! - [`state`]: the signed `state` parameter, its browser cookie, the stateless PKCE verifier and
//!   the bounded replay set.
//! - [`redirect`]: the redirect URI and the callback's query parameters.
//! - [`pages`]: the HTML/JSON result pages and the Microsoft-account fragment relay page.
//! - [`refresh_policy`]: when token-refresh acts, how its failures are classified, and a
//!   bounded-concurrency runner.

pub mod pages;
pub mod redirect;
pub mod refresh_policy;
pub mod state;

use serde::{Deserialize, Serialize};

/// Which Microsoft identity system a flow talks to. Serialises with the same names the connection
/// secret uses (`acs`, `aad_v1`, `entra`, `msa`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// SharePoint add-in / Azure ACS.
    Acs,
    /// Azure AD v1 endpoint (resource-based).
    AadV1,
    /// Microsoft identity platform v2 (scopes).
    Entra,
    /// Microsoft account (login.live.com).
    Msa,
}

impl Provider {
    /// The serialised name, e.g. `aad_v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Acs => "acs",
            Provider::AadV1 => "aad_v1",
            Provider::Entra => "entra",
            Provider::Msa => "msa",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
