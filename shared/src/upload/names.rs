//! File and folder names: validation, URL escaping, and OneDrive-style renaming.

use super::UploadError;

/// Characters SharePoint Online refuses in file and folder names.
pub const ILLEGAL_CHARS: &[char] = &['"', '*', ':', '<', '>', '?', '/', '\\', '|'];
use ILLEGAL_CHARS as FORBIDDEN;

/// Bidirectional-text controls: they reorder how a name is displayed.
const BIDI_CONTROLS: &[char] = &[
    '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}',
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
];
/// Zero-width characters: invisible, so two different names look the same.
const ZERO_WIDTH: &[char] = &['\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}'];

/// Whether `c` is a bidi control or a zero-width character, refused in names (or removed when
/// sanitising).
pub fn is_invisible(c: char) -> bool {
    BIDI_CONTROLS.contains(&c) || ZERO_WIDTH.contains(&c)
}

/// Checks one file or folder name; `#` and `%` are allowed (SharePoint's `…Path` APIs take them).
pub fn validate_name(name: &str) -> Result<(), UploadError> {
    let bad = |why: &str| Err(UploadError::BadInput(format!("name {name:?} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("is a relative path step");
    }
    if name.chars().count() > 255 {
        return bad("is longer than 255 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| FORBIDDEN.contains(c) || c.is_control() || is_invisible(*c))
    {
        return bad(&format!("contains the forbidden character {c:?}"));
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return bad("starts or ends with whitespace");
    }
    if name.ends_with('.') {
        return bad("ends with a dot");
    }
    Ok(())
}

/// Splits a folder path (`a/b/c`, leading or trailing `/` allowed, `\` rejected) into checked
/// segments. Empty input is the root.
pub fn folder_segments(path: &str) -> Result<Vec<String>, UploadError> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| validate_name(s).map(|()| s.to_owned()))
        .collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters and those in `keep`.
fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A SharePoint OData string literal for a URL path: `'` doubled, then percent-encoded except
/// `/` and the quote itself, and wrapped in quotes. `a'b #1.txt` → `'a''b%20%231.txt'`.
pub fn odata_literal(value: &str) -> String {
    format!("'{}'", encode(&value.replace('\'', "''"), b"/'"))
}

/// One Graph path segment, percent-encoded (`#`, `%`, `?`, spaces and non-ASCII included).
pub fn graph_segment(segment: &str) -> String {
    encode(segment, b"")
}

/// Percent-encodes a server-relative path for a browser URL, keeping `/`.
pub fn url_path(path: &str) -> String {
    encode(path, b"/")
}

/// The `n`th alternative to `name` as Graph's `rename` makes it: a space and the number before
/// the extension (`report.pdf` → `report 1.pdf`; "My Folder" → "My Folder 1" in the OneDrive
/// docs), so both clients name a kept copy the same way.
pub fn renamed(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} {n}{}", &name[..dot], &name[dot..]),
        _ => format!("{name} {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_literals_escape_quotes_hash_percent_spaces_unicode() {
        assert_eq!(odata_literal("a.txt"), "'a.txt'");
        assert_eq!(odata_literal("O'Brien's.docx"), "'O''Brien''s.docx'");
        assert_eq!(odata_literal("a #1 100%.txt"), "'a%20%231%20100%25.txt'");
        assert_eq!(
            odata_literal("/sites/x/Shared Documents/Ünïcode ✓"),
            "'/sites/x/Shared%20Documents/%C3%9Cn%C3%AFcode%20%E2%9C%93'"
        );
        assert_eq!(
            odata_literal("a(1)&b=c+d.txt"),
            "'a%281%29%26b%3Dc%2Bd.txt'"
        );
    }

    #[test]
    fn graph_segments_encode_everything_special() {
        assert_eq!(graph_segment("a #1 100%.txt"), "a%20%231%20100%25.txt");
        assert_eq!(graph_segment("it's"), "it%27s");
        assert_eq!(graph_segment("ü"), "%C3%BC");
        assert_eq!(graph_segment("plain-name_1.txt"), "plain-name_1.txt");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("a #1 100%.txt").is_ok());
        assert!(validate_name("Ünïcode ✓.pdf").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a:b",
            "a?b",
            "a*b",
            "a|b",
            "a\"b",
            " a",
            "a ",
            "a.",
            "a\u{0}b",
            "a\u{202E}b",
            "a\u{200B}b",
        ] {
            let err = validate_name(bad).unwrap_err();
            assert_eq!(crate::api::ApiError::from(&err).status(), 400, "{bad:?}");
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn folder_paths_split_into_checked_segments() {
        assert_eq!(folder_segments("").unwrap(), Vec::<String>::new());
        assert_eq!(folder_segments("/a/b c/").unwrap(), vec!["a", "b c"]);
        assert!(folder_segments("a/../b").is_err());
        assert!(folder_segments("a\\b").is_err());
    }

    #[test]
    fn renames_follow_graph() {
        assert_eq!(renamed("report.pdf", 1), "report 1.pdf");
        assert_eq!(renamed("archive.tar.gz", 2), "archive.tar 2.gz");
        assert_eq!(renamed("My Folder", 3), "My Folder 3");
        assert_eq!(renamed(".env", 1), ".env 1");
    }
}
