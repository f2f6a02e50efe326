//! Test support: starting moto and the emulator, loading events.
//!
//! [`moto()`] gives every test in the process one moto server (Secrets Manager API over a real
//! socket); [`moto_store()`] and [`moto_client()`] point the AWS SDK at it with dummy credentials.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::{
    Client,
    config::{Credentials, Region, retry::RetryConfig},
};
use shared::secrets::AwsSecretStore;

pub mod browser;
pub mod outages;
pub mod secret_values;

/// Use this moto instead of starting one (e.g. `http://127.0.0.1:5000`).
pub const MOTO_URL_VAR: &str = "SPBRIDGE_TEST_MOTO_URL";
/// Path of the `moto_server` executable; default: [`MOTO_SERVER`].
pub const MOTO_SERVER_VAR: &str = "SPBRIDGE_MOTO_SERVER";
/// moto's server with DynamoDB's atomic conditional writes (`support/moto_server.py`; it needs
/// the venv's `python3` on `PATH`, as `scripts/venv.sh` sets).
pub const MOTO_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/support/moto_server.py");

/// A running moto server.
#[derive(Debug)]
pub struct MotoHandle {
    url: String,
}

impl MotoHandle {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

static MOTO: OnceLock<MotoHandle> = OnceLock::new();

/// The process-wide moto server: `$SPBRIDGE_TEST_MOTO_URL` if set, otherwise [`MOTO_SERVER`]
/// started on a free port on first use.
///
/// The server is watched by a tiny shell loop that kills it once this test process is gone
/// (statics are never dropped, and a crashed or killed test run must not leave moto behind).
pub fn moto() -> &'static MotoHandle {
    MOTO.get_or_init(|| {
        let given = std::env::var(MOTO_URL_VAR).unwrap_or_default();
        if !given.trim().is_empty() {
            let url = given.trim().trim_end_matches('/').to_owned();
            wait_until_up(&url, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{MOTO_URL_VAR}={url} does not answer: {e}"));
            return MotoHandle { url };
        }
        let bin = std::env::var(MOTO_SERVER_VAR).unwrap_or_else(|_| MOTO_SERVER.to_owned());
        let mut last_error = String::new();
        // A free port can be taken between probing and moto binding it; try a few.
        for _ in 0..3 {
            let port = free_port();
            spawn_watched(&bin, port);
            let url = format!("http://127.0.0.1:{port}");
            match wait_until_up(&url, Duration::from_secs(30)) {
                Ok(()) => return MotoHandle { url },
                Err(e) => last_error = e,
            }
        }
        panic!(
            "could not start {bin} (put moto[server] on PATH, or set {MOTO_SERVER_VAR} or \
             {MOTO_URL_VAR}): {last_error}"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free local port: {e}"))
}

/// Starts `bin` under a shell that kills it when this process (or moto itself) exits.
fn spawn_watched(bin: &str, port: u16) {
    let script = r#"
        "$1" -H 127.0.0.1 -p "$2" >/dev/null 2>&1 &
        moto=$!
        while kill -0 "$3" 2>/dev/null && kill -0 "$moto" 2>/dev/null; do sleep 0.5; done
        kill "$moto" 2>/dev/null
    "#;
    let mut watcher = Command::new("sh")
        .args(["-c", script, "spbridge-moto-watch", bin, &port.to_string()])
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh to start {bin}: {e}"));
    // Reap the watcher if moto dies early, so it does not linger as a zombie.
    std::thread::spawn(move || watcher.wait());
}

/// Polls until an HTTP request to `url` gets an HTTP answer.
fn wait_until_up(url: &str, within: Duration) -> Result<(), String> {
    let addr = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url} is not an http:// URL"))?
        .trim_end_matches('/');
    let deadline = Instant::now() + within;
    let mut last = String::from("not tried");
    while Instant::now() < deadline {
        match probe(addr) {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no answer within {within:?}: {last}"))
}

fn probe(addr: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    if &head == b"HTTP/" {
        Ok(())
    } else {
        Err(std::io::Error::other("not an HTTP answer"))
    }
}

/// A Secrets Manager client for moto: region us-east-1, dummy static credentials, endpoint set
/// on the client itself so no `AWS_*` variable in the environment can redirect it.
pub async fn moto_client() -> Client {
    secrets_client(moto().url(), true).await
}

/// A Secrets Manager client for any local endpoint (moto, or a canned-response server), with
/// the SDK's standard retries or none.
pub async fn secrets_client(endpoint: &str, retries: bool) -> Client {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "spbridge-tests",
        ))
        .load()
        .await;
    let mut conf = aws_sdk_secretsmanager::config::Builder::from(&sdk).endpoint_url(endpoint);
    if !retries {
        conf = conf.retry_config(RetryConfig::disabled());
    }
    Client::from_conf(conf.build())
}

/// The production Secrets Manager adapter, pointed at moto.
pub async fn moto_store() -> AwsSecretStore {
    AwsSecretStore::from_client(moto_client().await)
}

/// A secret-name prefix no other test uses, e.g. `spbridge-test/3f2a…/`.
pub fn unique_prefix() -> String {
    format!("spbridge-test/{}/", uuid::Uuid::new_v4().simple())
}

/// An AWS SDK configuration for moto (all services): us-east-1, dummy credentials, endpoint moto.
pub async fn moto_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "spbridge-tests",
        ))
        .endpoint_url(moto().url())
        .load()
        .await
}

/// A jobs table, queue (with its dead-letter queue) and staging bucket of their own in moto.
#[derive(Debug, Clone)]
pub struct JobsInfra {
    /// The SDK configuration they were made with.
    pub sdk: aws_config::SdkConfig,
    /// DynamoDB table name (key `job`).
    pub table: String,
    /// Job queue URL.
    pub queue_url: String,
    /// Dead-letter queue URL.
    pub dlq_url: String,
    /// Dead-letter queue ARN.
    pub dlq_arn: String,
    /// Staging bucket.
    pub bucket: String,
}

impl JobsInfra {
    /// Creates them under fresh names; `max_receives` is the queue's redrive `maxReceiveCount`.
    pub async fn create(max_receives: u32) -> JobsInfra {
        Self::create_with(max_receives, 30).await
    }

    /// [`JobsInfra::create`] with the queue's visibility timeout (seconds).
    pub async fn create_with(max_receives: u32, visibility_secs: u32) -> JobsInfra {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        use aws_sdk_sqs::types::QueueAttributeName;
        let sdk = moto_sdk_config().await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let table = format!("spbridge-jobs-{id}");
        aws_sdk_dynamodb::Client::new(&sdk)
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("job")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attribute"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("job")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("key"),
            )
            .send()
            .await
            .expect("table created");
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let dlq_url = sqs
            .create_queue()
            .queue_name(format!("spbridge-dlq-{id}"))
            .send()
            .await
            .expect("dlq created")
            .queue_url
            .expect("dlq url");
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("dlq attributes")
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("dlq arn");
        let redrive =
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#);
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("spbridge-jobs-{id}"))
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_secs.to_string(),
            )
            .send()
            .await
            .expect("queue created")
            .queue_url
            .expect("queue url");
        let bucket = format!("spbridge-staging-{id}");
        s3_client(&sdk)
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket created");
        JobsInfra {
            sdk,
            table,
            queue_url,
            dlq_url,
            dlq_arn,
            bucket,
        }
    }

    /// The production adapters over these resources (7-day retention).
    pub fn adapters(
        &self,
    ) -> (
        shared::jobs::DynamoJobStore,
        shared::jobs::queue::SqsQueue,
        shared::jobs::staging::S3Staging,
    ) {
        (
            shared::jobs::DynamoJobStore::new(
                aws_sdk_dynamodb::Client::new(&self.sdk),
                &self.table,
                shared::jobs::DEFAULT_RETENTION,
            ),
            shared::jobs::queue::SqsQueue::new(
                aws_sdk_sqs::Client::new(&self.sdk),
                &self.queue_url,
            ),
            shared::jobs::staging::S3Staging::new(s3_client(&self.sdk), &self.bucket),
        )
    }
}

/// An S3 client for moto (path-style addressing: no bucket subdomains on 127.0.0.1).
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Phrases that only internal errors contain: store and SDK texts, Rust panics and paths,
/// configuration variable names. None belongs in an answer to a stranger.
pub const INTERNAL_PHRASES: &[&str] = &[
    "secretsmanager",
    "secrets manager",
    "secret store",
    "resourcenotfoundexception",
    "accessdeniedexception",
    "invalid data:",
    "panicked",
    "backtrace",
    ".rs:",
    "dispatch failure",
    "reqwest::",
    "hyper::",
    "spbridge_",
];

/// Everything in `body` an unauthenticated caller must not learn: an ARN (`arn:aws…`, every
/// partition), a 12-digit AWS account id, any of `names` (secret prefix, secret names, internal
/// hosts), or one of [`INTERNAL_PHRASES`]. Case-insensitive. Empty means the body is clean.
pub fn leaks(body: &str, names: &[&str]) -> Vec<String> {
    let lower = body.to_lowercase();
    let mut found = Vec::new();
    if lower.contains("arn:aws") {
        found.push("an ARN".to_owned());
    }
    let digits_run = lower
        .split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 12);
    if let Some(run) = digits_run {
        found.push(format!("a 12-digit account id ({run})"));
    }
    for name in names.iter().filter(|n| !n.trim().is_empty()) {
        if lower.contains(&name.to_lowercase()) {
            found.push(format!("the name {name:?}"));
        }
    }
    for phrase in INTERNAL_PHRASES {
        if lower.contains(phrase) {
            found.push(format!("the internal phrase {phrase:?}"));
        }
    }
    found
}

/// Panics, naming what leaked, if `body` (an answer to an unauthenticated request, described by
/// `what`) reveals anything [`leaks`] looks for. Call it on every such answer a suite produces.
#[track_caller]
pub fn assert_reveals_nothing(what: &str, body: &str, names: &[&str]) {
    let found = leaks(body, names);
    assert!(
        found.is_empty(),
        "the answer to {what} reveals {}: {body}",
        found.join(", ")
    );
}

/// Receives up to 10 messages from `url` and builds the [`SqsEvent`] Lambda's event source
/// mapping would (`eventSourceARN` = `arn`, `ApproximateReceiveCount` set).
pub async fn sqs_event(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    arn: &str,
    wait_secs: i32,
) -> aws_lambda_events::event::sqs::SqsEvent {
    use aws_lambda_events::event::sqs::SqsEvent;
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait_secs)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .expect("receive");
    let mut event = SqsEvent::default();
    for m in out.messages.unwrap_or_default() {
        event.records.push(upload_worker::event_record(m, arn));
    }
    event
}

/// One round of Lambda's SQS event source mapping: receive a batch from `url`, run
/// upload-worker on it, delete every message not named in its batch item failures (the
/// failed ones come back when their visibility ends). Answers how many messages it ran.
pub async fn pump_once(
    state: &Result<upload_worker::State, String>,
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    arn: &str,
) -> usize {
    let event = sqs_event(sqs, url, arn, 0).await;
    let n = event.records.len();
    if n == 0 {
        return 0;
    }
    let receipts: Vec<(String, String)> = event
        .records
        .iter()
        .filter_map(|r| Some((r.message_id.clone()?, r.receipt_handle.clone()?)))
        .collect();
    let mut ctx = lambda_runtime::Context::default();
    ctx.request_id = uuid::Uuid::new_v4().to_string();
    let answer = upload_worker::handle(state, lambda_runtime::LambdaEvent::new(event, ctx)).await;
    let failed: std::collections::HashSet<String> = answer
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    for (id, receipt) in receipts {
        if !failed.contains(&id) {
            // A failed delete only means the message comes back; the worker acks it again.
            let _ = sqs
                .delete_message()
                .queue_url(url)
                .receipt_handle(receipt)
                .send()
                .await;
        }
    }
    n
}

/// A worker that polls the job queue and the dead-letter queue until the task is aborted, as
/// the two event source mappings of the template do.
pub fn spawn_worker(
    state: std::sync::Arc<Result<upload_worker::State, String>>,
    infra: &JobsInfra,
    queue_arn: &str,
) -> tokio::task::JoinHandle<()> {
    let sqs = aws_sdk_sqs::Client::new(&infra.sdk);
    let (url, dlq_url, dlq_arn, arn) = (
        infra.queue_url.clone(),
        infra.dlq_url.clone(),
        infra.dlq_arn.clone(),
        queue_arn.to_owned(),
    );
    tokio::spawn(async move {
        for round in 0u64.. {
            let mut n = pump_once(&state, &sqs, &url, &arn).await;
            // Dead letters are rare: look every tenth round.
            if round % 10 == 0 {
                n += pump_once(&state, &sqs, &dlq_url, &dlq_arn).await;
            }
            if n == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            }
        }
    })
}
