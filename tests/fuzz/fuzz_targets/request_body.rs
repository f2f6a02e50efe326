//! Fuzz target: see `checks/request_body.rs` for what it checks.
#![no_main]

#[path = "../checks/request_body.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
