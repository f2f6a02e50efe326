//! login.live.com (`oauth20_authorize.srf`, `oauth20_token.srf`, `oauth20_logout.srf`) and the
//! Office 365 Discovery service.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::json;

use crate::Shared;
use crate::model::{AuthCode, GrantKind, LiveAccess, RefreshState, RefreshToken};
use crate::util::{Req, add_query, field, json, opaque, redirect, unix_now};

const LIVE_TTL: i64 = 3600;

fn live_error(status: StatusCode, error: &str, desc: &str) -> Response {
    json(status, &json!({"error": error, "error_description": desc}))
}

pub(crate) fn handle(st: &Arc<Shared>, r: Req) -> Response {
    let tail = r.path["/live/".len()..].to_ascii_lowercase();
    match (r.method.clone(), tail.as_str()) {
        (Method::GET, "oauth20_authorize.srf") => authorize(st, &r),
        (Method::POST, "oauth20_token.srf") => token(st, &r),
        (Method::GET, "oauth20_logout.srf") => match r.q("redirect_uri") {
            Some(u) => redirect(u),
            None => json(StatusCode::OK, &json!({})),
        },
        _ => live_error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "The requested endpoint does not exist.",
        ),
    }
}

fn authorize(st: &Shared, r: &Req) -> Response {
    let client_id = r.q("client_id").unwrap_or_default().to_string();
    let mut db = st.db();
    let Some(app) = db.entra_app(&client_id).cloned() else {
        return live_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "The client does not exist or is not enabled for consumers. If you are the application developer, configure a new application through the App Registrations in the Azure Portal.",
        );
    };
    let redirect_uri = r.q("redirect_uri").unwrap_or(&app.redirect_uri).to_string();
    let loopback = url::Url::parse(&redirect_uri)
        .map(|u| matches!(u.host_str(), Some("localhost" | "127.0.0.1")))
        .unwrap_or(false);
    if redirect_uri != app.redirect_uri && !loopback {
        return live_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The provided value for the input parameter 'redirect_uri' is not valid. The expected value is a URI which matches a redirect URI registered for this client application.",
        );
    }
    let scope = r.q("scope").unwrap_or("onedrive.readwrite").to_string();
    let state = r.q("state").unwrap_or_default().to_string();
    let Some(user) = db.users.first().cloned() else {
        return live_error(StatusCode::BAD_REQUEST, "access_denied", "No user.");
    };
    match r.q("response_type") {
        Some("code") => {
            let code = format!("M.C5{}", opaque("_"));
            db.issued_codes.push(code.clone());
            db.codes.insert(
                code.clone(),
                AuthCode {
                    kind: GrantKind::Live,
                    client_id: app.client_id.clone(),
                    redirect_uri: redirect_uri.clone(),
                    challenge: None,
                    nonce: None,
                    scope,
                    resource: String::new(),
                    user_oid: user.oid,
                    expires: unix_now().saturating_add(crate::util::secs(st.cfg.opts.code_ttl)),
                    used: false,
                },
            );
            let mut p = vec![("code", code.as_str())];
            if !state.is_empty() {
                p.push(("state", state.as_str()));
            }
            redirect(&add_query(&redirect_uri, &p))
        }
        Some("token") => {
            let at = opaque("EwB");
            db.live_tokens.insert(
                at.clone(),
                LiveAccess {
                    expires: unix_now() + LIVE_TTL,
                },
            );
            let ttl = LIVE_TTL.to_string();
            let mut p = vec![
                ("access_token", at.as_str()),
                ("token_type", "bearer"),
                ("expires_in", ttl.as_str()),
                ("scope", scope.as_str()),
                ("user_id", user.puid.as_str()),
            ];
            if !state.is_empty() {
                p.push(("state", state.as_str()));
            }
            let frag = serde_urlencoded::to_string(&p).unwrap_or_default();
            redirect(&format!("{redirect_uri}#{frag}"))
        }
        _ => redirect(&add_query(
            &redirect_uri,
            &[
                ("error", "unsupported_response_type"),
                (
                    "error_description",
                    "The provided value for the input parameter 'response_type' is not allowed for this request. Expected 'code' or 'token'.",
                ),
                ("state", &state),
            ],
        )),
    }
}

fn token(st: &Shared, r: &Req) -> Response {
    let form = r.form();
    let client_id = field(&form, "client_id").unwrap_or_default().to_string();
    let mut db = st.db();
    let Some(app) = db.entra_app(&client_id).cloned() else {
        return live_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "The client does not exist or is not enabled for consumers.",
        );
    };
    if !app.public_client && field(&form, "client_secret") != app.secret.as_deref() {
        return live_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The client secret is not valid for this client.",
        );
    }
    let now = unix_now();
    let (scope, oid) = match field(&form, "grant_type").unwrap_or_default() {
        "authorization_code" => {
            let code = field(&form, "code").unwrap_or_default().to_string();
            let Some(c) = db
                .codes
                .get(&code)
                .filter(|c| c.kind == GrantKind::Live && c.client_id == app.client_id)
            else {
                return live_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The provided value for the 'code' parameter is not valid.",
                );
            };
            if c.used || c.expires <= now {
                return live_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The provided value for the 'code' parameter is not valid. The code has expired or was already used.",
                );
            }
            if field(&form, "redirect_uri") != Some(c.redirect_uri.as_str()) {
                return live_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The provided value for the 'redirect_uri' is not valid. The value must exactly match the redirect URI used to obtain the authorization code.",
                );
            }
            let out = (c.scope.clone(), c.user_oid.clone());
            if let Some(c) = db.codes.get_mut(&code) {
                c.used = true;
            }
            out
        }
        "refresh_token" => {
            let rt = field(&form, "refresh_token")
                .unwrap_or_default()
                .to_string();
            let Some(t) = db
                .refresh
                .get(&rt)
                .filter(|t| t.kind == GrantKind::Live && t.client_id == app.client_id)
            else {
                return live_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The provided value for the 'refresh_token' parameter is not valid.",
                );
            };
            if t.state != RefreshState::Active || t.expires <= now {
                return live_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The user could not be signed in because their refresh token has expired or was revoked.",
                );
            }
            let out = (t.scope.clone(), t.user_oid.clone());
            if let Some(t) = db.refresh.get_mut(&rt) {
                t.last_used = now;
            }
            out
        }
        other => {
            return live_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!(
                    "The provided value for the input parameter 'grant_type' is not valid: '{other}'."
                ),
            );
        }
    };
    let at = opaque("EwB");
    db.live_tokens.insert(
        at.clone(),
        LiveAccess {
            expires: now + LIVE_TTL,
        },
    );
    let rt = opaque("M.R3_");
    db.refresh.insert(
        rt.clone(),
        RefreshToken {
            kind: GrantKind::Live,
            client_id: app.client_id.clone(),
            scope: scope.clone(),
            resource: String::new(),
            user_oid: oid.clone(),
            issued: now,
            expires: now.saturating_add(crate::util::secs(st.cfg.opts.refresh_token_ttl)),
            last_used: now,
            state: RefreshState::Active,
        },
    );
    let puid = db.user(&oid).map(|u| u.puid.clone()).unwrap_or_default();
    json(
        StatusCode::OK,
        &json!({
            "token_type": "bearer",
            "expires_in": LIVE_TTL,
            "scope": scope,
            "access_token": at,
            "refresh_token": rt,
            "user_id": puid,
        }),
    )
}

/// `GET /discovery/v1.0/me/services` with an Entra token for the Discovery resource.
pub(crate) fn discovery(st: &Arc<Shared>, r: Req) -> Response {
    let lower = r.path.to_ascii_lowercase();
    if !(lower == "/discovery/v1.0/me/services" || lower == "/discovery/v2.0/me/services") {
        return json(
            StatusCode::NOT_FOUND,
            &json!({"error": {"code": "-1, Microsoft.Data.OData.ODataException", "message": "Resource not found for the segment."}}),
        );
    }
    let ok = r
        .bearer()
        .and_then(|t| st.cfg.signer.verify(t).ok())
        .and_then(|c| c.get("aud").and_then(|a| a.as_str()).map(str::to_string))
        .map(|aud| crate::aad::classify_resource(st, &aud) == Some(crate::aad::Api::Discovery))
        .unwrap_or(false);
    if !ok {
        return crate::util::with_header(
            json(
                StatusCode::UNAUTHORIZED,
                &json!({"error": {"code": "-2147024891, System.UnauthorizedAccessException", "message": "Access denied. The token is missing, invalid or not issued for the Discovery service."}}),
            ),
            "www-authenticate",
            &format!(
                "Bearer realm=\"{}\", authorization_uri=\"{}/common/oauth2/authorize\"",
                st.cfg.tenant,
                st.cfg.login()
            ),
        );
    }
    let base = &st.cfg.base;
    let db = st.db();
    let my = db
        .sites
        .iter()
        .find(|s| s.personal)
        .map(|s| format!("{base}{}", s.server_relative_url))
        .unwrap_or_default();
    json(
        StatusCode::OK,
        &json!({
            "@odata.context": format!("{base}/discovery/v1.0/me/$metadata#allServices"),
            "value": [
                {
                    "@odata.type": "#Microsoft.DiscoveryServices.ServiceInfo",
                    "capability": "MyFiles",
                    "serviceApiVersion": "v2.0",
                    "serviceEndpointUri": format!("{my}/_api/v2.0"),
                    "serviceResourceId": format!("{base}/"),
                },
                {
                    "@odata.type": "#Microsoft.DiscoveryServices.ServiceInfo",
                    "capability": "RootSite",
                    "serviceApiVersion": "",
                    "serviceEndpointUri": format!("{base}/_api"),
                    "serviceResourceId": format!("{base}/"),
                }
            ]
        }),
    )
}
