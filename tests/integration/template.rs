//! The secrets `template.yaml` creates have the shape the code reads.
//!
//! For every `AWS::SecretsManager::Secret` in the template this builds the JSON CloudFormation
//! would store (`SecretString`, or `SecretStringTemplate` plus a generated `GenerateStringKey`
//! that honours the length and exclusion settings), writes it to moto under the name the
//! functions are configured with, and reads it back through the real `shared` parsers. A secret
//! the test does not know fails it, so a new one cannot be added without its parser check.
//! The last test shows that a missing or misshaped secret answers without naming it.

use std::collections::HashMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use serde_norway::Value as Yaml;
use sha2::Sha256;
use shared::config::Config;
use shared::oauth::state::StateKey;
use shared::secrets::{SecretError, SecretStore, schema};
use shared::webhook::{WebhookSecret, WebhookVerifier};
use spbridge_tests::{assert_reveals_nothing, leaks};

const TEMPLATE: &str = include_str!("../../template.yaml");
/// What AWS counts as punctuation in `GenerateSecretString`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

fn template() -> Yaml {
    serde_norway::from_str(TEMPLATE).expect("template.yaml is YAML")
}

/// `!Sub "${SecretPrefix}app"` → `app`.
fn name_suffix(name: &Yaml) -> String {
    let Yaml::Tagged(t) = name else {
        panic!("secret Name is not a !Sub: {name:?}")
    };
    assert_eq!(t.tag.to_string(), "!Sub");
    let s = t.value.as_str().expect("!Sub of a string");
    s.strip_prefix("${SecretPrefix}")
        .unwrap_or_else(|| panic!("secret {s} is not under ${{SecretPrefix}}"))
        .to_owned()
}

/// A few bytes of randomness without another dependency.
fn random_bytes() -> impl Iterator<Item = u8> {
    std::iter::repeat_with(|| uuid::Uuid::new_v4().into_bytes()).flatten()
}

/// A password as `GenerateSecretString` would make it with `settings`'s settings.
fn generate(settings: &Yaml) -> String {
    let flag = |k: &str| settings.get(k).and_then(Yaml::as_bool).unwrap_or(false);
    let len = settings
        .get("PasswordLength")
        .and_then(Yaml::as_u64)
        .unwrap_or(32) as usize;
    let exclude = settings
        .get("ExcludeCharacters")
        .and_then(Yaml::as_str)
        .unwrap_or("");
    let mut alphabet = String::new();
    if !flag("ExcludeLowercase") {
        alphabet.extend('a'..='z');
    }
    if !flag("ExcludeUppercase") {
        alphabet.extend('A'..='Z');
    }
    if !flag("ExcludeNumbers") {
        alphabet.extend('0'..='9');
    }
    if !flag("ExcludePunctuation") {
        alphabet.push_str(PUNCTUATION);
    }
    if flag("IncludeSpace") {
        alphabet.push(' ');
    }
    let alphabet: Vec<char> = alphabet.chars().filter(|c| !exclude.contains(*c)).collect();
    assert!(!alphabet.is_empty(), "the settings leave no characters");
    random_bytes()
        .take(len)
        .map(|b| alphabet[b as usize % alphabet.len()])
        .collect()
}

/// Every secret of the template: name suffix → the JSON CloudFormation would store.
fn generated_secrets() -> HashMap<String, Value> {
    let t = template();
    let resources = t.get("Resources").and_then(Yaml::as_mapping).unwrap();
    let mut out = HashMap::new();
    for (_, r) in resources {
        if r.get("Type").and_then(Yaml::as_str) != Some("AWS::SecretsManager::Secret") {
            continue;
        }
        let props = &r["Properties"];
        let suffix = name_suffix(&props["Name"]);
        let value = if let Some(s) = props.get("SecretString").and_then(Yaml::as_str) {
            serde_json::from_str(s).expect("SecretString is JSON")
        } else {
            let settings = &props["GenerateSecretString"];
            let tpl = settings["SecretStringTemplate"]
                .as_str()
                .expect("a template");
            let key = settings["GenerateStringKey"].as_str().expect("a key");
            let mut v: Value = serde_json::from_str(tpl).expect("SecretStringTemplate is JSON");
            v[key] = Value::String(generate(settings));
            v
        };
        out.insert(suffix, value);
    }
    out
}

/// Signs like a sender holding `whsec`.
fn sign(whsec: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(whsec.trim_start_matches("whsec_"))
        .expect("the sender's secret is base64 after whsec_");
    spbridge_tests::secret_values::remember("webhook secret", whsec);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    spbridge_tests::secret_values::remember("webhook signature", &sig);
    format!("v1,{sig}")
}

fn config(prefix: &str) -> Config {
    Config::from_lookup(|k| (k == "SPBRIDGE_SECRET_PREFIX").then(|| prefix.to_owned())).unwrap()
}

#[test]
fn password_generation_honours_the_settings() {
    let settings: Yaml = serde_norway::from_str(
        "{PasswordLength: 40, ExcludePunctuation: true, ExcludeCharacters: abc}",
    )
    .unwrap();
    let p = generate(&settings);
    assert_eq!(p.chars().count(), 40);
    assert!(
        p.chars()
            .all(|c| c.is_ascii_alphanumeric() && !"abc".contains(c)),
        "{p}"
    );
    let with_punct = (0..20)
        .map(|_| generate(&serde_norway::from_str("{}").unwrap()))
        .any(|p| p.chars().any(|c| PUNCTUATION.contains(c)));
    assert!(with_punct, "punctuation is in the default alphabet");
}

#[tokio::test]
async fn every_generated_secret_parses_with_the_real_readers() {
    let store = spbridge_tests::moto_store().await;
    let mut names: Vec<String> = generated_secrets().into_keys().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["app", "state-key", "webhook"],
        "a secret was added or removed: give it a parser check here"
    );

    // Several draws, so an unlucky generated string (e.g. one base64 cannot take) would show.
    for _ in 0..8 {
        let prefix = spbridge_tests::unique_prefix();
        let cfg = config(&prefix);
        for (suffix, value) in generated_secrets() {
            store
                .put(&format!("{prefix}{suffix}"), &value, None)
                .await
                .unwrap();
        }

        // The webhook secret: a one-element whsec_ list that verifies a sender's signature.
        let hooks = schema::webhook_secrets(&store, &cfg.secrets).await.unwrap();
        assert_eq!(hooks.value.secrets.len(), 1);
        let whsec = hooks.value.secrets[0].expose_secret().to_owned();
        let stored = store.get(&format!("{prefix}webhook")).await.unwrap().value;
        assert_eq!(
            whsec,
            format!("whsec_{}", stored["secret"].as_str().unwrap()),
            "senders use whsec_ followed by the stored text (docs/secrets.md)"
        );
        let key = WebhookSecret::from_whsec(&whsec).expect("a Standard Webhooks secret");
        let body = br#"{"name":"a.txt"}"#;
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut headers = lambda_http::http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert(
            "webhook-signature",
            sign(&whsec, "msg_1", ts, body).parse().unwrap(),
        );
        WebhookVerifier::standard(vec![key])
            .verify_now(&headers, body)
            .expect("a sender's signature verifies");

        // The state key: its own secret, a usable signing key.
        let keys = schema::state_keys(&store, &cfg.secrets).await.unwrap();
        StateKey::from_base64(&keys.key).expect("48 letters and digits are a 36-byte key");

        // The app credential is a placeholder: it parses, and says which field to fill in.
        let app = schema::app_credential(&store, &cfg.secrets)
            .await
            .unwrap_err();
        match &app {
            SecretError::InvalidJson { reason, .. } => {
                assert!(reason.contains("client_secret"), "{reason}")
            }
            other => panic!("the placeholder should parse and ask for a credential: {other}"),
        }
        let app_json = store.get(&format!("{prefix}app")).await.unwrap().value;
        assert!(
            app_json.get("state_signing_key").is_none(),
            "the state key left the app secret"
        );
    }
}

#[tokio::test]
async fn secret_failures_answer_without_naming_the_secret() {
    let store = spbridge_tests::moto_store().await;
    let prefix = spbridge_tests::unique_prefix();
    // Inside Lambda the template passes ARNs, which hold the account id.
    let arn =
        format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{prefix}webhook-AbCdEf");
    let cfg = Config::from_lookup(|k| match k {
        "SPBRIDGE_SECRET_PREFIX" => Some(prefix.clone()),
        "SPBRIDGE_WEBHOOK_SECRET_NAME" => Some(arn.clone()),
        _ => None,
    })
    .unwrap();
    let names = [prefix.as_str(), "webhook", "state-key"];

    let missing = schema::webhook_secrets(&store, &cfg.secrets)
        .await
        .unwrap_err();
    assert!(matches!(missing, SecretError::NotFound { .. }), "{missing}");
    assert!(
        !leaks(&missing.to_string(), &names).is_empty(),
        "the log line names it"
    );
    let answer = missing.to_api_error();
    assert_eq!(answer.status(), 500);
    assert_eq!(answer.code(), "misconfigured");
    assert_reveals_nothing(
        "a missing webhook secret",
        &answer.to_json().to_string(),
        &names,
    );

    // The old template's shape under a name moto accepts.
    let name = format!("{prefix}webhook");
    store
        .put(&name, &json!({"wrong": "x"}), None)
        .await
        .unwrap();
    let cfg = config(&prefix);
    let misshaped = schema::webhook_secrets(&store, &cfg.secrets)
        .await
        .unwrap_err();
    assert!(
        matches!(misshaped, SecretError::InvalidJson { .. }),
        "{misshaped}"
    );
    let answer = misshaped.to_api_error();
    assert_eq!(answer.status(), 500);
    assert_reveals_nothing(
        "a misshaped webhook secret",
        &answer.to_json().to_string(),
        &names,
    );
}

#[test]
fn the_leak_scanner_finds_what_it_looks_for() {
    let names = ["spbridge/"];
    for (body, what) in [
        (r#"{"message":"arn:aws-us-gov:secretsmanager:x"}"#, "ARN"),
        (r#"{"message":"account 123456789012"}"#, "12-digit"),
        (r#"{"message":"secret spbridge/webhook not found"}"#, "name"),
        (
            r#"{"message":"secret store: throttled"}"#,
            "internal phrase",
        ),
        (
            r#"{"message":"SPBRIDGE_WEBHOOK_SECRET_NAME unset"}"#,
            "internal phrase",
        ),
    ] {
        let found = leaks(body, &names).join(" ");
        assert!(found.contains(what), "{body}: {found}");
    }
    assert!(leaks(r#"{"error":"misconfigured","size":1234567890123}"#, &names).is_empty());
}
