//! Microsoft accounts (personal OneDrive) at login.live.com.
//!
//! The code flow's authorize URL, code redemption and refresh at
//! `oauth20_token.srf`, the logout URL, and error redirects.

use url::Url;

use super::{
    error::{IdentityError, MsError},
    request::{Field, HttpRequest, form},
    secret::{AuthCode, ClientSecret, RefreshToken},
};
use crate::config::{Endpoints, join_path};

/// A Microsoft account app.
#[derive(Debug, Clone)]
pub struct MsaApp {
    /// Application (client) id.
    pub client_id: String,
    /// Client secret (absent for mobile/desktop apps).
    pub secret: Option<ClientSecret>,
}

/// `{live}/oauth20_authorize.srf?client_id&scope&response_type=code&redirect_uri&state`: the
/// code flow (the token flow's fragment token cannot be refreshed, so spbridge never asks for it).
pub fn authorize_url(
    endpoints: &Endpoints,
    client_id: &str,
    scopes: &[&str],
    redirect_uri: &Url,
    state: &str,
) -> Url {
    let mut url = join_path(&endpoints.live, "oauth20_authorize.srf");
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri.as_str())
        .append_pair("state", state)
        // The consent page names the account, so a signed-in session cannot bind silently.
        .append_pair("prompt", "consent");
    url
}

/// `{live}/oauth20_token.srf`.
pub fn token_url(endpoints: &Endpoints) -> Url {
    join_path(&endpoints.live, "oauth20_token.srf")
}

fn client_fields(app: &MsaApp, redirect_uri: &Url) -> Vec<(String, Field)> {
    let mut f = form([
        ("client_id", app.client_id.as_str().into()),
        ("redirect_uri", redirect_uri.as_str().into()),
    ]);
    if let Some(s) = &app.secret {
        f.push(("client_secret".into(), Field::secret(s.expose_secret())));
    }
    f
}

/// Redeems a code.
pub fn code_request(
    endpoints: &Endpoints,
    app: &MsaApp,
    code: &AuthCode,
    redirect_uri: &Url,
) -> HttpRequest {
    let mut f = client_fields(app, redirect_uri);
    f.extend(form([
        ("code", Field::secret(code.expose_secret())),
        ("grant_type", "authorization_code".into()),
    ]));
    HttpRequest::post_form(token_url(endpoints), f)
}

/// Redeems a refresh token. A new refresh token in the response replaces this one.
pub fn refresh_request(
    endpoints: &Endpoints,
    app: &MsaApp,
    refresh_token: &RefreshToken,
    redirect_uri: &Url,
) -> HttpRequest {
    let mut f = client_fields(app, redirect_uri);
    f.extend(form([
        (
            "refresh_token",
            Field::secret(refresh_token.expose_secret()),
        ),
        ("grant_type", "refresh_token".into()),
    ]));
    HttpRequest::post_form(token_url(endpoints), f)
}

/// `{live}/oauth20_logout.srf?client_id&redirect_uri`.
pub fn logout_url(endpoints: &Endpoints, client_id: &str, redirect_uri: &Url) -> Url {
    let mut url = join_path(&endpoints.live, "oauth20_logout.srf");
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri.as_str());
    url
}

/// The `error`/`error_description` of a redirect, from its query (code flow) or fragment
/// (token flow); `None` if the redirect carries no error.
pub fn redirect_error(redirect: &Url) -> Option<MsError> {
    let sources = [redirect.query(), redirect.fragment()];
    for src in sources.into_iter().flatten() {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(src.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let Some(error) = get("error") {
            // The redirect may also carry a code or token: keep only the error fields.
            let body = ["error", "error_description"]
                .iter()
                .filter_map(|k| get(k).map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join("&");
            return Some(MsError::from_parts(
                0,
                error,
                get("error_description"),
                None,
                None,
                None,
                &body,
            ));
        }
    }
    None
}

/// The code (and state) of a code-flow redirect, or the classified error it carries.
pub fn redirect_code(redirect: &Url) -> Result<(AuthCode, Option<String>), IdentityError> {
    if let Some(e) = redirect_error(redirect) {
        return Err(IdentityError::from_ms(e));
    }
    let mut code = None;
    let mut state = None;
    for (k, v) in redirect.query_pairs() {
        match k.as_ref() {
            "code" if !v.is_empty() => code = Some(AuthCode::new(v.into_owned())),
            "state" => state = Some(v.into_owned()),
            _ => {}
        }
    }
    code.map(|c| (c, state)).ok_or_else(|| {
        IdentityError::InvalidInput("redirect carries neither code nor error".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cloud;

    fn eps() -> Endpoints {
        Endpoints::for_cloud(Cloud::Global)
    }
    fn cb() -> Url {
        Url::parse("https://app.example/cb").unwrap()
    }
    fn pairs(url: &Url) -> Vec<(String, String)> {
        url.query_pairs().into_owned().collect()
    }
    fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn authorize_url_is_the_code_flow() {
        let url = authorize_url(
            &eps(),
            "cid",
            &["onedrive.readwrite", "offline_access"],
            &cb(),
            "st",
        );
        assert_eq!(url.origin().ascii_serialization(), "https://login.live.com");
        assert_eq!(url.path(), "/oauth20_authorize.srf");
        assert_eq!(
            pairs(&url),
            owned(&[
                ("client_id", "cid"),
                ("scope", "onedrive.readwrite offline_access"),
                ("response_type", "code"),
                ("redirect_uri", "https://app.example/cb"),
                ("state", "st"),
                ("prompt", "consent")
            ])
        );
    }

    #[test]
    fn code_and_refresh_requests_are_exact() {
        let app = MsaApp {
            client_id: "cid".into(),
            secret: Some(ClientSecret::new("cs-9")),
        };
        let r = code_request(&eps(), &app, &AuthCode::new("M-code"), &cb());
        assert_eq!(r.method, reqwest::Method::POST);
        assert_eq!(r.url.as_str(), "https://login.live.com/oauth20_token.srf");
        assert_eq!(
            r.form_names(),
            [
                "client_id",
                "redirect_uri",
                "client_secret",
                "code",
                "grant_type"
            ]
        );
        assert_eq!(r.form_value("grant_type"), Some("authorization_code"));
        assert_eq!(r.form_value("code"), Some("M-code"));
        let r = refresh_request(
            &eps(),
            &MsaApp {
                client_id: "cid".into(),
                secret: None,
            },
            &RefreshToken::new("rt"),
            &cb(),
        );
        assert_eq!(
            r.form_names(),
            ["client_id", "redirect_uri", "refresh_token", "grant_type"]
        );
        assert_eq!(r.form_value("grant_type"), Some("refresh_token"));
        assert!(!format!("{r:?}").contains("\"rt\""));
    }

    #[test]
    fn logout_url_is_exact() {
        let url = logout_url(&eps(), "cid", &cb());
        assert_eq!(
            url.as_str(),
            "https://login.live.com/oauth20_logout.srf?client_id=cid&redirect_uri=https%3A%2F%2Fapp.example%2Fcb"
        );
    }

    #[test]
    fn errors_from_query_or_fragment() {
        let q = Url::parse("https://app.example/cb?error=access_denied&error_description=The%20user%20has%20denied%20access&state=s").unwrap();
        let e = redirect_error(&q).unwrap();
        assert_eq!(e.error, "access_denied");
        assert_eq!(e.description.as_deref(), Some("The user has denied access"));
        assert!(matches!(
            redirect_code(&q),
            Err(IdentityError::NeedsConsent(_))
        ));

        let f = Url::parse(
            "https://app.example/cb#error=invalid_scope&error_description=AADSTS70011%3A+bad+scope",
        )
        .unwrap();
        let e = redirect_error(&f).unwrap();
        assert_eq!(e.error, "invalid_scope");
        assert_eq!(e.code.as_deref(), Some("AADSTS70011"));

        let ok = Url::parse("https://app.example/cb?code=M.C1_abc&state=xyz").unwrap();
        assert!(redirect_error(&ok).is_none());
        let (code, state) = redirect_code(&ok).unwrap();
        assert_eq!(code.expose_secret(), "M.C1_abc");
        assert_eq!(state.as_deref(), Some("xyz"));
        assert!(matches!(
            redirect_code(&cb()),
            Err(IdentityError::InvalidInput(_))
        ));
        let token = Url::parse("https://app.example/cb#access_token=AT&token_type=bearer").unwrap();
        assert!(redirect_error(&token).is_none());
    }
}
