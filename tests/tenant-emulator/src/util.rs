//! Small helpers shared by the protocol modules: the request view, JSON replies, ids, times.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use rand::Rng as _;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A fully read request, as every protocol handler sees it.
pub(crate) struct Req {
    pub method: Method,
    /// Percent-decoded path.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Form fields of an `application/x-www-form-urlencoded` body.
    pub fn form(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&self.body).unwrap_or_default()
    }

    pub fn bearer(&self) -> Option<&str> {
        let v = self.header("authorization")?;
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }
}

pub(crate) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

pub(crate) fn json(status: StatusCode, value: &Value) -> Response {
    let mut r = Response::new(Body::from(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

pub(crate) fn with_header(mut r: Response, name: &'static str, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
    r
}

pub(crate) fn redirect(location: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub(crate) fn bytes_response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Whole seconds of a duration as i64, saturating (options may hold huge values).
pub(crate) fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// `t + d`, saturating at the largest representable date.
pub(crate) fn add_secs(t: OffsetDateTime, d: std::time::Duration) -> OffsetDateTime {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}

pub(crate) fn unix_now() -> i64 {
    now().unix_timestamp()
}

/// `2024-03-29T17:55:01Z` (SharePoint REST style: seconds, no fraction).
pub(crate) fn sp_time(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// `2015-01-29T09:21:55.523Z` (Graph style: milliseconds).
pub(crate) fn graph_time(t: OffsetDateTime) -> String {
    let ms = t.millisecond();
    let t = t.replace_nanosecond(u32::from(ms) * 1_000_000).unwrap_or(t);
    let s = t.format(&Rfc3339).unwrap_or_default();
    if s.contains('.') {
        s
    } else {
        s.replacen('Z', ".000Z", 1)
    }
}

/// `2015-09-24 19:51:51Z` (AADSTS timestamp style).
pub(crate) fn aad_time(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub(crate) fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An opaque random token (codes, refresh tokens): 48 random bytes, base64url.
pub(crate) fn opaque(prefix: &str) -> String {
    let mut b = [0u8; 48];
    rand::rng().fill(&mut b[..]);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// A base64 client secret like the ones ACS and Entra hand out.
pub(crate) fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill(&mut b[..]);
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub(crate) fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub(crate) fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Appends query parameters to a URL that may already have some.
pub(crate) fn add_query(url: &str, params: &[(&str, &str)]) -> String {
    let encoded = serde_urlencoded::to_string(params).unwrap_or_default();
    if url.contains('?') {
        format!("{url}&{encoded}")
    } else {
        format!("{url}?{encoded}")
    }
}

/// Microsoft's QuickXorHash (OneDrive / SharePoint file hash), base64.
pub(crate) fn quick_xor_hash(data: &[u8]) -> String {
    const WIDTH: usize = 160;
    const SHIFT: usize = 11;
    let mut cells = [0u64; 3];
    let mut pos = 0usize;
    for &b in data {
        let cell = pos / 64;
        let off = pos % 64;
        let bits = if cell == 2 { 32 } else { 64 };
        cells[cell] ^= u64::from(b) << off;
        if off > bits - 8 {
            let next = if cell == 2 { 0 } else { cell + 1 };
            cells[next] ^= u64::from(b) >> (bits - off);
        }
        pos = (pos + SHIFT) % WIDTH;
    }
    let mut out = [0u8; 20];
    out[..8].copy_from_slice(&cells[0].to_le_bytes());
    out[8..16].copy_from_slice(&cells[1].to_le_bytes());
    out[16..20].copy_from_slice(&cells[2].to_le_bytes()[..4]);
    let len = (data.len() as u64).to_le_bytes();
    for (i, b) in len.iter().enumerate() {
        out[12 + i] ^= b;
    }
    b64(&out)
}

/// Case-insensitive ASCII prefix strip.
pub(crate) fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

pub(crate) fn mime_for(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    match lower.rsplit('.').next() {
        Some("txt") => "text/plain",
        Some("pdf") => "application/pdf",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Some("csv") => "text/csv",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_xor_of_empty_is_zero() {
        assert_eq!(quick_xor_hash(b""), "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    }

    #[test]
    fn quick_xor_mixes_length() {
        assert_ne!(quick_xor_hash(b"a"), quick_xor_hash(b"b"));
        assert_ne!(quick_xor_hash(&[0u8; 1]), quick_xor_hash(&[0u8; 2]));
    }

    #[test]
    fn time_formats() {
        let t = time::macros::datetime!(2024-03-29 17:55:01.523 UTC);
        assert_eq!(sp_time(t), "2024-03-29T17:55:01Z");
        assert_eq!(graph_time(t), "2024-03-29T17:55:01.523Z");
        assert_eq!(aad_time(t), "2024-03-29 17:55:01Z");
    }
}
