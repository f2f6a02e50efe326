//! Tenant isolation, the smaller gaps (issue 10): what senders may not do to a library, and what
//! strangers may not learn. Requests go through `upload_ingest::handle` (the World of
//! `ingest.rs`: moto and the tenant emulator over real sockets).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use shared::config::Config;
use shared::secrets::{CachingStore, SecretError, SecretStore, VersionId, Versioned, schema};
use spbridge_tests::assert_reveals_nothing;

use crate::ingest::{SP_LIB, Setup, World, new_id, signed_json, signed_raw};

/// The names a stranger must not learn about this World.
fn internal_names(w: &World) -> Vec<String> {
    vec![
        w.prefix.clone(),
        format!("{}webhook", w.prefix),
        format!("{}senders/", w.prefix),
        format!("{}connections/", w.prefix),
        "acs-app".into(),
    ]
}

fn names(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn system_and_audit_fields_are_refused_and_nothing_is_written() {
    let w = World::start(Setup::default()).await;
    for (i, field) in [
        "Author",
        "Editor",
        "Created",
        "Modified",
        "_ModerationStatus",
        "ContentTypeId",
        "FileLeafRef",
    ]
    .iter()
    .enumerate()
    {
        let q = format!("name=forged{i}.txt&metadata.{field}=someone");
        let (s, b, _) = w
            .send(signed_raw("/upload/contoso-docs", &q, &new_id(), b"forged"))
            .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (422, Some("invalid_name")),
            "{field}: {b}"
        );
        assert!(b["message"].as_str().unwrap().contains(field), "{b}");
        assert!(w.bytes(&format!("{SP_LIB}/forged{i}.txt")).is_none());
    }
    // Headers arrive lower-case; the rule still holds.
    let mut req = signed_raw("/upload/contoso-docs", "name=h.txt", &new_id(), b"h");
    req.headers_mut()
        .insert("x-metadata-author", "someone".parse().unwrap());
    let (s, b, _) = w.send(req).await;
    assert_eq!(s, 422, "{b}");
    // JSON envelopes too, and the first (clean) file of the request is not stored either.
    let (s, b, _) = w
        .send(signed_json(
            "/upload/contoso-docs",
            &new_id(),
            &json!([
                {"path": "ok.txt", "content_base64": "b2s="},
                {"path": "bad.txt", "content_base64": "b2s=", "metadata": {"Modified": "2001-01-01"}}
            ]),
        ))
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(w.bytes(&format!("{SP_LIB}/ok.txt")).is_none());
    // An ordinary column is still fine.
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/contoso-docs",
            "name=fine.txt&metadata.Title=Fine",
            &new_id(),
            b"fine",
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/fine.txt")).unwrap(), b"fine");
    w.assert_no_half_files();
}

#[tokio::test]
async fn disguised_names_and_dangerous_types_are_refused() {
    let w = World::start(Setup::default()).await;
    for name in [
        "invoice%E2%80%AEfdp.exe.txt", // U+202E right-to-left override
        "pay%E2%80%8Broll.txt",        // U+200B zero-width space
        "a%EF%BB%BFb.txt",             // U+FEFF
        "page.html",
        "logo.svg",
        "link.url",
        "disk.iso",
        "notes.one",
        "macro.xlsm",
    ] {
        let (s, b, _) = w
            .send(signed_raw(
                "/upload/contoso-docs",
                &format!("name={name}"),
                &new_id(),
                b"x",
            ))
            .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (422, Some("invalid_name")),
            "{name}: {b}"
        );
    }
    // docs-inbox sanitises: the invisible character is removed, the file lands under its
    // visible name.
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/docs-inbox",
            "name=pay%E2%80%8Broll.txt",
            &new_id(),
            b"clean",
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["path"], format!("{SP_LIB}/inbox/payroll.txt"));
    // Decomposed accents are stored in NFC.
    let (s, b, _) = w
        .send(signed_raw(
            "/upload/contoso-docs",
            "name=Cafe%CC%81.txt",
            &new_id(),
            b"nfc",
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/Caf\u{e9}.txt")).unwrap(), b"nfc");
    w.assert_no_half_files();
}

#[tokio::test]
async fn unauthenticated_answers_reveal_nothing() {
    let w = World::start(Setup::default()).await;
    let internal = internal_names(&w);
    let unsigned = |path: &str| {
        let mut req = signed_raw(path, "name=x.txt", &new_id(), b"x");
        req.headers_mut().remove("webhook-signature");
        req
    };
    let mut forged = signed_raw("/upload/contoso-docs", "name=x.txt", &new_id(), b"x");
    forged.headers_mut().insert(
        "webhook-signature",
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .unwrap(),
    );
    for (what, req, status) in [
        ("an unsigned upload", unsigned("/upload/contoso-docs"), 401),
        ("a forged signature", forged, 401),
        // Unknown and existing connections answer alike, so names cannot be probed.
        (
            "an unknown connection",
            unsigned("/upload/no-such-connection"),
            401,
        ),
        (
            "a malformed connection name",
            unsigned("/upload/..%2Fapp"),
            401,
        ),
    ] {
        let (s, b, _) = w.send(req).await;
        assert_eq!(s, status, "{what}: {b}");
        assert_reveals_nothing(what, &b.to_string(), &names(&internal));
    }
}

/// Counts the reads that reach the store under the cache.
struct Counting {
    inner: Arc<dyn SecretStore>,
    gets: AtomicU32,
}

impl SecretStore for Counting {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Versioned<Value>, SecretError>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(name)
    }
    fn put<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<&'a VersionId>,
    ) -> BoxFuture<'a, Result<VersionId, SecretError>> {
        self.inner.put(name, value, expected)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, SecretError>> {
        self.inner.list(prefix)
    }
}

#[tokio::test]
async fn unknown_connection_names_cost_one_secrets_manager_call_each() {
    let counting = Arc::new(Counting {
        inner: Arc::new(spbridge_tests::moto_store().await),
        gets: AtomicU32::new(0),
    });
    let prefix = spbridge_tests::unique_prefix();
    let cfg = Config::from_lookup(|k| (k == "SPBRIDGE_SECRET_PREFIX").then(|| prefix.clone()))
        .unwrap()
        .secrets;
    assert_eq!(cfg.not_found_ttl, Duration::from_secs(30));
    let cached =
        CachingStore::new(counting.clone(), cfg.cache_ttl).with_not_found_ttl(cfg.not_found_ttl);

    for round in 0..20 {
        for name in ["guess-1", "guess-2", "guess-3"] {
            let e = schema::connection(&cached, &cfg, name).await.unwrap_err();
            assert!(
                matches!(e, SecretError::NotFound { .. }),
                "round {round}: {e}"
            );
        }
    }
    assert_eq!(
        counting.gets.load(Ordering::SeqCst),
        3,
        "one moto read per unknown name"
    );

    // A connection created through this container is visible at once.
    let conn = json!({"provider": "acs", "auth": "app_only", "status": "active",
                      "target": {"kind": "drive", "drive_id": "me"}});
    cached
        .put(&cfg.connection_secret_name("guess-1"), &conn, None)
        .await
        .unwrap();
    assert!(schema::connection(&cached, &cfg, "guess-1").await.is_ok());
}
