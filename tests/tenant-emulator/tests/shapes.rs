//! The emulator's responses have the shapes (key sets and JSON types) of the real recorded
//! samples in the handout fixtures (`../shared/fixtures`, see PROVENANCE.md).

mod common;

use common::{body, claims, start};
use serde_json::{Value, json};

fn fixture_text(rel: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/").to_string() + rel;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn fixture(rel: &str) -> Value {
    serde_json::from_str(&fixture_text(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The body inside a PnP recording wrapper.
fn pnp(rel: &str) -> Value {
    let w = fixture(rel);
    serde_json::from_str(w["Response"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The JSON body of a docs `.http` sample (the docs 409 sample has a trailing comma).
fn http_sample(rel: &str) -> Value {
    let text = fixture_text(rel);
    let json_part = &text[text.find('{').unwrap_or(0)..];
    let cleaned = json_part.replace(",\n  }", "\n  }");
    serde_json::from_str(&cleaned).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key of `expected` is in `actual` with the same JSON type (null in a sample matches
/// anything); with `exact`, no extra keys either. Recurses into objects except `skip` paths.
fn shape(expected: &Value, actual: &Value, exact: bool, path: &str, skip: &[&str]) {
    if skip.contains(&path) || expected.is_null() {
        return;
    }
    assert_eq!(
        kind(expected),
        kind(actual),
        "type of {path}: sample {expected} vs emulator {actual}"
    );
    if let (Value::Object(e), Value::Object(a)) = (expected, actual) {
        for (k, ev) in e {
            let sub = format!("{path}.{k}");
            let Some(av) = a.get(k) else {
                panic!(
                    "{sub} missing; emulator gave keys {:?}",
                    a.keys().collect::<Vec<_>>()
                );
            };
            shape(ev, av, exact, &sub, skip);
        }
        if exact {
            let extra: Vec<&String> = a.keys().filter(|k| !e.contains_key(*k)).collect();
            assert!(
                extra.is_empty(),
                "{path} has keys the sample lacks: {extra:?}"
            );
        }
    }
}

#[tokio::test]
async fn sharepoint_shapes() {
    let t = start().await;
    let team = t.site("team");
    let tok = t.acs_token().await;
    let post = |url: String, data: Vec<u8>| {
        let (t, tok) = (&t, tok.clone());
        async move {
            body(
                t.http
                    .post(url)
                    .bearer_auth(tok)
                    .header("accept", "application/json;odata=nometadata")
                    .body(data)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await
        }
    };
    let lib = "/sites/team/Shared Documents";
    let (_, file) = post(format!("{team}/_api/web/GetFolderByServerRelativePath(decodedurl='{lib}')/Files/AddUsingPath(decodedurl='s.docx',overwrite=true)"), vec![]).await;
    shape(
        &pnp("sharepoint-rest/pnpcore/AddChunkedFileToFolderTest-0-00003.response.json"),
        &file,
        true,
        "$",
        &[],
    );
    shape(
        &pnp("sharepoint-rest/pnpcore/AddFileToFolderTest-0-00003.response.json"),
        &file,
        true,
        "$",
        &[],
    );
    let etag = file["ETag"].as_str().unwrap_or_default();
    assert!(
        etag.starts_with("\"{") && etag.ends_with(",1\""),
        "ETag {etag}"
    );
    let id = uuid::Uuid::new_v4();
    let f = format!("{team}/_api/web/GetFileByServerRelativePath(decodedurl='{lib}/s.docx')");
    let (_, start) = post(
        format!("{f}/StartUpload(uploadId=guid'{id}')"),
        vec![0u8; 10],
    )
    .await;
    shape(
        &pnp("sharepoint-rest/pnpcore/AddChunkedFileToFolderTest-0-00004.response.json"),
        &start,
        true,
        "$",
        &[],
    );
    let (_, cont) = post(
        format!("{f}/ContinueUpload(uploadId=guid'{id}',fileOffset=10)"),
        vec![0u8; 10],
    )
    .await;
    shape(
        &pnp("sharepoint-rest/pnpcore/AddChunkedFileToFolderTest-0-00005.response.json"),
        &cont,
        true,
        "$",
        &[],
    );
    let (_, fin) = post(
        format!("{f}/FinishUpload(uploadId=guid'{id}',fileOffset=20)"),
        vec![0u8; 10],
    )
    .await;
    shape(
        &pnp("sharepoint-rest/pnpcore/AddChunkedFileToFolderTest-0-00006.response.json"),
        &fin,
        true,
        "$",
        &[],
    );
    // Errors.
    let (s, exists) = post(format!("{team}/_api/web/GetFolderByServerRelativeUrl('{lib}')/Files/add(url='s.docx',overwrite=false)"), vec![]).await;
    assert_eq!(s, 400);
    shape(
        &fixture("sharepoint-rest/cli-microsoft365_app-add.spec_file-exists_-2130575257.json"),
        &exists,
        true,
        "$",
        &[],
    );
    let (s, missing) = body(
        t.http
            .get(format!(
                "{team}/_api/web/GetFileByServerRelativeUrl('{lib}/IdontExist.pdf')"
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let sample = pnp(
        "sharepoint-rest/pnpcore/GetNonExistingFileByServerRelativeUrlAsyncTest-1-00002.response.json",
    );
    assert_eq!(s, 404);
    shape(&sample, &missing, true, "$", &[]);
    assert_eq!(
        missing["odata.error"]["code"],
        sample["odata.error"]["code"]
    );
    let (s, outside) = body(
        t.http
            .get(format!(
                "{team}/_api/web/GetFileByServerRelativeUrl('/sites/other/Shared Documents/x')"
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let sample = pnp(
        "sharepoint-rest/pnpcore/GetExistingFileInOtherSiteByServerRelativeUrlAsyncTest-1-00002.response.json",
    );
    assert_eq!(s, 400);
    assert_eq!(
        outside, sample,
        "identical body: the message is SharePoint's"
    );
    let (s, folder) = post(format!("{team}/_api/web/GetFolderByServerRelativeUrl('{lib}/Nope')/Files/add(url='x',overwrite=true)"), vec![]).await;
    assert_eq!(
        (s, folder),
        (
            404,
            pnp("sharepoint-rest/pnpcore/GetByServerRelativeSpecialChars-0-00005.response.json")
        )
    );
    // WWW-Authenticate as SPO sends it.
    let r = t
        .http
        .get(format!("{team}/_vti_bin/client.svc"))
        .header("authorization", "Bearer")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let sample = fixture_text(
        "www-authenticate/FluidFramework_parseAuthErrorClaims_insufficient_claims.txt",
    );
    let issuers = |h: &str| {
        h.split("trusted_issuers=\"")
            .nth(1)
            .and_then(|x| x.split('"').next())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(issuers(&got), issuers(&sample));
    let names = |h: &str| {
        h.trim_start_matches("Bearer ")
            .split("\",")
            .map(|p| p.split('=').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&got), names(&sample)[..4].to_vec());
}

#[tokio::test]
async fn graph_shapes() {
    let t = start().await;
    let g = t.info().graph.clone();
    let drive = t.drive("team");
    let tok = t
        .entra_token("entra-app", "https://graph.microsoft.com")
        .await;
    let (s, item) = body(
        t.http
            .put(format!(
                "{g}/v1.0/drives/{drive}/root:/PNP_SDK_TEST_renamed.docx:/content"
            ))
            .bearer_auth(&tok)
            .body("x")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 201);
    // PnP records Graph with IEEE754Compatible=true (Int64 `size` as a string); the default, as
    // in the docs sample below, is a number.
    shape(
        &pnp("graph/pnpcore/RenameFileTest-0-00005.response.json"),
        &item,
        true,
        "$",
        &["$.createdBy", "$.lastModifiedBy", "$.size"],
    );
    shape(
        &http_sample("graph/docs/graph-docs_uploadSession_final_201.http"),
        &item,
        false,
        "$",
        &[],
    );
    let (s, sess) = body(
        t.http
            .post(format!(
                "{g}/v1.0/drives/{drive}/root:/big.vhd:/createUploadSession"
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 200);
    shape(
        &fixture("graph/cli-microsoft365_file-add.spec_createUploadSession.json"),
        &sess,
        false,
        "$",
        &[],
    );
    shape(
        &http_sample("graph/docs/graph-docs_createUploadSession_200.http"),
        &sess,
        false,
        "$",
        &[],
    );
    let up = sess["uploadUrl"].as_str().unwrap_or_default();
    let (s, chunk) = body(
        t.http
            .put(up)
            .header("content-range", format!("bytes 0-{}/{}", 327_679, 700_000))
            .body(vec![0u8; 327_680])
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 202);
    shape(
        &http_sample("graph/docs/graph-docs_uploadSession_chunk_202.http"),
        &chunk,
        true,
        "$",
        &[],
    );
    let (s, missing) = body(
        t.http
            .get(format!("{g}/v1.0/drives/{drive}/root:/nope"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(s, 404);
    shape(
        &fixture("graph/cli-microsoft365_file-add.spec_itemNotFound.json"),
        &missing,
        true,
        "$",
        &[],
    );
    let (s, conflict) = body(t.http.put(format!("{g}/v1.0/drives/{drive}/root:/PNP_SDK_TEST_renamed.docx:/content?@microsoft.graph.conflictBehavior=fail")).bearer_auth(&tok).body("x").send().await.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(s, 409);
    let sample = http_sample("graph/docs/graph-docs_uploadSession_409_nameAlreadyExists.http");
    shape(&sample, &conflict, false, "$", &[]);
    assert_eq!(conflict["error"]["code"], sample["error"]["code"]);
    let bad = pnp("graph/pnpcore/ThrowGraphServiceException-0-00002.response.json");
    shape(
        &bad,
        &missing,
        true,
        "$",
        &["$.error.code", "$.error.message"],
    );
}

#[tokio::test]
async fn identity_shapes() {
    let t = start().await;
    let i = t.info().clone();
    let a = i
        .entra_app("entra-app")
        .cloned()
        .unwrap_or_else(|| panic!());
    // AAD error bodies: exactly the keys of the recorded samples.
    let (_, err) = t
        .post_form(
            &t.v2_token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &a.client_id),
                ("client_secret", "bad"),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
    shape(
        &fixture("aad/msal-dotnet_MockHelpers_GetMsiImdsErrorResponse_AADSTS500011.json"),
        &err,
        true,
        "$",
        &[],
    );
    shape(
        &fixture("aad/msal-dotnet_TestConstants_DiscoveryFailedResponse_AADSTS50049.json"),
        &err,
        true,
        "$",
        &[],
    );
    // v2 code redemption: the MSAL v2 sample's keys and types.
    let code = t
        .authorize_v2(
            "entra-app",
            "Files.ReadWrite.All offline_access openid profile",
            None,
        )
        .await;
    let (_, v2) = t
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
    shape(
        &fixture("aad/msal-dotnet_TestConstants_CreateAadTestTokenResponse_v2.json"),
        &v2,
        true,
        "$",
        &[],
    );
    // v1: strings where the v1 sample has strings.
    let (_, v1) = t
        .post_form(
            &format!("{}/{}/oauth2/token", i.login, i.tenant_id),
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                ("refresh_token", "nope"),
            ],
        )
        .await;
    assert_eq!(v1["error"], "invalid_grant");
    let (_, v1) = t
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
    let mut sample =
        fixture("aad/msal-dotnet_TestConstants_TokenResponseJson_v1-style-strings.json");
    for k in ["scope", "refresh_token", "id_token", "client_info"] {
        // Not part of a client-credentials answer.
        sample.as_object_mut().map(|m| m.remove(k));
    }
    shape(&sample, &v1, true, "$", &[]);
    shape(
        &fixture("aad/onedrive-api-docs_aad-oauth_v1-token-response_discovery-resource.json"),
        &json!({"expires_in": 1, "access_token": v1["access_token"], "refresh_token": ""}),
        true,
        "$",
        &[],
    );
    // ACS token claims: app-only and user+add-in.
    let acs = t.acs_token().await;
    shape(
        &fixture("acs/sp-dev-docs_acs-access-token-claims_add-in-only.json"),
        &claims(&acs),
        true,
        "$",
        &[],
    );
    let r = t
        .http
        .get(format!(
            "{}/_layouts/15/OAuthAuthorize.aspx",
            t.site("team")
        ))
        .query(&[
            ("client_id", i.acs_apps[0].client_id.as_str()),
            ("response_type", "code"),
            ("scope", "Web.Write"),
            ("redirect_uri", i.acs_apps[0].redirect_uri.as_str()),
        ])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
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
    let (_, tok) = t
        .post_form(
            &format!("{}/{}/tokens/OAuth/2", i.acs, i.realm),
            &[
                ("grant_type", "authorization_code"),
                (
                    "client_id",
                    &format!("{}@{}", i.acs_apps[0].client_id, i.realm),
                ),
                ("client_secret", &i.acs_apps[0].client_secret),
                ("code", &code),
                ("redirect_uri", &i.acs_apps[0].redirect_uri),
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
    shape(
        &fixture("acs/sp-dev-docs_acs-access-token-claims_user+add-in.json"),
        &claims(tok["access_token"].as_str().unwrap_or_default()),
        true,
        "$",
        &[],
    );
    // Context token: the decoded sample's claim names (the sample is not strict JSON).
    let ct = claims(
        &t.emu
            .context_token(&i.acs_apps[0].client_id, "team")
            .unwrap_or_default(),
    );
    let sample = fixture_text("context-token/sp-dev-docs_context-token-decoded_example.txt");
    for k in ct
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        assert!(
            sample.contains(&format!("\"{k}\"")),
            "context token claim {k} is not in the sample"
        );
    }
    for k in ["nbf", "exp"] {
        assert!(ct[k].is_string(), "{k} is a string in the sample");
    }
    // login.live.com token response.
    let r = t
        .http
        .get(format!("{}/oauth20_authorize.srf", i.live))
        .query(&[
            ("client_id", a.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", a.redirect_uri.as_str()),
        ])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
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
    let (_, live) = t
        .post_form(
            &format!("{}/oauth20_token.srf", i.live),
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
    shape(
        &fixture("msa/onedrive-api-docs_msa-oauth_oauth20_token_code-redeem.json"),
        &live,
        false,
        "$",
        &[],
    );
    let (_, live2) = t
        .post_form(
            &format!("{}/oauth20_token.srf", i.live),
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &a.client_id),
                (
                    "client_secret",
                    a.client_secret.as_deref().unwrap_or_default(),
                ),
                (
                    "refresh_token",
                    live["refresh_token"].as_str().unwrap_or_default(),
                ),
            ],
        )
        .await;
    shape(
        &fixture("msa/onedrive-api-docs_msa-oauth_oauth20_token_refresh.json"),
        &live2,
        false,
        "$",
        &[],
    );
    // Discovery.
    let tok = t
        .entra_token("entra-app", "https://api.office.com/discovery/")
        .await;
    let (_, disc) = body(
        t.http
            .get(format!("{}/v1.0/me/services", i.discovery))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let sample = fixture("discovery/onedrive-api-docs_aad-oauth_discovery-v2.0-me-services.json");
    shape(&sample["value"][0], &disc["value"][0], true, "$", &[]);
    shape(&sample, &disc, false, "$", &["$.value"]);
}
