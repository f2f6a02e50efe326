//! Uploads make no Secrets Manager write in steady state: a rotated refresh token is stored by an
//! upload only when the old one stops working (Microsoft accounts, ACS) or the stored one is
//! older than `access::STORE_ROTATED_AFTER`; token-refresh stores every fresh response. Writes
//! are counted at moto as the secret's versions (each PutSecretValue makes one).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shared::access::Access;
use shared::identity::TokenCache;

use crate::ingest::{Setup, World, delegated_refresh_token};

/// How many versions moto holds for `name`: one per PutSecretValue (and the create).
async fn versions(name: &str) -> usize {
    let sdk = spbridge_tests::moto_sdk_config().await;
    aws_sdk_secretsmanager::Client::new(&sdk)
        .list_secret_version_ids()
        .secret_id(name)
        .include_deprecated(true)
        .send()
        .await
        .expect("versions listed")
        .versions
        .unwrap_or_default()
        .len()
}

#[tokio::test]
async fn uploads_write_no_token_in_steady_state_and_token_refresh_does() {
    let w = World::start(Setup::default()).await;
    let info = w.emu().info().clone();
    let scope = "https://graph.microsoft.com/Files.ReadWrite.All offline_access";
    let rt = delegated_refresh_token(&info, scope).await;
    let drive_id = info.site("team").unwrap().libraries[0].drive_id.clone();
    let name = format!("{}connections/steady", w.prefix);
    let issued = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    w.store
        .put(
            &name,
            &json!({"provider": "entra", "auth": "delegated", "status": "active",
                    "tenant_id": info.tenant_id, "refresh_token": rt,
                    "refresh_token_issued_at": issued.format(&time::format_description::well_known::Rfc3339).unwrap(),
                    "scopes": ["https://graph.microsoft.com/Files.ReadWrite.All"],
                    "target": {"kind": "drive", "drive_id": drive_id}}),
            None,
        )
        .await
        .unwrap();
    let config = w.state_config();
    let access = || {
        Access::new(
            reqwest::Client::new(),
            config.endpoints.clone(),
            Arc::new(TokenCache::new(Duration::from_secs(300))),
            w.store.clone(),
            config.secrets.clone(),
        )
    };
    let before = versions(&name).await;
    // Ten uploads' worth of fresh tokens (each a new container, each redeeming the refresh
    // token; Entra rotates it every time): nothing written.
    for _ in 0..10 {
        access().bearer("steady", true).await.expect("token");
    }
    assert_eq!(versions(&name).await, before, "uploads wrote a token");
    // The stored (older) refresh token still works: Entra keeps it valid after rotation.
    access()
        .bearer("steady", true)
        .await
        .expect("the stored token still works");

    // token-refresh, the writer of record, stores the rotated token.
    let out = access().refresh("steady").await.expect("refreshed");
    assert!(out.rotated);
    assert_eq!(versions(&name).await, before + 1);
    let stored = w.store.get(&name).await.unwrap();
    assert_ne!(stored.value["refresh_token"], json!(rt));

    // A stored token older than the bound is replaced by the next upload, once.
    let mut old = stored.value.clone();
    let stale = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    old["refresh_token_issued_at"] = json!(
        stale
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    w.store
        .put(&name, &old, Some(&stored.version))
        .await
        .unwrap();
    let before = versions(&name).await;
    access().bearer("steady", true).await.expect("token");
    assert_eq!(versions(&name).await, before + 1, "a stale token is stored");
    access().bearer("steady", true).await.expect("token");
    assert_eq!(versions(&name).await, before + 1, "then nothing again");
}
