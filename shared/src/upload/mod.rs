//! Moving bytes into SharePoint Online and OneDrive.
//!
//! Two targets, one shape: [`sharepoint::SharePointClient`] speaks SharePoint REST
//! (`AddUsingPath`, `StartUpload`/`ContinueUpload`/`FinishUpload`), [`graph::GraphClient`] speaks
//! Microsoft Graph (`…:/content`, `createUploadSession`). Both read an [`source::UploadSource`] one
//! chunk at a time, get their access token through a [`BearerSource`], retry through
//! [`retry::RetryPolicy`] and answer an [`UploadOutcome`] or an [`UploadError`].

#![warn(missing_docs)]

pub mod doctor;
pub mod error;
pub mod graph;
pub mod names;
pub mod resume;
pub mod retry;
pub mod sharepoint;
pub mod source;

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use tokio::time::Instant;

/// The byte buffer [`UploadSource::from_bytes`] takes, re-exported for callers.
pub use bytes::Bytes;
pub use error::{AuthDiagnostics, FieldError, MicrosoftError, UploadError};
pub use retry::RetryPolicy;
pub use source::UploadSource;

/// Tuning of an upload client ([`graph::GraphOptions`], [`sharepoint::SharePointOptions`]).
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Chunk size, and the size above which uploads are chunked (Graph rounds it down to a
    /// multiple of 320 KiB). Default 10 MiB (32 × 320 KiB).
    pub chunk_size: usize,
    /// Retries of each request.
    pub retry: RetryPolicy,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            chunk_size: 10 * 1024 * 1024,
            retry: RetryPolicy::default(),
        }
    }
}

/// Where uploads get their access token.
///
/// Uploads call `bearer(false)` before their first request; when a request answers 401 they call
/// `bearer(true)` once (the cached token may have been revoked or be for the wrong audience) and
/// retry that request once. The identity cache implements this; tests use [`StaticBearer`].
pub trait BearerSource: Send + Sync {
    /// An access token for the target resource; `force_refresh` asks for a fresh one.
    fn bearer(&self, force_refresh: bool) -> BoxFuture<'_, Result<SecretString, UploadError>>;
}

/// A fixed token: for tests, and for callers that already hold a token.
pub struct StaticBearer(SecretString);

impl StaticBearer {
    /// Wraps a token.
    pub fn new(token: SecretString) -> Self {
        StaticBearer(token)
    }
}

impl std::fmt::Debug for StaticBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticBearer([redacted])")
    }
}

impl BearerSource for StaticBearer {
    fn bearer(&self, _force_refresh: bool) -> BoxFuture<'_, Result<SecretString, UploadError>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

/// What to do when a file of the same name already exists, with Graph's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictBehavior {
    /// Refuse: the upload fails with [`UploadError::Conflict`].
    #[default]
    Fail,
    /// Overwrite the existing file (a new version where versioning is on).
    Replace,
    /// Keep both: the new file becomes `name 1.ext`, `name 2.ext`, … as Graph names them.
    Rename,
}

impl ConflictBehavior {
    /// Graph's spelling for `@microsoft.graph.conflictBehavior`.
    pub fn as_graph(self) -> &'static str {
        match self {
            ConflictBehavior::Fail => "fail",
            ConflictBehavior::Replace => "replace",
            ConflictBehavior::Rename => "rename",
        }
    }
}

impl std::str::FromStr for ConflictBehavior {
    type Err = UploadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fail" => Ok(ConflictBehavior::Fail),
            "replace" | "overwrite" => Ok(ConflictBehavior::Replace),
            "rename" => Ok(ConflictBehavior::Rename),
            other => Err(UploadError::BadInput(format!(
                "unknown conflict behavior {other:?}; expected fail, replace or rename"
            ))),
        }
    }
}

/// How the name conflict, if any, was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictOutcome {
    /// No file of that name existed.
    Created,
    /// An existing file was overwritten.
    Replaced,
    /// A file of that name existed, so the new file got another name.
    Renamed {
        /// The name that was asked for.
        from: String,
    },
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Where the file landed: server-relative for SharePoint (`/sites/x/Shared Documents/a.pdf`),
    /// drive-relative for Graph (`/folder/a.pdf`).
    pub path: String,
    /// The file's browser URL, when the service reports one or it can be derived.
    pub web_url: Option<String>,
    /// Size in bytes as the service reports it.
    pub size: u64,
    /// The service's id (SharePoint `UniqueId`, Graph driveItem `id`).
    pub id: String,
    /// The service's ETag, if any.
    pub etag: Option<String>,
    /// How a name conflict was resolved.
    pub conflict_outcome: ConflictOutcome,
    /// Requests that carried content: 1 for a simple upload, the chunk count otherwise.
    pub chunks: u32,
    /// Requests repeated because of throttling, faults or an expired token.
    pub retries: u32,
}

/// One field value to set on the uploaded file's list item (SharePoint only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValue {
    /// The field's internal name.
    pub name: String,
    /// The value in SharePoint's `ValidateUpdateListItem` text form.
    pub value: String,
}

/// What to upload where, for either client.
#[derive(Debug, Clone, Default)]
pub struct UploadRequest {
    /// Folder below the library or drive root (`a/b`); empty for the root. Created when missing.
    pub folder: String,
    /// The file name.
    pub file_name: String,
    /// What to do when the name exists.
    pub conflict: ConflictBehavior,
    /// List item fields to set after the upload (SharePoint REST only).
    pub fields: Vec<FieldValue>,
    /// When the caller needs an answer; waits that would pass it end the upload as
    /// [`UploadError::Throttled`]. Leave a margin for the answer itself.
    pub deadline: Option<Instant>,
}
