//! Integration tests, one binary made of modules.
mod secrets;
