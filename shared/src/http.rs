//! The one outbound HTTP client, built once per cold start.

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
