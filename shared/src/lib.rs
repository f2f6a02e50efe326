//! spbridge's shared library.
//!
//! Every Microsoft identity call, every upload and every secret read or write goes through this
//! crate; the Lambda functions in `functions/` only wire it together.

pub mod access;
pub mod api;
pub mod config;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod jobs;
pub mod lambda_event;
pub mod microsoft;
pub mod oauth;
pub mod outage;
pub mod runtime;
pub mod secrets;
pub mod signin;
pub mod telemetry;
pub mod upload;
pub mod webhook;
