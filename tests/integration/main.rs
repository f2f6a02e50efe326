//! Integration tests, one binary made of modules.

mod attacks;
mod deliveries;
mod events;
mod ingest;
mod isolation;
mod jobs;
mod layering;
mod lifecycle;
mod secrets;
mod signin;
mod template;
mod template_iam;
mod token_writes;
mod upload_clients;
