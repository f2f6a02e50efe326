//! ACS (accounts.accesscontrol.windows.net): the OAuth2 token endpoint for SharePoint add-ins
//! (client credentials, authorization code, refresh token), `OAuthAuthorize.aspx`,
//! `AppRedirect.aspx` and context tokens.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde_json::json;

use crate::Shared;
use crate::model::{
    ACS_PRINCIPAL, AuthCode, GrantKind, RefreshState, RefreshToken, SHAREPOINT_PRINCIPAL,
};
use crate::util::{
    Req, aad_time, add_query, field, json, new_guid, now, opaque, redirect, unix_now,
};

const ACS_TTL: i64 = 86399;

fn acs_error(status: StatusCode, error: &str, code: &str, msg: &str) -> Response {
    let ts = aad_time(now());
    json(
        status,
        &json!({
            "error": error,
            "error_description": format!("{code}: {msg}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {ts}", new_guid(), new_guid()),
        }),
    )
}

fn realm_of(path: &str) -> Option<&str> {
    // /acs/{realm}/tokens/OAuth/2
    let rest = path.strip_prefix("/acs/")?;
    let (realm, tail) = rest.split_once('/')?;
    tail.eq_ignore_ascii_case("tokens/OAuth/2").then_some(realm)
}

/// Checks `{principal}/{host}@{realm}`; returns the host as given.
fn check_resource(st: &Shared, resource: &str) -> Result<String, Response> {
    let bad = || {
        acs_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "ACS50001",
            &format!(
                "Relying party with identifier '{resource}' was not found. The resource must be '{SHAREPOINT_PRINCIPAL}/{{host}}@{{realm}}'."
            ),
        )
    };
    let (principal_host, realm) = resource.split_once('@').ok_or_else(bad)?;
    let (principal, host) = principal_host.split_once('/').ok_or_else(bad)?;
    if principal != SHAREPOINT_PRINCIPAL || !realm.eq_ignore_ascii_case(&st.cfg.tenant) {
        return Err(bad());
    }
    if !host.eq_ignore_ascii_case(&st.cfg.host) && !host.eq_ignore_ascii_case(&st.cfg.hostname) {
        return Err(bad());
    }
    Ok(host.to_string())
}

pub(crate) fn token_endpoint(st: &Arc<Shared>, r: Req) -> Response {
    let Some(realm) = realm_of(&r.path) else {
        return acs_error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "ACS90001",
            "The endpoint is /{realm}/tokens/OAuth/2.",
        );
    };
    if r.method != axum::http::Method::POST {
        return acs_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "ACS90001",
            "The token endpoint accepts POST only.",
        );
    }
    if !realm.eq_ignore_ascii_case(&st.cfg.tenant) {
        return acs_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "ACS90011",
            &format!("The realm '{realm}' is not a configured realm of the tenant."),
        );
    }
    let form = r.form();
    let client = field(&form, "client_id").unwrap_or_default();
    let Some((client_id, client_realm)) = client.split_once('@') else {
        return acs_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "ACS50012",
            "Authentication failed. The client_id must be '{client id}@{realm}'.",
        );
    };
    if !client_realm.eq_ignore_ascii_case(&st.cfg.tenant) {
        return acs_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "ACS50012",
            "Authentication failed. The client realm does not match the token endpoint realm.",
        );
    }
    let mut db = st.db();
    let Some(app) = db.acs_app(client_id).cloned() else {
        return acs_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "ACS50012",
            &format!(
                "Authentication failed. No service principal '{client_id}' exists in the realm."
            ),
        );
    };
    if field(&form, "client_secret") != Some(app.secret.as_str()) {
        return acs_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "ACS50012",
            "Authentication failed.",
        );
    }
    let resource = field(&form, "resource").unwrap_or_default().to_string();
    if let Err(resp) = check_resource(st, &resource) {
        return resp;
    }
    let realm = st.cfg.tenant.clone();
    let now = unix_now();
    let exp = now + ACS_TTL;
    let mut claims = json!({
        "aud": resource,
        "iss": format!("{ACS_PRINCIPAL}@{realm}"),
        "nbf": now,
        "exp": exp,
    });
    let mut refresh_out = None;
    match field(&form, "grant_type").unwrap_or_default() {
        "client_credentials" => {
            let oid = new_guid();
            claims["nameid"] = json!(format!("{}@{realm}", app.client_id));
            claims["sub"] = json!(oid);
            claims["oid"] = json!(oid);
            claims["trustedfordelegation"] = json!("false");
            claims["identityprovider"] = json!(format!("{ACS_PRINCIPAL}@{realm}"));
        }
        "authorization_code" => {
            let code = field(&form, "code").unwrap_or_default().to_string();
            let Some(c) = db
                .codes
                .get(&code)
                .filter(|c| c.kind == GrantKind::Acs && c.client_id == app.client_id)
            else {
                return acs_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "ACS70002",
                    "Error validating credentials. The authorization code is invalid.",
                );
            };
            if c.used {
                return acs_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "ACS70002",
                    "Error validating credentials. The authorization code has already been used.",
                );
            }
            if c.expires <= now {
                return acs_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "ACS70002",
                    "Error validating credentials. The authorization code has expired.",
                );
            }
            let given = field(&form, "redirect_uri").unwrap_or_default();
            if given != c.redirect_uri {
                return acs_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "ACS50011",
                    &format!(
                        "The reply address '{given}' does not match the reply address '{}' provided when requesting Authorization code.",
                        c.redirect_uri
                    ),
                );
            }
            let oid = c.user_oid.clone();
            if let Some(c) = db.codes.get_mut(&code) {
                c.used = true;
            }
            let Some(user) = db.user(&oid).cloned() else {
                return acs_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "ACS70002",
                    "Error validating credentials. The user does not exist.",
                );
            };
            user_claims(&mut claims, &user.puid, &app.client_id, &realm);
            let rt = opaque("IAAAA");
            db.refresh.insert(
                rt.clone(),
                RefreshToken {
                    kind: GrantKind::Acs,
                    client_id: app.client_id.clone(),
                    scope: String::new(),
                    resource: resource.clone(),
                    user_oid: user.oid.clone(),
                    issued: now,
                    expires: now.saturating_add(crate::util::secs(st.cfg.opts.refresh_token_ttl)),
                    last_used: now,
                    state: RefreshState::Active,
                },
            );
            refresh_out = Some(rt);
        }
        "refresh_token" => {
            let rt = field(&form, "refresh_token")
                .unwrap_or_default()
                .to_string();
            let Some(t) = db
                .refresh
                .get(&rt)
                .filter(|t| t.kind == GrantKind::Acs && t.client_id == app.client_id)
            else {
                return acs_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "ACS70002",
                    "Error validating credentials. The refresh token is invalid.",
                );
            };
            if t.state != RefreshState::Active || t.expires <= now {
                return acs_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "ACS70002",
                    "Error validating credentials. The refresh token has expired or was revoked.",
                );
            }
            let oid = t.user_oid.clone();
            let Some(user) = db.user(&oid).cloned() else {
                return acs_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "ACS70002",
                    "Error validating credentials. The user does not exist.",
                );
            };
            if let Some(t) = db.refresh.get_mut(&rt) {
                t.last_used = now;
            }
            user_claims(&mut claims, &user.puid, &app.client_id, &realm);
        }
        other => {
            return acs_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "ACS70003",
                &format!("The grant type '{other}' is not supported."),
            );
        }
    }
    let at = st.cfg.signer.sign(&claims);
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": ACS_TTL.to_string(),
        "not_before": now.to_string(),
        "expires_on": exp.to_string(),
        "resource": resource,
        "access_token": at,
    });
    if let Some(rt) = refresh_out {
        body["refresh_token"] = json!(rt);
        body["refresh_token_expires_in"] =
            json!(st.cfg.opts.refresh_token_ttl.as_secs().to_string());
    }
    json(StatusCode::OK, &body)
}

fn user_claims(claims: &mut serde_json::Value, puid: &str, client_id: &str, realm: &str) {
    claims["nameid"] = json!(puid);
    claims["actor"] = json!(format!("{client_id}@{realm}"));
    claims["identityprovider"] = json!("urn:federation:microsoftonline");
}

fn hmac_key(secret: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret)
        .unwrap_or_else(|_| secret.as_bytes().to_vec())
}

/// An SPAppToken as SharePoint posts it to a provider-hosted add-in.
pub(crate) fn mint_context_token(st: &Shared, client_id: &str, site_name: &str) -> Option<String> {
    let mut db = st.db();
    let app = db.acs_app(client_id)?.clone();
    db.sites.iter().find(|s| s.name == site_name)?;
    let user = db.users.first()?.clone();
    let realm = st.cfg.tenant.clone();
    let now = unix_now();
    let rt = opaque("IAAAA");
    db.refresh.insert(
        rt.clone(),
        RefreshToken {
            kind: GrantKind::Acs,
            client_id: app.client_id.clone(),
            scope: String::new(),
            resource: format!("{SHAREPOINT_PRINCIPAL}/{}@{realm}", st.cfg.host),
            user_oid: user.oid.clone(),
            issued: now,
            expires: now.saturating_add(crate::util::secs(st.cfg.opts.refresh_token_ttl)),
            last_used: now,
            state: RefreshState::Active,
        },
    );
    let appctx = json!({
        "CacheKey": crate::util::b64(uuid::Uuid::new_v4().as_bytes()),
        "SecurityTokenServiceUri": format!("{}/{realm}/tokens/OAuth/2", st.cfg.acs()),
    });
    let claims = json!({
        "aud": format!("{}/{}@{realm}", app.client_id, st.cfg.host),
        "iss": format!("{ACS_PRINCIPAL}@{realm}"),
        "nbf": now.to_string(),
        "exp": (now + 43200).to_string(),
        "appctxsender": format!("{SHAREPOINT_PRINCIPAL}@{realm}"),
        "appctx": appctx.to_string(),
        "refreshtoken": rt,
        "isbrowserhostedapp": "true",
    });
    Some(crate::tokens::sign_hs256(&hmac_key(&app.secret), &claims))
}

/// `/_layouts/15/OAuthAuthorize.aspx`: consent is automatic, 302 to the redirect URI.
pub(crate) fn oauth_authorize(st: &Shared, r: &Req) -> Response {
    let client_id = r.q("client_id").unwrap_or_default().to_string();
    let mut db = st.db();
    let Some(app) = db.acs_app(&client_id).cloned() else {
        return crate::sharepoint::sp_error_plain(
            StatusCode::BAD_REQUEST,
            "-2147024809, System.ArgumentException",
            &format!("The app identifier '{client_id}' is not registered."),
        );
    };
    let redirect_uri = r.q("redirect_uri").unwrap_or(&app.redirect_uri).to_string();
    if redirect_uri != app.redirect_uri
        && !url::Url::parse(&redirect_uri)
            .map(|u| matches!(u.host_str(), Some("localhost" | "127.0.0.1")))
            .unwrap_or(false)
    {
        return crate::sharepoint::sp_error_plain(
            StatusCode::BAD_REQUEST,
            "-2147024809, System.ArgumentException",
            "The redirect_uri does not match the app's registered redirect URI.",
        );
    }
    if r.q("response_type") != Some("code") {
        return crate::sharepoint::sp_error_plain(
            StatusCode::BAD_REQUEST,
            "-2147024809, System.ArgumentException",
            "response_type must be 'code'.",
        );
    }
    let Some(user) = db.users.first().cloned() else {
        return crate::sharepoint::sp_error_plain(
            StatusCode::FORBIDDEN,
            "-2147024891, System.UnauthorizedAccessException",
            "No user.",
        );
    };
    let code = opaque("IAAAA");
    db.issued_codes.push(code.clone());
    db.codes.insert(
        code.clone(),
        AuthCode {
            kind: GrantKind::Acs,
            client_id: app.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge: None,
            nonce: None,
            scope: r.q("scope").unwrap_or_default().to_string(),
            resource: String::new(),
            user_oid: user.oid,
            expires: unix_now().saturating_add(crate::util::secs(st.cfg.opts.code_ttl)),
            used: false,
        },
    );
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = r.q("state") {
        params.push(("state", s));
    }
    redirect(&add_query(&redirect_uri, &params))
}

/// `/_layouts/15/AppRedirect.aspx`: an auto-submitting form posting `SPAppToken`.
pub(crate) fn app_redirect(st: &Shared, r: &Req, site_name: &str, site_url: &str) -> Response {
    let client_id = r.q("client_id").unwrap_or_default().to_string();
    let redirect_uri = {
        let db = st.db();
        match db.acs_app(&client_id) {
            Some(a) => r.q("redirect_uri").unwrap_or(&a.redirect_uri).to_string(),
            None => {
                return crate::sharepoint::sp_error_plain(
                    StatusCode::BAD_REQUEST,
                    "-2147024809, System.ArgumentException",
                    &format!("The app identifier '{client_id}' is not registered."),
                );
            }
        }
    };
    let Some(token) = mint_context_token(st, &client_id, site_name) else {
        return crate::sharepoint::sp_error_plain(
            StatusCode::NOT_FOUND,
            "-2147024894, System.IO.FileNotFoundException",
            "File Not Found.",
        );
    };
    crate::aad::form_post(
        &redirect_uri,
        &[
            ("SPAppToken", &token),
            ("SPSiteUrl", site_url),
            ("SPSiteTitle", site_name),
            ("SPSiteLogoUrl", ""),
            ("SPSiteLanguage", "en-US"),
            ("SPSiteCulture", "en-US"),
            ("SPRedirectMessage", "EndpointAuthorityMatches"),
            ("SPErrorCorrelationId", &new_guid()),
            ("SPErrorInfo", ""),
        ],
    )
}
