//! The sign-in engine: `GET /connect/{connection}` → Microsoft → `GET|POST /callback`, and the
//! token-refresh run.
//!
//! - [`connect`] checks the operator-minted link ([`link`]), signs a `state`, builds the
//!   provider's authorize URL (only the identity modules build those) and marks the link used.
//! - [`complete_code`] verifies the `state` and its cookie, redeems the code ([`provider`]) and
//!   stores the consent.
//! - [`launch`] validates a SharePoint add-in context token (`POST /callback`, `SPAppToken`),
//!   redeems it and stores the consent.
//! - [`refresh`] is token-refresh's run: list, decide, refresh, report.
//!
//! Every step returns a typed [`SignInError`]; oauth-callback maps it to one
//! [`crate::api::ApiError`]. Tokens are stored through [`crate::access::write_tokens`], the one
//! write path (see its overwrite rule).
//!
//! The four providers differ in inputs (ACS discovers a realm, AAD v1 may run Discovery, Entra
//! adds PKCE) so [`provider`] is one `match` per step rather than a trait: a trait would need the
//! union of those inputs in every signature.

pub mod error;
pub mod form;
pub mod link;
pub mod provider;
pub mod refresh;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use url::Url;

pub use error::{Reason, SignInError};
use error::{misconfigured, redeem_failure};

use crate::{
    access::{Access, TokenWrite, WriteError, write_tokens},
    identity::{AuthCode, ClientSecret, IdentityError, acs},
    oauth::{
        pages::SuccessInfo,
        refresh_policy::{self, RefreshConfig},
        state::StateKey,
        state::{CookieSettings, Flow, Nonce, ReplayKey, StateError, StateRequest, StateSigner},
    },
    runtime::Warm,
    secrets::{
        self,
        schema::{AuthKind, ConnectionSecret, Provider, Target},
    },
};

/// Longest connection id accepted in a path or form.
const MAX_CONNECTION_LEN: usize = 128;

/// Checks a connection id from a path, query or form: 1–128 of `[A-Za-z0-9-_.]`, no leading dot.
pub fn connection_id(raw: &str) -> Result<&str, SignInError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_CONNECTION_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !raw.starts_with('.');
    if ok {
        Ok(raw)
    } else {
        Err(
            Reason::BadInput("a connection id is 1-128 letters, digits, '-', '_' or '.'".into())
                .into(),
        )
    }
}

/// A sign-in that was started: where to send the browser, and the nonce cookie to set.
#[derive(Debug)]
pub struct Started {
    /// The provider's authorize URL.
    pub authorize_url: Url,
    /// The `Set-Cookie` value binding the attempt to this browser.
    pub set_cookie: String,
}

/// `GET /connect/{connection}?invite={link}`: checks the operator-minted link, signs a `state`
/// and builds the provider's authorize URL; the link is marked used last, so a misconfigured
/// connection does not burn it.
///
/// Without a valid link (missing, altered, expired, used, for another connection) every
/// connection id, existing or not, gets the same [`Reason::LinkRequired`] and nothing is read
/// about the connection.
pub async fn connect(
    warm: &Warm,
    access: &Access,
    raw_id: &str,
    invite: Option<&str>,
    redirect_uri: Url,
) -> Result<Started, SignInError> {
    let refused = |why: &dyn std::fmt::Display| {
        tracing::info!(reason = %why, "connect refused: no valid link");
        SignInError::from(Reason::LinkRequired)
    };
    let id = connection_id(raw_id).map_err(|e| refused(&e))?;
    let invite = invite.ok_or_else(|| refused(&"no invite"))?;
    let keys = state_keys(warm, access).await?;
    let now = (warm.clock)();
    let link = link::LinkSigner::new(&keys)
        .map_err(|_| key_fault(warm, "is not base64 of 32 bytes or more"))?
        .verify(invite, id, now)
        .map_err(|e| refused(&e))?;
    let conn = match access.connection(id).await {
        Ok(c) => c.value,
        Err(crate::access::AccessError::NotFound { .. }) => return Err(refused(&"unknown")),
        Err(e) => return Err(e.into()),
    };
    if conn.consumed_links.contains(&link.replay_key()) {
        return Err(refused(&"link already used"));
    }
    if conn.auth == AuthKind::AppOnly {
        return Err(SignInError::about(id, Reason::AppOnly));
    }
    let app = access.app_credential(id, &conn).await?;
    let signer = signer(warm, &keys)?;
    let ask = provider::ask(&conn, access.endpoints()).map_err(|e| misconfigured(id, e))?;
    let issued = signer
        .issue(
            StateRequest {
                connection: id.to_owned(),
                provider: conn.provider,
                flow: Flow::Code,
                redirect_uri: redirect_uri.to_string(),
                scopes: ask.scopes.clone(),
                resource: ask.resource.clone(),
                pkce: ask.pkce,
                rebind: link.rebind,
            },
            now,
        )
        .map_err(|e| SignInError::about(id, Reason::BadInput(format!("cannot start: {e}"))))?;
    let authorize_url = provider::authorize_url(
        access.endpoints(),
        &conn,
        &app,
        &ask,
        &redirect_uri,
        &issued,
    )
    .map_err(|e| misconfigured(id, e))?;
    consume_link(access, id, &link, now).await?;
    tracing::info!(connection = id, provider = %conn.provider, rebind = link.rebind, "sign-in started");
    let set_cookie = cookie_settings(&redirect_uri).set_cookie(&issued.nonce);
    Ok(Started {
        authorize_url,
        set_cookie,
    })
}

/// Records `link` as used in the connection secret (compare-and-swap; the generation is left
/// alone, so a token refresh racing with it still lands).
async fn consume_link(
    access: &Access,
    id: &str,
    link: &link::ConnectLink,
    now: OffsetDateTime,
) -> Result<(), SignInError> {
    enum Refused {
        Gone,
        Used,
    }
    let key = link.replay_key();
    let name = access.secrets_config().connection_secret_name(id);
    let result = secrets::update_typed::<ConnectionSecret, Refused, _>(
        access.store().as_ref(),
        &name,
        crate::access::SAVE_ATTEMPTS,
        |current| {
            let mut next = current.ok_or(Refused::Gone)?.clone();
            next.consumed_links
                .record(&key, now)
                .map_err(|_| Refused::Used)?;
            Ok(Some(next))
        },
    )
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(secrets::UpdateError::Rejected { source, .. }) => {
            let why = match source {
                Refused::Gone => "connection gone",
                Refused::Used => "link already used",
            };
            tracing::info!(connection = id, reason = why, "connect refused");
            Err(Reason::LinkRequired.into())
        }
        Err(secrets::UpdateError::Secret(e)) => {
            tracing::error!(connection = id, error = %e, "could not record the connect link");
            Err(SignInError::about(id, Reason::StoreFailed(e.to_string())))
        }
    }
}

/// The cookie settings for a redirect URI: `Secure` over https.
pub fn cookie_settings(redirect_uri: &Url) -> CookieSettings {
    CookieSettings {
        secure: redirect_uri.scheme() == "https",
    }
}

/// `GET /callback?code&state`: verifies `state` against the cookie's nonce, redeems the code and
/// stores the consent (recording the attempt as used, so a replay gets [`StateError::Replayed`]).
pub async fn complete_code(
    warm: &Warm,
    access: &Access,
    code: AuthCode,
    raw_state: &str,
    nonce: Option<Nonce>,
) -> Result<SuccessInfo, SignInError> {
    // Without the cookie nothing can be verified; say so before touching the store.
    let nonce = nonce.ok_or(StateError::MissingCookie)?;
    // A state we issued is `payload.tag`, both base64url: refuse anything else before the key
    // is read, so junk never costs a store read.
    let well_formed = raw_state.split('.').count() == 2
        && raw_state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !well_formed {
        return Err(StateError::Tampered.into());
    }
    let signer = signer(warm, &state_keys(warm, access).await?)?;
    let now = (warm.clock)();
    let mut verified = signer.verify(raw_state, Some(&nonce), None, now)?;
    let id = verified.claims.connection.clone();
    let key = verified.replay_key();
    let current = access.connection(&id).await?.value;
    if current.consumed_states.contains(&key) {
        return Err(SignInError::about(&id, StateError::Replayed));
    }
    if current.provider != verified.claims.provider {
        return Err(SignInError::about(&id, Reason::ConnectionChanged));
    }
    let app = access.app_credential(&id, &current).await?;
    let redirect_uri =
        Url::parse(&verified.claims.redirect_uri).map_err(|_| StateError::Tampered)?;
    let verifier = verified.take_pkce_verifier();
    let consented = provider::redeem(
        access,
        &id,
        &current,
        &app,
        provider::Grant {
            code: &code,
            redirect_uri: &redirect_uri,
            scopes: &verified.claims.scopes,
            resource: verified.claims.resource.as_deref(),
            verifier: verifier.as_ref(),
        },
    )
    .await?;
    let rebind = verified.claims.rebind;
    store_consent(warm, access, &id, key, consented, now, rebind).await
}

/// What SharePoint posted to launch an add-in.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The context token (`SPAppToken`).
    pub context_token: &'a str,
    /// `SPHostUrl`, if sent.
    pub host_url: Option<&'a str>,
    /// The connection to store the add-in's token in.
    pub connection: &'a str,
    /// Hosts the add-in is served from (the token's audience must name one).
    pub hosts: Vec<String>,
}

/// `POST /callback`: validates a SharePoint context token with the add-in's secret(s), redeems
/// its refresh token and stores it.
pub async fn launch(
    warm: &Warm,
    access: &Access,
    launch: Launch<'_>,
) -> Result<SuccessInfo, SignInError> {
    let id = connection_id(launch.connection)?;
    // An unknown connection answers like a token that does not fit: a launch is unauthenticated
    // until its token verifies, and must not learn which connections exist.
    let current = match access.connection(id).await {
        Err(crate::access::AccessError::NotFound { .. }) => {
            let why = "no such add-in connection".to_owned();
            return Err(SignInError::about(id, Reason::ContextTokenInvalid(why)));
        }
        other => other?.value,
    };
    if current.provider != Provider::Acs || current.auth != AuthKind::Delegated {
        return Err(SignInError::about(id, Reason::NotAnAddIn));
    }
    let app = access.app_credential(id, &current).await?;
    let site = sharepoint_site(&current)
        .map_err(|e| misconfigured(id, e))?
        .clone();
    if let Some(h) = launch.host_url {
        let same = Url::parse(h).ok().is_some_and(|u| {
            u.host_str() == site.host_str()
                && u.port_or_known_default() == site.port_or_known_default()
        });
        if !same {
            return Err(SignInError::about(id, Reason::HostMismatch));
        }
    }
    let secret = |s: &SecretString| ClientSecret::new(s.expose_secret().to_owned());
    let primary = app
        .client_secret
        .as_ref()
        .ok_or_else(|| misconfigured(id, "client_secret missing"))?;
    let mut validator =
        acs::ContextTokenValidator::new(app.client_id.clone(), secret(primary), launch.hosts);
    if let Some(s) = &app.secondary_client_secret {
        validator = validator.with_secondary_secret(secret(s));
    }
    // The token's realm must be the connection's: configured, else discovered from its site.
    // The token's own realm is never trusted on its own.
    let realm = match current.realm.as_deref().or(app.realm.as_deref()) {
        Some(r) => acs::Realm::parse(r).map_err(|e| misconfigured(id, e))?,
        None => {
            acs::discover_realm(
                access.http(),
                &site,
                &access.cache().realms,
                &access.cache().retry,
            )
            .await
            .map_err(|e| redeem_failure(id, e))?
            .realm
        }
    };
    validator = validator.with_realm(realm);
    let now = (warm.clock)();
    let ctx = validator
        .validate(launch.context_token, now)
        .map_err(|e| match e {
            IdentityError::InvalidToken(reason) => {
                SignInError::about(id, Reason::ContextTokenInvalid(reason))
            }
            other => misconfigured(id, other),
        })?;
    let key = ReplayKey {
        id: format!("ctx:{}", hex_sha256(launch.context_token)),
        expires_at: ctx.expires_at.unix_timestamp(),
    };
    if current.consumed_states.contains(&key) {
        return Err(SignInError::about(id, StateError::Replayed));
    }
    let policy = access.cache().retry;
    let token = crate::access::with_secret_fallback(id, &app, |app, _| {
        let ctx = &ctx;
        let site = &site;
        async move {
            let secret = app
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose_secret().to_owned()))
                .ok_or_else(|| {
                    IdentityError::InvalidInput("the app credential has no client_secret".into())
                })?;
            let acs_app = acs::AcsApp {
                client_id: app.client_id.clone(),
                secret,
            };
            acs::redeem_context_token(
                access.http(),
                access.endpoints(),
                &acs_app,
                ctx,
                site,
                &policy,
            )
            .await
        }
    })
    .await
    .map_err(|e| redeem_failure(id, e))?;
    // ACS may answer without a new refresh token; the context token's own one is then kept.
    let refresh_token = token
        .refresh_token
        .as_ref()
        .map(|r| r.expose_secret().to_owned())
        .unwrap_or_else(|| ctx.refresh_token.expose_secret().to_owned());
    let realm = ctx.realm.as_str().to_owned();
    let mut write = TokenWrite::from_token(&token, SecretString::from(refresh_token));
    write.tenant_id = Some(realm.clone());
    write.realm = Some(realm);
    store_consent(warm, access, id, key, write, now, false).await
}

/// The state-signing keys ([`secrets::schema::state_keys`], which falls back to the app
/// credential's legacy fields).
async fn state_keys(
    warm: &Warm,
    access: &Access,
) -> Result<secrets::schema::StateKeys, SignInError> {
    secrets::schema::state_keys(access.store().as_ref(), access.secrets_config())
        .await
        .map_err(|e| {
            if e.is_transient() {
                // An outage, not a broken key: the sign-in can be tried again.
                tracing::warn!(secret = %warm.config.secrets.state_key_secret, error = %e, "cannot reach the state signing key");
                return Reason::StoreUnavailable(e.to_string()).into();
            }
            tracing::error!(secret = %warm.config.secrets.state_key_secret, error = %e, "cannot read the state signing key");
            key_fault(warm, "cannot be read")
        })
}

fn key_fault(warm: &Warm, what: &str) -> SignInError {
    tracing::error!(secret = %warm.config.secrets.state_key_secret, problem = what, "sign-in key unusable");
    Reason::Misconfigured(format!("the sign-in key {what}")).into()
}

/// The state signer over the keys.
fn signer(warm: &Warm, keys: &secrets::schema::StateKeys) -> Result<StateSigner, SignInError> {
    let key =
        |k: &SecretString| StateKey::from_base64(k).map_err(|_| key_fault(warm, "is not base64"));
    let mut signer = StateSigner::new(key(&keys.key)?);
    if let Some(previous) = &keys.previous_key {
        signer = signer.with_previous(key(previous)?);
    }
    Ok(signer)
}

/// The connection's SharePoint site, for providers that need one.
pub(crate) fn sharepoint_site(conn: &ConnectionSecret) -> Result<&Url, String> {
    match &conn.target {
        Target::Sharepoint { site_url, .. } => Ok(site_url),
        Target::Drive { .. } => Err("this provider needs a SharePoint site target".into()),
    }
}

/// Refresh thresholds from the lifecycle settings.
pub fn refresh_config(warm: &Warm) -> RefreshConfig {
    let d = |s: std::time::Duration, default| time::Duration::try_from(s).unwrap_or(default);
    RefreshConfig {
        access_skew: d(
            warm.lifecycle.refresh_access_skew,
            refresh_policy::DEFAULT_ACCESS_SKEW,
        ),
        max_refresh_token_age: d(
            warm.lifecycle.refresh_max_token_age,
            refresh_policy::DEFAULT_MAX_REFRESH_TOKEN_AGE,
        ),
    }
}

/// Stores the consent and records the attempt as consumed, in one compare-and-swap write.
async fn store_consent(
    warm: &Warm,
    access: &Access,
    id: &str,
    key: ReplayKey,
    write: TokenWrite,
    now: OffsetDateTime,
    rebind: bool,
) -> Result<SuccessInfo, SignInError> {
    let stored = write_tokens(
        access.store().as_ref(),
        access.secrets_config(),
        id,
        write.consent(key, now, rebind),
    )
    .await
    .map_err(|e| match e {
        WriteError::Replayed => SignInError::about(id, StateError::Replayed),
        WriteError::Gone => SignInError::about(id, Reason::ConnectionGone),
        WriteError::AccountMismatch => {
            tracing::warn!(
                connection = id,
                "sign-in refused: another account than the bound one"
            );
            SignInError::about(id, Reason::AccountMismatch)
        }
        WriteError::Store(e) => {
            tracing::error!(connection = id, error = %e, "could not store the consent");
            SignInError::about(id, Reason::StoreFailed(e.to_string()))
        }
    })?
    .stored;
    tracing::info!(connection = id, provider = %stored.provider, generation = stored.generation, "consent stored");
    let times = refresh::connection_times(&stored);
    Ok(SuccessInfo {
        connection: id.to_owned(),
        provider: stored.provider,
        account: stored.account.clone(),
        access_token_expires_at: stored.access_token_expires_at,
        next_refresh_at: refresh_policy::next_refresh_at(&times, &refresh_config(warm), now),
    })
}

fn hex_sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
