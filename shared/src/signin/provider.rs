//! What differs per identity system in a sign-in: what to ask for, the authorize URL, and code
//! redemption. One `match` per step; the URLs and token requests come from [`crate::identity`].

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{
    SignInError,
    error::{Reason, misconfigured, redeem_failure},
    sharepoint_site,
};
use crate::{
    access::{Access, TokenWrite, resource_for, with_secret_fallback},
    config::Endpoints,
    identity::{
        AuthCode, ClientSecret, IdentityError, PkceVerifier, Token, aad_v1, acs, entra, msa,
        request::send_token,
    },
    oauth::state::IssuedState,
    secrets::schema::{AppCredential, ConnectionSecret, Provider},
};

/// What a sign-in asks Microsoft for.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Scopes (ACS, Entra, MSA).
    pub scopes: Vec<String>,
    /// The resource (AAD v1).
    pub resource: Option<String>,
    /// Whether the flow uses PKCE (Entra).
    pub pkce: bool,
}

/// The scopes or resource a connection's sign-in asks for.
pub fn ask(conn: &ConnectionSecret, eps: &Endpoints) -> Result<Ask, String> {
    Ok(match conn.provider {
        Provider::Acs => Ask {
            scopes: if conn.scopes.is_empty() {
                vec!["Web.Write".to_owned()]
            } else {
                conn.scopes.clone()
            },
            resource: None,
            pkce: false,
        },
        Provider::AadV1 => Ask {
            scopes: vec![],
            resource: Some(if conn.use_discovery {
                aad_v1::discovery_resource(eps)
            } else {
                resource_for(conn, eps)?
            }),
            pkce: false,
        },
        Provider::Entra | Provider::Msa => {
            let mut scopes: Vec<String> = resource_for(conn, eps)?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if conn.provider == Provider::Entra {
                // An id_token names the account on the result page.
                for s in ["openid", "profile"] {
                    if !scopes.iter().any(|x| x == s) {
                        scopes.push(s.to_owned());
                    }
                }
            }
            Ask {
                scopes,
                resource: None,
                pkce: conn.provider == Provider::Entra,
            }
        }
    })
}

/// The provider's authorize URL for the code flow.
pub fn authorize_url(
    eps: &Endpoints,
    conn: &ConnectionSecret,
    app: &AppCredential,
    ask: &Ask,
    redirect_uri: &Url,
    issued: &IssuedState,
) -> Result<Url, String> {
    let scopes: Vec<&str> = ask.scopes.iter().map(String::as_str).collect();
    Ok(match conn.provider {
        Provider::Acs => {
            let site = sharepoint_site(conn)?;
            let parsed = scopes
                .iter()
                .map(|s| s.parse::<acs::Scope>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            acs::authorize_url(site, &app.client_id, &parsed, redirect_uri, &issued.state)
        }
        Provider::AadV1 => aad_v1::authorize_url(
            eps,
            &app.client_id,
            ask.resource.as_deref().unwrap_or_default(),
            redirect_uri,
            &issued.state,
            Some(aad_v1::Prompt::SelectAccount),
        ),
        Provider::Entra => {
            let challenge = issued
                .code_challenge
                .as_deref()
                .ok_or("no PKCE challenge was issued")?;
            entra::authorize_url(
                eps,
                &entra_authority(conn, app)?,
                &app.client_id,
                redirect_uri,
                &scopes,
                &issued.state,
                challenge,
            )
        }
        Provider::Msa => {
            msa::authorize_url(eps, &app.client_id, &scopes, redirect_uri, &issued.state)
        }
    })
}

fn entra_authority(
    conn: &ConnectionSecret,
    app: &AppCredential,
) -> Result<entra::Authority, String> {
    conn.tenant_id
        .as_deref()
        .or(app.tenant_id.as_deref())
        .unwrap_or("common")
        .parse()
        .map_err(|e: IdentityError| e.to_string())
}

/// What the callback brought back, and what the signed `state` said was asked for.
#[derive(Debug)]
pub struct Grant<'a> {
    /// The authorization code.
    pub code: &'a AuthCode,
    /// The redirect URI the code was issued for.
    pub redirect_uri: &'a Url,
    /// The scopes asked for.
    pub scopes: &'a [String],
    /// The resource asked for (AAD v1).
    pub resource: Option<&'a str>,
    /// The PKCE verifier (Entra).
    pub verifier: Option<&'a PkceVerifier>,
}

fn client_secret(s: &Option<SecretString>) -> Option<ClientSecret> {
    s.as_ref()
        .map(|s| ClientSecret::new(s.expose_secret().to_owned()))
}

fn need_secret(app: &AppCredential) -> Result<ClientSecret, IdentityError> {
    client_secret(&app.client_secret).ok_or_else(|| {
        IdentityError::InvalidInput("the app credential has no client_secret".into())
    })
}

/// Redeems an authorization code into what is to be stored. A client secret Microsoft refuses
/// (`invalid_client`) is retried once with the app's secondary secret, as [`Access`] does.
pub async fn redeem(
    access: &Access,
    id: &str,
    conn: &ConnectionSecret,
    app: &AppCredential,
    grant: Grant<'_>,
) -> Result<TokenWrite, SignInError> {
    let http = access.http();
    let eps = access.endpoints();
    let policy = access.cache().retry;
    let token = |t: Token| -> Result<(Token, SecretString), SignInError> {
        let rt = t
            .refresh_token
            .as_ref()
            .map(|rt| SecretString::from(rt.expose_secret().to_owned()))
            .ok_or_else(|| SignInError::about(id, Reason::NoRefreshToken))?;
        Ok((t, rt))
    };
    let failed = |e| redeem_failure(id, e);
    let write = match conn.provider {
        Provider::Acs => {
            let site = sharepoint_site(conn).map_err(|e| misconfigured(id, e))?;
            let realm = match conn.realm.as_deref().or(app.realm.as_deref()) {
                Some(r) => acs::Realm::parse(r).map_err(|e| misconfigured(id, e))?,
                None => {
                    acs::discover_realm(http, site, &access.cache().realms, &policy)
                        .await
                        .map_err(failed)?
                        .realm
                }
            };
            let host = acs::principal_host(site).map_err(|e| misconfigured(id, e))?;
            let t = with_secret_fallback(id, app, |app, _| {
                let (realm, host) = (&realm, &host);
                async move {
                    let acs_app = acs::AcsApp {
                        client_id: app.client_id.clone(),
                        secret: need_secret(&app)?,
                    };
                    let req = acs::code_request(
                        eps,
                        &acs_app,
                        realm,
                        host,
                        grant.code,
                        grant.redirect_uri,
                    );
                    send_token(http, &req, &policy).await
                }
            })
            .await
            .map_err(failed)?;
            let (t, rt) = token(t)?;
            let mut w = TokenWrite::from_token(&t, rt);
            w.scopes = grant.scopes.to_vec();
            w.realm = Some(realm.as_str().to_owned());
            w
        }
        Provider::AadV1 if conn.use_discovery => {
            let connected = with_secret_fallback(id, app, |app, _| async move {
                let aad = aad_v1::AadApp {
                    client_id: app.client_id.clone(),
                    secret: need_secret(&app)?,
                };
                aad_v1::connect(http, eps, &aad, grant.code, grant.redirect_uri, &policy).await
            })
            .await
            .map_err(failed)?;
            let resources: Vec<String> = connected
                .services
                .iter()
                .map(|(s, _)| s.service_resource_id.clone())
                .collect();
            let target = resource_for(conn, eps).ok();
            let same = |s: &aad_v1::ServiceInfo| {
                target.as_deref().is_some_and(|t| {
                    s.service_resource_id
                        .trim_end_matches('/')
                        .eq_ignore_ascii_case(t.trim_end_matches('/'))
                })
            };
            let pick = connected
                .services
                .iter()
                .find(|(s, _)| same(s))
                .or(connected.services.first())
                .map(|(_, t)| t.clone())
                .ok_or_else(|| SignInError::about(id, Reason::NoServices))?;
            tracing::info!(connection = %id, services = resources.len(), "AAD v1 Discovery done");
            let rt = SecretString::from(connected.refresh_token.expose_secret().to_owned());
            let mut w = TokenWrite::from_token(&pick, rt);
            w.tenant_id = Some(connected.tenant_id);
            w.resources = resources;
            w
        }
        Provider::AadV1 => {
            let resource = grant.resource.unwrap_or_default();
            let t = with_secret_fallback(id, app, |app, _| async move {
                let aad = aad_v1::AadApp {
                    client_id: app.client_id.clone(),
                    secret: need_secret(&app)?,
                };
                let req = aad_v1::code_request(
                    eps,
                    "common",
                    &aad,
                    grant.code,
                    grant.redirect_uri,
                    resource,
                );
                send_token(http, &req, &policy).await
            })
            .await
            .map_err(failed)?;
            let (t, rt) = token(t)?;
            let mut w = TokenWrite::from_token(&t, rt);
            w.resources = vec![resource.to_owned()];
            w
        }
        Provider::Entra => {
            let authority = entra_authority(conn, app).map_err(|e| misconfigured(id, e))?;
            let verifier = grant
                .verifier
                .ok_or(crate::oauth::state::StateError::Tampered)?;
            let scopes: Vec<&str> = grant.scopes.iter().map(String::as_str).collect();
            let now = time::OffsetDateTime::now_utc();
            let t = with_secret_fallback(id, app, |app, _| {
                let (authority, scopes) = (&authority, &scopes);
                async move {
                    let auth = match client_secret(&app.client_secret) {
                        Some(s) => entra::ClientAuth::Secret(s),
                        None => entra::ClientAuth::Public,
                    };
                    let req = entra::code_request(
                        eps,
                        authority,
                        &app.client_id,
                        &auth,
                        grant.code,
                        grant.redirect_uri,
                        scopes,
                        verifier,
                        now,
                    )?;
                    send_token(http, &req, &policy).await
                }
            })
            .await
            .map_err(failed)?;
            let (t, rt) = token(t)?;
            let mut w = TokenWrite::from_token(&t, rt);
            // Refreshes ask for the resource scopes only (openid/profile are sign-in extras).
            w.scopes = grant
                .scopes
                .iter()
                .filter(|s| !matches!(s.as_str(), "openid" | "profile"))
                .cloned()
                .collect();
            w
        }
        Provider::Msa => {
            let t = with_secret_fallback(id, app, |app, _| async move {
                let app = msa::MsaApp {
                    client_id: app.client_id.clone(),
                    secret: client_secret(&app.client_secret),
                };
                send_token(
                    http,
                    &msa::code_request(eps, &app, grant.code, grant.redirect_uri),
                    &policy,
                )
                .await
            })
            .await
            .map_err(failed)?;
            let (t, rt) = token(t)?;
            let mut w = TokenWrite::from_token(&t, rt);
            w.scopes = grant.scopes.to_vec();
            w.redirect_uri = Some(grant.redirect_uri.clone());
            w
        }
    };
    Ok(write)
}
