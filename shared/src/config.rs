//! Typed configuration, read once per cold start from the environment.
//!
//! Every Microsoft base URL has a per-cloud default and its own override, so tests point them at
//! the tenant emulator and sovereign clouds need no code change. See the README for the list.

use std::{path::PathBuf, str::FromStr, time::Duration};

use url::Url;

/// A configuration problem. The message names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    /// A variable is set to something unusable.
    #[error("environment variable {var} is invalid: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Why its value is unusable.
        reason: String,
    },
}

/// The Microsoft cloud whose endpoints are the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cloud {
    /// Commercial cloud (also GCC, which shares its endpoints).
    #[default]
    Global,
    /// US Government GCC High.
    UsGovHigh,
    /// US Government DoD.
    UsGovDod,
    /// Azure China (21Vianet).
    China,
}

impl FromStr for Cloud {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "global" | "public" | "commercial" => Ok(Cloud::Global),
            "usgov-high" | "gcc-high" => Ok(Cloud::UsGovHigh),
            "usgov-dod" | "dod" => Ok(Cloud::UsGovDod),
            "china" => Ok(Cloud::China),
            other => Err(format!(
                "unknown cloud {other:?}; expected global, usgov-high, usgov-dod or china"
            )),
        }
    }
}

/// Base URLs of every Microsoft service spbridge calls. No trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Azure ACS, e.g. `https://accounts.accesscontrol.windows.net`.
    pub acs: Url,
    /// Azure AD / Entra authority host, e.g. `https://login.microsoftonline.com`.
    pub login: Url,
    /// Microsoft account authority, `https://login.live.com`.
    pub live: Url,
    /// Microsoft Graph, e.g. `https://graph.microsoft.com`.
    pub graph: Url,
    /// Office 365 Discovery service root, e.g. `https://api.office.com/discovery`.
    pub discovery: Url,
}

impl Endpoints {
    /// The production endpoints of a cloud.
    pub fn for_cloud(cloud: Cloud) -> Self {
        // Hosts follow Microsoft's national-cloud endpoint tables; ACS hosts follow PnP's mapping.
        let (acs, login, graph, discovery) = match cloud {
            Cloud::Global => (
                "https://accounts.accesscontrol.windows.net",
                "https://login.microsoftonline.com",
                "https://graph.microsoft.com",
                "https://api.office.com/discovery",
            ),
            Cloud::UsGovHigh => (
                "https://accounts.microsoftonline.us",
                "https://login.microsoftonline.us",
                "https://graph.microsoft.us",
                "https://api.office.com/discovery",
            ),
            Cloud::UsGovDod => (
                "https://accounts.microsoftonline.us",
                "https://login.microsoftonline.us",
                "https://dod-graph.microsoft.us",
                "https://api.office.com/discovery",
            ),
            Cloud::China => (
                "https://accounts.accesscontrol.chinacloudapi.cn",
                "https://login.chinacloudapi.cn",
                "https://microsoftgraph.chinacloudapi.cn",
                "https://api.office.com/discovery",
            ),
        };
        let parse = |s: &str| Url::parse(s).expect("built-in endpoint URLs are valid");
        Endpoints {
            acs: parse(acs),
            login: parse(login),
            live: parse("https://login.live.com"),
            graph: parse(graph),
            discovery: parse(discovery),
        }
    }
}

/// Which secret store backs the functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretBackend {
    /// AWS Secrets Manager (the default inside Lambda).
    Aws,
    /// One JSON file per secret under a directory (the default for local runs).
    File {
        /// The directory.
        dir: PathBuf,
    },
}

/// Secret-store settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsConfig {
    /// Where secrets live.
    pub backend: SecretBackend,
    /// Prefix of every secret name spbridge owns, e.g. `spbridge/`.
    pub prefix: String,
    /// Name of the app-credential secret.
    pub app_secret: String,
    /// Name of the webhook signing secret.
    pub webhook_secret: String,
    /// Name of the secret holding the OAuth state-signing key (`{prefix}state-key`).
    pub state_key_secret: String,
    /// How long warm containers keep a secret read in memory.
    pub cache_ttl: Duration,
    /// How long warm containers remember that a secret does not exist, so unknown connection
    /// names do not each cost a store call.
    pub not_found_ttl: Duration,
}

impl SecretsConfig {
    /// The name of a connection's secret: `{prefix}connections/{id}`.
    pub fn connection_secret_name(&self, connection: &str) -> String {
        format!("{}connections/{}", self.prefix, connection)
    }

    /// The name of a connection's sender secret (what upload-ingest reads):
    /// `{prefix}senders/{id}`.
    pub fn sender_secret_name(&self, connection: &str) -> String {
        format!("{}senders/{}", self.prefix, connection)
    }

    /// The prefix under which every connection secret lives.
    pub fn connections_prefix(&self) -> String {
        format!("{}connections/", self.prefix)
    }
}

/// Outbound HTTP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Total timeout of one outbound request.
    pub timeout: Duration,
    /// Connect timeout of one outbound request.
    pub connect_timeout: Duration,
    /// Extra CA certificate (PEM file) to trust, e.g. the tenant emulator's.
    pub extra_ca_pem: Option<PathBuf>,
}

/// Everything a function needs to know at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Microsoft cloud, which picks the endpoint defaults.
    pub cloud: Cloud,
    /// Every Microsoft base URL.
    pub endpoints: Endpoints,
    /// Secret-store settings.
    pub secrets: SecretsConfig,
    /// Outbound HTTP settings.
    pub http: HttpConfig,
    /// The connection used when a request names none.
    pub default_connection: Option<String>,
    /// Public base URL of the HTTP API, used to build the OAuth redirect URI.
    pub public_base_url: Option<Url>,
    /// upload-ingest settings.
    pub ingest: IngestConfig,
}

/// upload-ingest settings: limits, chunking, idempotency and `source_url` fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// Largest file fetched through `source_url`, in bytes (a connection may lower it).
    pub max_source_bytes: u64,
    /// Chunk size of chunked uploads, and the size above which uploads are chunked.
    pub chunk_bytes: usize,
    /// Lets `source_url` reach loopback addresses. For tests only: production keeps it off.
    pub source_allow_loopback: bool,
    /// Direct upload sessions (`POST /uploads/{connection}/sessions`).
    pub sessions: SessionSettings,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_source_bytes: 10 * 1024 * 1024 * 1024,
            chunk_bytes: 10 * 1024 * 1024,
            source_allow_loopback: false,
            sessions: SessionSettings::default(),
        }
    }
}

/// S3's largest single PUT and largest part: 5 GiB.
pub const S3_MAX_PUT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// S3's smallest part (all but the last): 5 MiB.
pub const S3_MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// How direct upload sessions hand out S3 URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// Files up to this size get one presigned PUT; larger ones S3 multipart (default and most:
    /// 5 GiB, S3's single PUT limit; tests lower it).
    pub single_put_max_bytes: u64,
    /// The smallest part size of a multipart session (default 64 MiB; 5 MiB to 5 GiB). A
    /// session raises it when the file would otherwise need too many parts.
    pub part_bytes: u64,
    /// How long presigned URLs stay valid (default 15 minutes). S3 checks the expiry when a
    /// request starts, so a long PUT that began in time finishes.
    pub url_ttl: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            single_put_max_bytes: S3_MAX_PUT_BYTES,
            part_bytes: 64 * 1024 * 1024,
            url_ttl: Duration::from_secs(900),
        }
    }
}

/// Names of every variable [`Config::from_env`] reads.
// Each constant is a variable\'s name; the README\'s configuration table says what it means.
#[allow(missing_docs)]
pub mod vars {
    pub const CLOUD: &str = "SPBRIDGE_CLOUD";
    pub const ACS_URL: &str = "SPBRIDGE_ACS_URL";
    pub const LOGIN_URL: &str = "SPBRIDGE_LOGIN_URL";
    pub const LIVE_URL: &str = "SPBRIDGE_LIVE_URL";
    pub const GRAPH_URL: &str = "SPBRIDGE_GRAPH_URL";
    pub const DISCOVERY_URL: &str = "SPBRIDGE_DISCOVERY_URL";
    pub const SECRET_BACKEND: &str = "SPBRIDGE_SECRET_BACKEND";
    pub const SECRET_DIR: &str = "SPBRIDGE_SECRET_DIR";
    pub const SECRET_PREFIX: &str = "SPBRIDGE_SECRET_PREFIX";
    pub const APP_SECRET: &str = "SPBRIDGE_APP_SECRET_NAME";
    pub const WEBHOOK_SECRET: &str = "SPBRIDGE_WEBHOOK_SECRET_NAME";
    pub const STATE_KEY_SECRET: &str = "SPBRIDGE_STATE_KEY_SECRET_NAME";
    pub const SECRET_CACHE_TTL: &str = "SPBRIDGE_SECRET_CACHE_TTL_SECS";
    pub const SECRET_NOT_FOUND_TTL: &str = "SPBRIDGE_SECRET_NOT_FOUND_TTL_SECS";
    pub const HTTP_TIMEOUT: &str = "SPBRIDGE_HTTP_TIMEOUT_SECS";
    pub const HTTP_CONNECT_TIMEOUT: &str = "SPBRIDGE_HTTP_CONNECT_TIMEOUT_SECS";
    pub const EXTRA_CA_PEM: &str = "SPBRIDGE_EXTRA_CA_PEM";
    pub const DEFAULT_CONNECTION: &str = "SPBRIDGE_DEFAULT_CONNECTION";
    pub const PUBLIC_BASE_URL: &str = "SPBRIDGE_PUBLIC_BASE_URL";
    pub const MAX_SOURCE_BYTES: &str = "SPBRIDGE_MAX_SOURCE_BYTES";
    pub const UPLOAD_CHUNK_BYTES: &str = "SPBRIDGE_UPLOAD_CHUNK_BYTES";
    pub const SOURCE_ALLOW_LOOPBACK: &str = "SPBRIDGE_SOURCE_URL_ALLOW_LOOPBACK";
    pub const SESSION_SINGLE_PUT_MAX_BYTES: &str = "SPBRIDGE_SESSION_SINGLE_PUT_MAX_BYTES";
    pub const SESSION_PART_BYTES: &str = "SPBRIDGE_SESSION_PART_BYTES";
    pub const SESSION_URL_SECS: &str = "SPBRIDGE_SESSION_URL_SECS";
    /// Set by the Lambda runtime; its presence makes `aws` the default backend.
    pub const LAMBDA_FUNCTION_NAME: &str = "AWS_LAMBDA_FUNCTION_NAME";
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get`, which returns a variable's value if set.
    /// Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());

        let cloud = match get(vars::CLOUD) {
            Some(v) => v.parse().map_err(|reason| ConfigError::Invalid {
                var: vars::CLOUD,
                reason,
            })?,
            None => Cloud::Global,
        };
        let mut endpoints = Endpoints::for_cloud(cloud);
        for (var, slot) in [
            (vars::ACS_URL, &mut endpoints.acs),
            (vars::LOGIN_URL, &mut endpoints.login),
            (vars::LIVE_URL, &mut endpoints.live),
            (vars::GRAPH_URL, &mut endpoints.graph),
            (vars::DISCOVERY_URL, &mut endpoints.discovery),
        ] {
            if let Some(v) = get(var) {
                *slot = parse_base_url(var, &v)?;
            }
        }

        let in_lambda = get(vars::LAMBDA_FUNCTION_NAME).is_some();
        let backend = match get(vars::SECRET_BACKEND)
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            Some(b) if b == "aws" || b == "secretsmanager" => SecretBackend::Aws,
            Some(b) if b == "file" => SecretBackend::File {
                dir: secret_dir(&get),
            },
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: vars::SECRET_BACKEND,
                    reason: format!("unknown backend {other:?}; expected aws or file"),
                });
            }
            None if in_lambda => SecretBackend::Aws,
            None => SecretBackend::File {
                dir: secret_dir(&get),
            },
        };
        let prefix = get(vars::SECRET_PREFIX).unwrap_or_else(|| "spbridge/".to_owned());
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
        {
            return Err(ConfigError::Invalid {
                var: vars::SECRET_PREFIX,
                reason: "only letters, digits and /_+=.@- are allowed in secret names".into(),
            });
        }
        let secrets = SecretsConfig {
            app_secret: get(vars::APP_SECRET).unwrap_or_else(|| format!("{prefix}app")),
            webhook_secret: get(vars::WEBHOOK_SECRET).unwrap_or_else(|| format!("{prefix}webhook")),
            state_key_secret: get(vars::STATE_KEY_SECRET)
                .unwrap_or_else(|| format!("{prefix}state-key")),
            cache_ttl: Duration::from_secs(parse_num(&get, vars::SECRET_CACHE_TTL, 60)?),
            not_found_ttl: Duration::from_secs(parse_num(&get, vars::SECRET_NOT_FOUND_TTL, 30)?),
            backend,
            prefix,
        };

        let http = HttpConfig {
            timeout: Duration::from_secs(parse_num(&get, vars::HTTP_TIMEOUT, 30)?.max(1)),
            connect_timeout: Duration::from_secs(
                parse_num(&get, vars::HTTP_CONNECT_TIMEOUT, 5)?.max(1),
            ),
            extra_ca_pem: get(vars::EXTRA_CA_PEM).map(PathBuf::from),
        };

        let public_base_url = get(vars::PUBLIC_BASE_URL)
            .map(|v| parse_base_url(vars::PUBLIC_BASE_URL, &v))
            .transpose()?;

        let defaults = IngestConfig::default();
        let chunk_bytes = parse_num(&get, vars::UPLOAD_CHUNK_BYTES, defaults.chunk_bytes as u64)?;
        // Graph needs multiples of 320 KiB; SharePoint accepts any size, but tiny chunks are a mistake.
        if !(320 * 1024..=60 * 1024 * 1024).contains(&chunk_bytes) {
            return Err(ConfigError::Invalid {
                var: vars::UPLOAD_CHUNK_BYTES,
                reason: "must be between 327680 (320 KiB) and 62914560 (60 MiB)".into(),
            });
        }
        let sessions = SessionSettings {
            single_put_max_bytes: parse_num(
                &get,
                vars::SESSION_SINGLE_PUT_MAX_BYTES,
                defaults.sessions.single_put_max_bytes,
            )?,
            part_bytes: parse_num(&get, vars::SESSION_PART_BYTES, defaults.sessions.part_bytes)?,
            url_ttl: Duration::from_secs(parse_num(
                &get,
                vars::SESSION_URL_SECS,
                defaults.sessions.url_ttl.as_secs(),
            )?),
        };
        let in_range = |var: &'static str, v: u64, range: std::ops::RangeInclusive<u64>| {
            if range.contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    var,
                    reason: format!("must be between {} and {}", range.start(), range.end()),
                })
            }
        };
        in_range(
            vars::SESSION_SINGLE_PUT_MAX_BYTES,
            sessions.single_put_max_bytes,
            0..=S3_MAX_PUT_BYTES,
        )?;
        in_range(
            vars::SESSION_PART_BYTES,
            sessions.part_bytes,
            S3_MIN_PART_BYTES..=S3_MAX_PUT_BYTES,
        )?;
        // SigV4 presigned URLs live at most 7 days.
        in_range(
            vars::SESSION_URL_SECS,
            sessions.url_ttl.as_secs(),
            60..=604_800,
        )?;
        let ingest = IngestConfig {
            sessions,
            max_source_bytes: parse_num(&get, vars::MAX_SOURCE_BYTES, defaults.max_source_bytes)?,
            chunk_bytes: chunk_bytes as usize,
            source_allow_loopback: match get(vars::SOURCE_ALLOW_LOOPBACK).as_deref().map(str::trim)
            {
                None | Some("0") | Some("false") => false,
                Some("1") | Some("true") => true,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: vars::SOURCE_ALLOW_LOOPBACK,
                        reason: format!("{other:?} is not true/false/1/0"),
                    });
                }
            },
        };
        Ok(Config {
            ingest,
            cloud,
            endpoints,
            secrets,
            http,
            default_connection: get(vars::DEFAULT_CONNECTION),
            public_base_url,
        })
    }
}

/// Settings of the sign-in (oauth-callback) and token-refresh functions, read separately from
/// [`Config`] because only those two functions need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// `SPBRIDGE_ALLOWED_HOSTS`: hosts a request-derived OAuth redirect URI may use (comma or
    /// space separated; empty: any host API Gateway routed to us). Ignored when
    /// `SPBRIDGE_PUBLIC_BASE_URL` is set.
    pub allowed_hosts: Vec<String>,
    /// `SPBRIDGE_REFRESH_ACCESS_SKEW_SECS`: refresh when the access token expires within this.
    pub refresh_access_skew: Duration,
    /// `SPBRIDGE_REFRESH_MAX_TOKEN_AGE_SECS`: refresh when the refresh token was last used this
    /// long ago, whatever the access token says.
    pub refresh_max_token_age: Duration,
    /// `SPBRIDGE_REFRESH_CONCURRENCY`: connections refreshed at once.
    pub refresh_concurrency: usize,
    /// `SPBRIDGE_REFRESH_CHECK_APP_ONLY`: also get a token for app-only connections (a credential
    /// check) and warn about certificates expiring soon.
    pub check_app_only: bool,
    /// `SPBRIDGE_CERT_WARNING_DAYS`: warn when an app certificate expires within this.
    pub certificate_warning: Duration,
}

/// Names of every variable [`LifecycleConfig::from_lookup`] reads.
// Each constant is a variable\'s name; the README\'s configuration table says what it means.
#[allow(missing_docs)]
pub mod lifecycle_vars {
    pub const ALLOWED_HOSTS: &str = "SPBRIDGE_ALLOWED_HOSTS";
    pub const REFRESH_ACCESS_SKEW: &str = "SPBRIDGE_REFRESH_ACCESS_SKEW_SECS";
    pub const REFRESH_MAX_TOKEN_AGE: &str = "SPBRIDGE_REFRESH_MAX_TOKEN_AGE_SECS";
    pub const REFRESH_CONCURRENCY: &str = "SPBRIDGE_REFRESH_CONCURRENCY";
    pub const CHECK_APP_ONLY: &str = "SPBRIDGE_REFRESH_CHECK_APP_ONLY";
    pub const CERT_WARNING_DAYS: &str = "SPBRIDGE_CERT_WARNING_DAYS";
}

impl LifecycleConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads through `get`; empty values count as unset. Defaults: skew 600 s, age 7 days,
    /// concurrency 8, app-only check on, certificate warning 30 days.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        use lifecycle_vars as v;
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let concurrency = parse_num(&get, v::REFRESH_CONCURRENCY, 8)?;
        if concurrency == 0 || concurrency > 256 {
            return Err(ConfigError::Invalid {
                var: v::REFRESH_CONCURRENCY,
                reason: format!("{concurrency} is outside 1..=256"),
            });
        }
        let check_app_only = match get(v::CHECK_APP_ONLY)
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: v::CHECK_APP_ONLY,
                    reason: format!("{other:?} is not true or false"),
                });
            }
        };
        Ok(LifecycleConfig {
            allowed_hosts: get(v::ALLOWED_HOSTS)
                .map(|l| {
                    l.split([',', ' '])
                        .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            refresh_access_skew: Duration::from_secs(parse_num(&get, v::REFRESH_ACCESS_SKEW, 600)?),
            refresh_max_token_age: Duration::from_secs(parse_num(
                &get,
                v::REFRESH_MAX_TOKEN_AGE,
                7 * 86400,
            )?),
            refresh_concurrency: concurrency as usize,
            check_app_only,
            certificate_warning: Duration::from_secs(
                parse_num(&get, v::CERT_WARNING_DAYS, 30)?.saturating_mul(86400),
            ),
        })
    }
}

fn secret_dir(get: &impl Fn(&str) -> Option<String>) -> PathBuf {
    get(vars::SECRET_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".spbridge/secrets"))
}

fn parse_num(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
            var,
            reason: format!("{v:?} is not a whole number of seconds"),
        }),
    }
}

fn parse_base_url(var: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim().trim_end_matches('/')).map_err(|e| ConfigError::Invalid {
        var,
        reason: format!("{value:?} is not a URL: {e}"),
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("{value:?} must be an http(s) URL with a host"),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("{value:?} must not carry a query or fragment"),
        });
    }
    Ok(url)
}

/// Joins a base URL and a path without losing the base's own path.
///
/// `join_path("https://h/discovery", "v1.0/me/services")` is `https://h/discovery/v1.0/me/services`.
pub fn join_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_global_and_file_store_outside_lambda() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.cloud, Cloud::Global);
        assert_eq!(
            c.endpoints.login.as_str(),
            "https://login.microsoftonline.com/"
        );
        assert!(matches!(c.secrets.backend, SecretBackend::File { .. }));
        assert_eq!(c.secrets.app_secret, "spbridge/app");
        assert_eq!(c.secrets.state_key_secret, "spbridge/state-key");
        assert_eq!(c.secrets.not_found_ttl, Duration::from_secs(30));
        assert_eq!(
            c.secrets.connection_secret_name("x"),
            "spbridge/connections/x"
        );
    }

    #[test]
    fn lambda_defaults_to_secrets_manager() {
        let c = cfg(&[(vars::LAMBDA_FUNCTION_NAME, "f")]).unwrap();
        assert_eq!(c.secrets.backend, SecretBackend::Aws);
    }

    #[test]
    fn cloud_picks_sovereign_defaults_and_overrides_win() {
        let c = cfg(&[
            (vars::CLOUD, "usgov-high"),
            (vars::GRAPH_URL, "http://127.0.0.1:9000/graph/"),
        ])
        .unwrap();
        assert_eq!(
            c.endpoints.login.host_str(),
            Some("login.microsoftonline.us")
        );
        assert_eq!(c.endpoints.graph.as_str(), "http://127.0.0.1:9000/graph");
        let c = cfg(&[(vars::CLOUD, "china")]).unwrap();
        assert_eq!(
            c.endpoints.acs.host_str(),
            Some("accounts.accesscontrol.chinacloudapi.cn")
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let e = cfg(&[(vars::CLOUD, "mars")]).unwrap_err();
        assert!(e.to_string().contains("SPBRIDGE_CLOUD"), "{e}");
        let e = cfg(&[(vars::ACS_URL, "not a url")]).unwrap_err();
        assert!(e.to_string().contains("SPBRIDGE_ACS_URL"), "{e}");
        let e = cfg(&[(vars::HTTP_TIMEOUT, "soon")]).unwrap_err();
        assert!(e.to_string().contains("SPBRIDGE_HTTP_TIMEOUT_SECS"), "{e}");
        let e = cfg(&[(vars::SECRET_BACKEND, "vault")]).unwrap_err();
        assert!(e.to_string().contains("SPBRIDGE_SECRET_BACKEND"), "{e}");
        let e = cfg(&[(vars::LOGIN_URL, "ftp://x")]).unwrap_err();
        assert!(e.to_string().contains("SPBRIDGE_LOGIN_URL"), "{e}");
    }

    #[test]
    fn lifecycle_defaults_and_errors() {
        let c = LifecycleConfig::from_lookup(|_| None).unwrap();
        assert_eq!(c.refresh_concurrency, 8);
        assert_eq!(c.refresh_max_token_age, Duration::from_secs(7 * 86400));
        assert!(c.check_app_only && c.allowed_hosts.is_empty());
        let c = LifecycleConfig::from_lookup(|k| match k {
            lifecycle_vars::ALLOWED_HOSTS => Some("Api.Contoso.com, localhost:3000".into()),
            lifecycle_vars::CHECK_APP_ONLY => Some("off".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.allowed_hosts, ["api.contoso.com", "localhost:3000"]);
        assert!(!c.check_app_only);
        let e = LifecycleConfig::from_lookup(|k| {
            (k == lifecycle_vars::REFRESH_CONCURRENCY).then(|| "0".into())
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("SPBRIDGE_REFRESH_CONCURRENCY"),
            "{e}"
        );
    }

    #[test]
    fn join_path_keeps_base_path() {
        let base = Url::parse("https://h/discovery").unwrap();
        assert_eq!(
            join_path(&base, "/v1.0/me/services").as_str(),
            "https://h/discovery/v1.0/me/services"
        );
    }

    #[test]
    fn session_settings_default_to_s3_limits_and_refuse_what_s3_would() {
        let c = cfg(&[]).unwrap().ingest.sessions;
        assert_eq!(c, SessionSettings::default());
        assert_eq!(c.single_put_max_bytes, S3_MAX_PUT_BYTES);
        let c = cfg(&[
            ("SPBRIDGE_SESSION_SINGLE_PUT_MAX_BYTES", "8388608"),
            ("SPBRIDGE_SESSION_PART_BYTES", "5242880"),
            ("SPBRIDGE_SESSION_URL_SECS", "300"),
        ])
        .unwrap()
        .ingest
        .sessions;
        assert_eq!(c.part_bytes, S3_MIN_PART_BYTES);
        assert_eq!(c.url_ttl, Duration::from_secs(300));
        for (var, value) in [
            ("SPBRIDGE_SESSION_PART_BYTES", "1048576"),
            ("SPBRIDGE_SESSION_SINGLE_PUT_MAX_BYTES", "6442450944"),
            ("SPBRIDGE_SESSION_URL_SECS", "604801"),
            ("SPBRIDGE_SESSION_URL_SECS", "soon"),
        ] {
            let e = cfg(&[(var, value)]).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }
}
