//! Request-side building blocks of upload ingest: file and folder name rules and request bodies.

pub mod names;
