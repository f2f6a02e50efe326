//! Turns an upload request (method, headers, raw query, body bytes) into the files to store.
//!
//! Three body shapes are understood:
//!
//! * **Raw bytes** — any content type other than multipart or a JSON envelope, e.g.
//!   `application/octet-stream` or `application/pdf`. The file name comes from the query
//!   (`name` or `filename`), else `X-File-Name`, else `Content-Disposition: attachment;
//!   filename*=UTF-8''…` / `filename=…`. `folder` and `conflict` come from the query or from
//!   `X-Folder` / `X-Conflict`; metadata from `metadata.<field>` query parameters or
//!   `X-Metadata-<field>` headers. The query wins over headers. Like the query, `X-…` header
//!   values are percent-decoded once (`X-File-Name: R%C3%A9sum%C3%A9.pdf` is `Résumé.pdf`), since
//!   headers cannot reliably carry non-ASCII text; traversal checks run on the decoded value. HTTP
//!   lower-cases header names, so metadata field names from headers arrive lower-case.
//! * **`multipart/form-data`** — every part with a `filename` is a file; the fields `folder`,
//!   `conflict` and `metadata.<field>` apply to all files and override the query and headers.
//!   Any other field is refused, so a typo is not silently ignored.
//! * **JSON envelope** — `application/json` (or `*/*+json`) when no file name is given in the query
//!   or headers (with one, a JSON body is just a `.json` file to store): an object
//!   `{"path", "content_base64" | "source_url", "conflict", "metadata", "content_type"}` or an array
//!   of them. `path` is the sub-folder and the name, e.g. `Invoices/2026/inv-17.pdf`.
//!
//! In a multipart body the file names come from the parts, so a `name` in the query or headers
//! is not used; a JSON envelope carries its own path, conflict mode and metadata, so the query and
//! headers are not used for those either.
//!
//! Limits are checked before anything large is allocated.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http::{HeaderMap, Method, header};
use serde_json::Value;
use url::Url;

use super::error::IngestError;
use super::names::{FileName, NamePolicy, SubPath};

/// Standard base64, padding optional (senders differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest metadata field name accepted.
const MAX_METADATA_KEY_LEN: usize = 128;

/// Size and count limits for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes, after any API Gateway base64 decoding.
    pub max_body_bytes: usize,
    /// Largest single file, in bytes, after any base64 decoding of `content_base64`.
    pub max_file_bytes: usize,
    /// Most files in one request.
    pub max_files: usize,
    /// Most metadata fields per file.
    pub max_metadata_fields: usize,
}

impl Default for Limits {
    /// 6 MiB body and file (a synchronous Lambda invocation carries at most 6 MB), 20 files,
    /// 64 metadata fields.
    fn default() -> Self {
        Limits {
            max_body_bytes: 6 * 1024 * 1024,
            max_file_bytes: 6 * 1024 * 1024,
            max_files: 20,
            max_metadata_fields: 64,
        }
    }
}

/// What to do when a file of the same name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictMode {
    /// Refuse the upload (the default: nothing is overwritten unless asked).
    #[default]
    Fail,
    /// Overwrite the existing file.
    Replace,
    /// Store under a new, unused name.
    Rename,
}

impl FromStr for ConflictMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fail" => Ok(ConflictMode::Fail),
            "replace" => Ok(ConflictMode::Replace),
            "rename" => Ok(ConflictMode::Rename),
            _ => Err(format!(
                "{s:?} is not a conflict mode; use fail, replace or rename"
            )),
        }
    }
}

/// Where a file's bytes are.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// The bytes themselves.
    Bytes(Bytes),
    /// An http(s) URL to download them from (JSON envelope only). The downloader must apply its
    /// own SSRF and size protections.
    SourceUrl(Url),
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            // Only scheme, host and path: a query string may carry a signed token.
            Content::SourceUrl(u) => write!(
                f,
                "SourceUrl({}://{}{})",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            ),
        }
    }
}

/// One file a request asks to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingFile {
    /// The checked (or sanitized) file name.
    pub name: FileName,
    /// Sub-folder inside the connection's destination folder, if any.
    pub folder: Option<SubPath>,
    /// The file's bytes or where to fetch them.
    pub content: Content,
    /// What to do if the name is taken.
    pub conflict: ConflictMode,
    /// Column values to set on the stored file, by field name.
    pub metadata: BTreeMap<String, String>,
    /// The declared media type, if the sender gave one.
    pub content_type: Option<String>,
}

/// An upload request as the function received it.
#[derive(Debug, Clone)]
pub struct RawRequest<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`, still percent-encoded.
    pub query: Option<&'a str>,
    /// The body, already base64-decoded if API Gateway flagged it (`lambda_http` does that).
    pub body: Bytes,
}

/// The fewest bytes `encoded_len` base64 characters can decode to (padding aside).
fn decoded_len_lower_bound(encoded_len: usize) -> usize {
    (encoded_len / 4 * 3).saturating_sub(2)
}

/// Parses an upload request into the files it carries (at least one).
pub async fn parse_request(
    req: RawRequest<'_>,
    limits: &Limits,
    names: &NamePolicy,
) -> Result<Vec<IncomingFile>, IngestError> {
    if req.method != Method::POST && req.method != Method::PUT {
        return Err(IngestError::MethodNotAllowed(req.method.to_string()));
    }
    if req.body.len() > limits.max_body_bytes {
        return Err(IngestError::PayloadTooLarge {
            what: "request body",
            limit: limits.max_body_bytes,
        });
    }
    let params = Params::from_request(req.query, req.headers)?;
    let content_type = header_text(req.headers, header::CONTENT_TYPE.as_str())?;
    let files = match classify(content_type.as_deref(), params.name.is_some())? {
        Kind::Raw => parse_raw(req.body, params, content_type, limits, names),
        Kind::Multipart => {
            let ct = content_type.unwrap_or_default();
            parse_multipart(req.body, &ct, params, limits, names).await
        }
        Kind::Json => parse_json(&req.body, limits, names),
    }?;
    for file in &files {
        check_metadata_policy(&file.metadata, names)?;
    }
    Ok(files)
}

enum Kind {
    Raw,
    Multipart,
    Json,
}

fn classify(content_type: Option<&str>, has_name: bool) -> Result<Kind, IngestError> {
    let Some(ct) = content_type else {
        return Ok(Kind::Raw);
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((top, sub)) = essence.split_once('/') else {
        return Err(IngestError::UnsupportedMediaType(ct.to_owned()));
    };
    if top.is_empty() || sub.is_empty() {
        return Err(IngestError::UnsupportedMediaType(ct.to_owned()));
    }
    if essence == "multipart/form-data" {
        return Ok(Kind::Multipart);
    }
    // Other multipart types and urlencoded forms cannot carry a file the way we read them.
    if top == "multipart" || essence == "application/x-www-form-urlencoded" {
        return Err(IngestError::UnsupportedMediaType(ct.to_owned()));
    }
    let is_json = essence == "application/json" || sub.ends_with("+json");
    if is_json && !has_name {
        return Ok(Kind::Json);
    }
    Ok(Kind::Raw)
}

/// Settings that can come from the query and headers (and, for multipart, form fields).
#[derive(Debug, Default)]
struct Params {
    name: Option<(String, &'static str)>,
    folder: Option<(String, &'static str)>,
    conflict: Option<(String, &'static str)>,
    metadata: BTreeMap<String, String>,
}

impl Params {
    fn from_request(query: Option<&str>, headers: &HeaderMap) -> Result<Self, IngestError> {
        let mut q = Params::default();
        if let Some(query) = query {
            for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                let value = value.into_owned();
                match key.as_ref() {
                    "name" | "filename" => set_once(&mut q.name, value, "name")?,
                    "folder" => set_once(&mut q.folder, value, "folder")?,
                    "conflict" => set_once(&mut q.conflict, value, "conflict")?,
                    k => {
                        if let Some(field) = k.strip_prefix("metadata.") {
                            insert_metadata(&mut q.metadata, field, value, k)?;
                        }
                        // Other parameters (API keys, tracing ids…) are not ours to judge.
                    }
                }
            }
        }

        let mut h = Params::default();
        if let Some(v) = x_header(headers, "x-file-name")? {
            h.name = Some((v, "X-File-Name"));
        } else if let Some(v) = content_disposition_filename(headers, "Content-Disposition")? {
            h.name = Some((v, "Content-Disposition"));
        }
        if let Some(v) = x_header(headers, "x-folder")? {
            h.folder = Some((v, "X-Folder"));
        }
        if let Some(v) = x_header(headers, "x-conflict")? {
            h.conflict = Some((v, "X-Conflict"));
        }
        for name in headers.keys() {
            if let Some(field) = name.as_str().strip_prefix("x-metadata-") {
                if let Some(value) = x_header(headers, name.as_str())? {
                    insert_metadata(&mut h.metadata, field, value, name.as_str())?;
                }
            }
        }

        // The query wins over headers, field by field.
        q.name = q.name.or(h.name);
        q.folder = q.folder.or(h.folder);
        q.conflict = q.conflict.or(h.conflict);
        for (k, v) in h.metadata {
            q.metadata.entry(k).or_insert(v);
        }
        Ok(q)
    }

    fn folder(&self, names: &NamePolicy) -> Result<Option<SubPath>, IngestError> {
        match &self.folder {
            // An empty folder means the destination itself.
            Some((f, _)) if f.is_empty() => Ok(None),
            Some((f, source)) => names
                .sub_path(f)
                .map(Some)
                .map_err(|e| IngestError::name(*source, e)),
            None => Ok(None),
        }
    }

    fn conflict(&self) -> Result<ConflictMode, IngestError> {
        match &self.conflict {
            Some((c, source)) => c.parse().map_err(|e| IngestError::bad_field(*source, e)),
            None => Ok(ConflictMode::default()),
        }
    }

    fn check_metadata_count(&self, limits: &Limits) -> Result<(), IngestError> {
        if self.metadata.len() > limits.max_metadata_fields {
            return Err(IngestError::bad_field(
                "metadata",
                format!(
                    "{} fields given; at most {} are allowed",
                    self.metadata.len(),
                    limits.max_metadata_fields
                ),
            ));
        }
        Ok(())
    }
}

fn set_once(
    slot: &mut Option<(String, &'static str)>,
    value: String,
    field: &'static str,
) -> Result<(), IngestError> {
    if slot.is_some() {
        return Err(IngestError::bad_field(field, "given more than once"));
    }
    *slot = Some((value, field));
    Ok(())
}

fn insert_metadata(
    map: &mut BTreeMap<String, String>,
    field: &str,
    value: String,
    source: &str,
) -> Result<(), IngestError> {
    let valid = !field.is_empty()
        && field.len() <= MAX_METADATA_KEY_LEN
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(IngestError::bad_field(
            source,
            format!(
                "metadata field names must be 1 to {MAX_METADATA_KEY_LEN} letters, digits, '_' or '-'"
            ),
        ));
    }
    if map.insert(field.to_owned(), value).is_some() {
        return Err(IngestError::bad_field(source, "given more than once"));
    }
    Ok(())
}

/// A single header's value as UTF-8 text, trimmed; `None` if absent; refused if repeated.
fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, IngestError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(IngestError::bad_field(name, "header given more than once"));
    }
    let text = std::str::from_utf8(value.as_bytes())
        .map_err(|_| IngestError::bad_field(name, "header is not valid UTF-8"))?;
    Ok(Some(text.trim().to_owned()))
}

/// An `X-…` header's value, percent-decoded once (see the module docs).
fn x_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, IngestError> {
    let Some(raw) = header_text(headers, name)? else {
        return Ok(None);
    };
    let decoded = percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .map_err(|_| {
            IngestError::bad_field(name, "percent-decoded header value is not valid UTF-8")
        })?;
    Ok(Some(decoded.into_owned()))
}

/// The file name of a `Content-Disposition` header: `filename*` (RFC 5987/8187) if present,
/// else `filename`.
fn content_disposition_filename(
    headers: &HeaderMap,
    source: &str,
) -> Result<Option<String>, IngestError> {
    let Some(value) = header_text(headers, header::CONTENT_DISPOSITION.as_str())? else {
        return Ok(None);
    };
    let params =
        disposition_params(&value).map_err(|reason| IngestError::bad_field(source, reason))?;
    let mut plain = None;
    let mut extended = None;
    for (key, val) in params {
        match key.as_str() {
            "filename" => plain = Some(val),
            "filename*" => {
                extended = Some(
                    decode_ext_value(&val)
                        .map_err(|reason| IngestError::bad_field(source, reason))?,
                )
            }
            _ => {}
        }
    }
    Ok(extended.or(plain))
}

/// Splits `type; key=value; key="quoted value"` into lower-cased keys and unquoted values.
fn disposition_params(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = match value.split_once(';') {
        Some((_, r)) => r,
        None => return Ok(out),
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Ok(out);
        }
        let (key, after) = rest.split_once('=').ok_or_else(|| {
            format!(
                "parameter {:?} has no value",
                rest.split(';').next().unwrap_or("")
            )
        })?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => val.push(escaped),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => val.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("unterminated quoted value for {key}"))?;
            out.push((key, val));
            rest = &quoted[end + 1..];
        } else {
            let (val, r) = after.split_once(';').unwrap_or((after, ""));
            out.push((key, val.trim().to_owned()));
            rest = r;
        }
    }
}

/// Decodes an RFC 8187 ext-value: `charset'language'percent-encoded`.
fn decode_ext_value(value: &str) -> Result<String, String> {
    let mut parts = value.splitn(3, '\'');
    let (Some(charset), Some(_lang), Some(encoded)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("filename* must look like UTF-8''name".to_owned());
    };
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
    match charset.to_ascii_lowercase().as_str() {
        "utf-8" => String::from_utf8(bytes).map_err(|_| "filename* is not valid UTF-8".to_owned()),
        "iso-8859-1" => Ok(bytes.into_iter().map(char::from).collect()),
        other => Err(format!(
            "filename* charset {other:?} is not supported; use UTF-8"
        )),
    }
}

fn parse_raw(
    body: Bytes,
    params: Params,
    content_type: Option<String>,
    limits: &Limits,
    names: &NamePolicy,
) -> Result<Vec<IncomingFile>, IngestError> {
    let Some((raw_name, source)) = &params.name else {
        return Err(IngestError::bad_field(
            "name",
            "no file name: give ?name=, an X-File-Name header or \
             Content-Disposition: attachment; filename=…",
        ));
    };
    if body.len() > limits.max_file_bytes {
        return Err(IngestError::PayloadTooLarge {
            what: "file",
            limit: limits.max_file_bytes,
        });
    }
    params.check_metadata_count(limits)?;
    let name = names
        .file_name(raw_name)
        .map_err(|e| IngestError::name(*source, e))?;
    Ok(vec![IncomingFile {
        name,
        folder: params.folder(names)?,
        content: Content::Bytes(body),
        conflict: params.conflict()?,
        metadata: params.metadata,
        content_type,
    }])
}

async fn parse_multipart(
    body: Bytes,
    content_type: &str,
    mut params: Params,
    limits: &Limits,
    names: &NamePolicy,
) -> Result<Vec<IncomingFile>, IngestError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| IngestError::Multipart("Content-Type has no boundary parameter".to_owned()))?;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limits.max_body_bytes as u64)
            .per_field(limits.max_file_bytes as u64),
    );
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);

    // Form fields override the query and headers; each may appear once.
    let mut form = Params::default();
    let mut files = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let field_name = field.name().unwrap_or("").to_owned();
        let filename = match content_disposition_filename(field.headers(), "Content-Disposition") {
            Ok(Some(n)) => Some(n),
            Ok(None) => field.file_name().map(str::to_owned),
            Err(e) => return Err(e),
        };
        if let Some(filename) = filename {
            let part_type = field.content_type().map(|m| m.to_string());
            let data = field.bytes().await.map_err(multipart_error)?;
            if filename.is_empty() && data.is_empty() {
                continue; // A browser form whose file input was left empty.
            }
            if files.len() == limits.max_files {
                return Err(IngestError::TooManyFiles {
                    count: files.len() + 1,
                    limit: limits.max_files,
                });
            }
            let label = format!("file {:?}", field_name);
            let name = names
                .file_name(&filename)
                .map_err(|e| IngestError::name(label, e))?;
            files.push((name, data, part_type));
            continue;
        }
        let value = field.text().await.map_err(multipart_error)?;
        match field_name.as_str() {
            "folder" => set_once(&mut form.folder, value, "folder")?,
            "conflict" => set_once(&mut form.conflict, value, "conflict")?,
            other => match other.strip_prefix("metadata.") {
                Some(key) => insert_metadata(&mut form.metadata, key, value, other)?,
                None if other.is_empty() => {
                    return Err(IngestError::Multipart(
                        "a part has no name in its Content-Disposition".to_owned(),
                    ));
                }
                None => {
                    return Err(IngestError::bad_field(
                        other,
                        "unknown form field; expected a file part, folder, conflict or metadata.<field>",
                    ));
                }
            },
        }
    }
    if files.is_empty() {
        return Err(IngestError::NoFile(
            "the multipart body has no file part (a part with a filename)",
        ));
    }

    params.folder = form.folder.or(params.folder);
    params.conflict = form.conflict.or(params.conflict);
    for (k, v) in form.metadata {
        params.metadata.insert(k, v);
    }
    params.check_metadata_count(limits)?;
    let folder = params.folder(names)?;
    let conflict = params.conflict()?;
    Ok(files
        .into_iter()
        .map(|(name, data, content_type)| IncomingFile {
            name,
            folder: folder.clone(),
            content: Content::Bytes(data),
            conflict,
            metadata: params.metadata.clone(),
            content_type,
        })
        .collect())
}

fn multipart_error(e: multer::Error) -> IngestError {
    match e {
        multer::Error::FieldSizeExceeded { limit, .. } => IngestError::PayloadTooLarge {
            what: "file",
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        },
        multer::Error::StreamSizeExceeded { limit } => IngestError::PayloadTooLarge {
            what: "request body",
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        },
        other => IngestError::Multipart(other.to_string()),
    }
}

const JSON_FIELDS: &str = "path, content_base64, source_url, conflict, metadata, content_type";

fn parse_json(
    body: &[u8],
    limits: &Limits,
    names: &NamePolicy,
) -> Result<Vec<IncomingFile>, IngestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
    match value {
        Value::Object(obj) => Ok(vec![json_file(obj, "", limits, names)?]),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(IngestError::NoFile("the JSON array holds no file"));
            }
            if items.len() > limits.max_files {
                return Err(IngestError::TooManyFiles {
                    count: items.len(),
                    limit: limits.max_files,
                });
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(obj) => json_file(obj, &format!("[{i}]."), limits, names),
                    _ => Err(IngestError::Json(format!("element [{i}] is not an object"))),
                })
                .collect()
        }
        _ => Err(IngestError::Json(
            "expected an object (or an array of objects) with path and content_base64 or source_url"
                .to_owned(),
        )),
    }
}

fn json_file(
    obj: serde_json::Map<String, Value>,
    prefix: &str,
    limits: &Limits,
    names: &NamePolicy,
) -> Result<IncomingFile, IngestError> {
    let field = |name: &str| format!("{prefix}{name}");
    let mut path = None;
    let mut content_base64 = None;
    let mut source_url = None;
    let mut conflict = ConflictMode::default();
    let mut metadata = BTreeMap::new();
    let mut content_type = None;
    for (key, value) in obj {
        let text = |v: Value| match v {
            Value::String(s) => Ok(s),
            _ => Err(IngestError::bad_field(field(&key), "must be a string")),
        };
        match key.as_str() {
            "path" => path = Some(text(value)?),
            "content_base64" => content_base64 = Some(text(value)?),
            "source_url" => source_url = Some(text(value)?),
            "content_type" => content_type = Some(text(value)?),
            "conflict" => {
                conflict = text(value)?
                    .parse()
                    .map_err(|e| IngestError::bad_field(field("conflict"), e))?
            }
            "metadata" => metadata = json_metadata(value, prefix, limits)?,
            other => {
                return Err(IngestError::bad_field(
                    field(other),
                    format!("unknown field; expected {JSON_FIELDS}"),
                ));
            }
        }
    }

    let path = path.ok_or_else(|| IngestError::bad_field(field("path"), "is required"))?;
    let (folder, name) = split_path(&path, names).map_err(|e| match e {
        IngestError::InvalidName { source, .. } => IngestError::name(field("path"), source),
        other => other,
    })?;

    let content = match (content_base64, source_url) {
        (Some(b64), None) => {
            Content::Bytes(decode_file_base64(&b64, limits, &field("content_base64"))?)
        }
        (None, Some(url)) => Content::SourceUrl(parse_source_url(&url, &field("source_url"))?),
        (Some(_), Some(_)) => {
            return Err(IngestError::bad_field(
                field("content_base64"),
                "give exactly one of content_base64 and source_url, not both",
            ));
        }
        (None, None) => {
            return Err(IngestError::bad_field(
                field("content_base64"),
                "give exactly one of content_base64 and source_url",
            ));
        }
    };
    Ok(IncomingFile {
        name,
        folder,
        content,
        conflict,
        metadata,
        content_type,
    })
}

/// A JSON `metadata` object (field → string, number or boolean; `null` skips the field), with
/// error labels starting with `prefix`. The connection's field policy is checked separately
/// ([`check_metadata_policy`]).
pub(crate) fn json_metadata(
    value: Value,
    prefix: &str,
    limits: &Limits,
) -> Result<BTreeMap<String, String>, IngestError> {
    let Value::Object(m) = value else {
        return Err(IngestError::bad_field(
            format!("{prefix}metadata"),
            "must be an object",
        ));
    };
    if m.len() > limits.max_metadata_fields {
        return Err(IngestError::bad_field(
            format!("{prefix}metadata"),
            format!(
                "{} fields given; at most {} are allowed",
                m.len(),
                limits.max_metadata_fields
            ),
        ));
    }
    let mut metadata = BTreeMap::new();
    for (k, v) in m {
        let label = format!("{prefix}metadata.{k}");
        let v = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => {
                return Err(IngestError::bad_field(
                    label,
                    "must be a string, number or boolean",
                ));
            }
        };
        insert_metadata(&mut metadata, &k, v, &label)?;
    }
    Ok(metadata)
}

/// Refuses metadata fields the connection does not let senders set.
pub(crate) fn check_metadata_policy(
    metadata: &BTreeMap<String, String>,
    names: &NamePolicy,
) -> Result<(), IngestError> {
    for field in metadata.keys() {
        names
            .metadata_field(field)
            .map_err(|e| IngestError::name(format!("metadata.{field}"), e))?;
    }
    Ok(())
}

/// Splits `sub/folder/name.ext` into a checked sub-folder and file name.
fn split_path(path: &str, names: &NamePolicy) -> Result<(Option<SubPath>, FileName), IngestError> {
    use super::names::{NameError, Traversal};
    let err = |e| IngestError::name("path", e);
    if path.starts_with('/') {
        return Err(err(NameError::Traversal(Traversal::Absolute)));
    }
    if path.contains('\\') {
        return Err(err(NameError::Traversal(Traversal::Backslash)));
    }
    match path.rsplit_once('/') {
        Some((folder, name)) => {
            // `a//b.txt` leaves `a/` here, which sub_path would otherwise accept as `a`.
            if folder.ends_with('/') || folder.is_empty() {
                let kind = if folder.is_empty() {
                    Traversal::Absolute
                } else {
                    Traversal::EmptySegment
                };
                return Err(err(NameError::Traversal(kind)));
            }
            // Traversal in the folder part is reported before any problem with the name.
            let folder = names.sub_path(folder).map_err(err)?;
            let name = names.file_name(name).map_err(err)?;
            Ok((Some(folder), name))
        }
        None => Ok((None, names.file_name(path).map_err(err)?)),
    }
}

fn decode_file_base64(b64: &str, limits: &Limits, label: &str) -> Result<Bytes, IngestError> {
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let too_large = IngestError::PayloadTooLarge {
        what: "file",
        limit: limits.max_file_bytes,
    };
    if decoded_len_lower_bound(compact.len()) > limits.max_file_bytes {
        return Err(too_large);
    }
    let bytes = BASE64
        .decode(compact.as_bytes())
        .map_err(|e| IngestError::bad_field(label, format!("is not valid base64 ({e})")))?;
    if bytes.len() > limits.max_file_bytes {
        return Err(too_large);
    }
    Ok(Bytes::from(bytes))
}

fn parse_source_url(raw: &str, label: &str) -> Result<Url, IngestError> {
    let url = Url::parse(raw)
        .map_err(|e| IngestError::bad_field(label, format!("is not a valid URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(IngestError::bad_field(
            label,
            "must be an http or https URL",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(IngestError::bad_field(
            label,
            "must not contain credentials",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(IngestError::bad_field(label, "must name a host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::names::{NameError, Traversal};
    use http::HeaderValue;

    /// The status and code a refusal answers with.
    fn status_code(e: &IngestError) -> (u16, &'static str) {
        let api = crate::api::ApiError::from(e);
        (api.status().as_u16(), api.code())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    async fn parse_with(
        method: Method,
        hdrs: &[(&str, &str)],
        query: Option<&str>,
        body: impl Into<Bytes>,
        limits: Limits,
        names: NamePolicy,
    ) -> Result<Vec<IncomingFile>, IngestError> {
        let h = headers(hdrs);
        parse_request(
            RawRequest {
                method: &method,
                headers: &h,
                query,
                body: body.into(),
            },
            &limits,
            &names,
        )
        .await
    }

    async fn parse(
        hdrs: &[(&str, &str)],
        query: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<Vec<IncomingFile>, IngestError> {
        parse_with(
            Method::POST,
            hdrs,
            query,
            body,
            Limits::default(),
            NamePolicy::default(),
        )
        .await
    }

    fn bytes_of(f: &IncomingFile) -> &[u8] {
        match &f.content {
            Content::Bytes(b) => b,
            Content::SourceUrl(u) => panic!("expected bytes, got {u}"),
        }
    }

    fn one(files: Vec<IncomingFile>) -> IncomingFile {
        assert_eq!(files.len(), 1, "{files:?}");
        files.into_iter().next().unwrap()
    }

    // ---- raw bytes ----

    #[tokio::test]
    async fn raw_with_query_parameters() {
        let f = one(
            parse(
                &[("content-type", "application/pdf")],
                Some("name=Q1%20report.pdf&folder=Finance%2F2026&conflict=Replace&metadata.Title=Q1+report&metadata.Year=2026&api_key=ignored"),
                &b"%PDF-1.7 bytes"[..],
            )
            .await
            .unwrap(),
        );
        assert_eq!(f.name.as_str(), "Q1 report.pdf");
        assert_eq!(f.folder.as_ref().unwrap().as_str(), "Finance/2026");
        assert_eq!(f.conflict, ConflictMode::Replace);
        assert_eq!(f.metadata["Title"], "Q1 report");
        assert_eq!(f.metadata["Year"], "2026");
        assert_eq!(f.metadata.len(), 2);
        assert_eq!(f.content_type.as_deref(), Some("application/pdf"));
        assert_eq!(bytes_of(&f), b"%PDF-1.7 bytes");
    }

    #[tokio::test]
    async fn raw_with_headers() {
        let f = one(parse(
            &[
                ("content-type", "application/octet-stream"),
                ("x-file-name", "data.csv"),
                ("x-folder", "Imports"),
                ("x-conflict", "rename"),
                ("x-metadata-source", "crm"),
                ("x-metadata-batch_id", "42"),
            ],
            None,
            &b"a,b\n1,2\n"[..],
        )
        .await
        .unwrap());
        assert_eq!(f.name.as_str(), "data.csv");
        assert_eq!(f.folder.unwrap().as_str(), "Imports");
        assert_eq!(f.conflict, ConflictMode::Rename);
        assert_eq!(
            f.metadata.into_iter().collect::<Vec<_>>(),
            [
                ("batch_id".to_owned(), "42".to_owned()),
                ("source".to_owned(), "crm".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn raw_without_content_type_defaults_fail_and_no_folder() {
        let f = one(parse(&[("x-file-name", "a.txt")], None, "hi")
            .await
            .unwrap());
        assert_eq!(f.conflict, ConflictMode::Fail);
        assert_eq!(f.folder, None);
        assert_eq!(f.content_type, None);
        assert!(f.metadata.is_empty());
        // An empty folder parameter means the destination itself.
        let f = one(parse(&[], Some("name=a.txt&folder="), "hi").await.unwrap());
        assert_eq!(f.folder, None);
    }

    #[tokio::test]
    async fn content_disposition_names() {
        let cases = [
            (r#"attachment; filename="plain name.txt""#, "plain name.txt"),
            ("attachment; filename=bare.txt", "bare.txt"),
            (
                r#"attachment; filename="fallback.txt"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%E2%9C%93.pdf"#,
                "Résumé ✓.pdf",
            ),
            (
                "attachment; FILENAME*=utf-8'en'%E6%97%A5%E6%9C%AC.txt",
                "日本.txt",
            ),
            ("attachment; filename*=ISO-8859-1''caf%E9.txt", "café.txt"),
            (r#"attachment; filename="say \"hi\".txt""#, "say \"hi\".txt"),
        ];
        for (cd, want) in cases {
            let got = parse(&[("content-disposition", cd)], None, "x").await;
            if want.contains('"') {
                // Quotes are illegal in SharePoint names: the escape was decoded, then refused.
                assert_eq!(
                    got.unwrap_err(),
                    IngestError::name("Content-Disposition", NameError::IllegalChar { ch: '"' })
                );
                continue;
            }
            assert_eq!(one(got.unwrap()).name.as_str(), want, "{cd}");
        }
        let bad = parse(
            &[("content-disposition", "attachment; filename*=UTF-16''%00a")],
            None,
            "x",
        )
        .await
        .unwrap_err();
        assert_eq!(status_code(&bad).0, 400);
        assert!(bad.to_string().contains("charset"), "{bad}");
        let unterminated = parse(
            &[("content-disposition", r#"attachment; filename="oops.txt"#)],
            None,
            "x",
        )
        .await
        .unwrap_err();
        assert!(unterminated.to_string().contains("unterminated"));
        // Encoded traversal inside filename* is decoded once, then refused as traversal.
        let trav = parse(
            &[(
                "content-disposition",
                "attachment; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd",
            )],
            None,
            "x",
        )
        .await
        .unwrap_err();
        assert_eq!(status_code(&trav), (400, "invalid_path"));
    }

    #[tokio::test]
    async fn x_headers_are_percent_decoded_once() {
        let f = one(parse(
            &[
                ("x-file-name", "R%C3%A9sum%C3%A9%20100%25.pdf"),
                ("x-folder", "Bewerbungen/M%C3%A4rz"),
                ("x-metadata-owner", "Z%C3%BCrich"),
                ("x-metadata-note", "50%off"),
            ],
            None,
            "x",
        )
        .await
        .unwrap());
        assert_eq!(f.name.as_str(), "Résumé 100%.pdf");
        assert_eq!(f.folder.unwrap().as_str(), "Bewerbungen/März");
        assert_eq!(f.metadata["owner"], "Zürich");
        // Not a valid escape: kept as it is.
        assert_eq!(f.metadata["note"], "50%off");
        let err = parse(&[("x-file-name", "bad%FF.txt")], None, "x")
            .await
            .unwrap_err();
        assert_eq!(
            err,
            IngestError::bad_field(
                "x-file-name",
                "percent-decoded header value is not valid UTF-8"
            )
        );
    }

    #[tokio::test]
    async fn query_wins_over_headers() {
        let f = one(parse(
            &[
                ("x-file-name", "header.txt"),
                ("x-folder", "HeaderFolder"),
                ("x-metadata-k", "header"),
            ],
            Some("filename=query.txt&folder=QueryFolder&metadata.k=query"),
            "x",
        )
        .await
        .unwrap());
        assert_eq!(f.name.as_str(), "query.txt");
        assert_eq!(f.folder.unwrap().as_str(), "QueryFolder");
        assert_eq!(f.metadata["k"], "query");
    }

    #[tokio::test]
    async fn raw_refusals() {
        let no_name = parse(&[("content-type", "text/plain")], None, "x")
            .await
            .unwrap_err();
        assert_eq!(status_code(&no_name).0, 400);
        assert!(
            no_name.to_string().starts_with("name: no file name"),
            "{no_name}"
        );

        let dup = parse(&[], Some("name=a.txt&filename=b.txt"), "x")
            .await
            .unwrap_err();
        assert_eq!(dup, IngestError::bad_field("name", "given more than once"));

        let conflict = parse(&[], Some("name=a.txt&conflict=overwrite"), "x")
            .await
            .unwrap_err();
        assert_eq!(status_code(&conflict).0, 400);
        assert!(
            conflict
                .to_string()
                .starts_with("conflict: \"overwrite\" is not a conflict mode")
        );

        let bad_key = parse(&[], Some("name=a.txt&metadata.bad%20key=1"), "x")
            .await
            .unwrap_err();
        assert_eq!(status_code(&bad_key).0, 400);
        assert!(
            bad_key.to_string().starts_with("metadata.bad key:"),
            "{bad_key}"
        );

        let illegal = parse(&[], Some("name=a%3Fb.txt"), "x").await.unwrap_err();
        assert_eq!(status_code(&illegal), (422, "invalid_name"));
        assert!(
            illegal.to_string().starts_with("name: name contains '?'"),
            "{illegal}"
        );

        let reserved = parse(&[("x-file-name", "CON.txt")], None, "x")
            .await
            .unwrap_err();
        assert_eq!(status_code(&reserved).0, 422);

        let twice = parse(&[("x-file-name", "a"), ("x-file-name", "b")], None, "x")
            .await
            .unwrap_err();
        assert_eq!(status_code(&twice).0, 400);
    }

    #[tokio::test]
    async fn folder_traversal_from_query_and_headers() {
        // The query is decoded once; what remains must not be another encoded traversal.
        let cases = [
            ("folder=..%2Fsecret", Traversal::DotSegment),
            ("folder=%2e%2e%2f", Traversal::DotSegment),
            ("folder=%252e%252e%252f", Traversal::PercentEncoded),
            ("folder=..%5c", Traversal::Backslash),
            ("folder=%2Fabs", Traversal::Absolute),
            ("folder=C%3A%5Cx", Traversal::Backslash),
            ("folder=C%3A", Traversal::DriveLetter),
            ("folder=a%00b", Traversal::Nul),
        ];
        for (q, kind) in cases {
            let err = parse(&[], Some(&format!("name=a.txt&{q}")), "x")
                .await
                .unwrap_err();
            assert_eq!(
                err,
                IngestError::name("folder", NameError::Traversal(kind)),
                "{q}"
            );
            assert_eq!(status_code(&err), (400, "invalid_path"));
        }
        // Headers are decoded once too, with the same outcome.
        for (folder, kind) in [
            ("%2e%2e", Traversal::DotSegment),
            ("..%2Fx", Traversal::DotSegment),
            ("%252e%252e", Traversal::PercentEncoded),
            ("..%5c", Traversal::Backslash),
            ("%00", Traversal::Nul),
        ] {
            let err = parse(&[("x-file-name", "a.txt"), ("x-folder", folder)], None, "x")
                .await
                .unwrap_err();
            assert_eq!(
                err,
                IngestError::name("X-Folder", NameError::Traversal(kind)),
                "{folder}"
            );
        }
    }

    #[tokio::test]
    async fn sanitize_policy_cleans_request_names() {
        let f = one(parse_with(
            Method::PUT,
            &[
                ("x-file-name", " invoice: 17?.pdf "),
                ("x-folder", "In|box/CON"),
            ],
            None,
            "x",
            Limits::default(),
            NamePolicy::new().sanitize(true),
        )
        .await
        .unwrap());
        assert_eq!(f.name.as_str(), "invoice_ 17_.pdf");
        assert_eq!(f.folder.unwrap().as_str(), "In_box/_CON");
    }

    #[tokio::test]
    async fn json_content_type_with_name_is_a_raw_file() {
        let f = one(parse(
            &[("content-type", "application/json")],
            Some("name=payload.json"),
            r#"{"any":"thing"}"#,
        )
        .await
        .unwrap());
        assert_eq!(f.name.as_str(), "payload.json");
        assert_eq!(bytes_of(&f), br#"{"any":"thing"}"#);
    }

    // ---- limits, media types, methods ----

    #[tokio::test]
    async fn oversize_body_and_file() {
        let limits = Limits {
            max_body_bytes: 1024,
            max_file_bytes: 100,
            ..Limits::default()
        };
        let big = vec![b'x'; 1025];
        let err = parse_with(
            Method::POST,
            &[],
            Some("name=a.bin"),
            big,
            limits,
            NamePolicy::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(status_code(&err), (413, "payload_too_large"));
        assert_eq!(
            err.to_string(),
            "request body is larger than the limit of 1024 bytes (0.00 MiB)"
        );
        let file = vec![b'x'; 101];
        let err = parse_with(
            Method::POST,
            &[],
            Some("name=a.bin"),
            file,
            limits,
            NamePolicy::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            IngestError::PayloadTooLarge {
                what: "file",
                limit: 100
            }
        );
        // Exactly at the limit is fine.
        let ok = parse_with(
            Method::POST,
            &[],
            Some("name=a.bin"),
            vec![b'x'; 100],
            limits,
            NamePolicy::new(),
        )
        .await;
        assert!(ok.is_ok());
    }

    #[tokio::test]
    async fn unsupported_media_types() {
        for ct in [
            "multipart/mixed; boundary=x",
            "application/x-www-form-urlencoded",
            "nonsense",
            "/json",
        ] {
            let err = parse(&[("content-type", ct)], Some("name=a.txt"), "x")
                .await
                .unwrap_err();
            assert_eq!(status_code(&err), (415, "unsupported_media_type"), "{ct}");
            assert!(err.to_string().contains(ct));
        }
    }

    #[tokio::test]
    async fn only_post_and_put() {
        let err = parse_with(
            Method::GET,
            &[],
            Some("name=a.txt"),
            "",
            Limits::default(),
            NamePolicy::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(status_code(&err), (405, "method_not_allowed"));
    }

    // ---- multipart ----

    const BOUNDARY: &str = "----spbridgeBoundary7MA4YWxk";

    /// (field name, filename, content type, data)
    type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

    fn multipart_body(parts: &[Part<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, ctype, data) in parts {
            out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
            let mut cd = format!("Content-Disposition: form-data; name=\"{name}\"");
            if let Some(f) = filename {
                cd.push_str(&format!("; filename=\"{f}\""));
            }
            out.extend_from_slice(cd.as_bytes());
            out.extend_from_slice(b"\r\n");
            if let Some(t) = ctype {
                out.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        out
    }

    fn multipart_ct() -> String {
        format!("multipart/form-data; boundary={BOUNDARY}")
    }

    #[tokio::test]
    async fn multipart_two_files_and_fields() {
        let body = multipart_body(&[
            ("folder", None, None, b"Scans/2026"),
            (
                "file",
                Some("page 1.png"),
                Some("image/png"),
                b"\x89PNG\r\n\x1a\nONE",
            ),
            ("metadata.Department", None, None, "Fínance".as_bytes()),
            (
                "file",
                Some("page 2.png"),
                Some("image/png"),
                b"\x89PNG\r\n\x1a\nTWO",
            ),
            ("conflict", None, None, b"rename"),
        ]);
        let ct = multipart_ct();
        let files = parse(
            &[("content-type", &ct), ("x-metadata-source", "scanner")],
            Some("conflict=replace"),
            body,
        )
        .await
        .unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name.as_str(), "page 1.png");
        assert_eq!(files[1].name.as_str(), "page 2.png");
        assert_eq!(bytes_of(&files[0]), b"\x89PNG\r\n\x1a\nONE");
        assert_eq!(bytes_of(&files[1]), b"\x89PNG\r\n\x1a\nTWO");
        for f in &files {
            assert_eq!(f.folder.as_ref().unwrap().as_str(), "Scans/2026");
            // The form field overrides the query.
            assert_eq!(f.conflict, ConflictMode::Rename);
            assert_eq!(f.metadata["Department"], "Fínance");
            assert_eq!(f.metadata["source"], "scanner");
            assert_eq!(f.content_type.as_deref(), Some("image/png"));
        }
    }

    #[tokio::test]
    async fn multipart_filename_star_and_empty_file_input() {
        let mut body = Vec::new();
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(
            b"Content-Disposition: form-data; name=\"file\"; filename=\"x.txt\"; filename*=UTF-8''%E2%82%AC.txt\r\n\r\neuro\r\n",
        );
        // A browser's untouched file input: empty filename, empty content. Skipped.
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(b"Content-Disposition: form-data; name=\"other\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n");
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        let ct = multipart_ct();
        let f = one(parse(&[("content-type", &ct)], None, body).await.unwrap());
        assert_eq!(f.name.as_str(), "€.txt");
        assert_eq!(bytes_of(&f), b"euro");
    }

    #[tokio::test]
    async fn multipart_truncated() {
        let body = multipart_body(&[("file", Some("a.txt"), None, b"hello world")]);
        let cut = body[..body.len() - 30].to_vec();
        let ct = multipart_ct();
        let err = parse(&[("content-type", &ct)], None, cut)
            .await
            .unwrap_err();
        assert_eq!(status_code(&err), (400, "bad_request"));
        assert!(
            err.to_string()
                .starts_with("malformed multipart/form-data body: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn multipart_refusals() {
        let body = multipart_body(&[("file", Some("a.txt"), None, b"x")]);
        let err = parse(
            &[("content-type", "multipart/form-data")],
            None,
            body.clone(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            IngestError::Multipart("Content-Type has no boundary parameter".into())
        );

        let ct = multipart_ct();
        let fields_only = multipart_body(&[("folder", None, None, b"x")]);
        let err = parse(&[("content-type", &ct)], None, fields_only)
            .await
            .unwrap_err();
        assert_eq!(status_code(&err).0, 400);
        assert!(err.to_string().contains("no file part"));

        let unknown = multipart_body(&[
            ("file", Some("a.txt"), None, b"x"),
            ("fodler", None, None, b"typo"),
        ]);
        let err = parse(&[("content-type", &ct)], None, unknown)
            .await
            .unwrap_err();
        assert_eq!(status_code(&err).0, 400);
        assert!(
            err.to_string().starts_with("fodler: unknown form field"),
            "{err}"
        );

        let twice = multipart_body(&[
            ("file", Some("a.txt"), None, b"x"),
            ("folder", None, None, b"a"),
            ("folder", None, None, b"b"),
        ]);
        let err = parse(&[("content-type", &ct)], None, twice)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            IngestError::bad_field("folder", "given more than once")
        );

        let bad_name = multipart_body(&[("file", Some("a<b>.txt"), None, b"x")]);
        let err = parse(&[("content-type", &ct)], None, bad_name)
            .await
            .unwrap_err();
        assert_eq!(status_code(&err), (422, "invalid_name"));

        let trav = multipart_body(&[("file", Some("../../x.txt"), None, b"x")]);
        let err = parse(&[("content-type", &ct)], None, trav)
            .await
            .unwrap_err();
        assert_eq!(status_code(&err), (400, "invalid_path"));

        let not_multipart = b"just some bytes".to_vec();
        let err = parse(&[("content-type", &ct)], None, not_multipart)
            .await
            .unwrap_err();
        assert_eq!(status_code(&err).0, 400);
    }

    #[tokio::test]
    async fn multipart_limits() {
        let ct = multipart_ct();
        let limits = Limits {
            max_file_bytes: 10,
            max_files: 2,
            ..Limits::default()
        };
        let big = multipart_body(&[("file", Some("a.txt"), None, &[b'x'; 11])]);
        let err = parse_with(
            Method::POST,
            &[("content-type", &ct)],
            None,
            big,
            limits,
            NamePolicy::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            IngestError::PayloadTooLarge {
                what: "file",
                limit: 10
            }
        );
        let three = multipart_body(&[
            ("f", Some("a.txt"), None, b"1"),
            ("f", Some("b.txt"), None, b"2"),
            ("f", Some("c.txt"), None, b"3"),
        ]);
        let err = parse_with(
            Method::POST,
            &[("content-type", &ct)],
            None,
            three,
            limits,
            NamePolicy::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err, IngestError::TooManyFiles { count: 3, limit: 2 });
    }

    // ---- JSON ----

    async fn json(body: &str) -> Result<Vec<IncomingFile>, IngestError> {
        parse(
            &[("content-type", "application/json; charset=utf-8")],
            None,
            body.to_owned(),
        )
        .await
    }

    #[tokio::test]
    async fn json_object_with_base64() {
        let f = one(
            json(
                r#"{"path": "Contracts/2026/acme.pdf", "content_base64": "JVBERi0x\nLjc=",
                    "conflict": "replace", "content_type": "application/pdf",
                    "metadata": {"Customer": "ACME", "Amount": 1200.5, "Signed": true, "Skip": null}}"#,
            )
            .await
            .unwrap(),
        );
        assert_eq!(f.name.as_str(), "acme.pdf");
        assert_eq!(f.folder.unwrap().as_str(), "Contracts/2026");
        assert_eq!(bytes_of_content(&f.content), b"%PDF-1.7");
        assert_eq!(f.conflict, ConflictMode::Replace);
        assert_eq!(f.content_type.as_deref(), Some("application/pdf"));
        assert_eq!(f.metadata["Customer"], "ACME");
        assert_eq!(f.metadata["Amount"], "1200.5");
        assert_eq!(f.metadata["Signed"], "true");
        assert!(!f.metadata.contains_key("Skip"));
    }

    fn bytes_of_content(c: &Content) -> &[u8] {
        match c {
            Content::Bytes(b) => b,
            Content::SourceUrl(_) => panic!("expected bytes"),
        }
    }

    #[tokio::test]
    async fn json_array_and_source_url() {
        let files = json(
            r#"[{"path": "a.txt", "content_base64": "aGk"},
                {"path": "b.bin", "source_url": "https://files.example.com/b.bin?sig=secret"}]"#,
        )
        .await
        .unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].folder, None);
        assert_eq!(bytes_of(&files[0]), b"hi");
        match &files[1].content {
            Content::SourceUrl(u) => {
                assert_eq!(u.as_str(), "https://files.example.com/b.bin?sig=secret")
            }
            other => panic!("{other:?}"),
        }
        let dbg = format!("{:?}", files[1]);
        assert!(
            dbg.contains("SourceUrl(https://files.example.com/b.bin)"),
            "{dbg}"
        );
        assert!(!dbg.contains("secret"));
        assert!(format!("{:?}", files[0]).contains("Bytes(2 bytes)"));
    }

    #[tokio::test]
    async fn json_refusals_name_the_field() {
        let both = json(
            r#"{"path": "a.txt", "content_base64": "aGk=", "source_url": "https://x.test/a"}"#,
        )
        .await
        .unwrap_err();
        assert_eq!(status_code(&both).0, 400);
        assert!(
            both.to_string().starts_with(
                "content_base64: give exactly one of content_base64 and source_url, not both"
            ),
            "{both}"
        );

        let neither = json(r#"{"path": "a.txt"}"#).await.unwrap_err();
        assert!(
            neither
                .to_string()
                .starts_with("content_base64: give exactly one")
        );

        let bad_b64 = json(r#"{"path": "a.txt", "content_base64": "not*base64"}"#)
            .await
            .unwrap_err();
        assert_eq!(status_code(&bad_b64).0, 400);
        assert!(
            bad_b64
                .to_string()
                .starts_with("content_base64: is not valid base64"),
            "{bad_b64}"
        );

        let bad_in_array = json(r#"[{"path": "a.txt", "content_base64": "aGk="}, {"path": "b.txt", "content_base64": "%%%"}]"#)
            .await
            .unwrap_err();
        assert!(
            bad_in_array.to_string().starts_with("[1].content_base64:"),
            "{bad_in_array}"
        );

        let syntax = json(r#"{"path": "a.txt", "content_base64": "#)
            .await
            .unwrap_err();
        assert_eq!(status_code(&syntax), (400, "bad_request"));
        assert!(syntax.to_string().starts_with("invalid JSON body:"));

        let no_path = json(r#"{"content_base64": "aGk="}"#).await.unwrap_err();
        assert_eq!(no_path, IngestError::bad_field("path", "is required"));

        let wrong_type = json(r#"{"path": 5, "content_base64": "aGk="}"#)
            .await
            .unwrap_err();
        assert_eq!(
            wrong_type,
            IngestError::bad_field("path", "must be a string")
        );

        let unknown = json(r#"{"path": "a.txt", "contentBase64": "aGk="}"#)
            .await
            .unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("contentBase64: unknown field")
        );

        for (url, why) in [
            ("ftp://x.test/a", "must be an http or https URL"),
            ("file:///etc/passwd", "must be an http or https URL"),
            ("https://user:pw@x.test/a", "must not contain credentials"),
        ] {
            let body = format!(r#"{{"path": "a.txt", "source_url": "{url}"}}"#);
            let err = json(&body).await.unwrap_err();
            assert_eq!(err, IngestError::bad_field("source_url", why), "{url}");
            assert!(!err.to_string().contains("pw"));
        }
        let not_url = json(r#"{"path": "a.txt", "source_url": "not a url"}"#)
            .await
            .unwrap_err();
        assert!(
            not_url
                .to_string()
                .starts_with("source_url: is not a valid URL")
        );

        let scalar = json("42").await.unwrap_err();
        assert_eq!(status_code(&scalar).0, 400);
        let empty = json("[]").await.unwrap_err();
        assert_eq!(status_code(&empty).0, 400);

        let bad_meta =
            json(r#"{"path": "a.txt", "content_base64": "aGk=", "metadata": {"k": [1]}}"#)
                .await
                .unwrap_err();
        assert_eq!(
            bad_meta,
            IngestError::bad_field("metadata.k", "must be a string, number or boolean")
        );
    }

    #[tokio::test]
    async fn json_path_rules() {
        let trav = [
            ("../a.txt", Traversal::DotSegment),
            ("x/../../a.txt", Traversal::DotSegment),
            ("/abs/a.txt", Traversal::Absolute),
            ("x\\..\\a.txt", Traversal::Backslash),
            ("x//a.txt", Traversal::EmptySegment),
            ("%2e%2e/a.txt", Traversal::PercentEncoded),
        ];
        for (path, kind) in trav {
            let body = format!(
                r#"{{"path": {}, "content_base64": "aGk="}}"#,
                serde_json::to_string(path).unwrap()
            );
            let err = json(&body).await.unwrap_err();
            assert_eq!(
                err,
                IngestError::name("path", NameError::Traversal(kind)),
                "{path}"
            );
            assert_eq!(status_code(&err).0, 400);
        }
        let err = json(r#"{"path": "ok/na*me.txt", "content_base64": "aGk="}"#)
            .await
            .unwrap_err();
        assert_eq!(status_code(&err), (422, "invalid_name"));
        let err = json(r#"{"path": "folder/", "content_base64": "aGk="}"#)
            .await
            .unwrap_err();
        assert_eq!(err, IngestError::name("path", NameError::Empty));
    }

    #[tokio::test]
    async fn json_base64_size_limit() {
        let limits = Limits {
            max_file_bytes: 3,
            ..Limits::default()
        };
        let h = [("content-type", "application/json")];
        let ok = parse_with(
            Method::POST,
            &h,
            None,
            r#"{"path": "a", "content_base64": "YWJj"}"#,
            limits,
            NamePolicy::new(),
        )
        .await;
        assert!(ok.is_ok());
        let err = parse_with(
            Method::POST,
            &h,
            None,
            r#"{"path": "a", "content_base64": "YWJjZA=="}"#,
            limits,
            NamePolicy::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            IngestError::PayloadTooLarge {
                what: "file",
                limit: 3
            }
        );
        // Far too long: refused from the encoded length, before decoding.
        let long = format!(
            r#"{{"path": "a", "content_base64": "{}"}}"#,
            "!".repeat(400)
        );
        let err = parse_with(Method::POST, &h, None, long, limits, NamePolicy::new())
            .await
            .unwrap_err();
        assert_eq!(status_code(&err).0, 413);
    }
}
