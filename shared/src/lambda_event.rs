//! The HTTP functions' door from Lambda: API Gateway HTTP API / function URL events (payload 2.0)
//! in, `http` requests to the handler, payload 2.0 responses out.
//!
//! `lambda_http` 1.3 `expect`s the `http::Request` it builds from an event, so an event it cannot
//! turn into a URI panics the invocation before any spbridge code runs, and the caller gets a 5xx
//! from API Gateway. A caller controls the query string (`?a="b c"` arrives raw in
//! `rawQueryString`) and, through `isBase64Encoded`, whether the body must be base64. This module
//! reads the event itself, percent-encodes the query bytes a URI may not hold, and answers
//! anything still unusable with a 400 naming the problem.
//!
//! Only the payload 2.0 shape exists here: the workspace enables `lambda_http`'s `apigw_http`
//! feature alone (REST API v1 and ALB events are not accepted by the functions at all).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Response, header};
use lambda_http::aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lambda_http::request::LambdaRequest;
use lambda_http::{Body, Request, RequestExt as _};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::value::RawValue;

use crate::api::{ApiError, Kind};

/// Serves `handler` on the Lambda Runtime API (as `lambda_http::run` does), reading each event
/// with [`request_from_event`]; an event that cannot become a request gets its 400 without
/// reaching the handler.
///
/// # Errors
/// Only when the runtime itself stops (the Runtime API is unreachable).
pub async fn run<F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let handler = &handler;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let LambdaEvent { payload, context } = event;
            let response = match request_from_event(payload.get(), context) {
                Ok(req) => handler(req).await,
                Err(e) => {
                    tracing::info!(error = %e, "refused an event lambda_http cannot read");
                    let (parts, body) = e.to_response().into_parts();
                    Response::from_parts(parts, Body::Text(body))
                }
            };
            Ok::<_, lambda_runtime::Error>(response_to_event(response))
        },
    ))
    .await
}

/// Turns one event's JSON into the request the handler sees, as `lambda_http` would, after
/// making the raw query a valid URI query (see [`encode_query`]).
///
/// # Errors
/// A 400 [`ApiError`] when the event is not a payload 2.0 event (e.g. a header name or method no
/// HTTP request can have), declares a base64 body that is not base64, or still cannot become a
/// URI (a host or path no URL can hold, or a URL longer than the `http` crate's 64 KiB).
pub fn request_from_event(json: &str, context: Context) -> Result<Request, ApiError> {
    // Not serde's text: it may quote a header value, and this message is logged and returned.
    let mut event: ApiGatewayV2httpRequest = serde_json::from_str(json).map_err(|_| {
        ApiError::new(
            Kind::BadRequest,
            "the request could not be read (a header, method or field no HTTP request can have)",
        )
    })?;
    if let Some(query) = event.raw_query_string.as_mut()
        && let std::borrow::Cow::Owned(encoded) = encode_query(query)
    {
        *query = encoded;
    }
    // Decoded here, once: lambda_http would decode it again and panic on bad base64.
    let binary = match event.body.take_if(|_| event.is_base64_encoded) {
        Some(encoded) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| {
                    ApiError::new(
                        Kind::BadRequest,
                        "the request body is marked base64 but is not valid base64",
                    )
                })?,
        ),
        None => None,
    };
    event.is_base64_encoded = false;
    check_uri(&event)?;
    // check_uri mirrors lambda_http's URI building, and is what keeps deployed functions up: their
    // release profile aborts on panic (Cargo.toml). Where panics unwind (tests), a disagreement
    // still becomes a 400 here; the fuzz target treats reaching this as a crash.
    let event = LambdaRequest::ApiGatewayV2(event);
    let mut req: Request = std::panic::catch_unwind(AssertUnwindSafe(|| event.into()))
        .map_err(|_| ApiError::new(Kind::BadRequest, UNCONVERTIBLE))?;
    if let Some(bytes) = binary {
        *req.body_mut() = Body::Binary(bytes);
    }
    if let Some(trace) = context
        .xray_trace_id
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        req.headers_mut().insert("x-amzn-trace-id", trace);
    }
    Ok(req.with_lambda_context(context))
}

/// The message of an event `check_uri` let through but `lambda_http` still could not convert.
pub const UNCONVERTIBLE: &str = "the request could not be converted";

/// Builds the URI as `lambda_http` 1.3 does (`build_request_uri`, `apigw_path_with_stage`: the
/// `Host` header or the domain name, `X-Forwarded-Proto`, the stage, the raw path through
/// `url::Url`, then `?` and the raw query) and checks that `http` accepts it. API Gateway sets
/// host, scheme and stage itself; the path and query come from the caller.
fn check_uri(event: &ApiGatewayV2httpRequest) -> Result<(), ApiError> {
    let bad = |what: &str| ApiError::new(Kind::BadRequest, format!("the request's {what}"));
    let host = event
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(event.request_context.domain_name.as_deref());
    let raw_path = event.raw_path.as_deref().unwrap_or_default();
    let path = match event.request_context.stage.as_deref() {
        Some(stage)
            if stage != "$default"
                && std::env::var_os("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH").is_none()
                && !raw_path.starts_with(&format!("/{stage}/")) =>
        {
            format!("/{stage}{raw_path}")
        }
        _ => raw_path.to_owned(),
    };
    let mut uri = match host {
        None => url::Url::parse(&format!("http://localhost{path}")).map(|u| u.path().to_owned()),
        Some(host) => {
            let scheme = event
                .headers
                .get("x-forwarded-proto")
                .and_then(|s| s.to_str().ok())
                .unwrap_or("https");
            url::Url::parse(&format!("{scheme}://{host}{path}")).map(String::from)
        }
    }
    .map_err(|_| bad("host or path is not a valid URL"))?;
    if let Some(query) = event.raw_query_string.as_deref().filter(|q| !q.is_empty()) {
        uri.push('?');
        uri.push_str(query);
    }
    http::Uri::try_from(uri).map_err(|_| bad("URL is malformed or longer than 64 KiB"))?;
    Ok(())
}

/// True for a byte the `http` crate refuses in a query (controls, space, `"`, `<`, `>`, DEL), and
/// for `#`, where it would silently end the query. Everything else, UTF-8 included, is kept.
fn needs_encoding(b: u8) -> bool {
    matches!(b, 0x00..=0x20 | b'"' | b'#' | b'<' | b'>' | 0x7f)
}

/// Percent-encodes the bytes of a raw query that no URI query may hold (see the module docs).
///
/// A query that is already valid comes back borrowed, byte for byte: a signature over it still
/// matches. The encoded bytes decode (form or percent decoding) to exactly what was sent.
pub fn encode_query(query: &str) -> std::borrow::Cow<'_, str> {
    if !query.bytes().any(needs_encoding) {
        return std::borrow::Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len() + 16);
    for c in query.chars() {
        match u8::try_from(c) {
            Ok(b) if needs_encoding(b) => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
            }
            _ => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The payload 2.0 response for `resp`, as `lambda_http` builds it: `Set-Cookie` headers move to
/// `cookies`, a binary body is base64.
pub fn response_to_event(resp: Response<Body>) -> ApiGatewayV2httpResponse {
    let (parts, body) = resp.into_parts();
    let (is_base64_encoded, body) = match body {
        Body::Text(t) => (false, Some(Body::Text(t))),
        Body::Binary(b) => (true, Some(Body::Binary(b))),
        _ => (false, None),
    };
    let mut headers: HeaderMap = parts.headers;
    let cookies = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    headers.remove(header::SET_COOKIE);
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = headers;
    out.body = body;
    out.is_base64_encoded = is_base64_encoded;
    out.cookies = cookies;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(query: &str) -> String {
        serde_json::json!({
            "version": "2.0",
            "routeKey": "POST /uploads/{connection}",
            "rawPath": "/uploads/contoso",
            "rawQueryString": query,
            "headers": {
                "host": "abc.execute-api.eu-west-1.amazonaws.com",
                "x-forwarded-proto": "https"
            },
            "requestContext": {
                "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
                "http": {"method": "POST", "path": "/uploads/contoso"},
                "stage": "$default"
            },
            "isBase64Encoded": false
        })
        .to_string()
    }

    fn query_of(json: &str) -> Result<Option<String>, ApiError> {
        request_from_event(json, Context::default()).map(|r| r.uri().query().map(str::to_owned))
    }

    #[test]
    fn valid_queries_pass_byte_for_byte() {
        for q in [
            "a=1&b=2",
            "token=abc%2Fdef%3D&x=%C3%A9",
            "sig=a+b/c?d@e:f!$&'()*,;=~_-.",
            "q={x}|[y]^`z`\\",
            "name=r%C3%A9sum%C3%A9&raw=résumé",
            "bad=%zz&lone=%",
        ] {
            assert!(
                matches!(encode_query(q), std::borrow::Cow::Borrowed(_)),
                "{q}"
            );
            assert_eq!(query_of(&event(q)).unwrap().as_deref(), Some(q));
        }
    }

    #[test]
    fn invalid_query_bytes_are_encoded_and_decode_to_what_was_sent() {
        let sent = "a=\"b c{<x>}\u{7f}&frag=#1&tab=\t";
        let got = query_of(&event(sent)).unwrap().unwrap();
        assert_eq!(got, "a=%22b%20c{%3Cx%3E}%7F&frag=%231&tab=%09");
        let decoded: Vec<(String, String)> = url::form_urlencoded::parse(got.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            decoded,
            [
                ("a".into(), "\"b c{<x>}\u{7f}".into()),
                ("frag".into(), "#1".into()),
                ("tab".into(), "\t".into())
            ]
        );
    }

    #[test]
    fn the_fuzz_reproducer_becomes_a_request() {
        let repro = include_str!("../../tests/fuzz/corpus/aws_events/raw-query-quote");
        let req = request_from_event(repro, Context::default()).unwrap();
        assert_eq!(req.uri().path(), "/connect/x");
        assert_eq!(req.uri().query(), Some("a=%22b%20c{"));
    }

    #[test]
    fn a_base64_body_reaches_the_handler_decoded() {
        let mut v: serde_json::Value = serde_json::from_str(&event("a=1")).unwrap();
        v["isBase64Encoded"] = true.into();
        v["body"] = "AP9oZWxsbw==".into();
        let req = request_from_event(&v.to_string(), Context::default()).unwrap();
        assert_eq!(req.body().as_ref(), b"\x00\xffhello");
    }

    #[test]
    fn a_body_marked_base64_that_is_not_gets_400() {
        let mut v: serde_json::Value = serde_json::from_str(&event("a=1")).unwrap();
        v["isBase64Encoded"] = true.into();
        v["body"] = "not base64!".into();
        let e = request_from_event(&v.to_string(), Context::default()).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (400, "bad_request"));
        assert!(e.message.contains("base64"), "{}", e.message);
    }

    #[test]
    fn unreadable_events_get_400_not_a_panic() {
        let base: serde_json::Value = serde_json::from_str(&event("a=1")).unwrap();
        let cases: [(&str, serde_json::Value); 5] = [
            ("/headers/host", "bad host".into()),
            ("/headers/x-forwarded-proto", "h t t p".into()),
            ("/requestContext/http/method", "GE T".into()),
            ("/rawQueryString", "a".repeat(70_000).into()),
            ("/rawPath", ":99999".into()),
        ];
        for (at, value) in cases {
            let mut v = base.clone();
            *v.pointer_mut(at).unwrap() = value;
            let e = request_from_event(&v.to_string(), Context::default()).unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{at}: {e}");
            // Refused by the checks, not by catching lambda_http's panic.
            assert_ne!(e.message, UNCONVERTIBLE, "{at}");
        }
        let mut bad_header = base.clone();
        bad_header["headers"]["bad name"] = "x".into();
        let e = request_from_event(&bad_header.to_string(), Context::default()).unwrap_err();
        assert_eq!(e.status().as_u16(), 400, "{e}");
        assert!(request_from_event("[1, 2]", Context::default()).is_err());
    }

    #[test]
    fn responses_keep_status_headers_cookies_and_binary_bodies() {
        let resp = Response::builder()
            .status(401)
            .header("content-type", "application/octet-stream")
            .header("set-cookie", "a=1; HttpOnly")
            .header("set-cookie", "b=2")
            .body(Body::Binary(vec![0, 159, 146, 150]))
            .unwrap();
        let out = serde_json::to_value(response_to_event(resp)).unwrap();
        assert_eq!(out["statusCode"], 401);
        assert_eq!(out["cookies"], serde_json::json!(["a=1; HttpOnly", "b=2"]));
        assert_eq!(out["headers"]["content-type"], "application/octet-stream");
        assert!(out["headers"].get("set-cookie").is_none());
        assert_eq!(
            (out["isBase64Encoded"].clone(), out["body"].clone()),
            (true.into(), "AJ+Slg==".into())
        );
    }
}
