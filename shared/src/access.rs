//! "Give me a bearer token for connection X" — and never lose a refresh token doing it.
//!
//! [`Access`] is the seam between the stored connections (`{prefix}connections/{id}`, see
//! `docs/secrets.md`) and the identity protocols ([`crate::identity`]). Upload code calls
//! [`Access::bearer`]; token-refresh calls [`Access::refresh`]. Both:
//!
//! 1. read the connection secret and the app credential it names;
//! 2. build the [`TokenSource`] the connection needs:
//!    - app-only Entra: certificate (preferred) or client secret (Graph only: SharePoint REST
//!      refuses app-only tokens obtained with a secret);
//!    - app-only ACS: the add-in's client id and secret;
//!    - delegated: the stored refresh token of ACS, Azure AD v1, Entra v2 or a Microsoft account;
//! 3. ask for the resource or scope the connection's [`Target`] needs (see [`resource_for`]);
//! 4. when Microsoft answers with a refresh token, store it through [`write_tokens`] (the one write
//!    path for tokens): a write based on an older read of the connection's `generation` is
//!    dropped, so an older token never overwrites a newer one. The loser keeps its access token
//!    (it is valid) and the next call reads the winner's refresh token;
//! 5. on `invalid_client`, retry once with the app's `secondary_client_secret` (secret rollover,
//!    [`with_secret_fallback`], which code redemption uses too);
//! 6. classify failures ([`AccessError`]): a refused refresh token marks the connection
//!    `needs_consent` with Microsoft's code and the time — unless another writer stored a newer
//!    token meanwhile, in which case that one is tried instead. Nothing is ever deleted.
//!
//! Access tokens are cached per connection in the shared [`TokenCache`] (one per warm container);
//! concurrent callers for one connection share one token request. The cache must only be used for
//! delegated connections through [`Access`], because only a fresh token response is persisted.
//!
//! ```no_run
//! # async fn f(access: shared::access::Access) -> Result<(), shared::access::AccessError> {
//! let bearer = access.bearer("contoso-docs", false).await?;
//! // Use `bearer.authorization()` on the upload; on a 401, call again with `force_refresh = true`.
//! # Ok(()) }
//! ```

use std::{fmt, future::Future, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use url::Url;

use crate::{
    api::{ApiError, Kind},
    config::{Endpoints, SecretsConfig},
    identity::{
        ClientSecret, IdentityError, MsError, RefreshProvider, RefreshToken, Token, TokenCache,
        TokenSource, acs, entra,
    },
    microsoft::RefreshFailure,
    secrets::{
        SecretError, SecretStore, UpdateError, get_typed,
        replay::ReplayKey,
        schema::{AppCredential, AuthKind, ConnectionSecret, ConnectionStatus, Provider, Target},
        update_typed,
    },
};

/// Compare-and-swap rounds for one connection write before giving up with a conflict.
pub const SAVE_ATTEMPTS: u32 = 8;

/// How often a refused refresh token is retried with a newer one another writer stored meanwhile.
const SUPERSEDED_ROUNDS: u32 = 3;

/// Entra scope that makes v2 (and login.live.com) return a refresh token.
const OFFLINE_ACCESS: &str = "offline_access";

/// Default delegated scopes for a Microsoft-account OneDrive connection.
pub const MSA_DEFAULT_SCOPES: &[&str] = &["onedrive.readwrite", "offline_access"];

/// An access token for one connection. `Debug` redacts the token.
#[derive(Clone)]
pub struct BearerToken {
    /// The connection it is for.
    pub connection: String,
    /// The access token; expose it only to build the `Authorization` header.
    pub token: SecretString,
    /// When it expires, if Microsoft said.
    pub expires_at: Option<OffsetDateTime>,
    /// Where the connection's files go.
    pub target: Target,
    /// Which identity system issued it.
    pub provider: Provider,
    /// Delegated or app-only.
    pub auth: AuthKind,
    /// The resource or scope it was requested for.
    pub resource_or_scope: String,
}

impl BearerToken {
    /// The `Authorization` header value, `Bearer …`.
    pub fn authorization(&self) -> SecretString {
        SecretString::from(format!("Bearer {}", self.token.expose_secret()))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("connection", &self.connection)
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("target", &self.target)
            .field("provider", &self.provider)
            .field("auth", &self.auth)
            .field("resource_or_scope", &self.resource_or_scope)
            .finish()
    }
}

/// What happened to the connection secret after a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// This call stored the new token and times at this generation.
    Saved {
        /// The generation now stored.
        generation: u64,
    },
    /// Another writer stored a newer generation first; this call's write was refused (its
    /// refresh token is not stored, the winner's is).
    AlreadyNewer {
        /// The generation found in the store.
        stored_generation: u64,
    },
    /// Nothing was written: the access token came from the in-memory cache.
    Cached,
}

/// What [`Access::refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshOutcome {
    /// The connection.
    pub connection: String,
    /// Whether Microsoft issued a refresh token different from the one used.
    pub rotated: bool,
    /// How the result was stored.
    pub persisted: Persisted,
    /// When the new access token expires.
    pub access_token_expires_at: Option<OffsetDateTime>,
    /// The signed-in account, if the response named it.
    pub account: Option<String>,
}

/// Why no token could be had. Each variant says what the caller does next; messages carry
/// Microsoft's code and description, never a token or secret.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No connection secret by that name.
    #[error("connection {connection:?} does not exist")]
    NotFound {
        /// The connection.
        connection: String,
    },
    /// The connection needs a person to sign in or consent again (`/connect/{connection}`).
    #[error("connection {connection:?} needs consent again ({code}) since {at}")]
    NeedsConsent {
        /// The connection.
        connection: String,
        /// Microsoft's code (`AADSTS700082`, …) or OAuth error word (`invalid_grant`).
        code: String,
        /// When it was found.
        at: OffsetDateTime,
        /// Microsoft's error, when this call got one (not when the status was already stored).
        ms: Option<Box<MsError>>,
    },
    /// Microsoft throttled us; retry after `retry_after` if given.
    #[error("connection {connection:?}: throttled by Microsoft: {detail}")]
    Throttled {
        /// The connection.
        connection: String,
        /// Server-requested wait, if any.
        retry_after: Option<Duration>,
        /// What failed.
        detail: String,
    },
    /// A network fault or Microsoft server error that outlasted the bounded retries.
    #[error("connection {connection:?}: transient failure: {detail}")]
    Transient {
        /// The connection.
        connection: String,
        /// Server-requested wait, if any.
        retry_after: Option<Duration>,
        /// What failed.
        detail: String,
    },
    /// The connection or app registration is wrong; an operator must fix it.
    #[error("connection {connection:?} is misconfigured: {reason}")]
    Misconfigured {
        /// The connection.
        connection: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the secret store failed.
    #[error("connection {connection:?}: secret store: {source}")]
    Store {
        /// The connection.
        connection: String,
        /// The store's error.
        #[source]
        source: SecretError,
    },
}

impl AccessError {
    /// The connection the error is about.
    pub fn connection(&self) -> &str {
        match self {
            AccessError::NotFound { connection }
            | AccessError::NeedsConsent { connection, .. }
            | AccessError::Throttled { connection, .. }
            | AccessError::Transient { connection, .. }
            | AccessError::Misconfigured { connection, .. }
            | AccessError::Store { connection, .. } => connection,
        }
    }

    /// The token-refresh failure class (and so the Lambda error type) of this error.
    pub fn failure(&self) -> RefreshFailure {
        match self {
            AccessError::NeedsConsent { .. } => RefreshFailure::NeedsConsent,
            AccessError::Throttled { .. } => RefreshFailure::Throttled,
            AccessError::Transient { .. } => RefreshFailure::Transient,
            AccessError::Store { source, .. } => match source {
                SecretError::Throttled { .. } | SecretError::Conflict { .. } => {
                    RefreshFailure::Transient
                }
                SecretError::Backend { .. } => RefreshFailure::Transient,
                _ => RefreshFailure::Misconfigured,
            },
            AccessError::NotFound { .. } | AccessError::Misconfigured { .. } => {
                RefreshFailure::Misconfigured
            }
        }
    }

    /// Whether trying again later may succeed without anyone acting.
    pub fn is_retryable(&self) -> bool {
        self.failure().is_retryable()
    }

    /// Server-requested wait, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AccessError::Throttled { retry_after, .. }
            | AccessError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn store(connection: &str, source: SecretError) -> Self {
        match source {
            SecretError::NotFound { .. } => AccessError::NotFound {
                connection: connection.to_owned(),
            },
            source => AccessError::Store {
                connection: connection.to_owned(),
                source,
            },
        }
    }

    fn misconfigured(connection: &str, reason: impl Into<String>) -> Self {
        AccessError::Misconfigured {
            connection: connection.to_owned(),
            reason: reason.into(),
        }
    }

    /// Maps an identity error through [`RefreshFailure::classify`] (Microsoft's code wins).
    pub fn from_identity(connection: &str, e: IdentityError, now: OffsetDateTime) -> Self {
        let connection = connection.to_owned();
        let retry_after = e.retry_after();
        let detail = e.to_string();
        let failure = match e.ms_error() {
            Some(ms) => RefreshFailure::classify(
                &ms.error,
                ms.code.as_deref(),
                (ms.status != 0).then_some(ms.status),
            ),
            None => match &e {
                IdentityError::Transient { .. } | IdentityError::BadResponse { .. } => {
                    RefreshFailure::Transient
                }
                IdentityError::NeedsConsent(_) => RefreshFailure::NeedsConsent,
                _ => RefreshFailure::Misconfigured,
            },
        };
        match failure {
            RefreshFailure::NeedsConsent => {
                let ms = e.ms_error().cloned().map(Box::new);
                let code = ms
                    .as_ref()
                    .map(|m| m.code.clone().unwrap_or_else(|| m.error.clone()))
                    .unwrap_or_else(|| "needs_consent".to_owned());
                AccessError::NeedsConsent {
                    connection,
                    code,
                    at: now,
                    ms,
                }
            }
            RefreshFailure::Throttled => AccessError::Throttled {
                connection,
                retry_after,
                detail,
            },
            RefreshFailure::Transient => AccessError::Transient {
                connection,
                retry_after,
                detail,
            },
            RefreshFailure::Misconfigured => AccessError::Misconfigured {
                connection,
                reason: detail,
            },
        }
    }
}

impl From<&AccessError> for ApiError {
    /// The answer for a connection that cannot give a token. The message names no connection,
    /// secret or Microsoft text: an unauthenticated caller may read it (add `connection` as a
    /// detail for an authenticated one). Microsoft's code goes into `microsoft_code`.
    fn from(e: &AccessError) -> Self {
        match e {
            AccessError::NotFound { .. } => {
                ApiError::new(Kind::ConnectionNotFound, "there is no such connection")
            }
            AccessError::NeedsConsent { code, .. } => ApiError::new(
                Kind::NeedsConsent,
                "the connection needs a user or an administrator to sign in and consent again",
            )
            .with_detail("microsoft_code", code.clone()),
            AccessError::Throttled { retry_after, .. } => ApiError::new(
                Kind::Throttled,
                "Microsoft is throttling token requests; retry later",
            )
            .with_retry_after(*retry_after),
            AccessError::Transient { retry_after, .. } => ApiError::new(
                Kind::Unavailable,
                "Microsoft's sign-in service is unavailable; retry later",
            )
            .with_retry_after(*retry_after),
            AccessError::Store { .. } if e.is_retryable() => ApiError::new(
                Kind::Unavailable,
                "the secret store could not be reached; retry later",
            ),
            AccessError::Misconfigured { .. } | AccessError::Store { .. } => ApiError::new(
                Kind::Misconfigured,
                "the connection or its app registration is misconfigured; see the function's logs",
            ),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        ApiError::from(&e)
    }
}

/// Tokens for stored connections. Build once per cold start; cheap to share behind an `Arc`.
pub struct Access {
    http: reqwest::Client,
    endpoints: Endpoints,
    cache: Arc<TokenCache>,
    store: Arc<dyn SecretStore>,
    secrets_cfg: SecretsConfig,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("endpoints", &self.endpoints)
            .field("cache", &self.cache)
            .field("prefix", &self.secrets_cfg.prefix)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Wires the pieces; `cache` is the warm container's token cache.
    pub fn new(
        http: reqwest::Client,
        endpoints: Endpoints,
        cache: Arc<TokenCache>,
        store: Arc<dyn SecretStore>,
        secrets_cfg: SecretsConfig,
    ) -> Self {
        Access {
            http,
            endpoints,
            cache,
            store,
            secrets_cfg,
        }
    }

    /// The secret store.
    pub fn store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    /// Secret names and prefix.
    pub fn secrets_config(&self) -> &SecretsConfig {
        &self.secrets_cfg
    }

    /// The Microsoft endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The token cache.
    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    /// An access token for `connection`, from the cache unless stale or `force_refresh` (use it
    /// after Microsoft answered 401). A rotated refresh token is stored before this returns.
    ///
    /// A connection already marked `needs_consent` fails at once with
    /// [`AccessError::NeedsConsent`] carrying the stored code and time.
    #[tracing::instrument(skip(self), fields(connection = %connection))]
    pub async fn bearer(
        &self,
        connection: &str,
        force_refresh: bool,
    ) -> Result<BearerToken, AccessError> {
        let (bearer, persisted) = self
            .obtain(connection, force_refresh, Writer::Upload)
            .await?;
        if let Some(Err(e)) = persisted {
            // The access token is good; the old refresh token still is too. Say so loudly.
            tracing::error!(connection, error = %e, "could not store the rotated refresh token");
        }
        Ok(bearer)
    }

    /// Redeems `connection`'s refresh token now (whatever the cache holds) and stores the new
    /// refresh token and times with the generation guard. For token-refresh.
    ///
    /// App-only connections get a fresh token too (a credential check); nothing is stored.
    #[tracing::instrument(skip(self), fields(connection = %connection))]
    pub async fn refresh(&self, connection: &str) -> Result<RefreshOutcome, AccessError> {
        let (bearer, persisted) = self.obtain(connection, true, Writer::OfRecord).await?;
        let (persisted, rotated, account) = match persisted {
            Some(Ok(p)) => (p.persisted, p.rotated, p.account),
            Some(Err(e)) => return Err(e),
            None => (Persisted::Cached, false, None),
        };
        Ok(RefreshOutcome {
            connection: connection.to_owned(),
            rotated,
            persisted,
            access_token_expires_at: bearer.expires_at,
            account,
        })
    }

    /// Reads connection `id`.
    pub async fn connection(
        &self,
        id: &str,
    ) -> Result<crate::secrets::Versioned<ConnectionSecret>, AccessError> {
        crate::secrets::schema::connection(self.store.as_ref(), &self.secrets_cfg, id)
            .await
            .map_err(|e| AccessError::store(id, e))
    }

    /// Reads the app credential a connection uses (`app_secret`, else the deployment's).
    pub async fn app_credential(
        &self,
        id: &str,
        conn: &ConnectionSecret,
    ) -> Result<AppCredential, AccessError> {
        let name = conn
            .app_secret
            .clone()
            .unwrap_or_else(|| self.secrets_cfg.app_secret.clone());
        match get_typed::<AppCredential>(self.store.as_ref(), &name).await {
            Ok(v) if v.value.client_id.trim().is_empty() => Err(AccessError::misconfigured(
                id,
                format!("app credential {name} has an empty client_id"),
            )),
            Ok(v) => Ok(v.value),
            Err(SecretError::NotFound { .. }) => Err(AccessError::misconfigured(
                id,
                format!("app credential secret {name} does not exist"),
            )),
            Err(e) => Err(AccessError::store(id, e)),
        }
    }

    async fn obtain(
        &self,
        id: &str,
        force: bool,
        writer: Writer,
    ) -> Result<(BearerToken, Option<Result<Stored, AccessError>>), AccessError> {
        for round in 1..=SUPERSEDED_ROUNDS {
            let current = self.connection(id).await?;
            let conn = current.value;
            if conn.status == ConnectionStatus::NeedsConsent {
                return Err(AccessError::NeedsConsent {
                    connection: id.to_owned(),
                    code: conn
                        .status_code
                        .clone()
                        .unwrap_or_else(|| "needs_consent".into()),
                    at: conn.status_at.unwrap_or_else(OffsetDateTime::now_utc),
                    ms: None,
                });
            }
            let app = self.app_credential(id, &conn).await?;
            let plan = plan(id, &conn, &app, &self.endpoints)?;
            let secondary = secondary_plan(id, &conn, &app, &self.endpoints);
            let bearer = |token: &Token| BearerToken {
                connection: id.to_owned(),
                token: SecretString::from(token.access_token.expose_secret().to_owned()),
                expires_at: token.expires_at,
                target: conn.target.clone(),
                provider: conn.provider,
                auth: conn.auth,
                resource_or_scope: plan.resource_or_scope.clone(),
            };
            if conn.auth == AuthKind::AppOnly {
                let token = self
                    .token_with_fallback(id, &self.cache, &plan, secondary.as_ref(), force)
                    .await
                    .map_err(|e| AccessError::from_identity(id, e, OffsetDateTime::now_utc()))?;
                return Ok((bearer(&token), None));
            }

            // Delegated: only a fresh token response is persisted, so the fetch runs inside the
            // cache's single-flight slot against a throwaway cache, and stores before returning.
            let key = plan
                .source
                .cache_key(&self.endpoints, &plan.resource_or_scope)
                .map_err(|e| AccessError::from_identity(id, e, OffsetDateTime::now_utc()))?;
            let stored = std::sync::Mutex::new(None);
            let result = self
                .cache
                .get_or_fetch(&key, force, || async {
                    let mut fresh = TokenCache::new(Duration::ZERO).with_retry(self.cache.retry);
                    fresh.realms = self.cache.realms.clone();
                    let token = self
                        .token_with_fallback(id, &fresh, &plan, secondary.as_ref(), true)
                        .await?;
                    let outcome = if writer == Writer::OfRecord
                        || must_store(&conn, &token, OffsetDateTime::now_utc())
                    {
                        self.persist(id, &conn, &token).await
                    } else {
                        tracing::debug!(
                            connection = id,
                            "token kept in memory; token-refresh stores it"
                        );
                        Ok(Stored {
                            persisted: Persisted::Cached,
                            rotated: false,
                            account: token.user.clone().or_else(|| conn.account.clone()),
                        })
                    };
                    if let Ok(mut slot) = stored.lock() {
                        *slot = Some(outcome);
                    }
                    Ok(token)
                })
                .await;
            let stored = stored.into_inner().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(token) => return Ok((bearer(&token), stored)),
                Err(e) => {
                    let now = OffsetDateTime::now_utc();
                    let err = AccessError::from_identity(id, e, now);
                    let AccessError::NeedsConsent { code, ms, .. } = &err else {
                        return Err(err);
                    };
                    // A refused refresh token may just have been superseded by a concurrent
                    // writer (providers that revoke on rotation): try the stored one first.
                    match self
                        .mark_needs_consent(id, conn.generation, code, ms.as_deref(), now)
                        .await?
                    {
                        Marked::Marked => {
                            tracing::warn!(
                                connection = id,
                                code = %code,
                                provider = %conn.provider,
                                "refresh token refused; connection marked needs_consent"
                            );
                            return Err(err);
                        }
                        Marked::Superseded if round < SUPERSEDED_ROUNDS => continue,
                        Marked::Superseded => return Err(err),
                    }
                }
            }
        }
        Err(AccessError::Transient {
            connection: id.to_owned(),
            retry_after: None,
            detail: "the connection kept changing while its token was refreshed".into(),
        })
    }

    /// A token from `primary`; if Microsoft refuses the client secret and the app has a
    /// secondary one (secret rollover), from `secondary` ([`with_secret_fallback`]'s rule).
    async fn token_with_fallback(
        &self,
        id: &str,
        cache: &TokenCache,
        primary: &Plan,
        secondary: Option<&Plan>,
        force: bool,
    ) -> Result<Token, IdentityError> {
        fallback(id, secondary.is_some(), |second| async move {
            let (plan, force) = match (second, secondary) {
                (true, Some(p)) => (p, true),
                _ => (primary, force),
            };
            plan.source
                .token(
                    &self.http,
                    &self.endpoints,
                    cache,
                    &plan.resource_or_scope,
                    force,
                )
                .await
        })
        .await
    }

    /// Stores what a fresh token response says about the connection read as `read`.
    async fn persist(
        &self,
        id: &str,
        read: &ConnectionSecret,
        token: &Token,
    ) -> Result<Stored, AccessError> {
        // Microsoft may already have rotated the refresh token: a short store outage is waited
        // out rather than losing the new one.
        let outage = |e: &WriteError| {
            matches!(
                e,
                WriteError::Store(SecretError::Backend { .. } | SecretError::Throttled { .. })
            )
        };
        let written = crate::outage::retry(outage, || {
            let mut write = TokenWrite::from_token(token, SecretString::from(String::new()));
            write.refresh_token = token
                .refresh_token
                .as_ref()
                .map(|rt| SecretString::from(rt.expose_secret().to_owned()));
            write_tokens(
                self.store.as_ref(),
                &self.secrets_cfg,
                id,
                write.refresh(read.generation, OffsetDateTime::now_utc()),
            )
        })
        .await
        .map_err(|e| match e {
            WriteError::Store(e) => AccessError::store(id, e),
            // A refresh write refuses neither; a deleted connection is simply not found.
            WriteError::Gone | WriteError::Replayed | WriteError::AccountMismatch => {
                AccessError::NotFound {
                    connection: id.to_owned(),
                }
            }
        })?;
        let persisted = if written.saved {
            Persisted::Saved {
                generation: written.stored.generation,
            }
        } else {
            tracing::debug!(
                connection = id,
                stored_generation = written.stored.generation,
                "a newer token was stored concurrently; keeping it"
            );
            Persisted::AlreadyNewer {
                stored_generation: written.stored.generation,
            }
        };
        let rotated = written.rotated;
        Ok(Stored {
            persisted,
            rotated,
            account: token.user.clone().or_else(|| read.account.clone()),
        })
    }

    /// Marks the connection `needs_consent` unless its generation moved on from `read_generation`
    /// (then its newer refresh token deserves a try). Keeps every other field, the refresh token
    /// included.
    async fn mark_needs_consent(
        &self,
        id: &str,
        read_generation: u64,
        code: &str,
        ms: Option<&MsError>,
        now: OffsetDateTime,
    ) -> Result<Marked, AccessError> {
        let name = self.secrets_cfg.connection_secret_name(id);
        let detail = ms.and_then(|m| {
            m.description
                .as_deref()
                .and_then(|d| d.lines().next())
                .map(|l| l.chars().take(300).collect::<String>())
        });
        let mut superseded = false;
        let result = update_typed::<ConnectionSecret, std::convert::Infallible, _>(
            self.store.as_ref(),
            &name,
            SAVE_ATTEMPTS,
            |current| {
                superseded = false;
                let Some(c) = current else { return Ok(None) };
                if c.generation != read_generation {
                    superseded = c.status == ConnectionStatus::Active;
                    return Ok(None);
                }
                let mut next = c.clone();
                next.status = ConnectionStatus::NeedsConsent;
                next.status_code = Some(code.to_owned());
                next.status_at = Some(now);
                next.status_detail = detail.clone();
                next.generation = c.generation.saturating_add(1);
                Ok(Some(next))
            },
        )
        .await;
        match result {
            Ok(_) if superseded => Ok(Marked::Superseded),
            Ok(_) => Ok(Marked::Marked),
            Err(UpdateError::Secret(e)) => Err(AccessError::store(id, e)),
            Err(UpdateError::Rejected { source, .. }) => match source {},
        }
    }
}

enum Marked {
    /// This call (or a concurrent one) recorded `needs_consent`.
    Marked,
    /// A newer refresh token was stored meanwhile.
    Superseded,
}

/// Who asks for a token: an upload (writes only what [`must_store`] says) or token-refresh,
/// the writer of record (stores every fresh response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Upload,
    OfRecord,
}

/// How old the stored refresh token may get before an upload stores a rotated one anyway
/// (token-refresh normally stores well within it). AWS advises against writing one secret
/// more often than every 10 minutes; a day keeps uploads far below that.
pub const STORE_ROTATED_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The token-write policy of uploads: in steady state an upload writes nothing. A fresh
/// response is stored only when
/// - the provider revokes the old refresh token on rotation (Microsoft accounts and ACS: the
///   stored one would stop working) and the token did rotate, or
/// - it rotated and the stored refresh token was issued more than [`STORE_ROTATED_AFTER`] ago
///   (or when is unknown), so the stored one never ages towards its expiry, or
/// - the connection has no refresh token stored yet.
///
/// Entra and Azure AD v1 keep the old refresh token valid after rotation, so their rotated
/// tokens are left to token-refresh.
pub fn must_store(conn: &ConnectionSecret, token: &Token, now: OffsetDateTime) -> bool {
    let Some(new) = &token.refresh_token else {
        return false;
    };
    let Some(old) = &conn.refresh_token else {
        return true;
    };
    if new.expose_secret() == old.expose_secret() {
        return false;
    }
    if matches!(
        conn.provider,
        crate::secrets::schema::Provider::Msa | crate::secrets::schema::Provider::Acs
    ) {
        return true;
    }
    conn.refresh_token_issued_at
        .is_none_or(|at| now - at > STORE_ROTATED_AFTER)
}

struct Stored {
    persisted: Persisted,
    rotated: bool,
    account: Option<String>,
}

struct Plan {
    source: TokenSource,
    resource_or_scope: String,
}

/// What a token response says about a connection, to be stored by [`write_tokens`].
///
/// Fields left `None` or empty keep what is stored.
#[derive(Debug, Default)]
pub struct TokenWrite {
    /// The refresh token Microsoft returned (`None`: keep the stored one).
    pub refresh_token: Option<SecretString>,
    /// When the access token expires.
    pub expires_at: Option<OffsetDateTime>,
    /// Who signed in.
    pub account: Option<String>,
    /// The signed-in user's object id (or Microsoft-account user id), to bind the connection.
    pub object_id: Option<String>,
    /// The tenant.
    pub tenant_id: Option<String>,
    /// The ACS realm.
    pub realm: Option<String>,
    /// AAD v1 resources.
    pub resources: Vec<String>,
    /// Scopes to ask for on refresh.
    pub scopes: Vec<String>,
    /// The redirect URI a Microsoft-account refresh must repeat.
    pub redirect_uri: Option<Url>,
}

/// Which rule a [`write_tokens`] call follows; see there.
#[derive(Debug)]
pub enum WriteBasis {
    /// A refresh based on the connection as read at `generation`.
    Refresh {
        /// The generation read before calling Microsoft.
        generation: u64,
        /// Now.
        now: OffsetDateTime,
    },
    /// A sign-in (code redemption or add-in launch), recorded as consumed by `key`.
    Consent {
        /// The attempt.
        key: ReplayKey,
        /// Now.
        now: OffsetDateTime,
        /// The attempt started from a link minted for re-binding: another account may replace
        /// the bound one.
        rebind: bool,
    },
}

impl TokenWrite {
    /// What `token` says; `refresh_token` is the one to store.
    pub fn from_token(token: &Token, refresh_token: SecretString) -> Self {
        TokenWrite {
            refresh_token: Some(refresh_token),
            expires_at: token.expires_at,
            account: token.user.clone(),
            object_id: token.user_object_id.clone(),
            tenant_id: token.tenant_id.clone(),
            realm: None,
            resources: vec![],
            scopes: vec![],
            redirect_uri: None,
        }
    }

    /// This write as a refresh of the connection read at `generation`.
    pub fn refresh(self, generation: u64, now: OffsetDateTime) -> (Self, WriteBasis) {
        (self, WriteBasis::Refresh { generation, now })
    }

    /// This write as the result of the sign-in attempt `key`; `rebind`: the attempt may bind
    /// another account than the stored one.
    pub fn consent(self, key: ReplayKey, now: OffsetDateTime, rebind: bool) -> (Self, WriteBasis) {
        (self, WriteBasis::Consent { key, now, rebind })
    }

    /// The account this write signs in, when Microsoft named it.
    pub fn account_id(&self) -> Option<crate::secrets::schema::AccountId> {
        self.object_id
            .as_ref()
            .map(|oid| crate::secrets::schema::AccountId {
                tenant_id: self.realm.clone().or_else(|| self.tenant_id.clone()),
                object_id: oid.clone(),
            })
    }
}

/// What [`write_tokens`] did.
#[derive(Debug)]
pub struct Written {
    /// The connection as stored now (this write's, or the newer one that was kept).
    pub stored: ConnectionSecret,
    /// Whether this write landed.
    pub saved: bool,
    /// Whether the stored refresh token changed.
    pub rotated: bool,
}

/// Why [`write_tokens`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The sign-in attempt was already recorded (a replayed callback).
    #[error("this sign-in attempt was already used")]
    Replayed,
    /// The connection secret no longer exists.
    #[error("the connection no longer exists")]
    Gone,
    /// The sign-in brought another account than the one the connection is bound to (or named
    /// none), and was not started for re-binding.
    #[error("the connection is bound to another account")]
    AccountMismatch,
    /// The store failed or kept conflicting.
    #[error(transparent)]
    Store(#[from] SecretError),
}

/// The one write path for tokens: code redemption, add-in launch, token-refresh and
/// [`Access::refresh`]/[`Access::bearer`] all store through it.
///
/// The overwrite rule: **a refresh token is never overwritten by an older one.**
/// - Every write is a compare-and-swap on the secret's version (lost races are re-read and
///   re-applied, up to [`SAVE_ATTEMPTS`] times) and bumps the connection's `generation`.
/// - A refresh ([`WriteBasis::Refresh`]) lands only if the stored `generation` is still the one
///   read before Microsoft was called; otherwise another writer stored a newer token meanwhile and
///   that one is kept (`saved: false`).
/// - A sign-in ([`WriteBasis::Consent`]) is newer than anything stored (the person consented just
///   now), so it lands on the current version whatever its generation, marks the connection
///   `active`, and records its attempt in the same write; an attempt already recorded is
///   [`WriteError::Replayed`] and writes nothing.
/// - A sign-in binds the connection to its account (`bound_account`) if none is bound; one
///   bringing another account (or none Microsoft named) is [`WriteError::AccountMismatch`] and
///   writes nothing, unless it was started for re-binding.
pub async fn write_tokens(
    store: &dyn SecretStore,
    cfg: &SecretsConfig,
    id: &str,
    (write, basis): (TokenWrite, WriteBasis),
) -> Result<Written, WriteError> {
    enum Refused {
        Gone,
        Replayed,
        AccountMismatch,
    }
    let name = cfg.connection_secret_name(id);
    let mut saved = false;
    let mut rotated = false;
    let mut last: Option<ConnectionSecret> = None;
    let result =
        update_typed::<ConnectionSecret, Refused, _>(store, &name, SAVE_ATTEMPTS, |current| {
            saved = false;
            rotated = false;
            let cur = current.ok_or(Refused::Gone)?;
            let mut next = cur.clone();
            let now = match &basis {
                WriteBasis::Refresh { generation, now } => {
                    if cur.generation != *generation {
                        last = Some(cur.clone());
                        return Ok(None);
                    }
                    *now
                }
                WriteBasis::Consent { key, now, rebind } => {
                    let signed_in = write.account_id();
                    match (&cur.bound_account, &signed_in) {
                        (Some(bound), Some(new)) if bound.same_as(new) => {}
                        (Some(_), Some(_)) if *rebind => {}
                        (Some(_), _) => return Err(Refused::AccountMismatch),
                        (None, _) => {}
                    }
                    if signed_in.is_some() {
                        next.bound_account = signed_in;
                    }
                    next.consumed_states
                        .record(key, *now)
                        .map_err(|_| Refused::Replayed)?;
                    next.status = ConnectionStatus::Active;
                    next.status_code = None;
                    next.status_detail = None;
                    next.status_at = Some(*now);
                    *now
                }
            };
            let consent = matches!(basis, WriteBasis::Consent { .. });
            let stored_rt = cur.refresh_token.as_ref().map(|s| s.expose_secret());
            if let Some(rt) = &write.refresh_token {
                if Some(rt.expose_secret()) != stored_rt {
                    next.refresh_token = Some(rt.clone());
                    rotated = true;
                }
                if rotated || consent {
                    next.refresh_token_issued_at = Some(now);
                }
            }
            next.access_token_expires_at = write.expires_at;
            next.last_refreshed_at = Some(now);
            // A sign-in names its account and tenant; a refresh only fills them in.
            if consent || next.account.is_none() {
                next.account = write.account.clone().or(next.account);
            }
            if consent || next.tenant_id.is_none() {
                next.tenant_id = write.tenant_id.clone().or(next.tenant_id);
            }
            next.realm = write.realm.clone().or(next.realm);
            next.redirect_uri = write.redirect_uri.clone().or(next.redirect_uri);
            if !write.resources.is_empty() {
                next.resources = write.resources.clone();
            }
            if !write.scopes.is_empty() {
                next.scopes = write.scopes.clone();
            }
            next.generation = cur.generation.saturating_add(1);
            saved = true;
            last = Some(next.clone());
            Ok(Some(next))
        })
        .await;
    match result {
        Ok(outcome) => {
            let stored = last.ok_or(WriteError::Gone)?;
            Ok(Written {
                stored,
                saved: saved && outcome.written,
                rotated: rotated && outcome.written,
            })
        }
        Err(UpdateError::Rejected {
            source: Refused::Replayed,
            ..
        }) => Err(WriteError::Replayed),
        Err(UpdateError::Rejected {
            source: Refused::Gone,
            ..
        }) => Err(WriteError::Gone),
        Err(UpdateError::Rejected {
            source: Refused::AccountMismatch,
            ..
        }) => Err(WriteError::AccountMismatch),
        Err(UpdateError::Secret(e)) => Err(WriteError::Store(e)),
    }
}

/// Runs `attempt` with the app's client secret; if Microsoft refuses it (`invalid_client`, a
/// rolled-over or expired secret) and the app has a `secondary_client_secret`, runs it once more
/// with that one. `attempt` gets the credential to use and whether this is the second try. The one
/// fallback rule for code redemption, add-in launch and [`Access`].
pub async fn with_secret_fallback<T, F, Fut>(
    id: &str,
    app: &AppCredential,
    mut attempt: F,
) -> Result<T, IdentityError>
where
    F: FnMut(AppCredential, bool) -> Fut,
    Fut: Future<Output = Result<T, IdentityError>>,
{
    let has_secondary = app.secondary_client_secret.is_some();
    fallback(id, has_secondary, |second| {
        let mut app = app.clone();
        if second {
            app.client_secret = app.secondary_client_secret.clone();
        }
        attempt(app, second)
    })
    .await
}

async fn fallback<T, F, Fut>(
    id: &str,
    has_secondary: bool,
    mut attempt: F,
) -> Result<T, IdentityError>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Result<T, IdentityError>>,
{
    match attempt(false).await {
        Err(e) if has_secondary && is_invalid_client(&e) => {
            tracing::warn!(
                connection = id,
                "client secret refused; trying the secondary"
            );
            attempt(true).await
        }
        r => r,
    }
}

/// The resource (AAD v1, ACS) or scope (Entra, MSA) a connection's tokens are requested for.
///
/// - SharePoint target: Entra app-only `{origin}/.default`; Entra delegated the stored scopes, else
///   `{origin}/AllSites.Write offline_access`; ACS the site URL; AAD v1 the stored resource for
///   that host, else `{origin}`.
/// - Drive target: Entra app-only `{graph}/.default`; Entra delegated the stored scopes, else
///   `{graph}/Files.ReadWrite.All offline_access`; AAD v1 `{graph}`; MSA the stored scopes, else
///   `onedrive.readwrite offline_access` (login.live.com ignores it on refresh).
pub fn resource_for(conn: &ConnectionSecret, endpoints: &Endpoints) -> Result<String, String> {
    let graph = endpoints.graph.as_str().trim_end_matches('/').to_owned();
    let stored_scopes = || {
        let mut s: Vec<&str> = conn.scopes.iter().map(String::as_str).collect();
        if !s.contains(&OFFLINE_ACCESS) {
            s.push(OFFLINE_ACCESS);
        }
        s.join(" ")
    };
    match (&conn.target, conn.provider, conn.auth) {
        (Target::Sharepoint { site_url, .. }, Provider::Entra, AuthKind::AppOnly) => {
            entra::sharepoint_default_scope(site_url).map_err(|e| e.to_string())
        }
        (Target::Sharepoint { .. }, Provider::Entra, AuthKind::Delegated)
            if !conn.scopes.is_empty() =>
        {
            Ok(stored_scopes())
        }
        (Target::Sharepoint { site_url, .. }, Provider::Entra, AuthKind::Delegated) => Ok(format!(
            "{}/AllSites.Write {OFFLINE_ACCESS}",
            origin(site_url)?
        )),
        (Target::Sharepoint { site_url, .. }, Provider::Acs, _) => Ok(site_url.to_string()),
        (Target::Sharepoint { site_url, .. }, Provider::AadV1, AuthKind::Delegated) => {
            let origin = origin(site_url)?;
            let known = conn.resources.iter().find(|r| {
                r.trim_end_matches('/')
                    .eq_ignore_ascii_case(origin.trim_end_matches('/'))
            });
            Ok(known.cloned().unwrap_or(origin))
        }
        (Target::Drive { .. }, Provider::Entra, AuthKind::AppOnly) => {
            Ok(entra::graph_default_scope(endpoints))
        }
        (Target::Drive { .. }, Provider::Entra, AuthKind::Delegated) if !conn.scopes.is_empty() => {
            Ok(stored_scopes())
        }
        (Target::Drive { .. }, Provider::Entra, AuthKind::Delegated) => {
            Ok(format!("{graph}/Files.ReadWrite.All {OFFLINE_ACCESS}"))
        }
        (Target::Drive { .. }, Provider::AadV1, AuthKind::Delegated) => Ok(graph),
        (Target::Drive { .. }, Provider::Msa, AuthKind::Delegated) => {
            Ok(if conn.scopes.is_empty() {
                MSA_DEFAULT_SCOPES.join(" ")
            } else {
                stored_scopes()
            })
        }
        (Target::Sharepoint { .. }, Provider::Msa, _) => {
            Err("a Microsoft-account connection can only target a drive (OneDrive)".into())
        }
        (Target::Drive { .. }, Provider::Acs, _) => {
            Err("an ACS connection can only target a SharePoint site".into())
        }
        (_, Provider::AadV1 | Provider::Msa, AuthKind::AppOnly) => Err(format!(
            "provider {} has no app-only flow; use entra or acs",
            conn.provider
        )),
    }
}

/// The plan with the app's secondary client secret (secret rollover), if it has one.
fn secondary_plan(
    id: &str,
    conn: &ConnectionSecret,
    app: &AppCredential,
    endpoints: &Endpoints,
) -> Option<Plan> {
    let secondary = app.secondary_client_secret.clone()?;
    let mut app = app.clone();
    app.client_secret = Some(secondary);
    plan(id, conn, &app, endpoints).ok()
}

/// Microsoft refused the client's credentials (a rolled-over or expired secret).
fn is_invalid_client(e: &IdentityError) -> bool {
    e.ms_error()
        .is_some_and(|m| crate::microsoft::credential_refused(&m.error, m.code.as_deref()))
}

/// `scheme://host[:port]` of a SharePoint URL.
fn origin(site: &Url) -> Result<String, String> {
    if site.host_str().is_none() {
        return Err(format!("site_url {site} has no host"));
    }
    Ok(site.origin().ascii_serialization())
}

fn plan(
    id: &str,
    conn: &ConnectionSecret,
    app: &AppCredential,
    endpoints: &Endpoints,
) -> Result<Plan, AccessError> {
    let bad = |reason: String| AccessError::misconfigured(id, reason);
    let resource_or_scope = resource_for(conn, endpoints).map_err(bad)?;
    let secret = |s: &Option<SecretString>| {
        s.as_ref()
            .map(|s| ClientSecret::new(s.expose_secret().to_owned()))
    };
    let realm = || -> Result<Option<acs::Realm>, AccessError> {
        conn.realm
            .as_deref()
            .or(app.realm.as_deref())
            .map(|r| acs::Realm::parse(r).map_err(|e| bad(format!("realm: {e}"))))
            .transpose()
    };
    let tenant = || conn.tenant_id.clone().or_else(|| app.tenant_id.clone());
    let source = match (conn.auth, conn.provider) {
        (AuthKind::AppOnly, Provider::Entra) => {
            let authority: entra::Authority = tenant()
                .ok_or_else(|| bad("app-only Entra needs tenant_id".into()))?
                .parse()
                .map_err(|e: IdentityError| bad(e.to_string()))?;
            match (&app.certificate_pem, &app.private_key_pem) {
                (Some(cert), Some(key)) => TokenSource::entra_certificate(
                    authority,
                    app.client_id.clone(),
                    cert.as_bytes(),
                    key.expose_secret().as_bytes(),
                )
                .map_err(|e| bad(e.to_string()))?,
                _ => {
                    if matches!(conn.target, Target::Sharepoint { .. }) {
                        return Err(bad("SharePoint REST refuses app-only tokens obtained with a client secret; add certificate_pem and private_key_pem".into()));
                    }
                    TokenSource::EntraSecret {
                        tenant: authority,
                        client_id: app.client_id.clone(),
                        secret: secret(&app.client_secret).ok_or_else(|| {
                            bad("app-only Entra needs a certificate or client_secret".into())
                        })?,
                    }
                }
            }
        }
        (AuthKind::AppOnly, Provider::Acs) => TokenSource::AcsAppOnly {
            realm: realm()?,
            client_id: app.client_id.clone(),
            secret: secret(&app.client_secret)
                .ok_or_else(|| bad("ACS app-only needs client_secret".into()))?,
        },
        (AuthKind::AppOnly, p) => return Err(bad(format!("provider {p} has no app-only flow"))),
        (AuthKind::Delegated, provider) => {
            let refresh_token = conn
                .refresh_token
                .as_ref()
                .map(|s| RefreshToken::new(s.expose_secret().to_owned()))
                .ok_or_else(|| bad("no refresh token stored; run /connect first".into()))?;
            let provider = match provider {
                Provider::Acs => RefreshProvider::Acs { realm: realm()? },
                Provider::AadV1 => RefreshProvider::AadV1 {
                    tenant: tenant().ok_or_else(|| bad("AAD v1 needs tenant_id".into()))?,
                },
                Provider::Entra => RefreshProvider::Entra {
                    authority: tenant()
                        .as_deref()
                        .unwrap_or("common")
                        .parse()
                        .map_err(|e: IdentityError| bad(e.to_string()))?,
                },
                Provider::Msa => RefreshProvider::Msa {
                    redirect_uri: conn.redirect_uri.clone().ok_or_else(|| {
                        bad("a Microsoft-account connection needs redirect_uri".into())
                    })?,
                },
            };
            TokenSource::RefreshToken {
                provider,
                client_id: app.client_id.clone(),
                client_secret: secret(&app.client_secret),
                refresh_token,
                connection: id.to_owned(),
            }
        }
    };
    Ok(Plan {
        source,
        resource_or_scope,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        config::{Cloud, SecretBackend},
        identity::testserver,
        secrets::{FileSecretStore, put_typed},
    };

    fn cfg(dir: &std::path::Path) -> SecretsConfig {
        SecretsConfig {
            backend: SecretBackend::File {
                dir: dir.to_owned(),
            },
            prefix: "t/".into(),
            app_secret: "t/app".into(),
            webhook_secret: "t/webhook".into(),
            state_key_secret: "t/state-key".into(),
            cache_ttl: Duration::ZERO,
            not_found_ttl: Duration::ZERO,
        }
    }

    fn entra_connection(rt: &str) -> serde_json::Value {
        json!({
            "provider": "entra", "auth": "delegated",
            "target": {"kind": "drive", "drive_id": "me"},
            "refresh_token": rt, "status": "active", "tenant_id": "t1",
            "scopes": ["Files.ReadWrite"], "generation": 1
        })
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn SecretStore>,
        cfg: SecretsConfig,
        server: testserver::TestServer,
    }

    impl Fixture {
        fn access(&self) -> Access {
            let mut eps = Endpoints::for_cloud(Cloud::Global);
            eps.login = self.server.url.clone();
            eps.live = self.server.url.clone();
            eps.acs = self.server.url.clone();
            Access::new(
                testserver::client(),
                eps,
                Arc::new(TokenCache::default()),
                self.store.clone(),
                self.cfg.clone(),
            )
        }

        async fn stored(&self, id: &str) -> ConnectionSecret {
            crate::secrets::schema::connection(self.store.as_ref(), &self.cfg, id)
                .await
                .unwrap()
                .value
        }
    }

    async fn fixture<F>(conn: serde_json::Value, handler: F) -> Fixture
    where
        F: Fn(usize, &testserver::Recorded) -> testserver::Reply + Send + Sync + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(FileSecretStore::open(dir.path()).unwrap());
        let cfg = cfg(dir.path());
        put_typed(
            store.as_ref(),
            "t/app",
            &json!({"client_id": "cid", "client_secret": "cs"}),
            None,
        )
        .await
        .unwrap();
        put_typed(store.as_ref(), "t/connections/c1", &conn, None)
            .await
            .unwrap();
        let server = testserver::start(Duration::ZERO, handler).await;
        Fixture {
            _dir: dir,
            store,
            cfg,
            server,
        }
    }

    fn rotating(n: usize, req: &testserver::Recorded) -> testserver::Reply {
        let rt = req.form_value("refresh_token").unwrap_or_default();
        let body = json!({"token_type": "Bearer", "expires_in": 3600, "access_token": format!("at-{n}"),
                          "refresh_token": format!("{rt}+")});
        (200, vec![], body.to_string())
    }

    #[tokio::test]
    async fn rotated_refresh_token_is_stored_once_and_cache_hits_write_nothing() {
        let f = fixture(entra_connection("rt"), rotating).await;
        let access = f.access();
        let b = access.bearer("c1", false).await.unwrap();
        assert_eq!(b.token.expose_secret(), "at-0");
        assert!(!format!("{b:?}").contains("at-0"));
        let stored = f.stored("c1").await;
        assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt+");
        assert_eq!(stored.generation, 2);
        assert!(stored.last_refreshed_at.is_some() && stored.refresh_token_issued_at.is_some());
        let req = &f.server.requests()[0];
        assert_eq!(req.path(), "/t1/oauth2/v2.0/token");
        assert_eq!(
            req.form_value("scope").as_deref(),
            Some("Files.ReadWrite offline_access")
        );

        // Cached: no request, no write.
        access.bearer("c1", false).await.unwrap();
        assert_eq!((f.server.hits(), f.stored("c1").await.generation), (1, 2));

        // A forced refresh redeems the newest token and stores the next.
        let out = access.refresh("c1").await.unwrap();
        assert!(out.rotated);
        assert_eq!(out.persisted, Persisted::Saved { generation: 3 });
        assert_eq!(
            f.server.requests()[1]
                .form_value("refresh_token")
                .as_deref(),
            Some("rt+")
        );
        assert_eq!(
            f.stored("c1").await.refresh_token.unwrap().expose_secret(),
            "rt++"
        );
    }

    #[tokio::test]
    async fn an_older_read_never_overwrites_a_newer_token() {
        let f = fixture(entra_connection("rt"), rotating).await;
        let access = f.access();
        let read = f.stored("c1").await;
        // Another writer stores generation 2 first.
        access.refresh("c1").await.unwrap();
        let token = Token::from_json(
            &json!({"access_token": "x", "refresh_token": "old-branch"}).to_string(),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let late = access.persist("c1", &read, &token).await.unwrap();
        assert_eq!(
            late.persisted,
            Persisted::AlreadyNewer {
                stored_generation: 2
            }
        );
        assert_eq!(
            f.stored("c1").await.refresh_token.unwrap().expose_secret(),
            "rt+"
        );
    }

    #[tokio::test]
    async fn invalid_grant_marks_needs_consent_and_keeps_the_token() {
        let f = fixture(entra_connection("rt"), |_, _| {
            let body = json!({"error": "invalid_grant", "error_description": "AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: x", "error_codes": [700082]});
            (400, vec![], body.to_string())
        })
        .await;
        let access = f.access();
        let e = access.refresh("c1").await.unwrap_err();
        assert!(
            matches!(&e, AccessError::NeedsConsent { code, ms: Some(_), .. } if code == "AADSTS700082"),
            "{e:?}"
        );
        assert_eq!(e.failure(), RefreshFailure::NeedsConsent);
        let api = ApiError::from(&e);
        assert_eq!(api.status(), http::StatusCode::FAILED_DEPENDENCY);
        assert_eq!(api.code(), "needs_consent");
        assert_eq!(api.to_json()["microsoft_code"], "AADSTS700082");
        let stored = f.stored("c1").await;
        assert_eq!(stored.status, ConnectionStatus::NeedsConsent);
        assert_eq!(stored.status_code.as_deref(), Some("AADSTS700082"));
        assert!(stored.status_at.is_some());
        assert!(stored.status_detail.unwrap().contains("inactivity"));
        assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt");
        // Already marked: answered from the store, without calling Microsoft.
        let again = access.bearer("c1", false).await.unwrap_err();
        assert!(matches!(again, AccessError::NeedsConsent { ms: None, .. }));
        assert_eq!(f.server.hits(), 1);
    }

    #[tokio::test]
    async fn server_errors_are_transient_and_bad_setups_misconfigured() {
        let f = fixture(entra_connection("rt"), |_, _| {
            (503, vec![("Retry-After", "0".into())], "{}".into())
        })
        .await;
        let e = f.access().refresh("c1").await.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
        assert_eq!(
            f.stored("c1").await.status,
            ConnectionStatus::Active,
            "a transient failure changes nothing"
        );

        let mut conn = entra_connection("rt");
        conn["provider"] = json!("msa");
        let f = fixture(conn, rotating).await;
        let e = f.access().bearer("c1", false).await.unwrap_err();
        assert!(
            matches!(&e, AccessError::Misconfigured { reason, .. } if reason.contains("redirect_uri")),
            "{e:?}"
        );
        let e = f.access().bearer("nope", false).await.unwrap_err();
        assert!(matches!(e, AccessError::NotFound { .. }));
        let api = ApiError::from(&e);
        assert_eq!(
            (api.status(), api.code()),
            (http::StatusCode::NOT_FOUND, "connection_not_found")
        );
    }

    /// A store that, right after the first read of `c1`, lets "another container" store a newer
    /// refresh token, as if it refreshed while this one was talking to Microsoft.
    struct ConcurrentWriter {
        inner: Arc<dyn SecretStore>,
        done: std::sync::atomic::AtomicBool,
    }

    impl SecretStore for ConcurrentWriter {
        fn get<'a>(
            &'a self,
            name: &'a str,
        ) -> futures_util::future::BoxFuture<
            'a,
            Result<crate::secrets::Versioned<serde_json::Value>, SecretError>,
        > {
            Box::pin(async move {
                let read = self.inner.get(name).await?;
                if name.ends_with("connections/c1")
                    && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    let mut newer = read.value.clone();
                    newer["refresh_token"] = json!("rt2");
                    newer["generation"] = json!(2);
                    self.inner.put(name, &newer, Some(&read.version)).await?;
                }
                Ok(read)
            })
        }
        fn put<'a>(
            &'a self,
            name: &'a str,
            value: &'a serde_json::Value,
            expected: Option<&'a crate::secrets::VersionId>,
        ) -> futures_util::future::BoxFuture<'a, Result<crate::secrets::VersionId, SecretError>>
        {
            self.inner.put(name, value, expected)
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
        ) -> futures_util::future::BoxFuture<'a, Result<Vec<String>, SecretError>> {
            self.inner.list(prefix)
        }
    }

    #[tokio::test]
    async fn a_token_refused_because_another_writer_rotated_it_is_not_needs_consent() {
        // Like a provider that revokes a refresh token once it is redeemed: only rt2 works.
        let mut f = fixture(entra_connection("rt"), |n, req| {
            if req.form_value("refresh_token").as_deref() == Some("rt2") {
                rotating(n, req)
            } else {
                let body = json!({"error": "invalid_grant", "error_description": "AADSTS70000: The refresh token was already used."});
                (400, vec![], body.to_string())
            }
        })
        .await;
        f.store = Arc::new(ConcurrentWriter {
            inner: f.store.clone(),
            done: Default::default(),
        });
        let out = f.access().refresh("c1").await.unwrap();
        assert_eq!(out.persisted, Persisted::Saved { generation: 3 });
        let stored = f.stored("c1").await;
        assert_eq!(stored.status, ConnectionStatus::Active);
        assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt2+");
        assert_eq!(f.server.hits(), 2);
    }

    #[tokio::test]
    async fn a_refused_client_secret_falls_back_to_the_secondary() {
        let f = fixture(entra_connection("rt"), |n, req| {
            if req.form_value("client_secret").as_deref() == Some("cs2") {
                rotating(n, req)
            } else {
                let body = json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."});
                (401, vec![], body.to_string())
            }
        })
        .await;
        put_typed(
            f.store.as_ref(),
            "t/app",
            &json!({"client_id": "cid", "client_secret": "cs", "secondary_client_secret": "cs2"}),
            Some(&f.store.get("t/app").await.unwrap().version),
        )
        .await
        .unwrap();
        let out = f.access().refresh("c1").await.unwrap();
        assert!(out.rotated);
        assert_eq!(f.server.hits(), 2);

        // Without a secondary the refusal is an operator's problem, not a consent problem.
        put_typed(
            f.store.as_ref(),
            "t/app",
            &json!({"client_id": "cid", "client_secret": "cs"}),
            Some(&f.store.get("t/app").await.unwrap().version),
        )
        .await
        .unwrap();
        let e = f.access().refresh("c1").await.unwrap_err();
        assert!(matches!(e, AccessError::Misconfigured { .. }), "{e:?}");
        assert_eq!(f.stored("c1").await.status, ConnectionStatus::Active);
    }

    #[test]
    fn resources_per_target_and_provider() {
        let eps = Endpoints::for_cloud(Cloud::Global);
        let conn =
            |v: serde_json::Value| -> ConnectionSecret { serde_json::from_value(v).unwrap() };
        let sp = json!({"kind": "sharepoint", "site_url": "https://contoso.sharepoint.com/sites/ops", "library": "Documents"});
        let drive = json!({"kind": "drive", "drive_id": "me"});
        let case = |provider: &str, auth: &str, target: &serde_json::Value| {
            resource_for(
                &conn(
                    json!({"provider": provider, "auth": auth, "target": target, "status": "active"}),
                ),
                &eps,
            )
        };
        assert_eq!(
            case("entra", "app_only", &sp).unwrap(),
            "https://contoso.sharepoint.com/.default"
        );
        assert_eq!(
            case("entra", "delegated", &sp).unwrap(),
            "https://contoso.sharepoint.com/AllSites.Write offline_access"
        );
        assert_eq!(
            case("acs", "delegated", &sp).unwrap(),
            "https://contoso.sharepoint.com/sites/ops"
        );
        assert_eq!(
            case("aad_v1", "delegated", &sp).unwrap(),
            "https://contoso.sharepoint.com"
        );
        assert_eq!(
            case("entra", "app_only", &drive).unwrap(),
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(
            case("msa", "delegated", &drive).unwrap(),
            "onedrive.readwrite offline_access"
        );
        assert_eq!(
            case("aad_v1", "delegated", &drive).unwrap(),
            "https://graph.microsoft.com"
        );
        assert!(case("acs", "delegated", &drive).is_err());
        assert!(case("msa", "delegated", &sp).is_err());
        assert!(case("aad_v1", "app_only", &sp).is_err());
    }

    /// The overwrite rule of [`write_tokens`]: a refresh based on an older generation is dropped;
    /// a sign-in lands on whatever is current and is recorded once.
    #[tokio::test]
    async fn write_tokens_never_replaces_a_newer_refresh_token() {
        let f = fixture(entra_connection("rt-gen1"), |_, _| {
            (500, vec![], "{}".to_owned())
        })
        .await;
        let now = OffsetDateTime::now_utc();
        let write = |rt: &str| TokenWrite {
            refresh_token: Some(SecretString::from(rt.to_owned())),
            expires_at: Some(now),
            account: None,
            object_id: None,
            tenant_id: None,
            realm: None,
            resources: vec![],
            scopes: vec![],
            redirect_uri: None,
        };
        let store = f.store.as_ref();
        // A refresh read at generation 1 lands and rotates.
        let w = write_tokens(store, &f.cfg, "c1", write("rt-a").refresh(1, now))
            .await
            .unwrap();
        assert!(w.saved && w.rotated);
        assert_eq!(w.stored.generation, 2);
        // A second refresh also read at generation 1 is older: dropped, the newer token stays.
        let w = write_tokens(store, &f.cfg, "c1", write("rt-b").refresh(1, now))
            .await
            .unwrap();
        assert!(!w.saved && !w.rotated);
        let stored = f.stored("c1").await;
        assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-a");
        assert_eq!(stored.generation, 2);

        // A sign-in lands whatever the generation, and only once per attempt.
        let key = ReplayKey {
            id: "attempt-1".into(),
            expires_at: now.unix_timestamp() + 600,
        };
        let w = write_tokens(
            store,
            &f.cfg,
            "c1",
            write("rt-consent").consent(key.clone(), now, false),
        )
        .await
        .unwrap();
        assert!(w.saved);
        assert_eq!(w.stored.generation, 3);
        assert_eq!(w.stored.status, ConnectionStatus::Active);
        let again = write_tokens(
            store,
            &f.cfg,
            "c1",
            write("rt-replay").consent(key, now, false),
        )
        .await;
        assert!(matches!(again, Err(WriteError::Replayed)), "{again:?}");
        let stored = f.stored("c1").await;
        assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-consent");
        assert_eq!(stored.generation, 3);

        // A deleted connection is not recreated.
        let gone = write_tokens(store, &f.cfg, "nope", write("x").refresh(0, now)).await;
        assert!(matches!(gone, Err(WriteError::Gone)), "{gone:?}");
    }

    /// A sign-in binds the connection to its account; another account is refused (nothing
    /// written) unless the attempt was started for re-binding.
    #[tokio::test]
    async fn sign_ins_bind_the_account_and_refuse_another() {
        let f = fixture(entra_connection("rt-0"), |_, _| {
            (500, vec![], "{}".to_owned())
        })
        .await;
        let now = OffsetDateTime::now_utc();
        let write = |rt: &str, oid: Option<&str>| TokenWrite {
            refresh_token: Some(SecretString::from(rt.to_owned())),
            expires_at: Some(now),
            account: Some(format!("{rt}@contoso.com")),
            object_id: oid.map(str::to_owned),
            tenant_id: Some("t1".into()),
            realm: None,
            resources: vec![],
            scopes: vec![],
            redirect_uri: None,
        };
        let key = |n: &str| ReplayKey {
            id: n.into(),
            expires_at: now.unix_timestamp() + 600,
        };
        let store = f.store.as_ref();
        let consent = |rt, oid, k, rebind| write(rt, oid).consent(key(k), now, rebind);
        let w = write_tokens(
            store,
            &f.cfg,
            "c1",
            consent("rt-alex", Some("alex"), "a1", false),
        )
        .await
        .unwrap();
        let bound = w.stored.bound_account.clone().unwrap();
        assert_eq!(bound.to_string(), "alex@t1");
        // The same account again (ids compared case-insensitively): fine.
        write_tokens(
            store,
            &f.cfg,
            "c1",
            consent("rt-alex2", Some("ALEX"), "a2", false),
        )
        .await
        .unwrap();
        let before = f.stored("c1").await;
        for (oid, k) in [(Some("mallory"), "m1"), (None, "m2")] {
            let refused =
                write_tokens(store, &f.cfg, "c1", consent("rt-mallory", oid, k, false)).await;
            assert!(
                matches!(refused, Err(WriteError::AccountMismatch)),
                "{refused:?}"
            );
        }
        let after = f.stored("c1").await;
        assert_eq!(after.generation, before.generation, "nothing written");
        assert_eq!(after.refresh_token.unwrap().expose_secret(), "rt-alex2");
        // A re-binding attempt may change it.
        let w = write_tokens(
            store,
            &f.cfg,
            "c1",
            consent("rt-megan", Some("megan"), "r1", true),
        )
        .await
        .unwrap();
        assert_eq!(w.stored.bound_account.unwrap().object_id, "megan");
    }
}
