//! Provider-independent building blocks of the sign-in flows (`GET /connect/{connection}` →
//! Microsoft → `GET|POST /callback`) and of token-refresh.
//!
//! Nothing here performs I/O: the identity protocols, the secret store and the Lambda handlers
//! call into these pieces.
//!
//! - [`state`]: the signed `state` parameter, its browser cookie, the stateless PKCE verifier and
//!   the bounded replay set.
//! - [`redirect`]: the redirect URI and the callback's query parameters.
//! - [`pages`]: the HTML/JSON result and error pages.
//! - [`refresh_policy`]: when token-refresh acts, how its failures are classified, and a
//!   bounded-concurrency runner.

pub mod pages;
pub mod redirect;
pub mod refresh_policy;
pub mod state;

/// Which Microsoft identity system a flow talks to: the same type the connection secret stores.
pub use crate::secrets::schema::Provider;

#[cfg(test)]
mod flow_tests {
    //! The pieces together, the way oauth-callback strings them: `/connect` → provider →
    //! `/callback`, then the same callback replayed.

    use http::{StatusCode, header};
    use time::macros::datetime;
    use time::{Duration, OffsetDateTime};

    use super::Provider;
    use super::pages::{self, Format, SuccessInfo};
    use super::redirect::{self, Callback, CallbackParams, RedirectSettings, RequestOrigin};
    use super::state::{
        ConsumedStates, CookieSettings, Flow, StateError, StateKey, StateRequest, StateSigner,
    };
    use crate::api::{ApiError, Kind};

    const NOW: OffsetDateTime = datetime!(2026-11-22 06:00 UTC);

    #[test]
    fn connect_callback_and_replay() {
        let signer = StateSigner::new(StateKey::new(vec![7; 32]).unwrap());
        let cookies = CookieSettings::default();
        let origin = RequestOrigin {
            host: Some("abc123.execute-api.us-east-1.amazonaws.com"),
            forwarded_proto: Some("https"),
            domain_name: Some("abc123.execute-api.us-east-1.amazonaws.com"),
            stage: Some("$default"),
        };

        // GET /connect/contoso-docs
        let redirect_uri = redirect::redirect_uri(&RedirectSettings::default(), &origin).unwrap();
        let issued = signer
            .issue(
                StateRequest {
                    connection: "contoso-docs".into(),
                    provider: Provider::Entra,
                    flow: Flow::Code,
                    redirect_uri: redirect_uri.to_string(),
                    scopes: vec!["offline_access".into()],
                    resource: None,
                    pkce: true,
                    rebind: false,
                },
                NOW,
            )
            .unwrap();
        let authorize = crate::identity::entra::authorize_url(
            &crate::config::Endpoints::for_cloud(crate::config::Cloud::Global),
            &crate::identity::entra::Authority::Common,
            "client",
            &redirect_uri,
            &["offline_access"],
            &issued.state,
            issued.code_challenge.as_deref().unwrap(),
        );
        let set_cookie = cookies.set_cookie(&issued.nonce);
        let connect = pages::connect_response(&authorize, &set_cookie, Format::Html);
        assert_eq!(connect.status(), StatusCode::FOUND);

        // The browser keeps `name=value` and API Gateway v2 hands it over in `cookies`.
        let stored_cookie = set_cookie.split(';').next().unwrap().to_owned();
        let event_cookies = ["other=1".to_owned(), stored_cookie];

        // GET /callback?code=…&state=… (the state came back through the provider).
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("code", "M.C507_BAY.2.U.code")
            .append_pair("state", &issued.state)
            .finish();
        let mut consumed = ConsumedStates::new();
        let now = NOW + Duration::minutes(2);
        let callback = |consumed: &mut ConsumedStates| -> Result<String, StateError> {
            let Callback::Code { code, state, .. } =
                CallbackParams::parse(&query).unwrap().classify().unwrap()
            else {
                panic!("expected a code");
            };
            let nonce = cookies.find_nonce(event_cookies.iter().map(String::as_str))?;
            let mut verified = signer.verify(&state, nonce.as_ref(), None, now)?;
            consumed
                .record(&verified.replay_key(), now)
                .map_err(|_| StateError::Replayed)?;
            let verifier = verified.take_pkce_verifier().unwrap();
            assert_eq!(verified.claims.redirect_uri, redirect_uri.as_str());
            Ok(format!("{}|{}", code.expose_secret(), verifier.challenge()))
        };
        let first = callback(&mut consumed).unwrap();
        assert_eq!(
            first,
            format!(
                "M.C507_BAY.2.U.code|{}",
                issued.code_challenge.as_deref().unwrap()
            )
        );
        let page = pages::success_page(
            &SuccessInfo {
                connection: "contoso-docs".into(),
                provider: Provider::Entra,
                account: Some("adele@contoso.com".into()),
                access_token_expires_at: Some(now + Duration::hours(1)),
                next_refresh_at: Some(now + Duration::minutes(50)),
            },
            Format::Json,
        );
        assert_eq!(page.status(), StatusCode::OK);
        assert!(!page.body().contains("M.C507"));

        // The same callback again: refused with 409 before anything is written.
        let replay = callback(&mut consumed).unwrap_err();
        assert_eq!(replay, StateError::Replayed);
        let page = pages::error_page(
            &ApiError::new(Kind::Replayed, replay.to_string()),
            Format::Json,
        );
        assert_eq!(page.status(), StatusCode::CONFLICT);
        assert_eq!(
            page.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
    }
}
