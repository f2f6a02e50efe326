//! Azure AD v1 multi-tenant apps with the Office 365 Discovery service.
//!
//! The classic OneDrive for Business flow: sign in at `/common` for the Discovery resource,
//! list the user's services, then redeem the same (multi-resource) refresh token for each
//! service's resource at the tenant's own authority.

use serde::Deserialize;
use url::Url;

use super::{
    error::IdentityError,
    request::{self, Field, HttpRequest, RetryPolicy},
    secret::{AuthCode, ClientSecret, RefreshToken},
    token::Token,
};
use crate::config::{Endpoints, join_path};

/// The `prompt` parameter of the authorize request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// Force credentials.
    Login,
    /// Let the user pick the account (sign-ins of delegated connections).
    SelectAccount,
    /// Force the consent page.
    Consent,
    /// Ask a tenant admin to consent for everyone.
    AdminConsent,
    /// No interaction; fail if any is needed.
    None,
}

impl Prompt {
    /// Wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Prompt::Login => "login",
            Prompt::SelectAccount => "select_account",
            Prompt::Consent => "consent",
            Prompt::AdminConsent => "admin_consent",
            Prompt::None => "none",
        }
    }
}

/// A v1 web app registration.
#[derive(Debug, Clone)]
pub struct AadApp {
    /// Application (client) id.
    pub client_id: String,
    /// Client secret.
    pub secret: ClientSecret,
}

/// `{login}/common/oauth2/authorize?client_id&response_type=code&redirect_uri&resource&state[&prompt]`.
pub fn authorize_url(
    endpoints: &Endpoints,
    client_id: &str,
    resource: &str,
    redirect_uri: &Url,
    state: &str,
    prompt: Option<Prompt>,
) -> Url {
    let mut url = join_path(&endpoints.login, "common/oauth2/authorize");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("client_id", client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("resource", resource)
            .append_pair("state", state);
        if let Some(p) = prompt {
            q.append_pair("prompt", p.as_str());
        }
    }
    url
}

/// `{login}/{authority}/oauth2/token`; authority is `common` or a tenant id.
pub fn token_url(endpoints: &Endpoints, authority: &str) -> Url {
    join_path(&endpoints.login, &format!("{authority}/oauth2/token"))
}

/// The Discovery service's own resource id, e.g. `https://api.office.com/discovery/`.
pub fn discovery_resource(endpoints: &Endpoints) -> String {
    format!("{}/", endpoints.discovery.as_str().trim_end_matches('/'))
}

/// A token request: the grant, the app's id and secret, then `fields`.
fn token_request(
    endpoints: &Endpoints,
    authority: &str,
    app: &AadApp,
    grant: &'static str,
    fields: impl IntoIterator<Item = (&'static str, Field)>,
) -> HttpRequest {
    let url = token_url(endpoints, authority);
    request::secret_grant(url, grant, app.client_id.clone(), &app.secret, fields)
}

/// Redeems an authorization code for `resource`.
pub fn code_request(
    endpoints: &Endpoints,
    authority: &str,
    app: &AadApp,
    code: &AuthCode,
    redirect_uri: &Url,
    resource: &str,
) -> HttpRequest {
    token_request(
        endpoints,
        authority,
        app,
        "authorization_code",
        [
            ("code", Field::secret(code.expose_secret())),
            ("redirect_uri", redirect_uri.as_str().into()),
            ("resource", resource.into()),
        ],
    )
}

/// Redeems a (multi-resource) refresh token for `resource`.
pub fn refresh_request(
    endpoints: &Endpoints,
    authority: &str,
    app: &AadApp,
    refresh_token: &RefreshToken,
    resource: &str,
) -> HttpRequest {
    token_request(
        endpoints,
        authority,
        app,
        "refresh_token",
        [
            (
                "refresh_token",
                Field::secret(refresh_token.expose_secret()),
            ),
            ("resource", resource.into()),
        ],
    )
}

/// `GET {discovery}/v1.0/me/services` with the Discovery token.
pub fn services_request(endpoints: &Endpoints, discovery_token: &Token) -> HttpRequest {
    HttpRequest::get(join_path(&endpoints.discovery, "v1.0/me/services"))
        .header("Authorization", discovery_token.authorization())
}

/// One service the Discovery service lists for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// e.g. `MyFiles`, `RootSite`.
    pub capability: String,
    /// e.g. `v2.0`.
    pub service_api_version: Option<String>,
    /// Where to call the API.
    pub service_endpoint_uri: Url,
    /// The resource to ask a token for.
    pub service_resource_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawService {
    capability: String,
    #[serde(default)]
    service_api_version: Option<String>,
    service_endpoint_uri: String,
    service_resource_id: String,
}

#[derive(Deserialize)]
struct RawServices {
    value: Vec<RawService>,
}

/// Parses a `me/services` body.
pub fn parse_services(body: &str) -> Result<Vec<ServiceInfo>, String> {
    let raw: RawServices =
        serde_json::from_str(body).map_err(|e| format!("Discovery response: {e}"))?;
    raw.value
        .into_iter()
        .map(|s| {
            let uri = Url::parse(&s.service_endpoint_uri)
                .map_err(|e| format!("serviceEndpointUri {:?}: {e}", s.service_endpoint_uri))?;
            Ok(ServiceInfo {
                capability: s.capability,
                service_api_version: s.service_api_version,
                service_endpoint_uri: uri,
                service_resource_id: s.service_resource_id,
            })
        })
        .collect()
}

/// What [`connect`] found: the tenant, each service with its token, and the newest refresh
/// token (persist it; AAD may rotate it on every redemption).
#[derive(Debug, Clone)]
pub struct Connected {
    /// The user's tenant id.
    pub tenant_id: String,
    /// Each discovered service with an access token for its resource.
    pub services: Vec<(ServiceInfo, Token)>,
    /// The refresh token to store.
    pub refresh_token: RefreshToken,
}

/// The whole callback flow: code → Discovery token at `/common`, list services, then one token
/// per service resource from the same refresh token at `/{tenant}`.
pub async fn connect(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    app: &AadApp,
    code: &AuthCode,
    redirect_uri: &Url,
    policy: &RetryPolicy,
) -> Result<Connected, IdentityError> {
    let disco_resource = discovery_resource(endpoints);
    let first = request::send_token(
        http,
        &code_request(
            endpoints,
            "common",
            app,
            code,
            redirect_uri,
            &disco_resource,
        ),
        policy,
    )
    .await?;
    let tenant = first.tenant_id.clone().ok_or_else(|| {
        IdentityError::Protocol("AAD token response names no tenant (no id_token tid)".to_owned())
    })?;
    let mut refresh = first.refresh_token.clone().ok_or_else(|| {
        IdentityError::Protocol("AAD issued no refresh token for the Discovery resource".to_owned())
    })?;

    let resp = request::send(http, &services_request(endpoints, &first), policy).await?;
    if !(200..300).contains(&resp.status) {
        return request::error_from_response(&resp);
    }
    let services = parse_services(&resp.body).map_err(|reason| IdentityError::BadResponse {
        status: resp.status,
        reason,
    })?;

    let mut out = Vec::with_capacity(services.len());
    for s in services {
        let req = refresh_request(endpoints, &tenant, app, &refresh, &s.service_resource_id);
        let t = request::send_token(http, &req, policy).await?;
        if let Some(rt) = &t.refresh_token {
            refresh = rt.clone();
        }
        out.push((s, t));
    }
    Ok(Connected {
        tenant_id: tenant,
        services: out,
        refresh_token: refresh,
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;
    use crate::{config::Cloud, identity::testserver};

    fn eps() -> Endpoints {
        Endpoints::for_cloud(Cloud::Global)
    }
    fn app() -> AadApp {
        AadApp {
            client_id: "cid".into(),
            secret: ClientSecret::new("cs-1"),
        }
    }

    #[test]
    fn authorize_url_is_exact() {
        let url = authorize_url(
            &eps(),
            "cid",
            "https://api.office.com/discovery/",
            &Url::parse("https://app.example/cb").unwrap(),
            "st",
            Some(Prompt::AdminConsent),
        );
        assert_eq!(url.path(), "/common/oauth2/authorize");
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let want = [
            ("client_id", "cid"),
            ("response_type", "code"),
            ("redirect_uri", "https://app.example/cb"),
            ("resource", "https://api.office.com/discovery/"),
            ("state", "st"),
            ("prompt", "admin_consent"),
        ];
        assert_eq!(q, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
        let url = authorize_url(
            &eps(),
            "cid",
            "r",
            &Url::parse("https://app.example/cb").unwrap(),
            "st",
            None,
        );
        assert!(!url.as_str().contains("prompt"));
    }

    #[test]
    fn code_and_refresh_requests_are_exact() {
        let r = code_request(
            &eps(),
            "common",
            &app(),
            &AuthCode::new("c-1"),
            &Url::parse("https://app.example/cb").unwrap(),
            "https://api.office.com/discovery/",
        );
        assert_eq!(
            r.url.as_str(),
            "https://login.microsoftonline.com/common/oauth2/token"
        );
        assert_eq!(
            r.form_names(),
            [
                "grant_type",
                "client_id",
                "client_secret",
                "code",
                "redirect_uri",
                "resource"
            ]
        );
        assert_eq!(
            r.form_value("resource"),
            Some("https://api.office.com/discovery/")
        );
        let r = refresh_request(
            &eps(),
            "t-1",
            &app(),
            &RefreshToken::new("rt"),
            "https://contoso-my.sharepoint.com/",
        );
        assert_eq!(
            r.url.as_str(),
            "https://login.microsoftonline.com/t-1/oauth2/token"
        );
        assert_eq!(r.form_value("grant_type"), Some("refresh_token"));
        assert_eq!(
            r.form_value("resource"),
            Some("https://contoso-my.sharepoint.com/")
        );
        assert!(!format!("{r:?}").contains("cs-1"));
        assert_eq!(
            discovery_resource(&eps()),
            "https://api.office.com/discovery/"
        );
    }

    #[test]
    fn parses_discovery_fixture() {
        let body = std::fs::read_to_string(format!("{}/../../shared/fixtures/discovery/onedrive-api-docs_aad-oauth_discovery-v2.0-me-services.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let s = parse_services(&body).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].capability, "MyFiles");
        assert_eq!(s[0].service_api_version.as_deref(), Some("v2.0"));
        assert_eq!(
            s[0].service_endpoint_uri.as_str(),
            "https://contoso-my.sharepoint.com/_api/v2.0"
        );
        assert_eq!(
            s[0].service_resource_id,
            "https://contoso-my.sharepoint.com/"
        );
        assert!(parse_services(r#"{"value":[{"capability":"x","serviceEndpointUri":"not a url","serviceResourceId":"r"}]}"#).is_err());
        assert!(parse_services("{}").is_err());
    }

    #[tokio::test]
    async fn connect_discovers_and_switches_to_tenant_authority() {
        const TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let services = std::fs::read_to_string(format!("{}/../../shared/fixtures/discovery/onedrive-api-docs_aad-oauth_discovery-v2.0-me-services.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let id_token = crate::identity::jwt::tests::unsigned(
            &serde_json::json!({"tid": TID, "upn": "u@contoso.com"}),
        );
        let server = testserver::start(Duration::ZERO, move |_, req| match req.path() {
            "/common/oauth2/token" => (200, vec![], serde_json::json!({
                "token_type": "Bearer", "expires_in": "3599", "expires_on": "4102444800", "resource": "disco",
                "access_token": "at-disco", "refresh_token": "rt-1", "id_token": id_token }).to_string()),
            "/discovery/v1.0/me/services" => (200, vec![], services.clone()),
            p if p == format!("/{TID}/oauth2/token") => (200, vec![], serde_json::json!({
                "token_type": "Bearer", "expires_in": "3599", "access_token": "at-files", "refresh_token": "rt-2",
                "resource": req.form_value("resource") }).to_string()),
            _ => (404, vec![], String::new()),
        })
        .await;
        let mut e = eps();
        e.login = server.url.clone();
        e.discovery = server.url.join("/discovery").unwrap();
        let c = connect(
            &testserver::client(),
            &e,
            &app(),
            &AuthCode::new("code-9"),
            &Url::parse("https://app.example/cb").unwrap(),
            &RetryPolicy::default(),
        )
        .await
        .unwrap();
        assert_eq!(c.tenant_id, TID);
        assert_eq!(c.refresh_token.expose_secret(), "rt-2");
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].1.access_token.expose_secret(), "at-files");
        assert_eq!(
            c.services[0].1.resource.as_deref(),
            Some("https://contoso-my.sharepoint.com/")
        );

        let reqs = server.requests();
        let paths: Vec<&str> = reqs.iter().map(|r| r.path()).collect();
        let tenant_path = format!("/{TID}/oauth2/token");
        assert_eq!(
            paths,
            [
                "/common/oauth2/token",
                "/discovery/v1.0/me/services",
                tenant_path.as_str()
            ]
        );
        let f: HashMap<String, String> = reqs[0].form().into_iter().collect();
        assert_eq!(
            f["resource"],
            format!("{}/discovery/", server.url.as_str().trim_end_matches('/'))
        );
        assert_eq!(f["code"], "code-9");
        assert_eq!(reqs[1].method, "GET");
        assert_eq!(reqs[1].header("authorization"), Some("Bearer at-disco"));
        assert_eq!(reqs[2].form_value("refresh_token").as_deref(), Some("rt-1"));
        assert_eq!(
            reqs[2].form_value("resource").as_deref(),
            Some("https://contoso-my.sharepoint.com/")
        );
    }

    #[tokio::test]
    async fn connect_without_tenant_is_a_protocol_error() {
        let server = testserver::start(Duration::ZERO, |_, _| {
            (200, vec![], testserver::token_body("opaque", 3600))
        })
        .await;
        let mut e = eps();
        e.login = server.url.clone();
        let err = connect(
            &testserver::client(),
            &e,
            &app(),
            &AuthCode::new("c"),
            &Url::parse("https://app.example/cb").unwrap(),
            &RetryPolicy::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, IdentityError::Protocol(_)), "{err:?}");
    }
}
