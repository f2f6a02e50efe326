//! Fuzz target: see `checks/jwt.rs` for what it checks.
#![no_main]

#[path = "../checks/jwt.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
