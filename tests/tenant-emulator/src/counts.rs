//! Request counts by service, for benchmarks: `GET /_emulator/requests` reads them,
//! `DELETE /_emulator/requests` sets them to zero. Admin requests are not counted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::faults::is_token_endpoint;

/// Counts of served requests, keyed by [`class`].
#[derive(Default)]
pub(crate) struct Counts(Mutex<BTreeMap<&'static str, u64>>);

/// The service a request path belongs to: `token` (any token endpoint), `graph`, `sharepoint`,
/// or `other` (authorize pages, discovery, keys).
pub(crate) fn class(path: &str) -> &'static str {
    let lower = path.to_ascii_lowercase();
    if is_token_endpoint(&lower) {
        "token"
    } else if lower.starts_with("/graph/") {
        "graph"
    } else if lower.starts_with("/sites/") || lower.starts_with("/personal/") {
        "sharepoint"
    } else {
        "other"
    }
}

impl Counts {
    pub fn add(&self, path: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(class(path)).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn reset(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::class;

    #[test]
    fn paths_fall_into_their_service() {
        assert_eq!(class("/login/t/oauth2/v2.0/token"), "token");
        assert_eq!(class("/acs/r/tokens/OAuth/2"), "token");
        assert_eq!(class("/graph/v1.0/drives/d/root:/a:/content"), "graph");
        assert_eq!(class("/sites/team/_api/web"), "sharepoint");
        assert_eq!(class("/login/t/oauth2/v2.0/authorize"), "other");
    }
}
