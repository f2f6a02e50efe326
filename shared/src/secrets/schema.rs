//! The JSON shapes spbridge keeps in the secret store (documented with examples in
//! `docs/secrets.md`).
//!
//! Every secret field is a [`SecretString`]: `Debug` prints a redaction marker, and the value is
//! exposed only by the serde functions below, i.e. only when the secret is written to the store.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;

use super::{SecretError, SecretStore, UpdateError, VersionId, Versioned, get_typed, update_typed};
use crate::config::SecretsConfig;

/// The app registration's credentials: `{prefix}app`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppCredential {
    /// Application (client) id.
    pub client_id: String,
    /// Client secret, if the app authenticates with one.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret_opt")]
    pub client_secret: Option<SecretString>,
    /// A second client secret accepted during rollover; tried when the first is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret_opt")]
    pub secondary_client_secret: Option<SecretString>,
    /// Public certificate (PEM) for certificate credentials / ACS app-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// Private key (PEM) matching `certificate_pem`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret_opt")]
    pub private_key_pem: Option<SecretString>,
    /// Entra / Azure AD tenant id (GUID) or domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// ACS realm (the tenant GUID as SharePoint names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Key (base64, at least 32 bytes) that signs the OAuth `state` and derives PKCE verifiers.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret_opt")]
    pub state_signing_key: Option<SecretString>,
    /// The key before the last rotation, still accepted for sign-ins started before it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret_opt")]
    pub previous_state_signing_key: Option<SecretString>,
}

impl AppCredential {
    /// Checks the combinations a token request needs; the reason names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.client_id.trim().is_empty() {
            return Err("client_id is empty".into());
        }
        match (&self.certificate_pem, &self.private_key_pem) {
            (Some(_), None) => return Err("certificate_pem needs private_key_pem".into()),
            (None, Some(_)) => return Err("private_key_pem needs certificate_pem".into()),
            _ => {}
        }
        if self.client_secret.is_none() && self.certificate_pem.is_none() {
            return Err("needs client_secret or certificate_pem + private_key_pem".into());
        }
        Ok(())
    }
}

/// Webhook signing secrets: `{prefix}webhook`, e.g. `{"secrets": ["whsec_…"]}`. Several are
/// accepted at once so a secret can be rolled without downtime.
///
/// A single `{"secret": "…"}` is read as a one-element list: that is the shape CloudFormation's
/// `GenerateSecretString` can make (flat string fields only). A value without the `whsec_`
/// prefix gets it, so a generated run of letters and digits (valid base64) is a Standard Webhooks
/// secret, and senders use `whsec_` followed by the stored text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "WebhookSecretsWire")]
pub struct WebhookSecrets {
    /// Every currently valid signing secret, newest first.
    #[serde(serialize_with = "secret_vec::serialize")]
    pub secrets: Vec<SecretString>,
}

/// Either stored shape of [`WebhookSecrets`].
#[derive(Deserialize)]
struct WebhookSecretsWire {
    #[serde(default, with = "secret_vec_opt")]
    secrets: Option<Vec<SecretString>>,
    #[serde(default, with = "secret_opt")]
    secret: Option<SecretString>,
}

impl TryFrom<WebhookSecretsWire> for WebhookSecrets {
    type Error = &'static str;
    fn try_from(w: WebhookSecretsWire) -> Result<Self, Self::Error> {
        use secrecy::ExposeSecret;
        match (w.secrets, w.secret) {
            (Some(_), Some(_)) => Err("give either `secrets` or `secret`, not both"),
            (Some(secrets), None) => Ok(WebhookSecrets { secrets }),
            (None, Some(one)) => {
                let text = one.expose_secret().trim();
                let whsec = if text.starts_with(crate::webhook::SECRET_PREFIX) {
                    text.to_owned()
                } else {
                    format!("{}{text}", crate::webhook::SECRET_PREFIX)
                };
                Ok(WebhookSecrets {
                    secrets: vec![SecretString::from(whsec)],
                })
            }
            (None, None) => Err("missing field `secrets` (or `secret`)"),
        }
    }
}

/// The OAuth state-signing keys: `{prefix}state-key`, `{"key": "…", "previous_key": "…"}`.
/// Only oauth-callback reads it. Each key is base64 of at least 32 bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateKeys {
    /// The key new sign-ins are signed with.
    #[serde(with = "secret_str")]
    pub key: SecretString,
    /// The key before the last rotation, still accepted for sign-ins started before it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret_opt")]
    pub previous_key: Option<SecretString>,
}

/// Which Microsoft identity system issued a connection's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// SharePoint add-in / Azure ACS.
    Acs,
    /// Azure AD v1 endpoint (resource-based, multi-resource refresh tokens).
    AadV1,
    /// Microsoft identity platform (v2, scopes).
    Entra,
    /// Microsoft account (consumer OneDrive).
    Msa,
}

impl Provider {
    /// The serialised name, e.g. `aad_v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Acs => "acs",
            Provider::AadV1 => "aad_v1",
            Provider::Entra => "entra",
            Provider::Msa => "msa",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether tokens act for a user or for the app itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// A user consented; the connection holds their refresh token.
    Delegated,
    /// The app's own credentials; no refresh token.
    AppOnly,
}

/// Where uploads for a connection land.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A SharePoint document library, through the SharePoint REST API.
    Sharepoint {
        /// The site, e.g. `https://contoso.sharepoint.com/sites/ops`.
        site_url: Url,
        /// Library title or server-relative URL, e.g. `Shared Documents`.
        library: String,
        /// Folder inside the library; empty for its root.
        #[serde(default)]
        base_folder: String,
    },
    /// A drive, through Microsoft Graph.
    Drive {
        /// `me` for the signed-in user's OneDrive, else a Graph drive id.
        drive_id: DriveRef,
    },
}

/// A Graph drive: the user's own (`"me"`) or one by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DriveRef {
    /// `/me/drive`.
    Me,
    /// `/drives/{id}`.
    Id(String),
}

impl TryFrom<String> for DriveRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.trim() {
            "" => Err("drive_id is empty".into()),
            "me" => Ok(DriveRef::Me),
            id => Ok(DriveRef::Id(id.to_owned())),
        }
    }
}

impl From<DriveRef> for String {
    fn from(d: DriveRef) -> String {
        match d {
            DriveRef::Me => "me".into(),
            DriveRef::Id(id) => id,
        }
    }
}

/// Whether a connection can still get tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Tokens refresh normally.
    Active,
    /// The refresh token was rejected (revoked, expired, consent withdrawn): a user must consent again.
    NeedsConsent,
}

/// One connection to a Microsoft tenant and upload target: `{prefix}connections/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionSecret {
    /// The identity system.
    pub provider: Provider,
    /// Delegated or app-only.
    pub auth: AuthKind,
    /// Where files go.
    pub target: Target,
    /// The current refresh token (delegated connections).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret_opt")]
    pub refresh_token: Option<SecretString>,
    /// When `refresh_token` was issued.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub refresh_token_issued_at: Option<OffsetDateTime>,
    /// When the last access token obtained with it expires.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub access_token_expires_at: Option<OffsetDateTime>,
    /// When token-refresh last succeeded.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_refreshed_at: Option<OffsetDateTime>,
    /// Whether the connection works.
    pub status: ConnectionStatus,
    /// Microsoft's error code behind the status, e.g. `invalid_grant` / `AADSTS700082`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<String>,
    /// When the status last changed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub status_at: Option<OffsetDateTime>,
    /// Azure AD v1: resources the multi-resource refresh token has been redeemed for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Entra / MSA: scopes granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Tenant (Entra, Azure AD v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// ACS realm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Who consented (UPN or MSA e-mail), for humans reading the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Incremented by every write; a write whose generation is not above the stored one is
    /// refused, so an older token never overwrites a newer one.
    #[serde(default)]
    pub generation: u64,
    /// Name of the app-credential secret this connection uses; `None`: the deployment's
    /// `{prefix}app`. Lets one deployment hold an ACS add-in and an Entra app side by side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
    /// The redirect URI the consent used (login.live.com wants it again on every refresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<Url>,
    /// Sign-in attempts already completed, so a replayed callback is refused before any write.
    #[serde(
        default,
        skip_serializing_if = "super::replay::ConsumedStates::is_empty"
    )]
    pub consumed_states: super::replay::ConsumedStates,
    /// Azure AD v1: sign in for the Office 365 Discovery resource and record every service
    /// resource the refresh token can be redeemed for (in `resources`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_discovery: bool,
    /// Microsoft's description of the last failure behind `status` (no secrets; for operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    /// The account this connection is bound to, set by the first sign-in that names one. A
    /// sign-in bringing another account is refused (`account_mismatch`) unless it started from a
    /// link minted for re-binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_account: Option<AccountId>,
    /// Connect links already used (ids and expiry), so each starts one sign-in only.
    #[serde(
        default,
        skip_serializing_if = "crate::secrets::replay::ConsumedStates::is_empty"
    )]
    pub consumed_links: crate::secrets::replay::ConsumedStates,
}

/// Who a delegated connection acts for: the directory tenant and the user's object id (`oid`),
/// or, for a Microsoft account, its user id (no tenant). Not secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountId {
    /// Tenant id (Entra, Azure AD v1) or ACS realm; `None` for a Microsoft account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The user's object id, or the Microsoft-account user id.
    pub object_id: String,
}

impl AccountId {
    /// Whether two ids name the same account (ids compared without regard to case).
    pub fn same_as(&self, other: &AccountId) -> bool {
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        eq(&self.object_id, &other.object_id)
            && match (&self.tenant_id, &other.tenant_id) {
                (Some(a), Some(b)) => eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant_id {
            Some(t) => write!(f, "{}@{t}", self.object_id),
            None => f.write_str(&self.object_id),
        }
    }
}

/// What upload-ingest needs to accept requests for one connection: `{prefix}senders/{id}`.
///
/// Kept apart from the [`ConnectionSecret`] so the internet-facing receiver never reads
/// Microsoft credentials: upload-ingest reads this secret, never the connection's. A request is
/// authenticated with this connection's own secrets only, so a request signed for one
/// connection is refused at every other.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SenderSecret {
    /// The connection's Standard Webhooks secrets (`whsec_…`), newest first. Any of them
    /// verifies a request (rolling one has no gap); the newest signs callbacks.
    #[serde(default, with = "secret_vec_default")]
    pub webhook_secrets: Vec<SecretString>,
    /// Also accept the deployment-wide `{prefix}webhook` secret. Off by default: an operator
    /// turns it on for a connection whose senders share that secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_deployment_secret: bool,
    /// Accept GitHub-style `X-Hub-Signature-256` requests. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub github_signature: bool,
    /// The GitHub-style secrets, as typed into the sender's settings (raw text), newest first.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "secret_vec_default"
    )]
    pub github_secrets: Vec<SecretString>,
    /// Accept requests that carry no signature at all. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unsigned: bool,
    /// Where the upload worker reports the outcome of an accepted request, signed with the
    /// newest of `webhook_secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<Url>,
    /// How requests are validated (top-level JSON fields).
    #[serde(default, flatten)]
    pub upload: UploadOptions,
}

impl SenderSecret {
    /// Checks what a receiver needs; the reason names the field and never holds a secret.
    pub fn validate(&self) -> Result<(), String> {
        use secrecy::ExposeSecret;
        for (i, s) in self.webhook_secrets.iter().enumerate() {
            crate::webhook::WebhookSecret::from_whsec(s.expose_secret())
                .map_err(|e| format!("webhook_secrets[{i}]: {e}"))?;
        }
        if self.webhook_secrets.is_empty()
            && !self.accept_deployment_secret
            && !self.github_signature
            && !self.allow_unsigned
        {
            return Err("webhook_secrets is empty and no other way in is set \
                        (accept_deployment_secret, github_signature, allow_unsigned)"
                .into());
        }
        if self.github_signature && self.github_secrets.is_empty() {
            return Err("github_signature needs github_secrets".into());
        }
        if self
            .github_secrets
            .iter()
            .any(|s| s.expose_secret().is_empty())
        {
            return Err("github_secrets holds an empty secret".into());
        }
        Ok(())
    }

    /// The secret callbacks are signed with: the newest of `webhook_secrets`.
    pub fn signing_secret(&self) -> Option<&SecretString> {
        self.webhook_secrets.first()
    }
}

/// How a connection's requests are validated, stored as top-level fields of its
/// [`SenderSecret`] (all optional; the defaults are the safe choice).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadOptions {
    /// Clean illegal file and folder names instead of refusing them with 422.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sanitize_names: bool,
    /// File extensions to refuse (without the dot); absent: the built-in list; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_extensions: Option<Vec<String>>,
    /// List columns senders may set (`metadata.<field>`), SharePoint internal names; absent:
    /// every field except the system and audit ones (`Author`, `Created`, …), which only a
    /// list naming them allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_fields: Option<Vec<String>>,
    /// Accept `source_url` with plain `http` (port 80) as well as `https`. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http_source: bool,
    /// Largest file accepted, in bytes; absent: the function's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
}

/// How [`save_connection`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Written at this version.
    Saved(VersionId),
    /// Not written: the store already holds this generation or a newer one.
    Stale {
        /// The generation found in the store.
        stored_generation: u64,
    },
}

/// Reads the app credential named by `cfg.app_secret`.
pub async fn app_credential(
    store: &dyn SecretStore,
    cfg: &SecretsConfig,
) -> Result<Versioned<AppCredential>, SecretError> {
    let cred = get_typed::<AppCredential>(store, &cfg.app_secret).await?;
    cred.value
        .validate()
        .map_err(|reason| SecretError::InvalidJson {
            name: cfg.app_secret.clone(),
            reason,
        })?;
    Ok(cred)
}

/// Reads the webhook signing secrets named by `cfg.webhook_secret`.
pub async fn webhook_secrets(
    store: &dyn SecretStore,
    cfg: &SecretsConfig,
) -> Result<Versioned<WebhookSecrets>, SecretError> {
    let s = get_typed::<WebhookSecrets>(store, &cfg.webhook_secret).await?;
    if s.value.secrets.is_empty() {
        return Err(SecretError::InvalidJson {
            name: cfg.webhook_secret.clone(),
            reason: "secrets is empty".into(),
        });
    }
    Ok(s)
}

/// Reads the state-signing keys from `cfg.state_key_secret`.
///
/// Deployments made before that secret existed kept the keys in the app credential
/// (`state_signing_key`, `previous_state_signing_key`); when the state-key secret does not exist
/// those are used, so an upgrade does not invalidate sign-ins in flight or need a manual step.
pub async fn state_keys(
    store: &dyn SecretStore,
    cfg: &SecretsConfig,
) -> Result<StateKeys, SecretError> {
    let keys = match get_typed::<StateKeys>(store, &cfg.state_key_secret).await {
        Ok(k) => k.value,
        Err(SecretError::NotFound { .. }) => {
            let missing = || SecretError::NotFound {
                name: cfg.state_key_secret.clone(),
            };
            let app = match get_typed::<AppCredential>(store, &cfg.app_secret).await {
                Ok(app) => app.value,
                Err(SecretError::NotFound { .. }) => return Err(missing()),
                Err(e) => return Err(e),
            };
            let key = app.state_signing_key.ok_or_else(missing)?;
            tracing::info!(
                secret = %cfg.app_secret,
                "state-signing key read from the app credential (legacy location)"
            );
            StateKeys {
                key,
                previous_key: app.previous_state_signing_key,
            }
        }
        Err(e) => return Err(e),
    };
    {
        use secrecy::ExposeSecret;
        if keys.key.expose_secret().trim().is_empty() {
            return Err(SecretError::InvalidJson {
                name: cfg.state_key_secret.clone(),
                reason: "key is empty".into(),
            });
        }
    }
    Ok(keys)
}

/// Reads connection `id`.
pub async fn connection(
    store: &dyn SecretStore,
    cfg: &SecretsConfig,
    id: &str,
) -> Result<Versioned<ConnectionSecret>, SecretError> {
    get_typed(store, &cfg.connection_secret_name(id)).await
}

/// Reads the sender secret of connection `id` and checks it ([`SenderSecret::validate`]).
pub async fn sender(
    store: &dyn SecretStore,
    cfg: &SecretsConfig,
    id: &str,
) -> Result<Versioned<SenderSecret>, SecretError> {
    let name = cfg.sender_secret_name(id);
    let s = get_typed::<SenderSecret>(store, &name).await?;
    s.value
        .validate()
        .map_err(|reason| SecretError::InvalidJson { name, reason })?;
    Ok(s)
}

/// Writes connection `id` unless the store already holds `conn.generation` or newer.
///
/// The caller sets `conn.generation` to one more than the generation it read before calling
/// Microsoft, so of two concurrent refreshes only the first to land is kept; the other gets
/// [`SaveOutcome::Stale`]. Lost compare-and-swap races are retried up to `max_attempts` times.
pub async fn save_connection(
    store: &dyn SecretStore,
    cfg: &SecretsConfig,
    id: &str,
    conn: &ConnectionSecret,
    max_attempts: u32,
) -> Result<SaveOutcome, SecretError> {
    let name = cfg.connection_secret_name(id);
    let mut stale = None;
    let outcome = update_typed::<ConnectionSecret, std::convert::Infallible, _>(
        store,
        &name,
        max_attempts,
        |current| {
            stale = current
                .map(|c| c.generation)
                .filter(|&stored| stored >= conn.generation);
            Ok(stale.is_none().then(|| conn.clone()))
        },
    )
    .await
    .map_err(|e| match e {
        UpdateError::Secret(e) => e,
        UpdateError::Rejected { source, .. } => match source {},
    })?;
    match (stale, outcome.current) {
        (Some(stored_generation), _) => Ok(SaveOutcome::Stale { stored_generation }),
        (None, Some(v)) if outcome.written => Ok(SaveOutcome::Saved(v.version)),
        _ => Err(SecretError::Backend {
            name,
            op: "save",
            code: None,
            message: "write reported no new version".into(),
        }),
    }
}

/// Serde for `Option<SecretString>`: the one place the value is exposed, to be stored.
mod secret_opt {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secret) => s.serialize_some(secret.expose_secret()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
    }
}

/// Serde for a required `SecretString`.
mod secret_str {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.expose_secret())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        Ok(SecretString::from(String::deserialize(d)?))
    }
}

/// Serde for an optional `Vec<SecretString>` (read only).
mod secret_vec_opt {
    use secrecy::SecretString;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<SecretString>>, D::Error> {
        Ok(Option::<Vec<String>>::deserialize(d)?
            .map(|v| v.into_iter().map(SecretString::from).collect()))
    }
}

/// Serde for a `Vec<SecretString>` that may be absent.
mod secret_vec_default {
    use secrecy::SecretString;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
        super::secret_vec::serialize(v, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
        Ok(Vec::<String>::deserialize(d)?
            .into_iter()
            .map(SecretString::from)
            .collect())
    }
}

/// Serialising `Vec<SecretString>` (reading goes through `WebhookSecretsWire`).
mod secret_vec {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(v: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for secret in v {
            seq.serialize_element(secret.expose_secret())?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;
    use crate::{
        config::Config,
        secrets::{FileSecretStore, put_typed},
    };

    fn connection_json() -> serde_json::Value {
        json!({
            "provider": "aad_v1",
            "auth": "delegated",
            "target": {"kind": "sharepoint", "site_url": "https://contoso.sharepoint.com/sites/ops",
                       "library": "Shared Documents", "base_folder": "inbox"},
            "refresh_token": "0.AAAA-refresh-secret",
            "refresh_token_issued_at": "2026-11-22T06:00:00Z",
            "access_token_expires_at": "2026-11-22T07:00:00Z",
            "status": "active",
            "resources": ["https://contoso.sharepoint.com"],
            "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "account": "ops@contoso.com",
            "generation": 3
        })
    }

    #[test]
    fn debug_output_redacts_every_secret_field() {
        let app: AppCredential = serde_json::from_value(json!({
            "client_id": "c1", "client_secret": "cs-secret", "secondary_client_secret": "cs2-secret",
            "certificate_pem": "-----BEGIN CERTIFICATE-----", "private_key_pem": "pk-secret"
        }))
        .unwrap();
        let conn: ConnectionSecret = serde_json::from_value(connection_json()).unwrap();
        let hooks: WebhookSecrets =
            serde_json::from_value(json!({"secrets": ["whsec_one", "whsec_two"]})).unwrap();
        let dbg = format!("{app:?} {conn:?} {hooks:?}");
        for secret in [
            "cs-secret",
            "cs2-secret",
            "pk-secret",
            "refresh-secret",
            "whsec_",
        ] {
            assert!(!dbg.contains(secret), "{secret} leaked: {dbg}");
        }
        assert!(dbg.contains("REDACTED"), "{dbg}");
        assert!(
            dbg.contains("c1") && dbg.contains("ops@contoso.com"),
            "{dbg}"
        );
    }

    #[test]
    fn serde_roundtrips_and_exposes_secrets_only_in_json() {
        let conn: ConnectionSecret = serde_json::from_value(connection_json()).unwrap();
        assert_eq!(conn.provider, Provider::AadV1);
        assert_eq!(
            conn.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some("0.AAAA-refresh-secret")
        );
        assert_eq!(serde_json::to_value(&conn).unwrap(), connection_json());

        let drive: Target =
            serde_json::from_value(json!({"kind": "drive", "drive_id": "me"})).unwrap();
        assert_eq!(
            drive,
            Target::Drive {
                drive_id: DriveRef::Me
            }
        );
        let drive: Target =
            serde_json::from_value(json!({"kind": "drive", "drive_id": "b!abc"})).unwrap();
        assert_eq!(serde_json::to_value(&drive).unwrap()["drive_id"], "b!abc");
        assert!(
            serde_json::from_value::<Target>(json!({"kind": "drive", "drive_id": ""})).is_err()
        );
        assert!(serde_json::from_value::<Provider>(json!("google")).is_err());
    }

    #[test]
    fn app_credential_validation_names_the_missing_field() {
        let app = |v| {
            serde_json::from_value::<AppCredential>(v)
                .unwrap()
                .validate()
        };
        assert!(app(json!({"client_id": "c", "client_secret": "s"})).is_ok());
        assert!(
            app(json!({"client_id": "c"}))
                .unwrap_err()
                .contains("client_secret")
        );
        assert!(
            app(json!({"client_id": "c", "certificate_pem": "x"}))
                .unwrap_err()
                .contains("private_key_pem")
        );
    }

    #[tokio::test]
    async fn typed_reads_and_generation_guarded_saves() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(FileSecretStore::open(dir.path()).unwrap());
        let cfg = Config::from_lookup(|_| None).unwrap().secrets;

        let mut conn: ConnectionSecret = serde_json::from_value(connection_json()).unwrap();
        assert!(matches!(
            save_connection(&*store, &cfg, "c1", &conn, 5)
                .await
                .unwrap(),
            SaveOutcome::Saved(_)
        ));
        let read = connection(&*store, &cfg, "c1").await.unwrap();
        assert_eq!(read.value.generation, 3);

        // Same generation again (a second refresh that started from generation 2): refused.
        conn.refresh_token = Some("older".into());
        assert_eq!(
            save_connection(&*store, &cfg, "c1", &conn, 5)
                .await
                .unwrap(),
            SaveOutcome::Stale {
                stored_generation: 3
            }
        );
        let still = connection(&*store, &cfg, "c1").await.unwrap();
        assert_eq!(still.version, read.version);
        assert_eq!(
            still.value.refresh_token.unwrap().expose_secret(),
            "0.AAAA-refresh-secret"
        );

        conn.generation = 4;
        assert!(matches!(
            save_connection(&*store, &cfg, "c1", &conn, 5)
                .await
                .unwrap(),
            SaveOutcome::Saved(_)
        ));

        // The app credential is validated on read, and errors do not echo secret values.
        put_typed(
            &*store,
            &cfg.app_secret,
            &json!({"client_secret": "leak-me"}),
            None,
        )
        .await
        .unwrap();
        let e = app_credential(&*store, &cfg).await.unwrap_err();
        assert!(matches!(e, SecretError::InvalidJson { .. }), "{e}");
        assert!(
            e.to_string().contains("client_id") && !e.to_string().contains("leak-me"),
            "{e}"
        );

        put_typed(&*store, &cfg.webhook_secret, &json!({"secrets": []}), None)
            .await
            .unwrap();
        assert!(webhook_secrets(&*store, &cfg).await.is_err());
    }

    #[test]
    fn webhook_secret_single_field_becomes_a_whsec_list() {
        let one: WebhookSecrets =
            serde_json::from_value(json!({"secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})).unwrap();
        let got: Vec<&str> = one.secrets.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(got, ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        let already: WebhookSecrets =
            serde_json::from_value(json!({"secret": "whsec_abcd"})).unwrap();
        assert_eq!(already.secrets[0].expose_secret(), "whsec_abcd");

        let both = serde_json::from_value::<WebhookSecrets>(
            json!({"secret": "whsec_a", "secrets": ["whsec_b"]}),
        )
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let neither = serde_json::from_value::<WebhookSecrets>(json!({})).unwrap_err();
        assert!(neither.to_string().contains("`secrets`"), "{neither}");
    }

    #[tokio::test]
    async fn state_keys_come_from_their_own_secret_or_the_legacy_app_fields() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSecretStore::open(dir.path()).unwrap();
        let cfg = Config::from_lookup(|_| None).unwrap().secrets;

        // Neither location: NotFound names the new secret.
        let e = state_keys(&store, &cfg).await.unwrap_err();
        assert!(
            matches!(&e, SecretError::NotFound { name } if name == "spbridge/state-key"),
            "{e}"
        );

        // Legacy: the app credential's fields.
        store
            .put(
                "spbridge/app",
                &json!({"client_id": "c", "state_signing_key": "old-key", "previous_state_signing_key": "older"}),
                None,
            )
            .await
            .unwrap();
        let k = state_keys(&store, &cfg).await.unwrap();
        assert_eq!(k.key.expose_secret(), "old-key");
        assert_eq!(k.previous_key.unwrap().expose_secret(), "older");

        // The own secret wins once it exists.
        store
            .put("spbridge/state-key", &json!({"key": "new-key"}), None)
            .await
            .unwrap();
        let k = state_keys(&store, &cfg).await.unwrap();
        assert_eq!(k.key.expose_secret(), "new-key");
        assert!(k.previous_key.is_none());
    }
}
