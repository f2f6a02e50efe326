//! The one outbound HTTP client, built once per cold start.

use std::time::Duration;

use time::{OffsetDateTime, macros::format_description};

use crate::config::HttpConfig;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("cannot read extra CA file {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("extra CA file {path} holds no usable PEM certificate: {reason}")]
    BadCa { path: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Builds the shared `reqwest::Client`: timeouts set, redirects off (OAuth endpoints answer with
/// redirects that must be seen, not followed), and the optional extra CA trusted.
pub fn build_client(cfg: &HttpConfig) -> Result<reqwest::Client, HttpClientError> {
    let mut builder = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("spbridge/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cfg.extra_ca_pem {
        let pem = std::fs::read(path).map_err(|source| HttpClientError::ReadCa {
            path: path.display().to_string(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| HttpClientError::BadCa {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| HttpClientError::Build(e.to_string()))
}

/// Parses `Retry-After`: delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, relative to `now`; a past date means "now").
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fmt = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, &fmt)
        .ok()?
        .assume_utc();
    let delta = at - now;
    Some(if delta.is_negative() {
        Duration::ZERO
    } else {
        delta.unsigned_abs()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = datetime!(2015-10-21 07:27:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
