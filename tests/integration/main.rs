//! Integration tests, one binary made of modules.

mod events;
mod ingest;
mod lifecycle;
mod secrets;
mod signin;
mod upload_clients;
