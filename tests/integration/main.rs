//! Integration tests, one binary made of modules.

mod deliveries;
mod events;
mod ingest;
mod isolation;
mod jobs;
mod lifecycle;
mod secrets;
mod signin;
mod template;
mod template_iam;
mod token_writes;
mod upload_clients;
