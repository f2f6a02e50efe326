//! One call for "give me a token": what the upload and callback code use.
//!
//! ```no_run
//! # async fn f(http: reqwest::Client, eps: shared::config::Endpoints) -> Result<(), shared::identity::IdentityError> {
//! use shared::identity::{ClientSecret, TokenCache, TokenSource, entra::Authority};
//! let cache = TokenCache::default(); // once per cold start
//! let source = TokenSource::EntraSecret {
//!     tenant: "contoso.onmicrosoft.com".parse()?,
//!     client_id: "app-id".into(),
//!     secret: ClientSecret::new("from the secret store"),
//! };
//! let token = source.token(&http, &eps, &cache, "https://contoso.sharepoint.com/.default", false).await?;
//! // After a 401 from SharePoint: `force = true` renews once, shared with concurrent callers.
//! # Ok(()) }
//! ```
//!
//! What `resource_or_scope` means per source:
//! - `EntraCertificate`, `EntraSecret`: one `.default` scope (see [`entra::sharepoint_default_scope`]).
//! - `AcsAppOnly` and `RefreshToken { provider: Acs, .. }`: the SharePoint site URL; the realm is
//!   discovered from it (and cached) when not configured.
//! - `RefreshToken { provider: AadV1, .. }`: the resource URI (e.g. a Discovery `serviceResourceId`).
//! - `RefreshToken { provider: Entra, .. }`: space-separated scopes.
//! - `RefreshToken { provider: Msa, .. }`: ignored by login.live.com (scopes were fixed at
//!   consent); it only names the cache entry.
//!
//! Refresh tokens rotate: when the returned [`Token::refresh_token`] is `Some`, persist it.

use std::sync::Arc;

use time::OffsetDateTime;
use url::Url;

use super::{
    aad_v1, acs,
    cache::{CacheKey, TokenCache},
    entra::{self, Authority, CertificateCredential, ClientAuth},
    error::IdentityError,
    msa,
    request::send_token,
    secret::{ClientSecret, RefreshToken},
    token::Token,
};
use crate::config::Endpoints;

/// Which identity system issued a refresh token.
#[derive(Debug, Clone)]
pub enum RefreshProvider {
    /// Azure AD v1, redeemed at the user's tenant.
    AadV1 {
        /// Tenant id (from the first token's `tid`).
        tenant: String,
    },
    /// Microsoft identity platform v2.
    Entra {
        /// Authority the token was issued by.
        authority: Authority,
    },
    /// Microsoft account (login.live.com).
    Msa {
        /// The app's registered redirect URI (login.live.com wants it on refresh).
        redirect_uri: Url,
    },
    /// SharePoint ACS (a user+add-in token).
    Acs {
        /// The tenant realm, if known; else discovered from the site.
        realm: Option<acs::Realm>,
    },
}

/// A credential that can produce access tokens. `Debug` redacts every secret.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// Entra app-only with a certificate (the recommended SharePoint app-only setup).
    EntraCertificate {
        /// Tenant authority.
        tenant: Authority,
        /// Application id.
        client_id: String,
        /// Certificate and private key.
        cert: Arc<CertificateCredential>,
    },
    /// Entra app-only with a client secret (Graph; SharePoint REST rejects these tokens).
    EntraSecret {
        /// Tenant authority.
        tenant: Authority,
        /// Application id.
        client_id: String,
        /// Client secret.
        secret: ClientSecret,
    },
    /// SharePoint add-in app-only through ACS.
    AcsAppOnly {
        /// Tenant realm, if configured; else discovered per site.
        realm: Option<acs::Realm>,
        /// Add-in client id.
        client_id: String,
        /// Add-in client secret.
        secret: ClientSecret,
    },
    /// A stored user connection.
    RefreshToken {
        /// Who issued it.
        provider: RefreshProvider,
        /// Client id.
        client_id: String,
        /// Client secret (needed by ACS, AAD v1 and confidential v2/MSA apps).
        client_secret: Option<ClientSecret>,
        /// The refresh token.
        refresh_token: RefreshToken,
        /// Names the user's cache entry (e.g. the connection id), so a rotated refresh token
        /// still finds the access token cached under the previous one.
        connection: String,
    },
}

impl TokenSource {
    /// An Entra certificate source from PEM text.
    pub fn entra_certificate(
        tenant: Authority,
        client_id: impl Into<String>,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, IdentityError> {
        Ok(TokenSource::EntraCertificate {
            tenant,
            client_id: client_id.into(),
            cert: Arc::new(CertificateCredential::from_pem(cert_pem, key_pem)?),
        })
    }

    /// A token for `resource_or_scope` (see the module docs), from `cache` unless stale or
    /// `force`d. Concurrent callers for the same key share one request.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        endpoints: &Endpoints,
        cache: &TokenCache,
        resource_or_scope: &str,
        force: bool,
    ) -> Result<Token, IdentityError> {
        let key = self.cache_key(endpoints, resource_or_scope)?;
        cache
            .get_or_fetch(&key, force, || {
                self.fetch(http, endpoints, cache, resource_or_scope)
            })
            .await
    }

    /// The cache entry this source uses for `resource_or_scope`.
    pub fn cache_key(
        &self,
        endpoints: &Endpoints,
        resource_or_scope: &str,
    ) -> Result<CacheKey, IdentityError> {
        let login = endpoints.login.as_str().trim_end_matches('/');
        let (authority, client_id, target, user) = match self {
            TokenSource::EntraCertificate {
                tenant, client_id, ..
            }
            | TokenSource::EntraSecret {
                tenant, client_id, ..
            } => (
                format!("{login}/{tenant}"),
                client_id,
                resource_or_scope.to_owned(),
                None,
            ),
            TokenSource::AcsAppOnly { client_id, .. } => (
                "acs".to_owned(),
                client_id,
                site_host(resource_or_scope)?,
                None,
            ),
            TokenSource::RefreshToken {
                provider,
                client_id,
                connection,
                ..
            } => {
                let user = Some(connection.clone());
                let (authority, target) = match provider {
                    RefreshProvider::AadV1 { tenant } => {
                        (format!("{login}/{tenant}"), resource_or_scope.to_owned())
                    }
                    RefreshProvider::Entra { authority } => (
                        format!("{login}/{authority}/v2.0"),
                        resource_or_scope.to_owned(),
                    ),
                    RefreshProvider::Msa { .. } => (
                        endpoints.live.as_str().trim_end_matches('/').to_owned(),
                        resource_or_scope.to_owned(),
                    ),
                    RefreshProvider::Acs { .. } => {
                        ("acs".to_owned(), site_host(resource_or_scope)?)
                    }
                };
                (authority, client_id, target, user)
            }
        };
        Ok(CacheKey {
            authority,
            client_id: client_id.clone(),
            target,
            user,
        })
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        endpoints: &Endpoints,
        cache: &TokenCache,
        resource_or_scope: &str,
    ) -> Result<Token, IdentityError> {
        let now = OffsetDateTime::now_utc();
        let policy = &cache.retry;
        match self {
            TokenSource::EntraCertificate { .. } | TokenSource::EntraSecret { .. } => {
                let (tenant, client_id, auth) = match self {
                    TokenSource::EntraCertificate {
                        tenant,
                        client_id,
                        cert,
                    } => (tenant, client_id, ClientAuth::Certificate(cert.clone())),
                    TokenSource::EntraSecret {
                        tenant,
                        client_id,
                        secret,
                    } => (tenant, client_id, ClientAuth::Secret(secret.clone())),
                    _ => return Err(IdentityError::InvalidInput("not an Entra app".into())),
                };
                let req = entra::client_credentials_request(
                    endpoints,
                    tenant,
                    client_id,
                    &auth,
                    resource_or_scope,
                    now,
                )?;
                send_token(http, &req, policy).await
            }
            TokenSource::AcsAppOnly {
                realm,
                client_id,
                secret,
            } => {
                let site = parse_site(resource_or_scope)?;
                let app = acs::AcsApp {
                    client_id: client_id.clone(),
                    secret: secret.clone(),
                };
                acs::app_only_token(
                    http,
                    endpoints,
                    &app,
                    &site,
                    realm.as_ref(),
                    &cache.realms,
                    policy,
                )
                .await
            }
            TokenSource::RefreshToken {
                provider,
                client_id,
                client_secret,
                refresh_token,
                ..
            } => {
                let need_secret = || {
                    client_secret.clone().ok_or_else(|| {
                        IdentityError::InvalidInput(
                            "this refresh token needs the app's client secret".to_owned(),
                        )
                    })
                };
                let req = match provider {
                    RefreshProvider::AadV1 { tenant } => {
                        let app = aad_v1::AadApp {
                            client_id: client_id.clone(),
                            secret: need_secret()?,
                        };
                        aad_v1::refresh_request(
                            endpoints,
                            tenant,
                            &app,
                            refresh_token,
                            resource_or_scope,
                        )
                    }
                    RefreshProvider::Entra { authority } => {
                        let auth = client_secret
                            .clone()
                            .map_or(ClientAuth::Public, ClientAuth::Secret);
                        let scopes: Vec<&str> = resource_or_scope.split_whitespace().collect();
                        entra::refresh_request(
                            endpoints,
                            authority,
                            client_id,
                            &auth,
                            refresh_token,
                            &scopes,
                            now,
                        )?
                    }
                    RefreshProvider::Msa { redirect_uri } => {
                        let app = msa::MsaApp {
                            client_id: client_id.clone(),
                            secret: client_secret.clone(),
                        };
                        msa::refresh_request(endpoints, &app, refresh_token, redirect_uri)
                    }
                    RefreshProvider::Acs { realm } => {
                        let site = parse_site(resource_or_scope)?;
                        let realm = match realm {
                            Some(r) => r.clone(),
                            None => {
                                acs::discover_realm(http, &site, &cache.realms, policy)
                                    .await?
                                    .realm
                            }
                        };
                        let app = acs::AcsApp {
                            client_id: client_id.clone(),
                            secret: need_secret()?,
                        };
                        let host = acs::principal_host(&site)?;
                        acs::refresh_request(
                            endpoints,
                            &app,
                            &realm,
                            &host,
                            acs::SHAREPOINT_PRINCIPAL,
                            refresh_token,
                        )
                    }
                };
                send_token(http, &req, policy).await
            }
        }
    }
}

fn parse_site(s: &str) -> Result<Url, IdentityError> {
    let url = Url::parse(s).map_err(|e| {
        IdentityError::InvalidInput(format!("{s:?} is not a SharePoint site URL: {e}"))
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(IdentityError::InvalidInput(format!(
            "{s:?} is not an http(s) SharePoint site URL"
        )));
    }
    Ok(url)
}

fn site_host(s: &str) -> Result<String, IdentityError> {
    acs::principal_host(&parse_site(s)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{config::Cloud, identity::testserver};

    const REALM: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";

    fn eps_at(server: &testserver::TestServer) -> Endpoints {
        let mut e = Endpoints::for_cloud(Cloud::Global);
        e.login = server.url.clone();
        e.acs = server.url.clone();
        e.live = server.url.clone();
        e
    }

    fn pem(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/identity/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn entra_secret_is_cached_and_force_renews() {
        let server = testserver::start(Duration::ZERO, |n, _| {
            (
                200,
                vec![],
                testserver::token_body(&format!("at-{n}"), 3600),
            )
        })
        .await;
        let eps = eps_at(&server);
        let cache = TokenCache::default();
        let http = testserver::client();
        let s = TokenSource::EntraSecret {
            tenant: "t1".parse().unwrap(),
            client_id: "cid".into(),
            secret: ClientSecret::new("cs"),
        };
        let scope = "https://contoso.sharepoint.com/.default";
        let a = s.token(&http, &eps, &cache, scope, false).await.unwrap();
        let b = s.token(&http, &eps, &cache, scope, false).await.unwrap();
        assert_eq!(
            (
                a.access_token.expose_secret(),
                b.access_token.expose_secret()
            ),
            ("at-0", "at-0")
        );
        let c = s.token(&http, &eps, &cache, scope, true).await.unwrap();
        assert_eq!(c.access_token.expose_secret(), "at-1");
        assert_eq!(server.hits(), 2);
        let r = &server.requests()[0];
        assert_eq!(r.path(), "/t1/oauth2/v2.0/token");
        assert_eq!(
            r.form_value("grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(r.form_value("scope").as_deref(), Some(scope));
    }

    #[tokio::test]
    async fn entra_certificate_sends_an_assertion() {
        let server = testserver::start(Duration::ZERO, |_, _| {
            (200, vec![], testserver::token_body("at", 3600))
        })
        .await;
        let s = TokenSource::entra_certificate(
            "t1".parse().unwrap(),
            "cid",
            &pem("test-client-assertion.cert.pem"),
            &pem("test-client-assertion.key.pem"),
        )
        .unwrap();
        s.token(
            &testserver::client(),
            &eps_at(&server),
            &TokenCache::default(),
            "https://graph.microsoft.com/.default",
            false,
        )
        .await
        .unwrap();
        let r = &server.requests()[0];
        assert_eq!(
            r.form_value("client_assertion_type").as_deref(),
            Some(entra::JWT_BEARER_ASSERTION)
        );
        let h = jsonwebtoken::decode_header(r.form_value("client_assertion").unwrap()).unwrap();
        assert_eq!(
            h.x5t_s256.as_deref(),
            Some("5t0v1cDmXCZOJBnkAvGyKf7qxrlb5LilMQoXORk72HY")
        );
    }

    #[tokio::test]
    async fn acs_app_only_discovers_realm_from_the_site() {
        let server = testserver::start(Duration::ZERO, |_, req| {
            if req.path().ends_with("/_vti_bin/client.svc") {
                (
                    401,
                    vec![(
                        "WWW-Authenticate",
                        format!(
                            r#"Bearer realm="{REALM}",client_id="{}""#,
                            acs::SHAREPOINT_PRINCIPAL
                        ),
                    )],
                    String::new(),
                )
            } else {
                (200, vec![], testserver::token_body("acs-at", 3600))
            }
        })
        .await;
        let eps = eps_at(&server);
        let site = server.url.join("/sites/team").unwrap();
        let s = TokenSource::AcsAppOnly {
            realm: None,
            client_id: "cid".into(),
            secret: ClientSecret::new("cs"),
        };
        let t = s
            .token(
                &testserver::client(),
                &eps,
                &TokenCache::default(),
                site.as_str(),
                false,
            )
            .await
            .unwrap();
        assert_eq!(t.access_token.expose_secret(), "acs-at");
        let reqs = server.requests();
        assert_eq!(reqs[1].path(), format!("/{REALM}/tokens/OAuth/2"));
        assert_eq!(
            reqs[1].form_value("client_id"),
            Some(format!("cid@{REALM}"))
        );
        let e = s
            .token(
                &testserver::client(),
                &eps,
                &TokenCache::default(),
                "not a url",
                false,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, IdentityError::InvalidInput(_)));
    }

    #[tokio::test]
    async fn refresh_sources_rotate_and_key_per_user() {
        let server = testserver::start(Duration::ZERO, |n, req| {
            let rt = req.form_value("refresh_token").unwrap_or_default();
            (200, vec![], serde_json::json!({"token_type": "bearer", "expires_in": 3600, "access_token": format!("at-{n}"), "refresh_token": format!("{rt}-next")}).to_string())
        })
        .await;
        let eps = eps_at(&server);
        let cache = TokenCache::default();
        let http = testserver::client();
        let msa = |rt: &str, conn: &str| TokenSource::RefreshToken {
            provider: RefreshProvider::Msa {
                redirect_uri: Url::parse("https://app.example/cb").unwrap(),
            },
            client_id: "cid".into(),
            client_secret: None,
            refresh_token: RefreshToken::new(rt),
            connection: conn.into(),
        };
        let a = msa("rt-a", "conn-a")
            .token(&http, &eps, &cache, "onedrive.readwrite", false)
            .await
            .unwrap();
        let b = msa("rt-b", "conn-b")
            .token(&http, &eps, &cache, "onedrive.readwrite", false)
            .await
            .unwrap();
        assert_eq!(
            a.refresh_token.as_ref().unwrap().expose_secret(),
            "rt-a-next"
        );
        assert_eq!(b.refresh_token.unwrap().expose_secret(), "rt-b-next");
        assert_eq!(server.hits(), 2);
        // The rotated token of the same connection finds the cached access token.
        let again = msa("rt-a-next", "conn-a")
            .token(&http, &eps, &cache, "onedrive.readwrite", false)
            .await
            .unwrap();
        assert_eq!(
            again.access_token.expose_secret(),
            a.access_token.expose_secret()
        );
        assert_eq!(server.hits(), 2);
        // After a 401 the caller forces a renewal with the newest refresh token.
        msa("rt-a-next", "conn-a")
            .token(&http, &eps, &cache, "onedrive.readwrite", true)
            .await
            .unwrap();
        assert_eq!(
            server.requests()[2].form_value("refresh_token").as_deref(),
            Some("rt-a-next")
        );
        assert_eq!(server.requests()[0].path(), "/oauth20_token.srf");

        let v1 = TokenSource::RefreshToken {
            provider: RefreshProvider::AadV1 {
                tenant: "t9".into(),
            },
            client_id: "cid".into(),
            client_secret: None,
            refresh_token: RefreshToken::new("rt"),
            connection: "c1".into(),
        };
        let e = v1
            .token(
                &http,
                &eps,
                &cache,
                "https://contoso-my.sharepoint.com/",
                false,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, IdentityError::InvalidInput(_)));

        let acs_rt = TokenSource::RefreshToken {
            provider: RefreshProvider::Acs {
                realm: Some(acs::Realm::parse(REALM).unwrap()),
            },
            client_id: "cid".into(),
            client_secret: Some(ClientSecret::new("cs")),
            refresh_token: RefreshToken::new("rt-acs"),
            connection: "c2".into(),
        };
        acs_rt
            .token(
                &http,
                &eps,
                &cache,
                "https://contoso.sharepoint.com/sites/a",
                false,
            )
            .await
            .unwrap();
        let r = server.requests().pop().unwrap();
        assert_eq!(
            r.form_value("resource"),
            Some(format!(
                "{}/contoso.sharepoint.com@{REALM}",
                acs::SHAREPOINT_PRINCIPAL
            ))
        );
    }

    #[test]
    fn debug_of_every_source_is_redacted() {
        let sources = [
            TokenSource::entra_certificate(
                Authority::Tenant("t".into()),
                "cid",
                &pem("test-client-assertion.cert.pem"),
                &pem("test-client-assertion.key.pem"),
            )
            .unwrap(),
            TokenSource::EntraSecret {
                tenant: Authority::Tenant("t".into()),
                client_id: "cid".into(),
                secret: ClientSecret::new("SECRET-1"),
            },
            TokenSource::AcsAppOnly {
                realm: None,
                client_id: "cid".into(),
                secret: ClientSecret::new("SECRET-2"),
            },
            TokenSource::RefreshToken {
                provider: RefreshProvider::Entra {
                    authority: Authority::Common,
                },
                client_id: "cid".into(),
                client_secret: Some(ClientSecret::new("SECRET-3")),
                refresh_token: RefreshToken::new("SECRET-4"),
                connection: "c3".into(),
            },
        ];
        for s in &sources {
            let d = format!("{s:?}");
            assert!(
                !d.contains("SECRET") && !d.contains("PRIVATE") && d.contains("[redacted]"),
                "{d}"
            );
        }
    }
}
