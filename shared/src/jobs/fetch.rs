//! The worker's `source_url` download client: every name is resolved through a resolver that
//! drops the addresses [`source_ip_allowed`] refuses, so DNS cannot point a harmless-looking
//! name at the metadata service or a private network. Redirects are off: a redirect could
//! lead anywhere, and the receiver only checked the first URL.

use std::sync::Arc;

use crate::config::HttpConfig;
use crate::upload::source::source_ip_allowed;

/// What a refused resolution says (searched for in the error chain).
pub const FORBIDDEN_RESOLUTION: &str = "resolves only to forbidden addresses";

/// Resolves with the system resolver and keeps only allowed addresses.
struct GuardedResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| source_ip_allowed(a.ip(), allow))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} {FORBIDDEN_RESOLUTION}").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The guarded client: no redirects, the SSRF resolver, and only a read timeout (a large file
/// streams for minutes; a stalled one still ends).
pub fn source_client(http: &HttpConfig, allow_loopback: bool) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(http.connect_timeout)
        .read_timeout(http.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("spbridge/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver { allow_loopback }))
        .build()
        .map_err(|e| format!("cannot build the source_url client: {e}"))
}

/// Whether `e` failed because the name resolved only to forbidden addresses.
pub fn is_forbidden_resolution(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.to_string().contains(FORBIDDEN_RESOLUTION) {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve as _;

    #[tokio::test]
    async fn resolver_drops_forbidden_addresses() {
        let r = GuardedResolver {
            allow_loopback: false,
        };
        let err = match r.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must not resolve to an allowed address"),
            Err(e) => e,
        };
        assert!(is_forbidden_resolution(err.as_ref()));
        let r = GuardedResolver {
            allow_loopback: true,
        };
        assert!(r.resolve("localhost".parse().unwrap()).await.is_ok());
    }
}
