//! The one error type every secret-store operation returns.

use std::time::Duration;

use super::VersionId;
use crate::api::{ApiError, Kind};

/// Why a secret-store operation failed. Messages name the secret, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret by that name (or, for a read, no current value).
    #[error("secret {name} not found")]
    NotFound {
        /// The secret.
        name: String,
    },

    /// The store refused access (IAM policy, KMS key policy, file permissions).
    #[error("access to secret {name} denied: {message}")]
    AccessDenied {
        /// The secret.
        name: String,
        /// The store's explanation.
        message: String,
    },

    /// The store asked us to slow down; retry after `retry_after` if it said when.
    #[error("secret store throttled a request for {name}")]
    Throttled {
        /// The secret.
        name: String,
        /// How long the store asked us to wait, if it said.
        retry_after: Option<Duration>,
    },

    /// A compare-and-swap write lost: the secret is no longer at `expected`
    /// (`None`: it was to be created but already exists). Read again and retry.
    #[error("secret {name} was changed concurrently (expected version {})", expected.as_ref().map_or("none", |v| v.as_str()))]
    Conflict {
        /// The secret.
        name: String,
        /// The version the write was based on (`None`: it was a create).
        expected: Option<VersionId>,
    },

    /// The stored value is not JSON, or not the shape the schema wants.
    /// `reason` is scrubbed of quoted values so it cannot leak the secret.
    #[error("secret {name} holds invalid data: {reason}")]
    InvalidJson {
        /// The secret.
        name: String,
        /// What is wrong, without the data.
        reason: String,
    },

    /// The secret name itself is unusable.
    #[error("invalid secret name {name:?}: {reason}")]
    InvalidName {
        /// The name as given (at most 600 characters of it).
        name: String,
        /// The rule it breaks.
        reason: String,
    },

    /// Anything else the backend reported; keeps its error code when it had one.
    #[error("secret store failed to {op} {name}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Backend {
        /// The secret (or the prefix, for a list).
        name: String,
        /// What we were doing: `read`, `stage`, `publish`, `create`, `list`, …
        op: &'static str,
        /// The backend's error code, e.g. `LimitExceededException`.
        code: Option<String>,
        /// The backend's message.
        message: String,
    },
}

impl SecretError {
    /// The secret the error is about.
    pub fn name(&self) -> &str {
        match self {
            SecretError::NotFound { name }
            | SecretError::AccessDenied { name, .. }
            | SecretError::Throttled { name, .. }
            | SecretError::Conflict { name, .. }
            | SecretError::InvalidJson { name, .. }
            | SecretError::InvalidName { name, .. }
            | SecretError::Backend { name, .. } => name,
        }
    }

    /// Whether the store itself failed (unreachable, throttled, a lost compare-and-swap), so
    /// the same request may succeed later without anyone acting.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SecretError::Throttled { .. }
                | SecretError::Conflict { .. }
                | SecretError::Backend { .. }
        )
    }

    /// Whether the caller should re-read and retry (a lost compare-and-swap).
    pub fn is_conflict(&self) -> bool {
        matches!(self, SecretError::Conflict { .. })
    }

    /// The answer an HTTP caller gets when a secret it depends on fails, and a log line with
    /// the details (secret name, store code and message) for the operator.
    ///
    /// The answer never carries the secret's name or ARN (which holds the account id) nor the
    /// store's text: a missing, unreadable or misshaped secret is `misconfigured` (500), a
    /// throttled store `throttled` (503 with `Retry-After`), anything else `unavailable` (503).
    pub fn to_api_error(&self) -> ApiError {
        tracing::error!(secret = %self.name(), error = %self, "secret store failure");
        match self {
            SecretError::NotFound { .. }
            | SecretError::AccessDenied { .. }
            | SecretError::InvalidJson { .. }
            | SecretError::InvalidName { .. } => ApiError::new(
                Kind::Misconfigured,
                "the service is not configured correctly; its operator has been told in the logs",
            ),
            SecretError::Throttled { retry_after, .. } => {
                ApiError::new(Kind::Throttled, "too many requests; try again shortly")
                    .with_retry_after(Some(retry_after.unwrap_or(Duration::from_secs(1))))
            }
            SecretError::Conflict { .. } | SecretError::Backend { .. } => ApiError::new(
                Kind::Unavailable,
                "temporarily unavailable; try again shortly",
            )
            .with_retry_after(Some(Duration::from_secs(5))),
        }
    }

    /// Builds [`SecretError::InvalidJson`] from a serde error without echoing the data.
    pub(crate) fn invalid_json(name: &str, err: &serde_json::Error) -> Self {
        SecretError::InvalidJson {
            name: name.to_owned(),
            reason: scrub(&err.to_string()),
        }
    }
}

/// serde_json quotes offending values (`invalid type: string "hunter2"`); drop anything quoted.
/// Field names come in backticks and are kept, which is what makes the message useful.
fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quotes = false;
    for c in message.chars() {
        if c == '"' {
            if !in_quotes {
                out.push_str("\"…\"");
            }
            in_quotes = !in_quotes;
        } else if !in_quotes {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_json_reason_keeps_field_names_but_not_values() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            n: Vec<u8>,
        }
        let err = serde_json::from_str::<S>(r#"{"n": "hunter2"}"#).unwrap_err();
        let e = SecretError::invalid_json("spbridge/app", &err);
        let msg = e.to_string();
        assert!(msg.contains("spbridge/app"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let err = serde_json::from_str::<S>(r#"{}"#).unwrap_err();
        let msg = SecretError::invalid_json("x", &err).to_string();
        assert!(msg.contains("`n`"), "{msg}");
    }

    #[test]
    fn api_answers_name_no_secret_arn_or_store_text() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:spbridge/webhook-AbCdEf";
        let cases = [
            SecretError::NotFound { name: arn.into() },
            SecretError::AccessDenied {
                name: arn.into(),
                message: format!(
                    "User arn:aws:iam::123456789012:role/x is not authorized on {arn}"
                ),
            },
            SecretError::InvalidJson {
                name: arn.into(),
                reason: "missing field `secrets`".into(),
            },
            SecretError::Throttled {
                name: arn.into(),
                retry_after: None,
            },
            SecretError::Backend {
                name: arn.into(),
                op: "read",
                code: Some("InternalServiceError".into()),
                message: "boom".into(),
            },
        ];
        let kinds: Vec<Kind> = cases.iter().map(|e| e.to_api_error().kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Misconfigured,
                Kind::Misconfigured,
                Kind::Misconfigured,
                Kind::Throttled,
                Kind::Unavailable
            ]
        );
        for e in &cases {
            let body = e.to_api_error().to_response().into_body();
            for leak in [
                "arn:",
                "123456789012",
                "spbridge",
                "secrets",
                "boom",
                "Internal",
            ] {
                assert!(!body.contains(leak), "{leak} in {body}");
            }
        }
    }

    #[test]
    fn conflict_message_names_secret_and_version() {
        let e = SecretError::Conflict {
            name: "a/b".into(),
            expected: Some(VersionId::new("v1")),
        };
        assert_eq!(
            e.to_string(),
            "secret a/b was changed concurrently (expected version v1)"
        );
    }
}
