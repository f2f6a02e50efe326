//! Integration tests, one binary made of modules.

mod events;
mod secrets;
mod upload_clients;
