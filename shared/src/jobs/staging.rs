//! Staged bodies in S3: put by the receiver (or by a website through a presigned URL of a
//! direct upload session), streamed by the worker, deleted once the job ends. The bucket's
//! lifecycle rule removes whatever a failed cleanup or an abandoned session leaves.

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumMode, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret as _, SecretString};

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
    /// The object is no longer the version the job was made for (written again since).
    #[error("the staged body {0} was written again after its upload was completed")]
    Changed(String),
}

/// Why a direct upload step (presigning, multipart, reading what a client stored) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectError {
    /// This adapter cannot hand out upload URLs (only S3 can).
    #[error("direct uploads need the S3 staging bucket")]
    Unsupported,
    /// S3 refused what the client sent (a wrong part list, a part too small): their mistake.
    #[error("{0}")]
    Rejected(String),
    /// The object or multipart upload does not exist (not uploaded yet, completed, or expired).
    #[error("{0} does not exist")]
    Missing(String),
    /// S3 failed or throttled; retry later.
    #[error("staging bucket unavailable: {0}")]
    Unavailable(String),
}

/// A request anyone holding it may make without credentials until it expires: a presigned S3
/// URL and the headers that were signed with it. The URL is a capability, so `Debug` hides it
/// and it is never logged.
#[derive(Clone)]
pub struct Presigned {
    url: SecretString,
    /// Signed headers the client must send with these values (`Content-Length` is left out:
    /// clients set it themselves, and it must equal the size the URL was signed for).
    pub headers: Vec<(String, String)>,
}

impl Presigned {
    /// The URL, for the answer to the session's creator only.
    pub fn expose_url(&self) -> &str {
        self.url.expose_secret()
    }
}

impl fmt::Debug for Presigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Presigned([redacted])")
    }
}

impl From<PresignedRequest> for Presigned {
    fn from(p: PresignedRequest) -> Self {
        let headers = p
            .headers()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
            .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
            .collect();
        Presigned {
            url: SecretString::from(p.uri().to_owned()),
            headers,
        }
    }
}

/// What the bucket holds under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Its size in bytes.
    pub size: u64,
    /// The SHA-256 S3 verified on upload (base64), when the upload carried one.
    pub sha256_base64: Option<String>,
    /// Its `ETag`, which names this version of the bytes.
    pub etag: Option<String>,
}

/// One uploaded part of a multipart upload, as the client reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1-based part number.
    pub number: i32,
    /// The `ETag` S3 answered the part's PUT with.
    pub etag: String,
}

/// The staging port.
///
/// The direct-upload methods (presigning, multipart, `head`, `read`) have defaults that answer
/// [`DirectError::Unsupported`], so adapters for the worker's needs alone stay small.
pub trait Staging: Send + Sync {
    /// Stores `body` under `key`; `sha256` is its digest, which the store checks the bytes
    /// against (the receiver has it already, so nothing hashes the body again to send it).
    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        sha256: [u8; 32],
    ) -> BoxFuture<'a, Result<(), StagingError>>;

    /// Opens `key` as a stream from byte `from` (a ranged GET, so a resumed job does not read
    /// what it already stored); frames arrive as S3 sends them, nothing is buffered whole. With
    /// `etag`, only that version of the object is read.
    fn open<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        etag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<UploadSource, StagingError>>;

    /// Deletes `key` (absent keys are fine).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StagingError>>;

    /// A PUT of exactly `size` bytes to `key`, valid for `ttl`; with `sha256_base64`, S3
    /// refuses a body with another SHA-256.
    fn presign_put<'a>(
        &'a self,
        key: &'a str,
        size: u64,
        sha256_base64: Option<&'a str>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Presigned, DirectError>> {
        let _ = (key, size, sha256_base64, ttl);
        Box::pin(async { Err(DirectError::Unsupported) })
    }

    /// Starts a multipart upload to `key`; answers its upload id.
    fn start_multipart<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<String, DirectError>> {
        let _ = key;
        Box::pin(async { Err(DirectError::Unsupported) })
    }

    /// A PUT of part `number` (exactly `size` bytes) of upload `upload_id`, valid for `ttl`.
    fn presign_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: i32,
        size: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Presigned, DirectError>> {
        let _ = (key, upload_id, number, size, ttl);
        Box::pin(async { Err(DirectError::Unsupported) })
    }

    /// Joins the uploaded `parts` into the object `key`.
    fn complete_multipart<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [Part],
    ) -> BoxFuture<'a, Result<(), DirectError>> {
        let _ = (key, upload_id, parts);
        Box::pin(async { Err(DirectError::Unsupported) })
    }

    /// The object under `key`, or `None` if there is none.
    fn head<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredObject>, DirectError>> {
        let _ = key;
        Box::pin(async { Err(DirectError::Unsupported) })
    }

    /// A small object's bytes (a session's manifest), or `None` if there is none.
    fn read<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, DirectError>> {
        let _ = key;
        Box::pin(async { Err(DirectError::Unsupported) })
    }

    /// The SHA-256 (base64) of the object under `key`, read through once as it streams.
    fn sha256<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<String, DirectError>> {
        let _ = key;
        Box::pin(async { Err(DirectError::Unsupported) })
    }
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

fn direct_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: fmt::Debug>(
    e: &SdkError<E, R>,
    what: &str,
) -> DirectError {
    match e.as_service_error().and_then(|s| s.code()) {
        Some("NoSuchUpload" | "NoSuchKey" | "NotFound") => DirectError::Missing(what.to_owned()),
        Some(code @ ("InvalidPart" | "InvalidPartOrder" | "EntityTooSmall" | "InvalidRequest")) => {
            let message = e
                .as_service_error()
                .and_then(|s| s.message())
                .unwrap_or("the part list does not match the uploaded parts");
            DirectError::Rejected(format!("{code}: {message}"))
        }
        Some(code) => DirectError::Unavailable(code.to_owned()),
        // The SDK's text (connection refused, timeout, unreadable answer) goes to the log only.
        None => DirectError::Unavailable(format!(
            "S3 did not answer usably: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        )),
    }
}

fn presigning(ttl: Duration) -> Result<PresigningConfig, DirectError> {
    PresigningConfig::expires_in(ttl).map_err(|e| DirectError::Unavailable(e.to_string()))
}

impl Staging for S3Staging {
    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        sha256: [u8; 32],
    ) -> BoxFuture<'a, Result<(), StagingError>> {
        Box::pin(async move {
            use base64::Engine as _;
            // The signed `x-amz-checksum-sha256` binds the body to the request and S3 refuses
            // other bytes, so SigV4 need not hash the body again (`UNSIGNED-PAYLOAD`, over TLS),
            // and the SDK adds no CRC32 pass of its own when a checksum is given.
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha256))
                .body(ByteStream::from(body))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(&e))
        })
    }

    fn open<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        etag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<UploadSource, StagingError>> {
        Box::pin(async move {
            let (frames, len) = self.frames(key, from, etag).await?;
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

    fn presign_put<'a>(
        &'a self,
        key: &'a str,
        size: u64,
        sha256_base64: Option<&'a str>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Presigned, DirectError>> {
        Box::pin(async move {
            let length = i64::try_from(size)
                .map_err(|_| DirectError::Rejected("the size is too large".into()))?;
            // Content-Length is signed: S3 refuses a body of any other size.
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(length);
            if let Some(sum) = sha256_base64 {
                put = put.checksum_sha256(sum);
            }
            put.presigned(presigning(ttl)?)
                .await
                .map(Presigned::from)
                .map_err(|e| direct_error(&e, key))
        })
    }

    fn start_multipart<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<String, DirectError>> {
        Box::pin(async move {
            let out = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| direct_error(&e, key))?;
            out.upload_id
                .ok_or_else(|| DirectError::Unavailable("S3 answered no upload id".into()))
        })
    }

    fn presign_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: i32,
        size: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Presigned, DirectError>> {
        Box::pin(async move {
            let length = i64::try_from(size)
                .map_err(|_| DirectError::Rejected("the part is too large".into()))?;
            self.client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(length)
                .presigned(presigning(ttl)?)
                .await
                .map(Presigned::from)
                .map_err(|e| direct_error(&e, key))
        })
    }

    fn complete_multipart<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [Part],
    ) -> BoxFuture<'a, Result<(), DirectError>> {
        Box::pin(async move {
            let parts = parts
                .iter()
                .map(|p| {
                    CompletedPart::builder()
                        .part_number(p.number)
                        .e_tag(&p.etag)
                        .build()
                })
                .collect();
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| direct_error(&e, "the multipart upload"))
        })
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredObject>, DirectError>> {
        Box::pin(async move {
            let out = match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                    return Ok(None);
                }
                Err(e) => return Err(direct_error(&e, key)),
            };
            let size = out
                .content_length
                .and_then(|l| u64::try_from(l).ok())
                .ok_or_else(|| DirectError::Unavailable("S3 answered no size".into()))?;
            Ok(Some(StoredObject {
                size,
                sha256_base64: out.checksum_sha256,
                etag: out.e_tag,
            }))
        })
    }

    fn read<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, DirectError>> {
        Box::pin(async move {
            let mut frames = match self.frames(key, 0, None).await {
                Ok((frames, _)) => frames,
                Err(StagingError::Missing(_)) => return Ok(None),
                Err(e) => return Err(read_error(e)),
            };
            let mut body = bytes::BytesMut::new();
            while let Some(frame) = frames.next().await {
                body.extend_from_slice(&frame.map_err(|e| read_failed(key, &e))?);
            }
            Ok(Some(body.freeze()))
        })
    }

    fn sha256<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<String, DirectError>> {
        Box::pin(async move {
            use base64::Engine as _;
            use sha2::Digest as _;
            let (mut frames, _) = self.frames(key, 0, None).await.map_err(read_error)?;
            let mut hash = sha2::Sha256::new();
            while let Some(frame) = frames.next().await {
                hash.update(frame.map_err(|e| read_failed(key, &e))?);
            }
            Ok(base64::engine::general_purpose::STANDARD.encode(hash.finalize()))
        })
    }
}

impl S3Staging {
    /// The one `GetObject` behind [`Staging::open`], `read` and `sha256`: from byte `from`
    /// (ranged), of version `etag` only (`If-Match`), as frames and the length S3 announced.
    async fn frames(
        &self,
        key: &str,
        from: u64,
        etag: Option<&str>,
    ) -> Result<(Frames, Option<u64>), StagingError> {
        let mut get = self.client.get_object().bucket(&self.bucket).key(key);
        if from > 0 {
            get = get.range(format!("bytes={from}-"));
        }
        if let Some(etag) = etag {
            get = get.if_match(etag);
        }
        let out = match get.send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(StagingError::Missing(key.to_owned()));
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                return Err(StagingError::Changed(key.to_owned()));
            }
            Err(e) => return Err(unavailable(&e)),
        };
        // S3 honours Range; a store that did not would hand the bytes from 0 as if from `from`.
        if from > 0 {
            let start = out
                .content_range()
                .and_then(crate::upload::source::parse_content_range)
                .map(|(start, _)| start);
            if start != Some(from) {
                return Err(StagingError::Unavailable(format!(
                    "the ranged read of {key} from byte {from} did not start there"
                )));
            }
        }
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
        Ok((Box::pin(frames), len))
    }
}

/// A staged object's bytes as S3 sends them.
type Frames = futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// A failed read of a whole object, for the direct-upload steps.
fn read_error(e: StagingError) -> DirectError {
    match e {
        StagingError::Missing(key) => DirectError::Missing(key),
        StagingError::Unavailable(why) => DirectError::Unavailable(why),
        // Only a read with an `ETag` can meet another version.
        StagingError::Changed(key) => DirectError::Unavailable(format!("{key} changed while read")),
    }
}

fn read_failed(key: &str, e: &std::io::Error) -> DirectError {
    DirectError::Unavailable(format!("reading {key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline() -> S3Staging {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            ))
            .build();
        S3Staging::new(Client::from_conf(conf), "staging-bucket")
    }

    #[tokio::test]
    async fn presigned_puts_bind_size_and_checksum_and_hide_their_url() {
        let s = offline();
        let sum = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=";
        let p = s
            .presign_put("abc/0", 1234, Some(sum), Duration::from_secs(900))
            .await
            .unwrap();
        let url = p.expose_url();
        assert!(url.starts_with("https://staging-bucket.s3.eu-west-1.amazonaws.com/abc/0?"));
        assert!(url.contains("X-Amz-Expires=900"), "{url}");
        // Content-Length and the checksum are signed: S3 refuses another size or body.
        assert!(
            url.contains("X-Amz-SignedHeaders=content-length%3Bhost%3Bx-amz-checksum-sha256"),
            "{url}"
        );
        assert_eq!(
            p.headers,
            vec![("x-amz-checksum-sha256".to_owned(), sum.to_owned())]
        );
        assert_eq!(format!("{p:?}"), "Presigned([redacted])");
        let part = s
            .presign_part("abc/0", "up-1", 3, 5 << 20, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(part.expose_url().contains("partNumber=3"));
        assert!(part.expose_url().contains("uploadId=up-1"));
        assert!(part.headers.is_empty(), "{:?}", part.headers);
    }
}
