//! spbridge-admin: operator commands against the deployment's secret store (the same store and
//! configuration the functions use: `SPBRIDGE_SECRET_BACKEND`, `SPBRIDGE_SECRET_PREFIX`, AWS
//! credentials or `SPBRIDGE_SECRET_DIR`).
//!
//! ```text
//! spbridge-admin mint-link <connection> [--rebind] [--ttl 24h] [--base-url URL]
//! spbridge-admin sender-secret <connection> [--rotate | --retire-old]
//! ```
//!
//! `mint-link` prints a single-use connect link (stdout). `sender-secret` creates the
//! connection's sender secret with a new `whsec_` secret, or with `--rotate` puts a new one in
//! front of the existing ones (both verify until `--retire-old` keeps only the newest); it
//! prints the new secret (stdout) to hand to the sender over a private channel.

use std::process::ExitCode;

use base64::Engine as _;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use shared::config::Config;
use shared::secrets::schema::SenderSecret;
use shared::secrets::{self, SecretStore, UpdateError};
use shared::signin::link;
use time::OffsetDateTime;

const USAGE: &str = "usage:
  spbridge-admin mint-link <connection> [--rebind] [--ttl 24h] [--base-url URL]
  spbridge-admin sender-secret <connection> [--rotate | --retire-old]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spbridge-admin: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> Result<String, String> {
    let (command, rest) = args.split_first().ok_or(USAGE)?;
    let (connection, flags) = rest.split_first().ok_or(USAGE)?;
    if !shared::ingest::sender::valid_connection_id(connection) {
        return Err(format!("{connection:?} is not a connection id"));
    }
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let store = secrets::from_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    match command.as_str() {
        "mint-link" => mint_link(&*store, &config, connection, flags).await,
        "sender-secret" => sender_secret(&*store, &config, connection, flags).await,
        _ => Err(USAGE.into()),
    }
}

async fn mint_link(
    store: &dyn SecretStore,
    config: &Config,
    connection: &str,
    flags: &[String],
) -> Result<String, String> {
    let mut rebind = false;
    let mut ttl = link::DEFAULT_LINK_TTL;
    let mut base = config.public_base_url.clone();
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--rebind" => rebind = true,
            "--ttl" => {
                let v = it.next().ok_or("--ttl needs a value, e.g. 24h")?;
                ttl = link::parse_ttl(v).map_err(|e| format!("--ttl {v}: {e}"))?;
            }
            "--base-url" => {
                let v = it.next().ok_or("--base-url needs a URL")?;
                base = Some(url::Url::parse(v).map_err(|e| format!("--base-url {v}: {e}"))?);
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let now = OffsetDateTime::now_utc();
    let token =
        link::mint_for_connection(store, &config.secrets, connection, ttl, rebind, now).await?;
    eprintln!(
        "single-use link for {connection}{}, valid until {}",
        if rebind {
            " (may re-bind the account)"
        } else {
            ""
        },
        (now + ttl)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    Ok(match base {
        Some(base) => link::link_url(&base, connection, &token).to_string(),
        None => format!("/connect/{connection}?invite={token}"),
    })
}

/// A new Standard Webhooks secret: `whsec_` + base64 of 32 random bytes.
fn new_whsec() -> SecretString {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    SecretString::from(format!(
        "{}{}",
        shared::webhook::SECRET_PREFIX,
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

async fn sender_secret(
    store: &dyn SecretStore,
    config: &Config,
    connection: &str,
    flags: &[String],
) -> Result<String, String> {
    #[derive(PartialEq)]
    enum Mode {
        Create,
        Rotate,
        RetireOld,
    }
    let mode = match flags {
        [] => Mode::Create,
        [f] if f == "--rotate" => Mode::Rotate,
        [f] if f == "--retire-old" => Mode::RetireOld,
        _ => return Err(USAGE.into()),
    };
    let fresh = new_whsec();
    let name = config.secrets.sender_secret_name(connection);
    let outcome =
        secrets::update_typed::<SenderSecret, String, _>(store, &name, 8, |current| {
            match (current, &mode) {
                (None, Mode::Create) => Ok(Some(SenderSecret {
                    webhook_secrets: vec![fresh.clone()],
                    ..SenderSecret::default()
                })),
                (Some(_), Mode::Create) => {
                    Err(format!("{name} exists; use --rotate to add a new secret"))
                }
                (None, _) => Err(format!("{name} does not exist; create it first")),
                (Some(cur), Mode::Rotate) => {
                    let mut next = cur.clone();
                    next.webhook_secrets.insert(0, fresh.clone());
                    Ok(Some(next))
                }
                (Some(cur), Mode::RetireOld) => {
                    let mut next = cur.clone();
                    next.webhook_secrets.truncate(1);
                    Ok((next.webhook_secrets.len() != cur.webhook_secrets.len()).then_some(next))
                }
            }
        })
        .await;
    match outcome {
        Ok(_) => {}
        Err(UpdateError::Rejected { source, .. }) => return Err(source),
        Err(UpdateError::Secret(e)) => return Err(e.to_string()),
    }
    if mode == Mode::RetireOld {
        return Ok(format!("{name}: only the newest secret verifies now"));
    }
    eprintln!(
        "{name}: new secret below (newest first; older ones still verify until --retire-old). \
         Give it to the sender over a private channel; it signs with it as a Standard Webhooks \
         secret."
    );
    Ok(fresh.expose_secret().to_owned())
}
