//! What the browser sees at the end of a sign-in: a result page (HTML, or JSON when the `Accept`
//! header prefers it) and an error page showing an [`ApiError`].
//!
//! Every value interpolated into HTML is escaped. Every page carries a `Content-Security-Policy`
//! with a fresh per-response style nonce and no script. Pages are `no-store` and `Referrer-Policy: no-referrer`, so the callback URL (which held the
//! code) is neither cached nor leaked to the next site.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Provider;
use crate::api::{ApiError, Kind};

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
                    &ApiError::new(
                        Kind::Internal,
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
            html_response(StatusCode::OK, "Connected", &body)
        }
    }
}

/// The error page: [`ApiError::to_response`] for JSON clients, an HTML page showing the same
/// code, sentence and details to browsers.
pub fn error_page(e: &ApiError, format: Format) -> Response<String> {
    match format {
        Format::Json => common_headers(e.to_response()),
        Format::Html => {
            let mut body = format!(
                "<h1>Sign-in failed</h1><p>{}</p><table><tr><th>Error</th><td><code>{}</code></td></tr>",
                escape_html(&e.message),
                escape_html(e.code())
            );
            for (k, v) in &e.details {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = write!(
                    body,
                    "<tr><th>{}</th><td>{}</td></tr>",
                    escape_html(&detail_label(k)),
                    escape_html(&v)
                );
            }
            body.push_str("</table>");
            let mut resp = html_response(e.status(), "Sign-in failed", &body);
            if let Some(secs) = e.retry_after_secs() {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            resp
        }
    }
}

/// `microsoft_code` → `Microsoft code`.
fn detail_label(key: &str) -> String {
    let spaced = key.replace('_', " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
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

fn html_response(status: StatusCode, title: &str, body: &str) -> Response<String> {
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
    let csp = format!(
        "default-src 'none'; style-src 'nonce-{style_nonce}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
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
    fn error_pages_show_code_message_and_escaped_details() {
        let e = ApiError::new(
            Kind::Forbidden,
            "Sign-in was cancelled or consent was declined.",
        )
        .with_detail("microsoft_code", "access_denied")
        .with_detail(
            "error_description",
            format!("AADSTS65004: User declined. {HOSTILE}"),
        )
        .with_detail("connection", "contoso-docs");
        let r = error_page(&e, Format::Html);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(!r.body().contains("<script"));
        assert!(!r.body().contains("<img"));
        assert!(r.body().contains("AADSTS65004: User declined."));
        assert!(r.body().contains("contoso-docs"));
        assert!(r.body().contains("<code>forbidden</code>"));
        assert!(r.body().contains("cancelled or consent was declined"));
        assert!(!header(&r, header::CONTENT_SECURITY_POLICY).contains("script-src"));

        let j = error_page(&e, Format::Json);
        assert_eq!(j.status(), StatusCode::FORBIDDEN);
        assert_eq!(header(&j, header::CACHE_CONTROL), "no-store");
        let v: serde_json::Value = serde_json::from_str(j.body()).unwrap();
        assert_eq!(v["error"], "forbidden");
        assert_eq!(v["microsoft_code"], "access_denied");
        assert!(v["error_description"].as_str().unwrap().contains(HOSTILE));
        assert_eq!(v["connection"], "contoso-docs");

        let busy = ApiError::new(Kind::Unavailable, "try again")
            .with_retry_after(Some(std::time::Duration::from_secs(7)));
        for f in [Format::Html, Format::Json] {
            let r = error_page(&busy, f);
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(header(&r, header::RETRY_AFTER), "7");
        }
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
}
