//! Staged bodies in S3: put by the receiver, streamed by the worker, deleted once the job ends.
//! The bucket's lifecycle rule removes whatever a failed cleanup leaves.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::upload::UploadSource;

/// Why staging failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StagingError {
    /// The object is gone (expired by the lifecycle rule, or deleted).
    #[error("the staged body {0} no longer exists")]
    Missing(String),
    /// S3 failed or throttled; retry later.
    #[error("staging bucket unavailable: {0}")]
    Unavailable(String),
}

/// The staging port.
pub trait Staging: Send + Sync {
    /// Stores `body` under `key`.
    fn put<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), StagingError>>;

    /// Opens `key` as a stream; frames arrive as S3 sends them, nothing is buffered whole.
    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<UploadSource, StagingError>>;

    /// Deletes `key` (absent keys are fine).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StagingError>>;
}

/// The S3 adapter.
#[derive(Debug, Clone)]
pub struct S3Staging {
    client: Client,
    bucket: String,
}

impl S3Staging {
    /// Objects in `bucket`.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3Staging {
            client,
            bucket: bucket.into(),
        }
    }
}

fn unavailable<E: ProvideErrorMetadata + std::error::Error, R>(e: &SdkError<E, R>) -> StagingError {
    StagingError::Unavailable(match e.as_service_error() {
        Some(s) => s.code().unwrap_or("error").to_owned(),
        None => "could not reach S3".to_owned(),
    })
}

impl Staging for S3Staging {
    fn put<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), StagingError>> {
        Box::pin(async move {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(&e))
        })
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<UploadSource, StagingError>> {
        Box::pin(async move {
            let out = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    return Err(StagingError::Missing(key.to_owned()));
                }
                Err(e) => return Err(unavailable(&e)),
            };
            let len = out.content_length().and_then(|l| u64::try_from(l).ok());
            let frames = futures_util::stream::unfold(out.body, |mut body| async move {
                match body.next().await {
                    Some(Ok(b)) => Some((Ok(b), body)),
                    Some(Err(e)) => Some((
                        Err(std::io::Error::other(format!("staged body: {e}"))),
                        body,
                    )),
                    None => None,
                }
            });
            Ok(UploadSource::from_stream(frames, len))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StagingError>> {
        Box::pin(async move {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(&e))
        })
    }
}
