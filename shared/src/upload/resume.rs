//! Uploads that outlive one process: the session state a caller saves between chunks, and the
//! answers of a resumable upload ([`Resumed`]).
//!
//! The clients' `upload_resumable` take a [`Resume`] (where the file stands, a hook that saves
//! it, and when to stop). Between chunks they save the state; when the stop time has come they
//! answer [`Resumed::Paused`] with the session still open, so another process can continue
//! it from the saved offset with a source opened there (HTTP `Range`).

use std::fmt;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use url::Url;
use uuid::Uuid;

use super::{ConflictOutcome, UploadError, UploadOutcome};

/// A Graph upload session's `uploadUrl`: a capability (whoever has it may write the file), so
/// `Debug` is redacted and it is exposed only to send a request.
#[derive(Clone)]
pub struct SessionUrl(SecretString);

impl SessionUrl {
    /// Wraps an `uploadUrl`.
    pub fn new(url: &Url) -> Self {
        SessionUrl(SecretString::from(url.as_str().to_owned()))
    }

    /// The URL, for the request only.
    pub fn expose(&self) -> Result<Url, UploadError> {
        Url::parse(self.0.expose_secret())
            .map_err(|_| UploadError::BadInput("the saved upload session URL is not a URL".into()))
    }
}

impl PartialEq for SessionUrl {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

impl Eq for SessionUrl {}

impl fmt::Debug for SessionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionUrl([redacted])")
    }
}

impl Serialize for SessionUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose_secret())
    }
}

impl<'de> Deserialize<'de> for SessionUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(SessionUrl(SecretString::from(s)))
    }
}

/// How a name conflict was resolved, as saved (the file was created before the first chunk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SavedOutcome {
    /// No file of that name existed.
    Created,
    /// An existing file is being overwritten.
    Replaced,
    /// The file got another name.
    Renamed {
        /// The name asked for.
        from: String,
    },
}

impl From<&ConflictOutcome> for SavedOutcome {
    fn from(o: &ConflictOutcome) -> Self {
        match o {
            ConflictOutcome::Created => SavedOutcome::Created,
            ConflictOutcome::Replaced => SavedOutcome::Replaced,
            ConflictOutcome::Renamed { from } => SavedOutcome::Renamed { from: from.clone() },
        }
    }
}

impl From<&SavedOutcome> for ConflictOutcome {
    fn from(o: &SavedOutcome) -> Self {
        match o {
            SavedOutcome::Created => ConflictOutcome::Created,
            SavedOutcome::Replaced => ConflictOutcome::Replaced,
            SavedOutcome::Renamed { from } => ConflictOutcome::Renamed { from: from.clone() },
        }
    }
}

/// An open upload session in the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum Session {
    /// SharePoint REST: `StartUpload`/`ContinueUpload`/`FinishUpload` on a placeholder file.
    Sharepoint {
        /// The chunked upload's id.
        upload_id: Uuid,
        /// The file's server-relative path (after any rename).
        path: String,
        /// Whether the placeholder is ours (deleted if the upload fails for good).
        created: bool,
        /// How the name conflict was resolved.
        outcome: SavedOutcome,
    },
    /// Graph: an upload session.
    Graph {
        /// The session's `uploadUrl` (never logged, never shown in status).
        url: SessionUrl,
        /// `expirationDateTime` as Unix seconds, when Graph said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
        /// The name the file gets, when a `rename` conflict chose another one before the
        /// session was created (so a retry knows where the file lands).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

/// Saved just before the final chunk is sent: what the file at the session's path must look
/// like afterwards for a retry to know that the final chunk landed (the worker may die between
/// the target storing the file and the job recording it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finishing {
    /// The file's length once complete.
    pub size: u64,
    /// The `ETag` of what stood at the path before the final chunk (SharePoint: our
    /// placeholder; Graph: a file being replaced), if anything did. The final chunk changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag_before: Option<String>,
    /// SharePoint: the placeholder's `UniqueId`, which the finished file keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_id: Option<String>,
}

/// Saved just before the one request that stores a file no larger than a chunk (no session,
/// so no [`Finishing`]): where that request writes, so a retry that meets a file there can
/// tell whether it is the one the request made (the worker may die between the target storing
/// the file and the job recording it). Not saved for `replace`, whose repeat rewrites the same
/// bytes in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Single {
    /// The name the request writes in the folder, after any rename.
    pub name: String,
    /// The file's length.
    pub size: u64,
    /// When this was saved (Unix seconds): a file created well before it stood there already
    /// and is not ours, whatever its bytes.
    pub saved_at: i64,
}

/// How far the target's clock may run behind ours when [`Single::saved_at`] is compared with
/// a file's creation time (both are NTP-synchronised; SharePoint REST gives whole seconds).
pub const CLOCK_SKEW_SECS: i64 = 60;

impl Single {
    /// The record for a request about to store `size` bytes as `name`, saved now.
    pub fn new(name: &str, size: u64) -> Self {
        Single {
            name: name.to_owned(),
            size,
            saved_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        }
    }

    /// Whether a file of `size` bytes created at `created` (RFC 3339, as Graph and SharePoint
    /// give it) may be the one this record's request made: the same length, created no earlier
    /// than the record less [`CLOCK_SKEW_SECS`]. A missing or unreadable time is not ours. The
    /// caller still compares the bytes.
    pub fn may_be(&self, size: u64, created: Option<&str>) -> bool {
        let Some(created) = created else {
            return false;
        };
        size == self.size
            && time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
                .is_ok_and(|t| t.unix_timestamp() >= self.saved_at - CLOCK_SKEW_SECS)
    }
}

/// Where one file's resumable upload stands: what a checkpoint saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeState {
    /// The open session, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    /// Bytes the target holds: the next chunk starts here, and so does the source's `Range`.
    pub offset: u64,
    /// The file's whole length, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Set once the final chunk is about to be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finishing: Option<Finishing>,
    /// Set just before the one request of a file no larger than a chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single: Option<Single>,
}

impl ResumeState {
    /// A file not started.
    pub fn fresh() -> Self {
        ResumeState {
            session: None,
            offset: 0,
            total: None,
            finishing: None,
            single: None,
        }
    }
}

/// Saves the state between chunks (under the job's lease). An error stops the upload; the
/// session stays open for whoever holds the saved state.
pub type SaveHook<'a> =
    &'a (dyn Fn(ResumeState) -> BoxFuture<'static, Result<(), UploadError>> + Send + Sync);

/// A resumable upload's inputs besides the source.
pub struct Resume<'a> {
    /// Where the file stands; the source must start at `state.offset`.
    pub state: ResumeState,
    /// Called after each chunk the target confirmed.
    pub save: SaveHook<'a>,
    /// No chunk starts after this; the upload answers [`Resumed::Paused`].
    pub stop_at: Option<Instant>,
}

/// How a resumable upload ended.
#[derive(Debug)]
pub enum Resumed {
    /// The file is complete.
    Done(UploadOutcome),
    /// Stopped between chunks at `stop_at`; continue from this state.
    Paused(ResumeState),
    /// The session is gone (an expired Graph session): start the file again from byte 0 with
    /// this state (no session, or SharePoint's placeholder kept); the text says why.
    Restart(ResumeState, String),
}

/// Test switch (feature `test-hooks`, never in a deployed function): exits the process at
/// `point` when `SPBRIDGE_TEST_EXIT_AT` names it, as a worker dying there would.
/// Points: `before_final_chunk` (its checkpoint saved), `before_single` (a one-request
/// upload's [`Single`] saved, its request not sent), `after_store` (before the job records
/// the file).
#[cfg(feature = "test-hooks")]
pub fn exit_at(point: &str) {
    if std::env::var("SPBRIDGE_TEST_EXIT_AT").is_ok_and(|v| v == point) {
        std::process::exit(86);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_urls_are_redacted_but_saved() {
        let url = Url::parse("https://up.example/up/abc?tempauth=SECRET").unwrap();
        let state = ResumeState {
            session: Some(Session::Graph {
                url: SessionUrl::new(&url),
                expires_at: Some(5),
                name: None,
            }),
            offset: 10,
            total: Some(20),
            finishing: Some(Finishing {
                size: 20,
                etag_before: Some("\"{A},1\"".into()),
                unique_id: None,
            }),
            single: Some(Single::new("a.pdf", 20)),
        };
        assert!(!format!("{state:?}").contains("SECRET"));
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.contains("tempauth=SECRET"));
        let back: ResumeState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        let Some(Session::Graph { url: u, .. }) = back.session else {
            panic!("graph session")
        };
        assert_eq!(u.expose().unwrap(), url);
    }

    #[test]
    fn a_single_record_takes_only_a_file_of_its_size_made_after_it() {
        let s = Single {
            name: "a.pdf".into(),
            size: 20,
            saved_at: time::macros::datetime!(2026-12-01 07:00:00 UTC).unix_timestamp(),
        };
        assert!(s.may_be(20, Some("2026-12-01T07:00:03Z")));
        assert!(
            s.may_be(20, Some("2026-12-01T06:59:30.123Z")),
            "within the skew"
        );
        assert!(
            !s.may_be(20, Some("2026-12-01T06:58:59Z")),
            "stood there before"
        );
        assert!(
            !s.may_be(21, Some("2026-12-01T07:00:03Z")),
            "another length"
        );
        assert!(!s.may_be(20, None));
        assert!(!s.may_be(20, Some("yesterday")));
    }
}
