//! Microsoft identity platform (Entra ID, v2 endpoints).
//!
//! - Authorization code with PKCE (S256); the verifier is single-use and not `Clone`.
//! - Client credentials by secret or certificate (RS256 client assertion with `x5t#S256`).
//! - Refresh with rotation: the response's new refresh token goes back to the caller.
//! - Authorities `/common`, `/organizations`, `/consumers` or a tenant; `.default` scopes.

use std::{fmt, str::FromStr, time::Duration};

use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use url::Url;

use super::{
    error::IdentityError,
    request::{Field, HttpRequest, form},
    secret::{AuthCode, ClientAssertion, ClientSecret, RefreshToken},
};
use crate::config::{Endpoints, join_path};

/// `client_assertion_type` for a JWT client assertion.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a client assertion: short, it is used once right away.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Who may sign in: the path segment after the login host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Authority {
    /// Work/school and personal accounts.
    Common,
    /// Work/school accounts of any tenant.
    Organizations,
    /// Personal Microsoft accounts only.
    Consumers,
    /// One tenant (GUID or verified domain).
    Tenant(String),
}

impl Authority {
    /// The path segment.
    pub fn as_str(&self) -> &str {
        match self {
            Authority::Common => "common",
            Authority::Organizations => "organizations",
            Authority::Consumers => "consumers",
            Authority::Tenant(t) => t,
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Authority {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_matches('/');
        match s.to_ascii_lowercase().as_str() {
            "common" => Ok(Authority::Common),
            "organizations" => Ok(Authority::Organizations),
            "consumers" => Ok(Authority::Consumers),
            "" => Err(IdentityError::InvalidInput("empty authority".to_owned())),
            _ if s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
            {
                Ok(Authority::Tenant(s.to_ascii_lowercase()))
            }
            _ => Err(IdentityError::InvalidInput(format!(
                "{s:?} is not a tenant id or domain"
            ))),
        }
    }
}

/// `{login}/{authority}/oauth2/v2.0/token`.
pub fn token_url(endpoints: &Endpoints, authority: &Authority) -> Url {
    join_path(&endpoints.login, &format!("{authority}/oauth2/v2.0/token"))
}

/// `{login}/{authority}/oauth2/v2.0/authorize` (without query).
pub fn authorize_endpoint(endpoints: &Endpoints, authority: &Authority) -> Url {
    join_path(
        &endpoints.login,
        &format!("{authority}/oauth2/v2.0/authorize"),
    )
}

/// `https://{host}/.default`: every SharePoint permission the app was granted.
pub fn sharepoint_default_scope(site: &Url) -> Result<String, IdentityError> {
    let host = site
        .host_str()
        .ok_or_else(|| IdentityError::InvalidInput(format!("SharePoint URL {site} has no host")))?;
    Ok(match site.port() {
        Some(p) => format!("{}://{host}:{p}/.default", site.scheme()),
        None => format!("{}://{host}/.default", site.scheme()),
    })
}

/// `{graph}/.default`.
pub fn graph_default_scope(endpoints: &Endpoints) -> String {
    format!(
        "{}/.default",
        endpoints.graph.as_str().trim_end_matches('/')
    )
}

pub use super::secret::PkceVerifier;

/// An app certificate: the thumbprint and its RSA private key.
pub struct CertificateCredential {
    x5t_s256: String,
    key: jsonwebtoken::EncodingKey,
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("x5t#S256", &self.x5t_s256)
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

impl CertificateCredential {
    /// From a PEM certificate (the first `CERTIFICATE` block) and its RSA private key (PEM,
    /// PKCS#8 or PKCS#1).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let blocks = pem::parse_many(cert_pem)
            .map_err(|e| IdentityError::InvalidInput(format!("certificate PEM: {e}")))?;
        let der = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or_else(|| {
                IdentityError::InvalidInput(
                    "no CERTIFICATE block in the certificate PEM".to_owned(),
                )
            })?
            .contents();
        // The error from jsonwebtoken names the key format problem, never the key.
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).map_err(|e| {
            IdentityError::InvalidInput(format!("private key is not an RSA PEM key: {e}"))
        })?;
        Ok(CertificateCredential {
            x5t_s256: b64url(&Sha256::digest(der)),
            key,
        })
    }

    /// The `x5t#S256` thumbprint: base64url SHA-256 of the certificate DER.
    pub fn x5t_s256(&self) -> &str {
        &self.x5t_s256
    }

    /// A signed client assertion for `client_id` at `token_url`, valid from `now` for 10 minutes.
    pub fn assertion(
        &self,
        client_id: &str,
        token_url: &Url,
        now: OffsetDateTime,
    ) -> Result<ClientAssertion, IdentityError> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t_s256 = Some(self.x5t_s256.clone());
        let now = now.unix_timestamp();
        let claims = AssertionClaims {
            aud: token_url.as_str(),
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs() as i64,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(ClientAssertion::new)
            .map_err(|e| {
                IdentityError::InvalidInput(format!("could not sign the client assertion: {e}"))
            })
    }
}

/// How a confidential client proves itself.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// A public client (no secret; PKCE alone).
    Public,
    /// A client secret.
    Secret(ClientSecret),
    /// A certificate: each request carries a fresh signed assertion.
    Certificate(std::sync::Arc<CertificateCredential>),
}

fn push_client_auth(
    fields: &mut Vec<(String, Field)>,
    auth: &ClientAuth,
    client_id: &str,
    token_url: &Url,
    now: OffsetDateTime,
) -> Result<(), IdentityError> {
    match auth {
        ClientAuth::Public => {}
        ClientAuth::Secret(s) => {
            fields.push(("client_secret".into(), Field::secret(s.expose_secret())))
        }
        ClientAuth::Certificate(c) => {
            let a = c.assertion(client_id, token_url, now)?;
            fields.push(("client_assertion_type".into(), JWT_BEARER_ASSERTION.into()));
            fields.push(("client_assertion".into(), Field::secret(a.expose_secret())));
        }
    }
    Ok(())
}

/// The authorize URL for the code flow with PKCE S256 (`response_mode=query`).
pub fn authorize_url(
    endpoints: &Endpoints,
    authority: &Authority,
    client_id: &str,
    redirect_uri: &Url,
    scopes: &[&str],
    state: &str,
    code_challenge: &str,
) -> Url {
    let mut url = authorize_endpoint(endpoints, authority);
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri.as_str())
        .append_pair("response_mode", "query")
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", state)
        .append_pair("code_challenge", code_challenge)
        .append_pair("code_challenge_method", "S256")
        // The user picks the account, so single sign-on cannot bind someone silently.
        .append_pair("prompt", "select_account");
    url
}

/// Redeems an authorization code with its PKCE verifier.
#[allow(clippy::too_many_arguments)]
pub fn code_request(
    endpoints: &Endpoints,
    authority: &Authority,
    client_id: &str,
    auth: &ClientAuth,
    code: &AuthCode,
    redirect_uri: &Url,
    scopes: &[&str],
    verifier: &PkceVerifier,
    now: OffsetDateTime,
) -> Result<HttpRequest, IdentityError> {
    let url = token_url(endpoints, authority);
    let mut fields = form([
        ("client_id", client_id.into()),
        ("grant_type", "authorization_code".into()),
        ("scope", scopes.join(" ").into()),
        ("code", Field::secret(code.expose_secret())),
        ("redirect_uri", redirect_uri.as_str().into()),
        ("code_verifier", Field::secret(verifier.expose_secret())),
    ]);
    push_client_auth(&mut fields, auth, client_id, &url, now)?;
    Ok(HttpRequest::post_form(url, fields))
}

/// App-only token (client credentials) for one `.default` scope. Needs a tenant authority.
pub fn client_credentials_request(
    endpoints: &Endpoints,
    tenant: &Authority,
    client_id: &str,
    auth: &ClientAuth,
    scope: &str,
    now: OffsetDateTime,
) -> Result<HttpRequest, IdentityError> {
    if !matches!(tenant, Authority::Tenant(_)) {
        return Err(IdentityError::InvalidInput(format!(
            "client credentials need a tenant authority, not /{tenant}"
        )));
    }
    if matches!(auth, ClientAuth::Public) {
        return Err(IdentityError::InvalidInput(
            "client credentials need a client secret or certificate".to_owned(),
        ));
    }
    let url = token_url(endpoints, tenant);
    let mut fields = form([
        ("client_id", client_id.into()),
        ("grant_type", "client_credentials".into()),
        ("scope", scope.into()),
    ]);
    push_client_auth(&mut fields, auth, client_id, &url, now)?;
    Ok(HttpRequest::post_form(url, fields))
}

/// Redeems a refresh token. The response's `refresh_token` replaces this one (rotation).
pub fn refresh_request(
    endpoints: &Endpoints,
    authority: &Authority,
    client_id: &str,
    auth: &ClientAuth,
    refresh_token: &RefreshToken,
    scopes: &[&str],
    now: OffsetDateTime,
) -> Result<HttpRequest, IdentityError> {
    let url = token_url(endpoints, authority);
    let mut fields = form([
        ("client_id", client_id.into()),
        ("grant_type", "refresh_token".into()),
        ("scope", scopes.join(" ").into()),
        (
            "refresh_token",
            Field::secret(refresh_token.expose_secret()),
        ),
    ]);
    push_client_auth(&mut fields, auth, client_id, &url, now)?;
    Ok(HttpRequest::post_form(url, fields))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use super::*;
    use crate::{
        config::Cloud,
        identity::{request::send_token, testserver},
    };

    const TENANT: &str = "f645ad92-e38d-4d1a-b510-d1b09a74a8ca";
    const CLIENT: &str = "b6c69a37-df96-4db0-9088-2ab96e1d8215";

    fn eps() -> Endpoints {
        Endpoints::for_cloud(Cloud::Global)
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/identity/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn cert() -> CertificateCredential {
        CertificateCredential::from_pem(
            &fixture("test-client-assertion.cert.pem"),
            &fixture("test-client-assertion.key.pem"),
        )
        .unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn urls_and_scopes() {
        let t = Authority::Tenant(TENANT.into());
        assert_eq!(
            token_url(&eps(), &t).as_str(),
            format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
        );
        assert_eq!(
            token_url(&eps(), &Authority::Consumers).as_str(),
            "https://login.microsoftonline.com/consumers/oauth2/v2.0/token"
        );
        assert_eq!(
            authorize_endpoint(&eps(), &Authority::Organizations).as_str(),
            "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize"
        );
        assert_eq!("Common".parse::<Authority>().unwrap(), Authority::Common);
        assert_eq!(
            "contoso.onmicrosoft.com".parse::<Authority>().unwrap(),
            Authority::Tenant("contoso.onmicrosoft.com".into())
        );
        assert!("a/b".parse::<Authority>().is_err() && "".parse::<Authority>().is_err());
        let site = Url::parse("https://contoso.sharepoint.com/sites/x").unwrap();
        assert_eq!(
            sharepoint_default_scope(&site).unwrap(),
            "https://contoso.sharepoint.com/.default"
        );
        assert_eq!(
            graph_default_scope(&eps()),
            "https://graph.microsoft.com/.default"
        );
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let v = PkceVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into()).unwrap();
        assert_eq!(v.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let g = PkceVerifier::generate();
        assert_eq!(g.expose_secret().len(), 43);
        assert_ne!(g.expose_secret(), PkceVerifier::generate().expose_secret());
        assert_eq!(format!("{g:?}"), "PkceVerifier([redacted])");
        assert!(PkceVerifier::new("short".into()).is_err());
        assert!(PkceVerifier::new("x".repeat(42) + "!").is_err());
    }

    #[test]
    fn authorize_url_is_exact() {
        let v = PkceVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into()).unwrap();
        let url = authorize_url(
            &eps(),
            &Authority::Organizations,
            CLIENT,
            &Url::parse("https://app.example/cb").unwrap(),
            &[
                "offline_access",
                "https://contoso.sharepoint.com/AllSites.Write",
            ],
            "st",
            &v.challenge(),
        );
        assert_eq!(url.path(), "/organizations/oauth2/v2.0/authorize");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], CLIENT);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], "https://app.example/cb");
        assert_eq!(
            q["scope"],
            "offline_access https://contoso.sharepoint.com/AllSites.Write"
        );
        assert_eq!(q["state"], "st");
        assert_eq!(
            q["code_challenge"],
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["prompt"], "select_account", "the user picks the account");
        assert!(!url.as_str().contains("dBjftJeZ"));
    }

    #[test]
    fn code_request_with_secret_and_pkce() {
        let v = PkceVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into()).unwrap();
        let r = code_request(
            &eps(),
            &Authority::Common,
            CLIENT,
            &ClientAuth::Secret(ClientSecret::new("cs")),
            &AuthCode::new("code-1"),
            &Url::parse("https://app.example/cb").unwrap(),
            &["offline_access", "Files.ReadWrite.All"],
            &v,
            now(),
        )
        .unwrap();
        assert_eq!(r.method, reqwest::Method::POST);
        assert_eq!(
            r.url.as_str(),
            "https://login.microsoftonline.com/common/oauth2/v2.0/token"
        );
        assert_eq!(
            r.form_names(),
            [
                "client_id",
                "grant_type",
                "scope",
                "code",
                "redirect_uri",
                "code_verifier",
                "client_secret"
            ]
        );
        assert_eq!(r.form_value("grant_type"), Some("authorization_code"));
        assert_eq!(
            r.form_value("code_verifier"),
            Some("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        );
        assert_eq!(
            r.form_value("scope"),
            Some("offline_access Files.ReadWrite.All")
        );
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("dBjftJeZ") && !dbg.contains("code-1") && !dbg.contains("\"cs\""),
            "{dbg}"
        );
    }

    #[test]
    fn client_credentials_with_certificate_assertion_verifies() {
        let cert = Arc::new(cert());
        assert_eq!(
            cert.x5t_s256(),
            "5t0v1cDmXCZOJBnkAvGyKf7qxrlb5LilMQoXORk72HY"
        );
        let t = Authority::Tenant(TENANT.into());
        let scope = graph_default_scope(&eps());
        let r = client_credentials_request(
            &eps(),
            &t,
            CLIENT,
            &ClientAuth::Certificate(cert.clone()),
            &scope,
            now(),
        )
        .unwrap();
        assert_eq!(
            r.form_names(),
            [
                "client_id",
                "grant_type",
                "scope",
                "client_assertion_type",
                "client_assertion"
            ]
        );
        assert_eq!(r.form_value("grant_type"), Some("client_credentials"));
        assert_eq!(
            r.form_value("scope"),
            Some("https://graph.microsoft.com/.default")
        );
        assert_eq!(
            r.form_value("client_assertion_type"),
            Some(JWT_BEARER_ASSERTION)
        );
        let assertion = r.form_value("client_assertion").unwrap();

        // Verify with the public key from the test key pair.
        let header = jsonwebtoken::decode_header(assertion).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(
            header.x5t_s256.as_deref(),
            Some("5t0v1cDmXCZOJBnkAvGyKf7qxrlb5LilMQoXORk72HY")
        );
        let key =
            jsonwebtoken::DecodingKey::from_rsa_pem(&fixture("test-client-assertion.pub.pem"))
                .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[r.url.as_str()]);
        v.set_issuer(&[CLIENT]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v).unwrap();
        let c = data.claims;
        assert_eq!(c["sub"], CLIENT);
        assert_eq!(
            c["aud"],
            format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
        );
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
        assert_eq!(c["nbf"], c["iat"]);
        let jti = c["jti"].as_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&jti).is_ok());

        // A second assertion has a fresh jti.
        let r2 = client_credentials_request(
            &eps(),
            &t,
            CLIENT,
            &ClientAuth::Certificate(cert.clone()),
            &scope,
            now(),
        )
        .unwrap();
        let c2 = jsonwebtoken::decode::<serde_json::Value>(
            r2.form_value("client_assertion").unwrap(),
            &key,
            &v,
        )
        .unwrap()
        .claims;
        assert_ne!(c2["jti"].as_str().unwrap(), jti);

        // Another key does not verify it (the test can fail).
        let other = jsonwebtoken::DecodingKey::from_secret(b"x");
        assert!(jsonwebtoken::decode::<serde_json::Value>(assertion, &other, &v).is_err());
        assert!(!format!("{r:?}").contains(assertion) && !format!("{cert:?}").contains("PRIVATE"));
    }

    #[test]
    fn client_credentials_rules() {
        let s = ClientAuth::Secret(ClientSecret::new("cs"));
        for a in [
            Authority::Common,
            Authority::Organizations,
            Authority::Consumers,
        ] {
            assert!(matches!(
                client_credentials_request(&eps(), &a, CLIENT, &s, "x/.default", now()),
                Err(IdentityError::InvalidInput(_))
            ));
        }
        let t = Authority::Tenant(TENANT.into());
        assert!(
            client_credentials_request(
                &eps(),
                &t,
                CLIENT,
                &ClientAuth::Public,
                "x/.default",
                now()
            )
            .is_err()
        );
        let r = client_credentials_request(
            &eps(),
            &t,
            CLIENT,
            &s,
            "https://contoso.sharepoint.com/.default",
            now(),
        )
        .unwrap();
        assert_eq!(
            r.form_names(),
            ["client_id", "grant_type", "scope", "client_secret"]
        );
        assert_eq!(r.form_value("client_secret"), Some("cs"));
    }

    #[test]
    fn bad_key_material_is_an_input_error() {
        assert!(
            CertificateCredential::from_pem(b"nope", &fixture("test-client-assertion.key.pem"))
                .is_err()
        );
        assert!(
            CertificateCredential::from_pem(
                &fixture("test-client-assertion.key.pem"),
                &fixture("test-client-assertion.key.pem")
            )
            .is_err()
        );
        assert!(
            CertificateCredential::from_pem(
                &fixture("test-client-assertion.cert.pem"),
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn refresh_rotates_the_refresh_token() {
        let server = testserver::start(Duration::ZERO, |_, _| {
            (200, vec![], r#"{"token_type":"Bearer","scope":"Files.ReadWrite.All","expires_in":3600,"ext_expires_in":3600,"access_token":"at-2","refresh_token":"rt-2"}"#.into())
        })
        .await;
        let mut e = eps();
        e.login = server.url.clone();
        let req = refresh_request(
            &e,
            &Authority::Consumers,
            CLIENT,
            &ClientAuth::Public,
            &RefreshToken::new("rt-1"),
            &["offline_access", "Files.ReadWrite.All"],
            now(),
        )
        .unwrap();
        assert_eq!(
            req.form_names(),
            ["client_id", "grant_type", "scope", "refresh_token"]
        );
        let t = send_token(&testserver::client(), &req, &Default::default())
            .await
            .unwrap();
        assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt-2");
        let seen = &server.requests()[0];
        assert_eq!(seen.path(), "/consumers/oauth2/v2.0/token");
        assert_eq!(seen.form_value("refresh_token").as_deref(), Some("rt-1"));
    }
}
