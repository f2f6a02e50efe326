//! The one table of Microsoft error codes, and what spbridge does about each.
//!
//! Every place that reacts to a Microsoft error (identity token calls, [`crate::access`],
//! token-refresh, the upload clients and their doctor) looks the code up here, so one code never
//! means two things. `docs/microsoft-errors.md` is checked against [`TABLE`] by a test.
//!
//! This module sits below everything else in `shared`: it imports nothing from the crate.

use serde::{Deserialize, Serialize};

/// What spbridge does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A person must sign in or consent again; retrying will not help.
    NeedsConsent,
    /// Microsoft asked us to slow down; retry after its `Retry-After`.
    Throttled,
    /// A fault that may pass by itself; retry later.
    Transient,
    /// The app registration, its secret or the request is wrong; an operator must fix it.
    Misconfigured,
    /// The token is valid but the app or user lacks a permission on the target.
    MissingPermission,
    /// The target already exists.
    Conflict,
    /// The target (file, folder, library, site) does not exist.
    NotFound,
}

impl Action {
    /// The name used in the docs table.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::NeedsConsent => "needs consent",
            Action::Throttled => "throttled",
            Action::Transient => "transient",
            Action::Misconfigured => "misconfigured",
            Action::MissingPermission => "missing permission",
            Action::Conflict => "conflict",
            Action::NotFound => "not found",
        }
    }
}

/// Which family a code belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum System {
    /// Entra / Azure AD `AADSTSnnnn` (ACS answers with these today too); the number only.
    Aadsts,
    /// Legacy ACS `ACSnnnnn`; the number only.
    Acs,
    /// The OAuth `error` word of a token endpoint (RFC 6749 and Microsoft's additions).
    OAuth,
    /// SharePoint REST `odata.error.code`: the number, or the exception name after the comma.
    SharePoint,
    /// Microsoft Graph `error.code` (or an inner `innerError.code`).
    Graph,
}

impl System {
    /// The name used in the docs table.
    pub fn as_str(self) -> &'static str {
        match self {
            System::Aadsts => "AADSTS",
            System::Acs => "ACS",
            System::OAuth => "OAuth",
            System::SharePoint => "SharePoint",
            System::Graph => "Graph",
        }
    }
}

/// One row: a code of a system, what it means and what spbridge does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The family.
    pub system: System,
    /// The code as Microsoft writes it (numbers without their prefix).
    pub code: &'static str,
    /// What spbridge does.
    pub action: Action,
    /// What it means, briefly.
    pub meaning: &'static str,
}

const fn row(system: System, code: &'static str, action: Action, meaning: &'static str) -> Row {
    Row {
        system,
        code,
        action,
        meaning,
    }
}

use Action as A;
use System as S;

/// The table. A specific code wins over the OAuth `error` word that comes with it.
#[rustfmt::skip]
pub const TABLE: &[Row] = &[
    // Entra / AAD: the grant is gone or needs a person.
    row(S::Aadsts, "50055", A::NeedsConsent, "password expired"),
    row(S::Aadsts, "50057", A::NeedsConsent, "user account disabled"),
    row(S::Aadsts, "50058", A::NeedsConsent, "silent sign-in failed: no user signed in"),
    row(S::Aadsts, "50076", A::NeedsConsent, "multi-factor authentication required"),
    row(S::Aadsts, "50078", A::NeedsConsent, "multi-factor enrolment expired"),
    row(S::Aadsts, "50079", A::NeedsConsent, "multi-factor registration required"),
    row(S::Aadsts, "50089", A::NeedsConsent, "flow token expired"),
    row(S::Aadsts, "50126", A::NeedsConsent, "invalid user name or password"),
    row(S::Aadsts, "50132", A::NeedsConsent, "session revoked (password changed)"),
    row(S::Aadsts, "50133", A::NeedsConsent, "session invalid after password change"),
    row(S::Aadsts, "50140", A::NeedsConsent, "keep-me-signed-in interrupt: interaction needed"),
    row(S::Aadsts, "50158", A::NeedsConsent, "external security challenge not satisfied"),
    row(S::Aadsts, "50173", A::NeedsConsent, "grant expired (password or session reset)"),
    row(S::Aadsts, "53000", A::NeedsConsent, "Conditional Access: device not compliant"),
    row(S::Aadsts, "53001", A::NeedsConsent, "Conditional Access: device not domain-joined"),
    row(S::Aadsts, "53003", A::NeedsConsent, "blocked by Conditional Access"),
    row(S::Aadsts, "54005", A::NeedsConsent, "authorization code already redeemed"),
    row(S::Aadsts, "65001", A::NeedsConsent, "consent not granted"),
    row(S::Aadsts, "65004", A::NeedsConsent, "user declined consent"),
    row(S::Aadsts, "70000", A::NeedsConsent, "grant invalid or malformed"),
    row(S::Aadsts, "70008", A::NeedsConsent, "code or refresh token expired"),
    row(S::Aadsts, "70043", A::NeedsConsent, "refresh token expired by Conditional Access sign-in frequency"),
    row(S::Aadsts, "700081", A::NeedsConsent, "refresh token reached its maximum lifetime"),
    row(S::Aadsts, "700082", A::NeedsConsent, "refresh token expired from inactivity"),
    row(S::Aadsts, "700084", A::NeedsConsent, "single-page-app refresh token expired"),
    // Entra / AAD: slow down.
    row(S::Aadsts, "50053", A::Throttled, "account locked after too many sign-in attempts"),
    row(S::Aadsts, "50196", A::Throttled, "request loop detected: the client asked too often"),
    // Entra / AAD: passes by itself.
    row(S::Aadsts, "50000", A::Transient, "error in the sign-in service"),
    row(S::Aadsts, "90033", A::Transient, "transient error in the sign-in service"),
    // Entra / AAD: the app registration or request is wrong.
    row(S::Aadsts, "50011", A::Misconfigured, "redirect URI not registered"),
    row(S::Aadsts, "50049", A::Misconfigured, "unknown or invalid authority"),
    row(S::Aadsts, "50148", A::Misconfigured, "PKCE verifier does not match the challenge"),
    row(S::Aadsts, "50194", A::Misconfigured, "app not multi-tenant: use the tenant endpoint"),
    row(S::Aadsts, "65005", A::Misconfigured, "app requests a permission it does not declare"),
    row(S::Aadsts, "70011", A::Misconfigured, "invalid scope"),
    row(S::Aadsts, "90002", A::Misconfigured, "tenant not found"),
    row(S::Aadsts, "90014", A::Misconfigured, "a required request field is missing"),
    row(S::Aadsts, "500011", A::Misconfigured, "resource principal not found in the tenant"),
    row(S::Aadsts, "500113", A::Misconfigured, "no reply address registered"),
    row(S::Aadsts, "700016", A::Misconfigured, "application not found in the tenant"),
    row(S::Aadsts, "700023", A::Misconfigured, "client assertion audience invalid"),
    row(S::Aadsts, "700024", A::Misconfigured, "client assertion outside its valid time range"),
    row(S::Aadsts, "700027", A::Misconfigured, "client assertion signature invalid"),
    row(S::Aadsts, "700054", A::Misconfigured, "response_type id_token not enabled"),
    row(S::Aadsts, "900144", A::Misconfigured, "a required request parameter is missing"),
    row(S::Aadsts, "7000112", A::Misconfigured, "application disabled"),
    row(S::Aadsts, "7000215", A::Misconfigured, "invalid client secret"),
    row(S::Aadsts, "7000222", A::Misconfigured, "client secret expired"),
    row(S::Aadsts, "9002313", A::Misconfigured, "malformed request"),
    // Legacy ACS.
    row(S::Acs, "50001", A::Misconfigured, "relying party (SharePoint principal or realm) unknown"),
    row(S::Acs, "50012", A::Misconfigured, "authentication failed (client id or secret)"),
    row(S::Acs, "70002", A::Misconfigured, "error validating credentials"),
    // OAuth `error` words.
    row(S::OAuth, "invalid_grant", A::NeedsConsent, "the code or refresh token is no longer valid"),
    row(S::OAuth, "interaction_required", A::NeedsConsent, "a person must sign in"),
    row(S::OAuth, "consent_required", A::NeedsConsent, "a person must consent"),
    row(S::OAuth, "login_required", A::NeedsConsent, "a person must sign in"),
    row(S::OAuth, "access_denied", A::NeedsConsent, "the person or an admin refused"),
    row(S::OAuth, "expired_token", A::NeedsConsent, "the grant expired"),
    row(S::OAuth, "slow_down", A::Throttled, "asked too often"),
    row(S::OAuth, "temporarily_unavailable", A::Transient, "the service is overloaded or down"),
    row(S::OAuth, "server_error", A::Transient, "the service failed"),
    row(S::OAuth, "invalid_client", A::Misconfigured, "client id or credential refused"),
    row(S::OAuth, "unauthorized_client", A::Misconfigured, "the client may not use this grant"),
    row(S::OAuth, "invalid_request", A::Misconfigured, "the request is malformed"),
    row(S::OAuth, "invalid_scope", A::Misconfigured, "the scope is unknown or not allowed"),
    row(S::OAuth, "invalid_resource", A::Misconfigured, "the resource is unknown"),
    row(S::OAuth, "invalid_instance", A::Misconfigured, "the authority is unknown"),
    row(S::OAuth, "unsupported_grant_type", A::Misconfigured, "grant type not supported"),
    row(S::OAuth, "unsupported_response_type", A::Misconfigured, "response type not supported"),
    // SharePoint REST.
    row(S::SharePoint, "-2130575257", A::Conflict, "a file with this name already exists"),
    row(S::SharePoint, "-2130575338", A::NotFound, "the file does not exist"),
    row(S::SharePoint, "-2147024894", A::NotFound, "System.IO.FileNotFoundException (folder missing)"),
    row(S::SharePoint, "-2147024891", A::MissingPermission, "access denied (E_ACCESSDENIED)"),
    row(S::SharePoint, "-2147024860", A::Throttled, "SPQueryThrottledException: the request was throttled"),
    row(S::SharePoint, "System.UnauthorizedAccessException", A::MissingPermission, "access denied"),
    row(S::SharePoint, "System.IO.FileNotFoundException", A::NotFound, "the file or folder does not exist"),
    // Microsoft Graph.
    row(S::Graph, "nameAlreadyExists", A::Conflict, "an item with this name already exists"),
    row(S::Graph, "itemNotFound", A::NotFound, "the item does not exist"),
    row(S::Graph, "accessDenied", A::MissingPermission, "the caller may not do this"),
    row(S::Graph, "activityLimitReached", A::Throttled, "the app or user is throttled"),
    row(S::Graph, "serviceNotAvailable", A::Transient, "the service is unavailable"),
];

/// The row of `code` in `system` (ASCII case ignored; numbers without their prefix).
pub fn lookup(system: System, code: &str) -> Option<&'static Row> {
    let code = code.trim();
    TABLE
        .iter()
        .find(|r| r.system == system && r.code.eq_ignore_ascii_case(code))
}

/// A Microsoft identity error code: `AADSTS70008`, `ACS50012`, or a bare `70008` (from
/// `error_codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsCode {
    /// Entra / Azure AD (also what ACS sends today).
    Aadsts(u64),
    /// Legacy ACS code.
    Acs(u64),
}

const AADSTS: &str = "AADSTS";
const ACS: &str = "ACS";

impl MsCode {
    /// Reads a code from a string such as `AADSTS700082`, `ACS50012` or `700082`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (digits, make): (&str, fn(u64) -> MsCode) =
            if let Some(d) = strip_prefix_ignore_case(s, AADSTS) {
                (d, MsCode::Aadsts)
            } else if let Some(d) = strip_prefix_ignore_case(s, ACS) {
                (d, MsCode::Acs)
            } else {
                (s, MsCode::Aadsts)
            };
        if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(make)
    }

    /// Finds the first code in free text, e.g. an `error_description` starting
    /// `AADSTS700082: The refresh token has expired…`. A prefix glued to a previous word
    /// (`XACS1`) is not a code.
    pub fn find_in(text: &str) -> Option<Self> {
        let upper = text.to_ascii_uppercase();
        for prefix in [AADSTS, ACS] {
            let mut rest = upper.as_str();
            while let Some(at) = rest.find(prefix) {
                let after = &rest[at + prefix.len()..];
                let end = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                let starts_word = rest[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_ascii_alphanumeric());
                if end > 0 && starts_word {
                    return MsCode::parse(&format!("{prefix}{}", &after[..end]));
                }
                rest = after;
            }
        }
        None
    }

    /// The number, e.g. 70008.
    pub fn number(self) -> u64 {
        match self {
            MsCode::Aadsts(n) | MsCode::Acs(n) => n,
        }
    }

    /// The row of this code, if the table has one.
    pub fn row(self) -> Option<&'static Row> {
        match self {
            MsCode::Aadsts(n) => lookup(System::Aadsts, &n.to_string()),
            MsCode::Acs(n) => lookup(System::Acs, &n.to_string()),
        }
    }
}

impl std::fmt::Display for MsCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MsCode::Aadsts(n) => write!(f, "{AADSTS}{n}"),
            MsCode::Acs(n) => write!(f, "{ACS}{n}"),
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// What a failed token request means, for the identity code and token-refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshFailure {
    /// The grant is gone or needs a person (expired, revoked, MFA, conditional access, consent).
    NeedsConsent,
    /// Microsoft asked us to slow down.
    Throttled,
    /// A fault that may pass by itself.
    Transient,
    /// The app registration, its secret or the request is wrong.
    Misconfigured,
}

impl RefreshFailure {
    /// Classifies a failed token request from its OAuth `error` word (or a bare code), Microsoft's
    /// code if known (`AADSTS…`, `ACS…`, a number, or an `error_description` containing one) and
    /// the HTTP status. Unknown errors: a 4xx is a refusal nobody will retry away
    /// (misconfigured), anything else may pass (transient).
    pub fn classify(error: &str, ms_code: Option<&str>, http_status: Option<u16>) -> Self {
        token_action(error, ms_code, http_status).unwrap_or(
            if http_status.is_some_and(|s| (400..500).contains(&s)) {
                RefreshFailure::Misconfigured
            } else {
                RefreshFailure::Transient
            },
        )
    }

    /// Whether a later attempt may succeed without anyone acting.
    pub fn is_retryable(self) -> bool {
        matches!(self, RefreshFailure::Throttled | RefreshFailure::Transient)
    }

    /// The Lambda diagnostic `errorType` to report when this failure ends an invocation.
    pub fn lambda_error_type(self) -> &'static str {
        match self {
            RefreshFailure::NeedsConsent => "SpBridge.Fatal.NeedsConsent",
            RefreshFailure::Throttled => "SpBridge.Retryable.Throttled",
            RefreshFailure::Transient => "SpBridge.Retryable.Transient",
            RefreshFailure::Misconfigured => "SpBridge.Fatal.Misconfigured",
        }
    }

    fn from_action(a: Action) -> Option<Self> {
        match a {
            Action::NeedsConsent => Some(RefreshFailure::NeedsConsent),
            Action::Throttled => Some(RefreshFailure::Throttled),
            Action::Transient => Some(RefreshFailure::Transient),
            Action::Misconfigured => Some(RefreshFailure::Misconfigured),
            Action::MissingPermission | Action::Conflict | Action::NotFound => None,
        }
    }
}

/// The class of a token-endpoint error, or `None` when nothing in the table (nor the status)
/// decides it. Order: HTTP 429; a specific code; HTTP 5xx; the OAuth word.
pub fn token_action(
    error: &str,
    ms_code: Option<&str>,
    http_status: Option<u16>,
) -> Option<RefreshFailure> {
    if http_status == Some(429) {
        return Some(RefreshFailure::Throttled);
    }
    let code = ms_code
        .and_then(|c| MsCode::parse(c).or_else(|| MsCode::find_in(c)))
        .or_else(|| MsCode::parse(error));
    if let Some(f) = code
        .and_then(MsCode::row)
        .and_then(|r| RefreshFailure::from_action(r.action))
    {
        return Some(f);
    }
    if http_status.is_some_and(|s| s >= 500) {
        return Some(RefreshFailure::Transient);
    }
    lookup(System::OAuth, error).and_then(|r| RefreshFailure::from_action(r.action))
}

/// Codes that mean "this client credential (secret) was refused", so a second configured
/// secret is worth a try: the OAuth word `invalid_client`, an invalid or expired Entra secret,
/// and ACS's authentication failure.
const CREDENTIAL_REFUSED: &[MsCode] = &[
    MsCode::Aadsts(7000215),
    MsCode::Aadsts(7000222),
    MsCode::Acs(50012),
];

/// Whether a token error says the client credential itself was refused (see the table rows
/// `invalid_client`, AADSTS 7000215 and 7000222, ACS 50012).
pub fn credential_refused(error: &str, ms_code: Option<&str>) -> bool {
    error.eq_ignore_ascii_case("invalid_client")
        || ms_code
            .and_then(|c| MsCode::parse(c).or_else(|| MsCode::find_in(c)))
            .is_some_and(|c| CREDENTIAL_REFUSED.contains(&c))
}

/// What an upload error body's code means: SharePoint's `"-2130575257, Microsoft.…"` (number or
/// exception name) or Graph's code and inner code. `None` when the table has no row.
pub fn upload_action(system: System, code: Option<&str>, inner: Option<&str>) -> Option<Action> {
    match system {
        System::SharePoint => {
            let code = code?;
            let mut parts = code.split(',').map(str::trim);
            let number = parts.next()?;
            lookup(System::SharePoint, number)
                .or_else(|| parts.find_map(|name| lookup(System::SharePoint, name)))
                .map(|r| r.action)
        }
        _ => [code, inner]
            .into_iter()
            .flatten()
            .find_map(|c| lookup(system, c))
            .map(|r| r.action),
    }
}

/// The docs table, one Markdown row per [`TABLE`] row: `| system | code | action | meaning |`.
pub fn docs_rows() -> Vec<String> {
    TABLE
        .iter()
        .map(|r| {
            format!(
                "| {} | `{}` | {} | {} |",
                r.system.as_str(),
                r.code,
                r.action.as_str(),
                r.meaning
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the table, pinned: a change to the table must change this list too.
    #[test]
    fn every_row_is_pinned() {
        use Action::*;
        let want: &[(&str, &str, Action)] = &[
            ("AADSTS", "50055", NeedsConsent),
            ("AADSTS", "50057", NeedsConsent),
            ("AADSTS", "50058", NeedsConsent),
            ("AADSTS", "50076", NeedsConsent),
            ("AADSTS", "50078", NeedsConsent),
            ("AADSTS", "50079", NeedsConsent),
            ("AADSTS", "50089", NeedsConsent),
            ("AADSTS", "50126", NeedsConsent),
            ("AADSTS", "50132", NeedsConsent),
            ("AADSTS", "50133", NeedsConsent),
            ("AADSTS", "50140", NeedsConsent),
            ("AADSTS", "50158", NeedsConsent),
            ("AADSTS", "50173", NeedsConsent),
            ("AADSTS", "53000", NeedsConsent),
            ("AADSTS", "53001", NeedsConsent),
            ("AADSTS", "53003", NeedsConsent),
            ("AADSTS", "54005", NeedsConsent),
            ("AADSTS", "65001", NeedsConsent),
            ("AADSTS", "65004", NeedsConsent),
            ("AADSTS", "70000", NeedsConsent),
            ("AADSTS", "70008", NeedsConsent),
            ("AADSTS", "70043", NeedsConsent),
            ("AADSTS", "700081", NeedsConsent),
            ("AADSTS", "700082", NeedsConsent),
            ("AADSTS", "700084", NeedsConsent),
            ("AADSTS", "50053", Throttled),
            ("AADSTS", "50196", Throttled),
            ("AADSTS", "50000", Transient),
            ("AADSTS", "90033", Transient),
            ("AADSTS", "50011", Misconfigured),
            ("AADSTS", "50049", Misconfigured),
            ("AADSTS", "50148", Misconfigured),
            ("AADSTS", "50194", Misconfigured),
            ("AADSTS", "65005", Misconfigured),
            ("AADSTS", "70011", Misconfigured),
            ("AADSTS", "90002", Misconfigured),
            ("AADSTS", "90014", Misconfigured),
            ("AADSTS", "500011", Misconfigured),
            ("AADSTS", "500113", Misconfigured),
            ("AADSTS", "700016", Misconfigured),
            ("AADSTS", "700023", Misconfigured),
            ("AADSTS", "700024", Misconfigured),
            ("AADSTS", "700027", Misconfigured),
            ("AADSTS", "700054", Misconfigured),
            ("AADSTS", "900144", Misconfigured),
            ("AADSTS", "7000112", Misconfigured),
            ("AADSTS", "7000215", Misconfigured),
            ("AADSTS", "7000222", Misconfigured),
            ("AADSTS", "9002313", Misconfigured),
            ("ACS", "50001", Misconfigured),
            ("ACS", "50012", Misconfigured),
            ("ACS", "70002", Misconfigured),
            ("OAuth", "invalid_grant", NeedsConsent),
            ("OAuth", "interaction_required", NeedsConsent),
            ("OAuth", "consent_required", NeedsConsent),
            ("OAuth", "login_required", NeedsConsent),
            ("OAuth", "access_denied", NeedsConsent),
            ("OAuth", "expired_token", NeedsConsent),
            ("OAuth", "slow_down", Throttled),
            ("OAuth", "temporarily_unavailable", Transient),
            ("OAuth", "server_error", Transient),
            ("OAuth", "invalid_client", Misconfigured),
            ("OAuth", "unauthorized_client", Misconfigured),
            ("OAuth", "invalid_request", Misconfigured),
            ("OAuth", "invalid_scope", Misconfigured),
            ("OAuth", "invalid_resource", Misconfigured),
            ("OAuth", "invalid_instance", Misconfigured),
            ("OAuth", "unsupported_grant_type", Misconfigured),
            ("OAuth", "unsupported_response_type", Misconfigured),
            ("SharePoint", "-2130575257", Conflict),
            ("SharePoint", "-2130575338", NotFound),
            ("SharePoint", "-2147024894", NotFound),
            ("SharePoint", "-2147024891", MissingPermission),
            ("SharePoint", "-2147024860", Throttled),
            (
                "SharePoint",
                "System.UnauthorizedAccessException",
                MissingPermission,
            ),
            ("SharePoint", "System.IO.FileNotFoundException", NotFound),
            ("Graph", "nameAlreadyExists", Conflict),
            ("Graph", "itemNotFound", NotFound),
            ("Graph", "accessDenied", MissingPermission),
            ("Graph", "activityLimitReached", Throttled),
            ("Graph", "serviceNotAvailable", Transient),
        ];
        let got: Vec<(&str, &str, Action)> = TABLE
            .iter()
            .map(|r| (r.system.as_str(), r.code, r.action))
            .collect();
        assert_eq!(got, want);
        // Each row is found by lookup, and no code appears twice in a system.
        let mut seen = std::collections::HashSet::new();
        for r in TABLE {
            assert!(
                seen.insert((r.system, r.code.to_ascii_lowercase())),
                "{r:?} twice"
            );
            assert_eq!(lookup(r.system, r.code), Some(r));
        }
    }

    #[test]
    fn docs_table_matches() {
        let doc = include_str!("../../docs/microsoft-errors.md");
        let rows = docs_rows();
        for r in &rows {
            assert!(
                doc.contains(r.as_str()),
                "docs/microsoft-errors.md lacks {r}"
            );
        }
        let doc_rows = doc
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains(" | `"))
            .count();
        assert_eq!(
            doc_rows,
            rows.len(),
            "docs/microsoft-errors.md has extra rows"
        );
    }

    #[test]
    fn token_classification() {
        use RefreshFailure::*;
        let cases: &[(&str, Option<&str>, Option<u16>, RefreshFailure)] = &[
            ("invalid_grant", None, Some(400), NeedsConsent),
            (
                "invalid_grant",
                Some("AADSTS70008"),
                Some(400),
                NeedsConsent,
            ),
            (
                "invalid_grant",
                Some("AADSTS700082: The refresh token has expired due to inactivity."),
                Some(400),
                NeedsConsent,
            ),
            ("invalid_grant", Some("65001"), Some(400), NeedsConsent),
            ("AADSTS700082", None, None, NeedsConsent),
            // A specific code beats the generic word.
            (
                "invalid_client",
                Some("AADSTS7000222"),
                Some(401),
                Misconfigured,
            ),
            (
                "invalid_client",
                Some("AADSTS700024"),
                Some(400),
                Misconfigured,
            ),
            ("invalid_request", Some("AADSTS50196"), Some(400), Throttled),
            ("", Some("AADSTS90033"), Some(400), Transient),
            ("invalid_client", Some("ACS50012"), Some(401), Misconfigured),
            (
                "invalid_request",
                Some("ACS70002: Error validating credentials. ACS50012: Authentication failed."),
                Some(400),
                Misconfigured,
            ),
            // A code not in the table falls back to the word.
            ("invalid_grant", Some("ACS50027"), Some(400), NeedsConsent),
            // 429 always throttles; 5xx is transient unless a code says otherwise.
            ("invalid_grant", Some("AADSTS70008"), Some(429), Throttled),
            ("", None, Some(502), Transient),
            ("slow_down", None, Some(400), Throttled),
            // Unknown.
            ("something_new", None, Some(400), Misconfigured),
            ("something_new", None, None, Transient),
        ];
        for (error, code, status, want) in cases {
            assert_eq!(
                RefreshFailure::classify(error, *code, *status),
                *want,
                "{error} {code:?} {status:?}"
            );
        }
        assert_eq!(
            token_action("authorization_pending", Some("AADSTS70016"), Some(400)),
            None
        );
    }

    #[test]
    fn refused_credentials() {
        assert!(credential_refused("invalid_client", None));
        assert!(credential_refused("invalid_request", Some("AADSTS7000222")));
        assert!(credential_refused(
            "unauthorized_client",
            Some("ACS50012: Authentication failed.")
        ));
        assert!(!credential_refused("invalid_grant", Some("AADSTS70008")));
        // Each is a misconfiguration row of the table too.
        for c in CREDENTIAL_REFUSED {
            assert_eq!(
                c.row().map(|r| r.action),
                Some(Action::Misconfigured),
                "{c}"
            );
        }
    }

    #[test]
    fn upload_codes() {
        use Action::*;
        let sp = |c| upload_action(System::SharePoint, Some(c), None);
        assert_eq!(
            sp("-2130575257, Microsoft.SharePoint.SPException"),
            Some(Conflict)
        );
        assert_eq!(
            sp("-2147024891, System.UnauthorizedAccessException"),
            Some(MissingPermission)
        );
        assert_eq!(
            sp("-1, System.UnauthorizedAccessException"),
            Some(MissingPermission)
        );
        assert_eq!(sp("-2130575342, Microsoft.SharePoint.SPException"), None);
        let g = |c, i| upload_action(System::Graph, Some(c), i);
        assert_eq!(g("nameAlreadyExists", None), Some(Conflict));
        assert_eq!(g("BadRequest", Some("NameAlreadyExists")), Some(Conflict));
        assert_eq!(
            g("tooManyRequests", Some("activityLimitReached")),
            Some(Throttled)
        );
        assert_eq!(g("invalidRequest", None), None);
    }

    #[test]
    fn ms_codes() {
        assert_eq!(MsCode::parse("AADSTS70008"), Some(MsCode::Aadsts(70008)));
        assert_eq!(MsCode::parse("aadsts70008"), Some(MsCode::Aadsts(70008)));
        assert_eq!(MsCode::parse("ACS50012"), Some(MsCode::Acs(50012)));
        assert_eq!(MsCode::parse("700082"), Some(MsCode::Aadsts(700082)));
        assert_eq!(MsCode::parse("invalid_grant"), None);
        assert_eq!(MsCode::parse("AADSTS"), None);
        assert_eq!(MsCode::parse("99999999999999999999999"), None);
        assert_eq!(
            MsCode::find_in("Trace: x. AADSTS50173: The provided grant has expired"),
            Some(MsCode::Aadsts(50173))
        );
        assert_eq!(MsCode::find_in("no code here; ACS"), None);
        assert_eq!(
            MsCode::find_in("XACS1 then ACS50012"),
            Some(MsCode::Acs(50012))
        );
        assert_eq!(MsCode::Acs(50012).to_string(), "ACS50012");
    }
}
