//! The tenant model: sites, libraries, drives, apps, users, stored files, grants and sessions.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use time::OffsetDateTime;

use crate::util::{new_guid, new_secret, now};

/// SharePoint's well-known principal id.
pub const SHAREPOINT_PRINCIPAL: &str = "00000003-0000-0ff1-ce00-000000000000";
/// ACS's own principal id (issuer of ACS tokens).
pub const ACS_PRINCIPAL: &str = "00000001-0000-0000-c000-000000000000";
/// Microsoft Graph's app id.
pub const GRAPH_PRINCIPAL: &str = "00000003-0000-0000-c000-000000000000";

#[derive(Clone, Debug)]
pub struct Library {
    pub title: String,
    /// Server-relative URL of the root folder, e.g. `/sites/team/Shared Documents`.
    pub root: String,
    pub list_id: String,
    pub drive_id: String,
}

#[derive(Clone, Debug)]
pub struct Site {
    pub name: String,
    /// `/sites/team` or `/personal/alex_contoso_onmicrosoft_com`.
    pub server_relative_url: String,
    pub site_id: String,
    pub web_id: String,
    pub libraries: Vec<Library>,
    pub personal: bool,
}

/// Rights an ACS app-only policy grants on a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Right {
    /// Read only: writes answer 403 access denied.
    Read,
    /// Read and write.
    Write,
    /// Everything.
    FullControl,
}

#[derive(Clone)]
pub struct AcsApp {
    pub name: String,
    pub client_id: String,
    pub secret: String,
    pub redirect_uri: String,
    /// Site server-relative URL → right (app-only policy).
    pub app_only: BTreeMap<String, Right>,
}

#[derive(Clone)]
pub struct EntraApp {
    pub name: String,
    pub client_id: String,
    pub secret: Option<String>,
    /// PEM of the registered certificate and its key (the key is handed to clients).
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    pub thumbprint_sha1: Option<Vec<u8>>,
    pub thumbprint_sha256: Option<Vec<u8>>,
    pub cert_public_der: Option<Vec<u8>>,
    pub roles: Vec<String>,
    /// Sites granted through Sites.Selected (server-relative URLs).
    pub selected_sites: Vec<String>,
    pub redirect_uri: String,
    pub public_client: bool,
}

#[derive(Clone, Debug)]
pub struct User {
    pub upn: String,
    pub oid: String,
    pub name: String,
    pub puid: String,
}

#[derive(Clone, Debug)]
pub struct Version {
    pub label: String,
    pub content: crate::blob::Content,
    pub modified: OffsetDateTime,
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    Folder,
    File { versions: Vec<Version> },
}

#[derive(Clone, Debug)]
pub struct Node {
    /// Server-relative path in its stored case.
    pub path: String,
    pub unique_id: String,
    pub item_id: String,
    pub list_item_id: u64,
    pub created: OffsetDateTime,
    pub modified: OffsetDateTime,
    pub kind: NodeKind,
    /// Bumped on every change (ETag / cTag number).
    pub etag_version: u64,
    /// List item fields set through ListItemAllFields / ValidateUpdateListItem.
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub created_by: String,
}

impl Node {
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
    pub fn parent(&self) -> &str {
        self.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
    }
    pub fn is_folder(&self) -> bool {
        matches!(self.kind, NodeKind::Folder)
    }
    pub fn current(&self) -> Option<&Version> {
        match &self.kind {
            NodeKind::File { versions } => versions.last(),
            NodeKind::Folder => None,
        }
    }
    pub fn size(&self) -> u64 {
        self.current().map(|v| v.content.len() as u64).unwrap_or(0)
    }
    pub fn ui_version_label(&self) -> String {
        self.current()
            .map(|v| v.label.clone())
            .unwrap_or_else(|| "1.0".into())
    }
    pub fn major(&self) -> u64 {
        self.ui_version_label()
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(1)
    }
    pub fn etag(&self) -> String {
        format!(
            "\"{{{}}},{}\"",
            self.unique_id.to_uppercase(),
            self.etag_version
        )
    }
}

pub struct AuthCode {
    pub kind: GrantKind,
    pub client_id: String,
    pub redirect_uri: String,
    pub challenge: Option<(String, String)>,
    pub nonce: Option<String>,
    pub scope: String,
    pub resource: String,
    pub user_oid: String,
    pub expires: i64,
    pub used: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    Acs,
    AadV1,
    AadV2,
    Live,
}

/// Why a refresh token stopped working (set through the test hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshState {
    Active,
    Expired,
    Inactive,
    Revoked,
    Rotated,
}

pub struct RefreshToken {
    pub kind: GrantKind,
    pub client_id: String,
    pub scope: String,
    pub resource: String,
    pub user_oid: String,
    pub issued: i64,
    pub expires: i64,
    pub last_used: i64,
    pub state: RefreshState,
}

pub struct LiveAccess {
    pub expires: i64,
}

pub struct SpUpload {
    pub path: String,
    pub data: crate::blob::Spool,
}

pub struct GraphUpload {
    pub drive_id: String,
    /// Target server-relative path.
    pub path: String,
    pub conflict: String,
    pub data: crate::blob::Spool,
    pub total: Option<u64>,
    pub expires: OffsetDateTime,
    pub declared_size: Option<u64>,
}

pub struct Db {
    pub sites: Vec<Site>,
    pub acs_apps: Vec<AcsApp>,
    pub entra_apps: Vec<EntraApp>,
    pub users: Vec<User>,
    /// Lower-cased server-relative path → node (SharePoint names are case-insensitive).
    pub nodes: BTreeMap<String, Node>,
    pub codes: HashMap<String, AuthCode>,
    /// Every authorization code handed out, redeemed or not (for the test suite's log scan).
    pub issued_codes: Vec<String>,
    pub refresh: HashMap<String, RefreshToken>,
    pub live_tokens: HashMap<String, LiveAccess>,
    pub used_jti: HashSet<String>,
    pub sp_uploads: HashMap<String, SpUpload>,
    pub graph_uploads: HashMap<String, GraphUpload>,
    /// Test fault: the next Graph session to hold this many bytes expires right after.
    pub graph_expire_at: Option<u64>,
    pub next_item_id: u64,
    /// Consent withdrawn: client ids whose delegated grants answer AADSTS65001.
    pub consent_revoked: HashSet<String>,
}

fn drive_id() -> String {
    let mut raw = uuid::Uuid::new_v4().as_bytes().to_vec();
    raw.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!("b!{}", crate::util::b64url(&raw))
}

/// Graph item ids look like `01AH65SIN6Y2GOVW7725BZO354PWSELRRZ`.
pub fn graph_item_id() -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    // 20 random bytes → 32 base32 characters, as real ids have.
    let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
    bytes.extend_from_slice(&uuid::Uuid::new_v4().as_bytes()[..4]);
    let mut out = String::from("01");
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in &bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHA[((acc >> bits) & 31) as usize] as char);
        }
    }
    out.truncate(34);
    out
}

fn library(title: &str, root: &str) -> Library {
    Library {
        title: title.into(),
        root: root.into(),
        list_id: new_guid(),
        drive_id: drive_id(),
    }
}

impl Db {
    pub fn seeded(app_cert: &crate::keys::CertInfo) -> Db {
        let sites = vec![
            Site {
                name: "team".into(),
                server_relative_url: "/sites/team".into(),
                site_id: new_guid(),
                web_id: new_guid(),
                libraries: vec![
                    library("Documents", "/sites/team/Shared Documents"),
                    library("Reports", "/sites/team/Reports"),
                ],
                personal: false,
            },
            Site {
                name: "other".into(),
                server_relative_url: "/sites/other".into(),
                site_id: new_guid(),
                web_id: new_guid(),
                libraries: vec![library("Documents", "/sites/other/Shared Documents")],
                personal: false,
            },
            Site {
                name: "alex_contoso_onmicrosoft_com".into(),
                server_relative_url: "/personal/alex_contoso_onmicrosoft_com".into(),
                site_id: new_guid(),
                web_id: new_guid(),
                libraries: vec![library(
                    "Documents",
                    "/personal/alex_contoso_onmicrosoft_com/Documents",
                )],
                personal: true,
            },
        ];
        let acs_apps = vec![AcsApp {
            name: "acs-app".into(),
            client_id: new_guid(),
            secret: new_secret(),
            redirect_uri: "https://localhost/callback".into(),
            app_only: BTreeMap::from([("/sites/team".to_string(), Right::FullControl)]),
        }];
        let entra_apps = vec![
            EntraApp {
                name: "entra-app".into(),
                client_id: new_guid(),
                secret: Some(new_secret()),
                cert_pem: Some(app_cert.cert_pem.clone()),
                key_pem: Some(app_cert.key_pem.clone()),
                thumbprint_sha1: Some(app_cert.sha1.clone()),
                thumbprint_sha256: Some(app_cert.sha256.clone()),
                cert_public_der: Some(app_cert.public_key_der.clone()),
                roles: vec!["Sites.ReadWrite.All".into(), "Files.ReadWrite.All".into()],
                selected_sites: vec![],
                redirect_uri: "https://localhost/callback".into(),
                public_client: false,
            },
            EntraApp {
                name: "selected-app".into(),
                client_id: new_guid(),
                secret: Some(new_secret()),
                cert_pem: Some(app_cert.cert_pem.clone()),
                key_pem: Some(app_cert.key_pem.clone()),
                thumbprint_sha1: Some(app_cert.sha1.clone()),
                thumbprint_sha256: Some(app_cert.sha256.clone()),
                cert_public_der: Some(app_cert.public_key_der.clone()),
                roles: vec!["Sites.Selected".into()],
                selected_sites: vec!["/sites/team".into()],
                redirect_uri: "https://localhost/callback".into(),
                public_client: false,
            },
            EntraApp {
                name: "public-app".into(),
                client_id: new_guid(),
                secret: None,
                cert_pem: None,
                key_pem: None,
                thumbprint_sha1: None,
                thumbprint_sha256: None,
                cert_public_der: None,
                roles: vec![],
                selected_sites: vec![],
                redirect_uri: "http://localhost/callback".into(),
                public_client: true,
            },
        ];
        let users = vec![User {
            upn: "alex@contoso.onmicrosoft.com".into(),
            oid: new_guid(),
            name: "Alex Wilber".into(),
            puid: "10032000840f0c4f".into(),
        }];
        let mut db = Db {
            sites,
            acs_apps,
            entra_apps,
            users,
            nodes: BTreeMap::new(),
            codes: HashMap::new(),
            issued_codes: Vec::new(),
            refresh: HashMap::new(),
            live_tokens: HashMap::new(),
            used_jti: HashSet::new(),
            sp_uploads: HashMap::new(),
            graph_uploads: HashMap::new(),
            graph_expire_at: None,
            next_item_id: 1,
            consent_revoked: HashSet::new(),
        };
        let roots: Vec<String> = db
            .sites
            .iter()
            .flat_map(|s| s.libraries.iter().map(|l| l.root.clone()))
            .collect();
        for root in roots {
            db.insert_folder(&root, "System Account");
        }
        db
    }

    pub fn key(path: &str) -> String {
        path.trim_end_matches('/').to_lowercase()
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&Self::key(path))
    }

    pub fn get_mut(&mut self, path: &str) -> Option<&mut Node> {
        self.nodes.get_mut(&Self::key(path))
    }

    pub fn library_of(&self, path: &str) -> Option<(&Site, &Library)> {
        let lower = path.to_lowercase();
        self.sites.iter().find_map(|s| {
            s.libraries
                .iter()
                .find(|l| {
                    let root = l.root.to_lowercase();
                    lower == root || lower.starts_with(&format!("{root}/"))
                })
                .map(|l| (s, l))
        })
    }

    pub fn library_by_drive(&self, drive_id: &str) -> Option<(&Site, &Library)> {
        self.sites.iter().find_map(|s| {
            s.libraries
                .iter()
                .find(|l| l.drive_id == drive_id)
                .map(|l| (s, l))
        })
    }

    fn new_node(&mut self, path: &str, kind: NodeKind, by: &str) -> Node {
        let id = self.next_item_id;
        self.next_item_id += 1;
        let t = now();
        Node {
            path: path.to_string(),
            unique_id: new_guid(),
            item_id: graph_item_id(),
            list_item_id: id,
            created: t,
            modified: t,
            kind,
            etag_version: 1,
            fields: serde_json::Map::new(),
            created_by: by.to_string(),
        }
    }

    /// Creates a folder (and missing parents inside its library); returns false when it existed.
    pub fn insert_folder(&mut self, path: &str, by: &str) -> bool {
        let path = path.trim_end_matches('/');
        if self.get(path).is_some() {
            return false;
        }
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
            && self.library_of(parent).is_some()
            && self.get(parent).is_none()
        {
            self.insert_folder(parent, by);
        }
        let node = self.new_node(path, NodeKind::Folder, by);
        self.nodes.insert(Self::key(path), node);
        true
    }

    /// Writes a file: a new file gets version 1.0, a replace adds a major version unless
    /// `same_version` (bNewDocumentUpdate-like overwrite of the current version).
    pub fn write_file(
        &mut self,
        path: &str,
        content: impl Into<crate::blob::Content>,
        by: &str,
        same_version: bool,
    ) -> &Node {
        self.write_content(path, content.into(), by, same_version)
    }

    fn write_content(
        &mut self,
        path: &str,
        content: crate::blob::Content,
        by: &str,
        same_version: bool,
    ) -> &Node {
        let key = Self::key(path);
        let t = now();
        if let Some(existing) = self.nodes.get_mut(&key) {
            if let NodeKind::File { versions } = &mut existing.kind {
                if same_version && !versions.is_empty() {
                    if let Some(last) = versions.last_mut() {
                        last.content = content;
                        last.modified = t;
                    }
                } else {
                    let major = versions
                        .last()
                        .and_then(|v| {
                            v.label
                                .split('.')
                                .next()
                                .and_then(|m| m.parse::<u64>().ok())
                        })
                        .unwrap_or(0);
                    versions.push(Version {
                        label: format!("{}.0", major + 1),
                        content,
                        modified: t,
                    });
                }
                existing.modified = t;
                existing.etag_version += 1;
            }
        } else {
            if let Some((parent, _)) = path.rsplit_once('/')
                && self.get(parent).is_none()
            {
                self.insert_folder(parent, by);
            }
            let node = self.new_node(
                path,
                NodeKind::File {
                    versions: vec![Version {
                        label: "1.0".into(),
                        content,
                        modified: t,
                    }],
                },
                by,
            );
            self.nodes.insert(key.clone(), node);
        }
        &self.nodes[&key]
    }

    pub fn children(&self, folder: &str) -> Vec<&Node> {
        let prefix = format!("{}/", Self::key(folder));
        self.nodes
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            .map(|(_, n)| n)
            .collect()
    }

    pub fn acs_app(&self, client_id: &str) -> Option<&AcsApp> {
        self.acs_apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    pub fn entra_app(&self, client_id: &str) -> Option<&EntraApp> {
        self.entra_apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    pub fn user_by_hint(&self, hint: Option<&str>) -> Option<&User> {
        hint.and_then(|h| self.users.iter().find(|u| u.upn.eq_ignore_ascii_case(h)))
            .or_else(|| self.users.first())
    }

    pub fn user(&self, oid: &str) -> Option<&User> {
        self.users.iter().find(|u| u.oid == oid)
    }
}
