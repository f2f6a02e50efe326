//! Why a sign-in step failed, as a caller can act on it.

use crate::{
    access::AccessError,
    identity::{IdentityError, MsError},
    oauth::{
        redirect::{CallbackError, ProviderError, RedirectError},
        state::StateError,
    },
};

/// A failed sign-in step, and the connection it was about when known.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct SignInError {
    /// The connection, once known (never shown to a caller who could not name it).
    pub connection: Option<String>,
    /// What went wrong.
    pub reason: Reason,
}

/// What went wrong during a sign-in. oauth-callback maps each to one [`crate::api::Kind`].
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// A connection id, query or form field is unusable; the text says which.
    #[error("{0}")]
    BadInput(String),
    /// The body is larger than allowed; the text says the limit.
    #[error("{0}")]
    TooLarge(String),
    /// The redirect URI cannot be built from the request.
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    /// The callback's query is malformed.
    #[error(transparent)]
    Callback(#[from] CallbackError),
    /// The signed `state` or its cookie is missing, forged, expired or already used.
    #[error(transparent)]
    State(#[from] StateError),
    /// Microsoft redirected back with an OAuth error (`access_denied`, `consent_required`, …).
    #[error("Microsoft redirected back with {}", .0.error)]
    Provider(Box<ProviderError>),
    /// The Microsoft-account token (implicit) flow, which spbridge refuses.
    #[error(
        "the Microsoft-account token flow returns a short-lived token in the URL fragment that \
         cannot be refreshed; spbridge uses the code flow: start again at /connect/{{connection}}"
    )]
    TokenFlowRefused,
    /// An app-only connection has nothing to consent to.
    #[error("this connection uses the app's own credentials; there is nothing to consent to")]
    AppOnly,
    /// A context token was posted for a connection that is not a delegated ACS one.
    #[error("context tokens are only accepted for delegated ACS connections")]
    NotAnAddIn,
    /// `SPHostUrl` names another site than the connection's.
    #[error("SPHostUrl is not the connection's SharePoint site")]
    HostMismatch,
    /// The SharePoint context token failed validation.
    #[error("the SharePoint context token was rejected: {0}")]
    ContextTokenInvalid(String),
    /// The connection's provider changed between `/connect` and the callback.
    #[error("the connection's provider changed during the sign-in; start again at /connect")]
    ConnectionChanged,
    /// Reading the connection or its app credential failed.
    #[error(transparent)]
    Access(Box<AccessError>),
    /// The connection, app credential or sign-in key is wrong; an operator must act. Logged only.
    #[error("misconfigured: {0}")]
    Misconfigured(String),
    /// Microsoft refused the authorization code or context token.
    #[error(
        "Microsoft refused the authorization code (used, expired or issued for another \
         request); start the sign-in again at /connect"
    )]
    CodeRejected(Option<Box<MsError>>),
    /// Microsoft could not be reached or answered unexpectedly.
    #[error("Microsoft could not be reached or answered unexpectedly; try the sign-in again")]
    Unavailable(String),
    /// The token response carried no refresh token.
    #[error("Microsoft issued no refresh token (was offline access granted?)")]
    NoRefreshToken,
    /// AAD v1 Discovery listed no usable service.
    #[error("the Discovery service lists no service this account can use")]
    NoServices,
    /// `/connect` without a valid operator-minted link (missing, altered, expired, used, or for
    /// another or unknown connection). One answer for all, so it tells nobody which connections
    /// exist; the log says which.
    #[error(
        "this sign-in needs a valid link from the operator (links are single use and expire); \
         ask for a new one"
    )]
    LinkRequired,
    /// The sign-in brought another account than the one the connection is bound to.
    #[error(
        "this connection is bound to another account; sign in with that account, or ask the \
         operator for a re-binding link"
    )]
    AccountMismatch,
    /// The connection was deleted while the sign-in ran.
    #[error("the connection was deleted during the sign-in")]
    ConnectionGone,
    /// The secret store could not be reached before anything was changed.
    #[error("a service the sign-in depends on is unavailable; try again shortly")]
    StoreUnavailable(String),
    /// The consent could not be stored.
    #[error("the sign-in worked but its result could not be stored; try again")]
    StoreFailed(String),
}

impl SignInError {
    /// An error about `connection`.
    pub fn about(connection: &str, reason: impl Into<Reason>) -> Self {
        SignInError {
            connection: Some(connection.to_owned()),
            reason: reason.into(),
        }
    }
}

impl From<Reason> for SignInError {
    fn from(reason: Reason) -> Self {
        let connection = match &reason {
            Reason::Access(e) => Some(e.connection().to_owned()),
            _ => None,
        };
        SignInError { connection, reason }
    }
}

macro_rules! from_reason {
    ($($t:ty),*) => {$(
        impl From<$t> for SignInError {
            fn from(e: $t) -> Self {
                Reason::from(e).into()
            }
        }
    )*};
}
from_reason!(RedirectError, CallbackError, StateError);

impl From<AccessError> for SignInError {
    fn from(e: AccessError) -> Self {
        Reason::Access(Box::new(e)).into()
    }
}

/// Maps a failed code or context-token redemption.
pub(crate) fn redeem_failure(id: &str, e: IdentityError) -> SignInError {
    let reason = match &e {
        IdentityError::Transient { .. } | IdentityError::BadResponse { .. } => {
            Reason::Unavailable(e.to_string())
        }
        IdentityError::Misconfigured(_) | IdentityError::InvalidInput(_) => {
            Reason::Misconfigured(e.to_string())
        }
        other => Reason::CodeRejected(other.ms_error().cloned().map(Box::new)),
    };
    SignInError::about(id, reason)
}

/// A misconfiguration of connection `id`.
pub(crate) fn misconfigured(id: &str, reason: impl std::fmt::Display) -> SignInError {
    SignInError::about(id, Reason::Misconfigured(reason.to_string()))
}

/// An OAuth error Microsoft redirected back with; its word and description are shown. What it
/// means comes from the one Microsoft error table.
pub fn provider_api_error(p: &ProviderError) -> crate::api::ApiError {
    use crate::api::{ApiError, Kind};
    use crate::microsoft::{Action, System, lookup};
    let row = lookup(System::OAuth, &p.error);
    let (kind, message) = match row.map(|r| r.action) {
        Some(Action::NeedsConsent) => (
            Kind::NeedsConsent,
            "Sign-in did not finish: the user (or an administrator) must sign in and consent.",
        ),
        Some(Action::Throttled) => (
            Kind::Throttled,
            "Microsoft is throttling sign-ins; try again in a few minutes.",
        ),
        Some(Action::Transient) => (
            Kind::Unavailable,
            "Microsoft could not complete the sign-in right now; try again in a few minutes.",
        ),
        _ => (
            Kind::BadRequest,
            "Microsoft refused the sign-in request; the app registration or connection settings need attention.",
        ),
    };
    let mut api = ApiError::new(kind, message).with_detail("microsoft_code", p.error.clone());
    if let Some(r) = row {
        api = api.with_detail("microsoft_meaning", r.meaning);
    }
    match &p.description {
        Some(d) => api.with_detail("error_description", d.clone()),
        None => api,
    }
}
