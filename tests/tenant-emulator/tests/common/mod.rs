//! Shared test support: start an emulator on a random port, a reqwest client, token helpers.
#![allow(dead_code)]

use base64::Engine as _;
use serde_json::{Value, json};
use tenant_emulator::{Emulator, EmulatorInfo, Options, RunningEmulator};

pub struct T {
    pub emu: RunningEmulator,
    pub http: reqwest::Client,
}

pub async fn start() -> T {
    start_with(Options::default()).await
}

pub async fn start_with(opts: Options) -> T {
    let emu = match Emulator::start(opts).await {
        Ok(e) => e,
        Err(e) => panic!("emulator failed to start: {e}"),
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    T { emu, http }
}

pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap_or_default();
    serde_json::from_slice(&raw).unwrap_or(Value::Null)
}

pub async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The AADSTS code of an error body.
pub fn aadsts(v: &Value) -> u64 {
    v["error_codes"][0].as_u64().unwrap_or(0)
}

impl T {
    pub fn info(&self) -> &EmulatorInfo {
        self.emu.info()
    }

    pub fn v2_token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.info().login,
            self.info().tenant_id
        )
    }

    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(url)
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        body(r).await
    }

    /// Entra v2 client-credentials token with the app's secret.
    pub async fn entra_token(&self, app: &str, resource: &str) -> String {
        let a = self
            .info()
            .entra_app(app)
            .cloned()
            .unwrap_or_else(|| panic!("no app {app}"));
        let scope = format!("{resource}/.default");
        let (s, v) = self
            .post_form(
                &self.v2_token_url(),
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &a.client_id),
                    (
                        "client_secret",
                        a.client_secret.as_deref().unwrap_or_default(),
                    ),
                    ("scope", &scope),
                ],
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["access_token"].as_str().unwrap_or_default().to_string()
    }

    /// Entra v2 client-credentials token with a certificate assertion.
    pub async fn entra_cert_token(&self, app: &str, resource: &str) -> String {
        let a = self
            .info()
            .entra_app(app)
            .cloned()
            .unwrap_or_else(|| panic!("no app {app}"));
        let assertion = self.assertion(
            app,
            &self.v2_token_url(),
            a.private_key_pem.as_deref().unwrap_or_default(),
            600,
            None,
        );
        let scope = format!("{resource}/.default");
        let (s, v) = self
            .post_form(
                &self.v2_token_url(),
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &a.client_id),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                    ("scope", &scope),
                ],
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["access_token"].as_str().unwrap_or_default().to_string()
    }

    pub fn assertion(
        &self,
        app: &str,
        aud: &str,
        key_pem: &str,
        ttl: i64,
        jti: Option<&str>,
    ) -> String {
        let a = self
            .info()
            .entra_app(app)
            .cloned()
            .unwrap_or_else(|| panic!("no app {app}"));
        let thumb = hex_decode(a.thumbprint_sha1.as_deref().unwrap_or_default());
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.x5t = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(thumb));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let c = json!({"aud": aud, "iss": a.client_id, "sub": a.client_id, "exp": now + ttl, "nbf": now - 60, "jti": jti.map(str::to_string).unwrap_or_else(|| uuid::Uuid::new_v4().to_string())});
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        jsonwebtoken::encode(&h, &c, &key).unwrap_or_else(|e| panic!("{e}"))
    }

    /// ACS app-only token for the SharePoint host.
    pub async fn acs_token(&self) -> String {
        let i = self.info();
        let a = &i.acs_apps[0];
        let (s, v) = self
            .post_form(
                &format!("{}/{}/tokens/OAuth/2", i.acs, i.realm),
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &format!("{}@{}", a.client_id, i.realm)),
                    ("client_secret", &a.client_secret),
                    (
                        "resource",
                        &format!(
                            "00000003-0000-0ff1-ce00-000000000000/{}@{}",
                            i.sharepoint_host, i.realm
                        ),
                    ),
                ],
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["access_token"].as_str().unwrap_or_default().to_string()
    }

    pub fn site(&self, name: &str) -> String {
        self.info()
            .site(name)
            .map(|s| s.url.clone())
            .unwrap_or_default()
    }

    pub fn drive(&self, site: &str) -> String {
        self.info()
            .site(site)
            .map(|s| s.libraries[0].drive_id.clone())
            .unwrap_or_default()
    }

    /// Authorize (v2) and return the code, following nothing.
    pub async fn authorize_v2(&self, app: &str, scope: &str, challenge: Option<&str>) -> String {
        let i = self.info();
        let a = i
            .entra_app(app)
            .cloned()
            .unwrap_or_else(|| panic!("no app"));
        let mut q = vec![
            ("client_id", a.client_id.clone()),
            ("response_type", "code".into()),
            ("redirect_uri", a.redirect_uri.clone()),
            ("scope", scope.into()),
            ("state", "st1".into()),
        ];
        if let Some(c) = challenge {
            q.push(("code_challenge", c.into()));
            q.push(("code_challenge_method", "S256".into()));
        }
        let r = self
            .http
            .get(format!("{}/{}/oauth2/v2.0/authorize", i.login, i.tenant_id))
            .query(&q)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 302);
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let u = url::Url::parse(&loc).unwrap_or_else(|e| panic!("{e}: {loc}"));
        assert!(loc.starts_with(&a.redirect_uri));
        assert_eq!(
            u.query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.to_string())
                .as_deref(),
            Some("st1")
        );
        u.query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    }
}

pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}
