//! Integration tests, one binary made of modules.

mod attacks;
mod events;
mod ingest;
mod isolation;
mod jobs;
mod layering;
mod lifecycle;
mod secrets;
mod signin;
mod template;
mod upload_clients;
