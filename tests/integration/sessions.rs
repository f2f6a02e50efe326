//! Direct upload sessions end to end: `POST /uploads/{connection}/sessions` through
//! `upload_ingest::handle`, the bytes PUT to moto's S3 through the presigned URLs it answers,
//! completion, and the worker moving the staged object into the tenant emulator.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ingest::{SP_LIB, Setup, WHSEC, World, event, new_id, now_secs, sign_with, signed_json};

const MIB: usize = 1024 * 1024;

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8 ^ seed)
        .collect()
}

type Reply = (u16, Value, HashMap<String, String>);

async fn create(w: &World, connection: &str, body: Value) -> Reply {
    let req = signed_json(&format!("/uploads/{connection}/sessions"), &new_id(), &body);
    w.send_raw(req).await
}

async fn complete(w: &World, connection: &str, session: &str, body: Value) -> Reply {
    let path = format!("/uploads/{connection}/sessions/{session}/complete");
    w.send_raw(signed_json(&path, &new_id(), &body)).await
}

/// PUTs `bytes` to one presigned target (`url` and `headers`) as a browser or curl would;
/// answers the status and the ETag.
async fn put(target: &Value, bytes: Vec<u8>) -> (u16, Option<String>) {
    let url = target["url"].as_str().expect("url");
    // A capability: the log scan fails the suite if it reaches a log line.
    spbridge_tests::secret_values::remember("presigned URL", url);
    if let Some((_, sig)) = url::Url::parse(url)
        .expect("presigned URL")
        .query_pairs()
        .find(|(k, _)| k == "X-Amz-Signature")
    {
        spbridge_tests::secret_values::remember("presigned URL signature", &sig);
    }
    let mut req = reqwest::Client::new().put(url);
    for (k, v) in target["headers"].as_object().expect("headers") {
        req = req.header(k, v.as_str().expect("header value"));
    }
    let resp = req.body(bytes).send().await.expect("S3 answers");
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (resp.status().as_u16(), etag)
}

/// Polls the job through its status URL until it ends.
async fn job_end(w: &World, status_url: &str) -> Value {
    let url = url::Url::parse(status_url).expect("absolute status_url");
    let job = url.path().rsplit('/').next().expect("job id").to_owned();
    let token = url
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .expect("token");
    for _ in 0..400 {
        let (status, body, _) = w.status(&job, &token).await;
        assert_eq!(status, 200, "{body}");
        if body["status"] == "done" || body["status"] == "failed" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} did not end");
}

/// The staging bucket's keys.
async fn staged_keys(w: &World) -> Vec<String> {
    let out = spbridge_tests::s3_client(&w.infra.sdk)
        .list_objects_v2()
        .bucket(&w.infra.bucket)
        .send()
        .await
        .expect("list");
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// Runs the job queue's messages through upload-worker one at a time, until it is empty;
/// answers how many ran. (Concurrent conditional writes to one item can both pass in moto,
/// never in DynamoDB; one at a time, the job's lease decides as DynamoDB would.)
async fn run_queue_one_by_one(w: &World) -> usize {
    let sqs = aws_sdk_sqs::Client::new(&w.infra.sdk);
    let mut ran = 0;
    loop {
        let out = sqs
            .receive_message()
            .queue_url(&w.infra.queue_url)
            .max_number_of_messages(1)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .expect("receive");
        let Some(m) = out.messages.unwrap_or_default().into_iter().next() else {
            return ran;
        };
        let receipt = m.receipt_handle.clone().expect("receipt");
        let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
        event
            .records
            .push(upload_worker::event_record(m, crate::ingest::QUEUE_ARN));
        let mut ctx = lambda_runtime::Context::default();
        ctx.request_id = uuid::Uuid::new_v4().to_string();
        let answer = upload_worker::handle(
            &w.worker_state,
            lambda_runtime::LambdaEvent::new(event, ctx),
        )
        .await;
        assert!(answer.batch_item_failures.is_empty(), "{answer:?}");
        sqs.delete_message()
            .queue_url(&w.infra.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .expect("delete");
        ran += 1;
    }
}

fn small_parts() -> Setup {
    Setup {
        env: vec![
            (
                "SPBRIDGE_SESSION_SINGLE_PUT_MAX_BYTES",
                (8 * MIB).to_string(),
            ),
            ("SPBRIDGE_SESSION_PART_BYTES", (5 * MIB).to_string()),
        ],
        ..Setup::default()
    }
}

#[tokio::test]
async fn bad_session_requests_get_a_4xx_naming_the_problem() {
    let w = World::start(Setup {
        no_workers: true,
        ..Setup::default()
    })
    .await;
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "contoso-docs",
            json!({"size": 3}),
            400,
            "bad_request",
            "name: is required",
        ),
        (
            "contoso-docs",
            json!({"name": "a.txt"}),
            400,
            "bad_request",
            "size: is required",
        ),
        (
            "contoso-docs",
            json!({"name": "a.txt", "size": -5}),
            400,
            "bad_request",
            "size:",
        ),
        (
            "contoso-docs",
            json!({"name": "a.txt", "size": 1, "sha256": "abc"}),
            400,
            "bad_request",
            "sha256:",
        ),
        (
            "contoso-docs",
            json!({"name": "a.txt", "size": 1, "conflict": "merge"}),
            400,
            "bad_request",
            "conflict:",
        ),
        (
            "contoso-docs",
            json!({"name": "a.txt", "size": 1, "colour": "red"}),
            400,
            "bad_request",
            "colour: unknown field",
        ),
        (
            "contoso-docs",
            json!({"name": "a.txt", "folder": "../up", "size": 1}),
            400,
            "invalid_path",
            "folder:",
        ),
        (
            "contoso-docs",
            json!({"name": "a:b.txt", "size": 1}),
            422,
            "invalid_name",
            "name:",
        ),
        (
            "contoso-docs",
            json!({"name": "a.txt", "size": 1, "metadata": {"_ModerationStatus": "0"}}),
            422,
            "invalid_name",
            "metadata._ModerationStatus",
        ),
        // docs-inbox: max_file_bytes 2 MiB and blocked extensions from its sender secret.
        (
            "docs-inbox",
            json!({"name": "big.bin", "size": 2 * MIB + 1}),
            413,
            "payload_too_large",
            "size: the file is 2097153 bytes",
        ),
        (
            "docs-inbox",
            json!({"name": "setup.exe", "size": 10}),
            422,
            "invalid_name",
            "name:",
        ),
        (
            "contoso-docs",
            json!({"name": "huge.bin", "size": 300_000_000_000u64}),
            413,
            "payload_too_large",
            "at most 250000000000 bytes",
        ),
        // A SHA-256 is checked by S3 only on a single PUT (up to 5 GiB).
        (
            "contoso-docs",
            json!({"name": "six.bin", "size": 6u64 << 30, "sha256": "00".repeat(32)}),
            400,
            "bad_request",
            "sha256:",
        ),
    ];
    for (connection, body, status, code, says) in cases {
        let (got, answer, _) = create(&w, connection, body.clone()).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
    }
    // Not JSON at all.
    let bytes = b"name=a.txt".to_vec();
    let id = new_id();
    let ts = now_secs();
    let req = event(
        "/uploads/contoso-docs/sessions",
        "",
        &[
            ("webhook-id", id.clone()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sign_with(WHSEC, &id, ts, &bytes)),
        ],
        &bytes,
    );
    let (status, answer, _) = w.send_raw(req).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_request")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("invalid JSON"),
        "{answer}"
    );
    // Nothing refused left anything in the bucket.
    assert!(staged_keys(&w).await.is_empty());
}

#[tokio::test]
async fn a_wrong_signature_and_an_unknown_connection_get_the_same_401() {
    let w = World::start(Setup {
        no_workers: true,
        ..Setup::default()
    })
    .await;
    let other = "whsec_c2Vjb25kLWNvbm5lY3Rpb24tc2VjcmV0LWtleQ==";
    let body = json!({"name": "a.txt", "size": 3}).to_string().into_bytes();
    let signed = |path: &str, whsec: &str| {
        let id = new_id();
        let ts = now_secs();
        event(
            path,
            "",
            &[
                ("content-type", "application/json".into()),
                ("webhook-id", id.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sign_with(whsec, &id, ts, &body)),
            ],
            &body,
        )
    };
    let wrong = w
        .send_raw(signed("/uploads/contoso-docs/sessions", other))
        .await;
    let unknown = w.send_raw(signed("/uploads/nobody/sessions", WHSEC)).await;
    let invalid = w.send_raw(signed("/uploads/..%2Fx/sessions", WHSEC)).await;
    assert_eq!(wrong.0, 401, "{}", wrong.1);
    assert_eq!((wrong.0, &wrong.1), (unknown.0, &unknown.1));
    assert_eq!((wrong.0, &wrong.1), (invalid.0, &invalid.1));
    for (_, body, _) in [&wrong, &unknown] {
        spbridge_tests::assert_reveals_nothing(
            "a refused session",
            &body.to_string(),
            &[&w.prefix],
        );
    }
    // Completion is authenticated the same way, before the session is even looked up.
    let (status, body, _) = create(&w, "contoso-docs", json!({"name": "a.txt", "size": 3})).await;
    assert_eq!(status, 201, "{body}");
    let session = body["session"].as_str().unwrap();
    let done = w
        .send_raw(signed(
            &format!("/uploads/contoso-docs/sessions/{session}/complete"),
            other,
        ))
        .await;
    let elsewhere = w
        .send_raw(signed(
            &format!("/uploads/nobody/sessions/{session}/complete"),
            WHSEC,
        ))
        .await;
    assert_eq!((done.0, &done.1), (wrong.0, &wrong.1));
    assert_eq!((elsewhere.0, &elsewhere.1), (wrong.0, &wrong.1));
    // Another connection's sender (a real one) does not find this connection's session.
    let (status, body, _) = complete(&w, "drive", session, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
}

#[tokio::test]
async fn a_single_put_session_lands_byte_identical() {
    let w = World::start(Setup::default()).await;
    let bytes = content(3 * MIB + 17, 7);
    let sha = crate::ingest::hex_of(&Sha256::digest(&bytes));
    let (status, session, headers) = create(
        &w,
        "contoso-docs",
        json!({"name": "direct.bin", "folder": "web/in", "size": bytes.len(), "sha256": sha,
               "metadata": {"Title": "From a website"}}),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["upload"]["method"], "PUT");
    assert_eq!(session["upload"]["size"], bytes.len());
    assert_eq!(session["status"], "accepted");
    assert!(session["expires_at"].as_i64().unwrap() > now_secs() + 600);
    assert_eq!(headers["location"], session["status_url"].as_str().unwrap());
    // The status URL works before any byte is sent.
    let url = url::Url::parse(session["status_url"].as_str().unwrap()).unwrap();
    let token = url
        .query_pairs()
        .find(|(k, _)| k == "token")
        .unwrap()
        .1
        .into_owned();
    let (s, before, _) = w.status(session["job"].as_str().unwrap(), &token).await;
    assert_eq!(
        (s, before["status"].as_str()),
        (200, Some("accepted")),
        "{before}"
    );
    assert_eq!(before["progress"]["bytes_total"], bytes.len());

    let (status, etag) = put(&session["upload"], bytes.clone()).await;
    assert_eq!(status, 200);
    assert!(etag.is_some());
    let id = session["session"].as_str().unwrap();
    let (status, done, headers) = complete(&w, "contoso-docs", id, json!({})).await;
    assert_eq!(status, 202, "{done}");
    assert_eq!(done["job"], session["job"]);
    assert!(!headers.contains_key("idempotent-replayed"));
    let end = job_end(&w, done["status_url"].as_str().unwrap()).await;
    assert_eq!(end["status"], "done", "{end}");
    let path = format!("{SP_LIB}/web/in/direct.bin");
    assert_eq!(w.bytes(&path).expect("stored"), bytes);
    // The worker deletes the staged bytes once the job has ended; only the small manifest
    // waits for the lifecycle rule.
    let mut keys = staged_keys(&w).await;
    for _ in 0..100 {
        if keys.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        keys = staged_keys(&w).await;
    }
    assert_eq!(keys, vec![format!("{id}/session")]);
    w.assert_no_half_files();
}

#[tokio::test]
async fn a_multipart_session_lands_byte_identical_in_a_drive() {
    let w = World::start(small_parts()).await;
    let bytes = content(12 * MIB + 3, 11);
    let (status, session, _) = create(
        &w,
        "drive",
        json!({"name": "parts.bin", "size": bytes.len(), "conflict": "replace"}),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    let upload = &session["upload"];
    assert_eq!(upload["method"], "multipart");
    assert_eq!(upload["part_bytes"], 5 * MIB);
    assert_eq!(upload["part_count"], 3);
    let id = session["session"].as_str().unwrap();

    // Fewer parts than the session has: refused, nothing joined.
    let mut etags = Vec::new();
    for part in upload["parts"].as_array().unwrap() {
        let start = part["offset"].as_u64().unwrap() as usize;
        let len = part["size"].as_u64().unwrap() as usize;
        let (status, etag) = put(part, bytes[start..start + len].to_vec()).await;
        assert_eq!(status, 200);
        etags.push(json!({"part_number": part["part_number"], "etag": etag.unwrap()}));
    }
    let (status, body, _) = complete(&w, "drive", id, json!({"parts": etags[..2].to_vec()})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("3 parts"),
        "{body}"
    );
    // No parts at all.
    let (status, body, _) = complete(&w, "drive", id, json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("parts:"),
        "{body}"
    );

    let (status, done, _) = complete(&w, "drive", id, json!({"parts": etags})).await;
    assert_eq!(status, 202, "{done}");
    let end = job_end(&w, done["status_url"].as_str().unwrap()).await;
    assert_eq!(end["status"], "done", "{end}");
    assert_eq!(
        w.bytes(&format!("{SP_LIB}/parts.bin")).expect("stored"),
        bytes
    );
    w.assert_no_half_files();
}

#[tokio::test]
async fn files_above_five_gib_get_multipart_with_default_settings() {
    let w = World::start(Setup {
        no_workers: true,
        ..Setup::default()
    })
    .await;
    let five = 5u64 << 30;
    let (status, single, _) =
        create(&w, "contoso-docs", json!({"name": "a.bin", "size": five})).await;
    assert_eq!(
        (status, single["upload"]["method"].as_str()),
        (201, Some("PUT")),
        "{single}"
    );
    let (status, multi, _) = create(
        &w,
        "contoso-docs",
        json!({"name": "b.bin", "size": five + 1}),
    )
    .await;
    assert_eq!(status, 201, "{multi}");
    let upload = &multi["upload"];
    assert_eq!(upload["method"], "multipart");
    assert_eq!(upload["part_bytes"], 64 * MIB);
    assert_eq!(upload["part_count"], 81);
    let parts = upload["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 81);
    assert_eq!(parts[80]["size"], five + 1 - 80 * 64 * MIB as u64);
    assert!(
        parts
            .iter()
            .all(|p| p["url"].as_str().unwrap().contains("uploadId="))
    );
}

#[tokio::test]
async fn completing_twice_makes_one_job_and_one_file() {
    // No worker yet: both completions find the job still accepted and both queue it.
    let w = World::start(Setup {
        no_workers: true,
        ..Setup::default()
    })
    .await;
    let bytes = content(MIB + 1, 3);
    let (_, session, _) = create(
        &w,
        "contoso-docs",
        json!({"name": "twice.bin", "size": bytes.len()}),
    )
    .await;
    let id = session["session"].as_str().unwrap();
    assert_eq!(put(&session["upload"], bytes.clone()).await.0, 200);
    let (s1, first, _) = complete(&w, "contoso-docs", id, json!({})).await;
    let (s2, second, _) = complete(&w, "contoso-docs", id, json!({})).await;
    assert_eq!((s1, s2), (202, 202), "{first} {second}");
    assert_eq!(first["job"], second["job"]);
    // Two messages for one job: the first uploads, the second finds the job finished.
    assert_eq!(run_queue_one_by_one(&w).await, 2);
    let end = job_end(&w, first["status_url"].as_str().unwrap()).await;
    assert_eq!(end["status"], "done", "{end}");
    // After the end, completing again answers the job's result, marked as a replay.
    let (s3, third, headers) = complete(&w, "contoso-docs", id, json!({})).await;
    assert_eq!(s3, 201, "{third}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(third["path"], end["result"]["path"]);
    let stored: Vec<_> = w
        .library()
        .into_iter()
        .filter(|(p, _, _)| p.contains("twice"))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/twice.bin")).unwrap(), bytes);
    // A repeated creation (the same webhook-id) finds the same, now finished, session.
    let body = json!({"name": "again.bin", "size": 5});
    let first = signed_json("/uploads/contoso-docs/sessions", "msg_same", &body);
    let (status, created, _) = w.send_raw(first).await;
    assert_eq!(status, 201, "{created}");
    let again = signed_json("/uploads/contoso-docs/sessions", "msg_same", &body);
    let (status, refreshed, headers) = w.send_raw(again).await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(created["session"], refreshed["session"]);
}

#[tokio::test]
async fn completing_before_the_upload_is_a_409_and_the_session_stays_usable() {
    let w = World::start(Setup::default()).await;
    let bytes = content(200_000, 5);
    let (_, session, _) = create(
        &w,
        "contoso-docs",
        json!({"name": "early.bin", "size": bytes.len()}),
    )
    .await;
    let id = session["session"].as_str().unwrap();
    let (status, body, _) = complete(&w, "contoso-docs", id, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing has been uploaded"),
        "{body}"
    );
    assert!(w.library().iter().all(|(p, _, _)| !p.contains("early")));
    // An unknown session id and a malformed one are a 404.
    for other in ["0123456789abcdef0123456789abcdef", "not-a-session"] {
        let (status, body, _) = complete(&w, "contoso-docs", other, json!({})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
    }
    assert_eq!(put(&session["upload"], bytes.clone()).await.0, 200);
    let (status, done, _) = complete(&w, "contoso-docs", id, json!({})).await;
    assert_eq!(status, 202, "{done}");
    let end = job_end(&w, done["status_url"].as_str().unwrap()).await;
    assert_eq!(end["status"], "done", "{end}");
    assert_eq!(w.bytes(&format!("{SP_LIB}/early.bin")).unwrap(), bytes);
}

#[tokio::test]
async fn a_wrong_size_or_sha256_is_a_422_and_nothing_is_stored() {
    let w = World::start(Setup::default()).await;
    let bytes = content(300_000, 9);
    // moto does not enforce the signed Content-Length (AWS S3 refuses such a PUT outright), so
    // the short body reaches the bucket and completion must catch it.
    let (_, session, _) = create(
        &w,
        "contoso-docs",
        json!({"name": "short.bin", "size": bytes.len()}),
    )
    .await;
    let id = session["session"].as_str().unwrap();
    assert_eq!(put(&session["upload"], bytes[..1000].to_vec()).await.0, 200);
    let (status, body, _) = complete(&w, "contoso-docs", id, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("unprocessable")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("1000 bytes") && message.contains("300000"),
        "{message}"
    );
    // The job shows the same failure; completing again does not revive it.
    let end = job_end(&w, session["status_url"].as_str().unwrap()).await;
    assert_eq!(end["status"], "failed");
    assert_eq!(end["error"]["error"], "unprocessable");
    let (status, _, _) = complete(&w, "contoso-docs", id, json!({})).await;
    assert_eq!(status, 422);

    // The declared SHA-256 of other bytes of the same size.
    let (_, session2, _) = create(
        &w,
        "contoso-docs",
        json!({"name": "tampered.bin", "size": bytes.len(),
               "sha256": crate::ingest::hex_of(&Sha256::digest(b"something else"))}),
    )
    .await;
    let id2 = session2["session"].as_str().unwrap();
    assert_eq!(put(&session2["upload"], bytes.clone()).await.0, 200);
    let (status, body, _) = complete(&w, "contoso-docs", id2, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("unprocessable")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("SHA-256"),
        "{body}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.library()
            .iter()
            .all(|(p, _, _)| !p.contains("short") && !p.contains("tampered")),
        "{:?}",
        w.library()
    );
    // The refused bytes are gone from the bucket.
    let keys = staged_keys(&w).await;
    assert!(keys.iter().all(|k| k.ends_with("/session")), "{keys:?}");
}

const TEMPLATE: &str = include_str!("../../template.yaml");

/// The staging bucket's CORS rule in `template.yaml` (under its `!If`), for `origin`.
fn template_cors(origin: &str) -> aws_sdk_s3::types::CorsConfiguration {
    use aws_sdk_s3::types::{CorsConfiguration, CorsRule};
    use serde_norway::Value as Yaml;
    let t: Yaml = serde_norway::from_str(TEMPLATE).expect("template.yaml is YAML");
    let Yaml::Tagged(cors) = &t["Resources"]["StagingBucket"]["Properties"]["CorsConfiguration"]
    else {
        panic!("the staging bucket's CORS is an !If on DirectUploadOrigins")
    };
    assert_eq!(cors.value[0], "HasDirectUploadOrigins");
    let rule = &cors.value[1]["CorsRules"][0];
    let list = |k: &str| -> Vec<String> {
        rule[k]
            .as_sequence()
            .unwrap_or_else(|| panic!("{k} is a list"))
            .iter()
            .map(|v| v.as_str().expect("text").to_owned())
            .collect()
    };
    let mut r = CorsRule::builder()
        .allowed_origins(origin)
        .max_age_seconds(rule["MaxAge"].as_i64().expect("MaxAge") as i32);
    for m in list("AllowedMethods") {
        r = r.allowed_methods(m);
    }
    for h in list("AllowedHeaders") {
        r = r.allowed_headers(h);
    }
    for h in list("ExposedHeaders") {
        r = r.expose_headers(h);
    }
    CorsConfiguration::builder()
        .cors_rules(r.build().expect("rule"))
        .build()
        .expect("configuration")
}

#[test]
fn the_receiver_may_stage_and_check_uploads_but_nothing_more_in_s3() {
    use serde_norway::Value as Yaml;
    let t: Yaml = serde_norway::from_str(TEMPLATE).expect("template.yaml is YAML");
    let mut s3: Vec<(String, String)> = Vec::new();
    for p in t["Resources"]["UploadIngestFunction"]["Properties"]["Policies"]
        .as_sequence()
        .unwrap()
    {
        for st in p["Statement"].as_sequence().unwrap() {
            let actions: Vec<&Yaml> = match st["Action"].as_sequence() {
                Some(a) => a.iter().collect(),
                None => vec![&st["Action"]],
            };
            for a in actions {
                let a = a.as_str().unwrap();
                if a.starts_with("s3:") {
                    s3.push((
                        a.to_owned(),
                        serde_norway::to_string(&st["Resource"]).unwrap(),
                    ));
                }
            }
        }
    }
    s3.sort();
    let on_objects = "!Sub ${StagingBucket.Arn}/*\n";
    let expected = [
        ("s3:DeleteObject", on_objects),
        ("s3:GetObject", on_objects),
        ("s3:ListBucket", "!GetAtt StagingBucket.Arn\n"),
        ("s3:PutObject", on_objects),
    ];
    let got: Vec<(&str, &str)> = s3.iter().map(|(a, r)| (a.as_str(), r.as_str())).collect();
    assert_eq!(got, expected);
}

/// upload-ingest's answer as the HTTP response a function URL would send.
/// Like a function URL it says the scheme the client used (plain HTTP here), so `status_url`
/// and `complete_url` point back at this port.
async fn ingest_response(
    w: &World,
    mut req: lambda_http::Request,
) -> lambda_http::Response<lambda_http::Body> {
    req.headers_mut()
        .insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
    let (status, body, headers) = w.send_raw(req).await;
    let mut resp = lambda_http::Response::builder().status(status);
    for (k, v) in headers {
        resp = resp.header(k, v);
    }
    resp.body(lambda_http::Body::from(body.to_string()))
        .expect("response")
}

#[tokio::test]
async fn a_browser_uploads_20_mib_through_the_example_page() {
    // Small parts, so the 20 MiB file goes as 4 parallel part PUTs whose ETags the page reads
    // through CORS; a 1 MiB file goes as one PUT.
    let w = std::sync::Arc::new(World::start(small_parts()).await);
    let ingest = {
        let w = w.clone();
        spbridge_tests::browser::serve(spbridge_tests::browser::bind().await, move |req| {
            let w = w.clone();
            async move { ingest_response(&w, req).await }
        })
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = format!("http://127.0.0.1:{port}");
    // The staging bucket's CORS rule from template.yaml, for the page's origin.
    spbridge_tests::s3_client(&w.infra.sdk)
        .put_bucket_cors()
        .bucket(&w.infra.bucket)
        .cors_configuration(template_cors(&origin))
        .send()
        .await
        .expect("bucket CORS set");
    // moto answers the preflight from the bucket's rule: the page's origin yes, others no.
    let preflight = |from: &str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/{}/x", spbridge_tests::moto().url(), w.infra.bucket),
            )
            .header("origin", from)
            .header("access-control-request-method", "PUT")
            .send()
    };
    let ok = preflight(&origin).await.unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.headers());
    assert_eq!(ok.headers()["access-control-expose-headers"], "ETag");
    assert_eq!(
        preflight("http://evil.example").await.unwrap().status(),
        403
    );

    let dir = tempfile::tempdir().unwrap();
    let big = content(20 * MIB, 21);
    let small = content(MIB, 22);
    let (big_path, small_path) = (
        dir.path().join("site-20mib.bin"),
        dir.path().join("site-1mib.bin"),
    );
    std::fs::write(&big_path, &big).unwrap();
    std::fs::write(&small_path, &small).unwrap();
    let started = std::time::Instant::now();
    let out = spbridge_tests::browser::run_node(
        "direct_upload.mjs",
        &[
            ("SPBRIDGE_URL", ingest.base.clone()),
            ("SPBRIDGE_CONNECTION", "contoso-docs".into()),
            ("SPBRIDGE_WEBHOOK_SECRET", WHSEC.into()),
            ("PORT", port.to_string()),
            (
                "FILES",
                format!("{},{}", big_path.display(), small_path.display()),
            ),
        ],
    )
    .await;
    let summary: Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("direct_upload.mjs printed no summary ({e}): {out}"));
    eprintln!(
        "browser direct uploads in {:?}: {summary}",
        started.elapsed()
    );
    assert_eq!(summary["uploads"][0]["puts"], 4, "{summary}");
    assert_eq!(summary["uploads"][1]["puts"], 1, "{summary}");
    assert_eq!(
        w.bytes(&format!("{SP_LIB}/website/site-20mib.bin"))
            .expect("20 MiB file stored"),
        big
    );
    assert_eq!(
        w.bytes(&format!("{SP_LIB}/website/site-1mib.bin"))
            .expect("1 MiB file stored"),
        small
    );
    w.assert_no_half_files();
}

#[tokio::test]
async fn the_readme_curl_example_uploads_a_file() {
    let w = std::sync::Arc::new(World::start(Setup::default()).await);
    let ingest = {
        let w = w.clone();
        spbridge_tests::browser::serve(spbridge_tests::browser::bind().await, move |req| {
            let w = w.clone();
            async move { ingest_response(&w, req).await }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = content(2 * MIB + 5, 33);
    let path = dir.path().join("from-curl.bin");
    std::fs::write(&path, &bytes).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/direct-upload/curl.sh"
    );
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg(&path)
        .arg("contoso-docs")
        .env("SPBRIDGE_URL", &ingest.base)
        .env("SPBRIDGE_WEBHOOK_SECRET", WHSEC)
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""status":"done""#), "{stdout}");
    assert!(
        !stdout.contains("X-Amz-Signature"),
        "the presigned URL was printed: {stdout}"
    );
    assert_eq!(
        w.bytes(&format!("{SP_LIB}/from-curl.bin")).expect("stored"),
        bytes
    );
}
