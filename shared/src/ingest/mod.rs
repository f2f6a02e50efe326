//! Request-side building blocks of upload ingest: SharePoint name and path rules ([`names`]),
//! request body parsing ([`body`]) and the error every refusal maps through ([`IngestError`]).
//!
//! Sender authentication lives in [`crate::webhook`]; a [`crate::webhook::WebhookError`] converts
//! into [`IngestError::Unauthorized`] so the function answers every refusal in one place:
//! `status()` for the HTTP status, `to_json()` for the `{error, message}` body.

pub mod body;
mod error;
pub mod idempotency;
pub mod names;
pub mod pipeline;

pub use body::{
    ConflictMode, Content, IncomingFile, Limits, RawRequest, decode_gateway_body, parse_request,
};
pub use error::IngestError;
pub use names::{FileName, NameError, NamePolicy, SubPath, server_relative_path};
