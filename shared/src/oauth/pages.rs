//! What the browser sees at the end of a sign-in: a result page (HTML, or JSON when the `Accept`
//! header prefers it), an error page, and the relay page of the Microsoft-account token flow.
//!
//! Every value interpolated into HTML is escaped. Every page carries a `Content-Security-Policy`
//! with a fresh per-response nonce; only the relay page has a script, and only that nonce lets it
//! run. Pages are `no-store` and `Referrer-Policy: no-referrer`, so the callback URL (which held the
//! code) is neither cached nor leaked to the next site.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Response, StatusCode, header};
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Provider;
use super::redirect::{CallbackError, ProviderError, RedirectError};
use super::state::StateError;

/// Longest `POST /callback` body the fragment parser reads.
pub const MAX_FRAGMENT_BODY: usize = 64 * 1024;

/// The representation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/html` (browsers, and the default).
    Html,
    /// `application/json` (scripts and tests).
    Json,
}

impl Format {
    /// Chooses from an `Accept` header with q-values: JSON only when `application/json` gets a
    /// higher weight than `text/html` (the most specific matching range decides each weight, as
    /// RFC 9110 §12.5.1 says). Ties, `*/*`, no header and garbage all give HTML.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Html;
        };
        let ranges: Vec<MediaRange<'_>> = accept.split(',').filter_map(MediaRange::parse).collect();
        let json = weight(&ranges, "application", "json");
        let html = weight(&ranges, "text", "html");
        if json > html {
            Format::Json
        } else {
            Format::Html
        }
    }
}

struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    q: f32,
}

impl<'a> MediaRange<'a> {
    fn parse(item: &'a str) -> Option<Self> {
        let mut parts = item.split(';');
        let (kind, subtype) = parts.next()?.trim().split_once('/')?;
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
            return None;
        }
        let mut q = 1.0;
        for param in parts {
            if let Some((name, value)) = param.split_once('=') {
                if name.trim().eq_ignore_ascii_case("q") {
                    // An unreadable weight makes the whole range unreadable.
                    q = value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))?;
                }
            }
        }
        Some(MediaRange { kind, subtype, q })
    }

    /// 3 for an exact match, 2 for `type/*`, 1 for `*/*`, 0 for none.
    fn specificity(&self, kind: &str, subtype: &str) -> u8 {
        let kind_ok = self.kind.eq_ignore_ascii_case(kind);
        if kind_ok && self.subtype.eq_ignore_ascii_case(subtype) {
            3
        } else if kind_ok && self.subtype == "*" {
            2
        } else if self.kind == "*" {
            1
        } else {
            0
        }
    }
}

fn weight(ranges: &[MediaRange<'_>], kind: &str, subtype: &str) -> f32 {
    ranges
        .iter()
        .map(|r| (r.specificity(kind, subtype), r.q))
        .filter(|(s, _)| *s > 0)
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, q)| q)
        .unwrap_or(0.0)
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The answer to `GET /connect/{connection}`: HTML clients get a `302 Found` to `authorize_url`,
/// JSON clients a `200` with `{"authorize_url": …}` (scripts follow it themselves). Both carry
/// `set_cookie` ([`super::state::CookieSettings::set_cookie`]).
pub fn connect_response(
    authorize_url: &url::Url,
    set_cookie: &str,
    format: Format,
) -> Response<String> {
    let mut resp = match format {
        Format::Json => json_response(
            StatusCode::OK,
            &serde_json::json!({ "authorize_url": authorize_url.as_str() }),
        ),
        Format::Html => {
            // A `Url` is always ASCII, so it is always a valid header value.
            let Ok(location) = HeaderValue::from_str(authorize_url.as_str()) else {
                return error_page(
                    &ErrorInfo::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "bad_authorize_url",
                        "the authorize URL could not be sent as a redirect",
                    ),
                    format,
                );
            };
            let mut resp = common_headers(Response::new(String::new()));
            *resp.status_mut() = StatusCode::FOUND;
            resp.headers_mut().insert(header::LOCATION, location);
            resp
        }
    };
    append_set_cookie(&mut resp, set_cookie);
    resp
}

/// Adds a `Set-Cookie` header, e.g. [`super::state::CookieSettings::clear_cookie`] on every
/// callback answer. A value that is not a valid header (it never is for the values
/// [`super::state::CookieSettings`] builds) is dropped rather than sent malformed.
pub fn append_set_cookie(resp: &mut Response<String>, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// What the success page shows. Nothing secret: no token, no code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessInfo {
    /// The connection id.
    pub connection: String,
    /// The identity system.
    pub provider: Provider,
    /// Who consented (UPN or e-mail), if known.
    pub account: Option<String>,
    /// When the access token just obtained expires.
    pub access_token_expires_at: Option<OffsetDateTime>,
    /// When token-refresh will next renew it.
    pub next_refresh_at: Option<OffsetDateTime>,
}

#[derive(Serialize)]
struct SuccessJson<'a> {
    status: &'static str,
    connection: &'a str,
    provider: Provider,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token_expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_refresh_at: Option<String>,
}

/// The 200 page after a connection was stored.
pub fn success_page(info: &SuccessInfo, format: Format) -> Response<String> {
    let expires = info.access_token_expires_at.map(rfc3339);
    let next = info.next_refresh_at.map(rfc3339);
    match format {
        Format::Json => json_response(
            StatusCode::OK,
            &SuccessJson {
                status: "connected",
                connection: &info.connection,
                provider: info.provider,
                account: info.account.as_deref(),
                access_token_expires_at: expires,
                next_refresh_at: next,
            },
        ),
        Format::Html => {
            let mut rows = String::new();
            let mut row = |label: &str, value: &str| {
                let _ = write!(
                    rows,
                    "<tr><th>{}</th><td>{}</td></tr>",
                    escape_html(label),
                    escape_html(value)
                );
            };
            row("Connection", &info.connection);
            row("Identity system", provider_label(info.provider));
            row(
                "Account",
                info.account.as_deref().unwrap_or("(not reported)"),
            );
            row(
                "Access token expires",
                expires.as_deref().unwrap_or("(unknown)"),
            );
            row(
                "Next scheduled refresh",
                next.as_deref().unwrap_or("(not scheduled)"),
            );
            let body = format!(
                "<h1>Connected</h1><p>The connection <strong>{}</strong> is ready. You can close this window.</p><table>{rows}</table>",
                escape_html(&info.connection)
            );
            html_response(StatusCode::OK, "Connected", &body, None)
        }
    }
}

/// What an error page says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// The status to answer with (4xx or 5xx).
    pub status: StatusCode,
    /// A short code, e.g. `access_denied` or `state_expired`.
    pub error: String,
    /// A sentence for a person.
    pub message: String,
    /// Microsoft's `error_description`, when the provider reported the error.
    pub provider_description: Option<String>,
    /// The connection, when known.
    pub connection: Option<String>,
}

impl ErrorInfo {
    /// An error of our own.
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        ErrorInfo {
            status,
            error: error.to_owned(),
            message: message.into(),
            provider_description: None,
            connection: None,
        }
    }

    /// Names the connection on the page.
    pub fn with_connection(mut self, connection: impl Into<String>) -> Self {
        self.connection = Some(connection.into());
        self
    }

    /// An error the provider redirected back with.
    pub fn from_provider(error: &ProviderError) -> Self {
        let message = match error.error.as_str() {
            "access_denied" => "Sign-in was cancelled or consent was declined.",
            "consent_required" | "interaction_required" | "login_required" => {
                "Microsoft needs the user (or an administrator) to sign in and consent again."
            }
            "temporarily_unavailable" | "server_error" => {
                "Microsoft could not complete the sign-in right now; try again in a few minutes."
            }
            _ => {
                "Microsoft refused the sign-in request; the app registration or connection settings need attention."
            }
        };
        ErrorInfo {
            status: error.status(),
            error: error.error.clone(),
            message: message.to_owned(),
            provider_description: error.description.clone(),
            connection: None,
        }
    }
}

impl From<&StateError> for ErrorInfo {
    fn from(e: &StateError) -> Self {
        ErrorInfo::new(e.status(), e.code(), e.to_string())
    }
}

impl From<&CallbackError> for ErrorInfo {
    fn from(e: &CallbackError) -> Self {
        ErrorInfo::new(e.status(), "bad_callback", e.to_string())
    }
}

impl From<&RedirectError> for ErrorInfo {
    fn from(e: &RedirectError) -> Self {
        ErrorInfo::new(e.status(), "bad_redirect", e.to_string())
    }
}

impl From<&FragmentError> for ErrorInfo {
    fn from(e: &FragmentError) -> Self {
        ErrorInfo::new(e.status(), "bad_fragment", e.to_string())
    }
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<&'a str>,
}

/// The error page, with `info.status`. The JSON shape is `{"error", "message",
/// "error_description"?, "connection"?}`, like every other spbridge error body.
pub fn error_page(info: &ErrorInfo, format: Format) -> Response<String> {
    match format {
        Format::Json => json_response(
            info.status,
            &ErrorJson {
                error: &info.error,
                message: &info.message,
                error_description: info.provider_description.as_deref(),
                connection: info.connection.as_deref(),
            },
        ),
        Format::Html => {
            let mut body = format!(
                "<h1>Sign-in failed</h1><p>{}</p><table><tr><th>Error</th><td><code>{}</code></td></tr>",
                escape_html(&info.message),
                escape_html(&info.error)
            );
            if let Some(c) = &info.connection {
                let _ = write!(
                    body,
                    "<tr><th>Connection</th><td>{}</td></tr>",
                    escape_html(c)
                );
            }
            if let Some(d) = &info.provider_description {
                let _ = write!(
                    body,
                    "<tr><th>Microsoft says</th><td>{}</td></tr>",
                    escape_html(d)
                );
            }
            body.push_str("</table>");
            html_response(info.status, "Sign-in failed", &body, None)
        }
    }
}

/// The page `GET /callback` serves when the query is empty: in the Microsoft-account token flow
/// the answer is in the URL fragment, which browsers never send to a server. Its one inline
/// script (allowed by this response's CSP nonce only) removes the fragment from the address bar
/// and history and posts it to `action` (the callback path, e.g. `/callback`) as the form field
/// `fragment`; [`parse_fragment_post`] reads that.
pub fn fragment_relay_page(action: &str) -> Response<String> {
    let nonce = csp_nonce();
    let body = format!(
        concat!(
            "<h1>Finishing sign-in…</h1>",
            "<p id=\"msg\">Sending the sign-in result to spbridge.</p>",
            "<form id=\"relay\" method=\"post\" action=\"{action}\">",
            "<input type=\"hidden\" name=\"fragment\" value=\"\">",
            "<noscript><p>JavaScript is needed to finish this sign-in.</p></noscript>",
            "</form>",
            "<script nonce=\"{nonce}\">",
            "(function(){{",
            "var h=window.location.hash;",
            "if(h.length<2){{document.getElementById('msg').textContent=",
            "'There is no sign-in result on this page. Start again from /connect.';return;}}",
            "history.replaceState(null,'',window.location.pathname+window.location.search);",
            "var f=document.getElementById('relay');",
            "f.elements.fragment.value=h.substring(1);",
            "f.submit();",
            "}})();",
            "</script>"
        ),
        action = escape_html(action),
        nonce = nonce,
    );
    html_response(StatusCode::OK, "Finishing sign-in", &body, Some(&nonce))
}

/// An access token from the Microsoft-account token flow. `Debug` redacts the token.
#[derive(Debug)]
pub struct FragmentToken {
    /// `access_token`.
    pub access_token: SecretString,
    /// `token_type` (always `bearer`).
    pub token_type: String,
    /// `expires_in`, seconds.
    pub expires_in: Option<u64>,
    /// `scope`, split on spaces.
    pub scope: Vec<String>,
    /// `user_id`.
    pub user_id: Option<String>,
    /// `state`.
    pub state: String,
}

/// What the relay page posted.
#[derive(Debug)]
pub enum FragmentResponse {
    /// A token.
    Token(FragmentToken),
    /// The provider's error.
    Error {
        /// What it said.
        error: ProviderError,
        /// The state, if it came back.
        state: Option<String>,
    },
}

/// Why a relayed fragment was refused. All 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    /// Longer than [`MAX_FRAGMENT_BODY`].
    #[error("the posted sign-in result is too large")]
    TooLong,
    /// No `fragment` form field.
    #[error("the request has no fragment field")]
    MissingFragment,
    /// A parameter appeared twice.
    #[error("the sign-in result has the parameter {0:?} more than once")]
    DuplicateParameter(&'static str),
    /// A required field is absent.
    #[error("the sign-in result has no {0}")]
    MissingField(&'static str),
    /// `expires_in` is not a whole number.
    #[error("the sign-in result's expires_in is not a number of seconds")]
    BadExpiresIn,
    /// `token_type` is not `bearer`.
    #[error("the sign-in result has token type {0:?}, expected bearer")]
    UnsupportedTokenType(String),
}

impl FragmentError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

#[derive(Default)]
struct FragmentFields {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<String>,
    scope: Option<String>,
    user_id: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    error_uri: Option<String>,
}

/// Reads the relay page's `application/x-www-form-urlencoded` body: `fragment=<the URL fragment>`,
/// itself `access_token=…&token_type=bearer&expires_in=…&scope=…&user_id=…&state=…` or
/// `error=…&error_description=…&state=…`.
pub fn parse_fragment_post(body: &[u8]) -> Result<FragmentResponse, FragmentError> {
    if body.len() > MAX_FRAGMENT_BODY {
        return Err(FragmentError::TooLong);
    }
    let mut fragment = None;
    for (name, value) in url::form_urlencoded::parse(body) {
        if name == "fragment" {
            once(&mut fragment, value.into_owned(), "fragment")?;
        }
    }
    let fragment = fragment.ok_or(FragmentError::MissingFragment)?;
    let fragment = fragment.strip_prefix('#').unwrap_or(&fragment);
    let mut f = FragmentFields::default();
    for (name, value) in url::form_urlencoded::parse(fragment.as_bytes()) {
        let value = value.into_owned();
        let (slot, name) = match name.as_ref() {
            "access_token" => (&mut f.access_token, "access_token"),
            "token_type" => (&mut f.token_type, "token_type"),
            "expires_in" => (&mut f.expires_in, "expires_in"),
            "scope" => (&mut f.scope, "scope"),
            "user_id" => (&mut f.user_id, "user_id"),
            "state" => (&mut f.state, "state"),
            "error" => (&mut f.error, "error"),
            "error_description" => (&mut f.error_description, "error_description"),
            "error_uri" => (&mut f.error_uri, "error_uri"),
            _ => continue,
        };
        once(slot, value, name)?;
    }
    let state = f.state.filter(|s| !s.is_empty());
    if let Some(error) = f.error {
        return Ok(FragmentResponse::Error {
            error: ProviderError {
                error,
                description: f.error_description,
                uri: f.error_uri,
            },
            state,
        });
    }
    let access_token = f
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(FragmentError::MissingField("access_token"))?;
    let token_type = f
        .token_type
        .ok_or(FragmentError::MissingField("token_type"))?;
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(FragmentError::UnsupportedTokenType(token_type));
    }
    let expires_in = f
        .expires_in
        .map(|e| {
            e.trim()
                .parse::<u64>()
                .map_err(|_| FragmentError::BadExpiresIn)
        })
        .transpose()?;
    Ok(FragmentResponse::Token(FragmentToken {
        access_token: SecretString::from(access_token),
        token_type,
        expires_in,
        scope: f
            .scope
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        user_id: f.user_id,
        state: state.ok_or(FragmentError::MissingField("state"))?,
    }))
}

fn once(slot: &mut Option<String>, value: String, name: &'static str) -> Result<(), FragmentError> {
    if slot.is_some() {
        return Err(FragmentError::DuplicateParameter(name));
    }
    *slot = Some(value);
    Ok(())
}

fn provider_label(p: Provider) -> &'static str {
    match p {
        Provider::Acs => "SharePoint add-in (Azure ACS)",
        Provider::AadV1 => "Azure AD v1",
        Provider::Entra => "Microsoft Entra ID",
        Provider::Msa => "Microsoft account",
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn csp_nonce() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>())
}

fn html_response(
    status: StatusCode,
    title: &str,
    body: &str,
    script_nonce: Option<&str>,
) -> Response<String> {
    let style_nonce = csp_nonce();
    let page = format!(
        concat!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<meta name=\"referrer\" content=\"no-referrer\">",
            "<title>{title} · spbridge</title>",
            "<style nonce=\"{style_nonce}\">",
            "body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}",
            "th{{text-align:left;padding-right:1rem;vertical-align:top}}td{{word-break:break-word}}",
            "</style></head><body>{body}</body></html>\n"
        ),
        title = escape_html(title),
        style_nonce = style_nonce,
        body = body,
    );
    let script = match script_nonce {
        Some(n) => format!("script-src 'nonce-{n}'; "),
        None => String::new(),
    };
    let csp = format!(
        "default-src 'none'; {script}style-src 'nonce-{style_nonce}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    );
    let mut resp = Response::new(page);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The nonces are base64url, so the header is always valid; the fallback forbids everything.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'none'")),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    common_headers(resp)
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<String> {
    let body = serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"error":"internal","message":"the response could not be encoded"}"#.to_owned()
    });
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    common_headers(resp)
}

fn common_headers(mut resp: Response<String>) -> Response<String> {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use time::macros::datetime;

    const HOSTILE: &str = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>&amp;";

    fn header(r: &Response<String>, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    #[test]
    fn accept_negotiation() {
        let cases: &[(Option<&str>, Format)] = &[
            (None, Format::Html),
            (Some(""), Format::Html),
            (Some("*/*"), Format::Html),
            (Some("application/json"), Format::Json),
            (Some("APPLICATION/JSON"), Format::Json),
            (Some("application/json, text/html"), Format::Html),
            (Some("text/html;q=0.5, application/json"), Format::Json),
            (
                Some("application/json;q=0.4, text/html;q=0.9"),
                Format::Html,
            ),
            (Some("application/json;q=0.9, */*;q=0.1"), Format::Json),
            (Some("application/*"), Format::Json),
            (Some("application/json;q=0"), Format::Html),
            (Some("text/*;q=0.2, application/json;q=0.3"), Format::Json),
            // A browser's default.
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"),
                Format::Html,
            ),
            // The most specific range decides, not the first.
            (
                Some("*/*;q=1, text/html;q=0.1, application/json;q=0.5"),
                Format::Json,
            ),
            // Garbage weights make the range unreadable.
            (Some("application/json;q=2"), Format::Html),
            (Some("application/json;q=abc"), Format::Html),
            (Some("nonsense, /, */json"), Format::Html),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(*accept), *want, "{accept:?}");
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn success_page_html_escapes_and_shows_times() {
        let info = SuccessInfo {
            connection: HOSTILE.into(),
            provider: Provider::Entra,
            account: Some("adele@contoso.com".into()),
            access_token_expires_at: Some(datetime!(2026-11-22 07:00 UTC)),
            next_refresh_at: Some(datetime!(2026-11-29 06:00 UTC)),
        };
        let r = success_page(&info, Format::Html);
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.body();
        assert!(!body.contains("<script"), "{body}");
        assert!(!body.contains("<img"), "{body}");
        assert!(body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(body.contains("&amp;amp;"));
        assert!(body.contains("adele@contoso.com"));
        assert!(body.contains("2026-11-22T07:00:00Z"));
        assert!(body.contains("2026-11-29T06:00:00Z"));
        assert_eq!(header(&r, header::CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(header(&r, header::CACHE_CONTROL), "no-store");
        assert_eq!(header(&r, header::REFERRER_POLICY), "no-referrer");
        let csp = header(&r, header::CONTENT_SECURITY_POLICY);
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(
            !csp.contains("script-src"),
            "no script on result pages: {csp}"
        );

        let j = success_page(&info, Format::Json);
        assert_eq!(header(&j, header::CONTENT_TYPE), "application/json");
        let v: serde_json::Value = serde_json::from_str(j.body()).unwrap();
        assert_eq!(v["status"], "connected");
        assert_eq!(v["connection"], HOSTILE);
        assert_eq!(v["provider"], "entra");
        assert_eq!(v["access_token_expires_at"], "2026-11-22T07:00:00Z");
        assert_eq!(v["next_refresh_at"], "2026-11-29T06:00:00Z");
    }

    #[test]
    fn provider_error_page_escapes_the_description() {
        let e = ProviderError {
            error: "access_denied".into(),
            description: Some(format!("AADSTS65004: User declined. {HOSTILE}")),
            uri: None,
        };
        let info = ErrorInfo::from_provider(&e).with_connection("contoso-docs");
        let r = error_page(&info, Format::Html);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(!r.body().contains("<script"));
        assert!(!r.body().contains("<img"));
        assert!(r.body().contains("AADSTS65004: User declined."));
        assert!(r.body().contains("contoso-docs"));
        assert!(r.body().contains("cancelled or consent was declined"));

        let j = error_page(&info, Format::Json);
        assert_eq!(j.status(), StatusCode::FORBIDDEN);
        let v: serde_json::Value = serde_json::from_str(j.body()).unwrap();
        assert_eq!(v["error"], "access_denied");
        assert!(v["error_description"].as_str().unwrap().contains(HOSTILE));
        assert_eq!(v["connection"], "contoso-docs");
    }

    #[test]
    fn our_own_errors_keep_their_status_and_code() {
        let info = ErrorInfo::from(&StateError::Replayed);
        let j = error_page(&info, Format::Json);
        assert_eq!(j.status(), StatusCode::CONFLICT);
        let v: serde_json::Value = serde_json::from_str(j.body()).unwrap();
        assert_eq!(v["error"], "state_replayed");
        assert!(v["message"].as_str().unwrap().contains("already used"));
        assert!(v.get("error_description").is_none());

        let wrong = StateError::WrongConnection {
            expected: HOSTILE.into(),
            in_state: "a".into(),
        };
        let h = error_page(&ErrorInfo::from(&wrong), Format::Html);
        assert_eq!(h.status(), StatusCode::FORBIDDEN);
        assert!(!h.body().contains("<script"));
    }

    #[test]
    fn relay_page_has_a_nonced_script_and_strict_csp() {
        let r = fragment_relay_page("/prod/callback\"><script>x</script>");
        let csp = header(&r, header::CONTENT_SECURITY_POLICY).to_owned();
        let nonce = csp
            .split("script-src 'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap();
        assert!(nonce.len() >= 22, "{csp}");
        assert!(csp.contains("default-src 'none'"));
        assert!(csp.contains("form-action 'self'"));
        assert!(!csp.contains("unsafe-inline"));
        let body = r.body();
        // Exactly one script, carrying this response's nonce; the hostile action is escaped.
        assert_eq!(body.matches("<script").count(), 1, "{body}");
        assert!(body.contains(&format!("<script nonce=\"{nonce}\">")));
        assert!(body.contains("action=\"/prod/callback&quot;&gt;&lt;script&gt;"));
        assert!(body.contains("name=\"fragment\""));
        // A new nonce per response.
        let again = fragment_relay_page("/callback");
        assert_ne!(header(&again, header::CONTENT_SECURITY_POLICY), csp);
    }

    #[test]
    fn connect_redirects_html_and_answers_json() {
        let url = url::Url::parse(
            "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?client_id=c&state=a.b",
        )
        .unwrap();
        let cookie = "__Host-spbridge_oauth=n; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax";
        let r = connect_response(&url, cookie, Format::Html);
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(header(&r, header::LOCATION), url.as_str());
        assert_eq!(header(&r, header::SET_COOKIE), cookie);
        assert_eq!(header(&r, header::CACHE_CONTROL), "no-store");
        let j = connect_response(&url, cookie, Format::Json);
        assert_eq!(j.status(), StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(j.body()).unwrap();
        assert_eq!(v["authorize_url"], url.as_str());
        assert_eq!(header(&j, header::SET_COOKIE), cookie);

        let mut page = success_page(
            &SuccessInfo {
                connection: "c".into(),
                provider: Provider::Msa,
                account: None,
                access_token_expires_at: None,
                next_refresh_at: None,
            },
            Format::Html,
        );
        append_set_cookie(&mut page, "a=; Max-Age=0");
        append_set_cookie(&mut page, "bad\nvalue");
        append_set_cookie(&mut page, "b=; Max-Age=0");
        let all: Vec<_> = page.headers().get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(all, ["a=; Max-Age=0", "b=; Max-Age=0"]);
    }

    fn post(fragment: &str) -> Vec<u8> {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("fragment", fragment)
            .finish()
            .into_bytes()
    }

    #[test]
    fn relayed_token_fragment_parses() {
        let body = post(
            "#access_token=EwBgAq%2Bsecret&authentication_token=eyJ0.e30.x&token_type=bearer&expires_in=3600&scope=onedrive.readwrite%20offline_access&user_id=AAAAAA-bbb&state=abc.def",
        );
        let FragmentResponse::Token(t) = parse_fragment_post(&body).unwrap() else {
            panic!("expected a token");
        };
        assert_eq!(t.access_token.expose_secret(), "EwBgAq+secret");
        assert_eq!(t.expires_in, Some(3600));
        assert_eq!(t.scope, ["onedrive.readwrite", "offline_access"]);
        assert_eq!(t.user_id.as_deref(), Some("AAAAAA-bbb"));
        assert_eq!(t.state, "abc.def");
        assert!(!format!("{t:?}").contains("EwBgAq"));
    }

    #[test]
    fn relayed_error_and_bad_fragments() {
        let body = post("error=access_denied&error_description=The+user+has+denied+access&state=s");
        let FragmentResponse::Error { error, state } = parse_fragment_post(&body).unwrap() else {
            panic!("expected an error");
        };
        assert_eq!(error.error, "access_denied");
        assert_eq!(
            error.description.as_deref(),
            Some("The user has denied access")
        );
        assert_eq!(state.as_deref(), Some("s"));

        let cases: &[(Vec<u8>, FragmentError)] = &[
            (b"other=1".to_vec(), FragmentError::MissingFragment),
            (
                b"fragment=a&fragment=b".to_vec(),
                FragmentError::DuplicateParameter("fragment"),
            ),
            (
                post("token_type=bearer&state=s"),
                FragmentError::MissingField("access_token"),
            ),
            (
                post("access_token=t&token_type=bearer"),
                FragmentError::MissingField("state"),
            ),
            (
                post("access_token=t&state=s"),
                FragmentError::MissingField("token_type"),
            ),
            (
                post("access_token=t&token_type=mac&state=s"),
                FragmentError::UnsupportedTokenType("mac".into()),
            ),
            (
                post("access_token=t&token_type=bearer&state=s&expires_in=soon"),
                FragmentError::BadExpiresIn,
            ),
            (
                post("access_token=t&access_token=u&token_type=bearer&state=s"),
                FragmentError::DuplicateParameter("access_token"),
            ),
            (vec![b'a'; MAX_FRAGMENT_BODY + 1], FragmentError::TooLong),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_fragment_post(body).unwrap_err(),
                *want,
                "{}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
        }
        assert_eq!(
            ErrorInfo::from(&FragmentError::MissingFragment).status,
            StatusCode::BAD_REQUEST
        );
    }
}
