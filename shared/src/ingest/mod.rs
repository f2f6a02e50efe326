//! Request-side building blocks of upload ingest: SharePoint name and path rules ([`names`]),
//! request body parsing ([`body`]) and the error every refusal maps through ([`IngestError`]).
//!
//! Who may send to a connection is [`sender::Sender`] (the connection's sender secret over the
//! signature checks in [`crate::webhook`]); a [`crate::webhook::WebhookError`] converts into
//! [`IngestError::Unauthorized`], and every refusal answers as a [`crate::api::ApiError`].
//!
//! [`pipeline`] takes uploads whose bytes come with the request (or by `source_url`);
//! [`sessions`] hands websites presigned S3 URLs for files of any size and queues them the same way.

pub mod body;
mod error;
pub mod names;
pub mod pipeline;
pub mod sender;
pub mod sessions;

pub use body::{ConflictMode, Content, IncomingFile, Limits, RawRequest, parse_request};
pub use error::IngestError;
pub use names::{FileName, NameError, NamePolicy, SubPath, server_relative_path};
