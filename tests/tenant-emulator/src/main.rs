//! `tenant-emulator --port 0 [--tls] [--state-dir DIR] [fault flags]`: prints one JSON line with
//! base URLs and credentials, then serves until killed.

use std::time::{Duration, Instant};

use tenant_emulator::{Emulator, FaultKind, FaultRule, Options};

const USAGE: &str = "usage: tenant-emulator [--port N] [--tls] [--state-dir DIR] [--seed N] \
[--upload-session-ttl SECS] [--latency-ms MS] [--throttle-rate R] [--unavailable-rate R] \
[--retry-after SECS] [--fault-prefix PATH] [--reset-after-bytes N] [--token-outage] [--fault JSON]...";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut prefix = String::new();
    let mut retry_after = Some(1);
    let mut pending: Vec<FaultKind> = vec![];
    let mut rates: Vec<(FaultKind, f64)> = vec![];
    let mut it = args.iter();
    let num = |v: Option<&String>, flag: &str| -> Result<u64, String> {
        v.ok_or(format!("{flag} needs a value"))?
            .parse()
            .map_err(|_| format!("{flag} needs a whole number"))
    };
    let rate = |v: Option<&String>, flag: &str| -> Result<f64, String> {
        let r: f64 = v
            .ok_or(format!("{flag} needs a value"))?
            .parse()
            .map_err(|_| format!("{flag} needs a number"))?;
        if (0.0..=1.0).contains(&r) {
            Ok(r)
        } else {
            Err(format!("{flag} must be within 0..1"))
        }
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => {
                o.port = u16::try_from(num(it.next(), a)?).map_err(|_| "--port out of range")?
            }
            "--tls" => o.tls = true,
            "--interactive-sign-in" => o.interactive_sign_in = true,
            "--state-dir" => {
                o.state_dir = Some(it.next().ok_or("--state-dir needs a value")?.into())
            }
            "--seed" => o.seed = num(it.next(), a)?,
            "--upload-session-ttl" => {
                o.upload_session_ttl = Duration::from_secs(num(it.next(), a)?)
            }
            "--latency-ms" => pending.push(FaultKind::Latency {
                ms: num(it.next(), a)?,
            }),
            "--retry-after" => retry_after = Some(num(it.next(), a)?),
            "--fault-prefix" => prefix = it.next().ok_or("--fault-prefix needs a value")?.clone(),
            "--throttle-rate" => rates.push((
                FaultKind::Status {
                    status: 429,
                    retry_after: None,
                },
                rate(it.next(), a)?,
            )),
            "--unavailable-rate" => rates.push((
                FaultKind::Status {
                    status: 503,
                    retry_after: None,
                },
                rate(it.next(), a)?,
            )),
            "--reset-after-bytes" => pending.push(FaultKind::ResetAfter {
                bytes: num(it.next(), a)?,
            }),
            "--token-outage" => pending.push(FaultKind::TokenOutage { retry_after: None }),
            "--fault" => {
                let raw = it.next().ok_or("--fault needs a JSON rule")?;
                let rule: FaultRule =
                    serde_json::from_str(raw).map_err(|e| format!("--fault: {e}"))?;
                o.faults.push(rule);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let with_retry = |k: FaultKind| match k {
        FaultKind::Status { status, .. } => FaultKind::Status {
            status,
            retry_after,
        },
        FaultKind::TokenOutage { .. } => FaultKind::TokenOutage { retry_after },
        other => other,
    };
    for k in pending {
        o.faults.push(FaultRule::new(&prefix, with_retry(k)));
    }
    for (k, r) in rates {
        o.faults
            .push(FaultRule::new(&prefix, with_retry(k)).rate(r));
    }
    Ok(o)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let emu = match Emulator::start(opts).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tenant-emulator failed to start: {e}");
            std::process::exit(1);
        }
    };
    match serde_json::to_string(emu.info()) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("cannot serialize info: {e}");
            std::process::exit(1);
        }
    }
    eprintln!(
        "tenant-emulator ready in {} ms",
        started.elapsed().as_millis()
    );
    let _ = tokio::signal::ctrl_c().await;
}
