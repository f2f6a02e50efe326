//! Uploads through SharePoint REST (`/_api/web/…`).
//!
//! Small files go in one `Files/AddUsingPath` request. Larger ones create the file (empty) and
//! then stream 10 MiB chunks through `StartUpload` / `ContinueUpload` / `FinishUpload`; any
//! failure cancels the session and deletes the placeholder we created, so no partial file is left
//! looking complete. Replacing an existing file with a chunked upload streams into that file
//! directly: SharePoint keeps its old content until `FinishUpload`, so a failure leaves it intact.
//! The `…Path` (`decodedurl`) variants are used throughout so that `#` and `%` in names work.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;
use uuid::Uuid;

use super::error::{Api, FieldError, from_response};
use super::names::{folder_segments, odata_literal, renamed, url_path, validate_name};
use super::resume::{Finishing, Resume, ResumeState, Resumed, SavedOutcome, Session, Single};
use super::retry::{Safety, Sender};
use super::source::{Chunk, Chunker, Prefetch, UploadSource};
use super::{
    BearerSource, ConflictBehavior, ConflictOutcome, FieldValue, UploadError, UploadOutcome,
    UploadRequest,
};

const NOMETADATA: &str = "application/json;odata=nometadata";
/// How many `name n.ext` candidates a rename tries before giving up.
pub(crate) const MAX_RENAMES: u32 = 200;

/// A document library on a SharePoint site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePointTarget {
    site: Url,
    library: String,
}

impl SharePointTarget {
    /// `site` is the web URL (`https://contoso.sharepoint.com/sites/x`); `library` the library's
    /// server-relative URL (`/sites/x/Shared Documents`).
    pub fn new(site: Url, library: &str) -> Result<Self, UploadError> {
        if !matches!(site.scheme(), "http" | "https")
            || site.host_str().is_none()
            || site.query().is_some()
            || site.fragment().is_some()
        {
            return Err(UploadError::BadInput(
                "the site URL must be http(s) with a host and no query or fragment".into(),
            ));
        }
        if !library.starts_with('/') {
            return Err(UploadError::BadInput(format!(
                "the library {library:?} must be a server-relative URL starting with '/'"
            )));
        }
        let segments = folder_segments(library)?;
        Ok(SharePointTarget {
            site,
            library: format!("/{}", segments.join("/")),
        })
    }

    /// The site URL.
    pub fn site(&self) -> &Url {
        &self.site
    }

    /// The library's server-relative URL.
    pub fn library(&self) -> &str {
        &self.library
    }

    fn api(&self, rest: &str) -> Result<Url, UploadError> {
        let s = format!(
            "{}/_api/web/{rest}",
            self.site.as_str().trim_end_matches('/')
        );
        Url::parse(&s).map_err(|e| UploadError::BadInput(format!("cannot build a URL: {e}")))
    }
}

/// URL of `Files/AddUsingPath` in `folder`.
pub fn add_file_url(
    t: &SharePointTarget,
    folder: &str,
    name: &str,
    overwrite: bool,
) -> Result<Url, UploadError> {
    t.api(&format!(
        "GetFolderByServerRelativePath(decodedurl={})/Files/AddUsingPath(decodedurl={},overwrite={overwrite})",
        odata_literal(folder),
        odata_literal(name)
    ))
}

/// URL of a file (`GetFileByServerRelativePath`) followed by `suffix` (e.g. `/Exists`).
pub fn file_url(t: &SharePointTarget, path: &str, suffix: &str) -> Result<Url, UploadError> {
    t.api(&format!(
        "GetFileByServerRelativePath(decodedurl={}){suffix}",
        odata_literal(path)
    ))
}

/// URL that creates the folder at the server-relative `path`.
pub fn add_folder_url(t: &SharePointTarget, path: &str) -> Result<Url, UploadError> {
    t.api(&format!(
        "Folders/AddUsingPath(decodedurl={})",
        odata_literal(path)
    ))
}

/// The chunked-upload operations, as URL suffixes of the file.
pub fn chunk_suffix(op: ChunkOp, upload_id: Uuid) -> String {
    match op {
        ChunkOp::Start => format!("/StartUpload(uploadId=guid'{upload_id}')"),
        ChunkOp::Continue(n) => {
            format!("/ContinueUpload(uploadId=guid'{upload_id}',fileOffset={n})")
        }
        ChunkOp::Finish(n) => format!("/FinishUpload(uploadId=guid'{upload_id}',fileOffset={n})"),
        ChunkOp::Cancel => format!("/CancelUpload(uploadId=guid'{upload_id}')"),
    }
}

/// One step of SharePoint's chunked upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOp {
    /// `StartUpload`: the first chunk.
    Start,
    /// `ContinueUpload` at this offset.
    Continue(u64),
    /// `FinishUpload` at this offset: the last chunk.
    Finish(u64),
    /// `CancelUpload`.
    Cancel,
}

/// Tuning of the SharePoint client.
pub type SharePointOptions = super::UploadOptions;

/// Uploads into SharePoint document libraries through SharePoint REST.
#[derive(Clone)]
pub struct SharePointClient {
    http: reqwest::Client,
    bearer: Arc<dyn BearerSource>,
    opts: SharePointOptions,
}

/// `SP.File` as `odata=nometadata` returns it (Int64 fields as strings).
#[derive(Debug, Deserialize)]
struct SpFile {
    #[serde(rename = "ServerRelativeUrl")]
    server_relative_url: String,
    #[serde(rename = "Length", deserialize_with = "int64")]
    length: u64,
    #[serde(rename = "UniqueId", default)]
    unique_id: Option<String>,
    #[serde(rename = "ETag", default)]
    etag: Option<String>,
    #[serde(rename = "TimeCreated", default)]
    time_created: Option<String>,
}

/// SharePoint writes Int64 as a JSON string; accept a number too.
pub(crate) fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("not an unsigned integer")),
        other => Err(serde::de::Error::custom(format!(
            "expected Int64, got {other}"
        ))),
    }
}

/// `{"value":"10485760"}` (or `{"d":{"StartUpload":"…"}}` in verbose mode).
fn parse_offset(body: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let raw = v
        .get("value")
        .or_else(|| v.get("d").and_then(|d| d.as_object()?.values().next()))?;
    match raw {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn parse_file(body: &[u8]) -> Result<SpFile, UploadError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad_reply(&e.to_string()))?;
    // Verbose mode wraps the entity in "d".
    let v = v.get("d").cloned().unwrap_or(v);
    serde_json::from_value(v).map_err(|e| bad_reply(&e.to_string()))
}

fn bad_reply(why: &str) -> UploadError {
    UploadError::Upstream {
        status: 200,
        microsoft_code: None,
        message: format!("SharePoint answered something unexpected: {why}"),
    }
}

/// Per-upload context.
struct Ctx<'a> {
    target: &'a SharePointTarget,
    sender: Sender<'a>,
}

impl Ctx<'_> {
    /// Sends and returns the body of a 2xx, or the mapped error.
    async fn call(
        &self,
        safety: Safety,
        method: Method,
        url: &Url,
        body: Option<Bytes>,
        content_type: &'static str,
        what: &str,
    ) -> Result<Bytes, UploadError> {
        let resp = self
            .sender
            .send(safety, |c| {
                let mut rb = c
                    .request(method.clone(), url.clone())
                    .header(ACCEPT, NOMETADATA);
                rb = match &body {
                    Some(b) => rb
                        .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
                        .body(b.clone()),
                    // SharePoint wants a length on body-less POSTs.
                    None if method == Method::POST => rb.body(Bytes::new()),
                    None => rb,
                };
                rb
            })
            .await?;
        answer(resp, what).await
    }

    /// Whether a file exists: `GET GetFileByServerRelativePath(…)` answers the file or 404
    /// (the same on every SharePoint version, unlike the `/Exists` property).
    async fn exists(&self, path: &str) -> Result<bool, UploadError> {
        Ok(self.file(path).await?.is_some())
    }

    /// The file at `path`, if there is one.
    async fn file(&self, path: &str) -> Result<Option<SpFile>, UploadError> {
        let url = file_url(self.target, path, "")?;
        match self
            .call(Safety::Idempotent, Method::GET, &url, None, "", path)
            .await
        {
            Ok(body) => parse_file(&body).map(Some),
            Err(UploadError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The file at `path` if it is ours, finished: the placeholder (same `UniqueId`) with the
    /// full length and a new `ETag` (`FinishUpload` commits a new version).
    async fn finished(&self, path: &str, f: &Finishing) -> Result<Option<SpFile>, UploadError> {
        Ok(self.file(path).await?.filter(|file| {
            file.length == f.size
                && file.etag.is_some()
                && file.etag != f.etag_before
                && file.unique_id == f.unique_id
        }))
    }

    /// The file a one-request upload's [`Single`] names in `folder`, if it is the one that
    /// request made: created after the record, with exactly `body` as its content (read back
    /// with `$value`, only on a retry that meets a file there).
    async fn ours(
        &self,
        folder: &str,
        single: &Single,
        body: &Bytes,
    ) -> Result<Option<SpFile>, UploadError> {
        validate_name(&single.name)?;
        let path = format!("{folder}/{}", single.name);
        let Some(file) = self.file(&path).await? else {
            return Ok(None);
        };
        if !single.may_be(file.length, file.time_created.as_deref()) {
            return Ok(None);
        }
        let url = file_url(self.target, &path, "/$value")?;
        let content = self
            .call(Safety::Idempotent, Method::GET, &url, None, "", &path)
            .await?;
        Ok((content == *body).then_some(file))
    }

    /// `add` without overwrite, its [`Single`] saved first when `mark` is given (a resumable
    /// one-request upload): a worker that dies after SharePoint stored the file lets its retry
    /// find the file by name and recognise it.
    async fn add_marked(
        &self,
        folder: &str,
        name: &str,
        body: &Bytes,
        mark: Option<(&Resume<'_>, &ResumeState)>,
    ) -> Result<SpFile, UploadError> {
        if let Some((r, state)) = mark {
            let mut saved = state.clone();
            saved.single = Some(Single::new(name, body.len() as u64));
            (r.save)(saved).await?;
            #[cfg(feature = "test-hooks")]
            super::resume::exit_at("before_single");
        }
        self.add(folder, name, false, body).await
    }

    async fn add(
        &self,
        folder: &str,
        name: &str,
        overwrite: bool,
        body: &Bytes,
    ) -> Result<SpFile, UploadError> {
        let url = add_file_url(self.target, folder, name, overwrite)?;
        // Without overwrite, a repeat after a lost answer would see our own file as a conflict.
        let safety = if overwrite {
            Safety::Idempotent
        } else {
            Safety::ThrottleOnly
        };
        let path = format!("{folder}/{name}");
        let reply = self
            .call(
                safety,
                Method::POST,
                &url,
                Some(body.clone()),
                "application/octet-stream",
                &path,
            )
            .await?;
        parse_file(&reply)
    }

    /// Creates each missing folder from the library down to `segments`.
    async fn ensure_folders(&self, segments: &[String]) -> Result<(), UploadError> {
        let mut path = self.target.library.clone();
        for seg in segments {
            path.push('/');
            path.push_str(seg);
            let url = add_folder_url(self.target, &path)?;
            match self
                .call(Safety::Idempotent, Method::POST, &url, None, "", &path)
                .await
            {
                Ok(_) | Err(UploadError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Adds `body` as `name` in `folder`, applying `conflict`. With `keep_existing` (a chunked
    /// replace), an existing file is left as is and reported as `Replaced` for the caller to
    /// stream into. With `mark`, each add without overwrite saves its name first
    /// ([`Ctx::add_marked`]). Returns the file, the outcome and whether we created it.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        folder: &str,
        segments: &[String],
        name: &str,
        conflict: ConflictBehavior,
        body: &Bytes,
        keep_existing: bool,
        mark: Option<(&Resume<'_>, &ResumeState)>,
    ) -> Result<(SpFile, ConflictOutcome, bool), UploadError> {
        let first = match self.add_marked(folder, name, body, mark).await {
            Err(UploadError::NotFound { .. }) if !segments.is_empty() => {
                self.ensure_folders(segments).await?;
                self.add(folder, name, false, body).await
            }
            other => other,
        };
        match (first, conflict) {
            (Ok(f), _) => Ok((f, ConflictOutcome::Created, true)),
            (Err(e @ UploadError::Conflict { .. }), ConflictBehavior::Fail) => Err(e),
            (Err(UploadError::Conflict { .. }), ConflictBehavior::Replace) => {
                if keep_existing {
                    let path = format!("{folder}/{name}");
                    let f = SpFile {
                        server_relative_url: path,
                        length: 0,
                        unique_id: None,
                        etag: None,
                        time_created: None,
                    };
                    return Ok((f, ConflictOutcome::Replaced, false));
                }
                let f = self.add(folder, name, true, body).await?;
                Ok((f, ConflictOutcome::Replaced, false))
            }
            (Err(UploadError::Conflict { .. }), ConflictBehavior::Rename) => {
                for n in 1..=MAX_RENAMES {
                    let candidate = renamed(name, n);
                    if self.exists(&format!("{folder}/{candidate}")).await? {
                        continue;
                    }
                    match self.add_marked(folder, &candidate, body, mark).await {
                        Ok(f) => {
                            let outcome = ConflictOutcome::Renamed {
                                from: name.to_owned(),
                            };
                            return Ok((f, outcome, true));
                        }
                        // Someone took it between the check and the add: try the next.
                        Err(UploadError::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(UploadError::Conflict {
                    path: format!("{folder}/{name}"),
                    microsoft: None,
                })
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Sends one chunk, streaming its bytes as the reader delivers them.
    async fn chunk_op(
        &self,
        path: &str,
        op: ChunkOp,
        id: Uuid,
        chunk: &Chunk,
    ) -> Result<Bytes, UploadError> {
        let url = file_url(self.target, path, &chunk_suffix(op, id))?;
        let send = async {
            let resp = self
                .sender
                .send(Safety::Idempotent, |c| {
                    c.post(url.clone())
                        .header(ACCEPT, NOMETADATA)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, chunk.len)
                        .body(chunk.body_from(chunk.offset))
                })
                .await?;
            answer(resp, path).await
        };
        chunk.guard(send, Err).await
    }

    /// Streams the chunks into `path`: the finished file and the chunk count, or the state to
    /// continue from when `resume` says stop.
    async fn stream_chunks(
        &self,
        path: &str,
        state: &mut ResumeState,
        id: Uuid,
        first: Chunk,
        chunks: &mut Prefetch,
        resume: Option<&Resume<'_>>,
    ) -> Result<Streamed<(SpFile, u32)>, Stop> {
        let mut chunk = first;
        let mut count = 0u32;
        loop {
            count += 1;
            let op = if chunk.offset == 0 {
                ChunkOp::Start
            } else if chunk.last {
                ChunkOp::Finish(chunk.offset)
            } else {
                ChunkOp::Continue(chunk.offset)
            };
            let expected = chunk.end();
            if let (ChunkOp::Finish(_), Some(r)) = (op, resume) {
                // Saved first: a worker that dies after `FinishUpload` but before the job
                // records the file lets its retry recognise the finished file as its own.
                let before = self.file(path).await?;
                state.finishing = Some(Finishing {
                    size: expected,
                    etag_before: before.as_ref().and_then(|f| f.etag.clone()),
                    unique_id: before.and_then(|f| f.unique_id),
                });
                (r.save)(state.clone()).await.map_err(Stop::Save)?;
                #[cfg(feature = "test-hooks")]
                super::resume::exit_at("before_final_chunk");
            }
            let reply = self.chunk_op(path, op, id, &chunk).await?;
            if let ChunkOp::Finish(_) = op {
                let file = parse_file(&reply)?;
                if file.length != expected {
                    return Err(bad_reply(&format!(
                        "the finished file has {} bytes, not the {expected} sent",
                        file.length
                    ))
                    .into());
                }
                return Ok(Streamed::Done((file, count)));
            }
            match parse_offset(&reply) {
                Some(n) if n == expected => {}
                got => {
                    return Err(UploadError::Upstream {
                        status: 200,
                        microsoft_code: None,
                        message: format!(
                            "SharePoint reported offset {got:?} after a chunk ending at {expected}"
                        ),
                    }
                    .into());
                }
            }
            // Give this chunk back before taking the next: the reader fills only one ahead.
            chunks.recycle(chunk);
            state.offset = expected;
            if let Some(r) = resume {
                (r.save)(state.clone()).await.map_err(Stop::Save)?;
                if r.stop_at.is_some_and(|t| Instant::now() >= t) {
                    return Ok(Streamed::Paused);
                }
            }
            chunk = chunks.next().await?;
        }
    }

    /// Cancels the session and deletes the placeholder if we made it. Best effort: the first
    /// error has already decided the answer.
    async fn clean_up(&self, path: &str, id: Uuid, delete: bool) {
        self.cancel(path, id).await;
        if delete {
            let deleted = match file_url(self.target, path, "") {
                Ok(url) => self
                    .sender
                    .send(Safety::Idempotent, |c| {
                        c.delete(url.clone())
                            .header(ACCEPT, NOMETADATA)
                            .header("If-Match", "*")
                    })
                    .await
                    .map(|r| r.status().is_success() || r.status().as_u16() == 404),
                Err(e) => Err(e),
            };
            if !matches!(deleted, Ok(true)) {
                tracing::warn!(
                    ?deleted,
                    "could not delete the placeholder of a failed upload"
                );
            }
        }
    }

    /// `CancelUpload`, best effort.
    async fn cancel(&self, path: &str, id: Uuid) {
        if let Ok(url) = file_url(self.target, path, &chunk_suffix(ChunkOp::Cancel, id))
            && let Err(e) = self
                .call(Safety::Idempotent, Method::POST, &url, None, "", path)
                .await
        {
            tracing::debug!(error = %e, "CancelUpload failed (the session may not have started)");
        }
    }

    async fn set_fields(&self, path: &str, fields: &[FieldValue]) -> Result<(), UploadError> {
        let url = file_url(
            self.target,
            path,
            "/ListItemAllFields/ValidateUpdateListItem",
        )?;
        let form: Vec<Value> = fields
            .iter()
            .map(|f| json!({"FieldName": f.name, "FieldValue": f.value}))
            .collect();
        // bNewDocumentUpdate: update the version just uploaded instead of adding one.
        let body = json!({"formValues": form, "bNewDocumentUpdate": true}).to_string();
        let reply = self
            .call(
                Safety::Idempotent,
                Method::POST,
                &url,
                Some(Bytes::from(body)),
                "application/json;odata=nometadata",
                path,
            )
            .await?;
        let rejected = parse_field_results(&reply)?;
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(UploadError::MetadataRejected {
                path: path.to_owned(),
                fields: rejected,
            })
        }
    }
}

/// The fields `ValidateUpdateListItem` refused (`HasException: true`).
fn parse_field_results(body: &[u8]) -> Result<Vec<FieldError>, UploadError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad_reply(&e.to_string()))?;
    let list = v
        .get("value")
        .or_else(|| v.pointer("/d/ValidateUpdateListItem/results"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad_reply("ValidateUpdateListItem gave no field results"))?;
    Ok(list
        .iter()
        .filter(|r| r.get("HasException").and_then(Value::as_bool) == Some(true))
        .map(|r| FieldError {
            field: r
                .get("FieldName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            message: r
                .get("ErrorMessage")
                .and_then(Value::as_str)
                .unwrap_or("rejected")
                .to_owned(),
            code: r.get("ErrorCode").and_then(Value::as_i64),
        })
        .collect())
}

impl SharePointClient {
    /// A client over the shared HTTP client and a token source for the SharePoint resource.
    pub fn new(
        http: reqwest::Client,
        bearer: Arc<dyn BearerSource>,
        opts: SharePointOptions,
    ) -> Self {
        SharePointClient { http, bearer, opts }
    }

    /// Uploads `source` as `req.folder/req.file_name` into the library.
    #[tracing::instrument(skip_all, fields(site = %target.site, file = %req.file_name))]
    pub async fn upload(
        &self,
        target: &SharePointTarget,
        req: &UploadRequest,
        source: UploadSource,
    ) -> Result<UploadOutcome, UploadError> {
        match self.run(target, req, source, None).await? {
            Resumed::Done(o) => Ok(o),
            Resumed::Paused(_) | Resumed::Restart(..) => Err(bad_reply("the upload stopped")),
        }
    }

    /// [`SharePointClient::upload`] that saves its state after each chunk and stops between
    /// chunks at `resume.stop_at`. `source` starts at `resume.state.offset`; a saved session
    /// with offset 0 (the source had to start again) gets a new upload id on the same file. A
    /// transient failure keeps the session for the next attempt; [`SharePointClient::abort`]
    /// ends it.
    #[tracing::instrument(skip_all, fields(site = %target.site, file = %req.file_name))]
    pub async fn upload_resumable(
        &self,
        target: &SharePointTarget,
        req: &UploadRequest,
        source: UploadSource,
        resume: Resume<'_>,
    ) -> Result<Resumed, UploadError> {
        self.run(target, req, source, Some(&resume)).await
    }

    /// Cancels a saved session and deletes its placeholder if the upload made it.
    pub async fn abort(&self, target: &SharePointTarget, session: &Session) {
        let Session::Sharepoint {
            upload_id,
            path,
            created,
            ..
        } = session
        else {
            return;
        };
        let budget = crate::http::Budget::new(None);
        let ctx = Ctx {
            target,
            sender: Sender {
                http: &self.http,
                policy: &self.opts.retry,
                budget: &budget,
                bearer: Some(self.bearer.as_ref()),
            },
        };
        ctx.clean_up(path, *upload_id, *created).await;
    }

    async fn run(
        &self,
        target: &SharePointTarget,
        req: &UploadRequest,
        source: UploadSource,
        resume: Option<&Resume<'_>>,
    ) -> Result<Resumed, UploadError> {
        validate_name(&req.file_name)?;
        let segments = folder_segments(&req.folder)?;
        if self.opts.chunk_size == 0 {
            return Err(UploadError::BadInput("chunk size must not be zero".into()));
        }
        let folder = if segments.is_empty() {
            target.library.clone()
        } else {
            format!("{}/{}", target.library, segments.join("/"))
        };
        let budget = crate::http::Budget::new(req.deadline);
        let ctx = Ctx {
            target,
            sender: Sender {
                http: &self.http,
                policy: &self.opts.retry,
                budget: &budget,
                bearer: Some(self.bearer.as_ref()),
            },
        };
        let mut state = resume.map_or_else(ResumeState::fresh, |r| r.state.clone());
        let base = state.offset;
        let mut chunks = Prefetch::spawn(Chunker::starting_at(source, base), self.opts.chunk_size);
        state.total = chunks.total().or(state.total);
        let first = chunks.next().await?;
        let (file, conflict_outcome, chunks) = match state.session.clone() {
            None if first.last => {
                let body = first.into_bytes().await?;
                // A repeated `replace` rewrites the same bytes in place: nothing to record.
                let mark = resume
                    .filter(|_| req.conflict != ConflictBehavior::Replace)
                    .map(|r| (r, &state));
                let landed = match (&state.single, mark) {
                    (Some(single), Some(_)) => ctx
                        .ours(&folder, single, &body)
                        .await?
                        .map(|f| (f, single.name.clone())),
                    _ => None,
                };
                match landed {
                    Some((f, name)) => {
                        tracing::info!("the one request had landed before the last worker stopped");
                        let o = if name == req.file_name {
                            ConflictOutcome::Created
                        } else {
                            ConflictOutcome::Renamed {
                                from: req.file_name.clone(),
                            }
                        };
                        (f, o, 0)
                    }
                    None => {
                        let (f, o, _) = ctx
                            .create(
                                &folder,
                                &segments,
                                &req.file_name,
                                req.conflict,
                                &body,
                                false,
                                mark,
                            )
                            .await?;
                        (f, o, 1)
                    }
                }
            }
            None if base > 0 => {
                return Err(UploadError::BadInput(
                    "a resumed SharePoint upload needs its saved session".into(),
                ));
            }
            Some(Session::Graph { .. }) => {
                return Err(UploadError::BadInput(
                    "the saved upload session is a Graph session".into(),
                ));
            }
            saved => {
                let (path, created, outcome, id) = match saved {
                    Some(Session::Sharepoint {
                        upload_id,
                        path,
                        created,
                        outcome,
                    }) => {
                        let id = if base == 0 {
                            // Starting over on the same file: the old upload ends, a new one begins.
                            ctx.cancel(&path, upload_id).await;
                            Uuid::new_v4()
                        } else {
                            upload_id
                        };
                        (path, created, ConflictOutcome::from(&outcome), id)
                    }
                    _ => {
                        let (placeholder, outcome, created) = ctx
                            .create(
                                &folder,
                                &segments,
                                &req.file_name,
                                req.conflict,
                                &Bytes::new(),
                                true,
                                None,
                            )
                            .await?;
                        (
                            placeholder.server_relative_url,
                            created,
                            outcome,
                            Uuid::new_v4(),
                        )
                    }
                };
                state.session = Some(Session::Sharepoint {
                    upload_id: id,
                    path: path.clone(),
                    created,
                    outcome: SavedOutcome::from(&outcome),
                });
                if let Some(r) = resume {
                    // Saved before the first byte: whoever gives up later can cancel it.
                    (r.save)(state.clone()).await?;
                }
                let landed = match &state.finishing {
                    Some(f) if base > 0 => ctx.finished(&path, f).await?,
                    _ => None,
                };
                if let Some(file) = landed {
                    tracing::info!("the final chunk had landed before the last worker stopped");
                    (file, outcome, 0)
                } else {
                    match ctx
                        .stream_chunks(&path, &mut state, id, first, &mut chunks, resume)
                        .await
                    {
                        Ok(Streamed::Done((f, n))) => (f, outcome, n),
                        Ok(Streamed::Paused) => return Ok(Resumed::Paused(state)),
                        Err(Stop::Save(e)) => return Err(e),
                        Err(Stop::Upload(e)) if resume.is_some() && e.is_transient() => {
                            tracing::warn!(error = %e, offset = state.offset, "chunked upload interrupted; the session is kept");
                            return Err(e);
                        }
                        Err(Stop::Upload(e)) => {
                            tracing::warn!(error = %e, "chunked upload failed; cancelling");
                            ctx.clean_up(&path, id, created).await;
                            return Err(e);
                        }
                    }
                }
            }
        };
        if !req.fields.is_empty() {
            ctx.set_fields(&file.server_relative_url, &req.fields)
                .await?;
        }
        let web_url = {
            let mut u = target.site.clone();
            u.set_query(None);
            u.set_path("");
            format!(
                "{}{}",
                u.as_str().trim_end_matches('/'),
                url_path(&file.server_relative_url)
            )
        };
        Ok(Resumed::Done(UploadOutcome {
            path: file.server_relative_url,
            web_url: Some(web_url),
            size: file.length,
            id: file.unique_id.unwrap_or_default(),
            etag: file.etag,
            conflict_outcome,
            chunks,
            retries: budget.retries(),
        }))
    }
}

/// How a chunk loop ended without an error.
pub(crate) enum Streamed<T> {
    /// The file is complete.
    Done(T),
    /// Stopped between chunks (time to hand on).
    Paused,
}

/// Why a chunk loop stopped: the upload failed, or saving the state did (the lease is gone or
/// the store is down; the session belongs to whoever holds the saved state, so it is left open).
pub(crate) enum Stop {
    Upload(UploadError),
    Save(UploadError),
}

impl From<UploadError> for Stop {
    fn from(e: UploadError) -> Self {
        Stop::Upload(e)
    }
}

/// A SharePoint answer's body when it succeeded, else the error it describes (`what` names the
/// call in the message).
async fn answer(resp: reqwest::Response, what: &str) -> Result<Bytes, UploadError> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(|e| UploadError::transport(&e))?;
    if (200..300).contains(&status) {
        Ok(bytes)
    } else {
        Err(from_response(
            Api::SharePoint,
            status,
            &headers,
            &bytes,
            what,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures");

    fn pnp_body(name: &str) -> Vec<u8> {
        let raw =
            std::fs::read_to_string(format!("{FIXTURES}/sharepoint-rest/pnpcore/{name}")).unwrap();
        let v: Value = serde_json::from_str(&raw).unwrap();
        v["Response"].as_str().unwrap().as_bytes().to_vec()
    }

    fn target() -> SharePointTarget {
        SharePointTarget::new(
            Url::parse("https://contoso.sharepoint.com/sites/prov-2").unwrap(),
            "/sites/prov-2/Shared Documents",
        )
        .unwrap()
    }

    #[test]
    fn add_url_escapes_quotes_hash_percent_and_unicode() {
        let u = add_file_url(
            &target(),
            "/sites/prov-2/Shared Documents/Q#1",
            "O'Neil 100%.pdf",
            false,
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "https://contoso.sharepoint.com/sites/prov-2/_api/web/GetFolderByServerRelativePath(decodedurl='/sites/prov-2/Shared%20Documents/Q%231')/Files/AddUsingPath(decodedurl='O''Neil%20100%25.pdf',overwrite=false)"
        );
        // The URL must round-trip: `#` stays in the path, not a fragment.
        assert_eq!(u.fragment(), None);
        let u = file_url(&target(), "/sites/prov-2/Shared Documents/Ü.txt", "/Exists").unwrap();
        assert_eq!(
            u.as_str(),
            "https://contoso.sharepoint.com/sites/prov-2/_api/web/GetFileByServerRelativePath(decodedurl='/sites/prov-2/Shared%20Documents/%C3%9C.txt')/Exists"
        );
    }

    #[test]
    fn chunk_urls_follow_pnp() {
        let id = Uuid::parse_str("8a4b5bde-8c5f-4dca-a7b5-3e1a1c3ad47c").unwrap();
        assert_eq!(
            chunk_suffix(ChunkOp::Start, id),
            "/StartUpload(uploadId=guid'8a4b5bde-8c5f-4dca-a7b5-3e1a1c3ad47c')"
        );
        assert_eq!(
            chunk_suffix(ChunkOp::Continue(10485760), id),
            "/ContinueUpload(uploadId=guid'8a4b5bde-8c5f-4dca-a7b5-3e1a1c3ad47c',fileOffset=10485760)"
        );
        assert_eq!(
            chunk_suffix(ChunkOp::Finish(20971520), id),
            "/FinishUpload(uploadId=guid'8a4b5bde-8c5f-4dca-a7b5-3e1a1c3ad47c',fileOffset=20971520)"
        );
        assert_eq!(
            chunk_suffix(ChunkOp::Cancel, id),
            "/CancelUpload(uploadId=guid'8a4b5bde-8c5f-4dca-a7b5-3e1a1c3ad47c')"
        );
    }

    #[test]
    fn targets_are_checked() {
        let site = Url::parse("https://contoso.sharepoint.com/sites/x").unwrap();
        assert!(SharePointTarget::new(site.clone(), "Shared Documents").is_err());
        assert!(SharePointTarget::new(site.clone(), "/sites/x/../y").is_err());
        assert_eq!(
            SharePointTarget::new(site, "/sites/x/Docs/")
                .unwrap()
                .library(),
            "/sites/x/Docs"
        );
        let q = Url::parse("https://contoso.sharepoint.com/sites/x?a=b").unwrap();
        assert!(SharePointTarget::new(q, "/sites/x/Docs").is_err());
    }

    #[test]
    fn chunk_offsets_parse_from_recorded_replies() {
        assert_eq!(
            parse_offset(&pnp_body(
                "AddChunkedFileToFolderTest-0-00004.response.json"
            )),
            Some(10485760)
        );
        assert_eq!(
            parse_offset(&pnp_body(
                "AddChunkedFileToFolderTest-0-00005.response.json"
            )),
            Some(20971520)
        );
        assert_eq!(parse_offset(br#"{"d":{"StartUpload":"5"}}"#), Some(5));
        assert_eq!(parse_offset(br#"{"value":"x"}"#), None);
    }

    #[test]
    fn files_parse_from_recorded_replies() {
        let f = parse_file(&pnp_body(
            "AddChunkedFileToFolderTest-0-00006.response.json",
        ))
        .unwrap();
        assert_eq!(f.length, 21117312);
        assert_eq!(
            f.server_relative_url,
            "/sites/prov-2/SiteAssets/PNP_SDK_TEST_testchunked_added.docx"
        );
        assert_eq!(
            f.unique_id.as_deref(),
            Some("e4f033b3-3baf-47db-8179-6d2a5d6903f5")
        );
        assert_eq!(
            f.etag.as_deref(),
            Some("\"{E4F033B3-3BAF-47DB-8179-6D2A5D6903F5},2\"")
        );
        let f = parse_file(&pnp_body("AddFileToFolderTest-0-00003.response.json")).unwrap();
        assert_eq!(f.length, 20159);
        assert!(parse_file(b"{}").is_err());
    }

    #[test]
    fn field_results_surface_exceptions() {
        let body = br#"{"value":[
            {"ErrorCode":0,"ErrorMessage":null,"FieldName":"Title","FieldValue":"x","HasException":false,"ItemId":1},
            {"ErrorCode":-2147024809,"ErrorMessage":"Invalid date.","FieldName":"Due","FieldValue":"nope","HasException":true,"ItemId":1}]}"#;
        let rejected = parse_field_results(body).unwrap();
        assert_eq!(
            rejected,
            vec![FieldError {
                field: "Due".into(),
                message: "Invalid date.".into(),
                code: Some(-2147024809)
            }]
        );
        assert!(parse_field_results(br#"{"value":[]}"#).unwrap().is_empty());
        assert!(parse_field_results(b"[]").is_err());
    }
}
