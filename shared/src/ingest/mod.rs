//! Request-side building blocks of upload ingest: SharePoint name and path rules ([`names`]),
//! request body parsing ([`body`]) and the error every refusal maps through ([`IngestError`]).
//!
//! Who may send to a connection is [`sender::Sender`] (the connection's sender secret over the
//! signature checks in [`crate::webhook`]); a [`crate::webhook::WebhookError`] converts into
//! [`IngestError::Unauthorized`], and every refusal answers as a [`crate::api::ApiError`].

pub mod body;
mod error;
pub mod idempotency;
pub mod names;
pub mod pipeline;
pub mod sender;

pub use body::{ConflictMode, Content, IncomingFile, Limits, RawRequest, parse_request};
pub use error::IngestError;
pub use names::{FileName, NameError, NamePolicy, SubPath, server_relative_path};
