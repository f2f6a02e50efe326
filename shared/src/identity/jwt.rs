//! JWT inspector for diagnostics: decodes a token WITHOUT verifying it.
//!
//! Use it to explain a 401 ("wrong audience", "app-only token without roles", "expired"), never
//! to trust a token. Accepts AAD v1/v2, ACS and context-token claim shapes (numbers as strings,
//! `aud` as string or array).

use std::fmt;

use base64::Engine;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::error::IdentityError;

/// The claims that explain an access token's reach. Built by [`inspect`].
#[derive(Clone, Default)]
pub struct JwtSummary {
    /// Header `alg`.
    pub alg: Option<String>,
    /// Header `typ`.
    pub typ: Option<String>,
    /// Header `kid` / `x5t`, whichever is present.
    pub key_id: Option<String>,
    /// `aud` (a string or an array in the token).
    pub aud: Vec<String>,
    /// `iss`.
    pub iss: Option<String>,
    /// Application roles (`roles`), present on app-only tokens.
    pub roles: Vec<String>,
    /// Delegated scopes (`scp`, space separated in the token).
    pub scp: Vec<String>,
    /// How the client authenticated: 0 public, 1 secret, 2 certificate (`appidacr` or `azpacr`).
    pub appidacr: Option<String>,
    /// Tenant id (`tid`).
    pub tid: Option<String>,
    /// Client id (`appid` or `azp`).
    pub appid: Option<String>,
    /// `app_displayname`.
    pub app_displayname: Option<String>,
    /// `idtyp` (`app` or `user`).
    pub idtyp: Option<String>,
    /// `exp` (seconds since the epoch).
    pub exp: Option<i64>,
    /// `nbf`.
    pub nbf: Option<i64>,
    /// The signed-in user (`upn`, `preferred_username`, `unique_name` or ACS `nameid`).
    pub user: Option<String>,
    claims: Map<String, Value>,
}

/// Numbers may arrive as JSON numbers or strings (ACS context tokens, AAD v1 bodies).
pub(crate) fn num(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

impl JwtSummary {
    /// Summarises decoded claims (and optionally the decoded header).
    pub fn from_claims(header: Option<&Map<String, Value>>, claims: Map<String, Value>) -> Self {
        let g = |k: &str| claims.get(k);
        let h = |k: &str| header.and_then(|h| h.get(k));
        JwtSummary {
            alg: string(h("alg")),
            typ: string(h("typ")),
            key_id: string(h("kid")).or_else(|| string(h("x5t"))),
            aud: match g("aud") {
                Some(Value::String(s)) => vec![s.clone()],
                other => strings(other),
            },
            iss: string(g("iss")),
            roles: strings(g("roles")),
            scp: strings(g("scp")),
            appidacr: string(g("appidacr")).or_else(|| string(g("azpacr"))),
            tid: string(g("tid")),
            appid: string(g("appid")).or_else(|| string(g("azp"))),
            app_displayname: string(g("app_displayname")),
            idtyp: string(g("idtyp")),
            exp: num(g("exp")),
            nbf: num(g("nbf")),
            user: ["upn", "preferred_username", "unique_name", "nameid"]
                .iter()
                .find_map(|k| string(g(k))),
            claims,
        }
    }

    /// Any claim by name.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// The ACS realm: the part after `@` of `aud` (ACS tokens name principals `id/host@realm`).
    pub fn realm(&self) -> Option<&str> {
        self.aud
            .iter()
            .chain(self.iss.iter())
            .find_map(|a| a.rsplit_once('@').map(|(_, r)| r))
            .filter(|r| !r.is_empty() && *r != "*")
    }

    /// The tenant: `tid`, or the ACS realm.
    pub fn tenant(&self) -> Option<&str> {
        self.tid.as_deref().or_else(|| self.realm())
    }

    /// `exp` as a time.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(self.exp?).ok()
    }

    /// True for app-only tokens (`idtyp=app`, or roles without scopes).
    pub fn is_app_only(&self) -> bool {
        self.idtyp.as_deref() == Some("app") || (!self.roles.is_empty() && self.scp.is_empty())
    }
}

impl fmt::Debug for JwtSummary {
    // Claims are left out: context tokens carry a refresh token in `refreshtoken`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSummary")
            .field("alg", &self.alg)
            .field("aud", &self.aud)
            .field("iss", &self.iss)
            .field("roles", &self.roles)
            .field("scp", &self.scp)
            .field("appidacr", &self.appidacr)
            .field("tid", &self.tid)
            .field("appid", &self.appid)
            .field("app_displayname", &self.app_displayname)
            .field("idtyp", &self.idtyp)
            .field("exp", &self.exp)
            .field("nbf", &self.nbf)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Decodes a base64url JSON object (padding optional).
pub(crate) fn decode_segment(seg: &str) -> Result<Map<String, Value>, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .map_err(|e| format!("segment is not base64url: {e}"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("segment is not a JSON object".to_owned()),
        Err(e) => Err(format!("segment is not JSON: {e}")),
    }
}

/// Decodes a JWT's header and claims without checking its signature.
pub fn inspect(token: &str) -> Result<JwtSummary, IdentityError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(c), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdentityError::InvalidInput(
            "not a JWT: expected three dot-separated parts".to_owned(),
        ));
    };
    let header =
        decode_segment(h).map_err(|e| IdentityError::InvalidInput(format!("JWT header: {e}")))?;
    let claims =
        decode_segment(c).map_err(|e| IdentityError::InvalidInput(format!("JWT claims: {e}")))?;
    Ok(JwtSummary::from_claims(Some(&header), claims))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An unsigned JWT with these claims (test helper).
    pub(crate) fn unsigned(claims: &Value) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(br#"{"typ":"JWT","alg":"none"}"#),
            e.encode(serde_json::to_vec(claims).unwrap())
        )
    }

    fn acs_fixture(name: &str) -> Value {
        let path = format!(
            "{}/../../shared/fixtures/acs/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn inspects_acs_app_only_claims() {
        let s = inspect(&unsigned(&acs_fixture(
            "sp-dev-docs_acs-access-token-claims_add-in-only.json",
        )))
        .unwrap();
        assert_eq!(
            s.aud,
            [
                "00000003-0000-0ff1-ce00-000000000000/company.sharepoint.com@040f2415-e6e3-4480-96ce-26ef73275f73"
            ]
        );
        assert_eq!(
            s.iss.as_deref(),
            Some("00000001-0000-0000-c000-000000000000@040f2415-e6e3-4480-96ce-26ef73275f73")
        );
        assert_eq!(s.realm(), Some("040f2415-e6e3-4480-96ce-26ef73275f73"));
        assert_eq!(s.tenant(), Some("040f2415-e6e3-4480-96ce-26ef73275f73"));
        assert_eq!(s.exp, Some(1403347905));
        assert_eq!(s.nbf, Some(1403304705));
        assert_eq!(
            s.claim("trustedfordelegation").and_then(Value::as_str),
            Some("false")
        );
        assert!(s.roles.is_empty() && s.scp.is_empty());
    }

    #[test]
    fn inspects_acs_user_claims() {
        let s = inspect(&unsigned(&acs_fixture(
            "sp-dev-docs_acs-access-token-claims_user+add-in.json",
        )))
        .unwrap();
        assert_eq!(s.user.as_deref(), Some("2303000085ff9abc"));
        assert_eq!(s.exp, Some(1377592446));
        assert_eq!(s.realm(), Some("040f2415-e6e3-4480-96ce-26ef73275f73"));
    }

    #[test]
    fn inspects_entra_app_only_claims() {
        let t = unsigned(&serde_json::json!({
            "aud": "https://contoso.sharepoint.com", "iss": "https://sts.windows.net/t1/",
            "roles": ["Sites.Selected"], "appidacr": "2", "tid": "t1", "exp": "1700000000",
            "appid": "c1", "app_displayname": "spbridge", "idtyp": "app"
        }));
        let s = inspect(&t).unwrap();
        assert_eq!(s.roles, ["Sites.Selected"]);
        assert_eq!(s.appidacr.as_deref(), Some("2"));
        assert_eq!(s.tid.as_deref(), Some("t1"));
        assert_eq!(s.exp, Some(1_700_000_000));
        assert_eq!(s.app_displayname.as_deref(), Some("spbridge"));
        assert!(s.is_app_only());
        assert_eq!(s.alg.as_deref(), Some("none"));

        let d = inspect(&unsigned(
            &serde_json::json!({"scp": "AllSites.Write User.Read", "aud": ["a", "b"]}),
        ))
        .unwrap();
        assert_eq!(d.scp, ["AllSites.Write", "User.Read"]);
        assert_eq!(d.aud, ["a", "b"]);
        assert!(!d.is_app_only());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.e30.",
            "e30.bm90IGpzb24.",
            "W10.e30.",
        ] {
            assert!(
                matches!(inspect(bad), Err(IdentityError::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_hides_claims() {
        let s = inspect(&unsigned(
            &serde_json::json!({"refreshtoken": "rt-secret-value"}),
        ))
        .unwrap();
        assert!(!format!("{s:?}").contains("rt-secret-value"));
    }
}
