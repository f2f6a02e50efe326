//! Integration tests, one binary made of modules.

mod events;
mod ingest;
mod jobs;
mod lifecycle;
mod secrets;
mod upload_clients;
