//! Explains why SharePoint or Graph refused an access token after a fresh one was tried.
//!
//! Inputs: the token that was refused (decoded without verification by
//! [`crate::identity::jwt::inspect`]), the `WWW-Authenticate` and `x-ms-diagnostics` headers and
//! Microsoft's error body ([`AuthDiagnostics`]), and which service refused it. The answer names the
//! most likely cause and what to do; it quotes claims (audience, roles, `appidacr`, tenant) but
//! never the token.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use time::OffsetDateTime;

use super::AuthDiagnostics;
use crate::identity::jwt::{self, JwtSummary};
use crate::microsoft::{Action, System};

/// The ACS principal id of SharePoint (`00000003-0000-0ff1-ce00-000000000000`).
const SHAREPOINT_PRINCIPAL: &str = "00000003-0000-0ff1-ce00-000000000000";
/// The ACS issuer principal (`00000001-0000-0000-c000-000000000000@realm`).
const ACS_ISSUER_PRINCIPAL: &str = "00000001-0000-0000-c000-000000000000";
/// Graph's resource id, the `aud` of some Graph tokens.
const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// The date from which Microsoft stops accepting ACS (SharePoint add-in) tokens in SharePoint
/// Online: 2 April 2026.
pub fn acs_retirement() -> OffsetDateTime {
    time::macros::datetime!(2026-04-02 00:00 UTC)
}

/// Which service refused the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service<'a> {
    /// SharePoint REST on this host (`contoso.sharepoint.com`, or the emulator's `127.0.0.1:port`).
    SharePoint {
        /// The host the request went to.
        host: &'a str,
    },
    /// Microsoft Graph.
    Graph,
}

/// The most likely reason for the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthCause {
    /// The token is for another resource than the one called.
    WrongAudience,
    /// An app-only token obtained with a client secret was sent to SharePoint, which accepts
    /// app-only Entra tokens only from a certificate credential.
    SecretInsteadOfCertificate,
    /// An ACS token was sent to SharePoint Online after ACS was retired there.
    AcsRetired,
    /// App-only with `Sites.Selected`, but the app has no grant on this site.
    MissingSitesSelectedGrant,
    /// The token carries no role or scope that allows writing files.
    MissingPermission,
    /// The token had expired.
    Expired,
    /// A Conditional Access policy requires more claims (Graph claims challenge).
    ClaimsChallenge,
    /// Nothing specific was found; see the details.
    Unknown,
}

impl AuthCause {
    /// The snake_case name, as in the JSON answer.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthCause::WrongAudience => "wrong_audience",
            AuthCause::SecretInsteadOfCertificate => "secret_instead_of_certificate",
            AuthCause::AcsRetired => "acs_retired",
            AuthCause::MissingSitesSelectedGrant => "missing_sites_selected_grant",
            AuthCause::MissingPermission => "missing_permission",
            AuthCause::Expired => "expired",
            AuthCause::ClaimsChallenge => "claims_challenge",
            AuthCause::Unknown => "unknown",
        }
    }
}

/// The claims quoted in a diagnosis (never the token itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TokenFacts {
    /// `aud`.
    pub aud: Vec<String>,
    /// `roles`.
    pub roles: Vec<String>,
    /// `scp`.
    pub scp: Vec<String>,
    /// `appidacr`: 0 public, 1 secret, 2 certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appidacr: Option<String>,
    /// Tenant (`tid`, or the ACS realm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Whether it was issued by ACS.
    pub acs: bool,
}

impl TokenFacts {
    fn from_summary(s: &JwtSummary) -> Self {
        TokenFacts {
            aud: s.aud.clone(),
            roles: s.roles.clone(),
            scp: s.scp.clone(),
            appidacr: s.appidacr.clone(),
            tenant: s.tenant().map(str::to_owned),
            acs: is_acs(s),
        }
    }
}

/// A diagnosis: cause, a sentence for humans, and the facts it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// The most likely cause.
    pub cause: AuthCause,
    /// What happened and what to do, in one or two sentences.
    pub explanation: String,
    /// The decoded claims, when the token was a JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenFacts>,
    /// `x-ms-diagnostics` as SharePoint sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_ms_diagnostics: Option<String>,
    /// `WWW-Authenticate` as the service sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub www_authenticate: Option<String>,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.explanation, self.cause.as_str())
    }
}

fn is_acs(s: &JwtSummary) -> bool {
    s.iss
        .as_deref()
        .is_some_and(|i| i.starts_with(ACS_ISSUER_PRINCIPAL))
        || s.aud
            .iter()
            .any(|a| a.starts_with(&format!("{SHAREPOINT_PRINCIPAL}/")))
}

fn host_of(aud: &str) -> Option<String> {
    // ACS: `0000…/host@realm`; AAD: `https://host` or `https://host/`.
    if let Some(rest) = aud.strip_prefix(&format!("{SHAREPOINT_PRINCIPAL}/")) {
        return Some(rest.split('@').next().unwrap_or(rest).to_ascii_lowercase());
    }
    url::Url::parse(aud).ok().and_then(|u| {
        let host = u.host_str()?.to_ascii_lowercase();
        Some(match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        })
    })
}

fn audience_matches(s: &JwtSummary, service: Service<'_>) -> bool {
    match service {
        Service::SharePoint { host } => {
            let host = host.to_ascii_lowercase();
            s.aud.iter().any(|a| {
                a.eq_ignore_ascii_case(SHAREPOINT_PRINCIPAL)
                    || host_of(a).is_some_and(|h| h == host)
            })
        }
        Service::Graph => s.aud.iter().any(|a| {
            a.eq_ignore_ascii_case(GRAPH_APP_ID)
                || host_of(a).is_some_and(|h| h.starts_with("graph.") || h.contains("graph"))
        }),
    }
}

/// Writing roles and scopes that let an app or user put files somewhere.
fn can_write(s: &JwtSummary) -> bool {
    let writes = |v: &str| {
        let v = v.to_ascii_lowercase();
        v.contains("readwrite")
            || v.contains("fullcontrol")
            || v.contains("manage")
            || v == "sites.selected"
            || v == "allsites.write"
            || v == "allsites.manage"
            || v == "allsites.fullcontrol"
            || v == "mysite.write"
    };
    s.roles.iter().any(|r| writes(r)) || s.scp.iter().any(|r| writes(r))
}

/// Whether Microsoft's error body says "access denied" ([`Action::MissingPermission`]).
fn body_denies(diag: &AuthDiagnostics, service: Service<'_>) -> bool {
    let system = match service {
        Service::SharePoint { .. } => System::SharePoint,
        Service::Graph => System::Graph,
    };
    diag.microsoft
        .as_ref()
        .is_some_and(|m| m.action(system) == Some(Action::MissingPermission))
}

/// Explains a refusal. `token` is the token that was refused (if known), `now` the current time.
pub fn diagnose(
    token: Option<&SecretString>,
    diag: &AuthDiagnostics,
    service: Service<'_>,
    now: OffsetDateTime,
) -> Diagnosis {
    let summary = token.and_then(|t| jwt::inspect(t.expose_secret()).ok());
    let xms = diag.x_ms_diagnostics.clone().unwrap_or_default();
    let www = diag.www_authenticate.clone().unwrap_or_default();
    let ms_message = diag
        .microsoft
        .as_ref()
        .map(|m| m.message.clone())
        .unwrap_or_default();
    let text = format!("{xms} {www} {ms_message}").to_ascii_lowercase();
    let host = match service {
        Service::SharePoint { host } => host.to_ascii_lowercase(),
        Service::Graph => String::new(),
    };
    let online = host.ends_with(".sharepoint.com")
        || host.ends_with(".sharepoint.us")
        || host.ends_with(".sharepoint.cn");

    let (cause, explanation) = match &summary {
        Some(s) if s.expires_at().is_some_and(|e| e <= now) => (
            AuthCause::Expired,
            "the access token had expired even after a refresh; check the clock and the token cache"
                .to_owned(),
        ),
        Some(s) if !audience_matches(s, service) => (
            AuthCause::WrongAudience,
            format!(
                "the token's audience {:?} is not {}; request the token for that resource",
                s.aud,
                match service {
                    Service::SharePoint { host } => format!("SharePoint at {host}"),
                    Service::Graph => "Microsoft Graph".to_owned(),
                }
            ),
        ),
        Some(s) if is_acs(s) && online && now >= acs_retirement() => (
            AuthCause::AcsRetired,
            "this is an ACS (SharePoint add-in) token, and SharePoint Online stopped accepting ACS \
             tokens on 2026-04-02; switch the connection to Entra with a certificate credential"
                .to_owned(),
        ),
        Some(s)
            if matches!(service, Service::SharePoint { .. })
                && s.is_app_only()
                && s.appidacr.as_deref() == Some("1") =>
        (
            AuthCause::SecretInsteadOfCertificate,
            "SharePoint refuses app-only tokens obtained with a client secret (appidacr=1, \
             \"Unsupported app only token\"); add a certificate to the app registration and \
             request the token with a certificate assertion"
                .to_owned(),
        ),
        _ if text.contains("unsupported app only token") => (
            AuthCause::SecretInsteadOfCertificate,
            "SharePoint answered \"Unsupported app only token\": app-only access to SharePoint \
             needs a token obtained with a certificate, not a client secret"
                .to_owned(),
        ),
        _ if text.contains("insufficient_claims") => (
            AuthCause::ClaimsChallenge,
            "a Conditional Access policy requires claims this token lacks; the user must sign in \
             again through the connect flow"
                .to_owned(),
        ),
        Some(s) if s.roles.iter().any(|r| r.eq_ignore_ascii_case("Sites.Selected")) => (
            AuthCause::MissingSitesSelectedGrant,
            "the app has Sites.Selected but no grant on this site; an administrator must grant it \
             write access (POST /sites/{site-id}/permissions)"
                .to_owned(),
        ),
        // The body itself says access denied (SharePoint's System.UnauthorizedAccessException,
        // even on a 401; Graph's accessDenied).
        _ if body_denies(diag, service) => (
            AuthCause::MissingPermission,
            "the service says access is denied: the account or app has no write access to this \
             site, library or folder"
                .to_owned(),
        ),
        // ACS tokens carry no roles or scopes at all: their absence says nothing.
        Some(s) if !is_acs(s) && !can_write(s) => (
            AuthCause::MissingPermission,
            format!(
                "the token carries no permission to write files (roles {:?}, scopes {:?}); grant \
                 and consent a write permission such as Sites.ReadWrite.All or Files.ReadWrite",
                s.roles, s.scp
            ),
        ),
        _ if diag.status == 403 => (
            AuthCause::MissingPermission,
            "the account or app has no write access to this library or folder".to_owned(),
        ),
        _ => (
            AuthCause::Unknown,
            "the service refused the token; see x_ms_diagnostics and www_authenticate".to_owned(),
        ),
    };
    Diagnosis {
        cause,
        explanation,
        token: summary.as_ref().map(TokenFacts::from_summary),
        x_ms_diagnostics: diag.x_ms_diagnostics.clone(),
        www_authenticate: diag.www_authenticate.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn token(claims: serde_json::Value) -> SecretString {
        let b = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        SecretString::from(format!(
            "{}.{}.c2ln",
            b(json!({"alg": "RS256", "typ": "JWT"})),
            b(claims)
        ))
    }

    fn diag(status: u16, xms: Option<&str>) -> AuthDiagnostics {
        AuthDiagnostics {
            status,
            www_authenticate: Some("Bearer realm=\"r\", client_id=\"c\"".into()),
            x_ms_diagnostics: xms.map(str::to_owned),
            request_id: None,
            microsoft: None,
        }
    }

    const NOW: i64 = 1_795_327_200; // 2026-11-22
    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW).unwrap()
    }
    const SP: Service<'static> = Service::SharePoint {
        host: "contoso.sharepoint.com",
    };

    #[test]
    fn wrong_audience() {
        let t = token(
            json!({"aud": "https://graph.microsoft.com", "roles": ["Sites.ReadWrite.All"], "exp": NOW + 600}),
        );
        let d = diagnose(Some(&t), &diag(401, None), SP, now());
        assert_eq!(d.cause, AuthCause::WrongAudience);
        assert!(d.explanation.contains("graph.microsoft.com"));
        assert_eq!(
            d.token.unwrap().aud,
            vec!["https://graph.microsoft.com".to_string()]
        );
    }

    #[test]
    fn secret_instead_of_certificate() {
        let t = token(
            json!({"aud": "https://contoso.sharepoint.com", "roles": ["Sites.FullControl.All"],
            "appidacr": "1", "idtyp": "app", "exp": NOW + 600, "tid": "t1"}),
        );
        let d = diagnose(
            Some(&t),
            &diag(
                401,
                Some("3001000;reason=\"Unsupported app only token.\";category=\"invalid_client\""),
            ),
            SP,
            now(),
        );
        assert_eq!(d.cause, AuthCause::SecretInsteadOfCertificate);
        assert_eq!(d.token.as_ref().unwrap().appidacr.as_deref(), Some("1"));
        // Even without a decodable token, the header tells.
        let d = diagnose(
            None,
            &diag(401, Some("3001000;reason=\"Unsupported app only token.\"")),
            SP,
            now(),
        );
        assert_eq!(d.cause, AuthCause::SecretInsteadOfCertificate);
    }

    #[test]
    fn acs_retired_only_online_and_after_the_date() {
        let t = token(json!({
            "aud": "00000003-0000-0ff1-ce00-000000000000/contoso.sharepoint.com@realm",
            "iss": "00000001-0000-0000-c000-000000000000@realm", "exp": NOW + 600}));
        let d = diagnose(Some(&t), &diag(401, None), SP, now());
        assert_eq!(d.cause, AuthCause::AcsRetired);
        let before = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap(); // 2026-01-01
        let d = diagnose(Some(&t), &diag(401, None), SP, before);
        assert_ne!(d.cause, AuthCause::AcsRetired);
        // An on-premises or emulator host keeps ACS.
        let t = token(json!({
            "aud": "00000003-0000-0ff1-ce00-000000000000/127.0.0.1:9000@realm",
            "iss": "00000001-0000-0000-c000-000000000000@realm", "exp": NOW + 600}));
        let d = diagnose(
            Some(&t),
            &diag(403, None),
            Service::SharePoint {
                host: "127.0.0.1:9000",
            },
            now(),
        );
        assert_eq!(d.cause, AuthCause::MissingPermission);
    }

    #[test]
    fn sites_selected_without_grant() {
        let t = token(
            json!({"aud": "https://contoso.sharepoint.com", "roles": ["Sites.Selected"],
            "appidacr": "2", "idtyp": "app", "exp": NOW + 600}),
        );
        let d = diagnose(Some(&t), &diag(403, None), SP, now());
        assert_eq!(d.cause, AuthCause::MissingSitesSelectedGrant);
        let g = token(
            json!({"aud": "https://graph.microsoft.com", "roles": ["Sites.Selected"],
            "appidacr": "1", "idtyp": "app", "exp": NOW + 600}),
        );
        let d = diagnose(Some(&g), &diag(403, None), Service::Graph, now());
        assert_eq!(d.cause, AuthCause::MissingSitesSelectedGrant);
    }

    #[test]
    fn expired_and_read_only_and_unknown() {
        let t = token(json!({"aud": "https://contoso.sharepoint.com", "exp": NOW - 10}));
        assert_eq!(
            diagnose(Some(&t), &diag(401, None), SP, now()).cause,
            AuthCause::Expired
        );
        let t = token(
            json!({"aud": "https://contoso.sharepoint.com", "scp": "AllSites.Read", "exp": NOW + 60}),
        );
        assert_eq!(
            diagnose(Some(&t), &diag(403, None), SP, now()).cause,
            AuthCause::MissingPermission
        );
        let opaque = SecretString::from("EwB4A8l6BAAU…opaque".to_owned());
        let d = diagnose(Some(&opaque), &diag(401, None), Service::Graph, now());
        assert_eq!(d.cause, AuthCause::Unknown);
        assert!(d.token.is_none());
        // The token never appears in the diagnosis.
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("EwB4A8l6"));
    }

    #[test]
    fn an_acs_token_is_not_missing_permission_for_lacking_roles() {
        // On-premises SharePoint (no ACS retirement there): ACS tokens carry no roles or scp.
        let t = token(json!({
            "aud": "00000003-0000-0ff1-ce00-000000000000/sp.contoso.local@realm-1",
            "iss": "00000001-0000-0000-c000-000000000000@realm-1",
            "nameid": "app@realm-1", "exp": NOW + 600
        }));
        let host = Service::SharePoint {
            host: "sp.contoso.local",
        };
        let d = diagnose(Some(&t), &diag(401, None), host, now());
        assert_ne!(d.cause, AuthCause::MissingPermission, "{d}");
        assert_eq!(d.cause, AuthCause::Unknown);
    }

    #[test]
    fn an_access_denied_body_on_a_401_is_missing_permission() {
        let body = br#"{"odata.error":{"code":"-2147024891, System.UnauthorizedAccessException","message":{"lang":"en-US","value":"Access denied. You do not have permission to perform this action or access this resource."}}}"#;
        let ms =
            crate::upload::MicrosoftError::parse(401, &reqwest::header::HeaderMap::new(), body);
        let mut d = diag(401, None);
        d.microsoft = Some(Box::new(ms));
        let t = token(
            json!({"aud": "https://contoso.sharepoint.com", "roles": ["Sites.ReadWrite.All"], "exp": NOW + 600}),
        );
        let got = diagnose(Some(&t), &d, SP, now());
        assert_eq!(got.cause, AuthCause::MissingPermission, "{got}");
        assert!(got.explanation.contains("access is denied"), "{got}");
    }
}
