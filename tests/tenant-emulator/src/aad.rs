//! Azure AD v1 and Entra v2: metadata, keys, authorize (automatic consent) and the token
//! endpoint (code with PKCE, refresh, client credentials by secret or certificate assertion).

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::Shared;
use crate::model::{
    AuthCode, Db, EntraApp, GRAPH_PRINCIPAL, GrantKind, RefreshState, RefreshToken,
    SHAREPOINT_PRINCIPAL, User,
};
use crate::util::{
    Req, aad_time, add_query, b64url, field, json, new_guid, now, opaque, redirect, unix_now,
};

/// AADSTS-shaped error body.
pub(crate) fn aad_error(
    st: &Shared,
    status: StatusCode,
    error: &str,
    code: u32,
    msg: &str,
) -> Response {
    aad_error_extra(st, status, error, code, msg, None)
}

fn aad_error_extra(
    st: &Shared,
    status: StatusCode,
    error: &str,
    code: u32,
    msg: &str,
    suberror: Option<&str>,
) -> Response {
    let trace = new_guid();
    let corr = new_guid();
    let ts = aad_time(now());
    let mut body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {msg}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("{}/error?code={code}", st.cfg.login()),
    });
    if let Some(s) = suberror {
        body["suberror"] = json!(s);
    }
    json(status, &body)
}

/// Which tenant a path segment names, if any.
fn tenant_ok(st: &Shared, seg: &str) -> bool {
    let s = seg.to_ascii_lowercase();
    s == st.cfg.tenant
        || matches!(
            s.as_str(),
            "common" | "organizations" | "consumers" | "contoso.onmicrosoft.com"
        )
}

pub(crate) fn handle(st: &Arc<Shared>, r: Req) -> Response {
    let rest = r.path["/login/".len()..].to_string();
    let (tenant, tail) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let tail_l = tail.to_ascii_lowercase();
    if tenant.eq_ignore_ascii_case("common") && tail_l == "discovery/instance" {
        return instance_discovery(st, &r);
    }
    if !tenant_ok(st, tenant) {
        return aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        );
    }
    match (r.method.clone(), tail_l.as_str()) {
        (Method::GET, "v2.0/.well-known/openid-configuration") => openid_config(st, tenant, true),
        (Method::GET, ".well-known/openid-configuration") => openid_config(st, tenant, false),
        (Method::GET, "discovery/v2.0/keys" | "discovery/keys") => json(
            StatusCode::OK,
            &st.cfg
                .signer
                .jwks(&format!("{}/{}/v2.0", st.cfg.login(), st.cfg.tenant)),
        ),
        (Method::GET, "oauth2/v2.0/authorize") => authorize(st, &r, tenant, true),
        (Method::GET, "oauth2/authorize") => authorize(st, &r, tenant, false),
        (Method::POST, "oauth2/v2.0/token") => token(st, &r, tenant, true),
        (Method::POST, "oauth2/token") => token(st, &r, tenant, false),
        (Method::GET, "oauth2/v2.0/logout" | "oauth2/logout") => {
            match r.q("post_logout_redirect_uri") {
                Some(u) => redirect(u),
                None => json(StatusCode::OK, &json!({"signed_out": true})),
            }
        }
        _ => aad_error(
            st,
            StatusCode::NOT_FOUND,
            "invalid_request",
            900561,
            &format!(
                "The endpoint only accepts the documented methods; nothing is served at '{tail}'."
            ),
        ),
    }
}

fn instance_discovery(st: &Shared, r: &Req) -> Response {
    let endpoint = r.q("authorization_endpoint").unwrap_or_default();
    if !endpoint.starts_with(&st.cfg.login()) {
        return aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_instance",
            50049,
            "Unknown or invalid instance.",
        );
    }
    let host = st.cfg.host.clone();
    json(
        StatusCode::OK,
        &json!({
            "tenant_discovery_endpoint": format!("{}/{}/v2.0/.well-known/openid-configuration", st.cfg.login(), st.cfg.tenant),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }),
    )
}

fn openid_config(st: &Shared, tenant: &str, v2: bool) -> Response {
    let login = st.cfg.login();
    let tid = &st.cfg.tenant;
    let (authz, tok, iss, keys) = if v2 {
        (
            format!("{login}/{tenant}/oauth2/v2.0/authorize"),
            format!("{login}/{tenant}/oauth2/v2.0/token"),
            format!("{login}/{tid}/v2.0"),
            format!("{login}/{tenant}/discovery/v2.0/keys"),
        )
    } else {
        (
            format!("{login}/{tenant}/oauth2/authorize"),
            format!("{login}/{tenant}/oauth2/token"),
            format!("https://sts.windows.net/{tid}/"),
            format!("{login}/{tenant}/discovery/keys"),
        )
    };
    json(
        StatusCode::OK,
        &json!({
            "token_endpoint": tok,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": keys,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": iss,
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": format!("{}/oidc/userinfo", st.cfg.graph()),
            "authorization_endpoint": authz,
            "device_authorization_endpoint": format!("{login}/{tenant}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{login}/{tenant}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }),
    )
}

/// What kind of API a token audience names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Graph,
    SharePoint,
    Discovery,
}

pub(crate) fn classify_resource(st: &Shared, resource: &str) -> Option<Api> {
    let r = resource.trim_end_matches('/').to_ascii_lowercase();
    let cfg = &st.cfg;
    let graph_base = cfg.graph().to_ascii_lowercase();
    if r == "https://graph.microsoft.com" || r == GRAPH_PRINCIPAL || r == graph_base {
        return Some(Api::Graph);
    }
    if r == "https://api.office.com/discovery" || r == format!("{}/discovery", cfg.base) {
        return Some(Api::Discovery);
    }
    let host = cfg.host.to_ascii_lowercase();
    let sp = [
        SHAREPOINT_PRINCIPAL.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
        format!("https://{}", cfg.hostname),
        format!("http://{}", cfg.hostname),
    ];
    if sp.contains(&r) {
        return Some(Api::SharePoint);
    }
    None
}

fn redirect_allowed(registered: &str, given: &str) -> bool {
    if registered == given {
        return true;
    }
    // Entra ignores the port of loopback redirect URIs.
    match url::Url::parse(given) {
        Ok(u) => matches!(u.host_str(), Some("localhost" | "127.0.0.1")),
        Err(_) => false,
    }
}

fn authorize(st: &Shared, r: &Req, tenant: &str, v2: bool) -> Response {
    let _ = tenant;
    let client_id = r.q("client_id").unwrap_or_default().to_string();
    let mut db = st.db();
    let Some(app) = db.entra_app(&client_id).cloned() else {
        return aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                st.cfg.tenant
            ),
        );
    };
    let redirect_uri = r.q("redirect_uri").unwrap_or(&app.redirect_uri).to_string();
    if !redirect_allowed(&app.redirect_uri, &redirect_uri) {
        return aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'."
            ),
        );
    }
    let state = r.q("state").unwrap_or_default().to_string();
    let err_redirect = |error: &str, desc: &str| {
        redirect(&add_query(
            &redirect_uri,
            &[
                ("error", error),
                ("error_description", desc),
                ("state", &state),
            ],
        ))
    };
    if r.q("response_type") != Some("code") {
        return err_redirect(
            "unsupported_response_type",
            "AADSTS70005: The provided value for the input parameter 'response_type' is not allowed for this request. Expected 'code'.",
        );
    }
    let (scope, resource) = if v2 {
        let Some(scope) = r.q("scope").filter(|s| !s.is_empty()) else {
            return err_redirect(
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'scope'.",
            );
        };
        let resource = resource_of_scopes(scope);
        (scope.to_string(), resource)
    } else {
        let resource = r
            .q("resource")
            .unwrap_or("https://graph.microsoft.com")
            .to_string();
        ("user_impersonation".to_string(), resource)
    };
    if classify_resource(st, &resource).is_none() {
        return err_redirect(
            "invalid_resource",
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant named {}.",
                st.cfg.tenant
            ),
        );
    }
    let revoked = db.consent_revoked.contains(&client_id.to_lowercase());
    if revoked {
        if r.q("prompt") == Some("none") {
            return err_redirect(
                "consent_required",
                &format!(
                    "AADSTS65001: The user or administrator has not consented to use the application with ID '{client_id}' named '{}'. Send an interactive authorization request for this user and resource.",
                    app.name
                ),
            );
        }
        // Interactive sign-in: the user consents again automatically.
        db.consent_revoked.remove(&client_id.to_lowercase());
    }
    let Some(user) = db.user_by_hint(r.q("login_hint")).cloned() else {
        return err_redirect(
            "access_denied",
            "AADSTS50034: The user account does not exist.",
        );
    };
    let challenge = r.q("code_challenge").map(|c| {
        (
            c.to_string(),
            r.q("code_challenge_method").unwrap_or("plain").to_string(),
        )
    });
    if let Some((_, m)) = &challenge
        && m != "S256"
        && m != "plain"
    {
        return err_redirect(
            "invalid_request",
            "AADSTS501491: Invalid size of Code_Challenge parameter or unsupported code_challenge_method.",
        );
    }
    if st.cfg.opts.interactive_sign_in {
        match r.q(CHOICE) {
            None => return sign_in_page(r, &app.name, &user.upn),
            Some("accept") => {}
            Some(_) => {
                return err_redirect(
                    "access_denied",
                    "AADSTS65004: User declined to consent to access the app.",
                );
            }
        }
    }
    let code = opaque("1.A");
    db.issued_codes.push(code.clone());
    db.codes.insert(
        code.clone(),
        AuthCode {
            kind: if v2 {
                GrantKind::AadV2
            } else {
                GrantKind::AadV1
            },
            client_id: app.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge,
            nonce: r.q("nonce").map(str::to_string),
            scope,
            resource,
            user_oid: user.oid.clone(),
            expires: unix_now().saturating_add(crate::util::secs(st.cfg.opts.code_ttl)),
            used: false,
        },
    );
    let session_state = new_guid();
    let mut params = vec![("code", code.as_str())];
    if !state.is_empty() {
        params.push(("state", state.as_str()));
    }
    params.push(("session_state", session_state.as_str()));
    if r.q("response_mode") == Some("form_post") {
        return form_post(&redirect_uri, &params);
    }
    redirect(&add_query(&redirect_uri, &params))
}

/// The query parameter the interactive sign-in page adds: `accept` or `cancel`.
const CHOICE: &str = "emulator_choice";

/// Microsoft's account page, reduced to what a test clicks: the account, Accept and Cancel. Each
/// button is a link back to the same authorize URL with the choice added.
fn sign_in_page(r: &Req, app: &str, upn: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let query: String = r
        .query
        .iter()
        .filter(|(k, _)| k != CHOICE)
        .map(|(k, v)| {
            format!(
                "{}={}&",
                percent_encoding::utf8_percent_encode(k, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    // A query-only reference keeps the page's own path.
    let link = |choice: &str| esc(&format!("?{query}{CHOICE}={choice}"));
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Sign in to your account</title></head><body><main><h1>Permissions requested</h1><p><b>{}</b> wants to sign you in as <b id=\"account\">{}</b> and access your files.</p><p><a id=\"accept\" href=\"{}\">Accept</a> <a id=\"cancel\" href=\"{}\">Cancel</a></p></main></body></html>",
        esc(app),
        esc(upn),
        link("accept"),
        link("cancel")
    );
    crate::util::bytes_response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        html.into_bytes(),
    )
}

pub(crate) fn form_post(action: &str, params: &[(&str, &str)]) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let inputs: String = params
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\" />",
                esc(k),
                esc(v)
            )
        })
        .collect();
    let html = format!(
        "<html><head><title>Working...</title></head><body><form method=\"POST\" name=\"hiddenform\" action=\"{}\">{inputs}<noscript><p>Script is disabled. Click Submit to continue.</p><input type=\"submit\" value=\"Submit\" /></noscript></form><script language=\"javascript\">document.forms[0].submit();</script></body></html>",
        esc(action)
    );
    crate::util::bytes_response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        html.into_bytes(),
    )
}

/// The resource named by the first resource-qualified scope (Graph when none is).
pub(crate) fn resource_of_scopes(scope: &str) -> String {
    for s in scope.split_whitespace() {
        if let Some(idx) = s.rfind('/')
            && (s.contains("://") || s.starts_with("00000003-"))
        {
            return s[..idx].to_string();
        }
    }
    "https://graph.microsoft.com".to_string()
}

fn scp_of(scope: &str) -> String {
    let names: Vec<&str> = scope
        .split_whitespace()
        .map(|s| s.rsplit('/').next().unwrap_or(s))
        .filter(|s| {
            !matches!(
                *s,
                "openid" | "profile" | "offline_access" | "email" | ".default"
            )
        })
        .collect();
    if names.is_empty() {
        "AllSites.FullControl Files.ReadWrite.All Sites.ReadWrite.All User.Read".into()
    } else {
        names.join(" ")
    }
}

fn sp_object_id(client_id: &str) -> String {
    let h = sha2::Sha256::digest(client_id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// An Entra-issued access token (v1 format, as Graph and SharePoint receive).
pub(crate) fn entra_access_token(
    st: &Shared,
    app: &EntraApp,
    acr: &str,
    resource: &str,
    user: Option<(&User, &str)>,
) -> (String, i64) {
    let now = unix_now();
    let exp = now.saturating_add(crate::util::secs(st.cfg.opts.access_token_ttl));
    let tid = &st.cfg.tenant;
    let mut c = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tid}/"),
        "iat": now,
        "nbf": now,
        "exp": exp,
        "aio": opaque(""),
        "app_displayname": app.name,
        "appid": app.client_id,
        "appidacr": acr,
        "idp": format!("https://sts.windows.net/{tid}/"),
        "tid": tid,
        "uti": opaque(""),
        "rh": "0.AAAA",
        "ver": "1.0",
    });
    match user {
        Some((u, scp)) => {
            c["oid"] = json!(u.oid);
            c["sub"] = json!(u.oid);
            c["upn"] = json!(u.upn);
            c["unique_name"] = json!(u.upn);
            c["name"] = json!(u.name);
            c["scp"] = json!(scp);
            c["idtyp"] = json!("user");
            c["amr"] = json!(["pwd"]);
        }
        None => {
            let oid = sp_object_id(&app.client_id);
            c["oid"] = json!(oid);
            c["sub"] = json!(oid);
            c["idtyp"] = json!("app");
            if !app.roles.is_empty() {
                c["roles"] = json!(app.roles);
            }
        }
    }
    (st.cfg.signer.sign(&c), exp)
}

fn id_token(st: &Shared, app: &EntraApp, user: &User, nonce: Option<&str>) -> String {
    let now = unix_now();
    let mut c = json!({
        "aud": app.client_id,
        "iss": format!("{}/{}/v2.0", st.cfg.login(), st.cfg.tenant),
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "name": user.name,
        "oid": user.oid,
        "preferred_username": user.upn,
        "sub": b64url(&sha2::Sha256::digest(format!("{}{}", user.oid, app.client_id).as_bytes())[..24]),
        "tid": st.cfg.tenant,
        "uti": opaque(""),
        "ver": "2.0",
    });
    if let Some(n) = nonce {
        c["nonce"] = json!(n);
    }
    st.cfg.signer.sign(&c)
}

fn client_info(st: &Shared, user: &User) -> String {
    b64url(
        json!({"uid": user.oid, "utid": st.cfg.tenant})
            .to_string()
            .as_bytes(),
    )
}

/// Authenticates the client of a token request; returns the app and its `appidacr`.
fn authenticate_client(
    st: &Shared,
    db: &mut Db,
    r: &Req,
    form: &[(String, String)],
    tenant: &str,
    v2: bool,
) -> Result<(EntraApp, &'static str), Response> {
    let mut client_id = field(form, "client_id").map(str::to_string);
    let mut secret = field(form, "client_secret").map(str::to_string);
    if let Some(h) = r.header("authorization")
        && let Some(b) = crate::util::strip_prefix_ci(h, "basic ")
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim())
        && let Ok(pair) = String::from_utf8(raw)
        && let Some((id, sec)) = pair.split_once(':')
    {
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        client_id = Some(dec(id));
        secret = Some(dec(sec));
    }
    let Some(client_id) = client_id else {
        return Err(aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        ));
    };
    let Some(app) = db.entra_app(&client_id).cloned() else {
        return Err(aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                st.cfg.tenant
            ),
        ));
    };
    if let Some(secret) = secret {
        if app.secret.as_deref() == Some(secret.as_str()) {
            return Ok((app, "1"));
        }
        return Err(aad_error(
            st,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                app.client_id
            ),
        ));
    }
    if let Some(assertion) = field(form, "client_assertion") {
        if field(form, "client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(aad_error(
                st,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90027,
                "The request body must contain client_assertion_type 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.",
            ));
        }
        let (Some(sha1), Some(sha256), Some(der)) = (
            app.thumbprint_sha1.as_ref(),
            app.thumbprint_sha256.as_ref(),
            app.cert_public_der.as_ref(),
        ) else {
            return Err(aad_error(
                st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found.]",
            ));
        };
        let login = st.cfg.login();
        let path = if v2 {
            "oauth2/v2.0/token"
        } else {
            "oauth2/token"
        };
        let audiences = vec![
            format!("{login}/{tenant}/{path}"),
            format!("{login}/{}/{path}", st.cfg.tenant),
            format!("{}{}", st.cfg.base, r.path),
        ];
        return match crate::tokens::verify_assertion(
            assertion,
            &app.client_id,
            sha1,
            sha256,
            der,
            &audiences,
        ) {
            Ok(jti) => {
                if let Some(jti) = jti
                    && !db.used_jti.insert(jti)
                {
                    return Err(aad_error(
                        st,
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        700027,
                        &crate::tokens::AssertionError::Replay.to_string(),
                    ));
                }
                Ok((app, "2"))
            }
            Err(e) => Err(aad_error(
                st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                &e.to_string(),
            )),
        };
    }
    if app.public_client {
        return Ok((app, "0"));
    }
    Err(aad_error(
        st,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    ))
}

fn num_or_string(v2: bool, n: i64) -> Value {
    if v2 { json!(n) } else { json!(n.to_string()) }
}

fn token(st: &Shared, r: &Req, tenant: &str, v2: bool) -> Response {
    let form = r.form();
    let grant = field(&form, "grant_type").unwrap_or_default().to_string();
    let mut db = st.db();
    let (app, acr) = match authenticate_client(st, &mut db, r, &form, tenant, v2) {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match grant.as_str() {
        "client_credentials" => {
            let resource = if v2 {
                let scope = field(&form, "scope").unwrap_or_default();
                let Some(res) = scope
                    .strip_suffix("/.default")
                    .filter(|_| !scope.contains(' '))
                else {
                    return aad_error(
                        st,
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        1002012,
                        &format!(
                            "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                        ),
                    );
                };
                res.to_string()
            } else {
                field(&form, "resource").unwrap_or_default().to_string()
            };
            if classify_resource(st, &resource).is_none() {
                return invalid_resource(st, &resource);
            }
            let (at, exp) = entra_access_token(st, &app, acr, &resource, None);
            let ttl = exp - unix_now();
            let mut body = json!({
                "token_type": "Bearer",
                "expires_in": num_or_string(v2, ttl),
                "ext_expires_in": num_or_string(v2, ttl),
                "access_token": at,
            });
            if !v2 {
                body["expires_on"] = json!(exp.to_string());
                body["not_before"] = json!(unix_now().to_string());
                body["resource"] = json!(resource);
            }
            json(StatusCode::OK, &body)
        }
        "authorization_code" => {
            let code = field(&form, "code").unwrap_or_default().to_string();
            let kind = if v2 {
                GrantKind::AadV2
            } else {
                GrantKind::AadV1
            };
            let Some(c) = db
                .codes
                .get(&code)
                .filter(|c| c.kind == kind && c.client_id == app.client_id)
            else {
                return aad_error(
                    st,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "Provided grant is invalid or malformed.",
                );
            };
            if c.used {
                return aad_error(
                    st,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
                );
            }
            if c.expires <= unix_now() {
                return aad_error(
                    st,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to it being older than the maximum age allowed. Please re-authenticate.",
                );
            }
            if field(&form, "redirect_uri") != Some(c.redirect_uri.as_str()) {
                return aad_error(
                    st,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    500117,
                    "The reply uri specified in the request isn't expected.",
                );
            }
            if let Some((challenge, method)) = &c.challenge {
                let verifier = field(&form, "code_verifier").unwrap_or_default();
                let computed = if method == "S256" {
                    b64url(&sha2::Sha256::digest(verifier.as_bytes()))
                } else {
                    verifier.to_string()
                };
                if verifier.is_empty() || &computed != challenge {
                    return aad_error(
                        st,
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        501481,
                        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                    );
                }
            }
            let (scope, resource, oid, nonce) = (
                c.scope.clone(),
                c.resource.clone(),
                c.user_oid.clone(),
                c.nonce.clone(),
            );
            if let Some(c) = db.codes.get_mut(&code) {
                c.used = true;
            }
            issue_user_tokens(
                st,
                &mut db,
                &app,
                acr,
                &form,
                kind,
                &scope,
                &resource,
                &oid,
                None,
                nonce.as_deref(),
            )
        }
        "refresh_token" => {
            let rt = field(&form, "refresh_token")
                .unwrap_or_default()
                .to_string();
            let kind = if v2 {
                GrantKind::AadV2
            } else {
                GrantKind::AadV1
            };
            let Some(t) = db.refresh.get(&rt).filter(|t| t.kind == kind) else {
                return aad_error(
                    st,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            };
            if !t.client_id.eq_ignore_ascii_case(&app.client_id) {
                return aad_error(
                    st,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "Provided grant is invalid or malformed. The refresh token was issued to a different client.",
                );
            }
            if let Some(resp) = refresh_problem(st, &db, t, &app) {
                return resp;
            }
            let (mut scope, mut resource, oid) =
                (t.scope.clone(), t.resource.clone(), t.user_oid.clone());
            if v2 {
                if let Some(s) = field(&form, "scope") {
                    scope = s.to_string();
                    resource = resource_of_scopes(s);
                }
            } else if let Some(res) = field(&form, "resource") {
                resource = res.to_string();
            }
            if classify_resource(st, &resource).is_none() {
                return invalid_resource(st, &resource);
            }
            if let Some(t) = db.refresh.get_mut(&rt) {
                t.last_used = unix_now();
            }
            issue_user_tokens(
                st,
                &mut db,
                &app,
                acr,
                &form,
                kind,
                &scope,
                &resource,
                &oid,
                Some(&rt),
                None,
            )
        }
        "" => aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        ),
        other => aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
    }
}

fn invalid_resource(st: &Shared, resource: &str) -> Response {
    aad_error(
        st,
        StatusCode::BAD_REQUEST,
        "invalid_resource",
        500011,
        &format!(
            "The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
            st.cfg.tenant
        ),
    )
}

/// Why a refresh token cannot be redeemed, as AAD words it.
fn refresh_problem(st: &Shared, db: &Db, t: &RefreshToken, app: &EntraApp) -> Option<Response> {
    let now = unix_now();
    if db.consent_revoked.contains(&app.client_id.to_lowercase()) {
        return Some(aad_error_extra(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            65001,
            &format!(
                "The user or administrator has not consented to use the application with ID '{}' named '{}'. Send an interactive authorization request for this user and resource.",
                app.client_id, app.name
            ),
            Some("consent_required"),
        ));
    }
    let inactive_for = now - t.last_used;
    match t.state {
        RefreshState::Revoked => Some(aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
        )),
        RefreshState::Expired => Some(expired(st)),
        RefreshState::Inactive => Some(inactive(
            st,
            t.issued,
            crate::util::secs(st.cfg.opts.refresh_inactivity_ttl),
        )),
        RefreshState::Active | RefreshState::Rotated if t.expires <= now => Some(expired(st)),
        RefreshState::Active | RefreshState::Rotated
            if inactive_for >= crate::util::secs(st.cfg.opts.refresh_inactivity_ttl) =>
        {
            Some(inactive(st, t.issued, inactive_for))
        }
        _ => None,
    }
}

fn expired(st: &Shared) -> Response {
    aad_error(
        st,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        70008,
        "The provided authorization code or refresh token has expired due to it being older than the maximum age allowed. Please re-authenticate.",
    )
}

fn inactive(st: &Shared, issued: i64, secs: i64) -> Response {
    let issued = time::OffsetDateTime::from_unix_timestamp(issued)
        .map(|t| crate::util::sp_time(t).replace('T', " "))
        .unwrap_or_default();
    let days = secs / 86400;
    let rem = secs % 86400;
    aad_error(
        st,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        700082,
        &format!(
            "The refresh token has expired due to inactivity.\u{a0}The token was issued on {issued} and was inactive for {days}.{:02}:{:02}:{:02}.",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        ),
    )
}

#[allow(clippy::too_many_arguments)]
fn issue_user_tokens(
    st: &Shared,
    db: &mut Db,
    app: &EntraApp,
    acr: &str,
    form: &[(String, String)],
    kind: GrantKind,
    scope: &str,
    resource: &str,
    oid: &str,
    old_rt: Option<&str>,
    nonce: Option<&str>,
) -> Response {
    let v2 = kind == GrantKind::AadV2;
    let Some(user) = db.user(oid).cloned() else {
        return aad_error(
            st,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            50034,
            "The user account does not exist in the directory.",
        );
    };
    let scp = if v2 {
        scp_of(scope)
    } else {
        "user_impersonation AllSites.FullControl Files.ReadWrite.All".into()
    };
    let (at, exp) = entra_access_token(st, app, acr, resource, Some((&user, &scp)));
    let now = unix_now();
    let ttl = exp - now;
    let wants_rt = !v2 || scope.split_whitespace().any(|s| s == "offline_access");
    let mut body = json!({
        "token_type": "Bearer",
        "scope": if v2 { scope.split_whitespace().filter(|s| !matches!(*s, "openid" | "profile" | "offline_access")).map(|s| if s.contains('/') { s.to_string() } else { format!("{resource}/{s}") }).collect::<Vec<_>>().join(" ") } else { scp.clone() },
        "expires_in": num_or_string(v2, ttl),
        "ext_expires_in": num_or_string(v2, ttl),
        "access_token": at,
    });
    if !v2 {
        body["expires_on"] = json!(exp.to_string());
        body["not_before"] = json!(now.to_string());
        body["resource"] = json!(resource);
    }
    if wants_rt {
        let rt = opaque("0.A");
        let issued = old_rt
            .and_then(|o| db.refresh.get(o))
            .map(|t| t.issued)
            .unwrap_or(now);
        db.refresh.insert(
            rt.clone(),
            RefreshToken {
                kind,
                client_id: app.client_id.clone(),
                scope: scope.to_string(),
                resource: resource.to_string(),
                user_oid: user.oid.clone(),
                issued,
                expires: now.saturating_add(crate::util::secs(st.cfg.opts.refresh_token_ttl)),
                last_used: now,
                state: RefreshState::Active,
            },
        );
        body["refresh_token"] = json!(rt);
    }
    if !v2 || scope.split_whitespace().any(|s| s == "openid") {
        body["id_token"] = json!(id_token(st, app, &user, nonce));
    }
    if v2 || field(form, "client_info") == Some("1") {
        body["client_info"] = json!(client_info(st, &user));
    }
    json(StatusCode::OK, &body)
}
