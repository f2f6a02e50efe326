//! Microsoft Graph drives: items by path and id, simple PUT upload, folder creation and
//! resumable upload sessions (320 KiB fragments, `nextExpectedRanges`, expiry, cancel).

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::Shared;
use crate::model::{Db, GraphUpload, Node};
use crate::util::{
    Req, bytes_response, graph_time, json, mime_for, new_guid, now, opaque, quick_xor_hash,
    unix_now,
};

const FRAGMENT: u64 = 320 * 1024;

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let date = graph_time(now());
    let id = new_guid();
    json(
        status,
        &json!({"error": {"code": code, "message": message, "innerError": {"date": date.split('.').next().unwrap_or_default(), "request-id": id, "client-request-id": id}}}),
    )
}

fn not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        "The resource could not be found.",
    )
}

/// Who calls Graph and which sites they reach.
enum Caller {
    All,
    Delegated,
    Selected(Vec<String>),
}

fn authenticate(st: &Shared, r: &Req) -> Result<Caller, Response> {
    let Some(token) = r.bearer().filter(|t| !t.is_empty()) else {
        return Err(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        ));
    };
    if !token.contains('.') {
        let db = st.db();
        return match db.live_tokens.get(token) {
            Some(l) if l.expires > unix_now() => Ok(Caller::Delegated),
            _ => Err(graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            )),
        };
    }
    let claims = match st.cfg.signer.verify(token) {
        Ok(c) => c,
        Err(crate::tokens::TokenError::Expired) => {
            return Err(graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
            ));
        }
        Err(_) => {
            return Err(graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token validation failure.",
            ));
        }
    };
    let aud = claims
        .get("aud")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if crate::aad::classify_resource(st, aud) != Some(crate::aad::Api::Graph) {
        return Err(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        ));
    }
    if claims.get("scp").is_some() {
        return Ok(Caller::Delegated);
    }
    let roles: Vec<&str> = claims
        .get("roles")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if roles.iter().any(|r| {
        matches!(
            *r,
            "Sites.ReadWrite.All" | "Files.ReadWrite.All" | "Sites.FullControl.All"
        )
    }) {
        return Ok(Caller::All);
    }
    if roles.contains(&"Sites.Selected") {
        let appid = claims
            .get("appid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let sites = st
            .db()
            .entra_app(appid)
            .map(|a| a.selected_sites.clone())
            .unwrap_or_default();
        return Ok(Caller::Selected(sites));
    }
    Err(graph_error(
        StatusCode::FORBIDDEN,
        "accessDenied",
        "Either scp or roles claim need to be present in the token.",
    ))
}

fn allowed(caller: &Caller, site_url: &str) -> bool {
    match caller {
        Caller::All | Caller::Delegated => true,
        Caller::Selected(sites) => sites.iter().any(|s| s.eq_ignore_ascii_case(site_url)),
    }
}

pub(crate) fn handle(st: &Arc<Shared>, r: Req) -> Response {
    let tail = r.path["/graph/".len()..].to_string();
    if let Some(id) = tail.strip_prefix("_upload/") {
        return upload_url(st, &r, id);
    }
    if let Some(id) = tail.strip_prefix("_download/") {
        let db = st.db();
        return match db
            .nodes
            .values()
            .find(|n| n.item_id == id)
            .and_then(|n| n.current())
        {
            Some(v) => bytes_response(
                StatusCode::OK,
                "application/octet-stream",
                v.content.to_vec(),
            ),
            None => not_found(),
        };
    }
    let Some(rest) = tail.strip_prefix("v1.0/") else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid version.");
    };
    let caller = match authenticate(st, &r) {
        Ok(c) => c,
        Err(e) => return e,
    };
    // Resolve the drive.
    let (drive_id, after) = {
        let db = st.db();
        if let Some(x) = rest.strip_prefix("drives/") {
            let (id, after) = x.split_once('/').unwrap_or((x, ""));
            (id.to_string(), after.to_string())
        } else if let Some(x) = rest.strip_prefix("me/drive") {
            let Caller::Delegated = caller else {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                );
            };
            let Some(lib) = db
                .sites
                .iter()
                .find(|s| s.personal)
                .and_then(|s| s.libraries.first())
            else {
                return not_found();
            };
            (lib.drive_id.clone(), x.trim_start_matches('/').to_string())
        } else if let Some(x) = rest.strip_prefix("sites/") {
            // `{host}:/sites/team:[/rest]` (by path) or `{host},{siteId},{webId}[/rest]`.
            let by_path = x.find(":/").filter(|i| !x[..*i].contains('/'));
            let (site, after) = if let Some(i) = by_path {
                let tail = &x[i + 2..];
                let (path, after) = match tail.find(':') {
                    Some(j) => (&tail[..j], tail[j + 1..].trim_start_matches('/')),
                    None => (tail, ""),
                };
                let path = format!("/{}", path.trim_end_matches('/'));
                (
                    db.sites
                        .iter()
                        .find(|s| s.server_relative_url.eq_ignore_ascii_case(&path)),
                    after,
                )
            } else {
                let (site_ref, after) = x.split_once('/').unwrap_or((x, ""));
                (
                    db.sites.iter().find(|s| {
                        site_ref
                            .split(',')
                            .nth(1)
                            .map(|id| id == s.site_id)
                            .unwrap_or(s.site_id == site_ref)
                    }),
                    after,
                )
            };
            let Some(site) = site.cloned() else {
                return graph_error(
                    StatusCode::NOT_FOUND,
                    "itemNotFound",
                    "The provided path does not exist, or does not represent a site",
                );
            };
            if !allowed(&caller, &site.server_relative_url) {
                return graph_error(StatusCode::FORBIDDEN, "accessDenied", "Access denied");
            }
            let site_id = format!("{},{},{}", st.cfg.host, site.site_id, site.web_id);
            match after {
                "" => {
                    return json(
                        StatusCode::OK,
                        &json!({"@odata.context": format!("{}/v1.0/$metadata#sites/$entity", st.cfg.graph()), "createdDateTime": graph_time(now()), "id": site_id, "name": site.name, "displayName": site.name, "webUrl": format!("{}{}", st.cfg.base, site.server_relative_url), "siteCollection": {"hostname": st.cfg.host}}),
                    );
                }
                "drives" => {
                    let list: Vec<Value> = site
                        .libraries
                        .iter()
                        .map(|l| drive_json(st, &site_id, l, site.personal))
                        .collect();
                    return json(
                        StatusCode::OK,
                        &json!({"@odata.context": format!("{}/v1.0/$metadata#drives", st.cfg.graph()), "value": list}),
                    );
                }
                _ => {}
            }
            let Some(rest) = after.strip_prefix("drive") else {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Resource not found for the segment.",
                );
            };
            let Some(lib) = site.libraries.first() else {
                return not_found();
            };
            (
                lib.drive_id.clone(),
                rest.trim_start_matches('/').to_string(),
            )
        } else {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "Resource not found for the segment '{}'.",
                    rest.split('/').next().unwrap_or_default()
                ),
            );
        }
    };
    let lib = {
        let db = st.db();
        db.library_by_drive(&drive_id)
            .map(|(s, l)| (s.clone(), l.clone()))
    };
    let Some((site, lib)) = lib else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "The drive could not be found.",
        );
    };
    if !allowed(&caller, &site.server_relative_url) {
        return graph_error(StatusCode::FORBIDDEN, "accessDenied", "Access denied");
    }
    let site_id = format!("{},{},{}", st.cfg.host, site.site_id, site.web_id);
    let ctx = Ctx {
        st,
        r: &r,
        drive_id: &drive_id,
        root: &lib.root,
        site_id: &site_id,
        personal: site.personal,
    };
    if after.is_empty() {
        return json(
            StatusCode::OK,
            &drive_json(st, &site_id, &lib, site.personal),
        );
    }
    ctx.item_route(&after)
}

fn drive_json(st: &Shared, site_id: &str, lib: &crate::model::Library, personal: bool) -> Value {
    json!({
        "@odata.context": format!("{}/v1.0/$metadata#drives/$entity", st.cfg.graph()),
        "id": lib.drive_id,
        "name": lib.title,
        "driveType": if personal { "business" } else { "documentLibrary" },
        "webUrl": format!("{}{}", st.cfg.base, lib.root),
        "sharePointIds": {"siteId": site_id.split(',').nth(1), "webId": site_id.split(',').nth(2), "listId": lib.list_id},
    })
}

struct Ctx<'a> {
    st: &'a Shared,
    r: &'a Req,
    drive_id: &'a str,
    root: &'a str,
    site_id: &'a str,
    personal: bool,
}

fn conflict_of(r: &Req, body: &Value, default: &str) -> String {
    r.q("@microsoft.graph.conflictBehavior")
        .map(str::to_string)
        .or_else(|| {
            body.get("@microsoft.graph.conflictBehavior")
                .or_else(|| {
                    body.get("item")
                        .and_then(|i| i.get("@microsoft.graph.conflictBehavior"))
                })
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| default.to_string())
}

const BAD_CHARS: &[char] = &['"', '*', ':', '<', '>', '?', '\\', '|'];

fn renamed(db: &Db, path: &str) -> String {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let mut i = 1;
    loop {
        let candidate = format!("{parent}/{stem} {i}{ext}");
        if db.get(&candidate).is_none() {
            return candidate;
        }
        i += 1;
    }
}

fn name_exists() -> Response {
    graph_error(
        StatusCode::CONFLICT,
        "nameAlreadyExists",
        "The specified item name already exists.",
    )
}

impl Ctx<'_> {
    /// `root`, `root:/a/b:`, `root:/a/b:/content`, `items/{id}`, `items/{id}:/name:/content`…
    fn item_route(&self, after: &str) -> Response {
        let (path, action) = if let Some(x) = after.strip_prefix("root:") {
            let (rel, action) = match x.find(':') {
                Some(i) => (&x[..i], &x[i + 1..]),
                None => (x, ""),
            };
            let rel = rel.trim_matches('/');
            (
                if rel.is_empty() {
                    self.root.to_string()
                } else {
                    format!("{}/{rel}", self.root)
                },
                action.to_string(),
            )
        } else if let Some(x) = after.strip_prefix("root") {
            (self.root.to_string(), x.to_string())
        } else if let Some(x) = after.strip_prefix("items/") {
            let end = x.find([':', '/']).unwrap_or(x.len());
            let id = &x[..end];
            let base = {
                let db = self.st.db();
                if id == "root" {
                    Some(self.root.to_string())
                } else {
                    db.nodes
                        .values()
                        .find(|n| n.item_id == id)
                        .map(|n| n.path.clone())
                }
            };
            let Some(base) = base else {
                return not_found();
            };
            let x = &x[end..];
            if let Some(y) = x.strip_prefix(':') {
                let (rel, action) = match y.find(':') {
                    Some(i) => (&y[..i], &y[i + 1..]),
                    None => (y, ""),
                };
                (
                    format!("{base}/{}", rel.trim_matches('/')),
                    action.to_string(),
                )
            } else {
                (base, x.to_string())
            }
        } else {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Resource not found for the segment.",
            );
        };
        let action = action.trim_start_matches('/').to_ascii_lowercase();
        if let Some(name) = path.rsplit('/').next()
            && name.contains(BAD_CHARS)
        {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "The provided name contains invalid characters.",
            );
        }
        match (self.r.method.clone(), action.as_str()) {
            (Method::GET, "") => self.get(&path),
            (Method::DELETE, "") => {
                let mut db = self.st.db();
                if db.get(&path).is_none() || path.eq_ignore_ascii_case(self.root) {
                    return not_found();
                }
                let key = Db::key(&path);
                db.nodes
                    .retain(|k, _| k != &key && !k.starts_with(&format!("{key}/")));
                let mut r = Response::new(axum::body::Body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            (Method::GET, "content") => {
                let db = self.st.db();
                match db.get(&path).and_then(|n| n.current()) {
                    Some(v) => bytes_response(StatusCode::OK, mime_for(&path), v.content.to_vec()),
                    None => not_found(),
                }
            }
            (Method::PUT, "content") => self.put_content(&path),
            (Method::POST, "createuploadsession") => self.create_session(&path),
            (Method::GET, "children") => {
                let db = self.st.db();
                if !db.get(&path).map(|n| n.is_folder()).unwrap_or(false) {
                    return not_found();
                }
                let list: Vec<Value> = db
                    .children(&path)
                    .into_iter()
                    .map(|n| self.item_json(n, &db))
                    .collect();
                json(
                    StatusCode::OK,
                    &json!({"@odata.context": format!("{}/v1.0/$metadata#drives('{}')/items", self.st.cfg.graph(), self.drive_id), "value": list}),
                )
            }
            (Method::POST, "children") => self.create_folder(&path),
            _ => graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                &format!(
                    "{} {action} is not supported on a driveItem.",
                    self.r.method
                ),
            ),
        }
    }

    fn get(&self, path: &str) -> Response {
        let db = self.st.db();
        match db.get(path) {
            Some(n) => json(StatusCode::OK, &self.item_json(n, &db)),
            None => not_found(),
        }
    }

    fn item_json(&self, n: &Node, db: &Db) -> Value {
        let parent = n.parent();
        let parent_node = db.get(parent);
        let rel_parent = parent.strip_prefix(self.root).unwrap_or("");
        let st = self.st;
        let by = if n.created_by.starts_with("i:0#") {
            json!({"user": {"displayName": n.created_by.rsplit('|').next().unwrap_or_default()}})
        } else {
            json!({"application": {"displayName": n.created_by}})
        };
        let mut v = json!({
            "@odata.context": format!("{}/v1.0/$metadata#drives('{}')/items/$entity", st.cfg.graph(), self.drive_id),
            "createdDateTime": graph_time(n.created).replace(".000Z", "Z"),
            "eTag": n.etag(),
            "id": n.item_id,
            "lastModifiedDateTime": graph_time(n.modified).replace(".000Z", "Z"),
            "name": n.name(),
            "webUrl": format!("{}{}", st.cfg.base, n.path),
            "cTag": format!("\"c:{{{}}},{}\"", n.unique_id.to_uppercase(), n.etag_version),
            "size": n.size(),
            "createdBy": by,
            "lastModifiedBy": by,
            "parentReference": {
                "driveType": if self.personal { "business" } else { "documentLibrary" },
                "driveId": self.drive_id,
                "id": parent_node.map(|p| p.item_id.clone()).unwrap_or_default(),
                "name": parent.rsplit('/').next().unwrap_or_default(),
                "path": format!("/drives/{}/root:{}", self.drive_id, rel_parent),
                "siteId": self.site_id.split(',').nth(1).unwrap_or_default(),
            },
            "fileSystemInfo": {"createdDateTime": graph_time(n.created).replace(".000Z", "Z"), "lastModifiedDateTime": graph_time(n.modified).replace(".000Z", "Z")},
        });
        if n.path.eq_ignore_ascii_case(self.root) {
            v["root"] = json!({});
            v["name"] = json!("root");
        }
        if n.is_folder() {
            v["folder"] = json!({"childCount": db.children(&n.path).len()});
        } else {
            let content = n.current().map(|c| c.content.clone()).unwrap_or_default();
            // quickXorHash over a spilled multi-GiB file would read it back; give SHA-256.
            let hashes = match &content {
                crate::blob::Content::Mem(b) => json!({"quickXorHash": quick_xor_hash(b)}),
                crate::blob::Content::Disk(_) => {
                    json!({"sha256Hash": content.sha256_hex().to_uppercase()})
                }
            };
            v["@microsoft.graph.downloadUrl"] = json!(format!(
                "{}/_download/{}?tempauth={}",
                st.cfg.graph(),
                n.item_id,
                opaque("")
            ));
            v["file"] = json!({"mimeType": mime_for(n.name()), "hashes": hashes});
            v["shared"] = json!({"scope": "users"});
        }
        v
    }

    fn parent_ok(&self, db: &Db, path: &str) -> bool {
        let lower = path.to_lowercase();
        lower.starts_with(&format!("{}/", self.root.to_lowercase()))
            && db.library_of(path).is_some()
    }

    fn put_content(&self, path: &str) -> Response {
        let conflict = conflict_of(self.r, &Value::Null, "replace");
        let mut db = self.st.db();
        if !self.parent_ok(&db, path) {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "Cannot upload to the drive root itself.",
            );
        }
        let (target, status) = match resolve_conflict(&db, path, &conflict) {
            Ok(x) => x,
            Err(e) => return e,
        };
        let n = db
            .write_file(&target, self.r.body.clone(), "Graph client", false)
            .clone();
        self.st.persist(&n);
        json(status, &self.item_json(&n, &db))
    }

    fn create_folder(&self, parent: &str) -> Response {
        let body: Value = match serde_json::from_slice(&self.r.body) {
            Ok(v) => v,
            Err(_) => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "invalidRequest",
                    "The request body must be a JSON driveItem.",
                );
            }
        };
        let Some(name) = body
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "The property 'name' is required.",
            );
        };
        if body.get("folder").is_none() {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "Only folder creation is supported on children (set \"folder\": {}).",
            );
        }
        if name.contains(BAD_CHARS) || name.contains('/') {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "The provided name contains invalid characters.",
            );
        }
        let conflict = conflict_of(self.r, &body, "fail");
        let mut db = self.st.db();
        if !db.get(parent).map(|n| n.is_folder()).unwrap_or(false) {
            return not_found();
        }
        let path = format!("{parent}/{name}");
        if let Some(existing) = db.get(&path) {
            match conflict.as_str() {
                "replace" if existing.is_folder() => {
                    let e = existing.clone();
                    return json(StatusCode::OK, &self.item_json(&e, &db));
                }
                "rename" => {
                    let p = renamed(&db, &path);
                    db.insert_folder(&p, "Graph client");
                    let Some(n) = db.get(&p).cloned() else {
                        return not_found();
                    };
                    return json(StatusCode::CREATED, &self.item_json(&n, &db));
                }
                _ => return name_exists(),
            }
        }
        db.insert_folder(&path, "Graph client");
        let Some(n) = db.get(&path).cloned() else {
            return not_found();
        };
        json(StatusCode::CREATED, &self.item_json(&n, &db))
    }

    fn create_session(&self, path: &str) -> Response {
        let body: Value = serde_json::from_slice(&self.r.body).unwrap_or(Value::Null);
        let conflict = conflict_of(self.r, &body, "replace");
        let mut db = self.st.db();
        if !self.parent_ok(&db, path) {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "Cannot upload to the drive root itself.",
            );
        }
        if conflict == "fail" && db.get(path).is_some() {
            return name_exists_session();
        }
        let id = opaque("");
        let expires = crate::util::add_secs(now(), self.st.cfg.opts.upload_session_ttl);
        let declared = body
            .get("item")
            .and_then(|i| i.get("fileSize"))
            .and_then(Value::as_u64);
        db.graph_uploads.insert(
            id.clone(),
            GraphUpload {
                drive_id: self.drive_id.to_string(),
                path: path.to_string(),
                conflict,
                data: crate::blob::Spool::new(&self.st.cfg.state_dir.join("spool")),
                total: declared,
                expires,
                declared_size: declared,
            },
        );
        json(
            StatusCode::OK,
            &json!({
                "@odata.context": format!("{}/v1.0/$metadata#microsoft.graph.uploadSession", self.st.cfg.graph()),
                "expirationDateTime": graph_time(expires),
                "nextExpectedRanges": ["0-"],
                "uploadUrl": format!("{}/_upload/{id}", self.st.cfg.graph()),
            }),
        )
    }
}

fn name_exists_session() -> Response {
    graph_error(
        StatusCode::CONFLICT,
        "nameAlreadyExists",
        "Another file exists with the same name as the uploaded session. You can redirect the upload session to use a new filename by calling PUT with the new metadata and @microsoft.graph.sourceUrl attribute.",
    )
}

/// Applies conflictBehavior; returns the path to write and the success status.
fn resolve_conflict(db: &Db, path: &str, conflict: &str) -> Result<(String, StatusCode), Response> {
    match db.get(path) {
        None => Ok((path.to_string(), StatusCode::CREATED)),
        Some(n) if n.is_folder() => Err(name_exists()),
        Some(_) => match conflict {
            "fail" => Err(name_exists()),
            "rename" => Ok((renamed(db, path), StatusCode::CREATED)),
            _ => Ok((path.to_string(), StatusCode::OK)),
        },
    }
}

fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let v = v.trim().strip_prefix("bytes ")?;
    let (range, total) = v.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (b >= a).then_some((a, b, total))
}

fn upload_url(st: &Shared, r: &Req, id: &str) -> Response {
    let id = id.split('?').next().unwrap_or(id);
    if r.header("authorization").is_some() {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The upload URL is pre-authenticated; requests to it must not carry an Authorization header.",
        );
    }
    let mut db = st.db();
    let expired = db.graph_uploads.get(id).map(|s| s.expires <= now());
    match expired {
        None => {
            return graph_error(
                StatusCode::NOT_FOUND,
                "itemNotFound",
                "The upload session was not found.",
            );
        }
        Some(true) => {
            db.graph_uploads.remove(id);
            return graph_error(
                StatusCode::NOT_FOUND,
                "itemNotFound",
                "The upload session has expired.",
            );
        }
        Some(false) => {}
    }
    let expire_at = db.graph_expire_at;
    let Some(session) = db.graph_uploads.get_mut(id) else {
        return not_found();
    };
    match r.method {
        Method::DELETE => {
            db.graph_uploads.remove(id);
            let mut resp = Response::new(axum::body::Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            return resp;
        }
        Method::GET => {
            let next = format!("{}-", session.data.len());
            return json(
                StatusCode::OK,
                &json!({"expirationDateTime": graph_time(session.expires), "nextExpectedRanges": [next]}),
            );
        }
        Method::PUT => {}
        _ => {
            return graph_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalidRequest",
                "Use PUT to upload fragments, DELETE to cancel.",
            );
        }
    }
    let Some((a, b, total)) = r.header("content-range").and_then(parse_content_range) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "The Content-Range header is missing or malformed.",
        );
    };
    let received = session.data.len();
    let len = (b - a).saturating_add(1);
    if len != r.body.len() as u64 {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "The Content-Range header length does not match the provided number of bytes.",
        );
    }
    let total = match (total, session.total) {
        (Some(t), Some(s)) if t != s => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "The declared total size changed between fragments.",
            );
        }
        (Some(t), _) => t,
        (None, Some(s)) => s,
        (None, None) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "The total size must be given in Content-Range.",
            );
        }
    };
    let range_err = |msg: &str, next: u64| {
        let mut resp = graph_error(StatusCode::RANGE_NOT_SATISFIABLE, "invalidRange", msg);
        resp = crate::util::with_header(resp, "content-range", &format!("bytes */{next}"));
        resp
    };
    if a != received {
        return range_err(
            &format!(
                "The uploaded fragment starts at {a}; the next expected range is {received}-."
            ),
            received,
        );
    }
    if b >= total {
        return range_err(
            "The fragment ends beyond the declared total size.",
            received,
        );
    }
    let last = b + 1 == total;
    if !last && len % FRAGMENT != 0 {
        return range_err(
            "Fragments must be a multiple of 320 KiB (327,680 bytes), except the last one.",
            received,
        );
    }
    session.total = Some(total);
    let expire_now = !last && expire_at.is_some_and(|at| received + len >= at);
    if session.data.append(&r.body).is_err() {
        return graph_error(
            StatusCode::INSUFFICIENT_STORAGE,
            "quotaLimitReached",
            "The emulator could not store the fragment.",
        );
    }
    if !last {
        if expire_now {
            session.expires = now();
        }
        let next = format!("{}-", session.data.len());
        let expires = session.expires;
        if expire_now {
            db.graph_expire_at = None;
        }
        return json(
            StatusCode::ACCEPTED,
            &json!({"expirationDateTime": graph_time(expires), "nextExpectedRanges": [next]}),
        );
    }
    let Some(session) = db.graph_uploads.remove(id) else {
        return not_found();
    };
    let _ = session.declared_size;
    let (target, status) = match resolve_conflict(&db, &session.path, &session.conflict) {
        Ok(x) => x,
        Err(_) if session.conflict == "fail" => return name_exists_session(),
        Err(e) => return e,
    };
    let n = db
        .write_file(&target, session.data.finish(), "Graph client", false)
        .clone();
    st.persist(&n);
    let lib = db
        .library_by_drive(&session.drive_id)
        .map(|(s, l)| (s.clone(), l.clone()));
    let Some((site, lib)) = lib else {
        return not_found();
    };
    let site_id = format!("{},{},{}", st.cfg.host, site.site_id, site.web_id);
    let ctx = Ctx {
        st,
        r,
        drive_id: &session.drive_id,
        root: &lib.root,
        site_id: &site_id,
        personal: site.personal,
    };
    json(status, &ctx.item_json(&n, &db))
}
