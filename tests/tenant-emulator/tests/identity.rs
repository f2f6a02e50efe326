//! Azure AD v1/v2, ACS, login.live.com and Discovery over real sockets.

mod common;

use base64::Engine as _;
use common::{aadsts, body, claims, start, start_with};
use serde_json::Value;
use sha2::Digest as _;
use std::time::{Duration, Instant};
use tenant_emulator::{Options, RefreshState};

const OTHER_KEY: &str = include_str!("../keys/other-key.pem");

#[tokio::test]
async fn starts_in_under_a_second_and_publishes_metadata() {
    let t0 = Instant::now();
    let t = start().await;
    let elapsed = t0.elapsed();
    assert!(elapsed < Duration::from_secs(1), "start took {elapsed:?}");
    let i = t.info();
    let (s, cfg) = body(
        t.http
            .get(format!(
                "{}/{}/v2.0/.well-known/openid-configuration",
                i.login, i.tenant_id
            ))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        cfg["token_endpoint"],
        format!("{}/{}/oauth2/v2.0/token", i.login, i.tenant_id)
    );
    let (s, keys) = body(
        t.http
            .get(cfg["jwks_uri"].as_str().unwrap_or_default())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    let jwk = &keys["keys"][0];
    // A token the emulator issues verifies against the published key.
    let token = t
        .entra_token("entra-app", "https://graph.microsoft.com")
        .await;
    let header = jsonwebtoken::decode_header(&token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(header.kid.as_deref(), jwk["kid"].as_str());
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap_or_default(),
        jwk["e"].as_str().unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["https://graph.microsoft.com"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(data.claims["tid"], i.tenant_id.as_str());
    assert_eq!(data.claims["appidacr"], "1");
    assert_eq!(data.claims["roles"][0], "Sites.ReadWrite.All");
}

#[tokio::test]
async fn v2_client_credentials_errors() {
    let t = start().await;
    let i = t.info().clone();
    let a = i
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    let url = t.v2_token_url();
    // Invalid secret.
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &a.client_id),
                ("client_secret", "nope"),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str(), aadsts(&v)),
        (401, Some("invalid_client"), 7000215)
    );
    let desc = v["error_description"].as_str().unwrap_or_default();
    assert!(
        desc.starts_with("AADSTS7000215: ")
            && desc.contains("\r\nTrace ID: ")
            && desc.contains("\r\nCorrelation ID: ")
            && desc.contains("\r\nTimestamp: "),
        "{desc}"
    );
    for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(v[k].is_string(), "{k} missing in {v}");
    }
    // Unknown tenant.
    let (s, v) = t
        .post_form(
            &format!("{}/not-a-tenant/oauth2/v2.0/token", i.login),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!((s, aadsts(&v)), (400, 90002));
    // Unknown client.
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "11111111-1111-1111-1111-111111111111"),
                ("client_secret", "x"),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
    assert_eq!((s, aadsts(&v)), (400, 700016));
    // Scope without /.default.
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                ("scope", "Files.Read"),
            ],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_scope")));
    // Unknown resource.
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                ("scope", "https://example.com/.default"),
            ],
        )
        .await;
    assert_eq!((s, aadsts(&v)), (400, 500011));
    // Instance discovery of an unknown authority.
    let (s, v) = body(
        t.http
            .get(format!("{}/common/discovery/instance", i.login))
            .query(&[(
                "authorization_endpoint",
                "https://evil.example/x/oauth2/v2.0/authorize",
            )])
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str(), aadsts(&v)),
        (400, Some("invalid_instance"), 50049)
    );
}

#[tokio::test]
async fn certificate_assertions_are_verified() {
    let t = start().await;
    let i = t.info().clone();
    let a = i
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    let url = t.v2_token_url();
    let key = a.private_key_pem.clone().unwrap_or_default();
    let token = t
        .entra_cert_token("entra-app", &format!("https://{}", i.sharepoint_host))
        .await;
    assert_eq!(claims(&token)["appidacr"], "2");
    let send = |assertion: String| {
        let t = &t;
        let url = url.clone();
        let cid = a.client_id.clone();
        async move {
            t.post_form(
                &url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &cid),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                    ("scope", "https://graph.microsoft.com/.default"),
                ],
            )
            .await
        }
    };
    // Signed by a key that is not the registered certificate's.
    let (s, v) = send(t.assertion("entra-app", &url, OTHER_KEY, 600, None)).await;
    assert_eq!((s, aadsts(&v)), (401, 700027));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("signature"),
        "{v}"
    );
    // Wrong audience.
    let (s, v) =
        send(t.assertion("entra-app", "https://login.example/token", &key, 600, None)).await;
    assert_eq!((s, aadsts(&v)), (401, 700027));
    // Expired.
    let (s, v) = send(t.assertion("entra-app", &url, &key, -10, None)).await;
    assert_eq!((s, aadsts(&v)), (401, 700027));
    // jti replay.
    let (s, _) = send(t.assertion("entra-app", &url, &key, 600, Some("jti-1"))).await;
    assert_eq!(s, 200);
    let (s, v) = send(t.assertion("entra-app", &url, &key, 600, Some("jti-1"))).await;
    assert_eq!((s, aadsts(&v)), (401, 700027));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("jti"),
        "{v}"
    );
}

fn pkce() -> (String, String) {
    let verifier = "x".repeat(43) + &uuid::Uuid::new_v4().simple().to_string();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

#[tokio::test]
async fn v2_code_pkce_refresh_and_hooks() {
    let t = start().await;
    let i = t.info().clone();
    let a = i
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    let url = t.v2_token_url();
    let secret = a.client_secret.clone().unwrap_or_default();
    let (verifier, challenge) = pkce();
    let code = t
        .authorize_v2(
            "entra-app",
            "https://graph.microsoft.com/Files.ReadWrite.All offline_access openid",
            Some(&challenge),
        )
        .await;
    let redeem = |code: String, verifier: String| {
        let (t, url, a, secret) = (&t, url.clone(), a.clone(), secret.clone());
        async move {
            t.post_form(
                &url,
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", &a.client_id),
                    ("client_secret", &secret),
                    ("code", &code),
                    ("redirect_uri", &a.redirect_uri),
                    ("code_verifier", &verifier),
                ],
            )
            .await
        }
    };
    // Wrong verifier.
    let (s, v) = redeem(
        code.clone(),
        "wrong-verifier-wrong-verifier-wrong-verifier".into(),
    )
    .await;
    assert_eq!((s, aadsts(&v)), (400, 501481));
    let (s, v) = redeem(code.clone(), verifier.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["expires_in"].is_number());
    assert_eq!(
        claims(v["access_token"].as_str().unwrap_or_default())["scp"],
        "Files.ReadWrite.All"
    );
    assert!(v["id_token"].is_string() && v["client_info"].is_string());
    // Used once.
    let (s, v) = redeem(code, verifier).await;
    assert_eq!((s, aadsts(&v)), (400, 54005));
    // Refresh rotates.
    let first_rt = {
        let (verifier, challenge) = pkce();
        let code = t
            .authorize_v2(
                "entra-app",
                "Files.ReadWrite.All offline_access",
                Some(&challenge),
            )
            .await;
        let (s, v) = redeem(code, verifier).await;
        assert_eq!(s, 200, "{v}");
        v["refresh_token"].as_str().unwrap_or_default().to_string()
    };
    let refresh = |rt: String| {
        let (t, url, a, secret) = (&t, url.clone(), a.clone(), secret.clone());
        async move {
            t.post_form(
                &url,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", &a.client_id),
                    ("client_secret", &secret),
                    ("refresh_token", &rt),
                    ("scope", "Files.ReadWrite.All offline_access"),
                ],
            )
            .await
        }
    };
    let (s, v) = refresh(first_rt.clone()).await;
    assert_eq!(s, 200, "{v}");
    let second_rt = v["refresh_token"].as_str().unwrap_or_default().to_string();
    assert!(!second_rt.is_empty() && second_rt != first_rt);
    // Hooks: expired → 70008, inactive → 700082, revoked consent → 65001.
    assert_eq!(
        t.emu
            .set_refresh_state(None, Some(&second_rt), RefreshState::Expired),
        1
    );
    let (s, v) = refresh(second_rt.clone()).await;
    assert_eq!(
        (s, v["error"].as_str(), aadsts(&v)),
        (400, Some("invalid_grant"), 70008)
    );
    assert_eq!(
        t.emu
            .set_refresh_state(None, Some(&first_rt), RefreshState::Inactive),
        1
    );
    let (s, v) = refresh(first_rt.clone()).await;
    assert_eq!((s, aadsts(&v)), (400, 700082));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("inactivity")
    );
    // The admin endpoint does the same.
    t.emu
        .set_refresh_state(Some(&a.client_id), None, RefreshState::Active);
    let (s, v) = body(
        t.http
            .post(format!("{}/_emulator/consent", i.base_url))
            .json(&serde_json::json!({"client_id": a.client_id}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = refresh(first_rt.clone()).await;
    assert_eq!(
        (s, aadsts(&v), v["suberror"].as_str()),
        (400, 65001, Some("consent_required"))
    );
    t.emu.set_consent_revoked(&a.client_id, false);
    let (s, _) = refresh(first_rt).await;
    assert_eq!(s, 200);
    // Garbage refresh token.
    let (s, v) = refresh("garbage".into()).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn expired_code_is_70008() {
    let t = start_with(Options {
        code_ttl: Duration::ZERO,
        ..Options::default()
    })
    .await;
    let a = t
        .info()
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    let code = t
        .authorize_v2("entra-app", "Files.ReadWrite.All", None)
        .await;
    let (s, v) = t
        .post_form(
            &t.v2_token_url(),
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                ("code", &code),
                ("redirect_uri", &a.redirect_uri),
            ],
        )
        .await;
    assert_eq!((s, aadsts(&v)), (400, 70008));
}

#[tokio::test]
async fn v1_token_endpoint_uses_strings_and_resource() {
    let t = start().await;
    let i = t.info().clone();
    let a = i
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    let (s, v) = t
        .post_form(
            &format!("{}/{}/oauth2/token", i.login, i.tenant_id),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                ("resource", "https://graph.microsoft.com"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for k in ["expires_in", "ext_expires_in", "expires_on", "not_before"] {
        assert!(
            v[k].as_str()
                .map(|x| x.parse::<i64>().is_ok())
                .unwrap_or(false),
            "{k} must be a numeric string: {v}"
        );
    }
    assert_eq!(v["resource"], "https://graph.microsoft.com");
}

#[tokio::test]
async fn acs_flows_and_errors() {
    let t = start().await;
    let i = t.info().clone();
    let app = i.acs_apps[0].clone();
    let url = format!("{}/{}/tokens/OAuth/2", i.acs, i.realm);
    let resource = format!(
        "00000003-0000-0ff1-ce00-000000000000/{}@{}",
        i.sharepoint_host, i.realm
    );
    let client = format!("{}@{}", app.client_id, i.realm);
    // Realm discovery.
    let r = t
        .http
        .get(format!("{}/_vti_bin/client.svc", t.site("team")))
        .header("authorization", "Bearer")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
    let wa = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(wa.starts_with(&format!("Bearer realm=\"{}\",client_id=\"00000003-0000-0ff1-ce00-000000000000\",trusted_issuers=\"00000001-0000-0000-c000-000000000000@*,", i.realm)), "{wa}");
    assert!(wa.contains("authorization_uri=\""));
    // Client credentials: numbers as strings.
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &client),
                ("client_secret", &app.client_secret),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["expires_in"], "86399");
    assert!(v["not_before"].is_string() && v["expires_on"].is_string());
    let c = claims(v["access_token"].as_str().unwrap_or_default());
    assert_eq!(c["aud"], resource.as_str());
    assert_eq!(
        c["iss"],
        format!("00000001-0000-0000-c000-000000000000@{}", i.realm)
    );
    assert_eq!(c["nameid"], format!("{}@{}", app.client_id, i.realm));
    // Bad secret.
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &client),
                ("client_secret", "bad"),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ACS50012: ")
    );
    // client_id without realm.
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &app.client_id),
                ("client_secret", &app.client_secret),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    // Bad resource format and wrong host.
    for bad in [
        "https://contoso.sharepoint.com".to_string(),
        format!(
            "00000003-0000-0ff1-ce00-000000000000/evil.example@{}",
            i.realm
        ),
    ] {
        let (s, v) = t
            .post_form(
                &url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &client),
                    ("client_secret", &app.client_secret),
                    ("resource", &bad),
                ],
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }
    // OAuthAuthorize → code → token; code used once; redirect must match.
    let r = t
        .http
        .get(format!(
            "{}/_layouts/15/OAuthAuthorize.aspx",
            t.site("team")
        ))
        .query(&[
            ("client_id", app.client_id.as_str()),
            ("scope", "Web.Write"),
            ("response_type", "code"),
            ("redirect_uri", app.redirect_uri.as_str()),
            ("state", "s9"),
        ])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 302);
    let loc = url::Url::parse(
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let q: std::collections::HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("s9"));
    let code = q.get("code").cloned().unwrap_or_default();
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &client),
                ("client_secret", &app.client_secret),
                ("code", &code),
                ("redirect_uri", "https://elsewhere.example/cb"),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ACS50011")
    );
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &client),
                ("client_secret", &app.client_secret),
                ("code", &code),
                ("redirect_uri", &app.redirect_uri),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(claims(v["access_token"].as_str().unwrap_or_default())["actor"].is_string());
    let rt = v["refresh_token"].as_str().unwrap_or_default().to_string();
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &client),
                ("client_secret", &app.client_secret),
                ("code", &code),
                ("redirect_uri", &app.redirect_uri),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &client),
                ("client_secret", &app.client_secret),
                ("refresh_token", &rt),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn context_token_is_signed_with_the_app_secret_and_redeemable() {
    let t = start().await;
    let i = t.info().clone();
    let app = i.acs_apps[0].clone();
    let token = t
        .emu
        .context_token(&app.client_id, "team")
        .unwrap_or_default();
    let key = base64::engine::general_purpose::STANDARD
        .decode(&app.client_secret)
        .unwrap_or_default();
    let c = tenant_emulator::verify_hs256(&key, &token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c["aud"],
        format!("{}/{}@{}", app.client_id, i.sharepoint_host, i.realm)
    );
    assert_eq!(
        c["iss"],
        format!("00000001-0000-0000-c000-000000000000@{}", i.realm)
    );
    assert!(c["nbf"].is_string() && c["exp"].is_string());
    let appctx: Value =
        serde_json::from_str(c["appctx"].as_str().unwrap_or_default()).unwrap_or(Value::Null);
    assert!(appctx["CacheKey"].is_string());
    assert_eq!(
        appctx["SecurityTokenServiceUri"],
        format!("{}/{}/tokens/OAuth/2", i.acs, i.realm)
    );
    assert!(tenant_emulator::verify_hs256(b"wrong key", &token).is_err());
    let resource = format!(
        "00000003-0000-0ff1-ce00-000000000000/{}@{}",
        i.sharepoint_host, i.realm
    );
    let (s, v) = t
        .post_form(
            appctx["SecurityTokenServiceUri"]
                .as_str()
                .unwrap_or_default(),
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &format!("{}@{}", app.client_id, i.realm)),
                ("client_secret", &app.client_secret),
                (
                    "refresh_token",
                    c["refreshtoken"].as_str().unwrap_or_default(),
                ),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // AppRedirect posts it to the app.
    let r = t
        .http
        .get(format!("{}/_layouts/15/AppRedirect.aspx", t.site("team")))
        .query(&[("client_id", app.client_id.as_str())])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let html = r.text().await.unwrap_or_default();
    assert!(html.contains("name=\"SPAppToken\"") && html.contains(&app.redirect_uri));
}

#[tokio::test]
async fn live_and_discovery() {
    let t = start().await;
    let i = t.info().clone();
    let a = i
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    let r = t
        .http
        .get(format!("{}/oauth20_authorize.srf", i.live))
        .query(&[
            ("client_id", a.client_id.as_str()),
            ("scope", "onedrive.readwrite offline_access"),
            ("response_type", "code"),
            ("redirect_uri", a.redirect_uri.as_str()),
        ])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 302);
    let loc = url::Url::parse(
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let code = loc
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let url = format!("{}/oauth20_token.srf", i.live);
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                ("code", &code),
                ("redirect_uri", &a.redirect_uri),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "bearer");
    assert!(v["expires_in"].is_number());
    let (s, v2) = t
        .post_form(
            &url,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                (
                    "refresh_token",
                    v["refresh_token"].as_str().unwrap_or_default(),
                ),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v2}");
    let (s, e) = t
        .post_form(
            &url,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                ("code", &code),
                ("redirect_uri", &a.redirect_uri),
            ],
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
    // The live access token reaches the user's OneDrive through Graph.
    let r = t
        .http
        .get(format!("{}/v1.0/me/drive/root", i.graph))
        .bearer_auth(v2["access_token"].as_str().unwrap_or_default())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    // Token flow puts the token in the fragment.
    let r = t
        .http
        .get(format!("{}/oauth20_authorize.srf", i.live))
        .query(&[
            ("client_id", a.client_id.as_str()),
            ("response_type", "token"),
            ("redirect_uri", a.redirect_uri.as_str()),
        ])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .contains("#access_token=")
    );
    // Discovery needs a Discovery-audience token.
    let (s, _) = body(
        t.http
            .get(format!("{}/v1.0/me/services", i.discovery))
            .bearer_auth(
                t.entra_token("entra-app", "https://graph.microsoft.com")
                    .await,
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 401);
    let tok = t
        .entra_token("entra-app", "https://api.office.com/discovery/")
        .await;
    let (s, v) = body(
        t.http
            .get(format!("{}/v1.0/me/services", i.discovery))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["value"][0]["capability"], "MyFiles");
}
