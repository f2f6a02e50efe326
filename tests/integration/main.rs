//! Integration tests, one binary made of modules.

mod events;
mod secrets;
