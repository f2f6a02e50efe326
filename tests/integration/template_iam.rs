//! The IAM in `template.yaml` keeps Microsoft credentials away from the internet-facing
//! receiver: upload-ingest can read the sender secrets and the deployment webhook secret, never
//! the app credential or a connection secret; upload-worker can read both.

use serde_norway::Value as Yaml;

const TEMPLATE: &str = include_str!("../../template.yaml");

/// Every `Allow` statement of a function: (actions, resources as YAML text).
fn statements(function: &str) -> Vec<(Vec<String>, Vec<String>)> {
    statements_in(TEMPLATE, function)
}

fn statements_in(template: &str, function: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let t: Yaml = serde_norway::from_str(template).expect("template.yaml is YAML");
    let policies = t["Resources"][function]["Properties"]["Policies"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{function} has inline policies"));
    let mut out = Vec::new();
    for p in policies {
        // A SAM policy template or managed policy name would hide what it grants.
        let statements = p["Statement"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{function}: only inline statements are allowed: {p:?}"));
        for s in statements {
            if s["Effect"].as_str() != Some("Allow") {
                continue;
            }
            let list = |v: &Yaml| -> Vec<String> {
                match v.as_sequence() {
                    Some(seq) => seq.iter().map(text).collect(),
                    None => vec![text(v)],
                }
            };
            out.push((list(&s["Action"]), list(&s["Resource"])));
        }
    }
    out
}

/// A resource or action as text (`!Ref X`, `!If [...]` and `!Sub "..."` included).
fn text(v: &Yaml) -> String {
    match v.as_str() {
        Some(s) => s.to_owned(),
        None => serde_norway::to_string(v).expect("YAML serializes"),
    }
}

/// Whether `function` may call `secretsmanager:GetSecretValue` on something `matches` accepts.
/// A wildcard action or resource counts as a match.
fn can_read(function: &str, matches: impl Fn(&str) -> bool) -> bool {
    can_read_in(TEMPLATE, function, matches)
}

fn can_read_in(template: &str, function: &str, matches: impl Fn(&str) -> bool) -> bool {
    statements_in(template, function)
        .iter()
        .any(|(actions, resources)| {
            let reads = actions.iter().any(|a| {
                a == "*" || a == "secretsmanager:*" || a == "secretsmanager:GetSecretValue"
            });
            reads
                && resources.iter().any(|r| {
                    r == "*"
                        || r.ends_with("secret:*")
                        || r.contains("${SecretPrefix}*")
                        || matches(r)
                })
        })
}

fn app_secret(r: &str) -> bool {
    r.contains("AppCredentialSecret")
}

fn connection_secrets(r: &str) -> bool {
    r.contains("${SecretPrefix}connections/")
}

#[test]
fn the_receiver_cannot_read_microsoft_credentials_and_the_worker_can() {
    assert!(
        !can_read("UploadIngestFunction", app_secret),
        "receiver reads the app secret"
    );
    assert!(
        !can_read("UploadIngestFunction", connection_secrets),
        "receiver reads connection secrets"
    );
    assert!(can_read("UploadIngestFunction", |r| r
        .contains("${SecretPrefix}senders/")));
    assert!(can_read("UploadIngestFunction", |r| r.contains("WebhookSecret")));
    // Nothing but reads of secrets: no writes, no listing, no other secret actions.
    for (actions, _) in statements("UploadIngestFunction") {
        for a in actions.iter().filter(|a| a.starts_with("secretsmanager:")) {
            assert_eq!(a, "secretsmanager:GetSecretValue", "receiver may {a}");
        }
    }

    assert!(can_read("UploadWorkerFunction", app_secret));
    assert!(can_read("UploadWorkerFunction", connection_secrets));
    assert!(can_read("UploadWorkerFunction", |r| r
        .contains("${SecretPrefix}senders/")));
}

#[test]
fn the_checker_is_not_blind() {
    // The same template with the receiver's sender grant widened: each widening is caught.
    let i = TEMPLATE.find("UploadIngestFunction:").expect("receiver");
    let (head, tail) = TEMPLATE.split_at(i);
    for widened in ["connections/*", "*"] {
        let t = format!(
            "{head}{}",
            tail.replacen(
                "${SecretPrefix}senders/*",
                &format!("${{SecretPrefix}}{widened}"),
                1
            )
        );
        assert!(
            can_read_in(&t, "UploadIngestFunction", connection_secrets),
            "{widened} not caught"
        );
    }
}
