//! Graph drives over real sockets: PUT by path, conflicts, folders, upload sessions.

mod common;

use common::{body, start, start_with};
use serde_json::{Value, json};
use std::time::Duration;
use tenant_emulator::Options;

const KIB320: usize = 320 * 1024;

async fn put_range(
    t: &common::T,
    url: &str,
    data: &[u8],
    start: usize,
    total: usize,
) -> (u16, Value) {
    let end = start + data.len() - 1;
    body(
        t.http
            .put(url)
            .header("content-range", format!("bytes {start}-{end}/{total}"))
            .body(data.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await
}

#[tokio::test]
async fn put_by_path_conflicts_and_folders() {
    let t = start().await;
    let g = t.info().graph.clone();
    let tok = t
        .entra_token("entra-app", "https://graph.microsoft.com")
        .await;
    let drive = t.drive("team");
    let put = |path: &str, q: &str, data: &'static [u8]| {
        let url = format!("{g}/v1.0/drives/{drive}/root:/{path}:/content{q}");
        let (t, tok) = (&t, tok.clone());
        async move {
            body(
                t.http
                    .put(url)
                    .bearer_auth(tok)
                    .body(data)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await
        }
    };
    // Missing folders are created.
    let (s, v) = put("deep/er/a.txt", "", b"one").await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["size"].as_u64()),
        (Some("a.txt"), Some(3))
    );
    assert!(v["file"]["hashes"]["quickXorHash"].is_string());
    assert_eq!(
        t.emu
            .file_bytes("/sites/team/Shared Documents/deep/er/a.txt")
            .as_deref(),
        Some(&b"one"[..])
    );
    // Replace (default) answers 200.
    let (s, _) = put("deep/er/a.txt", "", b"two").await;
    assert_eq!(s, 200);
    // fail → 409 nameAlreadyExists; rename → "a 1.txt".
    let (s, v) = put(
        "deep/er/a.txt",
        "?@microsoft.graph.conflictBehavior=fail",
        b"x",
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("nameAlreadyExists"))
    );
    let (s, v) = put(
        "deep/er/a.txt",
        "?@microsoft.graph.conflictBehavior=rename",
        b"x",
    )
    .await;
    assert_eq!((s, v["name"].as_str()), (201, Some("a 1.txt")));
    // A site by path, then GET by path, and itemNotFound.
    let (s, v) = body(
        t.http
            .get(format!(
                "{g}/v1.0/sites/{}:/sites/team:",
                t.info().sharepoint_host
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["id"].as_str()),
        (200, t.info().site("team").map(|s| s.graph_id.as_str()))
    );
    let (s, v) = body(
        t.http
            .get(format!(
                "{g}/v1.0/sites/{}/drive/root:/deep/er/a.txt",
                t.info()
                    .site("team")
                    .map(|s| s.graph_id.clone())
                    .unwrap_or_default()
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!((s, v["size"].as_u64()), (200, Some(3)));
    let (s, v) = body(
        t.http
            .get(format!("{g}/v1.0/drives/{drive}/root:/nope.txt"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("itemNotFound"))
    );
    assert!(v["error"]["innerError"]["request-id"].is_string());
    // POST children: create, then conflict.
    let url = format!("{g}/v1.0/drives/{drive}/root/children");
    let (s, v) = body(
        t.http
            .post(&url)
            .bearer_auth(&tok)
            .json(
                &json!({"name": "New", "folder": {}, "@microsoft.graph.conflictBehavior": "fail"}),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!((s, v["folder"]["childCount"].as_u64()), (201, Some(0)));
    let (s, v) = body(
        t.http
            .post(&url)
            .bearer_auth(&tok)
            .json(&json!({"name": "New", "folder": {}}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("nameAlreadyExists"))
    );
    // Auth: no token, wrong audience, Sites.Selected on a site it lacks.
    let (s, v) = body(
        t.http
            .get(format!("{g}/v1.0/drives/{drive}/root"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
    let sp = t
        .entra_cert_token(
            "entra-app",
            &format!("https://{}", t.info().sharepoint_host),
        )
        .await;
    let (s, _) = body(
        t.http
            .get(format!("{g}/v1.0/drives/{drive}/root"))
            .bearer_auth(sp)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 401);
    let sel = t
        .entra_token("selected-app", "https://graph.microsoft.com")
        .await;
    let (s, _) = body(
        t.http
            .get(format!("{g}/v1.0/drives/{drive}/root"))
            .bearer_auth(&sel)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = body(
        t.http
            .get(format!("{g}/v1.0/drives/{}/root", t.drive("other")))
            .bearer_auth(&sel)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("accessDenied"))
    );
}

#[tokio::test]
async fn upload_session_rules() {
    let t = start().await;
    let g = t.info().graph.clone();
    let tok = t
        .entra_token("entra-app", "https://graph.microsoft.com")
        .await;
    let drive = t.drive("team");
    let create = |name: &str, conflict: &str| {
        let url = format!("{g}/v1.0/drives/{drive}/root:/up/{name}:/createUploadSession");
        let (t, tok) = (&t, tok.clone());
        let b = json!({"item": {"@microsoft.graph.conflictBehavior": conflict}});
        async move {
            body(
                t.http
                    .post(url)
                    .bearer_auth(tok)
                    .json(&b)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await
        }
    };
    let (s, v) = create("big.bin", "fail").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["nextExpectedRanges"], json!(["0-"]));
    let up = v["uploadUrl"].as_str().unwrap_or_default().to_string();
    let data: Vec<u8> = (0..(KIB320 * 2 + 1000)).map(|i| (i % 251) as u8).collect();
    let total = data.len();
    // The upload URL rejects an Authorization header.
    let r = t
        .http
        .put(&up)
        .bearer_auth(&tok)
        .header("content-range", format!("bytes 0-{}/{total}", KIB320 - 1))
        .body(data[..KIB320].to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
    // Not a multiple of 320 KiB (and not last) → 416.
    let (s, v) = put_range(&t, &up, &data[..1000], 0, total).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (416, Some("invalidRange"))
    );
    // Good chunk → 202 with nextExpectedRanges.
    let (s, v) = put_range(&t, &up, &data[..KIB320], 0, total).await;
    assert_eq!(
        (s, v["nextExpectedRanges"].clone()),
        (202, json!([format!("{KIB320}-")]))
    );
    // Wrong start → 416.
    let (s, _) = put_range(&t, &up, &data[..KIB320], 0, total).await;
    assert_eq!(s, 416);
    assert_eq!(
        t.emu
            .open_uploads()
            .iter()
            .map(|u| u.received)
            .collect::<Vec<_>>(),
        vec![KIB320 as u64]
    );
    let (s, _) = put_range(&t, &up, &data[KIB320..KIB320 * 2], KIB320, total).await;
    assert_eq!(s, 202);
    // Someone else creates the file meanwhile: fail → 409 at completion.
    let (s, _) = body(
        t.http
            .put(format!("{g}/v1.0/drives/{drive}/root:/up/big.bin:/content"))
            .bearer_auth(&tok)
            .body("x")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 201);
    let (s, v) = put_range(&t, &up, &data[KIB320 * 2..], KIB320 * 2, total).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("nameAlreadyExists"))
    );
    // Replace session: final chunk → 200 with the item; bytes stored.
    let (_, v) = create("big.bin", "replace").await;
    let up = v["uploadUrl"].as_str().unwrap_or_default().to_string();
    for (i, chunk) in data.chunks(KIB320).enumerate() {
        let (s, v) = put_range(&t, &up, chunk, i * KIB320, total).await;
        let last = (i + 1) * KIB320 >= total;
        assert_eq!(s, if last { 200 } else { 202 }, "{v}");
        if last {
            assert_eq!(v["size"].as_u64(), Some(total as u64));
        }
    }
    assert_eq!(
        t.emu.file_bytes("/sites/team/Shared Documents/up/big.bin"),
        Some(data.clone())
    );
    // New file → 201; DELETE cancels; fail-on-create conflict → 409.
    let (_, v) = create("small.bin", "fail").await;
    let up = v["uploadUrl"].as_str().unwrap_or_default().to_string();
    let (s, _) = put_range(&t, &up, b"tiny", 0, 4).await;
    assert_eq!(s, 201);
    let (s, v) = create("small.bin", "fail").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("nameAlreadyExists"))
    );
    let (_, v) = create("cancel.bin", "replace").await;
    let up = v["uploadUrl"].as_str().unwrap_or_default().to_string();
    let r = t
        .http
        .delete(&up)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 204);
    let (s, _) = put_range(&t, &up, b"tiny", 0, 4).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn upload_sessions_expire() {
    let t = start_with(Options {
        upload_session_ttl: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let g = t.info().graph.clone();
    let tok = t
        .entra_token("entra-app", "https://graph.microsoft.com")
        .await;
    let (s, v) = body(
        t.http
            .post(format!(
                "{g}/v1.0/drives/{}/root:/exp.bin:/createUploadSession",
                t.drive("team")
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, v) = put_range(
        &t,
        v["uploadUrl"].as_str().unwrap_or_default(),
        b"data",
        0,
        4,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("itemNotFound"))
    );
}

#[tokio::test]
async fn items_by_id_and_me_drive() {
    let t = start().await;
    let g = t.info().graph.clone();
    let tok = t
        .entra_token("entra-app", "https://graph.microsoft.com")
        .await;
    let drive = t.drive("team");
    let (s, folder) = body(
        t.http
            .post(format!("{g}/v1.0/drives/{drive}/root/children"))
            .bearer_auth(&tok)
            .json(&json!({"name": "ById", "folder": {}}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 201);
    let id = folder["id"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with("01") && id.len() == 34, "{id}");
    let (s, v) = body(
        t.http
            .put(format!(
                "{g}/v1.0/drives/{drive}/items/{id}:/x.txt:/content"
            ))
            .bearer_auth(&tok)
            .body("by id")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["parentReference"]["id"], id.as_str());
    assert_eq!(
        v["parentReference"]["path"],
        format!("/drives/{drive}/root:/ById")
    );
    let (s, kids) = body(
        t.http
            .get(format!("{g}/v1.0/drives/{drive}/items/{id}/children"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, kids["value"].as_array().map(|a| a.len())),
        (200, Some(1))
    );
    let dl = v["@microsoft.graph.downloadUrl"]
        .as_str()
        .unwrap_or_default();
    let bytes = t
        .http
        .get(dl)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .bytes()
        .await
        .unwrap_or_default();
    assert_eq!(&bytes[..], b"by id");
    // /me/drive needs a delegated token.
    let (s, v) = body(
        t.http
            .get(format!("{g}/v1.0/me/drive/root"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("BadRequest")));
    let a = t
        .info()
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    let code = t.authorize_v2("entra-app", "Files.ReadWrite", None).await;
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
    assert_eq!(s, 200, "{v}");
    let user = v["access_token"].as_str().unwrap_or_default().to_string();
    let (s, v) = body(
        t.http
            .put(format!("{g}/v1.0/me/drive/root:/Notes/n.txt:/content"))
            .bearer_auth(&user)
            .body("mine")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["parentReference"]["driveType"].as_str()),
        (201, Some("business"))
    );
    assert_eq!(
        t.emu
            .file_bytes("/personal/alex_contoso_onmicrosoft_com/Documents/Notes/n.txt")
            .as_deref(),
        Some(&b"mine"[..])
    );
}
