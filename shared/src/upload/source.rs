//! Upload content as a stream, read one chunk at a time.
//!
//! A source is a stream of byte frames with an optional announced length. The clients never hold
//! more than one chunk of it plus a 2 MiB read-ahead, in pooled 256 KiB frames, so a
//! `source_url` of any size streams from its origin into the chunked upload. A chunk's request
//! starts as soon as the chunk's extent is known and sends its frames as they are read; they stay
//! until the chunk's answer, so a failed request is sent again from memory.
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
        Ok(Self::from_url_at(http, url, 0, policy, deadline)
            .await?
            .source)
    }

    /// [`UploadSource::from_url`] from byte `offset` on, with `Range: bytes={offset}-`. An
    /// origin that answers `206` resumes there; one that ignores the range (`200`) sends the
    /// whole file, and [`Opened::start`] is then 0: the caller must start the file again.
    pub async fn from_url_at(
        http: &reqwest::Client,
        url: &Url,
        offset: u64,
        policy: &RetryPolicy,
        deadline: Option<Instant>,
    ) -> Result<Opened, UploadError> {
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
        let range = format!("bytes={offset}-");
        let resp = sender
            .send(Safety::Idempotent, |c| {
                let rb = c.get(url.clone());
                if offset > 0 {
                    rb.header(reqwest::header::RANGE, range.as_str())
                } else {
                    rb
                }
            })
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
        let (start, total) = if offset > 0 && status.as_u16() == 206 {
            let (from, total) = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range)
                .ok_or_else(|| {
                    UploadError::Source(format!(
                        "source_url on {host} answered 206 without a usable Content-Range"
                    ))
                })?;
            if from != offset {
                return Err(UploadError::Source(format!(
                    "source_url on {host} answered bytes from {from}, not {offset}"
                )));
            }
            (offset, total.or(len.map(|l| l + offset)))
        } else {
            (0, len)
        };
        let frames = resp
            .bytes_stream()
            .map(|r| r.map_err(|e| io::Error::other(super::error::describe_transport(&e))));
        Ok(Opened {
            source: Self::from_stream(frames, len),
            start,
            total,
        })
    }

    /// The same source, failing with an error naming `max` once more than `max` bytes have
    /// come (for bodies whose length was not announced).
    pub fn capped(self, max: u64) -> Self {
        let mut seen = 0u64;
        let stream = self.stream.map(move |r| {
            let frame = r?;
            seen += frame.len() as u64;
            if seen > max {
                return Err(io::Error::other(format!(
                    "the file at source_url is larger than the limit of {max} bytes"
                )));
            }
            Ok(frame)
        });
        UploadSource {
            stream: Box::pin(stream),
            ..self
        }
    }

    /// The announced total length, if any.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// Whether the source announced zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// Reads at most `max` bytes into memory, for small bodies (and checks of what a source
    /// yields); uploads stream instead.
    pub async fn read_to_end(mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(frame) = self.stream.next().await {
            let frame = frame?;
            if out.len() + frame.len() > max {
                return Err(io::Error::other(format!("more than {max} bytes")));
            }
            out.extend_from_slice(&frame);
        }
        Ok(out)
    }
}

/// A source opened part-way ([`UploadSource::from_url_at`]).
#[derive(Debug)]
pub struct Opened {
    /// The bytes from `start` on.
    pub source: UploadSource,
    /// The file offset of the source's first byte: the offset asked for, or 0 when the origin
    /// ignored the range.
    pub start: u64,
    /// The whole file's length, when the origin said.
    pub total: Option<u64>,
}

/// `bytes 100-199/1000` (or `…/*`): the first byte and the total, if given.
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let from = range.split_once('-')?.0.trim().parse().ok()?;
    Some((from, total.trim().parse().ok()))
}

/// Bytes a reader may hold beyond the chunk being uploaded: how far it reads into the next
/// chunk before that chunk's upload starts.
const AHEAD: usize = 2 * 1024 * 1024;

/// Frame buffers given back after their chunk's upload, kept for the process's next chunks,
/// across uploads and invocations: a warm worker allocates its frames once. Freed and
/// allocated again instead, blocks land in whichever thread's malloc arena the reader task
/// runs on, freed ones stay resident there, and RSS creeps up with the chunks and invocations.
static POOL: std::sync::Mutex<Vec<BytesMut>> = std::sync::Mutex::new(Vec::new());

/// Frames [`POOL`] keeps: the most one upload may hold at once (a chunk and the read-ahead).
static POOLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Keeps `b` for a later chunk, if it is a whole frame buffer and the pool has room.
fn give_back(mut b: BytesMut) {
    if b.capacity() < FRAME {
        return;
    }
    b.clear();
    let room = POOLED.load(std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut p) = POOL.lock()
        && p.len() < room
    {
        p.push(b);
    }
}

/// An empty frame buffer: a pooled one, or a new one of exactly [`FRAME`] bytes (never grown:
/// a source frame is copied only as far as the buffer has room).
fn frame_buffer() -> BytesMut {
    if let Ok(mut p) = POOL.lock()
        && let Some(b) = p.pop()
    {
        return b;
    }
    BytesMut::with_capacity(FRAME)
}

/// The frames of one chunk as the reader fills them, shared by every attempt to send it.
#[derive(Default)]
struct Frames {
    filled: std::sync::Mutex<Filled>,
    /// Woken on every new frame, the end, a failure and the release.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct Filled {
    frames: Vec<Bytes>,
    /// What the frames count against the upload's memory budget; freed with them.
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// Every frame of the chunk is in.
    done: bool,
    /// The reader failed (the source's error); the chunk will not complete.
    failed: Option<String>,
    /// The chunk's upload finished and its frames went back to the pool.
    released: bool,
}

impl Frames {
    fn update(&self, f: impl FnOnce(&mut Filled)) {
        if let Ok(mut st) = self.filled.lock() {
            f(&mut st);
        }
        self.changed.notify_waiters();
    }

    fn push(&self, frame: Bytes, permit: tokio::sync::OwnedSemaphorePermit) {
        self.update(|st| {
            st.frames.push(frame);
            st.permits.push(permit);
        });
    }

    /// Gives the frames back (those no request still holds) and frees their budget.
    fn release(&self) {
        let (frames, permits) = match self.filled.lock() {
            Ok(mut st) => {
                st.released = true;
                (
                    std::mem::take(&mut st.frames),
                    std::mem::take(&mut st.permits),
                )
            }
            Err(_) => return,
        };
        self.changed.notify_waiters();
        for f in frames {
            if let Ok(b) = f.try_into_mut() {
                give_back(b);
            }
        }
        drop(permits);
    }

    /// Waits for frame `i`: `Ok(Some)` once read, `Ok(None)` past the chunk's end, or the
    /// reader's error.
    async fn frame(&self, i: usize) -> Result<Option<Bytes>, String> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a frame pushed in between still wakes us.
            changed.as_mut().enable();
            {
                let st = self.filled.lock().map_err(|_| "the chunk reader broke")?;
                if let Some(f) = st.frames.get(i) {
                    return Ok(Some(f.clone()));
                }
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
                if st.released {
                    return Err("the chunk was already released".into());
                }
                if st.done {
                    return Ok(None);
                }
            }
            changed.await;
        }
    }

    /// Waits for the reader's failure; pending forever while the chunk reads fine.
    async fn failure(&self) -> UploadError {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let settled = match self.filled.lock() {
                Ok(st) => match &st.failed {
                    Some(e) => return UploadError::Source(e.clone()),
                    None => st.done || st.released,
                },
                Err(_) => true,
            };
            if settled {
                return std::future::pending().await;
            }
            changed.await;
        }
    }
}

/// One piece of the content. Handed out as soon as its extent is known (at once when the
/// source announced its length), its bytes stream in as the reader gets them; they stay in
/// memory until the chunk is dropped, so a failed request can send them again.
pub(crate) struct Chunk {
    /// Offset of the first byte in the whole content.
    pub offset: u64,
    /// The chunk's length.
    pub len: u64,
    /// Whether this is the end of the content.
    pub last: bool,
    frames: std::sync::Arc<Frames>,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Chunk {
    /// Offset just past the chunk.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// The chunk's bytes from file offset `pos` on, as a request body that streams frames as
    /// the reader delivers them. Set `Content-Length` to `end() - pos` beside it.
    pub fn body_from(&self, pos: u64) -> reqwest::Body {
        reqwest::Body::wrap_stream(self.frames_from(pos))
    }

    /// The frames behind [`Chunk::body_from`].
    fn frames_from(
        &self,
        pos: u64,
    ) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + use<> {
        let skip = pos.saturating_sub(self.offset) as usize;
        let state = (self.frames.clone(), 0usize, skip, false);
        stream::unfold(state, |(frames, i, skip, failed)| async move {
            if failed {
                return None;
            }
            let mut skip = skip;
            let mut i = i;
            loop {
                match frames.frame(i).await {
                    Ok(Some(f)) if f.len() <= skip => {
                        skip -= f.len();
                        i += 1;
                    }
                    Ok(Some(f)) => {
                        let part = f.slice(skip..);
                        return Some((Ok::<_, io::Error>(part), (frames, i + 1, 0, false)));
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((Err(io::Error::other(e)), (frames, i, 0, true))),
                }
            }
        })
    }

    /// Runs `send` (a request carrying this chunk) unless the reader fails first: then the
    /// source's error, at once, rather than retries of a body that cannot complete.
    pub async fn guard<T>(
        &self,
        send: impl Future<Output = T>,
        source_failed: impl FnOnce(UploadError) -> T,
    ) -> T {
        tokio::select! {
            t = send => t,
            e = self.frames.failure() => source_failed(e),
        }
    }

    /// The whole chunk in one buffer, for the single-request paths (a file of one chunk).
    pub async fn into_bytes(self) -> Result<Bytes, UploadError> {
        let mut parts = Vec::new();
        loop {
            match self.frames.frame(parts.len()).await {
                Ok(Some(f)) => parts.push(f),
                Ok(None) => break,
                Err(e) => return Err(UploadError::Source(e)),
            }
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let mut all = BytesMut::with_capacity(self.len as usize);
        for p in parts {
            all.extend_from_slice(&p);
        }
        Ok(all.freeze())
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.frames.release();
    }
}

/// Cuts a source into frames and chunks.
pub(crate) struct Chunker {
    source: UploadSource,
    /// The part of the last source frame not yet in a chunk frame.
    pending: Bytes,
    eof: bool,
    read: u64,
    base: u64,
}

impl Chunker {
    #[cfg(test)]
    pub fn new(source: UploadSource) -> Self {
        Self::starting_at(source, 0)
    }

    /// A source whose first byte is byte `base` of the file (a resumed upload).
    pub fn starting_at(source: UploadSource, base: u64) -> Self {
        Chunker {
            source,
            pending: Bytes::new(),
            eof: false,
            read: 0,
            base,
        }
    }

    /// The whole file's length: the source's announced length plus the bytes before it.
    pub fn total(&self) -> Option<u64> {
        Some(self.source.len? + self.base)
    }

    /// Reads one more frame into `pending` (which is empty), or notes the end.
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
                self.pending = frame;
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

    /// Fills `buf` with up to `want` more bytes; fewer only at the end of the content.
    async fn fill(&mut self, buf: &mut BytesMut, want: usize) -> Result<(), UploadError> {
        let stop = buf.len() + want;
        while buf.len() < stop {
            if self.pending.is_empty() {
                if self.eof {
                    break;
                }
                self.pull().await?;
                continue;
            }
            let n = (stop - buf.len()).min(self.pending.len());
            buf.extend_from_slice(&self.pending.split_to(n));
        }
        Ok(())
    }

    /// Whether the content has ended (reads one frame ahead to know).
    async fn at_end(&mut self) -> Result<bool, UploadError> {
        while self.pending.is_empty() && !self.eof {
            self.pull().await?;
        }
        Ok(self.eof && self.pending.is_empty())
    }
}

/// Reads the content while the caller uploads it. A task cuts it into [`FRAME`]-sized frames
/// and chunks of `size` bytes, each handed out as soon as its extent is known and filled as
/// the caller streams it. The frames held (the chunk uploading, kept for resends, and what
/// was read of the next) never exceed one chunk plus [`AHEAD`]: the reader waits until the
/// caller drops a finished chunk.
pub(crate) struct Prefetch {
    rx: tokio::sync::mpsc::Receiver<Result<Chunk, UploadError>>,
    task: tokio::task::JoinHandle<()>,
    total: Option<u64>,
}

impl Prefetch {
    pub fn spawn(mut chunker: Chunker, size: usize) -> Self {
        let total = chunker.total();
        let frames_per_chunk = size.div_ceil(FRAME);
        let budget = frames_per_chunk + AHEAD / FRAME;
        POOLED.fetch_max(budget, std::sync::atomic::Ordering::Relaxed);
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(budget));
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            let mut offset = chunker.base;
            loop {
                let frames = std::sync::Arc::new(Frames::default());
                // With a known total the chunk goes out before its first byte is read.
                let known = total.map(|t| {
                    let len = (t.saturating_sub(offset)).min(size as u64);
                    (len, offset + len >= t)
                });
                if let Some((len, last)) = known {
                    let chunk = Chunk {
                        offset,
                        len,
                        last,
                        frames: frames.clone(),
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                let read = fill_chunk(&mut chunker, &frames, &permits, size).await;
                let read = match read {
                    Ok(n) => n,
                    Err(e) => {
                        frames.update(|st| st.failed = Some(e.to_string()));
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let last = match chunker.at_end().await {
                    Ok(end) => end,
                    Err(e) => {
                        frames.update(|st| st.failed = Some(e.to_string()));
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                frames.update(|st| st.done = true);
                if known.is_none() {
                    let chunk = Chunk {
                        offset,
                        len: read,
                        last,
                        frames,
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                offset += read;
                if last {
                    return;
                }
            }
        });
        Prefetch { rx, task, total }
    }

    /// Drops an uploaded chunk, giving its frames back for later chunks.
    pub fn recycle(&self, chunk: Chunk) {
        drop(chunk);
    }

    /// The whole file's length, when the source announced its own.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    pub async fn next(&mut self) -> Result<Chunk, UploadError> {
        self.rx
            .recv()
            .await
            .unwrap_or_else(|| Err(UploadError::Source("the content reader stopped".into())))
    }
}

/// Reads one chunk of up to `size` bytes into `frames`, each frame within the budget `permits`.
async fn fill_chunk(
    chunker: &mut Chunker,
    frames: &Frames,
    permits: &std::sync::Arc<tokio::sync::Semaphore>,
    size: usize,
) -> Result<u64, UploadError> {
    let mut read = 0usize;
    while read < size {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let want = FRAME.min(size - read);
        let mut buf = frame_buffer();
        chunker.fill(&mut buf, want).await?;
        let got = buf.len();
        if got == 0 {
            give_back(buf);
            break;
        }
        read += got;
        frames.push(buf.freeze(), permit);
        if got < want {
            break; // the end of the content
        }
    }
    Ok(read as u64)
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Chunks read ahead but never uploaded (a pause) give their frames back as they drop.
        self.task.abort();
        while self.rx.try_recv().is_ok() {}
    }
}

// ---- where a source_url may point (SSRF guard) ----

/// What a connection allows a `source_url` to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceUrlPolicy {
    /// Plain `http` (port 80) as well as `https`: the connection's `allow_http_source`.
    pub allow_http: bool,
    /// Test switch (`SPBRIDGE_SOURCE_URL_ALLOW_LOOPBACK`): loopback hosts are reachable, on any
    /// port and over `http`, so tests can serve files from a random local port. Never set in a
    /// deployment.
    pub allow_loopback: bool,
}

/// Checks a `source_url` before anything is fetched: `https` (or `http` when allowed), port
/// 443 or 80, no credentials, a host, and, when the host is an IP literal, an address
/// [`source_ip_allowed`] accepts. Names are checked again once resolved (the resolver must
/// drop forbidden addresses with [`source_ip_allowed`]). The reason names no address.
pub fn check_source_url(url: &Url, policy: SourceUrlPolicy) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err("only https URLs are allowed".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err("the URL has no host".into()),
    };
    let localhost = url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost")
    });
    let loopback = localhost || ip.is_some_and(|ip| ip.is_loopback());
    if loopback {
        return if policy.allow_loopback {
            Ok(())
        } else {
            Err("loopback addresses are not allowed".into())
        };
    }
    if url.scheme() == "http" && !policy.allow_http {
        return Err("only https URLs are allowed for this connection".into());
    }
    if !matches!(url.port_or_known_default(), Some(443 | 80)) {
        return Err("only ports 443 and 80 are allowed".into());
    }
    if let Some(ip) = ip
        && !source_ip_allowed(ip, policy.allow_loopback)
    {
        return Err("the address is private, reserved or otherwise not reachable from here".into());
    }
    Ok(())
}

/// Whether a `source_url` may connect to `ip`: public unicast only. Refused: private,
/// loopback (unless `allow_loopback`), link-local (169.254.0.0/16 holds the cloud metadata
/// service), shared (100.64.0.0/10), benchmarking (198.18.0.0/15), reserved (240.0.0.0/4),
/// multicast, broadcast and unspecified IPv4; and in IPv6 the same plus unique-local and
/// link-local ranges, and every form that carries an IPv4 address a gateway may forward to:
/// IPv4-mapped and IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`),
/// Teredo (`2001::/32`); 6to4 (`2002::/16`) is judged by the IPv4 address it embeds.
pub fn source_ip_allowed(ip: std::net::IpAddr, allow_loopback: bool) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4_allowed(v4, allow_loopback),
        std::net::IpAddr::V6(v6) => v6_allowed(v6, allow_loopback),
    }
}

fn v4_allowed(v4: std::net::Ipv4Addr, allow_loopback: bool) -> bool {
    if v4.is_loopback() {
        return allow_loopback;
    }
    let o = v4.octets();
    !(v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || o[0] >= 240) // 240.0.0.0/4 reserved, and 255.255.255.255
}

fn v6_allowed(v6: std::net::Ipv6Addr, allow_loopback: bool) -> bool {
    if v6.is_loopback() {
        return allow_loopback;
    }
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4_allowed(v4, allow_loopback);
    }
    let s = v6.segments();
    let embedded_6to4 =
        || std::net::Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
    if s[0] == 0x2002 {
        return v4_allowed(embedded_6to4(), false);
    }
    !(v6.is_unspecified()
        || v6.is_multicast()
        || s[..6] == [0; 6] // IPv4-compatible ::a.b.c.d (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) // NAT64 64:ff9b::/96
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local NAT64 64:ff9b:1::/48
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0; 3]) // discard-only 100::/64
        || (s[0] & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254 (EC2 metadata)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0) // site-local (deprecated)
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

    /// Every chunk `p` hands out, read whole: (offset, bytes, last).
    async fn drain(p: &mut Prefetch) -> Result<Vec<(u64, Vec<u8>, bool)>, UploadError> {
        let mut out = Vec::new();
        loop {
            let ch = p.next().await?;
            let (offset, last, len) = (ch.offset, ch.last, ch.len);
            let bytes = ch.into_bytes().await?;
            assert_eq!(
                bytes.len() as u64,
                len,
                "a chunk's bytes match its announced length"
            );
            out.push((offset, bytes.to_vec(), last));
            if last {
                return Ok(out);
            }
        }
    }

    fn unannounced(src: UploadSource) -> UploadSource {
        UploadSource::from_stream(src.stream, None)
    }

    #[tokio::test]
    async fn chunks_cover_the_content_in_order_and_flag_the_last() {
        for announced in [true, false] {
            let (all, src) = frames(&[7, 100, 3, 0, 45]);
            let src = if announced { src } else { unannounced(src) };
            let mut p = Prefetch::spawn(Chunker::new(src), 40);
            let chunks = drain(&mut p).await.unwrap();
            let mut got = Vec::new();
            for (i, (offset, bytes, last)) in chunks.iter().enumerate() {
                assert_eq!(*offset, got.len() as u64);
                got.extend_from_slice(bytes);
                assert_eq!(*last, i == chunks.len() - 1);
                if !last {
                    assert_eq!(bytes.len(), 40);
                }
            }
            assert_eq!(got, all, "announced: {announced}");
        }
    }

    #[tokio::test]
    async fn exact_multiple_is_flagged_last_without_an_empty_chunk() {
        for announced in [true, false] {
            let (_, src) = frames(&[80]);
            let src = if announced { src } else { unannounced(src) };
            let chunks = drain(&mut Prefetch::spawn(Chunker::new(src), 40))
                .await
                .unwrap();
            assert_eq!(chunks.len(), 2, "announced: {announced}");
            assert!(!chunks[0].2 && chunks[1].2);
            assert_eq!(chunks[1].1.len(), 40);
        }
    }

    #[tokio::test]
    async fn empty_content_is_one_empty_last_chunk() {
        let mut p = Prefetch::spawn(Chunker::new(UploadSource::from_bytes(Bytes::new())), 10);
        let chunks = drain(&mut p).await.unwrap();
        assert_eq!(chunks, vec![(0, vec![], true)]);
    }

    #[tokio::test]
    async fn short_or_long_content_against_its_announced_length_fails() {
        let read = |src: UploadSource| async move {
            drain(&mut Prefetch::spawn(Chunker::new(src), 10))
                .await
                .unwrap_err()
        };
        let short =
            UploadSource::from_stream(stream::iter([Ok(Bytes::from_static(b"abc"))]), Some(5));
        let err = read(short).await;
        assert!(
            err.to_string().contains("ended after 3 of the announced 5"),
            "{err}"
        );
        let long =
            UploadSource::from_stream(stream::iter([Ok(Bytes::from_static(b"abcdef"))]), Some(5));
        let err = read(long).await;
        assert!(err.to_string().contains("longer than"), "{err}");
        let broken = UploadSource::from_stream(
            stream::iter([
                Ok(Bytes::from_static(b"ab")),
                Err(io::Error::other("reset")),
            ]),
            None,
        );
        let err = read(broken).await;
        assert_eq!(crate::api::ApiError::from(&err).status(), 502);
    }

    #[tokio::test]
    async fn readers_and_byte_buffers_round_trip() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        for src in [
            UploadSource::from_bytes(Bytes::from(data.clone())),
            UploadSource::from_reader(std::io::Cursor::new(data.clone()), None),
        ] {
            let chunks = drain(&mut Prefetch::spawn(Chunker::new(src), 300_000))
                .await
                .unwrap();
            let got: Vec<u8> = chunks.into_iter().flat_map(|c| c.1).collect();
            assert_eq!(got, data);
        }
    }

    #[tokio::test]
    async fn a_body_streams_from_any_offset_and_can_be_sent_again() {
        let data: Vec<u8> = (0..(3 * FRAME + 1000) as u32)
            .map(|i| (i % 253) as u8)
            .collect();
        let src = UploadSource::from_bytes(Bytes::from(data.clone()));
        let mut p = Prefetch::spawn(Chunker::starting_at(src, 500), 2 * FRAME + 10);
        let first = p.next().await.unwrap();
        let second = p.next().await.unwrap();
        assert_eq!(
            (second.offset, second.end()),
            (first.end(), 500 + data.len() as u64)
        );
        let body = |ch: &Chunk, pos: u64| {
            let frames = ch.frames_from(pos);
            async move {
                let parts: Vec<Bytes> = frames.map(|f| f.unwrap()).collect().await;
                parts.concat()
            }
        };
        // Twice (a resend) and from inside the chunk (Graph's partial resend).
        for _ in 0..2 {
            assert_eq!(body(&first, 500).await, data[..2 * FRAME + 10]);
        }
        let at = 500 + FRAME as u64 + 17;
        assert_eq!(body(&first, at).await, data[FRAME + 17..2 * FRAME + 10]);
        p.recycle(first);
        assert_eq!(
            body(&second, second.offset + 3).await,
            data[2 * FRAME + 13..]
        );
    }

    #[tokio::test]
    async fn the_reader_holds_one_chunk_and_the_read_ahead_at_most() {
        let size = 2 * FRAME;
        let data = Bytes::from(vec![7u8; 12 * FRAME + AHEAD]);
        let mut p = Prefetch::spawn(Chunker::new(UploadSource::from_bytes(data)), size);
        let first = p.next().await.unwrap();
        let mut held = 0;
        for _ in 0..200 {
            tokio::task::yield_now().await;
            held = first.frames.filled.lock().unwrap().frames.len();
        }
        assert_eq!(held, 2, "the chunk in hand is read whole");
        // The next chunks are read only as far as the read-ahead budget.
        let mut ahead = 0;
        for _ in 0..(AHEAD / size + 1) {
            let next = p.next().await.unwrap();
            for _ in 0..200 {
                tokio::task::yield_now().await;
            }
            let n = next.frames.filled.lock().unwrap().frames.len();
            ahead += n;
            assert!(ahead <= AHEAD / FRAME, "{ahead} frames read ahead");
            // Kept (not dropped) so the budget stays taken.
            std::mem::forget(next);
        }
        assert_eq!(ahead, AHEAD / FRAME, "the reader uses its read-ahead");
        p.recycle(first);
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

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[tokio::test]
    async fn prefetch_hands_out_every_chunk_in_order() {
        let (all, src) = frames(&[7, 100, 3, 0, 45]);
        let mut p = Prefetch::spawn(Chunker::starting_at(src, 1000), 40);
        assert_eq!(p.total(), Some(1000 + all.len() as u64));
        let mut got = Vec::new();
        for (offset, bytes, _) in drain(&mut p).await.unwrap() {
            assert_eq!(offset, 1000 + got.len() as u64);
            got.extend_from_slice(&bytes);
        }
        assert_eq!(got, all);
    }

    #[test]
    fn source_addresses_refused_and_allowed() {
        let no = |s: &str| !source_ip_allowed(s.parse().unwrap(), false);
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "192.0.0.170",
            "::1",
            "::",
            "::127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::808:808",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:0a00:0001::",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(no(bad), "{bad} should be refused");
        }
        for good in [
            "203.0.113.9",
            "8.8.8.8",
            "198.20.0.1",
            "2606:4700::1111",
            "2002:0808:0808::1",
            "::ffff:8.8.8.8",
            "2001:4860::8888",
        ] {
            assert!(!no(good), "{good} should be allowed");
        }
        assert!(source_ip_allowed("127.0.0.1".parse().unwrap(), true));
        assert!(source_ip_allowed("::1".parse().unwrap(), true));
        assert!(!source_ip_allowed("::ffff:10.0.0.1".parse().unwrap(), true));
        assert!(!source_ip_allowed("2002:7f00:1::".parse().unwrap(), true));
    }

    #[test]
    fn source_url_scheme_port_and_host_rules() {
        let strict = SourceUrlPolicy::default();
        let http = SourceUrlPolicy {
            allow_http: true,
            ..strict
        };
        let tests = SourceUrlPolicy {
            allow_loopback: true,
            ..strict
        };
        let check = |u: &str, p| check_source_url(&Url::parse(u).unwrap(), p);
        assert!(check("https://files.example.com/a.pdf", strict).is_ok());
        assert!(check("https://files.example.com:443/a.pdf", strict).is_ok());
        assert!(
            check("https://files.example.com:8443/a.pdf", strict)
                .unwrap_err()
                .contains("ports")
        );
        assert!(check("https://files.example.com:80/a.pdf", strict).is_ok());
        assert!(
            check("http://files.example.com/a.pdf", strict)
                .unwrap_err()
                .contains("https")
        );
        assert!(check("http://files.example.com/a.pdf", http).is_ok());
        assert!(check("http://files.example.com:8080/a.pdf", http).is_err());
        assert!(check("ftp://files.example.com/a.pdf", http).is_err());
        assert!(
            check("https://u:p@files.example.com/a.pdf", strict)
                .unwrap_err()
                .contains("credentials")
        );
        assert!(check("https://[::127.0.0.1]/a", strict).is_err());
        assert!(check("https://[64:ff9b::a9fe:a9fe]/a", strict).is_err());
        assert!(check("https://198.18.0.5/a", strict).is_err());
        assert!(check("https://169.254.169.254/latest/meta-data", tests).is_err());
        // The test switch: loopback on any port and over http, nothing else.
        assert!(check("http://127.0.0.1:41234/f", tests).is_ok());
        assert!(check("http://localhost:41234/f", tests).is_ok());
        assert!(check("http://127.0.0.1:41234/f", http).is_err());
        assert!(check("http://localhost/f", strict).is_err());
        assert!(check("http://10.0.0.1:41234/f", tests).is_err());
        assert!(check("http://files.example.com:41234/f", tests).is_err());
        for u in ["https://[::127.0.0.1]/a", "https://10.0.0.1/a"] {
            let reason = check(u, strict).unwrap_err();
            assert!(
                !reason.contains("10.0.0.1") && !reason.contains("127"),
                "{reason}"
            );
        }
    }
}
