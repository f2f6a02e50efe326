//! The one error type of the ingest request side, and its [`ApiError`].

use super::names::NameError;
use crate::api::{ApiError, Kind};
use crate::webhook::WebhookError;

/// Why an ingest request was refused. Its [`ApiError`] is the HTTP answer; the `Display` message
/// is safe to return to the sender (it never carries a secret or file content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The sender could not be authenticated.
    #[error("{0}")]
    Unauthorized(#[from] WebhookError),
    /// Only POST and PUT carry files.
    #[error("method {0} is not allowed; use POST or PUT")]
    MethodNotAllowed(String),
    /// A parameter, header, form field or JSON field is missing, repeated or unusable.
    #[error("{field}: {reason}")]
    BadField {
        /// Where the value came from, e.g. `conflict`, `content_base64`, `[1].path`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body is declared multipart/form-data but cannot be parsed.
    #[error("malformed multipart/form-data body: {0}")]
    Multipart(String),
    /// The body is declared JSON but is not valid JSON of the expected shape.
    #[error("invalid JSON body: {0}")]
    Json(String),
    /// The request carries no file.
    #[error("{0}")]
    NoFile(&'static str),
    /// More files than the connection allows in one request.
    #[error("the request carries {count} files; at most {limit} are allowed per request")]
    TooManyFiles {
        /// Files found (so far).
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A file or folder name breaks a SharePoint rule or attempts traversal.
    #[error("{field}: {source}")]
    InvalidName {
        /// Which input held the name (`name`, `folder`, `path`, …).
        field: String,
        /// The broken rule.
        source: NameError,
    },
    /// The body or one file is larger than allowed.
    #[error("{what} is larger than the limit of {limit} bytes ({})", mib(*limit))]
    PayloadTooLarge {
        /// `request body` or `file`.
        what: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// The Content-Type cannot carry a file.
    #[error(
        "unsupported content type {0:?}; send the file as raw bytes (e.g. application/octet-stream), \
         multipart/form-data or application/json"
    )]
    UnsupportedMediaType(String),
}

fn mib(bytes: usize) -> String {
    let m = bytes as f64 / (1024.0 * 1024.0);
    if bytes % (1024 * 1024) == 0 {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{m:.2} MiB")
    }
}

impl From<&IngestError> for ApiError {
    fn from(e: &IngestError) -> Self {
        let kind = match e {
            IngestError::Unauthorized(_) => Kind::Unauthorized,
            IngestError::MethodNotAllowed(_) => Kind::MethodNotAllowed,
            IngestError::PayloadTooLarge { .. } => Kind::PayloadTooLarge,
            IngestError::UnsupportedMediaType(_) => Kind::UnsupportedMediaType,
            IngestError::InvalidName { source, .. } if source.is_traversal() => Kind::InvalidPath,
            IngestError::InvalidName { .. } => Kind::InvalidName,
            IngestError::BadField { .. }
            | IngestError::Multipart(_)
            | IngestError::Json(_)
            | IngestError::NoFile(_)
            | IngestError::TooManyFiles { .. } => Kind::BadRequest,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl IngestError {
    pub(crate) fn bad_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        IngestError::BadField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn name(field: impl Into<String>, source: NameError) -> Self {
        IngestError::InvalidName {
            field: field.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::names::Traversal;

    #[test]
    fn statuses_and_codes() {
        let cases: Vec<(IngestError, u16, &str)> = vec![
            (WebhookError::Unsigned.into(), 401, "unauthorized"),
            (
                IngestError::MethodNotAllowed("GET".into()),
                405,
                "method_not_allowed",
            ),
            (IngestError::bad_field("conflict", "x"), 400, "bad_request"),
            (IngestError::Multipart("x".into()), 400, "bad_request"),
            (IngestError::Json("x".into()), 400, "bad_request"),
            (IngestError::NoFile("x"), 400, "bad_request"),
            (
                IngestError::TooManyFiles { count: 3, limit: 2 },
                400,
                "bad_request",
            ),
            (
                IngestError::name("name", NameError::IllegalChar { ch: '*' }),
                422,
                "invalid_name",
            ),
            (
                IngestError::name("folder", NameError::Traversal(Traversal::DotSegment)),
                400,
                "invalid_path",
            ),
            (
                IngestError::PayloadTooLarge {
                    what: "file",
                    limit: 1,
                },
                413,
                "payload_too_large",
            ),
            (
                IngestError::UnsupportedMediaType("text/x".into()),
                415,
                "unsupported_media_type",
            ),
        ];
        for (err, status, code) in cases {
            let api = ApiError::from(&err);
            assert_eq!(
                (api.status().as_u16(), api.code()),
                (status, code),
                "{err:?}"
            );
            let json = api.to_json();
            assert_eq!(json["error"], code);
            assert_eq!(json["message"], err.to_string());
        }
    }

    #[test]
    fn size_message_names_bytes_and_mib() {
        let e = IngestError::PayloadTooLarge {
            what: "request body",
            limit: 6 * 1024 * 1024,
        };
        assert_eq!(
            e.to_string(),
            "request body is larger than the limit of 6291456 bytes (6 MiB)"
        );
        let e = IngestError::PayloadTooLarge {
            what: "file",
            limit: 1_500_000,
        };
        assert_eq!(
            e.to_string(),
            "file is larger than the limit of 1500000 bytes (1.43 MiB)"
        );
    }

    #[test]
    fn unauthorized_message_is_the_reason() {
        let e = IngestError::from(WebhookError::MissingHeader("webhook-id"));
        assert_eq!(e.to_string(), "missing webhook-id header");
    }
}
