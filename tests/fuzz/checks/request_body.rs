//! Upload request bodies (raw, multipart/form-data, JSON envelope) through
//! `shared::ingest::parse_request`.
//!
//! Input: one selector byte, a first line (the query string, or the Content-Type for the last
//! selector), then the body. Invariants: nothing panics; a refusal is a 4xx; an accepted request
//! carries 1..=max_files files inside the limits, whose names and folders parse again to
//! themselves and make a path under the library.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header::CONTENT_TYPE};
use shared::api::ApiError;
use shared::ingest::{
    Content, FileName, Limits, NamePolicy, RawRequest, SubPath, parse_request, server_relative_path,
};

const LIMITS: Limits = Limits {
    max_body_bytes: 64 * 1024,
    max_file_bytes: 16 * 1024,
    max_files: 4,
    max_metadata_fields: 8,
};

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (line, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let (content_type, query) = match mode % 4 {
        0 => (Some("application/octet-stream".to_owned()), Some(line)),
        1 => (
            Some("multipart/form-data; boundary=XyZ".to_owned()),
            Some(line),
        ),
        2 => (Some("application/json".to_owned()), None),
        _ => (Some(line.to_owned()), None),
    };
    if let Some(ct) = content_type {
        let Ok(v) = HeaderValue::from_str(&ct) else {
            return;
        };
        headers.insert(CONTENT_TYPE, v);
    }
    let method = if mode & 0x80 == 0 {
        Method::POST
    } else {
        Method::PUT
    };
    let req = RawRequest {
        method: &method,
        headers: &headers,
        query,
        body: Bytes::copy_from_slice(body),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    match runtime.block_on(parse_request(req, &LIMITS, &NamePolicy::new())) {
        Err(e) => {
            let status = ApiError::from(&e).status();
            assert!(status.is_client_error(), "{e} answered {status}");
        }
        Ok(files) => {
            assert!(
                (1..=LIMITS.max_files).contains(&files.len()),
                "{} files",
                files.len()
            );
            for f in &files {
                assert_eq!(FileName::parse(f.name.as_str()).as_ref(), Ok(&f.name));
                if let Some(folder) = &f.folder {
                    assert_eq!(SubPath::parse(folder.as_str()).as_ref(), Ok(folder));
                }
                if let Content::Bytes(b) = &f.content {
                    assert!(b.len() <= LIMITS.max_file_bytes, "{} bytes", b.len());
                }
                assert!(f.metadata.len() <= LIMITS.max_metadata_fields);
                let path =
                    server_relative_path("sites/x/Shared Documents", f.folder.as_ref(), &f.name)
                        .expect("an accepted name makes a path");
                assert!(path.starts_with("/sites/x/Shared Documents/"), "{path}");
                assert!(!path.split('/').any(|s| s == ".." || s == "."), "{path}");
            }
        }
    }
}
