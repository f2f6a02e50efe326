//! Fuzz target: see `checks/aws_events.rs` for what it checks.
#![no_main]

#[path = "../checks/aws_events.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
