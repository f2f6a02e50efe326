//! Fuzz target: see `checks/webhook_signature.rs` for what it checks.
#![no_main]

#[path = "../checks/webhook_signature.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
