//! The sign-in pages in a real browser: headless Debian Chromium (driven by
//! `tests/browser/signin.mjs`) against oauth-callback served on 127.0.0.1, over plain HTTP and
//! over TLS (where the nonce cookie is `__Host-` and `Secure`), with the emulator's interactive
//! Microsoft sign-in page in between.

use serde_json::Value;
use shared::oauth::state::{COOKIE_NAME, INSECURE_COOKIE_NAME};
use tenant_emulator::Options;
use url::Url;

use crate::lifecycle::env_full;

/// Where screenshots go (`docs/screenshots/` holds the copies the docs show).
fn shots_dir() -> String {
    std::env::var("SPBRIDGE_SCREENSHOTS").unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
        format!("{target}/screenshots")
    })
}

async fn walk(tls: bool) {
    let opts = Options {
        interactive_sign_in: true,
        ..Options::default()
    };
    let mut env = env_full(None, opts).await;
    let listener = spbridge_tests::browser::bind().await;
    let port = listener.local_addr().unwrap().port();
    let scheme = if tls { "https" } else { "http" };
    env.config.public_base_url = Some(Url::parse(&format!("{scheme}://127.0.0.1:{port}")).unwrap());
    env.connection("web", "entra").await;
    env.connection("web-refused", "entra").await;
    let link = env.connect_path("web", false).await;
    let link2 = env.connect_path("web-refused", false).await;

    let state = std::sync::Arc::new(env.callback());
    let handler = move |req| {
        let state = state.clone();
        async move { oauth_callback::handle(&state, req).await }
    };
    let mut vars = vec![("LINK", link), ("LINK2", link2), ("SHOTS", shots_dir())];
    let front = if tls {
        let t = tenant_emulator::loopback_tls().unwrap();
        vars.push(("SPKI", t.leaf_spki_sha256));
        vars.push(("COOKIE", COOKIE_NAME.to_owned()));
        spbridge_tests::browser::serve_tls(listener, t.acceptor, handler)
    } else {
        vars.push(("COOKIE", INSECURE_COOKIE_NAME.to_owned()));
        spbridge_tests::browser::serve(listener, handler)
    };
    vars.push(("BASE", front.base.clone()));

    let out = spbridge_tests::browser::run_node("signin.mjs", &vars).await;
    let summary: Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("signin.mjs printed no summary ({e}): {out}"));

    // The browser's walk stored a refresh token for the account it signed in as, and only there.
    let stored = env.stored("web").await.value;
    assert!(
        stored.refresh_token.is_some(),
        "the sign-in stored a refresh token"
    );
    let account = summary["account"].as_str().unwrap();
    assert!(
        summary["connected"].as_str().unwrap().contains("web"),
        "{summary}"
    );
    assert!(
        stored.bound_account.is_some(),
        "the account {account} is bound"
    );
    assert_eq!(summary["replay_status"], 409, "{summary}");
    assert!(
        summary["replay_text"]
            .as_str()
            .unwrap()
            .contains("replayed"),
        "{summary}"
    );
    // A user who cancels: Microsoft's access_denied is "consent needed", and nothing is stored.
    assert_eq!(summary["refused_status"], 424, "{summary}");
    let refused = summary["refused_text"].as_str().unwrap();
    assert!(
        refused.contains("needs_consent") && refused.contains("access_denied"),
        "{refused}"
    );
    assert!(
        env.stored("web-refused")
            .await
            .value
            .refresh_token
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_walk_in_chromium_over_http() {
    walk(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_walk_in_chromium_over_tls_with_host_cookie() {
    walk(true).await;
}
