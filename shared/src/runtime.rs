//! What a warm Lambda container keeps between invocations of oauth-callback and token-refresh.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::{
    access::Access,
    config::{Config, LifecycleConfig},
    identity::TokenCache,
    secrets::{self, SecretError, SecretStore},
};

/// The current time; tests replace it.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// Configuration, the HTTP client, the token cache and the secret store, built once per cold start.
pub struct Warm {
    /// Function configuration.
    pub config: Config,
    /// Sign-in and refresh settings.
    pub lifecycle: LifecycleConfig,
    /// Now.
    pub clock: Clock,
    http: reqwest::Client,
    cache: Arc<TokenCache>,
    // Built on first use: the AWS SDK loads its configuration asynchronously.
    store: tokio::sync::OnceCell<Arc<dyn SecretStore>>,
}

impl Warm {
    /// Wires the configuration and HTTP client; the secret store is built from `config` on first
    /// use unless [`Warm::with_store`] gives one.
    pub fn new(config: Config, lifecycle: LifecycleConfig, http: reqwest::Client) -> Self {
        Warm {
            config,
            lifecycle,
            clock: Arc::new(OffsetDateTime::now_utc),
            http,
            cache: Arc::new(TokenCache::default()),
            store: tokio::sync::OnceCell::new(),
        }
    }

    /// Reads the environment: [`Config`], [`LifecycleConfig`] and the HTTP client. The error text
    /// names the bad variable.
    pub fn from_config(config: Config) -> Result<Self, String> {
        let lifecycle = LifecycleConfig::from_env().map_err(|e| e.to_string())?;
        let http = crate::http::build_client(&config.http).map_err(|e| e.to_string())?;
        Ok(Warm::new(config, lifecycle, http))
    }

    /// Uses this secret store (tests pass moto's).
    pub fn with_store(self, store: Arc<dyn SecretStore>) -> Self {
        let _ = self.store.set(store);
        self
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Token access for stored connections, over the shared cache and the secret store.
    pub async fn access(&self) -> Result<Access, SecretError> {
        let store = self
            .store
            .get_or_try_init(|| secrets::from_config(&self.config))
            .await?;
        Ok(Access::new(
            self.http.clone(),
            self.config.endpoints.clone(),
            self.cache.clone(),
            store.clone(),
            self.config.secrets.clone(),
        ))
    }
}
