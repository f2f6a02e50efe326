//! Fuzz target: see `checks/names.rs` for what it checks.
#![no_main]

#[path = "../checks/names.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
