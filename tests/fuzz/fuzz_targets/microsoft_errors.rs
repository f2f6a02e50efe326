//! Fuzz target: see `checks/microsoft_errors.rs` for what it checks.
#![no_main]

#[path = "../checks/microsoft_errors.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
