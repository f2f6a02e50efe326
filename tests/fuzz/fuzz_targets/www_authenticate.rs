//! Fuzz target: see `checks/www_authenticate.rs` for what it checks.
#![no_main]

#[path = "../checks/www_authenticate.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
