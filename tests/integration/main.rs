//! Integration tests, one binary made of modules.

mod events;
mod lifecycle;
mod secrets;
mod upload_clients;
