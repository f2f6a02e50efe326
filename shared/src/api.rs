//! The one error answer every HTTP function gives: [`ApiError`].
//!
//! A condition is named by its [`Kind`], and the kind alone decides the HTTP status and the
//! `error` code, so the same condition answers the same way from every function. The table is
//! [`Kind::ALL`]; `docs/errors.md` is checked against it by a test.

use std::time::Duration;

use http::StatusCode;

/// What went wrong, as a client can act on it. Each kind has one status and one `error` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The request is malformed: a parameter, header, form field or JSON field is unusable.
    BadRequest,
    /// A file or folder name breaks a SharePoint rule.
    InvalidName,
    /// A path tries to leave its folder (`..`, absolute paths, encoded separators).
    InvalidPath,
    /// The sender could not be authenticated.
    Unauthorized,
    /// The caller is authenticated but may not do this.
    Forbidden,
    /// There is no connection of that name (or the caller may not learn that it exists).
    ConnectionNotFound,
    /// The route or the file does not exist.
    NotFound,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The target already holds a file of that name and the conflict mode is `fail`.
    Conflict,
    /// This request (a sign-in callback, a delivery) was already used.
    Replayed,
    /// The same delivery is being processed by another request right now; retry later.
    InProgress,
    /// A sign-in brought a different account than the one the connection is bound to.
    AccountMismatch,
    /// The body or one file is larger than allowed.
    PayloadTooLarge,
    /// The Content-Type cannot carry a file.
    UnsupportedMediaType,
    /// The request is well-formed but its content is refused (e.g. a metadata field).
    Unprocessable,
    /// The connection needs a user or an administrator to sign in and consent again.
    NeedsConsent,
    /// Microsoft (or AWS) throttled us; try again after `Retry-After`.
    Throttled,
    /// A dependency is down or timed out; try again after `Retry-After`.
    Unavailable,
    /// Microsoft or a `source_url` origin answered with something we cannot use.
    BadGateway,
    /// The connection or the app registration is misconfigured (an operator must act).
    Misconfigured,
    /// The function's own configuration is invalid.
    ConfigurationError,
    /// A bug or an unexpected answer; details are in the logs only.
    Internal,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: &'static [Kind] = &[
        Kind::BadRequest,
        Kind::InvalidName,
        Kind::InvalidPath,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::ConnectionNotFound,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::Conflict,
        Kind::Replayed,
        Kind::InProgress,
        Kind::AccountMismatch,
        Kind::PayloadTooLarge,
        Kind::UnsupportedMediaType,
        Kind::Unprocessable,
        Kind::NeedsConsent,
        Kind::Throttled,
        Kind::Unavailable,
        Kind::BadGateway,
        Kind::Misconfigured,
        Kind::ConfigurationError,
        Kind::Internal,
    ];

    /// The HTTP status of this kind.
    pub fn status(self) -> StatusCode {
        use StatusCode as S;
        match self {
            Kind::BadRequest | Kind::InvalidPath => S::BAD_REQUEST,
            Kind::Unauthorized => S::UNAUTHORIZED,
            Kind::Forbidden => S::FORBIDDEN,
            Kind::ConnectionNotFound | Kind::NotFound => S::NOT_FOUND,
            Kind::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            Kind::Conflict | Kind::Replayed | Kind::InProgress | Kind::AccountMismatch => {
                S::CONFLICT
            }
            Kind::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => S::UNSUPPORTED_MEDIA_TYPE,
            Kind::InvalidName | Kind::Unprocessable => S::UNPROCESSABLE_ENTITY,
            Kind::NeedsConsent => S::FAILED_DEPENDENCY,
            Kind::Throttled | Kind::Unavailable => S::SERVICE_UNAVAILABLE,
            Kind::BadGateway => S::BAD_GATEWAY,
            Kind::Misconfigured | Kind::ConfigurationError | Kind::Internal => {
                S::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The machine-readable `error` code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::InvalidName => "invalid_name",
            Kind::InvalidPath => "invalid_path",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::ConnectionNotFound => "connection_not_found",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed => "method_not_allowed",
            Kind::Conflict => "conflict",
            Kind::Replayed => "replayed",
            Kind::InProgress => "in_progress",
            Kind::AccountMismatch => "account_mismatch",
            Kind::PayloadTooLarge => "payload_too_large",
            Kind::UnsupportedMediaType => "unsupported_media_type",
            Kind::Unprocessable => "unprocessable",
            Kind::NeedsConsent => "needs_consent",
            Kind::Throttled => "throttled",
            Kind::Unavailable => "unavailable",
            Kind::BadGateway => "bad_gateway",
            Kind::Misconfigured => "misconfigured",
            Kind::ConfigurationError => "configuration_error",
            Kind::Internal => "internal",
        }
    }
}

/// The `Retry-After` of a 503 whose cause gave no wait of its own (an unreachable store, a
/// Microsoft 5xx without the header).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// An error answer: a [`Kind`], a sentence for a person, and optional `Retry-After` and details.
///
/// The message is returned to the caller, so it must never carry a secret, a token, an ARN or
/// internal text; log those instead.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The condition; decides status and code.
    pub kind: Kind,
    /// A sentence for a person.
    pub message: String,
    /// How long to wait before trying again (503s, 429s).
    pub retry_after: Option<Duration>,
    /// Extra fields merged into the JSON body (e.g. `microsoft_code`, `connection`).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error of this kind with this message.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            retry_after: None,
            details: serde_json::Map::new(),
        }
    }

    /// Sets `Retry-After`.
    pub fn with_retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    /// Adds one detail field to the JSON body (`error` and `message` cannot be overridden).
    pub fn with_detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        if key != "error" && key != "message" {
            self.details.insert(key.to_owned(), value.into());
        }
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The `error` code.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1), when set. A 503 always has one
    /// ([`DEFAULT_RETRY_AFTER`] when nobody said how long), so a client never retries at once.
    pub fn retry_after_secs(&self) -> Option<u64> {
        let wait = self.retry_after.or_else(|| {
            (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(DEFAULT_RETRY_AFTER)
        });
        wait.map(|w| (w.as_secs() + u64::from(w.subsec_nanos() > 0)).max(1))
    }

    /// The JSON body: `{"error", "message", ...details}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.code().into());
        body.insert("message".into(), self.message.clone().into());
        for (k, v) in &self.details {
            body.insert(k.clone(), v.clone());
        }
        serde_json::Value::Object(body)
    }

    /// A JSON response with status, `content-type`, `cache-control: no-store` and, when set,
    /// `Retry-After` in whole seconds (rounded up).
    pub fn to_response(&self) -> http::Response<String> {
        let mut resp = http::Response::new(self.to_json().to_string());
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        if let Some(secs) = self.retry_after_secs() {
            h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code(),
            self.status().as_u16(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for k in Kind::ALL {
            assert!(seen.insert(k.code()), "duplicate code {}", k.code());
            assert!(k.status().is_client_error() || k.status().is_server_error());
        }
    }

    #[test]
    fn docs_table_matches() {
        let doc = include_str!("../../docs/errors.md");
        for k in Kind::ALL {
            let row = format!("| `{}` | {} |", k.code(), k.status().as_u16());
            assert!(doc.contains(&row), "docs/errors.md lacks the row {row}");
        }
        let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            rows,
            Kind::ALL.len(),
            "docs/errors.md has rows for unknown codes"
        );
    }

    #[test]
    fn response_carries_retry_after_and_details() {
        let e = ApiError::new(Kind::Throttled, "Microsoft throttled the upload")
            .with_retry_after(Some(Duration::from_millis(1500)))
            .with_detail("microsoft_code", "activityLimitReached")
            .with_detail("error", "ignored");
        let r = e.to_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");
        let v: serde_json::Value = serde_json::from_str(r.body()).unwrap();
        assert_eq!(v["error"], "throttled");
        assert_eq!(v["microsoft_code"], "activityLimitReached");
    }

    #[test]
    fn every_503_carries_retry_after() {
        let down = ApiError::new(Kind::Unavailable, "the store is down");
        assert_eq!(down.to_response().headers()["retry-after"], "5");
        let said = down.clone().with_retry_after(Some(Duration::from_secs(2)));
        assert_eq!(said.retry_after_secs(), Some(2));
        let not_503 = ApiError::new(Kind::Conflict, "taken");
        assert!(not_503.to_response().headers().get("retry-after").is_none());
    }
}
