//! The redirect URI sign-in flows send to Microsoft, and the query parameters Microsoft sends back
//! to `GET /callback`.

use url::Url;

use crate::config::join_path;

/// Path of the callback route, relative to the API's base URL.
pub const CALLBACK_PATH: &str = "callback";
/// Longest callback query string accepted.
pub const MAX_QUERY_LEN: usize = 16 * 1024;

/// How the redirect URI is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedirectSettings {
    /// `SPBRIDGE_PUBLIC_BASE_URL`: when set, the redirect URI is `{public_base_url}/callback`
    /// whatever the request says.
    pub public_base_url: Option<Url>,
    /// Hosts a request-derived redirect URI may use (lower case; `host` or `host:port`; an entry
    /// without a port matches any port). Empty means any host API Gateway routed to us.
    pub allowed_hosts: Vec<String>,
}

impl RedirectSettings {
    /// Splits a comma- or space-separated host list, e.g. `"api.contoso.com, localhost"`.
    pub fn parse_allowed_hosts(list: &str) -> Vec<String> {
        list.split([',', ' '])
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    }
}

/// Where the request came in, as API Gateway reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOrigin<'a> {
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The `X-Forwarded-Proto` header (API Gateway sets `https`).
    pub forwarded_proto: Option<&'a str>,
    /// `requestContext.domainName`.
    pub domain_name: Option<&'a str>,
    /// `requestContext.stage`; a named stage on the `execute-api` host prefixes the path.
    pub stage: Option<&'a str>,
}

/// Why no redirect URI could be built. All are the request's fault: 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// Neither a public base URL nor a host.
    #[error("the request has no Host header and SPBRIDGE_PUBLIC_BASE_URL is not set")]
    NoHost,
    /// The host is not a plain `host[:port]`.
    #[error("the Host header {0:?} is not a valid host name")]
    BadHost(String),
    /// The host is not in the allow-list.
    #[error("the host {0:?} is not allowed to receive sign-in callbacks")]
    HostNotAllowed(String),
    /// `X-Forwarded-Proto` is neither `https` nor (for loopback hosts) `http`.
    #[error("the sign-in callback must use https, not {0:?}")]
    InsecureScheme(String),
}

/// The redirect URI: `{public_base_url}/callback` if configured, else built from the request's
/// host (checked against the allow-list), scheme and API Gateway stage.
pub fn redirect_uri(
    settings: &RedirectSettings,
    origin: &RequestOrigin<'_>,
) -> Result<Url, RedirectError> {
    if let Some(base) = &settings.public_base_url {
        return Ok(join_path(base, CALLBACK_PATH));
    }
    let raw_host = origin
        .host
        .or(origin.domain_name)
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(RedirectError::NoHost)?;
    let host = raw_host.trim_end_matches('.').to_ascii_lowercase();
    // Only host name characters, brackets and ':' for IPv6 literals and ports: no userinfo, path,
    // query or whitespace can ride along into the URL.
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return Err(RedirectError::BadHost(raw_host.to_owned()));
    }
    let parsed = Url::parse(&format!("https://{host}/"))
        .map_err(|_| RedirectError::BadHost(raw_host.to_owned()))?;
    let hostname = parsed
        .host_str()
        .ok_or_else(|| RedirectError::BadHost(raw_host.to_owned()))?
        .to_owned();
    if !settings.allowed_hosts.is_empty()
        && !settings
            .allowed_hosts
            .iter()
            .any(|a| *a == host || *a == hostname)
    {
        return Err(RedirectError::HostNotAllowed(host));
    }
    let loopback = matches!(hostname.as_str(), "localhost" | "127.0.0.1" | "[::1]");
    let proto = origin
        .forwarded_proto
        .and_then(|p| p.split(',').next())
        .map(|p| p.trim().to_ascii_lowercase());
    let scheme = match proto.as_deref() {
        None | Some("") if loopback => "http",
        None | Some("") | Some("https") => "https",
        Some("http") if loopback => "http",
        Some(other) => return Err(RedirectError::InsecureScheme(other.to_owned())),
    };
    let stage = origin
        .stage
        .filter(|s| !s.is_empty() && *s != "$default")
        .filter(|_| {
            origin.domain_name.map(str::to_ascii_lowercase).as_deref() == Some(host.as_str())
                && host.contains(".execute-api.")
        });
    let path = match stage {
        Some(stage) => format!("/{stage}/{CALLBACK_PATH}"),
        None => format!("/{CALLBACK_PATH}"),
    };
    let mut url = Url::parse(&format!("{scheme}://{host}"))
        .map_err(|_| RedirectError::BadHost(raw_host.to_owned()))?;
    url.set_path(&path);
    Ok(url)
}

pub use crate::identity::AuthCode;

/// An OAuth error the provider redirected back with (RFC 6749 §4.1.2.1), e.g. `access_denied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// The `error` code.
    pub error: String,
    /// `error_description`, often starting with an `AADSTS…` code.
    pub description: Option<String>,
    /// `error_uri`.
    pub uri: Option<String>,
}

/// The query parameters of `GET /callback`. `Debug` never shows the code.
#[derive(Debug, Default)]
pub struct CallbackParams {
    /// `code`.
    pub code: Option<AuthCode>,
    /// `state`.
    pub state: Option<String>,
    /// `error`.
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
    /// `error_uri`.
    pub error_uri: Option<String>,
    /// `admin_consent` (`True` after an Entra admin consent).
    pub admin_consent: Option<String>,
    /// `tenant` (sent with `admin_consent`).
    pub tenant: Option<String>,
    /// `session_state`.
    pub session_state: Option<String>,
}

/// Why the callback's query could not be read. All 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// A parameter appeared twice (parameter pollution).
    #[error("the callback parameter {0:?} appears more than once")]
    DuplicateParameter(&'static str),
    /// The query string is longer than [`MAX_QUERY_LEN`].
    #[error("the callback query string is too long")]
    TooLong,
    /// A code or admin-consent answer without `state`.
    #[error("the callback has no state parameter; start the sign-in again from /connect")]
    MissingState,
    /// `state` but neither `code`, `error` nor `admin_consent`.
    #[error("the callback has a state but no code or error")]
    MissingCode,
}

/// What the callback received, once classified.
#[derive(Debug)]
pub enum Callback {
    /// An authorization code to redeem.
    Code {
        /// The code.
        code: AuthCode,
        /// The signed state.
        state: String,
        /// `session_state`, if sent.
        session_state: Option<String>,
    },
    /// The provider reported an error.
    Error {
        /// What it said.
        error: ProviderError,
        /// The state, if it came back.
        state: Option<String>,
    },
    /// Entra admin consent finished.
    AdminConsent {
        /// Whether `admin_consent` was `True`.
        granted: bool,
        /// The tenant that consented.
        tenant: Option<String>,
        /// The signed state.
        state: String,
    },
    /// No parameters at all: the answer may be in the URL fragment (Microsoft-account token
    /// flow), which spbridge refuses: that token cannot be refreshed.
    Empty,
}

impl CallbackParams {
    /// Parses a raw query string (`rawQueryString`). Unknown parameters are ignored; a repeated
    /// known one is refused.
    pub fn parse(raw_query: &str) -> Result<Self, CallbackError> {
        if raw_query.len() > MAX_QUERY_LEN {
            return Err(CallbackError::TooLong);
        }
        let mut p = CallbackParams::default();
        for (name, value) in
            url::form_urlencoded::parse(raw_query.trim_start_matches('?').as_bytes())
        {
            let value = value.into_owned();
            match name.as_ref() {
                "code" => set_once(&mut p.code, AuthCode::new(value), "code")?,
                "state" => set_once(&mut p.state, value, "state")?,
                "error" => set_once(&mut p.error, value, "error")?,
                "error_description" => {
                    set_once(&mut p.error_description, value, "error_description")?
                }
                "error_uri" => set_once(&mut p.error_uri, value, "error_uri")?,
                "admin_consent" => set_once(&mut p.admin_consent, value, "admin_consent")?,
                "tenant" => set_once(&mut p.tenant, value, "tenant")?,
                "session_state" => set_once(&mut p.session_state, value, "session_state")?,
                _ => {}
            }
        }
        Ok(p)
    }

    /// Decides what kind of answer this is. An `error` wins over everything else.
    pub fn classify(self) -> Result<Callback, CallbackError> {
        let state = self.state.filter(|s| !s.is_empty());
        if let Some(error) = self.error {
            return Ok(Callback::Error {
                error: ProviderError {
                    error,
                    description: self.error_description,
                    uri: self.error_uri,
                },
                state,
            });
        }
        if let Some(code) = self.code {
            let state = state.ok_or(CallbackError::MissingState)?;
            return Ok(Callback::Code {
                code,
                state,
                session_state: self.session_state,
            });
        }
        if let Some(consent) = self.admin_consent {
            let state = state.ok_or(CallbackError::MissingState)?;
            return Ok(Callback::AdminConsent {
                granted: consent.eq_ignore_ascii_case("true"),
                tenant: self.tenant,
                state,
            });
        }
        if state.is_some() {
            return Err(CallbackError::MissingCode);
        }
        Ok(Callback::Empty)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), CallbackError> {
    if slot.is_some() {
        return Err(CallbackError::DuplicateParameter(name));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(host: &str) -> RequestOrigin<'_> {
        RequestOrigin {
            host: Some(host),
            forwarded_proto: Some("https"),
            domain_name: Some(host),
            stage: Some("$default"),
        }
    }

    #[test]
    fn public_base_url_wins() {
        let settings = RedirectSettings {
            public_base_url: Some(Url::parse("https://files.contoso.com/bridge").unwrap()),
            allowed_hosts: vec!["other.example".into()],
        };
        let url = redirect_uri(&settings, &origin("evil.example")).unwrap();
        assert_eq!(url.as_str(), "https://files.contoso.com/bridge/callback");
    }

    #[test]
    fn derived_from_the_api_gateway_request() {
        let s = RedirectSettings::default();
        let host = "abc123.execute-api.us-east-1.amazonaws.com";
        assert_eq!(
            redirect_uri(&s, &origin(host)).unwrap().as_str(),
            "https://abc123.execute-api.us-east-1.amazonaws.com/callback"
        );
        // Host header missing: requestContext.domainName.
        let o = RequestOrigin {
            host: None,
            ..origin(host)
        };
        assert_eq!(
            redirect_uri(&s, &o).unwrap().as_str(),
            "https://abc123.execute-api.us-east-1.amazonaws.com/callback"
        );
        // A named stage on the execute-api host is part of the path.
        let o = RequestOrigin {
            stage: Some("prod"),
            ..origin(host)
        };
        assert_eq!(
            redirect_uri(&s, &o).unwrap().as_str(),
            "https://abc123.execute-api.us-east-1.amazonaws.com/prod/callback"
        );
        // Case and a trailing dot are normalised.
        let o = origin("ABC123.execute-api.us-east-1.amazonaws.com.");
        assert_eq!(
            redirect_uri(&s, &o).unwrap().host_str(),
            Some("abc123.execute-api.us-east-1.amazonaws.com")
        );
        assert_eq!(
            redirect_uri(&s, &RequestOrigin::default()).unwrap_err(),
            RedirectError::NoHost
        );
    }

    #[test]
    fn local_runs_use_http_only_on_loopback() {
        let s = RedirectSettings::default();
        let o = RequestOrigin {
            host: Some("localhost:9000"),
            ..Default::default()
        };
        assert_eq!(
            redirect_uri(&s, &o).unwrap().as_str(),
            "http://localhost:9000/callback"
        );
        let o = RequestOrigin {
            host: Some("api.contoso.com"),
            forwarded_proto: Some("http"),
            ..Default::default()
        };
        assert_eq!(
            redirect_uri(&s, &o).unwrap_err(),
            RedirectError::InsecureScheme("http".into())
        );
        let o = RequestOrigin {
            host: Some("api.contoso.com"),
            forwarded_proto: Some("https, http"),
            ..Default::default()
        };
        assert_eq!(
            redirect_uri(&s, &o).unwrap().as_str(),
            "https://api.contoso.com/callback"
        );
    }

    #[test]
    fn hostile_and_unlisted_hosts_are_refused() {
        let open = RedirectSettings::default();
        for bad in [
            "evil.com/path",
            "user@evil.com",
            "evil.com?x",
            "evil.com#x",
            "a b",
            "evil.com\\x",
        ] {
            assert!(
                matches!(
                    redirect_uri(&open, &origin(bad)),
                    Err(RedirectError::BadHost(_))
                ),
                "{bad}"
            );
        }
        let listed = RedirectSettings {
            public_base_url: None,
            allowed_hosts: RedirectSettings::parse_allowed_hosts(
                "API.contoso.com, localhost abc.execute-api.eu-west-1.amazonaws.com",
            ),
        };
        assert_eq!(
            listed.allowed_hosts,
            [
                "api.contoso.com",
                "localhost",
                "abc.execute-api.eu-west-1.amazonaws.com"
            ]
        );
        assert!(redirect_uri(&listed, &origin("api.contoso.com")).is_ok());
        assert!(redirect_uri(&listed, &origin("localhost:3000")).is_ok());
        assert_eq!(
            redirect_uri(&listed, &origin("evil.example")).unwrap_err(),
            RedirectError::HostNotAllowed("evil.example".into())
        );
    }

    #[test]
    fn code_callback_parses_and_never_shows_the_code() {
        let p = CallbackParams::parse(
            "code=M.C507_BAY.2.U.sample-code&state=abc.def&session_state=s1&extra=1",
        )
        .unwrap();
        let debug = format!("{p:?}");
        assert!(!debug.contains("sample-code"), "{debug}");
        match p.classify().unwrap() {
            Callback::Code {
                code,
                state,
                session_state,
            } => {
                assert_eq!(code.expose_secret(), "M.C507_BAY.2.U.sample-code");
                assert_eq!(state, "abc.def");
                assert_eq!(session_state.as_deref(), Some("s1"));
                assert_eq!(format!("{code:?}"), "AuthCode([redacted])");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn provider_error_callback() {
        let p = CallbackParams::parse(
            "error=access_denied&error_description=AADSTS65004%3A+User+declined+to+consent.&state=x.y&error_uri=https%3A%2F%2Flogin.microsoftonline.com%2Ferror",
        )
        .unwrap();
        match p.classify().unwrap() {
            Callback::Error { error, state } => {
                assert_eq!(error.error, "access_denied");
                assert_eq!(
                    error.description.as_deref(),
                    Some("AADSTS65004: User declined to consent.")
                );
                assert_eq!(
                    error.uri.as_deref(),
                    Some("https://login.microsoftonline.com/error")
                );
                assert_eq!(state.as_deref(), Some("x.y"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admin_consent_empty_and_malformed_callbacks() {
        let p = CallbackParams::parse("admin_consent=True&tenant=t1&state=s.t").unwrap();
        match p.classify().unwrap() {
            Callback::AdminConsent {
                granted,
                tenant,
                state,
            } => {
                assert!(granted);
                assert_eq!(tenant.as_deref(), Some("t1"));
                assert_eq!(state, "s.t");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            CallbackParams::parse("").unwrap().classify().unwrap(),
            Callback::Empty
        ));
        assert_eq!(
            CallbackParams::parse("code=abc")
                .unwrap()
                .classify()
                .unwrap_err(),
            CallbackError::MissingState
        );
        assert_eq!(
            CallbackParams::parse("state=abc")
                .unwrap()
                .classify()
                .unwrap_err(),
            CallbackError::MissingCode
        );
        assert_eq!(
            CallbackParams::parse("code=a&code=b&state=s").unwrap_err(),
            CallbackError::DuplicateParameter("code")
        );
        assert_eq!(
            CallbackParams::parse("state=a&state=b").unwrap_err(),
            CallbackError::DuplicateParameter("state")
        );
        assert_eq!(
            CallbackParams::parse(&"a".repeat(MAX_QUERY_LEN + 1)).unwrap_err(),
            CallbackError::TooLong
        );
    }

    /// Real API Gateway v2 events (AWS's and `sam local`'s), from the shared handouts.
    #[test]
    fn handout_events_give_the_expected_redirect_uri() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/aws/");
        let cases = [
            (
                "aws-lambda-rust-runtime_example-apigw-v2-request-no-authorizer.json",
                "https://aaaaaaaaaa.execute-api.us-west-2.amazonaws.com/callback",
            ),
            (
                "aws-lambda-rust-runtime_lambda-http_apigw_v2_sam_local.json",
                "http://127.0.0.1:3000/callback",
            ),
        ];
        for (file, want) in cases {
            let text = std::fs::read_to_string(format!("{dir}{file}")).unwrap();
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            let headers = event["headers"].as_object().unwrap();
            // Header names arrive in any case.
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .and_then(|(_, v)| v.as_str())
            };
            let ctx = &event["requestContext"];
            let o = RequestOrigin {
                host: header("host"),
                forwarded_proto: header("x-forwarded-proto"),
                domain_name: ctx["domainName"].as_str(),
                stage: ctx["stage"].as_str(),
            };
            assert_eq!(
                redirect_uri(&RedirectSettings::default(), &o)
                    .unwrap()
                    .as_str(),
                want,
                "{file}"
            );
            assert_eq!(
                super::super::pages::Format::negotiate(header("accept")),
                super::super::pages::Format::Html,
                "{file}"
            );
        }
    }

    #[test]
    fn the_sample_event_query_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/callback-get.json");
        let event: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let raw = event["rawQueryString"].as_str().unwrap();
        let headers = &event["headers"];
        let ctx = &event["requestContext"];
        let o = RequestOrigin {
            host: headers["host"].as_str(),
            forwarded_proto: headers["x-forwarded-proto"].as_str(),
            domain_name: ctx["domainName"].as_str(),
            stage: ctx["stage"].as_str(),
        };
        assert_eq!(
            redirect_uri(&RedirectSettings::default(), &o)
                .unwrap()
                .as_str(),
            "https://abc123.execute-api.us-east-1.amazonaws.com/callback"
        );
        match CallbackParams::parse(raw).unwrap().classify().unwrap() {
            Callback::Code { code, state, .. } => {
                assert_eq!(code.expose_secret(), "M.C507_BAY.2.U.sample-code");
                assert_eq!(state, "sample.state.value");
            }
            other => panic!("{other:?}"),
        }
    }
}
