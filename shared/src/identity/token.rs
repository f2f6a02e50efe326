//! The one token type for every identity system, parsed from any token-endpoint shape.

use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{
    jwt::{self, num},
    secret::{AccessToken, RefreshToken},
};

/// An access token with what we know about it. `Debug` redacts both tokens.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token.
    pub access_token: AccessToken,
    /// `token_type` as sent (`Bearer`, MSA sends `bearer`).
    pub token_type: String,
    /// When it expires: `expires_on` if sent, else receipt time + `expires_in`.
    pub expires_at: Option<OffsetDateTime>,
    /// `not_before`, if sent.
    pub not_before: Option<OffsetDateTime>,
    /// A refresh token, if one was issued. With rotation the caller must persist this one.
    pub refresh_token: Option<RefreshToken>,
    /// `resource` (AAD v1, ACS).
    pub resource: Option<String>,
    /// `scope` (v2, MSA; AAD v1 sometimes).
    pub scope: Option<String>,
    /// Tenant id, from the id_token, `client_info` or the access token's claims.
    pub tenant_id: Option<String>,
    /// The signed-in user (UPN or preferred username), if the response identifies one.
    pub user: Option<String>,
    /// The user's object id (`oid` / client_info `uid`), if known.
    pub user_object_id: Option<String>,
}

impl Token {
    /// Parses a token response body. Numbers may be JSON numbers or strings.
    pub fn from_json(body: &str, now: OffsetDateTime) -> Result<Self, String> {
        let v: Map<String, Value> = match serde_json::from_str(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("token response is not a JSON object".to_owned()),
            Err(e) => return Err(format!("token response is not JSON: {e}")),
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let access = s("access_token").ok_or("token response has no access_token")?;
        let ts = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).ok();
        let expires_at = match num(v.get("expires_on")).and_then(ts) {
            Some(at) => Some(at),
            None => num(v.get("expires_in"))
                .filter(|n| *n >= 0)
                .and_then(|n| now.checked_add(time::Duration::seconds(n))),
        };

        let mut token = Token {
            access_token: AccessToken::new(access),
            token_type: s("token_type").unwrap_or("Bearer").to_owned(),
            expires_at,
            not_before: num(v.get("not_before")).and_then(ts),
            refresh_token: s("refresh_token").map(RefreshToken::new),
            resource: s("resource").map(str::to_owned),
            scope: s("scope").map(str::to_owned),
            tenant_id: None,
            user: None,
            user_object_id: None,
        };
        // Identity, best source first: id_token, client_info, then the access token itself.
        if let Some(id) = s("id_token").and_then(|t| jwt::inspect(t).ok()) {
            token.tenant_id = id.tid.clone();
            token.user = id.user.clone();
            token.user_object_id = id.claim("oid").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some(ci) = s("client_info").and_then(|c| jwt::decode_segment(c).ok()) {
            let g = |k: &str| ci.get(k).and_then(Value::as_str).map(str::to_owned);
            token.tenant_id = token.tenant_id.or_else(|| g("utid"));
            token.user_object_id = token.user_object_id.or_else(|| g("uid"));
        }
        // Who signed in when no id_token said so: a Microsoft account's `user_id`, else the
        // access token's `oid` (or ACS `nameid`).
        if token.user_object_id.is_none() {
            token.user_object_id = s("user_id").map(str::to_owned).or_else(|| {
                let at = jwt::inspect(access).ok()?;
                ["oid", "nameid"]
                    .iter()
                    .find_map(|c| at.claim(c).and_then(Value::as_str).map(str::to_owned))
            });
        }
        if token.tenant_id.is_none() {
            if let Ok(at) = jwt::inspect(access) {
                token.tenant_id = at.tenant().map(str::to_owned);
                token.user = token.user.or(at.user.clone());
            }
        }
        Ok(token)
    }

    /// True if the token is still usable `skew` from now. Tokens without expiry are never fresh
    /// here; the cache gives them its own lifetime.
    pub fn is_fresh(&self, now: OffsetDateTime, skew: Duration) -> bool {
        self.expires_at.is_some_and(|at| {
            time::Duration::try_from(skew)
                .ok()
                .and_then(|s| at.checked_sub(s))
                .is_some_and(|t| t > now)
        })
    }

    /// The `Authorization` header value.
    pub fn authorization(&self) -> Field {
        Field::Secret(format!("Bearer {}", self.access_token.expose_secret()).into())
    }
}

/// A header or form value: plain, or a secret that `Debug` hides.
#[derive(Clone)]
pub enum Field {
    /// Safe to log.
    Plain(String),
    /// A secret (client secret, code, refresh token, assertion, bearer token).
    Secret(secrecy::SecretString),
}

impl Field {
    /// A secret field.
    pub fn secret(value: &str) -> Self {
        Field::Secret(secrecy::SecretString::from(value))
    }

    /// The value as sent on the wire.
    pub fn expose(&self) -> &str {
        use secrecy::ExposeSecret;
        match self {
            Field::Plain(s) => s,
            Field::Secret(s) => s.expose_secret(),
        }
    }
}

impl std::fmt::Debug for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Plain(s) => write!(f, "{s:?}"),
            Field::Secret(_) => write!(f, "[redacted]"),
        }
    }
}

impl From<&str> for Field {
    fn from(s: &str) -> Self {
        Field::Plain(s.to_owned())
    }
}

impl From<String> for Field {
    fn from(s: String) -> Self {
        Field::Plain(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn fixture(path: &str) -> String {
        let p = format!(
            "{}/../../shared/fixtures/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    const NOW: OffsetDateTime = datetime!(2024-01-01 00:00 UTC);

    #[test]
    fn aad_v1_strings() {
        let t = Token::from_json(
            &fixture("aad/msal-dotnet_TestConstants_TokenResponseJson_v1-style-strings.json"),
            NOW,
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "at_secret");
        assert_eq!(
            t.refresh_token.as_ref().unwrap().expose_secret(),
            "rt_secret"
        );
        // expires_on wins over expires_in.
        assert_eq!(t.expires_at.unwrap().unix_timestamp(), 1566165638);
        assert_eq!(t.not_before.unwrap().unix_timestamp(), 1566161738);
        assert_eq!(t.resource.as_deref(), Some("user.read"));
        assert_eq!(t.scope.as_deref(), Some("user_impersonation"));
        assert_eq!(
            t.tenant_id.as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(
            t.user_object_id.as_deref(),
            Some("6eeda3a1-c3b9-4e92-a94d-965a50c06de7")
        );
    }

    #[test]
    fn aad_v2_numbers_and_id_token() {
        let t = Token::from_json(
            &fixture("aad/msal-dotnet_TestConstants_CreateAadTestTokenResponse_v2.json"),
            NOW,
        )
        .unwrap();
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(t.expires_at, Some(NOW + Duration::from_secs(3600)));
        assert_eq!(
            t.scope.as_deref(),
            Some("Calendars.Read openid profile Tasks.Read User.Read email")
        );
        assert_eq!(
            t.tenant_id.as_deref(),
            Some("f645ad92-e38d-4d1a-b510-d1b09a74a8ca")
        );
        assert_eq!(t.user.as_deref(), Some("idlab@msidlab4.onmicrosoft.com"));
        assert_eq!(
            t.user_object_id.as_deref(),
            Some("9f4880d8-80ba-4c40-97bc-f7a23c703084")
        );
        assert!(t.is_fresh(NOW, Duration::from_secs(300)));
        assert!(!t.is_fresh(NOW + Duration::from_secs(3400), Duration::from_secs(300)));
    }

    #[test]
    fn onedrive_v1_docs_sample() {
        let t = Token::from_json(
            &fixture("aad/onedrive-api-docs_aad-oauth_v1-token-response_discovery-resource.json"),
            NOW,
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "EwCo...AA==");
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(t.expires_at, Some(NOW + Duration::from_secs(3600)));
        assert!(t.refresh_token.is_some());
    }

    #[test]
    fn msa_code_and_refresh() {
        for f in [
            "msa/onedrive-api-docs_msa-oauth_oauth20_token_code-redeem.json",
            "msa/onedrive-api-docs_msa-oauth_oauth20_token_refresh.json",
        ] {
            let t = Token::from_json(&fixture(f), NOW).unwrap();
            assert_eq!(t.token_type, "bearer");
            assert!(t.scope.as_deref().unwrap().contains("onedrive.readwrite"));
            assert_eq!(
                t.refresh_token.as_ref().unwrap().expose_secret(),
                "eyJh...9323"
            );
            assert_eq!(t.tenant_id, None);
        }
    }

    #[test]
    fn acs_app_only_response_gets_realm_from_access_token() {
        let claims = fixture("acs/sp-dev-docs_acs-access-token-claims_add-in-only.json");
        let at = crate::identity::jwt::tests::unsigned(&serde_json::from_str(&claims).unwrap());
        let body = serde_json::json!({
            "token_type": "Bearer", "access_token": at, "expires_in": "43199",
            "not_before": "1403304705", "expires_on": "1403347905",
            "resource": "00000003-0000-0ff1-ce00-000000000000/company.sharepoint.com@040f2415-e6e3-4480-96ce-26ef73275f73"
        });
        let t = Token::from_json(&body.to_string(), NOW).unwrap();
        assert_eq!(t.expires_at.unwrap().unix_timestamp(), 1403347905);
        assert_eq!(
            t.tenant_id.as_deref(),
            Some("040f2415-e6e3-4480-96ce-26ef73275f73")
        );
        assert!(t.refresh_token.is_none());
    }

    #[test]
    fn absurd_lifetimes_do_not_panic() {
        let t = Token::from_json(
            r#"{"access_token":"a","expires_in":"9223372036854775807"}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(t.expires_at, None);
        let t = Token::from_json(
            r#"{"access_token":"a","expires_on":"-99999999999999"}"#,
            NOW,
        )
        .unwrap();
        assert!(!t.is_fresh(NOW, Duration::MAX));
        let t = Token::from_json(r#"{"access_token":"a","expires_in":60}"#, NOW).unwrap();
        assert!(!t.is_fresh(NOW, Duration::MAX));
    }

    #[test]
    fn rejects_bodies_without_token() {
        assert!(Token::from_json("{}", NOW).is_err());
        assert!(Token::from_json("[]", NOW).is_err());
        assert!(Token::from_json("nope", NOW).is_err());
        assert!(Token::from_json(r#"{"access_token":""}"#, NOW).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let t = Token::from_json(
            r#"{"access_token":"AT-SECRET","refresh_token":"RT-SECRET","expires_in":1}"#,
            NOW,
        )
        .unwrap();
        let d = format!("{t:?}");
        assert!(!d.contains("SECRET") && d.contains("[redacted]"), "{d}");
        assert!(!format!("{:?}", t.authorization()).contains("SECRET"));
    }
}
