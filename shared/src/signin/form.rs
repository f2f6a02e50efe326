//! The form SharePoint posts to launch an add-in (`POST /callback`).

use super::{Reason, SignInError};
use crate::runtime::Warm;

/// Longest `POST /callback` body read.
pub const MAX_FORM_BODY: usize = 64 * 1024;

/// A parsed `application/x-www-form-urlencoded` launch form.
#[derive(Debug)]
pub struct LaunchForm(Vec<(String, String)>);

impl LaunchForm {
    /// Parses the body; larger than [`MAX_FORM_BODY`] or not a form is bad input.
    pub fn parse(body: &[u8]) -> Result<LaunchForm, SignInError> {
        if body.len() > MAX_FORM_BODY {
            return Err(Reason::TooLarge("the form is larger than 64 KiB".into()).into());
        }
        serde_urlencoded::from_bytes(body)
            .map(LaunchForm)
            .map_err(|_| {
                Reason::BadInput("the body is not an application/x-www-form-urlencoded form".into())
                    .into()
            })
    }

    /// A non-blank field; one given twice is bad input.
    pub fn field(&self, name: &str) -> Result<Option<&str>, SignInError> {
        let mut values = self
            .0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(
                Reason::BadInput(format!("the form field {name} appears more than once")).into(),
            );
        }
        Ok(first.filter(|v| !v.trim().is_empty()))
    }

    /// The context token (`SPAppToken`, `AppContextToken` or `AccessToken`). A token-flow answer
    /// (`access_token`, `state`) is refused as such.
    pub fn context_token(&self) -> Result<&str, SignInError> {
        for name in ["SPAppToken", "AppContextToken", "AccessToken"] {
            if let Some(t) = self.field(name)? {
                return Ok(t);
            }
        }
        if self.field("access_token")?.is_some() || self.field("state")?.is_some() {
            return Err(Reason::TokenFlowRefused.into());
        }
        Err(
            Reason::BadInput("POST /callback expects SharePoint's SPAppToken form field".into())
                .into(),
        )
    }

    /// `SPHostUrl`, else `SPSiteUrl`.
    pub fn host_url(&self) -> Result<Option<&str>, SignInError> {
        match self.field("SPHostUrl")? {
            Some(h) => Ok(Some(h)),
            None => self.field("SPSiteUrl"),
        }
    }
}

/// Hosts an add-in's context token may be addressed to: the allow-list, the request's `Host` and
/// the public base URL's host.
pub fn add_in_hosts(warm: &Warm, host_header: Option<&str>) -> Vec<String> {
    let mut hosts: Vec<String> = warm.lifecycle.allowed_hosts.clone();
    if let Some(h) = host_header {
        hosts.push(h.trim().to_ascii_lowercase());
    }
    if let Some(base) = &warm.config.public_base_url {
        if let Some(h) = base.host_str() {
            hosts.push(match base.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            });
        }
    }
    hosts
}
