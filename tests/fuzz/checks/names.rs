//! File names and folder paths: `shared::ingest::names` (what senders may ask for) and
//! `shared::upload::names` (what the uploaders send to SharePoint and Graph).
//!
//! Input: `folder\nname` (no newline: the whole input is both). Invariants: nothing panics; an
//! accepted name or folder is never a traversal, even after one round of percent-decoding;
//! parsing is idempotent; what ingest accepts, the uploader accepts; a sanitized name passes the
//! strict rules; the URL encodings decode back to their input.

use shared::ingest::{FileName, NamePolicy, SubPath, server_relative_path};
use shared::upload::names::{
    folder_segments, graph_segment, odata_literal, url_path, validate_name,
};

/// One round of percent-decoding, as a server might apply it (invalid escapes kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_step(segment: &str) -> bool {
    let s = segment.trim();
    s == "." || s == ".."
}

fn check_name(raw: &str) {
    if let Ok(name) = FileName::parse(raw) {
        let n = name.as_str();
        assert!(!n.contains(['/', '\\', '\0']), "{n:?}");
        assert!(!is_step(n) && !is_step(&percent_decode(n)), "{n:?}");
        assert!(!percent_decode(n).contains(['/', '\\', '\0']), "{n:?}");
        assert_eq!(FileName::parse(n).as_ref(), Ok(&name), "not idempotent");
        assert!(
            validate_name(n).is_ok(),
            "ingest accepts {n:?}, the uploader does not"
        );
    }
    if let Ok(name) = NamePolicy::new().sanitize(true).file_name(raw) {
        assert!(
            FileName::parse(name.as_str()).is_ok(),
            "sanitized {raw:?} to {name:?}"
        );
    }
    if validate_name(raw).is_ok() {
        assert!(!raw.contains(['/', '\\']) && !is_step(raw), "{raw:?}");
    }
    // The URL encodings carry the name unchanged.
    assert_eq!(percent_decode(&url_path(raw)), raw);
    assert_eq!(percent_decode(&graph_segment(raw)), raw);
    assert!(!graph_segment(raw).contains(['/', '?', '#']));
    let lit = odata_literal(raw);
    assert!(lit.starts_with('\'') && lit.ends_with('\'') && lit.len() >= 2);
    assert_eq!(
        percent_decode(&lit[1..lit.len() - 1]).replace("''", "'"),
        raw
    );
}

fn check_folder(raw: &str) {
    if let Ok(folder) = SubPath::parse(raw) {
        let p = folder.as_str();
        assert!(!p.starts_with('/') && !p.contains('\\'), "{p:?}");
        for seg in folder.segments() {
            assert!(
                !seg.is_empty() && !is_step(seg) && !is_step(&percent_decode(seg)),
                "{p:?}"
            );
            assert!(!percent_decode(seg).contains(['/', '\\', '\0']), "{p:?}");
        }
        assert_eq!(SubPath::parse(p).as_ref(), Ok(&folder), "not idempotent");
        let segments: Vec<&str> = folder.segments().collect();
        let upload = folder_segments(p).expect("ingest accepts it, so must the uploader");
        assert_eq!(upload, segments);
    }
    if let Ok(segments) = folder_segments(raw) {
        assert!(
            segments
                .iter()
                .all(|s| !s.is_empty() && !is_step(s) && !s.contains('\\'))
        );
    }
}

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (folder, name) = text.split_once('\n').unwrap_or((text, text));
    check_name(name);
    check_folder(folder);
    if let Ok(n) = FileName::parse(name) {
        let f = SubPath::parse(folder).ok();
        if let Ok(path) = server_relative_path("/sites/s/Shared Documents/", f.as_ref(), &n) {
            assert!(path.starts_with("/sites/s/Shared Documents/"), "{path}");
            assert!(
                !path.split('/').skip(1).any(|s| s.is_empty() || is_step(s)),
                "{path}"
            );
            assert!(path.ends_with(n.as_str()), "{path}");
        }
    }
}
