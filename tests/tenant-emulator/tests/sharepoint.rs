//! SharePoint REST over real sockets: token checks, files, folders, chunked uploads, fields.

mod common;

use common::{body, start};
use serde_json::{Value, json};

const NOMETA: &str = "application/json;odata=nometadata";
const VERBOSE: &str = "application/json;odata=verbose";

async fn post(t: &common::T, token: &str, url: &str, accept: &str, data: Vec<u8>) -> (u16, Value) {
    body(
        t.http
            .post(url)
            .bearer_auth(token)
            .header("accept", accept)
            .body(data)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await
}

fn code(v: &Value) -> String {
    v["odata.error"]["code"]
        .as_str()
        .or(v["error"]["code"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn token_checks_as_sharepoint_makes_them() {
    let t = start().await;
    let i = t.info().clone();
    let team = t.site("team");
    let web = format!("{team}/_api/web");
    // ACS app-only works on a granted site and is refused on another.
    let acs = t.acs_token().await;
    let (s, v) = body(
        t.http
            .get(&web)
            .bearer_auth(&acs)
            .header("accept", NOMETA)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["ServerRelativeUrl"].as_str()),
        (200, Some("/sites/team"))
    );
    let (s, v) = body(
        t.http
            .get(format!("{}/_api/web", t.site("other")))
            .bearer_auth(&acs)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, code(&v).as_str()),
        (403, "-2147024891, System.UnauthorizedAccessException")
    );
    // Entra app-only with a secret: 401 Unsupported app only token.
    let secret_tok = t
        .entra_token("entra-app", &format!("https://{}", i.sharepoint_host))
        .await;
    let r = t
        .http
        .get(&web)
        .bearer_auth(&secret_tok)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
    let diag = r
        .headers()
        .get("x-ms-diagnostics")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(diag.contains("Unsupported app only token."), "{diag}");
    assert!(
        r.text()
            .await
            .unwrap_or_default()
            .contains("Unsupported app only token.")
    );
    // Entra app-only with a certificate works.
    let cert_tok = t
        .entra_cert_token("entra-app", &format!("https://{}", i.sharepoint_host))
        .await;
    let (s, _) = body(
        t.http
            .get(&web)
            .bearer_auth(&cert_tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    // Sites.Selected: granted on team, denied on other.
    let sel = t
        .entra_cert_token("selected-app", "00000003-0000-0ff1-ce00-000000000000")
        .await;
    let (s, _) = body(
        t.http
            .get(&web)
            .bearer_auth(&sel)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = body(
        t.http
            .get(format!("{}/_api/web", t.site("other")))
            .bearer_auth(&sel)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, code(&v).as_str()),
        (403, "-2147024891, System.UnauthorizedAccessException")
    );
    // Wrong audience (a Graph token).
    let graph_tok = t
        .entra_cert_token("entra-app", "https://graph.microsoft.com")
        .await;
    let r = t
        .http
        .get(&web)
        .bearer_auth(&graph_tok)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
    let diag = r
        .headers()
        .get("x-ms-diagnostics")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        diag.starts_with("3000003;reason=\"Invalid audience Uri"),
        "{diag}"
    );
    assert!(r.headers().get("www-authenticate").is_some());
    // Tampered token.
    let mut bad = acs.clone();
    bad.push('x');
    let r = t
        .http
        .get(&web)
        .bearer_auth(&bad)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn files_folders_versions_and_errors() {
    let t = start().await;
    let team = t.site("team");
    let tok = t.acs_token().await;
    let lib = "/sites/team/Shared Documents";
    // Folder creation (Folders/add and AddUsingPath).
    let (s, v) = post(
        &t,
        &tok,
        &format!("{team}/_api/web/GetFolderByServerRelativeUrl('{lib}')/Folders/add('In')"),
        NOMETA,
        vec![],
    )
    .await;
    assert_eq!(
        (s, v["ServerRelativeUrl"].as_str()),
        (200, Some("/sites/team/Shared Documents/In"))
    );
    let (s, _) = post(&t, &tok, &format!("{team}/_api/web/GetFolderByServerRelativePath(decodedurl='{lib}/In')/Folders/AddUsingPath(decodedurl='Sub')"), NOMETA, vec![]).await;
    assert_eq!(s, 200);
    // Files/add.
    let add = format!(
        "{team}/_api/web/GetFolderByServerRelativeUrl('{lib}/In')/Files/add(url='a.txt',overwrite=false)"
    );
    let (s, v) = post(&t, &tok, &add, NOMETA, b"one".to_vec()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["Length"], "3");
    assert_eq!(v["UIVersionLabel"], "1.0");
    // Exists without overwrite; names are case-insensitive.
    let add_upper = format!(
        "{team}/_api/web/GetFolderByServerRelativeUrl('{lib}/in')/Files/add(url='A.TXT',overwrite=false)"
    );
    let (s, v) = post(&t, &tok, &add_upper, NOMETA, b"two".to_vec()).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (400, "-2130575257, Microsoft.SharePoint.SPException")
    );
    assert!(
        v["odata.error"]["message"]["value"]
            .as_str()
            .unwrap_or_default()
            .contains("already exists. It was last modified by")
    );
    // Verbose error shape.
    let (_, v) = post(&t, &tok, &add_upper, VERBOSE, b"two".to_vec()).await;
    assert_eq!(
        v["error"]["code"],
        "-2130575257, Microsoft.SharePoint.SPException"
    );
    // Overwrite via AddUsingPath makes version 2.0.
    let (s, v) = post(&t, &tok, &format!("{team}/_api/web/GetFolderByServerRelativePath(decodedurl='{lib}/In')/Files/AddUsingPath(decodedurl='a.txt',overwrite=true)"), VERBOSE, b"two!".to_vec()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["d"]["UIVersionLabel"], "2.0");
    assert_eq!(v["d"]["__metadata"]["type"], "SP.File");
    assert_eq!(
        t.emu
            .file_bytes("/sites/team/Shared Documents/In/a.txt")
            .as_deref(),
        Some(&b"two!"[..])
    );
    // Not found: file, folder.
    let (s, v) = body(
        t.http
            .get(format!(
                "{team}/_api/web/GetFileByServerRelativeUrl('{lib}/nope.pdf')"
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, code(&v).as_str()),
        (404, "-2130575338, Microsoft.SharePoint.SPException")
    );
    assert_eq!(
        v["odata.error"]["message"]["value"],
        format!("The file {lib}/nope.pdf does not exist.")
    );
    let (s, v) = post(&t, &tok, &format!("{team}/_api/web/GetFolderByServerRelativeUrl('{lib}/Missing')/Files/add(url='x.txt',overwrite=true)"), NOMETA, b"x".to_vec()).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (404, "-2147024894, System.IO.FileNotFoundException")
    );
    // Path outside the web.
    let (s, v) = post(&t, &tok, &format!("{team}/_api/web/GetFolderByServerRelativeUrl('/sites/other/Shared Documents')/Files/add(url='x.txt',overwrite=true)"), NOMETA, b"x".to_vec()).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (400, "-2147024809, System.ArgumentException")
    );
    // Access denied writing to another site is covered in token checks; $value reads back.
    let r = t
        .http
        .get(format!(
            "{team}/_api/web/GetFileByServerRelativePath(decodedurl='{lib}/In/a.txt')/$value"
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
        b"two!"
    );
}

#[tokio::test]
async fn chunked_upload_checks_offsets() {
    let t = start().await;
    let team = t.site("team");
    let tok = t.acs_token().await;
    let lib = "/sites/team/Shared Documents";
    let (s, v) = post(&t, &tok, &format!("{team}/_api/web/GetFolderByServerRelativePath(decodedurl='{lib}')/Files/AddUsingPath(decodedurl='big.bin',overwrite=true)"), NOMETA, vec![]).await;
    assert_eq!((s, v["Length"].as_str()), (200, Some("0")));
    let id = uuid::Uuid::new_v4();
    let file = format!("{team}/_api/web/GetFileByServerRelativePath(decodedurl='{lib}/big.bin')");
    let part = vec![7u8; 1000];
    let (s, v) = post(
        &t,
        &tok,
        &format!("{file}/StartUpload(uploadId=guid'{id}')"),
        NOMETA,
        part.clone(),
    )
    .await;
    assert_eq!((s, v), (200, json!({"value": "1000"})));
    assert_eq!(t.emu.open_uploads().len(), 1);
    // Wrong offset.
    let (s, v) = post(
        &t,
        &tok,
        &format!("{file}/ContinueUpload(uploadId=guid'{id}',fileOffset=999)"),
        NOMETA,
        part.clone(),
    )
    .await;
    assert_eq!(
        (s, code(&v).as_str()),
        (400, "-2147024809, System.ArgumentException")
    );
    let (s, v) = post(
        &t,
        &tok,
        &format!("{file}/ContinueUpload(uploadId=guid'{id}',fileOffset=1000)"),
        VERBOSE,
        part.clone(),
    )
    .await;
    assert_eq!((s, v), (200, json!({"d": {"ContinueUpload": "2000"}})));
    let (s, v) = post(
        &t,
        &tok,
        &format!("{file}/FinishUpload(uploadId=guid'{id}',fileOffset=2000)"),
        NOMETA,
        vec![9u8; 5],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["Length"], "2005");
    assert_eq!(v["UIVersionLabel"], "1.0");
    assert!(t.emu.open_uploads().is_empty());
    assert_eq!(
        t.emu
            .file_bytes("/sites/team/Shared Documents/big.bin")
            .map(|b| b.len()),
        Some(2005)
    );
    // Unknown session, then cancel.
    let (s, _) = post(
        &t,
        &tok,
        &format!("{file}/ContinueUpload(uploadId=guid'{id}',fileOffset=0)"),
        NOMETA,
        part.clone(),
    )
    .await;
    assert_eq!(s, 400);
    let id2 = uuid::Uuid::new_v4();
    let (s, _) = post(
        &t,
        &tok,
        &format!("{file}/StartUpload(uploadId=guid'{id2}')"),
        NOMETA,
        part.clone(),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = post(
        &t,
        &tok,
        &format!("{file}/CancelUpload(uploadId=guid'{id2}')"),
        NOMETA,
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    assert!(t.emu.open_uploads().is_empty());
    // Chunk on a missing file.
    let (s, v) = post(&t, &tok, &format!("{team}/_api/web/GetFileByServerRelativePath(decodedurl='{lib}/none.bin')/StartUpload(uploadId=guid'{id2}')"), NOMETA, part).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (404, "-2130575338, Microsoft.SharePoint.SPException")
    );
}

#[tokio::test]
async fn list_item_fields_and_versions() {
    let t = start().await;
    let team = t.site("team");
    let tok = t.acs_token().await;
    let lib = "/sites/team/Shared Documents";
    let (s, _) = post(&t, &tok, &format!("{team}/_api/web/GetFolderByServerRelativeUrl('{lib}')/Files/add(url='f.txt',overwrite=true)"), NOMETA, b"f".to_vec()).await;
    assert_eq!(s, 200);
    let item =
        format!("{team}/_api/web/GetFileByServerRelativeUrl('{lib}/f.txt')/ListItemAllFields");
    // MERGE through X-HTTP-Method: new version.
    let r = t
        .http
        .post(&item)
        .bearer_auth(&tok)
        .header("x-http-method", "MERGE")
        .header("if-match", "*")
        .json(&json!({"Title": "Merged"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 204);
    let it = t
        .emu
        .item("/sites/team/Shared Documents/f.txt")
        .unwrap_or_else(|| panic!("no item"));
    assert_eq!(
        (it.version_label.as_str(), it.fields.get("Title")),
        ("2.0", Some(&json!("Merged")))
    );
    // ValidateUpdateListItem with bNewDocumentUpdate: no new version.
    let (s, v) = post(&t, &tok, &format!("{item}/ValidateUpdateListItem()"), NOMETA, serde_json::to_vec(&json!({"formValues": [{"FieldName": "Source", "FieldValue": "webhook"}], "bNewDocumentUpdate": true})).unwrap_or_default()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["value"][0]["HasException"], false);
    let it = t
        .emu
        .item("/sites/team/Shared Documents/f.txt")
        .unwrap_or_else(|| panic!("no item"));
    assert_eq!(
        (it.version_label.as_str(), it.fields.get("Source")),
        ("2.0", Some(&json!("webhook")))
    );
    // Without it: a new version.
    let (s, _) = post(&t, &tok, &format!("{item}/ValidateUpdateListItem()"), NOMETA, serde_json::to_vec(&json!({"formValues": [{"FieldName": "Source", "FieldValue": "again"}], "bNewDocumentUpdate": false})).unwrap_or_default()).await;
    assert_eq!(s, 200);
    assert_eq!(
        t.emu
            .item("/sites/team/Shared Documents/f.txt")
            .map(|i| i.version_label),
        Some("3.0".into())
    );
    let (s, v) = body(
        t.http
            .get(&item)
            .bearer_auth(&tok)
            .header("accept", VERBOSE)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!((s, v["d"]["Source"].as_str()), (200, Some("again")));
    // Inspection over HTTP.
    let (s, files) = body(
        t.http
            .get(format!("{}/_emulator/files", t.info().base_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    let f = files
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|f| f["path"] == "/sites/team/Shared Documents/f.txt")
                .cloned()
        })
        .unwrap_or_default();
    assert_eq!(f["versions"].as_array().map(|v| v.len()), Some(3));
}

#[tokio::test]
async fn delegated_entra_token_reaches_any_site() {
    let t = start().await;
    let i = t.info().clone();
    let a = i
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    let scope = format!(
        "https://{}/AllSites.Write offline_access",
        i.sharepoint_host
    );
    let code = t.authorize_v2("entra-app", &scope, None).await;
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
    let tok = v["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        common::claims(&tok)["aud"],
        format!("https://{}", i.sharepoint_host)
    );
    let (s, v) = post(&t, &tok, &format!("{}/_api/web/GetFolderByServerRelativeUrl('Shared Documents')/Files/add(url='d.txt',overwrite=true)", t.site("other")), NOMETA, b"d".to_vec()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        t.emu
            .file_bytes("/sites/other/Shared Documents/d.txt")
            .as_deref(),
        Some(&b"d"[..])
    );
}

#[tokio::test]
async fn registered_apps_and_grants() {
    let t = start().await;
    let i = t.info().clone();
    let reader = t
        .emu
        .add_acs_app("reader", &[("/sites/team", tenant_emulator::Right::Read)]);
    let url = format!("{}/{}/tokens/OAuth/2", i.acs, i.realm);
    let resource = format!(
        "00000003-0000-0ff1-ce00-000000000000/{}@{}",
        i.sharepoint_host, i.realm
    );
    let (s, v) = t
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &format!("{}@{}", reader.client_id, i.realm)),
                ("client_secret", &reader.client_secret),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let tok = v["access_token"].as_str().unwrap_or_default().to_string();
    let (s, _) = body(
        t.http
            .get(format!("{}/_api/web", t.site("team")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    let add = format!(
        "{}/_api/web/GetFolderByServerRelativeUrl('Shared Documents')/Files/add(url='r.txt',overwrite=true)",
        t.site("team")
    );
    let (s, v) = post(&t, &tok, &add, NOMETA, b"r".to_vec()).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (403, "-2147024891, System.UnauthorizedAccessException")
    );
    assert!(t.emu.set_acs_grant(
        &reader.client_id,
        "/sites/team",
        Some(tenant_emulator::Right::Write)
    ));
    let (s, _) = post(&t, &tok, &add, NOMETA, b"r".to_vec()).await;
    assert_eq!(s, 200);
    assert!(t.emu.set_acs_grant(&reader.client_id, "/sites/team", None));
    let (s, _) = post(&t, &tok, &add, NOMETA, b"r".to_vec()).await;
    assert_eq!(s, 403);
    // An Entra app with Sites.Selected and no grant, then granted.
    let app = t
        .emu
        .add_entra_app(tenant_emulator::EntraAppSpec {
            name: "late".into(),
            roles: vec!["Sites.Selected".into()],
            secret: true,
            certificate: true,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let key = app.private_key_pem.clone().unwrap_or_default();
    let token_url = t.v2_token_url();
    let thumb = common::hex_decode(app.thumbprint_sha1.as_deref().unwrap_or_default());
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.x5t = Some(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        thumb,
    ));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let assertion = jsonwebtoken::encode(&h, &json!({"aud": token_url, "iss": app.client_id, "sub": app.client_id, "exp": now + 600, "jti": "late-1"}), &jsonwebtoken::EncodingKey::from_rsa_pem(key.as_bytes()).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
    let (s, v) = t
        .post_form(
            &token_url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &app.client_id),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
                ("scope", &format!("https://{}/.default", i.sharepoint_host)),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let tok = v["access_token"].as_str().unwrap_or_default().to_string();
    let (s, _) = body(
        t.http
            .get(format!("{}/_api/web", t.site("team")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 403);
    assert!(t.emu.set_selected_sites(&app.client_id, &["/sites/team"]));
    let (s, _) = body(
        t.http
            .get(format!("{}/_api/web", t.site("team")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn expired_access_tokens_are_refused() {
    let t = common::start_with(tenant_emulator::Options {
        access_token_ttl: std::time::Duration::ZERO,
        ..Default::default()
    })
    .await;
    let tok = t
        .entra_cert_token(
            "entra-app",
            &format!("https://{}", t.info().sharepoint_host),
        )
        .await;
    let r = t
        .http
        .get(format!("{}/_api/web", t.site("team")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
    let gtok = t
        .entra_token("entra-app", "https://graph.microsoft.com")
        .await;
    let (s, v) = body(
        t.http
            .get(format!(
                "{}/v1.0/drives/{}/root",
                t.info().graph,
                t.drive("team")
            ))
            .bearer_auth(&gtok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
}
