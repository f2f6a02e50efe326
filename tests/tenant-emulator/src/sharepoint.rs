//! SharePoint Online: bearer-token checks as SPO makes them, realm discovery (`client.svc`), and
//! the REST API for folders, files, chunked uploads and list item fields.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::Shared;
use crate::model::{ACS_PRINCIPAL, Db, Node, Right, SHAREPOINT_PRINCIPAL, Site, SpUpload};
use crate::util::{Req, bytes_response, json, now, sp_time, strip_prefix_ci, with_header};

const TRUSTED_ISSUERS: &str = "00000001-0000-0000-c000-000000000000@*,D3776938-3DBA-481F-A652-4BEDFCAB7CD8@*,https://sts.windows.net/*/,00000003-0000-0ff1-ce00-000000000000@90140122-8516-11e1-8eff-49304924019b";

/// An `odata.error` body (nometadata shape) with the given status.
pub(crate) fn sp_error_plain(status: StatusCode, code: &str, msg: &str) -> Response {
    json(
        status,
        &json!({"odata.error": {"code": code, "message": {"lang": "en-US", "value": msg}}}),
    )
}

fn sp_error(verbose: bool, status: StatusCode, code: &str, msg: &str) -> Response {
    if verbose {
        json(
            status,
            &json!({"error": {"code": code, "message": {"lang": "en-US", "value": msg}}}),
        )
    } else {
        sp_error_plain(status, code, msg)
    }
}

fn access_denied(verbose: bool) -> Response {
    sp_error(
        verbose,
        StatusCode::FORBIDDEN,
        "-2147024891, System.UnauthorizedAccessException",
        "Access denied. You do not have permission to perform this action or access this resource.",
    )
}

fn unauthorized(st: &Shared, diagnostics: Option<&str>, message: &str) -> Response {
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        &json!({"error_description": message}),
    );
    r = with_header(
        r,
        "www-authenticate",
        &format!(
            "Bearer realm=\"{}\",client_id=\"{SHAREPOINT_PRINCIPAL}\",trusted_issuers=\"{TRUSTED_ISSUERS}\",authorization_uri=\"{}/common/oauth2/authorize\"",
            st.cfg.tenant,
            st.cfg.login()
        ),
    );
    if let Some(d) = diagnostics {
        r = with_header(r, "x-ms-diagnostics", d);
    }
    r
}

/// Who is calling and what they may do on this site.
struct Caller {
    name: String,
    can_write: bool,
}

fn authenticate(st: &Shared, r: &Req, site: &Site) -> Result<Caller, Response> {
    let token = r.bearer().unwrap_or_default();
    if token.is_empty() {
        return Err(unauthorized(st, None, "Invalid JWT token. No token."));
    }
    let claims = st.cfg.signer.verify(token).map_err(|e| match e {
        crate::tokens::TokenError::Expired => unauthorized(
            st,
            Some("3000006;reason=\"Token expired.\";category=\"invalid_client\""),
            "Invalid JWT token. The token is expired.",
        ),
        _ => unauthorized(
            st,
            Some(
                "3000006;reason=\"Token contains invalid signature.\";category=\"invalid_client\"",
            ),
            "Invalid JWT token. Could not resolve issuer token.",
        ),
    })?;
    let s = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (iss, aud) = (s("iss"), s("aud"));
    let realm = &st.cfg.tenant;
    let bad_aud = || {
        unauthorized(
            st,
            Some(&format!(
                "3000003;reason=\"Invalid audience Uri '{aud}'.\";category=\"invalid_client\""
            )),
            &format!("Invalid audience Uri '{aud}'."),
        )
    };
    let db = st.db();
    let site_key = site.server_relative_url.clone();
    if iss.eq_ignore_ascii_case(&format!("{ACS_PRINCIPAL}@{realm}")) {
        let ok_aud = [&st.cfg.host, &st.cfg.hostname]
            .iter()
            .any(|h| aud.eq_ignore_ascii_case(&format!("{SHAREPOINT_PRINCIPAL}/{h}@{realm}")));
        if !ok_aud {
            return Err(bad_aud());
        }
        if claims.get("actor").is_some() {
            return Ok(Caller {
                name: s("nameid"),
                can_write: true,
            });
        }
        let nameid = s("nameid");
        let client = nameid.split('@').next().unwrap_or_default();
        let right = db
            .acs_app(client)
            .and_then(|a| a.app_only.get(&site_key).copied());
        return match right {
            Some(r) => Ok(Caller {
                name: format!("i:0i.t|ms.sp.ext|{nameid}"),
                can_write: r != Right::Read,
            }),
            None => Err(access_denied(false)),
        };
    }
    if iss.eq_ignore_ascii_case(&format!("https://sts.windows.net/{realm}/")) {
        if crate::aad::classify_resource(st, &aud) != Some(crate::aad::Api::SharePoint) {
            return Err(bad_aud());
        }
        if let Some(upn) = claims
            .get("upn")
            .and_then(Value::as_str)
            .filter(|_| claims.get("scp").is_some())
        {
            return Ok(Caller {
                name: format!("i:0#.f|membership|{upn}"),
                can_write: true,
            });
        }
        if s("appidacr") != "2" {
            return Err(with_header(
                unauthorized(
                    st,
                    Some(
                        "3001000;reason=\"Unsupported app only token.\";category=\"invalid_client\"",
                    ),
                    "Unsupported app only token.",
                ),
                "content-type",
                "application/json; charset=utf-8",
            ));
        }
        let roles: Vec<String> = claims
            .get("roles")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let appid = s("appid");
        let name = format!("i:0i.t|ms.sp.ext|{appid}@{realm}");
        let has = |r: &str| roles.iter().any(|x| x == r);
        if has("Sites.FullControl.All") || has("Sites.ReadWrite.All") || has("Sites.Manage.All") {
            return Ok(Caller {
                name,
                can_write: true,
            });
        }
        if has("Sites.Selected")
            && db
                .entra_app(&appid)
                .map(|a| {
                    a.selected_sites
                        .iter()
                        .any(|x| x.eq_ignore_ascii_case(&site_key))
                })
                .unwrap_or(false)
        {
            return Ok(Caller {
                name,
                can_write: true,
            });
        }
        if has("Sites.Read.All") {
            return Ok(Caller {
                name,
                can_write: false,
            });
        }
        return Err(access_denied(false));
    }
    Err(unauthorized(
        st,
        Some("3000006;reason=\"Token contains invalid signature.\";category=\"invalid_client\""),
        "Invalid issuer or signature.",
    ))
}

pub(crate) fn handle(st: &Arc<Shared>, r: Req) -> Response {
    // ASCII-only case folding keeps byte offsets stable for slicing.
    let site_and_rest = {
        let db = st.db();
        db.sites.iter().find_map(|s| {
            let rest = strip_prefix_ci(&r.path, &s.server_relative_url)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| (s.clone(), rest.to_string()))
        })
    };
    let Some((site, rest)) = site_and_rest else {
        return sp_error_plain(
            StatusCode::NOT_FOUND,
            "-2147024894, System.IO.FileNotFoundException",
            "File Not Found.",
        );
    };
    let rest_l = rest.to_ascii_lowercase();
    let site_url = format!("{}{}", st.cfg.base, site.server_relative_url);
    if rest_l == "/_layouts/15/oauthauthorize.aspx" {
        return crate::acs::oauth_authorize(st, &r);
    }
    if rest_l == "/_layouts/15/appredirect.aspx" {
        return crate::acs::app_redirect(st, &r, &site.name, &site_url);
    }
    let verbose = r
        .header("accept")
        .map(|a| a.contains("odata=verbose"))
        .unwrap_or(false);
    let caller = match authenticate(st, &r, &site) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if rest_l.is_empty() || rest_l == "/" || rest_l == "/_vti_bin/client.svc" {
        return bytes_response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            b"<html></html>".to_vec(),
        );
    }
    let Some(api) = strip_prefix_ci(&rest, "/_api/") else {
        return sp_error(
            verbose,
            StatusCode::NOT_FOUND,
            "-2147024894, System.IO.FileNotFoundException",
            "File Not Found.",
        );
    };
    let ctx = Ctx {
        st,
        r: &r,
        site: &site,
        site_url: &site_url,
        verbose,
        caller,
    };
    ctx.api(api)
}

struct Ctx<'a> {
    st: &'a Shared,
    r: &'a Req,
    site: &'a Site,
    site_url: &'a str,
    verbose: bool,
    caller: Caller,
}

/// A parsed `Name(args)` segment of an SPO REST path.
#[derive(Debug, Clone)]
struct Seg {
    name: String,
    args: Vec<(Option<String>, String)>,
}

impl Seg {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
    fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| {
                k.as_deref()
                    .map(|k| k.eq_ignore_ascii_case(key))
                    .unwrap_or(false)
            })
            .or_else(|| self.args.iter().find(|(k, _)| k.is_none()))
            .map(|(_, v)| v.as_str())
    }
    fn named(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| {
                k.as_deref()
                    .map(|k| k.eq_ignore_ascii_case(key))
                    .unwrap_or(false)
            })
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `web/GetFolderByServerRelativeUrl('/a/b')/Files/add(url='x',overwrite=true)`.
fn parse_segments(s: &str, r: &Req) -> Result<Vec<Seg>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let mut name = String::new();
        while i < chars.len() && chars[i] != '(' && chars[i] != '/' {
            name.push(chars[i]);
            i += 1;
        }
        let mut args = Vec::new();
        if i < chars.len() && chars[i] == '(' {
            i += 1;
            let mut cur = String::new();
            let mut in_q = false;
            let mut parts = Vec::new();
            loop {
                if i >= chars.len() {
                    return Err(format!("unterminated argument list after '{name}'"));
                }
                let c = chars[i];
                if in_q {
                    if c == '\'' {
                        if i + 1 < chars.len() && chars[i + 1] == '\'' {
                            cur.push_str("''");
                            i += 2;
                            continue;
                        }
                        in_q = false;
                    }
                    cur.push(c);
                } else if c == '\'' {
                    in_q = true;
                    cur.push(c);
                } else if c == ',' {
                    parts.push(std::mem::take(&mut cur));
                } else if c == ')' {
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
                i += 1;
            }
            if !cur.trim().is_empty() {
                parts.push(cur);
            }
            for p in parts {
                let p = p.trim();
                let (key, val) = match p.find('=') {
                    Some(eq) if !p[..eq].contains('\'') => {
                        (Some(p[..eq].trim().to_string()), p[eq + 1..].trim())
                    }
                    _ => (None, p),
                };
                let val = resolve_alias(val, r)?;
                args.push((key, literal(&val)));
            }
        }
        if !name.is_empty() || !args.is_empty() {
            out.push(Seg { name, args });
        }
        if i < chars.len() && chars[i] == '/' {
            i += 1;
        }
    }
    Ok(out)
}

fn resolve_alias(val: &str, r: &Req) -> Result<String, String> {
    if let Some(alias) = val.strip_prefix('@') {
        return r
            .q(&format!("@{alias}"))
            .map(str::to_string)
            .ok_or_else(|| format!("parameter alias @{alias} has no value"));
    }
    Ok(val.to_string())
}

/// `'it''s'` → `it's`; `guid'…'` → the GUID; numbers and booleans as written.
fn literal(v: &str) -> String {
    let v = v.trim();
    let v = strip_prefix_ci(v, "guid")
        .filter(|x| x.starts_with('\''))
        .unwrap_or(v);
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].replace("''", "'")
    } else {
        v.to_string()
    }
}

fn truthy(v: Option<&str>) -> bool {
    matches!(
        v.map(str::to_ascii_lowercase).as_deref(),
        Some("true" | "1")
    )
}

const BAD_CHARS: &[char] = &['"', '*', ':', '<', '>', '?', '\\', '|', '#'];

impl Ctx<'_> {
    fn ok(&self, type_name: &str, uri: &str, body: Value) -> Response {
        if self.verbose {
            let mut d = Map::new();
            d.insert(
                "__metadata".into(),
                json!({"id": uri, "uri": uri, "type": type_name}),
            );
            if let Value::Object(m) = body {
                d.extend(m);
            }
            json(StatusCode::OK, &json!({"d": d}))
        } else {
            json(StatusCode::OK, &body)
        }
    }

    fn scalar(&self, method: &str, value: Value) -> Response {
        if self.verbose {
            json(StatusCode::OK, &json!({"d": {method: value}}))
        } else {
            json(StatusCode::OK, &json!({"value": value}))
        }
    }

    fn err(&self, status: StatusCode, code: &str, msg: &str) -> Response {
        sp_error(self.verbose, status, code, msg)
    }

    fn bad_arg(&self, msg: &str) -> Response {
        self.err(
            StatusCode::BAD_REQUEST,
            "-2147024809, System.ArgumentException",
            msg,
        )
    }

    fn folder_not_found(&self) -> Response {
        self.err(
            StatusCode::NOT_FOUND,
            "-2147024894, System.IO.FileNotFoundException",
            "File Not Found.",
        )
    }

    fn file_not_found(&self, path: &str) -> Response {
        self.err(
            StatusCode::NOT_FOUND,
            "-2130575338, Microsoft.SharePoint.SPException",
            &format!("The file {path} does not exist."),
        )
    }

    /// Resolves a server-relative, site-relative or absolute URL to a server-relative path.
    fn resolve(&self, raw: &str) -> Result<String, Response> {
        let mut p = raw.trim().to_string();
        if let Some(rest) = strip_prefix_ci(&p, &self.st.cfg.base) {
            p = rest.to_string();
        }
        if !p.starts_with('/') {
            p = format!("{}/{}", self.site.server_relative_url, p);
        }
        let p = p.trim_end_matches('/').to_string();
        let root = self.site.server_relative_url.to_lowercase();
        let lower = p.to_lowercase();
        if !(lower == root || lower.starts_with(&format!("{root}/"))) {
            return Err(
                self.bad_arg("Server relative urls must start with SPWeb.ServerRelativeUrl")
            );
        }
        Ok(p)
    }

    fn method(&self) -> Method {
        if let Some(m) = self.r.header("x-http-method")
            && let Ok(m) = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
        {
            return m;
        }
        self.r.method.clone()
    }

    fn api(&self, api: &str) -> Response {
        let api_l = api.trim_end_matches('/').to_ascii_lowercase();
        if api_l == "contextinfo" {
            return self.context_info();
        }
        let segs = match parse_segments(api.trim_end_matches('/'), self.r) {
            Ok(s) => s,
            Err(e) => return self.bad_arg(&format!("The expression is not valid: {e}.")),
        };
        let Some(first) = segs.first() else {
            return self.folder_not_found();
        };
        if !(first.is("web") || first.is("site")) {
            return self.err(
                StatusCode::NOT_FOUND,
                "-1, Microsoft.SharePoint.Client.InvalidClientQueryException",
                &format!("The expression \"{api}\" is not valid."),
            );
        }
        let rest = &segs[1..];
        let Some(target) = rest.first() else {
            return self.web();
        };
        let after = &rest[1..];
        let n = target.name.to_ascii_lowercase();
        match n.as_str() {
            "getfolderbyserverrelativeurl" | "getfolderbyserverrelativepath" => {
                let raw = target
                    .named("decodedurl")
                    .or_else(|| target.arg("serverrelativeurl"))
                    .unwrap_or_default();
                match self.resolve(raw) {
                    Ok(p) => self.folder_ops(&p, after),
                    Err(e) => e,
                }
            }
            "getfilebyserverrelativeurl" | "getfilebyserverrelativepath" => {
                let raw = target
                    .named("decodedurl")
                    .or_else(|| target.arg("serverrelativeurl"))
                    .unwrap_or_default();
                match self.resolve(raw) {
                    Ok(p) => self.file_ops(&p, after),
                    Err(e) => e,
                }
            }
            "getfilebyid" => {
                let id = target
                    .arg("uniqueid")
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let path = self
                    .st
                    .db()
                    .nodes
                    .values()
                    .find(|n| n.unique_id == id)
                    .map(|n| n.path.clone());
                match path {
                    Some(p) => self.file_ops(&p, after),
                    None => self.err(
                        StatusCode::NOT_FOUND,
                        "-2147024894, System.IO.FileNotFoundException",
                        "File Not Found.",
                    ),
                }
            }
            "lists" => {
                let Some(by_title) = after.first().filter(|s| s.is("getbytitle")) else {
                    return self.bad_arg("Only lists/GetByTitle('…') is supported.");
                };
                let title = by_title.arg("title").unwrap_or_default();
                let Some(lib) = self
                    .site
                    .libraries
                    .iter()
                    .find(|l| l.title.eq_ignore_ascii_case(title))
                else {
                    return self.err(
                        StatusCode::NOT_FOUND,
                        "-1, System.ArgumentException",
                        &format!(
                            "List '{title}' does not exist at site with URL '{}'.",
                            self.site_url
                        ),
                    );
                };
                let tail = &after[1..];
                match tail.first() {
                    Some(s) if s.is("rootfolder") => self.folder_ops(&lib.root.clone(), &tail[1..]),
                    None => self.ok("SP.List", &format!("{}/_api/Web/Lists(guid'{}')", self.site_url, lib.list_id), json!({"Id": lib.list_id, "Title": lib.title, "BaseTemplate": 101, "ItemCount": 0})),
                    _ => self.bad_arg("Only lists/GetByTitle('…')/RootFolder is supported."),
                }
            }
            "folders" => {
                // web/folders/add('/sites/x/lib/folder')
                match after.first() {
                    Some(s) if s.is("add") || s.is("addusingpath") => {
                        let raw = s
                            .named("decodedurl")
                            .or_else(|| s.arg("url"))
                            .unwrap_or_default()
                            .to_string();
                        match self.resolve(&raw) {
                            Ok(p) => self.add_folder(&p),
                            Err(e) => e,
                        }
                    }
                    _ => self.bad_arg("Only web/folders/add is supported."),
                }
            }
            _ => self.err(
                StatusCode::NOT_FOUND,
                "-1, Microsoft.SharePoint.Client.InvalidClientQueryException",
                &format!("The expression \"{api}\" is not valid."),
            ),
        }
    }

    fn web(&self) -> Response {
        self.ok(
            "SP.Web",
            &format!("{}/_api/Web", self.site_url),
            json!({
                "Id": self.site.web_id,
                "Title": self.site.name,
                "ServerRelativeUrl": self.site.server_relative_url,
                "Url": self.site_url,
                "WebTemplate": "STS",
                "Language": 1033,
            }),
        )
    }

    fn context_info(&self) -> Response {
        let digest = format!(
            "0x{},{}",
            hex::encode_upper(uuid::Uuid::new_v4().as_bytes()),
            sp_time(now()).replace(['-', ':', 'T', 'Z'], "")
        );
        let body = json!({
            "FormDigestTimeoutSeconds": 1800,
            "FormDigestValue": digest,
            "LibraryVersion": "16.0.24810.12003",
            "SiteFullUrl": self.site_url,
            "SupportedSchemaVersions": ["14.0.0.0", "15.0.0.0"],
            "WebFullUrl": self.site_url,
        });
        if self.verbose {
            let mut b = body.clone();
            b["__metadata"] = json!({"type": "SP.ContextWebInformation"});
            json(
                StatusCode::OK,
                &json!({"d": {"GetContextWebInformation": b}}),
            )
        } else {
            json(StatusCode::OK, &body)
        }
    }

    fn need_write(&self) -> Option<Response> {
        (!self.caller.can_write).then(|| access_denied(self.verbose))
    }

    fn folder_json(&self, n: &Node, db: &Db) -> Value {
        json!({
            "Exists": true,
            "IsWOPIEnabled": false,
            "ItemCount": db.children(&n.path).len(),
            "Name": n.name(),
            "ProgID": null,
            "ServerRelativeUrl": n.path,
            "TimeCreated": sp_time(n.created),
            "TimeLastModified": sp_time(n.modified),
            "UniqueId": n.unique_id,
            "WelcomePage": "",
        })
    }

    fn folder_ops(&self, path: &str, after: &[Seg]) -> Response {
        let m = self.method();
        let folder_uri = format!(
            "{}/_api/Web/GetFolderByServerRelativePath(decodedurl='{}')",
            self.site_url,
            path.replace('\'', "''")
        );
        {
            let db = self.st.db();
            match db.get(path) {
                Some(n) if n.is_folder() => {}
                _ => return self.folder_not_found(),
            }
        }
        match after {
            [] => {
                let db = self.st.db();
                let Some(n) = db.get(path) else {
                    return self.folder_not_found();
                };
                self.ok("SP.Folder", &folder_uri, self.folder_json(n, &db))
            }
            [files] if files.is("files") && m == Method::GET => {
                let db = self.st.db();
                let list: Vec<Value> = db
                    .children(path)
                    .into_iter()
                    .filter(|n| !n.is_folder())
                    .map(|n| self.file_json(n))
                    .collect();
                self.list(list)
            }
            [folders] if folders.is("folders") && m == Method::GET => {
                let db = self.st.db();
                let list: Vec<Value> = db
                    .children(path)
                    .into_iter()
                    .filter(|n| n.is_folder())
                    .map(|n| self.folder_json(n, &db))
                    .collect();
                self.list(list)
            }
            [files, add] if files.is("files") && (add.is("add") || add.is("addusingpath")) => {
                if m != Method::POST {
                    return self.bad_arg("Files/add requires POST.");
                }
                if let Some(resp) = self.need_write() {
                    return resp;
                }
                let name = add
                    .named("decodedurl")
                    .or_else(|| add.named("url"))
                    .or_else(|| add.arg("url"))
                    .unwrap_or_default()
                    .to_string();
                let overwrite = truthy(add.named("overwrite"));
                let target = if name.contains('/') {
                    match self.resolve(&name) {
                        Ok(p) => p,
                        Err(e) => return e,
                    }
                } else {
                    format!("{path}/{name}")
                };
                self.add_file(&target, overwrite)
            }
            [folders, add]
                if folders.is("folders") && (add.is("add") || add.is("addusingpath")) =>
            {
                if m != Method::POST {
                    return self.bad_arg("Folders/add requires POST.");
                }
                let name = add
                    .named("decodedurl")
                    .or_else(|| add.arg("url"))
                    .unwrap_or_default()
                    .to_string();
                let target = if name.starts_with('/') {
                    match self.resolve(&name) {
                        Ok(p) => p,
                        Err(e) => return e,
                    }
                } else {
                    format!("{path}/{}", name.trim_end_matches('/'))
                };
                self.add_folder(&target)
            }
            _ => self.bad_arg("This folder operation is not supported by the emulator."),
        }
    }

    fn list(&self, items: Vec<Value>) -> Response {
        if self.verbose {
            json(StatusCode::OK, &json!({"d": {"results": items}}))
        } else {
            json(StatusCode::OK, &json!({"value": items}))
        }
    }

    fn check_name(&self, path: &str) -> Option<Response> {
        let name = path.rsplit('/').next().unwrap_or_default();
        if name.is_empty()
            || name.contains(BAD_CHARS)
            || name.ends_with('.')
            || name.starts_with(' ')
        {
            return Some(self.bad_arg(&format!(
                "The file or folder name '{name}' contains characters that are not permitted."
            )));
        }
        None
    }

    fn add_folder(&self, path: &str) -> Response {
        if let Some(resp) = self.need_write() {
            return resp;
        }
        if let Some(resp) = self.check_name(path) {
            return resp;
        }
        let mut db = self.st.db();
        if db.library_of(path).is_none() {
            return self.folder_not_found();
        }
        if let Some(parent) = path.rsplit_once('/').map(|(p, _)| p)
            && db.get(parent).is_none()
        {
            return self.folder_not_found();
        }
        if let Some(existing) = db.get(path)
            && !existing.is_folder()
        {
            return self.err(
                StatusCode::BAD_REQUEST,
                "-2130575257, Microsoft.SharePoint.SPException",
                &format!(
                    "A file with the name {} already exists.",
                    self.web_relative(path)
                ),
            );
        }
        db.insert_folder(path, &self.caller.name);
        let uri = format!(
            "{}/_api/Web/GetFolderByServerRelativePath(decodedurl='{}')",
            self.site_url,
            path.replace('\'', "''")
        );
        let Some(n) = db.get(path) else {
            return self.folder_not_found();
        };
        self.ok("SP.Folder", &uri, self.folder_json(n, &db))
    }

    fn web_relative(&self, path: &str) -> String {
        path.strip_prefix(&self.site.server_relative_url)
            .unwrap_or(path)
            .trim_start_matches('/')
            .to_string()
    }

    fn add_file(&self, path: &str, overwrite: bool) -> Response {
        if let Some(resp) = self.check_name(path) {
            return resp;
        }
        let mut db = self.st.db();
        let Some((parent, _)) = path.rsplit_once('/') else {
            return self.folder_not_found();
        };
        if !db.get(parent).map(|n| n.is_folder()).unwrap_or(false) {
            return self.folder_not_found();
        }
        if let Some(existing) = db.get(path) {
            if existing.is_folder() || !overwrite {
                let by = existing.created_by.clone();
                let when = existing.modified;
                let stamp = format!(
                    "{:02} {} {} {:02}:{:02}:{:02} +0000",
                    when.day(),
                    month_abbr(when.month()),
                    when.year(),
                    when.hour(),
                    when.minute(),
                    when.second()
                );
                return self.err(
                    StatusCode::BAD_REQUEST,
                    "-2130575257, Microsoft.SharePoint.SPException",
                    &format!("A file with the name {} already exists. It was last modified by {by} on {stamp}.", self.web_relative(path)),
                );
            }
        }
        let n = db
            .write_file(path, self.r.body.clone(), &self.caller.name, false)
            .clone();
        drop(db);
        self.persist(&n);
        self.file_response(&n)
    }

    fn persist(&self, n: &Node) {
        self.st.persist(n);
    }

    fn file_uri(&self, n: &Node) -> String {
        format!(
            "{}/_api/Web/GetFileByServerRelativePath(decodedurl='{}')",
            self.site_url,
            n.path.replace('\'', "''")
        )
    }

    fn file_json(&self, n: &Node) -> Value {
        let link = format!(
            "{}{}?d=w{}",
            self.st.cfg.base,
            n.path,
            n.unique_id.replace('-', "")
        );
        let major = n.major();
        json!({
            "CheckInComment": "",
            "CheckOutType": 2,
            "ContentTag": format!("{{{}}},{},{}", n.unique_id.to_uppercase(), n.etag_version, n.etag_version),
            "CustomizedPageStatus": 0,
            "ETag": n.etag(),
            "Exists": true,
            "ExistsAllowThrowForPolicyFailures": true,
            "IrmEnabled": false,
            "Length": n.size().to_string(),
            "Level": 1,
            "LinkingUri": link,
            "LinkingUrl": link,
            "MajorVersion": major,
            "MinorVersion": 0,
            "Name": n.name(),
            "ServerRelativeUrl": n.path,
            "TimeCreated": sp_time(n.created),
            "TimeLastModified": sp_time(n.modified),
            "Title": n.fields.get("Title").cloned().unwrap_or_else(|| json!("")),
            "UIVersion": major * 512,
            "UIVersionLabel": n.ui_version_label(),
            "UniqueId": n.unique_id,
        })
    }

    fn file_response(&self, n: &Node) -> Response {
        self.ok("SP.File", &self.file_uri(n), self.file_json(n))
    }

    fn file_ops(&self, path: &str, after: &[Seg]) -> Response {
        let m = self.method();
        let node = self.st.db().get(path).cloned();
        let Some(node) = node.filter(|n| !n.is_folder()) else {
            return self.file_not_found(path);
        };
        let Some(op) = after.first() else {
            return match m {
                Method::GET => self.file_response(&node),
                Method::DELETE => {
                    if let Some(resp) = self.need_write() {
                        return resp;
                    }
                    self.st.db().nodes.remove(&Db::key(path));
                    json(StatusCode::OK, &json!({"odata.null": true}))
                }
                _ => self.bad_arg("Unsupported method on a file."),
            };
        };
        let op_name = op.name.to_ascii_lowercase();
        let upload_id = || op.named("uploadid").map(|s| s.to_ascii_lowercase());
        match op_name.as_str() {
            "$value" => match m {
                Method::GET => {
                    let bytes = node
                        .current()
                        .map(|v| v.content.to_vec())
                        .unwrap_or_default();
                    bytes_response(StatusCode::OK, "application/octet-stream", bytes)
                }
                Method::PUT | Method::POST => {
                    if let Some(resp) = self.need_write() {
                        return resp;
                    }
                    let n = self
                        .st
                        .db()
                        .write_file(path, self.r.body.clone(), &self.caller.name, false)
                        .clone();
                    self.persist(&n);
                    let mut r = json(StatusCode::NO_CONTENT, &json!({}));
                    *r.body_mut() = axum::body::Body::empty();
                    r
                }
                _ => self.bad_arg("Unsupported method on $value."),
            },
            "startupload" | "continueupload" | "finishupload" | "cancelupload" => {
                if m != Method::POST {
                    return self.bad_arg("Upload operations require POST.");
                }
                if let Some(resp) = self.need_write() {
                    return resp;
                }
                let Some(id) = upload_id().filter(|id| uuid::Uuid::parse_str(id).is_ok()) else {
                    return self.bad_arg("The uploadId parameter must be a GUID.");
                };
                self.chunk(&op_name, &id, path, op.named("fileoffset"))
            }
            "listitemallfields" => self.list_item(&node, &after[1..], m),
            "versions" => {
                let items: Vec<Value> = match &node.kind {
                    crate::model::NodeKind::File { versions } => versions
                        .iter()
                        .enumerate()
                        .take(versions.len().saturating_sub(1))
                        .map(|(i, v)| json!({"ID": (i as u64 + 1) * 512, "VersionLabel": v.label, "Size": v.content.len().to_string(), "Created": sp_time(v.modified), "IsCurrentVersion": false}))
                        .collect(),
                    _ => vec![],
                };
                self.list(items)
            }
            _ => self.bad_arg(&format!(
                "The file operation '{}' is not supported by the emulator.",
                op.name
            )),
        }
    }

    fn chunk(&self, op: &str, id: &str, path: &str, offset: Option<&str>) -> Response {
        let mut db = self.st.db();
        let body = self.r.body.clone();
        if op == "startupload" {
            if db.sp_uploads.contains_key(id) {
                return self.bad_arg("An upload with this uploadId is already in progress.");
            }
            db.sp_uploads.insert(
                id.to_string(),
                SpUpload {
                    path: path.to_string(),
                    data: {
                        let mut spool =
                            crate::blob::Spool::new(&self.st.cfg.state_dir.join("spool"));
                        if spool.append(&body).is_err() {
                            return self.err(
                                StatusCode::INSUFFICIENT_STORAGE,
                                "-2147024784, System.IO.IOException",
                                "There is not enough space on the disk.",
                            );
                        }
                        spool
                    },
                },
            );
            return self.scalar("StartUpload", json!(body.len().to_string()));
        }
        let Some(session) = db
            .sp_uploads
            .get_mut(id)
            .filter(|s| s.path.eq_ignore_ascii_case(path))
        else {
            return self.bad_arg(&format!(
                "The upload session {id} was not found for this file."
            ));
        };
        if op == "cancelupload" {
            db.sp_uploads.remove(id);
            return if self.verbose {
                json(StatusCode::OK, &json!({"d": {"CancelUpload": null}}))
            } else {
                json(StatusCode::OK, &json!({"odata.null": true}))
            };
        }
        let expected = session.data.len();
        let given = offset.and_then(|o| o.parse::<u64>().ok());
        if given != Some(expected) {
            return self.bad_arg(&format!(
                "The file offset {} does not match the expected offset {expected}.",
                offset.unwrap_or("(missing)")
            ));
        }
        if session.data.append(&body).is_err() {
            return self.err(
                StatusCode::INSUFFICIENT_STORAGE,
                "-2147024784, System.IO.IOException",
                "There is not enough space on the disk.",
            );
        }
        let total = session.data.len();
        if op == "continueupload" {
            return self.scalar("ContinueUpload", json!(total.to_string()));
        }
        let Some(session) = db.sp_uploads.remove(id) else {
            return self.bad_arg("The upload session vanished.");
        };
        // Filling the empty placeholder a chunked upload starts with keeps its version (as SPO
        // answers: 1.0 after Files/add of an empty file + FinishUpload); otherwise a new version.
        let same = db.get(path).map(|n| n.size() == 0 && matches!(&n.kind, crate::model::NodeKind::File { versions } if versions.len() == 1)).unwrap_or(false);
        let n = db
            .write_file(path, session.data.finish(), &self.caller.name, same)
            .clone();
        drop(db);
        self.persist(&n);
        self.file_response(&n)
    }

    fn item_json(&self, n: &Node) -> Value {
        let mut v = json!({
            "FileSystemObjectType": 0,
            "Id": n.list_item_id,
            "ServerRedirectedEmbedUri": null,
            "ServerRedirectedEmbedUrl": "",
            "ContentTypeId": "0x0101002A2479FF33DD4BC3B1533A012B653717",
            "Title": null,
            "ComplianceAssetId": null,
            "ID": n.list_item_id,
            "Modified": sp_time(n.modified),
            "Created": sp_time(n.created),
            "AuthorId": 6,
            "EditorId": 6,
            "OData__UIVersionString": n.ui_version_label(),
            "Attachments": false,
            "GUID": n.unique_id,
        });
        for (k, val) in &n.fields {
            v[k] = val.clone();
        }
        v
    }

    fn list_item(&self, node: &Node, after: &[Seg], m: Method) -> Response {
        let uri = format!(
            "{}/_api/Web/Lists(guid'{}')/Items({})",
            self.site_url,
            self.st
                .db()
                .library_of(&node.path)
                .map(|(_, l)| l.list_id.clone())
                .unwrap_or_default(),
            node.list_item_id
        );
        match (after.first(), m.as_str()) {
            (None, "GET") => self.ok(
                "SP.Data.Shared_x0020_DocumentsItem",
                &uri,
                self.item_json(node),
            ),
            (None, "MERGE" | "PATCH" | "PUT" | "POST") => {
                if let Some(resp) = self.need_write() {
                    return resp;
                }
                let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&self.r.body) else {
                    return self.bad_arg("The request body must be a JSON object of field values.");
                };
                let mut db = self.st.db();
                let Some(n) = db.get_mut(&node.path) else {
                    return self.file_not_found(&node.path);
                };
                for (k, v) in body {
                    if k != "__metadata" && !k.starts_with("odata.") {
                        n.fields.insert(k, v);
                    }
                }
                bump_version(n);
                let mut r = Response::new(axum::body::Body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            (Some(op), "POST") if op.is("validateupdatelistitem") => {
                if let Some(resp) = self.need_write() {
                    return resp;
                }
                let Ok(body) = serde_json::from_slice::<Value>(&self.r.body) else {
                    return self.bad_arg("The request body must be JSON with formValues.");
                };
                let Some(values) = body.get("formValues").and_then(Value::as_array) else {
                    return self.bad_arg("The parameter formValues is missing.");
                };
                let new_doc = body
                    .get("bNewDocumentUpdate")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let mut db = self.st.db();
                let Some(n) = db.get_mut(&node.path) else {
                    return self.file_not_found(&node.path);
                };
                let mut results = vec![];
                for fv in values {
                    let name = fv
                        .get("FieldName")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let value = fv.get("FieldValue").cloned().unwrap_or(Value::Null);
                    if name.is_empty() {
                        continue;
                    }
                    n.fields.insert(name.clone(), value.clone());
                    results.push(json!({"ErrorCode": 0, "ErrorMessage": null, "FieldName": name, "FieldValue": value, "HasException": false, "ItemId": n.list_item_id}));
                }
                if new_doc {
                    n.modified = now();
                    n.etag_version += 1;
                } else {
                    bump_version(n);
                }
                if self.verbose {
                    json(
                        StatusCode::OK,
                        &json!({"d": {"ValidateUpdateListItem": {"__metadata": {"type": "Collection(SP.ListItemFormUpdateValue)"}, "results": results}}}),
                    )
                } else {
                    json(StatusCode::OK, &json!({"value": results}))
                }
            }
            _ => self.bad_arg("This list item operation is not supported by the emulator."),
        }
    }
}

/// A metadata update without bNewDocumentUpdate makes a new major version of the same bytes.
fn bump_version(n: &mut Node) {
    let t = now();
    if let crate::model::NodeKind::File { versions } = &mut n.kind
        && let Some(last) = versions.last().cloned()
    {
        let major: u64 = last
            .label
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(1);
        versions.push(crate::model::Version {
            label: format!("{}.0", major + 1),
            content: last.content,
            modified: t,
        });
    }
    n.modified = t;
    n.etag_version += 1;
}

fn month_abbr(m: time::Month) -> &'static str {
    use time::Month::*;
    match m {
        January => "Jan",
        February => "Feb",
        March => "Mar",
        April => "Apr",
        May => "May",
        June => "Jun",
        July => "Jul",
        August => "Aug",
        September => "Sep",
        October => "Oct",
        November => "Nov",
        December => "Dec",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Req {
        Req {
            method: Method::GET,
            path: String::new(),
            query: vec![("@a1".into(), "'/sites/team/x'".into())],
            headers: Default::default(),
            body: Default::default(),
        }
    }

    #[test]
    fn parses_segments_with_quotes_and_aliases() {
        let segs = parse_segments(
            "web/GetFolderByServerRelativeUrl('/sites/team/it''s (1)/a')/Files/add(url='b.txt',overwrite=true)",
            &req(),
        )
        .unwrap_or_default();
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[1].arg("x"), Some("/sites/team/it's (1)/a"));
        assert_eq!(segs[3].named("url"), Some("b.txt"));
        assert_eq!(segs[3].named("overwrite"), Some("true"));
        let segs = parse_segments("web/GetFileByServerRelativePath(decodedurl=@a1)/StartUpload(uploadId=guid'0b6a4f1e-0000-4000-8000-000000000001')", &req()).unwrap_or_default();
        assert_eq!(segs[1].named("decodedurl"), Some("/sites/team/x"));
        assert_eq!(
            segs[2].named("uploadid"),
            Some("0b6a4f1e-0000-4000-8000-000000000001")
        );
        assert!(parse_segments("web/GetFolderByServerRelativeUrl('x", &req()).is_err());
    }
}
