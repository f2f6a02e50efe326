//! Issue 10's attacks, each sent the way an attacker would: through the functions' handlers,
//! against moto and the tenant emulator. Every test checks the refusal (status and error code)
//! and that nothing was written: the stored connection, the library and the ledger are
//! unchanged. `docs/security.md` maps each attack to its defence and to the test here.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use lambda_http::{Body, Response};
use serde_json::{Value, json};
use sha2::Sha256;
use shared::secrets::{SecretError, schema};
use shared::signin::link::LinkSigner;
use spbridge_tests::assert_reveals_nothing;
use time::OffsetDateTime;

use crate::ingest::{SP_LIB, Setup, WHSEC, World, event, hex_of, new_id, now_secs, sign_with};
use crate::lifecycle::{
    Env, body_json, env, error_code, finish_consent, get, header, post_form, start_consent,
};

/// Tenant A's and tenant B's own Standard Webhooks secrets.
const A_SECRET: &str = "whsec_dGVuYW50LWEtb3duLXNpZ25pbmcta2V5LTAx";
const B_SECRET: &str = "whsec_dGVuYW50LWItb3duLXNpZ25pbmcta2V5LTAy";
/// GitHub's documented example secret.
const GH_SECRET: &str = "It's a Secret to Everybody";

/// Adds a SharePoint connection like `contoso-docs` but with files under `folder`, and its
/// sender secret.
async fn add_tenant(w: &World, id: &str, folder: &str, sender: Value) {
    let base = w
        .store
        .get(&format!("{}connections/contoso-docs", w.prefix))
        .await
        .unwrap()
        .value;
    let mut conn = base.clone();
    conn["target"]["base_folder"] = json!(folder);
    let put = |name: String, v: Value| async move { w.store.put(&name, &v, None).await.unwrap() };
    put(format!("{}connections/{id}", w.prefix), conn).await;
    put(format!("{}senders/{id}", w.prefix), sender).await;
}

/// What must not change: each connection's secret (version and value), its ledger, and the
/// whole library.
async fn snapshot(w: &World, ids: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for id in ids {
        for kind in ["connections", "idempotency"] {
            let name = format!("{}{kind}/{id}", w.prefix);
            let v = match w.store.get(&name).await {
                Ok(v) => json!({"version": v.version.as_str(), "value": v.value}),
                Err(SecretError::NotFound { .. }) => json!("absent"),
                Err(e) => panic!("{name}: {e}"),
            };
            out.insert(name, v);
        }
    }
    out.insert("library".into(), json!(w.library()));
    Value::Object(out)
}

fn internal(w: &World) -> Vec<String> {
    vec![
        w.prefix.clone(),
        format!("{}senders/", w.prefix),
        "acs-app".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Standard Webhooks headers for `body`, signed with `whsec`.
fn signed_headers(whsec: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let (id, ts) = (new_id(), now_secs());
    vec![
        ("content-type", "application/octet-stream".into()),
        ("webhook-id", id.clone()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sign_with(whsec, &id, ts, body)),
    ]
}

/// Attack 1: a request captured on its way to connection A, replayed to connection B (with
/// another name, folder and `conflict=replace`), or signed with the deployment-wide secret.
#[tokio::test]
async fn a_request_signed_for_one_connection_is_refused_at_every_other() {
    let w = World::start(Setup::default()).await;
    add_tenant(&w, "tenant-a", "a", json!({"webhook_secrets": [A_SECRET]})).await;
    add_tenant(&w, "tenant-b", "b", json!({"webhook_secrets": [B_SECRET]})).await;
    add_tenant(
        &w,
        "tenant-c",
        "c",
        json!({"accept_deployment_secret": true}),
    )
    .await;
    let body = b"quarterly figures";
    let captured = signed_headers(A_SECRET, body);
    let (s, b, _) = w
        .send(event("/upload/tenant-a", "name=q.txt", &captured, body))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/a/q.txt")).unwrap(), body);

    let before = snapshot(&w, &["tenant-b", "tenant-c"]).await;
    let deployment_signed = signed_headers(WHSEC, body);
    let mut answers = Vec::new();
    for (what, path, query, headers) in [
        (
            "A's request replayed to B",
            "/upload/tenant-b",
            "name=q.txt&folder=x&conflict=replace",
            captured.clone(),
        ),
        (
            "A's request replayed to B under another name",
            "/upload/tenant-b",
            "name=evil.txt",
            captured.clone(),
        ),
        (
            "signed with the deployment secret, which B does not accept",
            "/upload/tenant-b",
            "name=d.txt",
            deployment_signed.clone(),
        ),
        (
            "A's request replayed to an unknown connection",
            "/upload/no-such-tenant",
            "name=q.txt",
            captured.clone(),
        ),
    ] {
        let (s, b, _) = w.send(event(path, query, &headers, body)).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (401, Some("unauthorized")),
            "{what}: {b}"
        );
        assert_reveals_nothing(what, &b.to_string(), &strs(&internal(&w)));
        answers.push(b);
    }
    // B, an unknown connection and a wrong secret answer alike: existence is not revealed.
    assert_eq!(answers[0], answers[3]);
    assert_eq!(snapshot(&w, &["tenant-b", "tenant-c"]).await, before);
    assert!(w.bytes(&format!("{SP_LIB}/b/q.txt")).is_none());

    // Only a connection configured to accept the deployment secret takes it.
    let (s, b, _) = w
        .send(event(
            "/upload/tenant-c",
            "name=d.txt",
            &deployment_signed,
            body,
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/c/d.txt")).unwrap(), body);
}

/// Attack 1, rotation: while a connection rolls its secret both verify, the old one stops once
/// removed; neither works at another connection.
#[tokio::test]
async fn rolling_a_sender_secret_has_no_gap_and_retired_secrets_stop() {
    let w = World::start(Setup::default()).await;
    add_tenant(
        &w,
        "rolling",
        "r",
        json!({"webhook_secrets": [B_SECRET, A_SECRET]}),
    )
    .await;
    for (i, key) in [A_SECRET, B_SECRET].iter().enumerate() {
        let body = format!("file {i}");
        let (s, b, _) = w
            .send(event(
                "/upload/rolling",
                &format!("name=f{i}.txt"),
                &signed_headers(key, body.as_bytes()),
                body.as_bytes(),
            ))
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let name = format!("{}senders/rolling", w.prefix);
    let cur = w.store.get(&name).await.unwrap();
    w.store
        .put(
            &name,
            &json!({"webhook_secrets": [B_SECRET]}),
            Some(&cur.version),
        )
        .await
        .unwrap();
    let before = snapshot(&w, &["rolling"]).await;
    let (s, b, _) = w
        .send(event(
            "/upload/rolling",
            "name=late.txt",
            &signed_headers(A_SECRET, b"late"),
            b"late",
        ))
        .await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")), "{b}");
    assert_eq!(snapshot(&w, &["rolling"]).await, before);
}

fn github_sig(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(GH_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex_of(&mac.finalize().into_bytes()))
}

/// Attack 3: a GitHub-style request (no signed timestamp) replayed with a fresh or no
/// `X-GitHub-Delivery`, and another name in the unsigned query.
#[tokio::test]
async fn a_replayed_github_request_with_a_fresh_or_missing_delivery_id_is_refused() {
    let w = World::start(Setup::default()).await;
    add_tenant(
        &w,
        "gh",
        "gh",
        json!({"github_signature": true, "github_secrets": [GH_SECRET]}),
    )
    .await;
    let body = b"release notes 1.2.3";
    let headers = |delivery: Option<&str>| {
        let mut h = vec![
            ("content-type", "application/octet-stream".to_owned()),
            ("x-hub-signature-256", github_sig(body)),
        ];
        if let Some(d) = delivery {
            h.push(("x-github-delivery", d.to_owned()));
        }
        h
    };
    let (s, first, _) = w
        .send(event(
            "/upload/gh",
            "name=notes.txt",
            &headers(Some("d-1")),
            body,
        ))
        .await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/gh/notes.txt")).unwrap(), body);

    let before = snapshot(&w, &["gh"]).await;
    for (what, delivery) in [
        ("a fresh delivery id", Some("d-2")),
        ("no delivery id", None),
    ] {
        let (s, b, _) = w
            .send(event(
                "/upload/gh",
                "name=evil.txt&conflict=replace",
                &headers(delivery),
                body,
            ))
            .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (409, Some("replayed")),
            "{what}: {b}"
        );
        assert!(b["message"].as_str().unwrap().contains("timestamp"), "{b}");
    }
    // GitHub's own redelivery (same id) gets the first answer again; no second file.
    let (s, again, h) = w
        .send(event(
            "/upload/gh",
            "name=notes.txt",
            &headers(Some("d-1")),
            body,
        ))
        .await;
    assert_eq!((s, &again), (201, &first));
    assert_eq!(
        h.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(snapshot(&w, &["gh"]).await, before);
    assert!(w.bytes(&format!("{SP_LIB}/gh/evil.txt")).is_none());
}

/// Status, headers and body of an answer, to compare two answers byte for byte.
fn whole(resp: &Response<Body>) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    (resp.status().as_u16(), headers, resp.body().to_vec())
}

/// Connects `id` once with a minted link, so it holds a refresh token and a bound account.
async fn connected(env: &Env, id: &str) {
    env.connection(id, "entra").await;
    let cb = env.callback();
    let c = start_consent(env, &cb, id).await;
    let resp = finish_consent(&cb, &c).await;
    assert_eq!(resp.status(), 200, "{}", body_json(&resp));
    assert!(env.stored(id).await.value.bound_account.is_some());
}

/// Attack 2: anyone opening `/connect/{id}` to take over a connection, and probing which
/// connections exist. Without a valid link every id gets the same answer and nothing is read
/// or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_a_valid_link_is_one_answer_for_every_id_and_writes_nothing() {
    let env = env().await;
    connected(&env, "victim").await;
    env.connection("other", "entra").await;
    let cb = env.callback();
    let before = env.stored("victim").await;

    let keys = schema::state_keys(env.store.as_ref(), &env.config.secrets)
        .await
        .unwrap();
    let signer = LinkSigner::new(&keys).unwrap();
    let long_ago = OffsetDateTime::now_utc() - time::Duration::days(2);
    let expired = signer
        .mint("victim", time::Duration::hours(1), true, long_ago)
        .unwrap();
    let other_link = env.connect_path("other", true).await;
    let other_token = other_link.split("invite=").nth(1).unwrap().to_owned();
    let mut tampered = env.connect_path("victim", false).await;
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });

    let probes = [
        "/connect/victim".to_owned(),
        "/connect/victim?invite=forged.token".to_owned(),
        format!("/connect/victim?invite={expired}"),
        format!("/connect/victim?invite={other_token}"),
        tampered,
        "/connect/no-such-connection".to_owned(),
        format!("/connect/no-such-connection?invite={other_token}"),
        "/connect/..%2Fapp".to_owned(),
    ];
    let mut seen = None;
    for uri in &probes {
        for accept in ["application/json", "text/html"] {
            let resp = oauth_callback::handle(
                &cb,
                get(uri, &[("accept", accept), ("host", "127.0.0.1:9")]),
            )
            .await;
            assert!(resp.headers().get("set-cookie").is_none(), "{uri}");
            let answer = whole(&resp);
            assert_eq!(answer.0, 403, "{uri}");
            assert_reveals_nothing(
                uri,
                &String::from_utf8_lossy(&answer.2),
                &[env.config.secrets.prefix.as_str(), "victim", "state-key"],
            );
            if accept == "application/json" {
                assert_eq!(error_code(&resp), "forbidden");
                match &seen {
                    None => seen = Some(answer),
                    Some(first) => assert_eq!(&answer, first, "{uri} answers differently"),
                }
            }
        }
    }
    let after = env.stored("victim").await;
    assert_eq!(after.version, before.version, "nothing written");

    // A valid link works once; the second use gets the same 403 as everything above.
    let link = env.connect_path("victim", false).await;
    let open = |uri: String| {
        let cb = &cb;
        async move {
            oauth_callback::handle(
                cb,
                get(
                    &uri,
                    &[("accept", "application/json"), ("host", "127.0.0.1:9")],
                ),
            )
            .await
        }
    };
    assert_eq!(open(link.clone()).await.status(), 200);
    let reused = open(link).await;
    assert_eq!(whole(&reused), seen.unwrap());
}

/// Attack 2, takeover: someone with a link (or a browser already signed in to another account)
/// signs in with another account. The connection keeps its account and token; only a link
/// minted for re-binding may change them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_with_another_account_is_refused_unless_the_link_rebinds() {
    let env = env().await;
    connected(&env, "victim").await;
    // The victim's own account is someone other than the emulator's user (the attacker here).
    let name = env.name("connections/victim");
    let cur = env.store.get(&name).await.unwrap();
    let mut v = cur.value.clone();
    let attacker_oid = v["bound_account"]["object_id"].as_str().unwrap().to_owned();
    v["bound_account"]["object_id"] = json!("0b7d6f3e-1111-4c2a-9d3e-victim000001");
    v["refresh_token"] = json!("rt-victim");
    v["account"] = json!("victim@contoso.onmicrosoft.com");
    env.store.put(&name, &v, Some(&cur.version)).await.unwrap();

    let cb = env.callback();
    let c = start_consent(&env, &cb, "victim").await;
    let before = env.stored("victim").await;
    let resp = finish_consent(&cb, &c).await;
    let body = body_json(&resp);
    assert_eq!(
        (resp.status().as_u16(), body["error"].as_str()),
        (409, Some("account_mismatch")),
        "{body}"
    );
    let after = env.stored("victim").await;
    assert_eq!(after.version, before.version, "nothing written");
    assert_eq!(
        serde_json::to_value(&after.value).unwrap()["refresh_token"],
        "rt-victim"
    );

    // An operator's re-binding link lets the new account in.
    let resp = oauth_callback::handle(
        &cb,
        get(
            &env.connect_path("victim", true).await,
            &[("accept", "text/html"), ("host", "127.0.0.1:9")],
        ),
    )
    .await;
    assert_eq!(resp.status(), 302);
    let location = url::Url::parse(header(&resp, "location")).unwrap();
    assert!(
        location
            .query_pairs()
            .any(|(k, v)| k == "prompt" && v == "select_account"),
        "{location}"
    );
    let cookie = header(&resp, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let back = env.http.get(location).send().await.unwrap();
    let back = url::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    let resp = finish_consent(
        &cb,
        &crate::lifecycle::Consent {
            callback_query: back.query().unwrap().to_owned(),
            cookie,
        },
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", body_json(&resp));
    let rebound = env.stored("victim").await.value;
    assert_eq!(rebound.bound_account.unwrap().object_id, attacker_oid);
}

/// Attack 2, add-in launch: a context token from another tenant (or for another site) posted
/// without `SPHostUrl` must not be trusted on its own realm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_token_must_match_the_connections_realm_and_site() {
    let env = env().await;
    env.connection("addin", "acs").await;
    let cb = env.callback();
    let acs = env.info().acs_app("acs-app").unwrap().client_id.clone();
    let host = env.info().sharepoint_host.clone();
    let token = env.emu.context_token(&acs, "team").unwrap();
    // The connection belongs to another tenant than the one that issued the token.
    let name = env.name("connections/addin");
    let cur = env.store.get(&name).await.unwrap();
    let mut v = cur.value.clone();
    v["realm"] = json!("6f1d2c3b-0000-4000-8000-00000000beef");
    env.store.put(&name, &v, Some(&cur.version)).await.unwrap();
    let before = env.stored("addin").await;

    let resp = oauth_callback::handle(
        &cb,
        post_form(
            "/callback?connection=addin",
            &host,
            &[("SPAppToken", &token)],
        ),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (401, "unauthorized".into())
    );
    let resp = oauth_callback::handle(
        &cb,
        post_form(
            "/callback?connection=addin",
            &host,
            &[
                ("SPAppToken", &token),
                ("SPHostUrl", "https://fabrikam.sharepoint.com/sites/x"),
            ],
        ),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp)),
        (400, "bad_request".into())
    );
    assert_eq!(env.stored("addin").await.version, before.version);

    // With no realm configured, the site's own (discovered) realm is required, and matches.
    let cur = env.store.get(&name).await.unwrap();
    let mut v = cur.value.clone();
    v.as_object_mut().unwrap().remove("realm");
    env.store.put(&name, &v, Some(&cur.version)).await.unwrap();
    let resp = oauth_callback::handle(
        &cb,
        post_form(
            "/callback?connection=addin",
            &host,
            &[("SPAppToken", &token)],
        ),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", body_json(&resp));
    assert_eq!(
        env.stored("addin").await.value.realm.as_deref(),
        Some(env.info().realm.as_str())
    );
}
