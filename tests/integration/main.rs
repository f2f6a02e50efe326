//! Integration tests, one binary made of modules.
mod upload_clients;
