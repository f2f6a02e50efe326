//! The log scan: every log line the test binary emits is captured, and none may contain a secret,
//! token, authorization code, signature or capability URL that a suite used.
//!
//! Suites [`remember`] each such value they make (or [`watch`] a source that lists them, such as
//! the emulator's issued tokens). [`capture`] installs the one process-wide subscriber; the
//! integration binary calls it before `main`, so no line is missed.
//!
//! libtest has no "after all tests" hook, so the check cannot be a test that runs last. Instead:
//! - each line is checked as it is written, against the values remembered so far; a hit panics
//!   the thread that logged it (usually the offending test) and is recorded;
//! - at process exit (`atexit`, which runs on success and on failure alike) every captured line is
//!   checked against every value, remembered or watched, whatever the order they came in; any
//!   hit is printed (with the value replaced by its label, never the value itself) and the process
//!   exits with status 101, so `cargo test` fails even if the panic was swallowed by a task.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use aho_corasick::AhoCorasick;
use tracing_subscriber::fmt::MakeWriter;

/// Values shorter than this are not scanned for (a 3-letter "secret" matches everything).
pub const MIN_LEN: usize = 8;

type Source = Box<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>;

/// Captured lines, the values to look for, and what was found. One per process for the real
/// scan; tests of the scan make their own.
#[derive(Default)]
pub struct LogScan {
    inner: Mutex<Inner>,
    sources: Mutex<Vec<Source>>,
}

#[derive(Default)]
struct Inner {
    /// (label, the forms the value may take in a line).
    values: Vec<(&'static str, Vec<String>)>,
    seen: BTreeSet<String>,
    lines: Vec<String>,
    violations: Vec<String>,
}

/// The forms a value takes in a JSON log line: as is, JSON-escaped, percent-encoded (in a URL or
/// form), and, for a JWT, its signature alone.
fn forms(value: &str) -> Vec<String> {
    let mut out = vec![value.to_owned()];
    let json = serde_json::to_string(value).unwrap_or_default();
    out.push(json.trim_matches('"').to_owned());
    out.push(url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>());
    let parts: Vec<&str> = value.split('.').collect();
    if parts.len() == 3 && parts[2].len() >= MIN_LEN {
        out.push(parts[2].to_owned());
    }
    out.sort();
    out.dedup();
    out.retain(|f| f.len() >= MIN_LEN);
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while logging must not hide every later line.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogScan {
    /// Adds a value no log line may contain, under a label that says what it is.
    pub fn remember(&self, label: &'static str, value: &str) {
        let value = value.trim();
        if value.len() < MIN_LEN {
            return;
        }
        let mut inner = lock(&self.inner);
        if inner.seen.insert(value.to_owned()) {
            inner.values.push((label, forms(value)));
        }
    }

    /// Adds a source of values read at the final check (e.g. the tokens an emulator issued).
    pub fn watch(&self, source: impl Fn() -> Vec<(&'static str, String)> + Send + Sync + 'static) {
        lock(&self.sources).push(Box::new(source));
    }

    /// Records one log line; returns a description of the leak if it contains a remembered value.
    pub fn line(&self, line: &str) -> Option<String> {
        let mut inner = lock(&self.inner);
        inner.lines.push(line.to_owned());
        let hit = inner
            .values
            .iter()
            .find(|(_, forms)| forms.iter().any(|f| line.contains(f.as_str())))
            .map(|(label, forms)| describe(label, forms, line))?;
        inner.violations.push(hit.clone());
        Some(hit)
    }

    /// Every line checked against every value (remembered or watched): the leaks found, each
    /// described without the value itself.
    pub fn final_check(&self) -> Vec<String> {
        for source in lock(&self.sources).iter() {
            for (label, value) in source() {
                self.remember(label, &value);
            }
        }
        let inner = lock(&self.inner);
        let mut patterns = Vec::new();
        let mut labels = Vec::new();
        for (label, forms) in &inner.values {
            for f in forms {
                patterns.push(f.as_str());
                labels.push((*label, forms));
            }
        }
        let mut found: Vec<String> = inner.violations.clone();
        if let Ok(ac) = AhoCorasick::new(&patterns) {
            for line in &inner.lines {
                if let Some(m) = ac.find(line) {
                    let (label, forms) = labels[m.pattern().as_usize()];
                    found.push(describe(label, forms, line));
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }

    /// Every line captured so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.inner).lines.clone()
    }

    /// How many lines were captured.
    pub fn line_count(&self) -> usize {
        lock(&self.inner).lines.len()
    }

    /// A `tracing` writer that feeds this scan and panics on a leak.
    pub fn writer(self: &Arc<Self>) -> ScanWriter {
        ScanWriter(self.clone())
    }
}

fn describe(label: &str, forms: &[String], line: &str) -> String {
    let mut shown = line.trim_end().to_owned();
    for f in forms {
        shown = shown.replace(f.as_str(), &format!("[{label}]"));
    }
    let thread = std::thread::current();
    format!(
        "the {label} was logged (thread {}): {shown}",
        thread.name().unwrap_or("unnamed")
    )
}

/// Writes formatted lines into a [`LogScan`]; a line holding a remembered value panics the
/// thread that logged it.
#[derive(Clone)]
pub struct ScanWriter(Arc<LogScan>);

impl io::Write for ScanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(leak) = self.0.line(line) {
                panic!("log scan: {leak}");
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ScanWriter {
    type Writer = ScanWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A JSON subscriber (the functions' format) at every level of our crates, `info` for others.
pub fn subscriber(scan: &Arc<LogScan>) -> impl tracing::Subscriber + Send + Sync + use<> {
    let filter = tracing_subscriber::EnvFilter::new(
        "info,shared=trace,upload_ingest=trace,oauth_callback=trace,token_refresh=trace,\
         tenant_emulator=trace,spbridge_tests=trace,integration=trace",
    );
    tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .with_env_filter(filter)
        .with_writer(scan.writer())
        .finish()
}

static GLOBAL: OnceLock<Arc<LogScan>> = OnceLock::new();

/// The process-wide scan: installs its subscriber as the global default on first use and the
/// exit check. Panics if another global subscriber was installed first (lines would be lost).
pub fn capture() -> &'static Arc<LogScan> {
    GLOBAL.get_or_init(|| {
        let scan = Arc::new(LogScan::default());
        tracing::subscriber::set_global_default(subscriber(&scan))
            .expect("the log scan's subscriber is the only global one");
        // SAFETY: `at_exit` is an `extern "C" fn()` that neither unwinds nor returns into Rust
        // state that exit has torn down (it only reads the static scan and calls `_exit`).
        unsafe {
            libc::atexit(at_exit);
        }
        scan
    })
}

extern "C" fn at_exit() {
    let Some(scan) = GLOBAL.get() else {
        return;
    };
    let leaks = std::panic::catch_unwind(|| scan.final_check())
        .unwrap_or_else(|_| vec!["the final log scan itself panicked".to_owned()]);
    if leaks.is_empty() {
        let values = lock(&scan.inner).values.len();
        eprintln!(
            "log scan: {} lines checked against {values} secrets, none found",
            scan.line_count()
        );
        return;
    }
    eprintln!(
        "log scan: {} of the suite's secrets were logged:",
        leaks.len()
    );
    for leak in &leaks {
        eprintln!("  {leak}");
    }
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(101) }
}

/// Adds a value no log line of this test binary may contain (see [`LogScan::remember`]).
pub fn remember(label: &'static str, value: &str) {
    capture().remember(label, value);
}

/// Adds a source of such values, read at exit (see [`LogScan::watch`]).
pub fn watch(source: impl Fn() -> Vec<(&'static str, String)> + Send + Sync + 'static) {
    capture().watch(source);
}
