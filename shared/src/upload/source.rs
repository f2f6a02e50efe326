//! Upload content as a stream, read one chunk at a time.
//!
//! A source is a stream of byte frames with an optional announced length. The clients never hold
//! more than one chunk (plus one network frame) of it in memory, so a `source_url` of any size
//! streams from its origin into the chunked upload.
//!
//! Unknown length: SharePoint's chunked protocol does not need the total, so any stream works.
//! Graph's upload session needs it in every `Content-Range`, so a Graph upload whose source has
//! no length and is larger than one chunk fails with [`UploadError::BadInput`] ("length
//! required") rather than spooling to disk: Lambda's `/tmp` is small and shared, and an origin
//! that cannot say how big a file is should be fixed at the origin.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use url::Url;

use super::UploadError;
use super::retry::{RetryPolicy, Safety, Sender};

/// Frames handed out by [`UploadSource::from_bytes`] and [`UploadSource::from_reader`].
const FRAME: usize = 256 * 1024;

/// Content to upload.
pub struct UploadSource {
    stream: BoxStream<'static, io::Result<Bytes>>,
    len: Option<u64>,
}

impl std::fmt::Debug for UploadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSource")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl UploadSource {
    /// Content already in memory (a webhook body).
    pub fn from_bytes(bytes: Bytes) -> Self {
        let len = bytes.len() as u64;
        let frames: Vec<io::Result<Bytes>> = (0..bytes.len())
            .step_by(FRAME)
            .map(|at| Ok(bytes.slice(at..(at + FRAME).min(bytes.len()))))
            .collect();
        UploadSource {
            stream: stream::iter(frames).boxed(),
            len: Some(len),
        }
    }

    /// Any stream of frames; `len` is the total if known (checked as the stream is read).
    pub fn from_stream(
        frames: impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static,
        len: Option<u64>,
    ) -> Self {
        UploadSource {
            stream: frames.boxed(),
            len,
        }
    }

    /// Any async reader; `len` is the total if known.
    pub fn from_reader(reader: impl AsyncRead + Send + Unpin + 'static, len: Option<u64>) -> Self {
        let frames = stream::unfold(Some(reader), |state| async move {
            let mut reader = state?;
            let mut buf = BytesMut::with_capacity(FRAME);
            match reader.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), Some(reader))),
                Err(e) => Some((Err(e), None)),
            }
        });
        Self::from_stream(frames, len)
    }

    /// Streams `url` (http or https) with `GET`. The request is retried within `policy` and
    /// `deadline` until its headers arrive; a failure after that fails the upload (which then
    /// cancels cleanly). The announced `Content-Length` becomes the length. Error messages name
    /// only the host: source URLs often carry signatures. The client's overall timeout covers
    /// the whole transfer, so give `http` one long enough for the largest file.
    pub async fn from_url(
        http: &reqwest::Client,
        url: &Url,
        policy: &RetryPolicy,
        deadline: Option<Instant>,
    ) -> Result<Self, UploadError> {
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(UploadError::BadInput(
                "source_url must be an http(s) URL with a host".into(),
            ));
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        let budget = crate::http::Budget::new(deadline);
        let sender = Sender {
            http,
            policy,
            budget: &budget,
            bearer: None,
        };
        let resp = sender
            .send(Safety::Idempotent, |c| c.get(url.clone()))
            .await
            .map_err(|e| match e {
                UploadError::Upstream { message, .. } => {
                    UploadError::Source(format!("fetching from {host}: {message}"))
                }
                other => other,
            })?;
        let status = resp.status();
        if status.is_client_error() {
            return Err(UploadError::BadInput(format!(
                "source_url on {host} answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(UploadError::Source(format!(
                "source_url on {host} answered {status}"
            )));
        }
        let len = resp.content_length();
        let frames = resp
            .bytes_stream()
            .map(|r| r.map_err(|e| io::Error::other(super::error::describe_transport(&e))));
        Ok(Self::from_stream(frames, len))
    }

    /// The announced total length, if any.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// Whether the source announced zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }
}

/// One piece of the content.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub bytes: Bytes,
    /// Offset of the first byte in the whole content.
    pub offset: u64,
    /// Whether this is the end of the content.
    pub last: bool,
}

/// Cuts a source into chunks, holding at most one chunk and one frame.
pub(crate) struct Chunker {
    source: UploadSource,
    buf: BytesMut,
    eof: bool,
    read: u64,
    handed_out: u64,
}

impl Chunker {
    pub fn new(source: UploadSource) -> Self {
        Chunker {
            source,
            buf: BytesMut::new(),
            eof: false,
            read: 0,
            handed_out: 0,
        }
    }

    pub fn len(&self) -> Option<u64> {
        self.source.len
    }

    /// Reads one more frame into the buffer, or notes the end.
    async fn pull(&mut self) -> Result<(), UploadError> {
        match self.source.stream.next().await {
            Some(Ok(frame)) => {
                self.read += frame.len() as u64;
                if let Some(len) = self.source.len
                    && self.read > len
                {
                    return Err(UploadError::Source(format!(
                        "the content is longer than the announced {len} bytes"
                    )));
                }
                self.buf.extend_from_slice(&frame);
                Ok(())
            }
            Some(Err(e)) => Err(UploadError::Source(e.to_string())),
            None => {
                self.eof = true;
                match self.source.len {
                    Some(len) if len != self.read => Err(UploadError::Source(format!(
                        "the content ended after {} of the announced {len} bytes",
                        self.read
                    ))),
                    _ => Ok(()),
                }
            }
        }
    }

    /// The next chunk of up to `size` bytes (shorter only at the end). After the last chunk it
    /// returns empty last chunks.
    pub async fn next(&mut self, size: usize) -> Result<Chunk, UploadError> {
        self.buf.reserve(size.saturating_sub(self.buf.len()));
        while self.buf.len() < size && !self.eof {
            self.pull().await?;
        }
        let take = size.min(self.buf.len());
        let bytes = self.buf.split_to(take).freeze();
        // The rest still shares the chunk's allocation; move it (at most a frame) out, or the
        // next chunk's buffer would be allocated while this one is still held: two chunks.
        self.buf = BytesMut::from(&self.buf[..]);
        // Look one frame ahead so the caller knows whether this chunk is the last.
        while self.buf.is_empty() && !self.eof {
            self.pull().await?;
        }
        let offset = self.handed_out;
        self.handed_out += bytes.len() as u64;
        Ok(Chunk {
            bytes,
            offset,
            last: self.eof && self.buf.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(sizes: &[usize]) -> (Vec<u8>, UploadSource) {
        let mut all = Vec::new();
        let mut parts = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let part: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            all.extend_from_slice(&part);
            parts.push(Ok(Bytes::from(part)));
        }
        let len = all.len() as u64;
        (
            all,
            UploadSource::from_stream(stream::iter(parts), Some(len)),
        )
    }

    #[tokio::test]
    async fn chunks_cover_the_content_in_order_and_flag_the_last() {
        let (all, src) = frames(&[7, 100, 3, 0, 45]);
        let mut c = Chunker::new(src);
        let mut got = Vec::new();
        loop {
            let ch = c.next(40).await.unwrap();
            assert_eq!(ch.offset, got.len() as u64);
            got.extend_from_slice(&ch.bytes);
            if ch.last {
                assert!(!ch.bytes.is_empty());
                break;
            }
            assert_eq!(ch.bytes.len(), 40);
        }
        assert_eq!(got, all);
    }

    #[tokio::test]
    async fn a_chunk_owns_its_memory_alone() {
        // Frames that straddle chunk boundaries leave a remainder behind each chunk; it must not
        // keep the chunk's allocation alive, or two chunks live at once.
        let (_, src) = frames(&[7; 30]);
        let mut c = Chunker::new(src);
        for _ in 0..4 {
            let ch = c.next(40).await.unwrap();
            assert_eq!(ch.bytes.len(), 40);
            assert!(
                ch.bytes.is_unique(),
                "the chunker still shares the chunk's buffer"
            );
        }
    }

    #[tokio::test]
    async fn exact_multiple_is_flagged_last_without_an_empty_chunk() {
        let (_, src) = frames(&[80]);
        let mut c = Chunker::new(src);
        assert!(!c.next(40).await.unwrap().last);
        let second = c.next(40).await.unwrap();
        assert!(second.last);
        assert_eq!(second.bytes.len(), 40);
    }

    #[tokio::test]
    async fn empty_content_is_one_empty_last_chunk() {
        let mut c = Chunker::new(UploadSource::from_bytes(Bytes::new()));
        let ch = c.next(10).await.unwrap();
        assert!(ch.last && ch.bytes.is_empty());
    }

    #[tokio::test]
    async fn short_or_long_content_against_its_announced_length_fails() {
        let short =
            UploadSource::from_stream(stream::iter([Ok(Bytes::from_static(b"abc"))]), Some(5));
        let err = Chunker::new(short).next(10).await.unwrap_err();
        assert!(
            err.to_string().contains("ended after 3 of the announced 5"),
            "{err}"
        );
        let long =
            UploadSource::from_stream(stream::iter([Ok(Bytes::from_static(b"abcdef"))]), Some(5));
        let err = Chunker::new(long).next(10).await.unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        let broken = UploadSource::from_stream(
            stream::iter([
                Ok(Bytes::from_static(b"ab")),
                Err(io::Error::other("reset")),
            ]),
            None,
        );
        let err = Chunker::new(broken).next(10).await.unwrap_err();
        assert_eq!(crate::api::ApiError::from(&err).status(), 502);
    }

    #[tokio::test]
    async fn readers_and_byte_buffers_round_trip() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        for src in [
            UploadSource::from_bytes(Bytes::from(data.clone())),
            UploadSource::from_reader(std::io::Cursor::new(data.clone()), None),
        ] {
            let mut c = Chunker::new(src);
            let mut got = Vec::new();
            loop {
                let ch = c.next(300_000).await.unwrap();
                got.extend_from_slice(&ch.bytes);
                if ch.last {
                    break;
                }
            }
            assert_eq!(got, data);
        }
    }

    #[tokio::test]
    async fn source_urls_must_be_http() {
        let http = reqwest::Client::new();
        let url = Url::parse("file:///etc/passwd").unwrap();
        let err = UploadSource::from_url(&http, &url, &RetryPolicy::default(), None)
            .await
            .unwrap_err();
        assert_eq!(crate::api::ApiError::from(&err).status(), 400);
    }
}
