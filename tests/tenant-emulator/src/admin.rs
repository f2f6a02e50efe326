//! `/_emulator/*`: inspection of stored files and sessions, fault rules and token test hooks.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::model::{Db, Node, NodeKind, RefreshState};
use crate::util::{Req, bytes_response, json};
use crate::{FaultRule, OpenUpload, Shared, StoredItem};

pub(crate) fn stored_item(n: &Node) -> StoredItem {
    let versions = match &n.kind {
        NodeKind::File { versions } => versions
            .iter()
            .map(|v| (v.label.clone(), v.content.len() as u64))
            .collect(),
        NodeKind::Folder => vec![],
    };
    StoredItem {
        path: n.path.clone(),
        is_folder: n.is_folder(),
        size: n.size(),
        unique_id: n.unique_id.clone(),
        item_id: n.item_id.clone(),
        version_label: n.ui_version_label(),
        versions,
        fields: n.fields.clone(),
        etag: n.etag(),
    }
}

pub(crate) fn list_items(db: &Db) -> Vec<StoredItem> {
    db.nodes.values().map(stored_item).collect()
}

pub(crate) fn open_uploads(db: &Db) -> Vec<OpenUpload> {
    let mut out: Vec<OpenUpload> = db
        .sp_uploads
        .iter()
        .map(|(id, s)| OpenUpload {
            api: "sharepoint".into(),
            id: id.clone(),
            path: s.path.clone(),
            received: s.data.len(),
        })
        .collect();
    out.extend(db.graph_uploads.iter().map(|(id, s)| OpenUpload {
        api: "graph".into(),
        id: id.clone(),
        path: s.path.clone(),
        received: s.data.len(),
    }));
    out
}

pub(crate) fn set_refresh_state(
    db: &mut Db,
    client_id: Option<&str>,
    token: Option<&str>,
    state: RefreshState,
) -> usize {
    let mut n = 0;
    for (rt, t) in db.refresh.iter_mut() {
        let hit = match (token, client_id) {
            (Some(tok), _) => rt == tok,
            (None, Some(c)) => t.client_id.eq_ignore_ascii_case(c),
            (None, None) => true,
        };
        if hit {
            t.state = state;
            n += 1;
        }
    }
    n
}

fn bad(msg: &str) -> Response {
    json(StatusCode::BAD_REQUEST, &json!({"error": msg}))
}

pub(crate) async fn handle(st: &Arc<Shared>, r: Req) -> Response {
    let tail = r
        .path
        .trim_start_matches("/_emulator")
        .trim_matches('/')
        .to_string();
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    match (r.method.clone(), tail.as_str()) {
        (Method::GET, "info") => json(StatusCode::OK, st.info.get().unwrap_or(&Value::Null)),
        (Method::GET, "files") => json(
            StatusCode::OK,
            &serde_json::to_value(list_items(&st.db())).unwrap_or_default(),
        ),
        (Method::GET, "files/content") => {
            let Some(path) = r.q("path") else {
                return bad("query parameter 'path' is required");
            };
            let db = st.db();
            match db.get(path).and_then(|n| n.current()) {
                Some(v) => bytes_response(
                    StatusCode::OK,
                    "application/octet-stream",
                    v.content.to_vec(),
                ),
                None => json(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("no file at {path}")}),
                ),
            }
        }
        (Method::GET, "files/digest") => {
            let Some(path) = r.q("path") else {
                return bad("query parameter 'path' is required");
            };
            match st.db().get(path).and_then(|n| n.current()) {
                Some(v) => json(
                    StatusCode::OK,
                    &json!({"size": v.content.len(), "sha256": v.content.sha256_hex()}),
                ),
                None => json(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("no file at {path}")}),
                ),
            }
        }
        (Method::DELETE, "files") => {
            // Frees a large file's disk space between benchmark runs.
            let Some(path) = r.q("path") else {
                return bad("query parameter 'path' is required");
            };
            let removed = st.db().nodes.remove(&Db::key(path)).is_some();
            let _ = std::fs::remove_file(
                st.cfg
                    .state_dir
                    .join("files")
                    .join(path.trim_start_matches('/')),
            );
            json(StatusCode::OK, &json!({"removed": removed}))
        }
        (Method::GET, "files/item") => {
            let Some(path) = r.q("path") else {
                return bad("query parameter 'path' is required");
            };
            match st.db().get(path) {
                Some(n) => json(
                    StatusCode::OK,
                    &serde_json::to_value(stored_item(n)).unwrap_or_default(),
                ),
                None => json(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("nothing at {path}")}),
                ),
            }
        }
        (Method::GET, "uploads") => json(
            StatusCode::OK,
            &serde_json::to_value(open_uploads(&st.db())).unwrap_or_default(),
        ),
        (Method::GET, "faults") => json(
            StatusCode::OK,
            &serde_json::to_value(&st.faults().rules).unwrap_or_default(),
        ),
        (Method::POST, "faults") => {
            let rules: Vec<FaultRule> = match &body {
                Value::Array(_) => match serde_json::from_value(body.clone()) {
                    Ok(r) => r,
                    Err(e) => return bad(&format!("invalid fault rules: {e}")),
                },
                _ => match serde_json::from_value(body.clone()) {
                    Ok(r) => vec![r],
                    Err(e) => return bad(&format!("invalid fault rule: {e}")),
                },
            };
            let mut f = st.faults();
            f.rules.extend(rules);
            json(
                StatusCode::OK,
                &serde_json::to_value(&f.rules).unwrap_or_default(),
            )
        }
        (Method::DELETE, "faults") => {
            st.faults().rules.clear();
            json(StatusCode::OK, &json!([]))
        }
        (Method::POST, "refresh-tokens") => {
            let state: RefreshState = match body.get("state").cloned().map(serde_json::from_value) {
                Some(Ok(s)) => s,
                _ => return bad("field 'state' must be one of active, expired, inactive, revoked"),
            };
            let client = body.get("client_id").and_then(Value::as_str);
            let token = body.get("refresh_token").and_then(Value::as_str);
            let n = set_refresh_state(&mut st.db(), client, token, state);
            json(StatusCode::OK, &json!({"changed": n}))
        }
        (Method::POST, "consent") => {
            let Some(client) = body.get("client_id").and_then(Value::as_str) else {
                return bad("field 'client_id' is required");
            };
            let revoked = body.get("revoked").and_then(Value::as_bool).unwrap_or(true);
            let mut db = st.db();
            if revoked {
                db.consent_revoked.insert(client.to_lowercase());
            } else {
                db.consent_revoked.remove(&client.to_lowercase());
            }
            json(
                StatusCode::OK,
                &json!({"client_id": client, "revoked": revoked}),
            )
        }
        (Method::POST, "context-token") => {
            let (Some(client), Some(site)) = (
                body.get("client_id").and_then(Value::as_str),
                body.get("site").and_then(Value::as_str),
            ) else {
                return bad("fields 'client_id' and 'site' are required");
            };
            match crate::acs::mint_context_token(st, client, site) {
                Some(t) => json(StatusCode::OK, &json!({"context_token": t})),
                None => json(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "unknown ACS client or site"}),
                ),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin endpoint {} /_emulator/{tail}", r.method)}),
        ),
    }
}
