//! A file server for `source_url` tests: one file of any length, generated on the fly from a
//! seeded pattern (never held whole), that honours `Range: bytes=N-` (206) or ignores it (200),
//! and can break the connection off once at a chosen byte.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use futures_util::stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The pattern's period: a prime past 1 MiB, so it lines up with no chunk size.
const PERIOD: usize = 1024 * 1024 + 7;
/// Frames the body is sent in.
const FRAME: usize = 256 * 1024;

/// What the origin serves.
#[derive(Debug, Clone, Copy)]
pub struct OriginOptions {
    /// The file's length.
    pub len: u64,
    /// Seeds the pattern.
    pub seed: u64,
    /// Answer `Range` requests with 206 (otherwise 200 and the whole file).
    pub honour_range: bool,
}

/// A running origin; stops when dropped.
pub struct Origin {
    url: String,
    state: Arc<State>,
    _shutdown: watch::Sender<bool>,
}

struct State {
    len: u64,
    /// The period twice over, so any frame is one contiguous slice.
    block: Bytes,
    honour_range: AtomicBool,
    /// Break the connection when a response reaches this byte (`u64::MAX`: never); once.
    reset_at: AtomicU64,
    requests: AtomicU64,
    ranged: AtomicU64,
    resets: AtomicU64,
}

impl Origin {
    /// Serves the file at `http://127.0.0.1:{port}/file.bin`.
    pub async fn start(opts: OriginOptions) -> std::io::Result<Origin> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            len: opts.len,
            block: pattern(opts.seed),
            honour_range: AtomicBool::new(opts.honour_range),
            reset_at: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            ranged: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let (tx, mut rx) = watch::channel(false);
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = rx.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move { Ok::<_, Infallible>(serve(&st, &req)) }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Origin {
            url: format!("http://127.0.0.1:{port}/file.bin"),
            state,
            _shutdown: tx,
        })
    }

    /// The file's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.state.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.state.len == 0
    }

    /// From now on, honour `Range` or ignore it.
    pub fn set_honour_range(&self, on: bool) {
        self.state.honour_range.store(on, Ordering::SeqCst);
    }

    /// Break off the next response that reaches byte `at` of the file, once: the client gets
    /// the bytes before it and then a closed connection.
    pub fn reset_once_at(&self, at: u64) {
        self.state.reset_at.store(at, Ordering::SeqCst);
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests that carried a `Range` header.
    pub fn range_requests(&self) -> u64 {
        self.state.ranged.load(Ordering::SeqCst)
    }

    /// Responses broken off.
    pub fn resets(&self) -> u64 {
        self.state.resets.load(Ordering::SeqCst)
    }

    /// Hex SHA-256 of the whole file, computed from the pattern.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        let mut at = 0u64;
        while at < self.state.len {
            let frame = self.state.frame(at, self.state.len);
            at += frame.len() as u64;
            h.update(&frame);
        }
        hex::encode(h.finalize())
    }
}

/// `PERIOD` bytes of xorshift output from `seed`, twice.
fn pattern(seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut one = Vec::with_capacity(PERIOD);
    while one.len() < PERIOD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        one.extend_from_slice(&x.to_le_bytes());
    }
    one.truncate(PERIOD);
    let mut two = one.clone();
    two.extend_from_slice(&one);
    Bytes::from(two)
}

impl State {
    /// The bytes from `at` on, up to a frame, not past `end`.
    fn frame(&self, at: u64, end: u64) -> Bytes {
        let start = (at % PERIOD as u64) as usize;
        let n = (end - at).min(FRAME as u64) as usize;
        self.block.slice(start..start + n)
    }
}

fn serve(st: &Arc<State>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    if req.uri().path() != "/file.bin" {
        return respond(StatusCode::NOT_FOUND, Body::empty(), []);
    }
    // `bytes=N-` or `bytes=N-M`.
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let to = if b.is_empty() {
                None
            } else {
                Some(b.parse::<u64>().ok()?)
            };
            Some((a.parse::<u64>().ok()?, to))
        });
    if req.headers().contains_key(header::RANGE) {
        st.ranged.fetch_add(1, Ordering::SeqCst);
    }
    let len = st.len;
    let (range, end) = match range {
        Some((a, Some(b))) if b >= a => (Some(a), (b + 1).min(len)),
        Some((a, None)) => (Some(a), len),
        _ => (None, len),
    };
    let honour = st.honour_range.load(Ordering::SeqCst);
    let end = if honour { end } else { len };
    let from = match range {
        Some(n) if honour && n < len => Some(n),
        Some(_) if honour => {
            return respond(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Body::empty(),
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            );
        }
        _ => None,
    };
    let start = from.unwrap_or(0);
    let reset_at = st.reset_at.load(Ordering::SeqCst);
    let breaks = reset_at >= start && reset_at < end;
    if breaks {
        st.reset_at.store(u64::MAX, Ordering::SeqCst);
    }
    let state = st.clone();
    let frames = stream::unfold(start, move |at| {
        let state = state.clone();
        async move {
            if at >= end {
                return None;
            }
            if breaks && at >= reset_at {
                state.resets.fetch_add(1, Ordering::SeqCst);
                return Some((Err(std::io::Error::other("origin reset")), end));
            }
            let stop = if breaks { reset_at.max(at + 1) } else { end };
            let frame = state.frame(at, stop.min(end));
            let next = at + frame.len() as u64;
            Some((Ok::<_, std::io::Error>(frame), next))
        }
    });
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::CONTENT_LENGTH, (end - start).to_string()),
    ];
    let body = Body::from_stream(frames);
    match from {
        Some(_) => respond(
            StatusCode::PARTIAL_CONTENT,
            body,
            headers.into_iter().chain([(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", end - 1),
            )]),
        ),
        None => respond(StatusCode::OK, body, headers),
    }
}

/// A response with `status`, `body` and `headers` (a value that is not a valid header value
/// is left out).
fn respond(
    status: StatusCode,
    body: Body,
    headers: impl IntoIterator<Item = (header::HeaderName, String)>,
) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ranges_are_honoured_or_ignored_and_resets_happen_once() {
        let o = Origin::start(OriginOptions {
            len: 3 * PERIOD as u64 + 5,
            seed: 7,
            honour_range: true,
        })
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let whole = http
            .get(o.url())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(whole.len() as u64, o.len());
        assert_eq!(hex::encode(Sha256::digest(&whole)), o.sha256());
        let part = http
            .get(o.url())
            .header("range", "bytes=1000-")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(
            part.headers()["content-range"],
            format!("bytes 1000-{}/{}", o.len() - 1, o.len()).as_str()
        );
        assert_eq!(part.bytes().await.unwrap(), whole.slice(1000..));
        let window = http
            .get(o.url())
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(window.status(), 206);
        assert_eq!(window.bytes().await.unwrap(), whole.slice(10..20));
        o.set_honour_range(false);
        let full = http
            .get(o.url())
            .header("range", "bytes=1000-")
            .send()
            .await
            .unwrap();
        assert_eq!(full.status(), 200);
        assert_eq!(full.bytes().await.unwrap().len() as u64, o.len());
        o.reset_once_at(2_000_000);
        let broken = http.get(o.url()).send().await.unwrap().bytes().await;
        assert!(broken.is_err());
        assert_eq!(o.resets(), 1);
        let again = http
            .get(o.url())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(again.len() as u64, o.len());
    }
}
