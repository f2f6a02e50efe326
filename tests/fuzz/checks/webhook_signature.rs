//! Webhook signature headers (Standard Webhooks and `X-Hub-Signature-256`) against a fixed
//! secret.
//!
//! Input: `id\ntimestamp\nsignature-header\nhub-signature\nbody…`. Every field the fuzzer leaves
//! out is left out of the request. Invariants: nothing panics; a request is accepted only if it
//! carries the HMAC of its content under the verifier's key (computed here independently), and a
//! verifier holding another key refuses it; a refusal is a 401 answer.

use base64::Engine;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;
use shared::api::ApiError;
use shared::ingest::IngestError;
use shared::webhook::{Verified, WebhookSecret, WebhookVerifier};
use time::OffsetDateTime;

const KEY: &[u8] = b"fuzz-webhook-key-0123456789abcdef";
const OTHER_KEY: &[u8] = b"fuzz-webhook-key-0123456789abcdeF";
const NOW: i64 = 1_795_000_000;

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn verifier(key: &[u8]) -> WebhookVerifier {
    let whsec = format!("whsec_{}", STANDARD.encode(key));
    WebhookVerifier::standard(vec![
        WebhookSecret::from_whsec(&whsec).expect("a valid secret"),
    ])
    .with_github(vec![
        WebhookSecret::from_raw(key.to_vec()).expect("a valid key"),
    ])
}

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let mut fields = data.splitn(5, |&b| b == b'\n');
    let id = fields.next().unwrap_or_default();
    let ts = fields.next().unwrap_or_default();
    let sig = fields.next().unwrap_or_default();
    let hub = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default();

    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", ts),
        ("webhook-signature", sig),
        ("x-hub-signature-256", hub),
    ] {
        // An empty field means "no such header"; a value HTTP cannot carry is not a request.
        if value.is_empty() {
            continue;
        }
        let Ok(v) = HeaderValue::from_bytes(value) else {
            return;
        };
        headers.insert(name, v);
    }
    // A properly signed variant now and then, so the accept path is explored too.
    if sig == b"SIGN" && !id.is_empty() && !ts.is_empty() {
        let good = LENIENT.encode(mac(KEY, &[id, b".", ts, b".", body]));
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&format!("v1,{good}")).expect("base64"),
        );
    }

    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("a valid time");
    match verifier(KEY).verify(&headers, body, now) {
        Ok(Verified::StandardWebhooks { webhook_id, .. }) => {
            let want = mac(KEY, &[webhook_id.as_bytes(), b".", ts, b".", body]);
            let signed = headers["webhook-signature"]
                .to_str()
                .expect("accepted headers are text")
                .split(' ')
                .filter_map(|e| e.strip_prefix("v1,"))
                .any(|s| LENIENT.decode(s).is_ok_and(|b| b == want));
            assert!(signed, "accepted without the key's signature: {headers:?}");
            assert!(verifier(OTHER_KEY).verify(&headers, body, now).is_err());
        }
        Ok(Verified::GitHub { .. }) => {
            let want = hex::encode(mac(KEY, &[body]));
            let got = headers["x-hub-signature-256"].to_str().expect("text");
            let got = got
                .strip_prefix("sha256=")
                .expect("the sha256= form")
                .trim();
            assert!(got.eq_ignore_ascii_case(&want), "accepted {got} for {want}");
            assert!(verifier(OTHER_KEY).verify(&headers, body, now).is_err());
        }
        Ok(other) => panic!("a verifier with secrets accepted {other:?}"),
        Err(e) => {
            let status = ApiError::from(&IngestError::from(e.clone())).status();
            assert_eq!(status.as_u16(), 401, "{e} answered {status}");
        }
    }
}
