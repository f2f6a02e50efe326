//! Fault injection, TLS and the CLI over real sockets.

mod common;

use common::{body, start, start_with};
use serde_json::json;
use std::io::{BufRead as _, BufReader};
use std::time::{Duration, Instant};
use tenant_emulator::{FaultKind, FaultRule, Options};

#[tokio::test]
async fn throttling_with_retry_after_scoped_by_prefix() {
    let t = start_with(Options {
        faults: vec![
            FaultRule::new(
                "/graph",
                FaultKind::Status {
                    status: 429,
                    retry_after: Some(7),
                },
            )
            .times(2),
        ],
        ..Options::default()
    })
    .await;
    let g = format!("{}/v1.0/drives/{}/root", t.info().graph, t.drive("team"));
    let r = t
        .http
        .get(&g)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7")
    );
    let (_, v) = body(r).await;
    assert_eq!(v["error"]["code"], "activityLimitReached");
    // Other prefixes are untouched.
    let (s, _) = body(
        t.http
            .get(format!("{}/_api/web", t.site("team")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 401);
    let r = t
        .http
        .get(&g)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 429);
    // times(2) used up: the real answer (401 without a token) comes back.
    let r = t
        .http
        .get(&g)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn admin_endpoint_adds_token_outage_and_latency() {
    let t = start().await;
    let admin = format!("{}/_emulator/faults", t.info().base_url);
    let (s, _) = body(t.http.post(&admin).json(&json!([{"path_prefix": "", "kind": "token_outage", "retry_after": 3}, {"path_prefix": "/sites", "kind": "latency", "ms": 150}])).send().await.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(s, 200);
    let (s, v) = t
        .post_form(&t.v2_token_url(), &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    let i = t.info();
    let (s, _) = t
        .post_form(&format!("{}/{}/tokens/OAuth/2", i.acs, i.realm), &[])
        .await;
    assert_eq!(s, 503);
    // Metadata is not a token endpoint.
    let (s, _) = body(
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
    let t0 = Instant::now();
    let _ = t
        .http
        .get(format!("{}/_api/web", t.site("team")))
        .send()
        .await;
    assert!(t0.elapsed() >= Duration::from_millis(150));
    let (s, _) = body(
        t.http
            .delete(&admin)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = t
        .post_form(&t.v2_token_url(), &[("grant_type", "client_credentials")])
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    // A bad rule is a 400 naming the problem.
    let (s, v) = body(
        t.http
            .post(&admin)
            .json(&json!({"kind": "explode"}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid fault rule")
    );
}

#[tokio::test]
async fn connection_reset_mid_upload() {
    let t = start().await;
    t.emu
        .add_fault(FaultRule::new("/sites", FaultKind::ResetAfter { bytes: 64 * 1024 }).times(1));
    let tok = t.acs_token().await;
    let url = format!(
        "{}/_api/web/GetFolderByServerRelativeUrl('/sites/team/Shared Documents')/Files/add(url='r.bin',overwrite=true)",
        t.site("team")
    );
    let err = t
        .http
        .post(&url)
        .bearer_auth(&tok)
        .body(vec![1u8; 1024 * 1024])
        .send()
        .await;
    assert!(
        err.is_err(),
        "the upload must fail with a dropped connection: {err:?}"
    );
    assert!(
        t.emu
            .file_bytes("/sites/team/Shared Documents/r.bin")
            .is_none()
    );
    // The fault was used once; the retry succeeds.
    let r = t
        .http
        .post(&url)
        .bearer_auth(&tok)
        .body(vec![1u8; 1024 * 1024])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn tls_serves_with_its_own_ca() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let t = start_with(Options {
        tls: true,
        state_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let i = t.info();
    assert!(i.base_url.starts_with("https://"));
    let ca = std::fs::read(i.ca_pem_path.as_deref().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let cert = reqwest::Certificate::from_pem(&ca).unwrap_or_else(|e| panic!("{e}"));
    let client = reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let r = client
        .get(format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            i.login, i.tenant_id
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    // Without the CA the handshake fails.
    assert!(
        reqwest::Client::new()
            .get(&i.base_url)
            .send()
            .await
            .is_err()
    );
    // State dir holds the PEMs and a copy of stored files.
    assert!(dir.path().join("app-key.pem").exists() && dir.path().join("ca.pem").exists());
    let tok = {
        let a = i
            .entra_app("entra-app")
            .cloned()
            .unwrap_or_else(|| panic!());
        let r = client
            .post(format!("{}/{}/oauth2/v2.0/token", i.login, i.tenant_id))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", a.client_id.as_str()),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["access_token"].as_str().unwrap_or_default().to_string()
    };
    let drive = i
        .site("team")
        .map(|s| s.libraries[0].drive_id.clone())
        .unwrap_or_default();
    let r = client
        .put(format!(
            "{}/v1.0/drives/{drive}/root:/kept.txt:/content",
            i.graph
        ))
        .bearer_auth(tok)
        .body("kept")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 201);
    let kept = std::fs::read(
        dir.path()
            .join("files/sites/team/Shared Documents/kept.txt"),
    )
    .unwrap_or_default();
    assert_eq!(kept, b"kept");
}

#[test]
fn cli_prints_one_json_line_quickly() {
    let bin = env!("CARGO_BIN_EXE_tenant-emulator");
    let t0 = Instant::now();
    let mut child = std::process::Command::new(bin)
        .args(["--port", "0", "--latency-ms", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let elapsed = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    for k in [
        "acs",
        "login",
        "live",
        "graph",
        "discovery",
        "sharepoint_host",
        "tenant_id",
        "realm",
        "sites",
        "acs_apps",
        "entra_apps",
    ] {
        assert!(!v[k].is_null(), "{k} missing");
    }
    assert!(v["entra_apps"][0]["private_key_path"].is_string());
    assert!(
        elapsed < Duration::from_secs(1),
        "CLI took {elapsed:?} to print its line"
    );
    let bad = std::process::Command::new(bin)
        .args(["--port", "x"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status.code(), Some(2));
}
