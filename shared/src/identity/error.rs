//! The one error type of the identity code, keeping Microsoft's error code and ids.

use std::{fmt, time::Duration};

use serde::Deserialize;

use crate::microsoft::{self, MsCode, RefreshFailure};

/// An OAuth error body from Microsoft (AAD, ACS, login.live.com) or an error redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsError {
    /// HTTP status, or 0 when the error came from a redirect URL.
    pub status: u16,
    /// The OAuth `error` value, e.g. `invalid_grant`.
    pub error: String,
    /// Microsoft's code, e.g. `AADSTS70016` or `ACS50012`, from `error_description` or `error_codes`.
    pub code: Option<String>,
    /// `error_description` as sent.
    pub description: Option<String>,
    /// `correlation_id` (or the `Correlation ID:` line of the description).
    pub correlation_id: Option<String>,
    /// `trace_id` (or the `Trace ID:` line of the description).
    pub trace_id: Option<String>,
    /// The raw body (or redirect query), kept for logs. Error bodies carry no tokens.
    pub body: String,
}

#[derive(Deserialize)]
struct RawError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Option<Vec<u64>>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
}

impl MsError {
    /// Parses a JSON OAuth error body; `None` if the body is not one.
    pub fn from_json(status: u16, body: &str) -> Option<Self> {
        let raw: RawError = serde_json::from_str(body).ok()?;
        Some(Self::from_parts(
            status,
            raw.error,
            raw.error_description,
            raw.error_codes.as_deref().and_then(|c| c.first().copied()),
            raw.correlation_id,
            raw.trace_id,
            body,
        ))
    }

    /// Builds an error from its fields, deriving the code and ids from the description if needed.
    pub fn from_parts(
        status: u16,
        error: String,
        description: Option<String>,
        first_error_code: Option<u64>,
        correlation_id: Option<String>,
        trace_id: Option<String>,
        body: &str,
    ) -> Self {
        let desc = description.as_deref().unwrap_or("");
        // AAD sends the number alone in error_codes; ACS errors always carry their prefix.
        let code = MsCode::find_in(desc)
            .or(first_error_code.map(MsCode::Aadsts))
            .map(|c| c.to_string());
        MsError {
            status,
            error,
            code,
            correlation_id: correlation_id.or_else(|| labelled_line(desc, "Correlation ID:")),
            trace_id: trace_id.or_else(|| labelled_line(desc, "Trace ID:")),
            description,
            body: body.to_owned(),
        }
    }

    /// The numeric part of the code, e.g. 70016 for `AADSTS70016`.
    pub fn code_number(&self) -> Option<u64> {
        self.code
            .as_deref()
            .and_then(MsCode::parse)
            .map(MsCode::number)
    }

    /// The class of this error in [`crate::microsoft::TABLE`], or `None` if nothing decides it.
    pub fn class(&self) -> Option<RefreshFailure> {
        microsoft::token_action(
            &self.error,
            self.code.as_deref(),
            (self.status != 0).then_some(self.status),
        )
    }
}

impl fmt::Display for MsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        if self.status != 0 {
            write!(f, " [HTTP {}]", self.status)?;
        }
        // The first line of AAD descriptions says what is wrong; the rest repeats the ids.
        if let Some(first) = self.description.as_deref().and_then(|d| d.lines().next()) {
            let first: String = first.chars().take(200).collect();
            if !first.trim().is_empty() {
                write!(f, ": {}", first.trim())?;
            }
        }
        if let Some(id) = &self.correlation_id {
            write!(f, " correlation_id={id}")?;
        }
        if let Some(id) = &self.trace_id {
            write!(f, " trace_id={id}")?;
        }
        Ok(())
    }
}

/// The value after `label` on its own line of an AAD description.
fn labelled_line(desc: &str, label: &str) -> Option<String> {
    desc.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// What went wrong getting a token. Each variant tells the caller what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// The user must sign in or consent again (expired/revoked refresh token, consent missing,
    /// interaction or MFA required). Retrying will not help.
    #[error("sign-in or consent is needed again: {0}")]
    NeedsConsent(Box<MsError>),
    /// The app registration or configuration is wrong (bad client id or secret, unknown
    /// resource or scope, wrong tenant). An operator must fix it.
    #[error("the app registration or request is misconfigured: {0}")]
    Misconfigured(Box<MsError>),
    /// Microsoft refused with an error this code does not classify further.
    #[error("Microsoft refused the request: {0}")]
    Rejected(Box<MsError>),
    /// Throttled, a server error or a network fault, still failing after bounded retries.
    #[error("transient failure after {attempts} attempt(s): {detail}")]
    Transient {
        /// What failed last.
        detail: String,
        /// The server's last `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// Attempts made.
        attempts: u32,
        /// Microsoft's error, if the last response carried one.
        ms: Option<Box<MsError>>,
    },
    /// A response that is not what the protocol promises (unparseable JSON, missing fields).
    #[error("unexpected response (HTTP {status}): {reason}")]
    BadResponse {
        /// HTTP status of the response.
        status: u16,
        /// What was wrong with it.
        reason: String,
    },
    /// The protocol could not proceed (no realm in the challenge, no tenant known, …).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A token presented to us (a SharePoint context token) failed validation.
    #[error("token rejected: {0}")]
    InvalidToken(String),
    /// Caller input is unusable (bad URL, unsupported combination).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl IdentityError {
    /// Classifies a Microsoft error response by [`crate::microsoft::TABLE`]; an error the table
    /// does not decide is [`IdentityError::Rejected`].
    pub fn from_ms(ms: MsError) -> Self {
        let class = ms.class();
        let e = Box::new(ms);
        match class {
            Some(RefreshFailure::NeedsConsent) => IdentityError::NeedsConsent(e),
            Some(RefreshFailure::Misconfigured) => IdentityError::Misconfigured(e),
            Some(RefreshFailure::Throttled | RefreshFailure::Transient) => {
                IdentityError::Transient {
                    detail: e.to_string(),
                    retry_after: None,
                    attempts: 1,
                    ms: Some(e),
                }
            }
            None => IdentityError::Rejected(e),
        }
    }

    /// True if trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, IdentityError::Transient { .. })
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IdentityError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Microsoft's error, if this error came from one.
    pub fn ms_error(&self) -> Option<&MsError> {
        match self {
            IdentityError::NeedsConsent(e)
            | IdentityError::Misconfigured(e)
            | IdentityError::Rejected(e) => Some(e),
            IdentityError::Transient { ms, .. } => ms.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../../shared/fixtures/aad/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn parses_authorization_pending_aadsts70016() {
        let body =
            fixture("msal-dotnet_DeviceCodeRequestTests_authorization_pending_AADSTS70016.json");
        let e = MsError::from_json(400, &body).unwrap();
        assert_eq!(e.error, "authorization_pending");
        assert_eq!(e.code.as_deref(), Some("AADSTS70016"));
        assert_eq!(e.code_number(), Some(70016));
        assert_eq!(
            e.correlation_id.as_deref(),
            Some("36fe3e82-442f-4418-b9f4-9f4b9295831d")
        );
        assert_eq!(
            e.trace_id.as_deref(),
            Some("f6c2c73f-a21d-474e-a71f-d8b121a58205")
        );
        assert!(matches!(
            IdentityError::from_ms(e),
            IdentityError::Rejected(_)
        ));
    }

    #[test]
    fn invalid_resource_aadsts500011_is_misconfigured() {
        let body = fixture("msal-dotnet_MockHelpers_GetMsiImdsErrorResponse_AADSTS500011.json");
        let e = MsError::from_json(400, &body).unwrap();
        assert_eq!(e.code.as_deref(), Some("AADSTS500011"));
        assert_eq!(
            e.correlation_id.as_deref(),
            Some("77145480-bc5a-4ebe-ae4d-e4a8b7d727cf")
        );
        let err = IdentityError::from_ms(e);
        assert!(matches!(err, IdentityError::Misconfigured(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("AADSTS500011") && msg.contains("77145480"),
            "{msg}"
        );
        assert!(
            msg.contains("The resource principal named user.read was not found"),
            "{msg}"
        );
        assert!(!msg.contains("Trace ID:"), "{msg}");
    }

    #[test]
    fn invalid_instance_aadsts50049_is_misconfigured() {
        let body = fixture("msal-dotnet_TestConstants_DiscoveryFailedResponse_AADSTS50049.json");
        let e = MsError::from_json(400, &body).unwrap();
        assert_eq!(e.code.as_deref(), Some("AADSTS50049"));
        assert_eq!(
            e.trace_id.as_deref(),
            Some("82e709b9-f0b3-431d-99cd-f3c2ca3d4b00")
        );
        assert!(matches!(
            IdentityError::from_ms(e),
            IdentityError::Misconfigured(_)
        ));
    }

    #[test]
    fn code_from_error_codes_or_acs_description() {
        let e =
            MsError::from_json(400, r#"{"error":"invalid_grant","error_codes":[700082]}"#).unwrap();
        assert_eq!(e.code.as_deref(), Some("AADSTS700082"));
        assert!(matches!(
            IdentityError::from_ms(e),
            IdentityError::NeedsConsent(_)
        ));

        let e = MsError::from_json(
            401,
            r#"{"error":"invalid_client","error_description":"ACS50012: Authentication failed."}"#,
        )
        .unwrap();
        assert_eq!(e.code.as_deref(), Some("ACS50012"));
        assert!(matches!(
            IdentityError::from_ms(e),
            IdentityError::Misconfigured(_)
        ));

        let e = MsError::from_json(400, r#"{"error":"interaction_required"}"#).unwrap();
        assert_eq!(e.code, None);
        assert!(matches!(
            IdentityError::from_ms(e),
            IdentityError::NeedsConsent(_)
        ));

        let e = MsError::from_json(503, r#"{"error":"temporarily_unavailable"}"#).unwrap();
        assert!(matches!(
            IdentityError::from_ms(e),
            IdentityError::Transient { .. }
        ));

        assert!(MsError::from_json(400, "<html>").is_none());
    }

    /// The two former tables disagreed on these; now both answers come from the one table.
    #[test]
    fn identity_and_refresh_classes_agree() {
        let cases = [
            (
                400,
                "invalid_client",
                "AADSTS700024: Client assertion is not within its valid time range.",
            ),
            (
                400,
                "invalid_request",
                "AADSTS50196: The server terminated an operation because it encountered a client request loop.",
            ),
            (
                400,
                "invalid_grant",
                "AADSTS50058: A silent sign-in request was sent but no user is signed in.",
            ),
            (
                400,
                "invalid_request",
                "AADSTS500113: No reply address is registered for the application.",
            ),
            (
                400,
                "invalid_grant",
                "AADSTS90033: A transient error has occurred.",
            ),
            (400, "expired_token", ""),
            (400, "slow_down", ""),
        ];
        for (status, error, desc) in cases {
            let body = serde_json::json!({"error": error, "error_description": desc}).to_string();
            let ms = MsError::from_json(status, &body).unwrap();
            let refresh = RefreshFailure::classify(&ms.error, ms.code.as_deref(), Some(status));
            let identity = IdentityError::from_ms(ms);
            let same = match refresh {
                RefreshFailure::NeedsConsent => matches!(identity, IdentityError::NeedsConsent(_)),
                RefreshFailure::Misconfigured => {
                    matches!(identity, IdentityError::Misconfigured(_))
                }
                RefreshFailure::Throttled | RefreshFailure::Transient => identity.is_transient(),
            };
            assert!(
                same,
                "{error} {desc}: refresh {refresh:?}, identity {identity:?}"
            );
        }
        let throttled = MsError::from_json(
            400,
            r#"{"error":"invalid_request","error_description":"AADSTS50196: loop"}"#,
        )
        .unwrap();
        assert_eq!(throttled.class(), Some(RefreshFailure::Throttled));
    }
}
