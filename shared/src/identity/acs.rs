//! SharePoint low-trust add-ins through Azure ACS.
//!
//! - Realm discovery: an empty `Authorization: Bearer` to `/_vti_bin/client.svc` gets a 401
//!   whose Bearer challenge names the tenant's realm; realms are cached per host.
//! - Token endpoint `{acs}/{realm}/tokens/OAuth/2`: client credentials (app-only), authorization
//!   code and refresh token grants. Principals are written `{id}/{host}@{realm}`.
//! - Authorize URL `{site}/_layouts/15/OAuthAuthorize.aspx` with typed scopes.
//! - Context tokens (SPAppToken): HS256 JWTs signed with the add-in's client secret.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    str::FromStr,
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::Engine;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use url::Url;

use super::{
    error::IdentityError,
    jwt::num,
    request::{self, Field, HttpRequest, RawResponse, RetryPolicy},
    secret::{AuthCode, ClientSecret, RefreshToken},
    token::Token,
    www_authenticate,
};
use crate::config::{Endpoints, join_path};

/// SharePoint Online's principal id (the default target).
pub const SHAREPOINT_PRINCIPAL: &str = "00000003-0000-0ff1-ce00-000000000000";
/// Exchange Online's principal id.
pub const EXCHANGE_PRINCIPAL: &str = "00000002-0000-0ff1-ce00-000000000000";
/// Lync / Skype for Business Online's principal id.
pub const LYNC_PRINCIPAL: &str = "00000004-0000-0ff1-ce00-000000000000";
/// Workflow Manager's principal id.
pub const WORKFLOW_PRINCIPAL: &str = "00000005-0000-0000-c000-000000000000";
/// ACS itself: the issuer of context tokens.
pub const ACS_PRINCIPAL: &str = "00000001-0000-0000-c000-000000000000";

/// A tenant's ACS realm (its tenant id, a GUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Realm(String);

impl Realm {
    /// Accepts a GUID; stores it lower-case.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let u = uuid::Uuid::parse_str(s.trim())
            .map_err(|_| IdentityError::InvalidInput(format!("realm {s:?} is not a GUID")))?;
        Ok(Realm(u.hyphenated().to_string()))
    }

    /// The realm as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What SharePoint's Bearer challenge says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    /// The tenant's realm.
    pub realm: Realm,
    /// `client_id`: the principal that answered (SharePoint's id).
    pub client_id: Option<String>,
    /// `authorization_uri`, where AAD would sign users in.
    pub authorization_uri: Option<String>,
    /// `trusted_issuers`, comma separated in the header.
    pub trusted_issuers: Vec<String>,
}

/// The realm-discovery request: `GET {site}/_vti_bin/client.svc` with an empty bearer.
pub fn realm_request(site: &Url) -> HttpRequest {
    HttpRequest::get(join_path(site, "_vti_bin/client.svc"))
        .header("Authorization", "Bearer".into())
}

/// Reads the realm from the 401 SharePoint answers to [`realm_request`].
pub fn challenge_from_response(resp: &RawResponse) -> Result<BearerChallenge, IdentityError> {
    if resp.status != 401 {
        return Err(IdentityError::Protocol(format!(
            "realm discovery expected HTTP 401 from client.svc, got {}",
            resp.status
        )));
    }
    if resp.www_authenticate.is_empty() {
        return Err(IdentityError::Protocol(
            "realm discovery: the 401 has no WWW-Authenticate header".to_owned(),
        ));
    }
    let challenges = www_authenticate::parse_all(resp.www_authenticate.iter().map(String::as_str))
        .map_err(|e| IdentityError::Protocol(format!("realm discovery: {e}")))?;
    let bearer = challenges.iter().find(|c| c.is("Bearer")).ok_or_else(|| {
        IdentityError::Protocol(
            "realm discovery: no Bearer challenge in WWW-Authenticate".to_owned(),
        )
    })?;
    let realm = bearer
        .param("realm")
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| {
            IdentityError::Protocol("realm discovery: the Bearer challenge has no realm".to_owned())
        })?;
    let realm = Realm::parse(realm).map_err(|_| {
        IdentityError::Protocol(format!("realm discovery: realm {realm:?} is not a GUID"))
    })?;
    Ok(BearerChallenge {
        realm,
        client_id: bearer.param("client_id").map(str::to_owned),
        authorization_uri: bearer.param("authorization_uri").map(str::to_owned),
        trusted_issuers: bearer
            .param("trusted_issuers")
            .map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Realms per SharePoint host (`host[:port]`, lower-case), shared across clones.
#[derive(Debug, Clone, Default)]
pub struct RealmCache(Arc<RwLock<HashMap<String, BearerChallenge>>>);

impl RealmCache {
    /// The cached challenge for a site's host.
    pub fn get(&self, site: &Url) -> Option<BearerChallenge> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(&host_key(site)).cloned()
    }

    /// Records a host's challenge.
    pub fn put(&self, site: &Url, c: BearerChallenge) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.insert(host_key(site), c);
    }
}

fn host_key(site: &Url) -> String {
    let host = site.host_str().unwrap_or("").to_ascii_lowercase();
    match site.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// The host part of a principal name: `host[:port]` of the site.
pub fn principal_host(site: &Url) -> Result<String, IdentityError> {
    match site.host_str() {
        Some(_) => Ok(host_key(site)),
        None => Err(IdentityError::InvalidInput(format!(
            "SharePoint URL {site} has no host"
        ))),
    }
}

/// Discovers (or recalls) the realm of a SharePoint site.
pub async fn discover_realm(
    http: &reqwest::Client,
    site: &Url,
    cache: &RealmCache,
    policy: &RetryPolicy,
) -> Result<BearerChallenge, IdentityError> {
    if let Some(c) = cache.get(site) {
        return Ok(c);
    }
    let resp = request::send(http, &realm_request(site), policy).await?;
    let c = challenge_from_response(&resp)?;
    tracing::info!(host = %host_key(site), realm = %c.realm, "discovered ACS realm");
    cache.put(site, c.clone());
    Ok(c)
}

/// A low-trust add-in's registration.
#[derive(Debug, Clone)]
pub struct AcsApp {
    /// The add-in's client id (a GUID, without `@realm`).
    pub client_id: String,
    /// Its client secret (base64 text, as AppRegNew.aspx issues it).
    pub secret: ClientSecret,
}

/// `{acs}/{realm}/tokens/OAuth/2`.
pub fn token_url(endpoints: &Endpoints, realm: &Realm) -> Url {
    join_path(&endpoints.acs, &format!("{realm}/tokens/OAuth/2"))
}

/// `{principal}/{host}@{realm}`: the resource of a token for `principal` at `host`.
pub fn resource(principal: &str, host: &str, realm: &Realm) -> String {
    format!("{principal}/{host}@{realm}")
}

/// A token request: the grant, the app's id and secret, then `fields`.
fn token_request(
    endpoints: &Endpoints,
    app: &AcsApp,
    realm: &Realm,
    grant: &'static str,
    fields: impl IntoIterator<Item = (&'static str, Field)>,
) -> HttpRequest {
    let url = token_url(endpoints, realm);
    request::secret_grant(
        url,
        grant,
        format!("{}@{realm}", app.client_id),
        &app.secret,
        fields,
    )
}

/// App-only token request (client credentials) for `principal` at `host`.
pub fn app_only_request(
    endpoints: &Endpoints,
    app: &AcsApp,
    realm: &Realm,
    host: &str,
    principal: &str,
) -> HttpRequest {
    let resource = resource(principal, host, realm);
    token_request(
        endpoints,
        app,
        realm,
        "client_credentials",
        [("resource", resource.into())],
    )
}

/// Authorization-code redemption for SharePoint at `host`.
pub fn code_request(
    endpoints: &Endpoints,
    app: &AcsApp,
    realm: &Realm,
    host: &str,
    code: &AuthCode,
    redirect_uri: &Url,
) -> HttpRequest {
    let resource = resource(SHAREPOINT_PRINCIPAL, host, realm);
    token_request(
        endpoints,
        app,
        realm,
        "authorization_code",
        [
            ("code", Field::secret(code.expose_secret())),
            ("redirect_uri", redirect_uri.as_str().into()),
            ("resource", resource.into()),
        ],
    )
}

/// Refresh-token redemption for `principal` at `host`.
pub fn refresh_request(
    endpoints: &Endpoints,
    app: &AcsApp,
    realm: &Realm,
    host: &str,
    principal: &str,
    refresh_token: &RefreshToken,
) -> HttpRequest {
    let resource = resource(principal, host, realm);
    token_request(
        endpoints,
        app,
        realm,
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

/// App-only SharePoint token for a site: discovers the realm unless given, then asks ACS.
pub async fn app_only_token(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    app: &AcsApp,
    site: &Url,
    realm: Option<&Realm>,
    realms: &RealmCache,
    policy: &RetryPolicy,
) -> Result<Token, IdentityError> {
    let host = principal_host(site)?;
    let realm = match realm {
        Some(r) => r.clone(),
        None => discover_realm(http, site, realms, policy).await?.realm,
    };
    request::send_token(
        http,
        &app_only_request(endpoints, app, &realm, &host, SHAREPOINT_PRINCIPAL),
        policy,
    )
    .await
}

/// What a SharePoint add-in permission applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeTarget {
    /// The current web.
    Web,
    /// A list.
    List,
    /// The site collection.
    Site,
    /// Every site the user can reach.
    AllSites,
}

/// The right an add-in permission grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeRight {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Manage.
    Manage,
    /// Full control.
    FullControl,
}

/// An OAuthAuthorize.aspx scope such as `Web.Write` or `AllSites.FullControl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope {
    /// What it applies to.
    pub target: ScopeTarget,
    /// What it allows.
    pub right: ScopeRight,
}

impl Scope {
    /// A scope.
    pub const fn new(target: ScopeTarget, right: ScopeRight) -> Self {
        Scope { target, right }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.target {
            ScopeTarget::Web => "Web",
            ScopeTarget::List => "List",
            ScopeTarget::Site => "Site",
            ScopeTarget::AllSites => "AllSites",
        };
        let r = match self.right {
            ScopeRight::Read => "Read",
            ScopeRight::Write => "Write",
            ScopeRight::Manage => "Manage",
            ScopeRight::FullControl => "FullControl",
        };
        write!(f, "{t}.{r}")
    }
}

impl FromStr for Scope {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            IdentityError::InvalidInput(format!("{s:?} is not a SharePoint scope like Web.Write"))
        };
        let (t, r) = s.split_once('.').ok_or_else(bad)?;
        let target = match t {
            "Web" => ScopeTarget::Web,
            "List" => ScopeTarget::List,
            "Site" => ScopeTarget::Site,
            "AllSites" => ScopeTarget::AllSites,
            _ => return Err(bad()),
        };
        let right = match r {
            "Read" => ScopeRight::Read,
            "Write" => ScopeRight::Write,
            "Manage" => ScopeRight::Manage,
            "FullControl" => ScopeRight::FullControl,
            _ => return Err(bad()),
        };
        Ok(Scope { target, right })
    }
}

/// `{site}/_layouts/15/OAuthAuthorize.aspx?client_id&scope&response_type=code&redirect_uri&state`.
pub fn authorize_url(
    site: &Url,
    client_id: &str,
    scopes: &[Scope],
    redirect_uri: &Url,
    state: &str,
) -> Url {
    let mut url = join_path(site, "_layouts/15/OAuthAuthorize.aspx");
    let scope = scopes
        .iter()
        .map(Scope::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("scope", &scope)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri.as_str())
        .append_pair("state", state);
    url
}

/// Validates SharePoint context tokens (SPAppToken) for one add-in.
pub struct ContextTokenValidator {
    client_id: String,
    secret: ClientSecret,
    secondary_secret: Option<ClientSecret>,
    app_hosts: Vec<String>,
    realm: Option<Realm>,
    clock_skew: Duration,
}

impl fmt::Debug for ContextTokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextTokenValidator")
            .field("client_id", &self.client_id)
            .field("secret", &self.secret)
            .field("secondary_secret", &self.secondary_secret)
            .field("app_hosts", &self.app_hosts)
            .field("realm", &self.realm)
            .field("clock_skew", &self.clock_skew)
            .finish()
    }
}

/// A validated context token.
#[derive(Debug, Clone)]
pub struct ContextToken {
    /// The tenant's realm (from `aud`).
    pub realm: Realm,
    /// `aud`, `{client_id}/{app host}@{realm}`.
    pub audience: String,
    /// `appctxsender`, e.g. `00000003-0000-0ff1-ce00-000000000000@{realm}`.
    pub app_ctx_sender: String,
    /// The sender's principal id (before `@`): the resource to redeem the refresh token for.
    pub target_principal: String,
    /// `CacheKey` from the `appctx` claim: stable per user, add-in and site.
    pub cache_key: String,
    /// `SecurityTokenServiceUri` from `appctx`.
    pub security_token_service_uri: Option<String>,
    /// `refreshtoken`: redeem it with [`context_token_request`].
    pub refresh_token: RefreshToken,
    /// `nbf`.
    pub not_before: OffsetDateTime,
    /// `exp`.
    pub expires_at: OffsetDateTime,
}

impl ContextTokenValidator {
    /// A validator for `client_id` whose add-in is served from `app_hosts` (`host[:port]`).
    /// `secret` is the base64 client secret: like SharePoint's TokenHelper, its decoded bytes
    /// are the HMAC key.
    pub fn new(client_id: impl Into<String>, secret: ClientSecret, app_hosts: Vec<String>) -> Self {
        ContextTokenValidator {
            client_id: client_id.into(),
            secret,
            secondary_secret: None,
            app_hosts,
            realm: None,
            clock_skew: Duration::from_secs(300),
        }
    }

    /// Also accepts tokens signed with the secondary secret (during secret rollover).
    pub fn with_secondary_secret(mut self, secret: ClientSecret) -> Self {
        self.secondary_secret = Some(secret);
        self
    }

    /// Requires this realm instead of trusting the token's.
    pub fn with_realm(mut self, realm: Realm) -> Self {
        self.realm = Some(realm);
        self
    }

    /// Allowed clock difference for `nbf`/`exp` (default 5 minutes).
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    /// Checks signature, issuer, audience and lifetime, and extracts the context.
    pub fn validate(&self, raw: &str, now: OffsetDateTime) -> Result<ContextToken, IdentityError> {
        let bad = |m: String| IdentityError::InvalidToken(m);
        let header = jsonwebtoken::decode_header(raw.trim())
            .map_err(|e| bad(format!("context token is not a JWT: {e}")))?;
        if header.alg != jsonwebtoken::Algorithm::HS256 {
            return Err(bad(format!(
                "context token alg is {:?}, expected HS256",
                header.alg
            )));
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        // Lifetime and audience are checked below: SharePoint may send nbf/exp as strings.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();

        let mut claims: Option<Map<String, Value>> = None;
        for secret in std::iter::once(&self.secret).chain(self.secondary_secret.as_ref()) {
            let key = base64::engine::general_purpose::STANDARD
                .decode(secret.expose_secret().trim())
                .map_err(|_| {
                    IdentityError::InvalidInput("the add-in client secret is not base64".to_owned())
                })?;
            let key = jsonwebtoken::DecodingKey::from_secret(&key);
            match jsonwebtoken::decode::<Map<String, Value>>(raw.trim(), &key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                    continue;
                }
                Err(e) => return Err(bad(format!("context token is malformed: {e}"))),
            }
        }
        let claims = claims.ok_or_else(|| {
            bad("context token signature does not match the client secret".to_owned())
        })?;
        let s = |k: &str| claims.get(k).and_then(Value::as_str);

        let aud = s("aud").ok_or_else(|| bad("context token has no aud".to_owned()))?;
        let token_realm = aud
            .rsplit_once('@')
            .map(|(_, r)| r)
            .ok_or_else(|| bad(format!("context token aud {aud:?} has no realm")))?;
        let realm = match &self.realm {
            Some(r) => r.clone(),
            None => Realm::parse(token_realm)
                .map_err(|_| bad(format!("context token realm {token_realm:?} is not a GUID")))?,
        };
        let iss = s("iss").unwrap_or("");
        let want_iss = format!("{ACS_PRINCIPAL}@{realm}");
        if !iss.eq_ignore_ascii_case(&want_iss) {
            return Err(bad(format!(
                "context token issuer {iss:?} is not {want_iss:?}"
            )));
        }
        let aud_ok = self
            .app_hosts
            .iter()
            .any(|h| aud.eq_ignore_ascii_case(&format!("{}/{h}@{realm}", self.client_id)));
        if !aud_ok {
            return Err(bad(format!(
                "context token audience {aud:?} is not this add-in ({}/{{{}}}@{realm})",
                self.client_id,
                self.app_hosts.join("|")
            )));
        }

        let time_claim = |k: &str| {
            num(claims.get(k))
                .and_then(|n| OffsetDateTime::from_unix_timestamp(n).ok())
                .ok_or_else(|| bad(format!("context token has no valid {k}")))
        };
        let (nbf, exp) = (time_claim("nbf")?, time_claim("exp")?);
        // A skew too large for time arithmetic is clamped rather than trusted.
        let skew = time::Duration::try_from(self.clock_skew).unwrap_or(time::Duration::DAY);
        if now.checked_add(skew).is_some_and(|n| n < nbf) {
            return Err(bad(format!("context token is not valid before {nbf}")));
        }
        if now.checked_sub(skew).is_none_or(|n| n >= exp) {
            return Err(bad(format!("context token expired at {exp}")));
        }

        let sender =
            s("appctxsender").ok_or_else(|| bad("context token has no appctxsender".to_owned()))?;
        let target_principal = sender.split('@').next().unwrap_or_default().to_owned();
        let appctx: Map<String, Value> = s("appctx")
            .and_then(|a| serde_json::from_str(a).ok())
            .ok_or_else(
                || bad("context token appctx is missing or not a JSON string".to_owned()),
            )?;
        let cache_key = appctx
            .get("CacheKey")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("context token appctx has no CacheKey".to_owned()))?;
        let refresh =
            s("refreshtoken").ok_or_else(|| bad("context token has no refreshtoken".to_owned()))?;

        Ok(ContextToken {
            audience: aud.to_owned(),
            app_ctx_sender: sender.to_owned(),
            target_principal,
            cache_key: cache_key.to_owned(),
            security_token_service_uri: appctx
                .get("SecurityTokenServiceUri")
                .and_then(Value::as_str)
                .map(str::to_owned),
            refresh_token: RefreshToken::new(refresh),
            not_before: nbf,
            expires_at: exp,
            realm,
        })
    }
}

/// Redeems a context token's refresh token for an access token to SharePoint at `sp_host`.
///
/// The request goes to the configured ACS endpoint, not to the token's
/// `SecurityTokenServiceUri`, so the client secret only travels to a configured host.
pub fn context_token_request(
    endpoints: &Endpoints,
    app: &AcsApp,
    ctx: &ContextToken,
    sp_host: &str,
) -> HttpRequest {
    refresh_request(
        endpoints,
        app,
        &ctx.realm,
        sp_host,
        &ctx.target_principal,
        &ctx.refresh_token,
    )
}

/// Redeems an already validated context token for an access token to SharePoint at `site`.
pub async fn redeem_context_token(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    app: &AcsApp,
    ctx: &ContextToken,
    site: &Url,
    policy: &RetryPolicy,
) -> Result<Token, IdentityError> {
    let host = principal_host(site)?;
    request::send_token(
        http,
        &context_token_request(endpoints, app, ctx, &host),
        policy,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cloud;
    use crate::identity::testserver;

    const REALM: &str = "040f2415-e6e3-4480-96ce-26ef73275f73";
    // base64 of 32 bytes, the shape AppRegNew.aspx issues.
    const SECRET: &str = "c2VjcmV0LWtleS1ieXRlcy1mb3ItdGVzdHMtb25seS0=";
    const SECRET2: &str = "cm9sbGVkLW92ZXItc2Vjb25kYXJ5LXNlY3JldC0xMjM=";

    fn endpoints() -> Endpoints {
        Endpoints::for_cloud(Cloud::Global)
    }
    fn app() -> AcsApp {
        AcsApp {
            client_id: "c76da14e-07fd-4638-a723-1ff60ce70d63".into(),
            secret: ClientSecret::new("s3cr3t"),
        }
    }
    fn realm() -> Realm {
        Realm::parse(REALM).unwrap()
    }

    #[test]
    fn app_only_request_is_exact() {
        let r = app_only_request(
            &endpoints(),
            &app(),
            &realm(),
            "contoso.sharepoint.com",
            SHAREPOINT_PRINCIPAL,
        );
        assert_eq!(r.method, reqwest::Method::POST);
        assert_eq!(
            r.url.as_str(),
            format!("https://accounts.accesscontrol.windows.net/{REALM}/tokens/OAuth/2")
        );
        assert_eq!(
            r.form_names(),
            ["grant_type", "client_id", "client_secret", "resource"]
        );
        assert_eq!(r.form_value("grant_type"), Some("client_credentials"));
        assert_eq!(
            r.form_value("client_id"),
            Some(format!("c76da14e-07fd-4638-a723-1ff60ce70d63@{REALM}").as_str())
        );
        assert_eq!(r.form_value("client_secret"), Some("s3cr3t"));
        assert_eq!(
            r.form_value("resource"),
            Some(
                format!("00000003-0000-0ff1-ce00-000000000000/contoso.sharepoint.com@{REALM}")
                    .as_str()
            )
        );
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }

    #[test]
    fn code_and_refresh_requests_are_exact() {
        let redirect = Url::parse("https://app.example/callback").unwrap();
        let r = code_request(
            &endpoints(),
            &app(),
            &realm(),
            "contoso.sharepoint.com",
            &AuthCode::new("the-code"),
            &redirect,
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
        assert_eq!(r.form_value("grant_type"), Some("authorization_code"));
        assert_eq!(r.form_value("code"), Some("the-code"));
        assert_eq!(
            r.form_value("redirect_uri"),
            Some("https://app.example/callback")
        );
        assert!(!format!("{r:?}").contains("the-code"));

        let r = refresh_request(
            &endpoints(),
            &app(),
            &realm(),
            "contoso.sharepoint.com",
            EXCHANGE_PRINCIPAL,
            &RefreshToken::new("rt"),
        );
        assert_eq!(r.form_value("grant_type"), Some("refresh_token"));
        assert_eq!(r.form_value("refresh_token"), Some("rt"));
        assert_eq!(
            r.form_value("resource"),
            Some(
                format!("00000002-0000-0ff1-ce00-000000000000/contoso.sharepoint.com@{REALM}")
                    .as_str()
            )
        );
        assert_eq!(LYNC_PRINCIPAL, "00000004-0000-0ff1-ce00-000000000000");
        assert_eq!(WORKFLOW_PRINCIPAL, "00000005-0000-0000-c000-000000000000");
    }

    #[test]
    fn authorize_url_with_typed_scopes() {
        let site = Url::parse("https://contoso.sharepoint.com/sites/dev").unwrap();
        let url = authorize_url(
            &site,
            "cid",
            &[
                Scope::new(ScopeTarget::Web, ScopeRight::Write),
                Scope::new(ScopeTarget::AllSites, ScopeRight::FullControl),
            ],
            &Url::parse("https://app.example/cb").unwrap(),
            "st",
        );
        assert_eq!(url.path(), "/sites/dev/_layouts/15/OAuthAuthorize.aspx");
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let want: Vec<(String, String)> = [
            ("client_id", "cid"),
            ("scope", "Web.Write AllSites.FullControl"),
            ("response_type", "code"),
            ("redirect_uri", "https://app.example/cb"),
            ("state", "st"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(q, want);
        assert_eq!(
            "List.Manage".parse::<Scope>().unwrap(),
            Scope::new(ScopeTarget::List, ScopeRight::Manage)
        );
        assert!("Web.Own".parse::<Scope>().is_err() && "Web".parse::<Scope>().is_err());
    }

    fn resp(status: u16, www: &[&str]) -> RawResponse {
        RawResponse {
            status,
            www_authenticate: www.iter().map(|s| s.to_string()).collect(),
            body: String::new(),
        }
    }

    #[test]
    fn realm_from_challenge_variants() {
        let fixture = std::fs::read_to_string(format!(
            "{}/../../shared/fixtures/www-authenticate/FluidFramework_parseAuthErrorClaims_insufficient_claims.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let c = challenge_from_response(&resp(401, &[fixture.trim()])).unwrap();
        assert_eq!(c.realm.as_str(), "6c482541-f706-4168-9e58-8e35a9992f58");
        assert_eq!(c.client_id.as_deref(), Some(SHAREPOINT_PRINCIPAL));
        assert_eq!(c.trusted_issuers.len(), 4);

        let c = challenge_from_response(&resp(
            401,
            &[&format!(r#"NTLM, Bearer authorization_uri="https://login.windows.net/common/oauth2/authorize", x="1", client_id="{SHAREPOINT_PRINCIPAL}", realm="{}""#, REALM.to_uppercase())],
        ))
        .unwrap();
        assert_eq!(c.realm.as_str(), REALM);
        assert_eq!(
            c.authorization_uri.as_deref(),
            Some("https://login.windows.net/common/oauth2/authorize")
        );

        let c =
            challenge_from_response(&resp(401, &["NTLM", &format!(r#"Bearer realm="{REALM}""#)]))
                .unwrap();
        assert_eq!(c.realm, realm());

        for (r, why) in [
            (resp(401, &[r#"Bearer client_id="x""#]), "no realm"),
            (resp(401, &[]), "no WWW-Authenticate"),
            (resp(401, &["NTLM"]), "no Bearer"),
            (resp(200, &[]), "expected HTTP 401"),
            (resp(401, &[r#"Bearer realm="not-a-guid""#]), "not a GUID"),
            (resp(401, &[r#"Bearer realm="open"#]), "malformed"),
        ] {
            let e = challenge_from_response(&r).unwrap_err();
            assert!(
                matches!(e, IdentityError::Protocol(_)) && e.to_string().contains(why),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn discovers_realm_once_per_host_then_gets_app_only_token() {
        let server = testserver::start(Duration::ZERO, |_, req| {
            if req.path() == "/sites/a/_vti_bin/client.svc" {
                (401, vec![("WWW-Authenticate", format!(r#"NTLM, Bearer realm="{REALM}",client_id="{SHAREPOINT_PRINCIPAL}""#))], String::new())
            } else {
                (200, vec![], r#"{"token_type":"Bearer","access_token":"acs-at","expires_in":"3599","not_before":"1","expires_on":"4102444800","resource":"r"}"#.into())
            }
        })
        .await;
        let mut eps = endpoints();
        eps.acs = server.url.clone();
        let site = server.url.join("/sites/a").unwrap();
        let http = testserver::client();
        let realms = RealmCache::default();
        let policy = RetryPolicy::default();
        for _ in 0..2 {
            let t = app_only_token(&http, &eps, &app(), &site, None, &realms, &policy)
                .await
                .unwrap();
            assert_eq!(t.access_token.expose_secret(), "acs-at");
            assert_eq!(t.expires_at.unwrap().unix_timestamp(), 4102444800);
        }
        let reqs = server.requests();
        let paths: Vec<&str> = reqs.iter().map(|r| r.path()).collect();
        let token_path = format!("/{REALM}/tokens/OAuth/2");
        assert_eq!(
            paths,
            [
                "/sites/a/_vti_bin/client.svc",
                token_path.as_str(),
                token_path.as_str()
            ]
        );
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(reqs[0].header("authorization"), Some("Bearer"));
        let host = principal_host(&site).unwrap();
        assert_eq!(
            reqs[1].form_value("resource"),
            Some(format!("{SHAREPOINT_PRINCIPAL}/{host}@{REALM}"))
        );
    }

    #[tokio::test]
    async fn missing_header_is_a_clear_error() {
        let server = testserver::start(Duration::ZERO, |_, _| (401, vec![], String::new())).await;
        let e = discover_realm(
            &testserver::client(),
            &server.url,
            &RealmCache::default(),
            &RetryPolicy::default(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("no WWW-Authenticate"), "{e}");
    }

    // --- context tokens ---

    const CLIENT: &str = "a044e184-7de2-4d05-aacf-52118008c44e";
    const NBF: i64 = 1335822895;
    const EXP: i64 = 1335866095;

    /// The documented example's claims (the docs wrap lines inside strings; joining them
    /// restores the JSON).
    fn doc_claims() -> Map<String, Value> {
        let text = std::fs::read_to_string(format!(
            "{}/../../shared/fixtures/context-token/sp-dev-docs_context-token-decoded_example.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let (_, claims) = text.split_once("\n.\n").unwrap();
        serde_json::from_str(&claims.replace(['\n', '\r'], "")).unwrap()
    }

    fn sign(claims: &Map<String, Value>, secret_b64: &str) -> String {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret_b64)
            .unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(&key),
        )
        .unwrap()
    }

    fn validator() -> ContextTokenValidator {
        ContextTokenValidator::new(
            CLIENT,
            ClientSecret::new(SECRET),
            vec!["fabrikam.com".into()],
        )
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn valid_documented_context_token() {
        let raw = sign(&doc_claims(), SECRET);
        let ctx = validator().validate(&raw, at(NBF + 60)).unwrap();
        assert_eq!(ctx.realm.as_str(), REALM);
        assert_eq!(
            ctx.app_ctx_sender,
            format!("{SHAREPOINT_PRINCIPAL}@{REALM}")
        );
        assert_eq!(ctx.target_principal, SHAREPOINT_PRINCIPAL);
        assert_eq!(
            ctx.cache_key,
            "KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw="
        );
        assert_eq!(
            ctx.security_token_service_uri.as_deref(),
            Some(
                "https://accounts.accesscontrol.windows-int-sn1-004.accesscontrol.aadint.windows-int.net/tokens/OAuth/2"
            )
        );
        assert!(
            ctx.refresh_token
                .expose_secret()
                .starts_with("IAAAAC1Lv5w0OrcFAmJx0xk6aaBdhgsw3VPnPzNEDAWypTHtCYytZ2")
        );
        assert_eq!((ctx.not_before, ctx.expires_at), (at(NBF), at(EXP)));
        assert!(!format!("{ctx:?}").contains("IAAAAC1L"));

        // Redeeming it: refresh grant for SharePoint at the site host.
        let app = AcsApp {
            client_id: CLIENT.into(),
            secret: ClientSecret::new(SECRET),
        };
        let r = context_token_request(&endpoints(), &app, &ctx, "fabrikam.sharepoint.com");
        assert_eq!(
            r.url.as_str(),
            format!("https://accounts.accesscontrol.windows.net/{REALM}/tokens/OAuth/2")
        );
        assert_eq!(r.form_value("grant_type"), Some("refresh_token"));
        assert_eq!(
            r.form_value("client_id"),
            Some(format!("{CLIENT}@{REALM}").as_str())
        );
        assert_eq!(
            r.form_value("refresh_token"),
            Some(ctx.refresh_token.expose_secret())
        );
        assert_eq!(
            r.form_value("resource"),
            Some(format!("{SHAREPOINT_PRINCIPAL}/fabrikam.sharepoint.com@{REALM}").as_str())
        );
    }

    #[test]
    fn numeric_times_are_accepted_too() {
        let mut c = doc_claims();
        c.insert("nbf".into(), NBF.into());
        c.insert("exp".into(), EXP.into());
        assert!(validator().validate(&sign(&c, SECRET), at(NBF)).is_ok());
    }

    #[test]
    fn bad_signature_is_rejected() {
        let raw = sign(&doc_claims(), SECRET2);
        let e = validator().validate(&raw, at(NBF + 60)).unwrap_err();
        assert!(
            matches!(e, IdentityError::InvalidToken(_)) && e.to_string().contains("signature"),
            "{e}"
        );
        // Tampered payload with the original signature.
        let good = sign(&doc_claims(), SECRET);
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut c = doc_claims();
        c.insert("aud".into(), format!("{CLIENT}/evil.com@{REALM}").into());
        let forged = sign(&c, SECRET2);
        parts[1] = forged.split('.').nth(1).unwrap();
        assert!(
            validator()
                .validate(&parts.join("."), at(NBF + 60))
                .is_err()
        );
    }

    #[test]
    fn secondary_secret_during_rollover() {
        let raw = sign(&doc_claims(), SECRET2);
        let v = validator().with_secondary_secret(ClientSecret::new(SECRET2));
        assert!(v.validate(&raw, at(NBF + 60)).is_ok());
        // The primary still works with a secondary configured.
        assert!(
            v.validate(&sign(&doc_claims(), SECRET), at(NBF + 60))
                .is_ok()
        );
        assert!(!format!("{v:?}").contains(SECRET2));
    }

    #[test]
    fn wrong_audience_or_issuer_is_rejected() {
        let raw = sign(&doc_claims(), SECRET);
        let v = ContextTokenValidator::new(
            CLIENT,
            ClientSecret::new(SECRET),
            vec!["other.example".into()],
        );
        let e = v.validate(&raw, at(NBF + 60)).unwrap_err();
        assert!(e.to_string().contains("audience"), "{e}");
        let v = ContextTokenValidator::new(
            "11111111-1111-1111-1111-111111111111",
            ClientSecret::new(SECRET),
            vec!["fabrikam.com".into()],
        );
        assert!(
            v.validate(&raw, at(NBF + 60))
                .unwrap_err()
                .to_string()
                .contains("audience")
        );
        let v =
            validator().with_realm(Realm::parse("6c482541-f706-4168-9e58-8e35a9992f58").unwrap());
        assert!(v.validate(&raw, at(NBF + 60)).is_err());
        let mut c = doc_claims();
        c.insert(
            "iss".into(),
            format!("{SHAREPOINT_PRINCIPAL}@{REALM}").into(),
        );
        let e = validator()
            .validate(&sign(&c, SECRET), at(NBF + 60))
            .unwrap_err();
        assert!(e.to_string().contains("issuer"), "{e}");
    }

    #[test]
    fn lifetime_with_clock_skew() {
        let raw = sign(&doc_claims(), SECRET);
        let v = validator();
        // Inside the 5-minute skew on both ends.
        assert!(v.validate(&raw, at(NBF - 299)).is_ok());
        assert!(v.validate(&raw, at(EXP + 299)).is_ok());
        let e = v.validate(&raw, at(NBF - 301)).unwrap_err();
        assert!(e.to_string().contains("not valid before"), "{e}");
        let e = v.validate(&raw, at(EXP + 301)).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let strict = validator().with_clock_skew(Duration::ZERO);
        assert!(strict.validate(&raw, at(EXP)).is_err());
        assert!(strict.validate(&raw, at(NBF - 1)).is_err());
    }

    #[test]
    fn malformed_tokens_are_rejected_without_panic() {
        let v = validator();
        for raw in ["", "abc", "a.b.c", &sign(&Map::new(), SECRET)] {
            assert!(
                matches!(
                    v.validate(raw, at(NBF)),
                    Err(IdentityError::InvalidToken(_))
                ),
                "{raw}"
            );
        }
        let mut c = doc_claims();
        c.remove("refreshtoken");
        assert!(
            v.validate(&sign(&c, SECRET), at(NBF))
                .unwrap_err()
                .to_string()
                .contains("refreshtoken")
        );
        let mut c = doc_claims();
        c.insert("appctx".into(), "not json".into());
        assert!(
            v.validate(&sign(&c, SECRET), at(NBF))
                .unwrap_err()
                .to_string()
                .contains("appctx")
        );
        let bad_secret = ContextTokenValidator::new(
            CLIENT,
            ClientSecret::new("%%%"),
            vec!["fabrikam.com".into()],
        );
        assert!(matches!(
            bad_secret.validate(&sign(&doc_claims(), SECRET), at(NBF)),
            Err(IdentityError::InvalidInput(_))
        ));
    }
}
