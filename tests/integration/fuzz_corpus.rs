//! The fuzz corpora as regression tests: every input checked in under `tests/fuzz/corpus/`
//! (the seeds, what the 10-minute runs found after `cargo fuzz cmin`, and every input that
//! once crashed a target) is run through the same checks the fuzz targets make
//! (`tests/fuzz/checks/`). Cheap enough for every `cargo test`; the fuzzing itself is
//! `scripts/fuzz-smoke`.

#[path = "../fuzz/checks/aws_events.rs"]
mod aws_events;
#[path = "../fuzz/checks/jwt.rs"]
mod jwt;
#[path = "../fuzz/checks/microsoft_errors.rs"]
mod microsoft_errors;
#[path = "../fuzz/checks/names.rs"]
mod names;
#[path = "../fuzz/checks/request_body.rs"]
mod request_body;
#[path = "../fuzz/checks/webhook_signature.rs"]
mod webhook_signature;
#[path = "../fuzz/checks/www_authenticate.rs"]
mod www_authenticate;

/// One target's checks.
type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("aws_events", aws_events::run),
    ("jwt", jwt::run),
    ("microsoft_errors", microsoft_errors::run),
    ("names", names::run),
    ("request_body", request_body::run),
    ("webhook_signature", webhook_signature::run),
    ("www_authenticate", www_authenticate::run),
];

#[test]
fn every_corpus_input_keeps_its_target_invariants() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failed = Vec::new();
    for (target, run) in TARGETS {
        let mut inputs: Vec<_> = std::fs::read_dir(root.join(target))
            .unwrap_or_else(|e| panic!("corpus of {target}: {e}"))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "the corpus of {target} is empty");
        for input in inputs {
            let data = std::fs::read(&input).expect("corpus file readable");
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(format!("{target}: {}", input.display()));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that break their target's checks: {failed:#?}"
    );
}
