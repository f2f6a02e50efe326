//! Requests as data, and the one function that sends them with bounded retries.
//!
//! Every flow builds an [`HttpRequest`]; tests assert it field by field, production sends it
//! through [`send`] / [`send_token`], which own retry, `Retry-After` and error mapping.

use std::time::Duration;

use reqwest::Method;
use time::OffsetDateTime;
use url::Url;

use super::error::{IdentityError, MsError};
pub use super::token::{Field, Token};
use crate::http::{Budget, Next, retry};

/// One HTTP exchange, built by a flow and sent by [`send`].
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// GET or POST.
    pub method: Method,
    /// Full URL. Never carries secrets.
    pub url: Url,
    /// Extra headers (e.g. `Authorization`).
    pub headers: Vec<(String, Field)>,
    /// `application/x-www-form-urlencoded` body fields, in order; `None` for no body.
    pub form: Option<Vec<(String, Field)>>,
}

impl HttpRequest {
    /// A GET without body.
    pub fn get(url: Url) -> Self {
        HttpRequest {
            method: Method::GET,
            url,
            headers: Vec::new(),
            form: None,
        }
    }

    /// A form POST.
    pub fn post_form(url: Url, form: Vec<(String, Field)>) -> Self {
        HttpRequest {
            method: Method::POST,
            url,
            headers: Vec::new(),
            form: Some(form),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: Field) -> Self {
        self.headers.push((name.to_owned(), value));
        self
    }

    /// The first form field of that name, exposed (for tests and diagnostics only).
    pub fn form_value(&self, name: &str) -> Option<&str> {
        self.form
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.expose())
    }

    /// Form field names in order.
    pub fn form_names(&self) -> Vec<&str> {
        self.form
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The first header of that name (case-insensitive), exposed.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.expose())
    }
}

/// Shorthand for a form list.
pub(crate) fn form(
    fields: impl IntoIterator<Item = (&'static str, Field)>,
) -> Vec<(String, Field)> {
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A token request authenticated with a client secret: `grant_type`, `client_id`,
/// `client_secret`, then `fields` (the shape ACS and Azure AD v1 share).
pub(crate) fn secret_grant(
    url: Url,
    grant: &'static str,
    client_id: String,
    secret: &super::secret::ClientSecret,
    fields: impl IntoIterator<Item = (&'static str, Field)>,
) -> HttpRequest {
    let head = [
        ("grant_type", grant.into()),
        ("client_id", client_id.into()),
        ("client_secret", Field::secret(secret.expose_secret())),
    ];
    HttpRequest::post_form(url, form(head.into_iter().chain(fields)))
}

/// How [`send`] retries transient faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (at least 1).
    pub max_attempts: u32,
    /// First backoff; doubled each retry when the server gives no `Retry-After`.
    pub base_delay: Duration,
    /// Upper bound on all waiting together; a longer `Retry-After` ends retrying at once.
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(250),
            max_total_wait: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The retry engine's policy: a token call waits out no single `Retry-After` longer than
    /// its whole budget.
    pub fn engine(&self) -> crate::http::RetryPolicy {
        crate::http::RetryPolicy {
            max_attempts: self.max_attempts,
            base_delay: self.base_delay,
            max_delay: self.max_total_wait,
            max_total_wait: self.max_total_wait,
        }
    }
}

/// A response as the identity code needs it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// Every `WWW-Authenticate` value.
    pub www_authenticate: Vec<String>,
    /// Body text (token bodies hold secrets: never log a 2xx body).
    pub body: String,
}

/// Sends a request, retrying 429, 5xx, timeouts and connection faults per `policy`.
///
/// Any other status (2xx, 4xx) is returned as is for the caller to interpret.
#[tracing::instrument(level = "debug", skip_all, fields(method = %req.method, url = %req.url))]
pub async fn send(
    http: &reqwest::Client,
    req: &HttpRequest,
    policy: &RetryPolicy,
) -> Result<RawResponse, IdentityError> {
    let engine = policy.engine();
    let budget = Budget::new(None);
    let done = retry(&engine, &budget, |_| async {
        let (detail, retry_after, ms) = match send_once(http, req).await {
            Ok(resp) => {
                let status = resp.status;
                if status != 429 && status < 500 {
                    return Next::Done(Ok(resp.into()));
                }
                let ms = MsError::from_json(status, &resp.body);
                (
                    format!(
                        "HTTP {status}{}",
                        ms.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
                    ),
                    resp.retry_after,
                    ms.map(Box::new),
                )
            }
            Err(Fault::Retry(e)) => (e, None, None),
            Err(Fault::Fatal(e)) => return Next::Done(Err(IdentityError::InvalidInput(e))),
        };
        Next::Again {
            retry_after,
            last: Err(IdentityError::Transient {
                detail,
                retry_after,
                attempts: 0,
                ms,
            }),
        }
    })
    .await;
    done.value.map_err(|mut e| {
        if let IdentityError::Transient {
            attempts, detail, ..
        } = &mut e
        {
            *attempts = done.attempts;
            tracing::warn!(attempts = done.attempts, %detail, "giving up on transient failure");
        }
        e
    })
}

struct Once {
    status: u16,
    retry_after: Option<Duration>,
    www_authenticate: Vec<String>,
    body: String,
}

impl From<Once> for RawResponse {
    fn from(o: Once) -> Self {
        RawResponse {
            status: o.status,
            www_authenticate: o.www_authenticate,
            body: o.body,
        }
    }
}

/// Why one attempt failed before a response arrived.
enum Fault {
    /// Network or timeout: worth another attempt.
    Retry(String),
    /// The request could not be built (e.g. a header value with a line break): never retried.
    Fatal(String),
}

async fn send_once(http: &reqwest::Client, req: &HttpRequest) -> Result<Once, Fault> {
    let mut b = http
        .request(req.method.clone(), req.url.clone())
        .header(reqwest::header::ACCEPT, "application/json");
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.expose());
    }
    if let Some(fields) = &req.form {
        let exposed: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        b = b.form(&exposed);
    }
    // reqwest errors name the URL only; our URLs carry no secrets.
    let resp = b.send().await.map_err(|e| describe(&e))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.map_err(|e| describe(&e))?;
    Ok(Once {
        status: status.as_u16(),
        retry_after: retry_after(&headers, OffsetDateTime::now_utc()),
        www_authenticate: headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect(),
        body,
    })
}

fn describe(e: &reqwest::Error) -> Fault {
    if e.is_builder() {
        // Never echo the value: it may be a secret header.
        Fault::Fatal("the request could not be built (invalid header or URL)".to_owned())
    } else if e.is_timeout() {
        Fault::Retry("request timed out".to_owned())
    } else if e.is_connect() {
        Fault::Retry("could not connect".to_owned())
    } else {
        Fault::Retry(format!("transport error: {e}"))
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    crate::http::parse_retry_after(v, now)
}

/// Sends a token request and parses the token or Microsoft's error.
pub async fn send_token(
    http: &reqwest::Client,
    req: &HttpRequest,
    policy: &RetryPolicy,
) -> Result<Token, IdentityError> {
    let resp = send(http, req, policy).await?;
    token_from_response(&resp, OffsetDateTime::now_utc())
}

/// Interprets a token endpoint response.
pub fn token_from_response(
    resp: &RawResponse,
    now: OffsetDateTime,
) -> Result<Token, IdentityError> {
    if (200..300).contains(&resp.status) {
        return Token::from_json(&resp.body, now).map_err(|reason| IdentityError::BadResponse {
            status: resp.status,
            reason,
        });
    }
    error_from_response(resp)
}

/// Maps a non-2xx response to an error, keeping Microsoft's code when the body has one.
pub fn error_from_response<T>(resp: &RawResponse) -> Result<T, IdentityError> {
    match MsError::from_json(resp.status, &resp.body) {
        Some(ms) => Err(IdentityError::from_ms(ms)),
        None => Err(IdentityError::BadResponse {
            status: resp.status,
            reason: format!("no OAuth error in body: {}", snippet(&resp.body)),
        }),
    }
}

/// The start of a body for an error message (error bodies, never token bodies).
pub(crate) fn snippet(body: &str) -> String {
    body.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::identity::testserver;

    fn token_req(server: &testserver::TestServer) -> HttpRequest {
        HttpRequest::post_form(
            server.url.join("/token").unwrap(),
            form([
                ("grant_type", "client_credentials".into()),
                ("client_secret", Field::secret("cs-value")),
            ]),
        )
    }

    #[tokio::test]
    async fn honours_retry_after_then_succeeds() {
        let server = testserver::start(Duration::ZERO, |n, _| match n {
            0 => (
                429,
                vec![("Retry-After", "1".into())],
                r#"{"error":"temporarily_unavailable"}"#.into(),
            ),
            _ => (200, vec![], testserver::token_body("at", 3600)),
        })
        .await;
        let started = Instant::now();
        let t = send_token(
            &testserver::client(),
            &token_req(&server),
            &RetryPolicy::default(),
        )
        .await
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "at");
        assert_eq!(server.hits(), 2);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "waited {:?}",
            started.elapsed()
        );
        // The body went out form-encoded with the secret exposed only on the wire.
        let reqs = server.requests();
        assert_eq!(
            reqs[0].form_value("client_secret").as_deref(),
            Some("cs-value")
        );
        assert_eq!(
            reqs[0].header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
    }

    #[tokio::test]
    async fn gives_up_after_bounded_attempts() {
        let server = testserver::start(Duration::ZERO, |_, _| {
            (503, vec![], r#"{"error":"server_error","error_description":"AADSTS90033: busy","correlation_id":"c-1"}"#.into())
        })
        .await;
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_total_wait: Duration::from_secs(5),
        };
        let e = send_token(&testserver::client(), &token_req(&server), &policy)
            .await
            .unwrap_err();
        match &e {
            IdentityError::Transient { attempts, ms, .. } => {
                assert_eq!(*attempts, 3);
                assert_eq!(
                    ms.as_ref().and_then(|m| m.code.as_deref()),
                    Some("AADSTS90033")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(server.hits(), 3);
        assert!(!e.to_string().contains("cs-value"));
    }

    #[tokio::test]
    async fn retry_after_beyond_budget_stops_at_once() {
        let server = testserver::start(Duration::ZERO, |_, _| {
            (429, vec![("Retry-After", "120".into())], String::new())
        })
        .await;
        let e = send(
            &testserver::client(),
            &token_req(&server),
            &RetryPolicy::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, IdentityError::Transient { attempts: 1, retry_after: Some(d), .. } if d == Duration::from_secs(120)),
            "{e:?}"
        );
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        // Bind then drop to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let req = HttpRequest::get(Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap());
        let policy = RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(5),
            max_total_wait: Duration::from_secs(1),
        };
        let e = send(&testserver::client(), &req, &policy)
            .await
            .unwrap_err();
        assert!(
            matches!(e, IdentityError::Transient { attempts: 2, .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn unbuildable_request_fails_at_once_without_echoing_it() {
        let server = testserver::start(Duration::ZERO, |_, _| (200, vec![], String::new())).await;
        let req = HttpRequest::get(server.url.clone())
            .header("Authorization", Field::secret("Bearer bad\nSECRET"));
        let e = send(&testserver::client(), &req, &RetryPolicy::default())
            .await
            .unwrap_err();
        assert!(matches!(e, IdentityError::InvalidInput(_)), "{e:?}");
        assert!(!e.to_string().contains("SECRET"));
        assert_eq!(server.hits(), 0);
    }

    #[test]
    fn four_xx_maps_to_typed_errors() {
        let r = RawResponse { status: 400, www_authenticate: vec![], body: r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired."}"#.into() };
        assert!(matches!(
            token_from_response(&r, OffsetDateTime::now_utc()),
            Err(IdentityError::NeedsConsent(_))
        ));
        let r = RawResponse {
            status: 400,
            www_authenticate: vec![],
            body: "<html>".into(),
        };
        assert!(matches!(
            token_from_response(&r, OffsetDateTime::now_utc()),
            Err(IdentityError::BadResponse { status: 400, .. })
        ));
        let r = RawResponse {
            status: 200,
            www_authenticate: vec![],
            body: "{}".into(),
        };
        assert!(matches!(
            token_from_response(&r, OffsetDateTime::now_utc()),
            Err(IdentityError::BadResponse { status: 200, .. })
        ));
    }

    #[test]
    fn retry_after_http_date() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:30 GMT".parse().unwrap(),
        );
        let now = time::macros::datetime!(2015-10-21 07:28:00 UTC);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
    }
}
