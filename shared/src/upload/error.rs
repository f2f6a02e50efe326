//! Upload errors, and the parsing of SharePoint's and Graph's error bodies.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::api::{ApiError, Kind};
use crate::microsoft::{self, Action, System};

/// Why an upload failed. Each variant answers as one [`ApiError`] kind.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A file of that name exists and the conflict behavior is `fail` (409).
    #[error("a file already exists at {path}")]
    Conflict {
        /// The path that was asked for.
        path: String,
        /// Microsoft's error, when the service said so.
        microsoft: Option<Box<MicrosoftError>>,
    },
    /// The site, library, drive or folder does not exist (404).
    #[error("not found: {what}")]
    NotFound {
        /// What was missing, in words.
        what: String,
        /// Microsoft's error, when the service said so.
        microsoft: Option<Box<MicrosoftError>>,
    },
    /// The token was refused even after a refresh (401); the diagnostics explain why.
    #[error("the service refused the access token: {explanation}")]
    Unauthorized {
        /// A short human explanation built from the response.
        explanation: String,
        /// The headers an auth doctor needs.
        diagnostics: Box<AuthDiagnostics>,
    },
    /// The token is valid but lacks permission (403).
    #[error("access denied: {explanation}")]
    Forbidden {
        /// A short human explanation built from the response.
        explanation: String,
        /// The headers an auth doctor needs.
        diagnostics: Box<AuthDiagnostics>,
    },
    /// The service is throttling and waiting longer would pass the deadline or the retry budget
    /// (503 with `Retry-After`, or 429).
    #[error("throttled; retry after {}s{}", retry_after.as_secs(), microsoft.as_deref().map(MicrosoftError::ids).unwrap_or_default())]
    Throttled {
        /// How long the caller should wait before trying again.
        retry_after: Duration,
        /// Microsoft's error (code such as `activityLimitReached`, request id), when it sent one.
        microsoft: Option<Box<MicrosoftError>>,
    },
    /// The connection needs a user to sign in or consent again (424).
    #[error("the connection needs consent again: {0}")]
    NeedsConsent(String),
    /// The service failed in a way the caller cannot fix (502).
    #[error("upstream answered {status}{}: {message}", microsoft_code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Upstream {
        /// The HTTP status (0 when no response arrived).
        status: u16,
        /// Microsoft's error code, e.g. `-2130575342, Microsoft.SharePoint.SPException` or `invalidRequest`.
        microsoft_code: Option<String>,
        /// Microsoft's message, or what went wrong.
        message: String,
    },
    /// The request itself is wrong: bad name, bad path, unknown length where one is needed (400).
    #[error("bad input: {0}")]
    BadInput(String),
    /// The file landed but SharePoint rejected some metadata values (400).
    #[error(
        "the file was uploaded to {path} but SharePoint rejected fields: {}",
        describe_fields(fields)
    )]
    MetadataRejected {
        /// Where the file is.
        path: String,
        /// Each rejected field with SharePoint's message.
        fields: Vec<FieldError>,
    },
    /// Reading the content failed (the source URL broke off, or gave other than it announced) (502).
    #[error("reading the content failed: {0}")]
    Source(String),
}

fn describe_fields(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One field SharePoint refused in `ValidateUpdateListItem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's internal name.
    pub field: String,
    /// SharePoint's `ErrorMessage`.
    pub message: String,
    /// SharePoint's `ErrorCode`, when given.
    pub code: Option<i64>,
}

impl From<&UploadError> for ApiError {
    fn from(e: &UploadError) -> Self {
        let kind = match e {
            UploadError::Conflict { .. } => Kind::Conflict,
            UploadError::NotFound { .. } => Kind::NotFound,
            UploadError::Throttled { .. } => Kind::Throttled,
            UploadError::NeedsConsent(_) => Kind::NeedsConsent,
            UploadError::BadInput(_) => Kind::BadRequest,
            UploadError::MetadataRejected { .. } => Kind::Unprocessable,
            // The sender did nothing wrong: Microsoft refused our token (the doctor says why) or
            // failed, or the source broke off.
            UploadError::Unauthorized { .. }
            | UploadError::Forbidden { .. }
            | UploadError::Upstream { .. }
            | UploadError::Source(_) => Kind::BadGateway,
        };
        let mut api = ApiError::new(kind, e.to_string());
        if let Some(ms) = e.microsoft() {
            if let Some(code) = &ms.code {
                api = api.with_detail("microsoft_code", code.clone());
            }
            if let Some(id) = &ms.request_id {
                api = api.with_detail("microsoft_request_id", id.clone());
            }
        } else if let UploadError::Upstream {
            microsoft_code: Some(code),
            ..
        } = e
        {
            api = api.with_detail("microsoft_code", code.clone());
        }
        match e {
            UploadError::Throttled { retry_after, .. } => api.with_retry_after(Some(*retry_after)),
            UploadError::MetadataRejected { fields, .. } => api.with_detail(
                "fields",
                fields
                    .iter()
                    .map(|f| serde_json::json!({"field": f.field, "message": f.message}))
                    .collect::<Vec<_>>(),
            ),
            _ => api,
        }
    }
}

impl UploadError {
    /// Microsoft's error behind this one, when the service sent one.
    pub fn microsoft(&self) -> Option<&MicrosoftError> {
        match self {
            UploadError::Conflict { microsoft, .. }
            | UploadError::NotFound { microsoft, .. }
            | UploadError::Throttled { microsoft, .. } => microsoft.as_deref(),
            UploadError::Unauthorized { diagnostics, .. }
            | UploadError::Forbidden { diagnostics, .. } => diagnostics.microsoft.as_deref(),
            _ => None,
        }
    }

    /// Whether a fresh attempt of the whole upload later might succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            UploadError::Throttled { .. } | UploadError::Source(_) => true,
            UploadError::Upstream { status, .. } => *status == 0 || *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn transport(e: &reqwest::Error) -> Self {
        // reqwest's Display can carry the URL; upload URLs never carry secrets except Graph's
        // tempauth, so strip the URL.
        UploadError::Upstream {
            status: 0,
            microsoft_code: None,
            message: format!("network error: {}", describe_transport(e)),
        }
    }
}

/// Describes a network error without its URL.
pub(crate) fn describe_transport(e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_body() || e.is_decode() {
        "body broke off".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// An error as Microsoft reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MicrosoftError {
    /// HTTP status of the response.
    pub status: u16,
    /// The code: SharePoint's `"-2130575257, Microsoft.SharePoint.SPException"` or Graph's
    /// `nameAlreadyExists` (Graph's innermost `innerError.code` goes to `inner_code`).
    pub code: Option<String>,
    /// Graph's innermost `innerError.code`, when present.
    pub inner_code: Option<String>,
    /// The human message.
    pub message: String,
    /// `request-id` (Graph) or `SPRequestGuid` (SharePoint), for support tickets.
    pub request_id: Option<String>,
}

impl MicrosoftError {
    /// SharePoint's numeric HRESULT-like code: `-2130575257` from
    /// `"-2130575257, Microsoft.SharePoint.SPException"`.
    pub fn sp_code(&self) -> Option<i64> {
        let code = self.code.as_deref()?;
        code.split(',').next()?.trim().parse().ok()
    }

    /// What [`crate::microsoft::TABLE`] says about this error's code, read as `system`'s.
    pub fn action(&self, system: System) -> Option<Action> {
        microsoft::upload_action(system, self.code.as_deref(), self.inner_code.as_deref())
    }

    /// ` (code, request id …)` for messages, or empty.
    fn ids(&self) -> String {
        match (&self.code, &self.request_id) {
            (Some(c), Some(r)) => format!(" ({c}, request id {r})"),
            (Some(c), None) => format!(" ({c})"),
            (None, Some(r)) => format!(" (request id {r})"),
            (None, None) => String::new(),
        }
    }

    /// Whether the code (or inner code) equals `code`, ignoring ASCII case.
    pub fn is(&self, code: &str) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(code))
            || self
                .inner_code
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(code))
    }

    /// Parses a SharePoint (`odata.error` or verbose `error`) or Graph (`error`) body. Any body
    /// parses: one that is not JSON becomes the message (shortened).
    pub fn parse(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        let request_id = header(headers, "request-id").or_else(|| header(headers, "SPRequestGuid"));
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let err = json
            .as_ref()
            .and_then(|j| j.get("odata.error").or_else(|| j.get("error")));
        // On-premises SharePoint answers 401 OAuth-style: {"error":"invalid_client",
        // "error_description":"…"}.
        if let Some(Value::String(code)) = err {
            let desc = json
                .as_ref()
                .and_then(|j| j.get("error_description"))
                .and_then(Value::as_str);
            return MicrosoftError {
                status,
                code: Some(code.clone()),
                inner_code: None,
                message: desc.unwrap_or(code).to_owned(),
                request_id,
            };
        }
        let Some(err) = err else {
            // SharePoint's 401 body: {"error_description":"Invalid JWT token. …"}.
            if let Some(desc) = json
                .as_ref()
                .and_then(|j| j.get("error_description"))
                .and_then(Value::as_str)
            {
                return MicrosoftError {
                    status,
                    code: None,
                    inner_code: None,
                    message: desc.to_owned(),
                    request_id,
                };
            }
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(300).collect();
            return MicrosoftError {
                status,
                code: None,
                inner_code: None,
                message: if text.is_empty() {
                    format!("HTTP {status} with no error body")
                } else {
                    text
                },
                request_id,
            };
        };
        let code = err.get("code").and_then(Value::as_str).map(str::to_owned);
        // SharePoint nests the text as {"lang","value"}; Graph has a plain string.
        let message = match err.get("message") {
            Some(Value::String(s)) => s.clone(),
            Some(m) => m
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        };
        let mut inner_code = None;
        let mut inner = err.get("innerError").or_else(|| err.get("innererror"));
        while let Some(i) = inner {
            if let Some(c) = i.get("code").and_then(Value::as_str) {
                inner_code = Some(c.to_owned());
            }
            inner = i.get("innerError").or_else(|| i.get("innererror"));
        }
        let request_id = request_id.or_else(|| {
            err.get("innerError")
                .and_then(|i| i.get("request-id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        MicrosoftError {
            status,
            code,
            inner_code,
            message,
            request_id,
        }
    }
}

/// The response headers that explain a 401 or 403.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthDiagnostics {
    /// HTTP status (401 or 403).
    pub status: u16,
    /// `WWW-Authenticate` (SharePoint names the realm and client id; Graph a claims challenge).
    pub www_authenticate: Option<String>,
    /// SharePoint's `x-ms-diagnostics` (e.g. `3000003;reason="Invalid audience Uri…"`).
    pub x_ms_diagnostics: Option<String>,
    /// Graph `request-id` or SharePoint `SPRequestGuid`.
    pub request_id: Option<String>,
    /// Microsoft's error from the body.
    pub microsoft: Option<Box<MicrosoftError>>,
}

impl AuthDiagnostics {
    fn from_response(status: u16, headers: &HeaderMap, ms: MicrosoftError) -> Self {
        AuthDiagnostics {
            status,
            www_authenticate: header(headers, "www-authenticate"),
            x_ms_diagnostics: header(headers, "x-ms-diagnostics"),
            request_id: header(headers, "request-id")
                .or_else(|| header(headers, "SPRequestGuid"))
                .or_else(|| ms.request_id.clone()),
            microsoft: Some(Box::new(ms)),
        }
    }

    fn explain(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.x_ms_diagnostics {
            // `3000003;reason="Invalid audience Uri '…'.";category="invalid_client"`
            let reason = d
                .split(";reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or(d);
            parts.push(reason.to_owned());
        }
        if let Some(w) = &self.www_authenticate {
            if w.contains("insufficient_claims") {
                parts.push("the token lacks claims a Conditional Access policy requires".into());
            } else if let Some(desc) = w
                .split("error_description=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            {
                parts.push(desc.to_owned());
            }
        }
        if let Some(ms) = &self.microsoft
            && !ms.message.is_empty()
        {
            parts.push(ms.message.clone());
        }
        if parts.is_empty() {
            format!("HTTP {} without details", self.status)
        } else {
            parts.join("; ")
        }
    }
}

pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Which API answered, for mapping its error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    SharePoint,
    Graph,
}

impl Api {
    fn system(self) -> System {
        match self {
            Api::SharePoint => System::SharePoint,
            Api::Graph => System::Graph,
        }
    }
}

/// Maps an error response to an [`UploadError`]. `path` names the target for conflict and
/// not-found messages.
pub(crate) fn from_response(
    api: Api,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> UploadError {
    let ms = MicrosoftError::parse(status, headers, body);
    if status == 401 || status == 403 {
        let diag = AuthDiagnostics::from_response(status, headers, ms);
        let explanation = diag.explain();
        return if status == 401 {
            UploadError::Unauthorized {
                explanation,
                diagnostics: Box::new(diag),
            }
        } else {
            UploadError::Forbidden {
                explanation,
                diagnostics: Box::new(diag),
            }
        };
    }
    let action = ms.action(api.system());
    if action == Some(Action::Conflict) || status == 409 {
        return UploadError::Conflict {
            path: path.to_owned(),
            microsoft: Some(Box::new(ms)),
        };
    }
    // SharePoint answers access denied with 500 at times; keep it a 403.
    if action == Some(Action::MissingPermission) {
        let diag = AuthDiagnostics::from_response(status, headers, ms);
        let explanation = diag.explain();
        return UploadError::Forbidden {
            explanation,
            diagnostics: Box::new(diag),
        };
    }
    if status == 404 || action == Some(Action::NotFound) {
        return UploadError::NotFound {
            what: format!("{path}: {}", ms.message),
            microsoft: Some(Box::new(ms)),
        };
    }
    if status == 429 || status == 503 || action == Some(Action::Throttled) {
        let retry_after = header(headers, "retry-after")
            .and_then(|v| crate::http::parse_retry_after(&v, time::OffsetDateTime::now_utc()))
            .unwrap_or(Duration::from_secs(1));
        return UploadError::Throttled {
            retry_after,
            microsoft: Some(Box::new(ms)),
        };
    }
    UploadError::Upstream {
        status,
        microsoft_code: ms.code.clone(),
        message: ms.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures");

    /// Opens a PnP recording wrapper: (status, headers, body).
    fn pnp(path: &str) -> (u16, HeaderMap, Vec<u8>) {
        let raw = std::fs::read_to_string(format!("{FIXTURES}/{path}")).unwrap();
        let v: Value = serde_json::from_str(&raw).unwrap();
        let mut headers = HeaderMap::new();
        for (k, val) in v["Headers"].as_object().unwrap() {
            headers.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(val.as_str().unwrap()).unwrap(),
            );
        }
        let status = v["StatusCode"].as_u64().unwrap() as u16;
        (
            status,
            headers,
            v["Response"].as_str().unwrap().as_bytes().to_vec(),
        )
    }

    /// Opens a raw `.http` recording: (status, body).
    fn http(path: &str) -> (u16, Vec<u8>) {
        let raw = std::fs::read_to_string(format!("{FIXTURES}/{path}")).unwrap();
        let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw.split_once("\n\n").unwrap().1;
        (status, body.as_bytes().to_vec())
    }

    #[test]
    fn sharepoint_not_found_keeps_code_and_request_guid() {
        let (s, h, b) = pnp(
            "sharepoint-rest/pnpcore/GetNonExistingFileByServerRelativeUrlAsyncTest-1-00002.response.json",
        );
        let ms = MicrosoftError::parse(s, &h, &b);
        assert_eq!(ms.sp_code(), Some(-2130575338));
        assert_eq!(
            ms.message,
            "The file /sites/prov-2/Shared Documents/IdontExist.pdf does not exist."
        );
        assert_eq!(
            ms.request_id.as_deref(),
            Some("8bd819a1-70fb-8000-74f6-e7d4ebf46da1")
        );
        let err = from_response(Api::SharePoint, s, &h, &b, "/x");
        assert!(matches!(err, UploadError::NotFound { .. }), "{err:?}");
        assert_eq!(crate::api::ApiError::from(&err).status(), 404);
    }

    #[test]
    fn sharepoint_file_exists_is_a_conflict_even_on_500() {
        let body = std::fs::read(format!(
            "{FIXTURES}/sharepoint-rest/cli-microsoft365_app-add.spec_file-exists_-2130575257.json"
        ))
        .unwrap();
        let err = from_response(Api::SharePoint, 500, &HeaderMap::new(), &body, "/a/b.pdf");
        match err {
            UploadError::Conflict { path, microsoft } => {
                assert_eq!(path, "/a/b.pdf");
                assert_eq!(microsoft.unwrap().sp_code(), Some(-2130575257));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sharepoint_other_errors_are_upstream_with_code() {
        let (s, h, b) = pnp(
            "sharepoint-rest/pnpcore/ThrowSharePointRestServiceException-0-00003.response.json",
        );
        match from_response(Api::SharePoint, s, &h, &b, "/x") {
            UploadError::Upstream {
                status,
                microsoft_code,
                message,
            } => {
                assert_eq!(status, 500);
                assert_eq!(
                    microsoft_code.as_deref(),
                    Some("-2130575342, Microsoft.SharePoint.SPException")
                );
                assert!(message.starts_with("A list, survey"));
            }
            other => panic!("{other:?}"),
        }
        let (s, h, b) =
            pnp("sharepoint-rest/pnpcore/GetByServerRelativeSpecialChars-0-00005.response.json");
        let ms = MicrosoftError::parse(s, &h, &b);
        assert_eq!(ms.sp_code(), Some(-2147024894));
    }

    #[test]
    fn sharepoint_verbose_error_shape_parses() {
        let body = br#"{"error":{"code":"-2147024891, System.UnauthorizedAccessException","message":{"lang":"en-US","value":"Access denied."}}}"#;
        let err = from_response(Api::SharePoint, 500, &HeaderMap::new(), body, "/x");
        match err {
            UploadError::Forbidden { explanation, .. } => assert_eq!(explanation, "Access denied."),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn graph_name_already_exists_is_a_conflict() {
        let (s, b) = http("graph/docs/graph-docs_uploadSession_409_nameAlreadyExists.http");
        assert_eq!(s, 409);
        // The docs sample has a trailing comma, so it is not JSON; the status still decides.
        let err = from_response(Api::Graph, s, &HeaderMap::new(), &b, "/f.txt");
        assert!(matches!(err, UploadError::Conflict { .. }), "{err:?}");
        let strict = br#"{"error":{"code":"nameAlreadyExists","message":"exists"}}"#;
        let ms = MicrosoftError::parse(409, &HeaderMap::new(), strict);
        assert!(ms.is("nameAlreadyExists"));
    }

    #[test]
    fn graph_errors_keep_code_inner_code_and_request_id() {
        let (s, h, b) =
            pnp("graph/pnpcore/VerifyGraphServiceExceptionToString-0-00003.response.json");
        let ms = MicrosoftError::parse(s, &h, &b);
        assert_eq!(ms.code.as_deref(), Some("BadRequest"));
        assert_eq!(ms.inner_code.as_deref(), Some("NameAlreadyExists"));
        assert_eq!(
            ms.request_id.as_deref(),
            Some("554c0b9c-7fef-4e85-b7ef-a7257031ce42")
        );

        let (s, h, b) = pnp("graph/pnpcore/ThrowGraphServiceException-0-00002.response.json");
        match from_response(Api::Graph, s, &h, &b, "/x") {
            UploadError::Upstream {
                status,
                microsoft_code,
                message,
            } => {
                assert_eq!(
                    (status, microsoft_code.as_deref()),
                    (400, Some("invalidRequest"))
                );
                assert_eq!(message, "Invalid hostname for this tenancy");
            }
            other => panic!("{other:?}"),
        }

        let b = std::fs::read(format!(
            "{FIXTURES}/graph/cli-microsoft365_file-add.spec_itemNotFound.json"
        ))
        .unwrap();
        let ms = MicrosoftError::parse(404, &HeaderMap::new(), &b);
        assert_eq!(
            ms.request_id.as_deref(),
            Some("e44abe41-7f08-43d2-92b6-089e3335b47c")
        );
        assert!(matches!(
            from_response(Api::Graph, 404, &HeaderMap::new(), &b, "/x"),
            UploadError::NotFound { .. }
        ));
    }

    #[test]
    fn auth_failures_keep_diagnostic_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "www-authenticate",
            HeaderValue::from_static(
                r#"Bearer realm="f7322380-f203-42ff-93e8-66e266f6d2e4",client_id="00000003-0000-0ff1-ce00-000000000000",trusted_issuers="00000001-0000-0000-c000-000000000000@*""#,
            ),
        );
        h.insert(
            "x-ms-diagnostics",
            HeaderValue::from_static(
                r#"3000003;reason="Invalid audience Uri 'https://wrong/'.";category="invalid_client""#,
            ),
        );
        h.insert("SPRequestGuid", HeaderValue::from_static("abc-123"));
        let body = br#"{"error_description":"Invalid JWT token. The token is expired."}"#;
        let ms = MicrosoftError::parse(401, &h, body);
        assert_eq!(ms.message, "Invalid JWT token. The token is expired.");
        match from_response(Api::SharePoint, 401, &h, b"", "/x") {
            UploadError::Unauthorized {
                explanation,
                diagnostics,
            } => {
                assert_eq!(
                    explanation,
                    "Invalid audience Uri 'https://wrong/'.; HTTP 401 with no error body"
                );
                assert!(diagnostics.www_authenticate.unwrap().contains("realm="));
                assert_eq!(diagnostics.request_id.as_deref(), Some("abc-123"));
            }
            other => panic!("{other:?}"),
        }

        let claims = std::fs::read_to_string(format!(
            "{FIXTURES}/www-authenticate/FluidFramework_parseAuthErrorClaims_insufficient_claims.txt"
        ))
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "www-authenticate",
            HeaderValue::from_str(claims.trim()).unwrap(),
        );
        let err = from_response(Api::Graph, 401, &h, b"{}", "/x");
        assert!(err.to_string().contains("Conditional Access"), "{err}");
    }

    /// A sub-response of a recorded Graph `$batch`: (status, headers, body), the outer
    /// `request-id` kept.
    fn batch_part(path: &str, status: u16) -> (u16, HeaderMap, Vec<u8>) {
        let (_, outer, body) = pnp(path);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let part = v["responses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == status)
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("request-id", outer["request-id"].clone());
        for (k, val) in part["headers"].as_object().unwrap() {
            headers.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(val.as_str().unwrap()).unwrap(),
            );
        }
        (status, headers, part["body"].to_string().into_bytes())
    }

    #[test]
    fn throttled_keeps_microsofts_code_and_request_id() {
        let (s, h, b) = batch_part(
            "graph/pnpcore/MicrosoftGraphBatchRetryFirstTest-0-00002.response.json",
            429,
        );
        match from_response(Api::Graph, s, &h, &b, "/x") {
            err @ UploadError::Throttled { .. } => {
                let UploadError::Throttled {
                    retry_after,
                    microsoft,
                } = &err
                else {
                    unreachable!()
                };
                assert_eq!(*retry_after, Duration::from_secs(5));
                let ms = microsoft.as_deref().unwrap();
                assert_eq!(ms.code.as_deref(), Some("activityLimitReached"));
                assert_eq!(
                    ms.request_id.as_deref(),
                    Some("805dc7f1-34a1-4f75-9ccd-5af7f104cac5")
                );
                let text = err.to_string();
                assert!(
                    text.contains("activityLimitReached") && text.contains("805dc7f1"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn graph_access_denied_is_forbidden() {
        let (s, h, b) = batch_part(
            "graph/pnpcore/UnfurlListItemTest-1-00007.response.json",
            403,
        );
        match from_response(Api::Graph, s, &h, &b, "/x") {
            UploadError::Forbidden { diagnostics, .. } => {
                let ms = diagnostics.microsoft.unwrap();
                assert_eq!(ms.action(System::Graph), Some(Action::MissingPermission));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_oauth_style_401_body_keeps_code_and_description() {
        // What SharePoint Server (on-premises) sends when the client is unknown.
        let body =
            br#"{"error":"invalid_client","error_description":"Invalid issuer or signature."}"#;
        let ms = MicrosoftError::parse(401, &HeaderMap::new(), body);
        assert_eq!(ms.code.as_deref(), Some("invalid_client"));
        assert_eq!(ms.message, "Invalid issuer or signature.");
        match from_response(Api::SharePoint, 401, &HeaderMap::new(), body, "/x") {
            UploadError::Unauthorized {
                explanation,
                diagnostics,
            } => {
                assert_eq!(explanation, "Invalid issuer or signature.");
                let ms = diagnostics.microsoft.unwrap();
                assert_eq!(ms.code.as_deref(), Some("invalid_client"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_variant_maps_to_one_api_kind() {
        let throttled = UploadError::Throttled {
            retry_after: Duration::from_secs(3),
            microsoft: Some(Box::new(MicrosoftError {
                status: 429,
                code: Some("activityLimitReached".into()),
                inner_code: None,
                message: "throttled".into(),
                request_id: Some("rid-1".into()),
            })),
        };
        let api = ApiError::from(&throttled);
        assert_eq!((api.status().as_u16(), api.code()), (503, "throttled"));
        assert_eq!(api.retry_after_secs(), Some(3));
        let body = api.to_json();
        assert_eq!(body["microsoft_code"], "activityLimitReached");
        assert_eq!(body["microsoft_request_id"], "rid-1");
        let cases: Vec<(UploadError, u16, &str)> = vec![
            (UploadError::NeedsConsent("x".into()), 424, "needs_consent"),
            (UploadError::BadInput("x".into()), 400, "bad_request"),
            (
                UploadError::Upstream {
                    status: 500,
                    microsoft_code: Some("-1, X".into()),
                    message: String::new(),
                },
                502,
                "bad_gateway",
            ),
            (
                UploadError::MetadataRejected {
                    path: "/a".into(),
                    fields: vec![FieldError {
                        field: "Title".into(),
                        message: "too long".into(),
                        code: None,
                    }],
                },
                422,
                "unprocessable",
            ),
            (UploadError::Source("x".into()), 502, "bad_gateway"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(&e);
            assert_eq!((api.status().as_u16(), api.code()), (status, code), "{e:?}");
        }
        let rejected = ApiError::from(&UploadError::MetadataRejected {
            path: "/a".into(),
            fields: vec![FieldError {
                field: "Title".into(),
                message: "too long".into(),
                code: None,
            }],
        });
        assert_eq!(rejected.to_json()["fields"][0]["field"], "Title");
    }
}
