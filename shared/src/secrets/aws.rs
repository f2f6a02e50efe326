//! AWS Secrets Manager adapter.
//!
//! Compare-and-swap on Secrets Manager (details and the argument in `docs/secrets.md`):
//! 1. `PutSecretValue` stages the new value under our own label [`STAGED`] only, so readers do
//!    not see it (not `AWSPENDING`: moto re-creates an `AWSPENDING` version on an identical
//!    retry and strips `AWSCURRENT` from it, and the label means "rotation in progress");
//!    its `ClientRequestToken` (the new version id) is derived from name, expected version and
//!    value, so a retried write names the same version instead of making a second one.
//! 2. `UpdateSecretVersionStage(AWSCURRENT, MoveToVersionId = new, RemoveFromVersionId =
//!    expected)` publishes it. Secrets Manager (and moto) refuse the move when `AWSCURRENT` is no
//!    longer on `expected`: that refusal is the conflict.
//! 3. When the move is refused, `DescribeSecret` tells a lost race (`Conflict`) from our own
//!    earlier attempt having already succeeded (success, same version).

use aws_sdk_secretsmanager::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    types::{Filter, FilterNameStringType},
};
use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{SecretError, SecretStore, VersionId, Versioned, request_token, validate_name};

const AWSCURRENT: &str = "AWSCURRENT";
/// The staging label a written-but-not-yet-published version carries. Like every label it sits
/// on at most one version; each write moves it to its own new version.
pub const STAGED: &str = "SPBRIDGE_STAGED";

/// Secrets Manager as a [`SecretStore`]. Reads always ask for `AWSCURRENT` explicitly.
#[derive(Debug, Clone)]
pub struct AwsSecretStore {
    client: Client,
}

impl AwsSecretStore {
    /// Loads the SDK configuration from the environment (region, credentials, and endpoint
    /// overrides such as `AWS_ENDPOINT_URL_SECRETS_MANAGER`) and builds the client.
    pub async fn from_env() -> Self {
        let sdk = aws_config::load_from_env().await;
        Self::new(&sdk)
    }

    /// Builds the client from an SDK configuration the caller assembled.
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self::from_client(Client::new(sdk))
    }

    /// Uses an existing client.
    pub fn from_client(client: Client) -> Self {
        AwsSecretStore { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    #[tracing::instrument(level = "debug", skip_all, fields(secret = name))]
    async fn get_impl(&self, name: &str) -> Result<Versioned<Value>, SecretError> {
        validate_name(name)?;
        let out = self
            .client
            .get_secret_value()
            .secret_id(name)
            // moto (and any stale default pointer) otherwise may answer with an older version.
            .version_stage(AWSCURRENT)
            .send()
            .await
            .map_err(|e| map_err(name, "read", e))?;
        let (Some(version), Some(text)) = (out.version_id(), out.secret_string()) else {
            return Err(SecretError::InvalidJson {
                name: name.to_owned(),
                reason:
                    "the current version has no SecretString (binary secrets are not supported)"
                        .to_owned(),
            });
        };
        let value = serde_json::from_str(text).map_err(|e| SecretError::invalid_json(name, &e))?;
        Ok(Versioned {
            version: VersionId::new(version),
            value,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(secret = name, expected = ?expected))]
    async fn put_impl(
        &self,
        name: &str,
        value: &Value,
        expected: Option<&VersionId>,
    ) -> Result<VersionId, SecretError> {
        validate_name(name)?;
        let body = serde_json::to_string(value).map_err(|e| SecretError::invalid_json(name, &e))?;
        let token = request_token(name, expected, body.as_bytes());
        let conflict = || SecretError::Conflict {
            name: name.to_owned(),
            expected: expected.cloned(),
        };

        let Some(expected) = expected else {
            return match self
                .client
                .create_secret()
                .name(name)
                .secret_string(&body)
                .client_request_token(token.as_str())
                .send()
                .await
            {
                Ok(_) => Ok(token),
                Err(e) if code_of(&e) == Some("ResourceExistsException") => {
                    // Either someone else created it, or this is our own create, retried.
                    if self.current_version(name).await? == token.as_str() {
                        Ok(token)
                    } else {
                        Err(conflict())
                    }
                }
                Err(e) => Err(map_err(name, "create", e)),
            };
        };

        self.client
            .put_secret_value()
            .secret_id(name)
            .secret_string(&body)
            .client_request_token(token.as_str())
            .version_stages(STAGED)
            .send()
            .await
            .map_err(|e| map_err(name, "stage", e))?;

        let moved = self
            .client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(AWSCURRENT)
            .move_to_version_id(token.as_str())
            .remove_from_version_id(expected.as_str())
            .send()
            .await;
        match moved {
            Ok(_) => Ok(token),
            Err(e)
                if matches!(
                    code_of(&e),
                    Some("InvalidParameterException" | "InvalidRequestException")
                ) =>
            {
                let current = self.current_version(name).await?;
                if current == token.as_str() {
                    // An earlier attempt of this same write already published it.
                    Ok(token)
                } else if current != expected.as_str() {
                    tracing::debug!(secret = name, "compare-and-swap lost: AWSCURRENT moved");
                    Err(conflict())
                } else {
                    Err(map_err(name, "publish", e))
                }
            }
            Err(e) => Err(map_err(name, "publish", e)),
        }
    }

    /// The version that holds `AWSCURRENT` right now, from `DescribeSecret`.
    async fn current_version(&self, name: &str) -> Result<String, SecretError> {
        let out = self
            .client
            .describe_secret()
            .secret_id(name)
            .send()
            .await
            .map_err(|e| map_err(name, "describe", e))?;
        out.version_ids_to_stages()
            .into_iter()
            .flatten()
            .find(|(_, stages)| stages.iter().any(|s| s == AWSCURRENT))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| SecretError::NotFound {
                name: name.to_owned(),
            })
    }

    async fn list_impl(&self, prefix: &str) -> Result<Vec<String>, SecretError> {
        let mut req = self.client.list_secrets().max_results(100);
        if !prefix.is_empty() {
            validate_name(prefix)?;
            req = req.filters(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(prefix)
                    .build(),
            );
        }
        let mut pages = req.into_paginator().send();
        let mut names = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(prefix, "list", e))?;
            names.extend(
                page.secret_list()
                    .iter()
                    .filter_map(|s| s.name())
                    // The service's name filter is a prefix match; keep it exact and case-sensitive.
                    .filter(|n| n.starts_with(prefix))
                    .map(str::to_owned),
            );
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

impl SecretStore for AwsSecretStore {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
        Box::pin(self.get_impl(name))
    }

    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<&'a VersionId>,
    ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
        Box::pin(self.put_impl(name, value, expected))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        Box::pin(self.list_impl(prefix))
    }
}

/// The Display text of an error and its sources. Not `DisplayErrorContext`: that appends the
/// error's `Debug`, which for a response error includes the raw body, i.e. possibly the secret.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn code_of<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

/// Maps an SDK error to the typed error. Service messages never contain secret values.
fn map_err<E, R>(name: &str, op: &'static str, e: SdkError<E, R>) -> SecretError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    let name = name.to_owned();
    let Some(service) = e.as_service_error() else {
        // Timeouts, connection failures, unparseable responses.
        return SecretError::Backend {
            name,
            op,
            code: None,
            message: error_chain(&e),
        };
    };
    let code = service.code().map(str::to_owned);
    let message = match service.message() {
        Some(m) => m.to_owned(),
        // An answer the SDK could not make sense of (no error code): say why it failed.
        None => error_chain(&e),
    };
    match code.as_deref() {
        Some("ResourceNotFoundException") => SecretError::NotFound { name },
        Some("AccessDeniedException" | "AccessDenied" | "UnrecognizedClientException") => {
            SecretError::AccessDenied { name, message }
        }
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded",
        ) => SecretError::Throttled {
            name,
            retry_after: None,
        },
        _ => SecretError::Backend {
            name,
            op,
            code,
            message,
        },
    }
}
