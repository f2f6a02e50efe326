//! Background uploads against moto's real DynamoDB, SQS and S3 APIs and the tenant emulator:
//! the job store's conditional writes, the queue round trip with staged bodies, and the
//! upload-worker function on SQS events built from messages moto delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use bytes::Bytes;
use http::HeaderMap;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use shared::access::Access;
use shared::api::Kind;
use shared::config::Config;
use shared::identity::TokenCache;
use shared::ingest::{ConflictMode, Content, FileName, IncomingFile, SubPath};
use shared::jobs::callback::Callbacks;
use shared::jobs::queue::{JobBody, JobMessage, JobQueue, SqsQueue, inline_bytes};
use shared::jobs::staging::{S3Staging, Staging};
use shared::jobs::upload::Uploader;
use shared::jobs::worker::{Worker, WorkerSettings};
use shared::jobs::{
    DeliveryKey, DynamoJobStore, JobError, JobFailure, JobStatus, JobStore, NewJob, Outcome,
    StatusToken, payload_hash,
};
use shared::secrets::SecretStore;
use shared::upload::RetryPolicy;
use shared::webhook::{WebhookSecret, WebhookVerifier};
use spbridge_tests::JobsInfra;
use tenant_emulator::{Emulator, FaultKind, FaultRule, Options, RunningEmulator};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SP_LIB: &str = "/sites/team/Shared Documents";

fn new_job(connection: &str, body: &[u8]) -> NewJob {
    NewJob {
        connection: connection.into(),
        delivery: DeliveryKey::webhook_id(&format!("msg_{}", uuid::Uuid::new_v4().simple())),
        payload_hash: payload_hash(body),
        bytes_total: Some(body.len() as u64),
        retention: shared::jobs::DEFAULT_RETENTION,
    }
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn file(name: &str, folder: Option<&str>, conflict: ConflictMode, bytes: &[u8]) -> IncomingFile {
    IncomingFile {
        name: FileName::parse(name).expect("name"),
        folder: folder.map(|f| SubPath::parse(f).expect("folder")),
        content: Content::Bytes(Bytes::copy_from_slice(bytes)),
        conflict,
        metadata: Default::default(),
        content_type: None,
    }
}

#[tokio::test]
async fn a_delivery_makes_one_job_however_often_it_arrives() {
    let infra = JobsInfra::create(5).await;
    let (store, _, _) = infra.adapters();
    let new = new_job("contoso-docs", b"hello");
    let now = OffsetDateTime::now_utc();
    // One after another: what a repeat sees (racing deliveries: `racing_workers_get_one_lease`).
    let mut created = Vec::new();
    for _ in 0..8 {
        created.push(store.create(&new, now).await.expect("create answers"));
    }
    assert_eq!(created.iter().filter(|c| !c.existed).count(), 1);
    assert!(created.iter().all(|c| c.job.id == new.id()));
    // Every delivery's own token opens the job; a made-up one does not.
    let job = store.get(&new.id()).await.expect("job stored");
    assert_eq!(job.status, JobStatus::Accepted);
    assert_eq!(job.progress.total, Some(5));
    assert!(created.iter().all(|c| job.token_matches(&c.token)));
    assert!(!job.token_matches(&StatusToken::generate()));
    // The same delivery id with another body is refused.
    let mut other = new.clone();
    other.payload_hash = payload_hash(b"something else");
    assert!(matches!(
        store.create(&other, now).await,
        Err(JobError::IdReused)
    ));
}

#[tokio::test]
async fn one_worker_holds_a_job_and_a_lapsed_lease_is_taken_over() {
    let infra = JobsInfra::create(5).await;
    let (store, _, _) = infra.adapters();
    let new = new_job("contoso-docs", b"x");
    let now = OffsetDateTime::now_utc();
    store.create(&new, now).await.expect("created");
    let id = new.id();
    let until = now + Duration::from_secs(60);
    // Two workers get the same message (SQS standard queues deliver at least once), one after
    // the other here; racing ones: `racing_workers_get_one_lease`.
    let (first, job) = store
        .acquire(&id, "worker-a", until, now)
        .await
        .expect("first worker takes the job");
    assert_eq!(job.status, JobStatus::Uploading);
    assert_eq!(job.attempts, 1);
    match store.acquire(&id, "worker-b", until, now).await {
        Err(JobError::LeaseHeld { until: held }) => {
            assert_eq!(held.unix_timestamp(), until.unix_timestamp())
        }
        other => panic!("second worker must be refused: {other:?}"),
    }
    assert_eq!(store.get(&id).await.unwrap().attempts, 1);

    // After the lease lapses another worker takes the job with a higher generation, and the
    // first worker can no longer write.
    let later = until + Duration::from_secs(1);
    let (second, job) = store
        .acquire(&id, "worker-c", later + Duration::from_secs(60), later)
        .await
        .expect("lapsed lease taken over");
    assert!(second.generation > first.generation);
    assert_eq!(job.attempts, 2);
    let done = Outcome::Done(json!({"path": "/x"}));
    assert!(matches!(
        store.finish(&first, &done, later).await,
        Err(JobError::LeaseLost)
    ));
    let job = store.finish(&second, &done, later).await.expect("finished");
    assert_eq!(job.status, JobStatus::Done);
    assert_eq!(job.result, Some(json!({"path": "/x"})));
    assert!(job.lease.is_none());

    // Done is final: no lease, no abandon, no second finish.
    assert!(matches!(
        store
            .acquire(&id, "worker-d", later + Duration::from_secs(600), later)
            .await,
        Err(JobError::Finished(_))
    ));
    let failure = JobFailure::new(Kind::Internal, "late");
    assert!(matches!(
        store.abandon(&id, &failure, later).await,
        Err(JobError::Finished(_))
    ));
    assert_eq!(store.get(&id).await.unwrap().status, JobStatus::Done);
}

/// Workers racing for one job get one lease between them, and deliveries racing to record it
/// make one job. This is DynamoDB's per-item serialization, which the test moto provides
/// (`tests/support/moto_server.py`); plain moto let two of eight racers win in about one round
/// of five.
#[tokio::test]
async fn racing_workers_get_one_lease() {
    let infra = JobsInfra::create(5).await;
    let (store, _, _) = infra.adapters();
    let now = OffsetDateTime::now_utc();
    let until = now + Duration::from_secs(60);
    for round in 0..25 {
        let new = new_job("contoso-docs", format!("race {round}").as_bytes());
        let created = futures_util::future::join_all((0..8).map(|_| store.create(&new, now))).await;
        let fresh = created
            .iter()
            .filter(|c| matches!(c, Ok(c) if !c.existed))
            .count();
        assert_eq!(fresh, 1, "round {round}: one delivery records the job");
        let id = new.id();
        let owners: Vec<String> = (0..8).map(|i| format!("worker-{i}")).collect();
        let tries = futures_util::future::join_all(
            owners.iter().map(|o| store.acquire(&id, o, until, now)),
        )
        .await;
        let won = tries.iter().filter(|t| t.is_ok()).count();
        assert_eq!(won, 1, "round {round}: one worker holds the job");
        assert!(
            tries
                .iter()
                .all(|t| matches!(t, Ok(_) | Err(JobError::LeaseHeld { .. }))),
            "round {round}: the others are told the lease is held"
        );
        assert_eq!(store.get(&id).await.expect("job").attempts, 1);
    }
}

#[tokio::test]
async fn an_abandoned_job_shows_failed_and_stays_failed() {
    let infra = JobsInfra::create(5).await;
    let (store, _, _) = infra.adapters();
    let new = new_job("contoso-docs", b"x");
    let now = OffsetDateTime::now_utc();
    store.create(&new, now).await.unwrap();
    let failure = JobFailure::new(Kind::Unavailable, "gone to the dead-letter queue");
    let job = store.abandon(&new.id(), &failure, now).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.to_json()["error"]["error"], "unavailable");
    assert!(matches!(
        store
            .acquire(&new.id(), "w", now + Duration::from_secs(60), now)
            .await,
        Err(JobError::Finished(_))
    ));
    // A repeated delivery of the finished job still gets the job, not a new one.
    let again = store.create(&new, now).await.unwrap();
    assert!(again.existed);
    assert_eq!(again.job.status, JobStatus::Failed);
}

/// The messages moto delivers now, as the SQS event Lambda would build.
async fn receive(sqs: &aws_sdk_sqs::Client, url: &str, arn: &str, wait: i32) -> SqsEvent {
    spbridge_tests::sqs_event(sqs, url, arn, wait).await
}

/// The staged object's bytes, read with a plain S3 client.
async fn staged_bytes(infra: &JobsInfra, key: &str) -> Vec<u8> {
    let out = spbridge_tests::s3_client(&infra.sdk)
        .get_object()
        .bucket(&infra.bucket)
        .key(key)
        .send()
        .await
        .expect("staged object exists");
    out.body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec()
}

#[tokio::test]
async fn messages_round_trip_through_sqs_with_large_bodies_staged() {
    let infra = JobsInfra::create(5).await;
    let (_, queue, staging) = infra.adapters();
    let small = content(1024);
    let large = content(300 * 1024);
    let new = new_job("c", b"");
    let msg = shared::ingest::pipeline::job_message(
        &new,
        "c",
        vec![
            file("small.bin", None, ConflictMode::Fail, &small),
            file("large.bin", Some("a/b"), ConflictMode::Replace, &large),
        ],
        None,
        &staging,
    )
    .await
    .expect("built");
    assert!(matches!(msg.files[0].body, JobBody::Inline { .. }));
    assert!(matches!(msg.files[1].body, JobBody::Staged { .. }));
    assert_eq!(msg.total_bytes(), Some((small.len() + large.len()) as u64));
    queue.send(&msg).await.expect("sent");

    let sqs = aws_sdk_sqs::Client::new(&infra.sdk);
    let event = receive(&sqs, &infra.queue_url, "arn:jobs", 1).await;
    assert_eq!(event.records.len(), 1);
    let got: JobMessage =
        serde_json::from_str(event.records[0].body.as_deref().unwrap()).expect("job message");
    assert_eq!(got, msg);
    let JobBody::Inline { base64 } = &got.files[0].body else {
        panic!("inline")
    };
    assert_eq!(inline_bytes(base64).unwrap(), small);
    let JobBody::Staged { key, size, .. } = &got.files[1].body else {
        panic!("staged")
    };
    assert_eq!(*size, large.len() as u64);
    assert_eq!(staged_bytes(&infra, key).await, large);
    let opened = staging.open(key, 0, None).await.expect("staged body opens");
    assert_eq!(opened.len(), Some(large.len() as u64));
    // A resumed job reads from its offset (a ranged GET), not the whole object again.
    let from = staging
        .open(key, 1000, None)
        .await
        .expect("a ranged read opens");
    assert_eq!(from.len(), Some(large.len() as u64 - 1000));
    let rest = from.read_to_end(large.len()).await.expect("the rest reads");
    assert_eq!(rest, large[1000..]);
    // Another version of the object than the one named is refused.
    assert!(matches!(
        staging.open(key, 0, Some("\"not-its-etag\"")).await,
        Err(shared::jobs::staging::StagingError::Changed(_))
    ));
    assert_eq!(got.files[1].folder, "a/b");
    staging.delete(key).await.expect("deleted");
    assert!(staging.open(key, 0, None).await.is_err());
}

struct Bench {
    emu: RunningEmulator,
    infra: JobsInfra,
    jobs: DynamoJobStore,
    queue: SqsQueue,
    staging: S3Staging,
    sqs: aws_sdk_sqs::Client,
    state: Result<upload_worker::State, String>,
    /// The staged keys of the last accepted job.
    staged: std::sync::Mutex<Vec<String>>,
}

impl Bench {
    async fn start(opts: Options, max_receives: u32) -> Bench {
        let emu = Emulator::start(opts).await.expect("emulator starts");
        let info = emu.info().clone();
        let infra = JobsInfra::create(max_receives).await;
        let prefix = spbridge_tests::unique_prefix();
        let env: HashMap<&str, String> = HashMap::from([
            ("SPBRIDGE_SECRET_PREFIX", prefix.clone()),
            ("SPBRIDGE_SECRET_BACKEND", "aws".into()),
            ("SPBRIDGE_GRAPH_URL", info.graph.clone()),
            ("SPBRIDGE_ACS_URL", info.acs.clone()),
            ("SPBRIDGE_LOGIN_URL", info.login.clone()),
            ("SPBRIDGE_SOURCE_URL_ALLOW_LOOPBACK", "true".into()),
            ("SPBRIDGE_SECRET_CACHE_TTL_SECS", "0".into()),
        ]);
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("config");
        let store: Arc<dyn SecretStore> = Arc::new(spbridge_tests::moto_store().await);
        let site = info.site("team").expect("site").clone();
        let acs = info.acs_app("acs-app").expect("acs-app");
        let put = |name: String, v: Value| {
            let store = store.clone();
            async move { store.put(&name, &v, None).await.expect("secret written") }
        };
        put(format!("{prefix}webhook"), json!({"secrets": [WHSEC]})).await;
        // Callbacks are signed with the newest of the connection's own sender secrets.
        for id in ["contoso-docs", "lapsed"] {
            put(
                format!("{prefix}senders/{id}"),
                json!({"webhook_secrets": [WHSEC, "whsec_b2xkZXItc2VjcmV0LXN0aWxsLWFjY2VwdGVk"]}),
            )
            .await;
        }
        put(
            format!("{prefix}acs-app"),
            json!({"client_id": acs.client_id, "client_secret": acs.client_secret,
                   "realm": info.realm, "tenant_id": info.tenant_id}),
        )
        .await;
        put(
            format!("{prefix}connections/contoso-docs"),
            json!({"provider": "acs", "auth": "app_only", "status": "active",
                   "app_secret": format!("{prefix}acs-app"), "realm": info.realm,
                   "target": {"kind": "sharepoint", "site_url": site.url, "library": "Shared Documents"}}),
        )
        .await;
        put(
            format!("{prefix}connections/lapsed"),
            json!({"provider": "acs", "auth": "app_only", "status": "needs_consent",
                   "status_code": "invalid_grant",
                   "app_secret": format!("{prefix}acs-app"), "realm": info.realm,
                   "target": {"kind": "sharepoint", "site_url": site.url, "library": "Shared Documents"}}),
        )
        .await;
        let http = shared::http::build_client(&config.http).expect("client");
        let access = Access::new(
            http.clone(),
            config.endpoints.clone(),
            Arc::new(TokenCache::new(Duration::from_secs(300))),
            store.clone(),
            config.secrets.clone(),
        );
        let uploader = Uploader::new(
            http.clone(),
            config.endpoints.graph.clone(),
            config.ingest.chunk_bytes,
            Arc::new(access),
        )
        .with_retry(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_total_wait: Duration::from_millis(200),
        });
        let mut callbacks = Callbacks::new(http);
        callbacks.allow_loopback = true;
        callbacks.base_delay = Duration::from_millis(20);
        let (jobs, queue, staging) = infra.adapters();
        let worker = Worker {
            jobs: Arc::new(jobs.clone()),
            queue: Arc::new(queue.clone()),
            staging: Arc::new(staging.clone()),
            store,
            secrets: config.secrets.clone(),
            uploader,
            callbacks,
            sources: shared::jobs::fetch::source_client(&config.http, true).expect("client"),
            max_source_bytes: config.ingest.max_source_bytes,
            settings: WorkerSettings {
                max_receives,
                lease: Duration::from_secs(60),
                base_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(5),

                ..WorkerSettings::default()
            },
            clock: Arc::new(OffsetDateTime::now_utc),
        };
        let state = Ok(upload_worker::State::new(
            worker,
            Some(infra.dlq_arn.clone()),
        ));
        let sqs = aws_sdk_sqs::Client::new(&infra.sdk);
        Bench {
            emu,
            infra,
            jobs,
            queue,
            staging,
            sqs,
            state,
            staged: Default::default(),
        }
    }

    /// Records and queues a job for `files`, as the receiver will.
    async fn accept(
        &self,
        connection: &str,
        files: Vec<IncomingFile>,
        callback: Option<url::Url>,
    ) -> shared::jobs::JobId {
        let new = new_job(connection, b"body");
        self.jobs
            .create(&new, OffsetDateTime::now_utc())
            .await
            .expect("job");
        let msg =
            shared::ingest::pipeline::job_message(&new, connection, files, callback, &self.staging)
                .await
                .expect("message");
        *self.staged.lock().unwrap() = msg.staged_keys().map(str::to_owned).collect();
        self.queue.send(&msg).await.expect("queued");
        new.id()
    }

    /// Delivers what the queue holds to the worker; answers the failed message ids.
    async fn deliver(&self) -> (usize, Vec<String>) {
        let event = receive(
            &self.sqs,
            &self.infra.queue_url,
            "arn:aws:sqs:us-east-1:123456789012:jobs",
            1,
        )
        .await;
        self.run(event).await
    }

    async fn run(&self, event: SqsEvent) -> (usize, Vec<String>) {
        let n = event.records.len();
        let mut ctx = Context::default();
        ctx.request_id = uuid::Uuid::new_v4().to_string();
        let answer = upload_worker::handle(&self.state, LambdaEvent::new(event, ctx)).await;
        let failed = answer
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        (n, failed)
    }
}

#[tokio::test]
async fn the_worker_lands_inline_and_staged_files_and_ends_the_job() {
    let b = Bench::start(Options::default(), 5).await;
    let small = content(2048);
    let large = content(700 * 1024);
    let id = b
        .accept(
            "contoso-docs",
            vec![
                file("small.bin", Some("jobs"), ConflictMode::Fail, &small),
                file("large.bin", Some("jobs"), ConflictMode::Fail, &large),
            ],
            None,
        )
        .await;
    let (n, failed) = b.deliver().await;
    assert_eq!((n, failed.len()), (1, 0), "{failed:?}");
    assert_eq!(
        b.emu
            .file_bytes(&format!("{SP_LIB}/jobs/small.bin"))
            .unwrap(),
        small
    );
    assert_eq!(
        b.emu
            .file_bytes(&format!("{SP_LIB}/jobs/large.bin"))
            .unwrap(),
        large
    );
    let job = b.jobs.get(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Done);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.progress.done, (small.len() + large.len()) as u64);
    let result = job.result.clone().expect("result");
    assert_eq!(result[1]["path"], format!("{SP_LIB}/jobs/large.bin"));
    assert_eq!(result[1]["size"], large.len() as u64);
    // The staged body is gone, and the message was deleted (nothing comes back).
    let staged = b.staged.lock().unwrap().clone();
    assert_eq!(staged.len(), 1, "the large file was staged");
    assert!(b.staging.open(&staged[0], 0, None).await.is_err());
    let again = receive(&b.sqs, &b.infra.queue_url, "arn", 0).await;
    assert!(again.records.is_empty());
}

#[tokio::test]
async fn a_permanent_error_ends_the_job_once() {
    let b = Bench::start(Options::default(), 5).await;
    let first = content(100);
    b.accept(
        "contoso-docs",
        vec![file("taken.txt", None, ConflictMode::Fail, &first)],
        None,
    )
    .await;
    assert_eq!(b.deliver().await.1.len(), 0);
    let id = b
        .accept(
            "contoso-docs",
            vec![file("taken.txt", None, ConflictMode::Fail, &content(5))],
            None,
        )
        .await;
    // Read the message ourselves so the same message can be delivered twice.
    let event = receive(&b.sqs, &b.infra.queue_url, "arn", 1).await;
    let (_, failed) = b.run(event.clone()).await;
    assert!(
        failed.is_empty(),
        "a permanent error is not retried: {failed:?}"
    );
    let job = b.jobs.get(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.to_json()["error"].clone();
    assert_eq!(error["error"], "conflict", "{error}");
    assert_eq!(job.attempts, 1);
    assert_eq!(
        b.emu.file_bytes(&format!("{SP_LIB}/taken.txt")).unwrap(),
        first
    );
    // A duplicate delivery of the same message changes nothing.
    let (_, failed) = b.run(event).await;
    assert!(failed.is_empty());
    assert_eq!(b.jobs.get(&id).await.unwrap().attempts, 1);

    // A connection that needs consent fails at once too.
    let id = b
        .accept(
            "lapsed",
            vec![file("x.txt", None, ConflictMode::Fail, b"x")],
            None,
        )
        .await;
    assert!(b.deliver().await.1.is_empty());
    let job = b.jobs.get(&id).await.unwrap();
    assert_eq!(job.to_json()["error"]["error"], "needs_consent");
}

#[tokio::test]
async fn a_transient_fault_is_a_batch_failure_then_lands_on_redelivery() {
    let b = Bench::start(Options::default(), 5).await;
    b.emu.add_fault(FaultRule::new(
        "/sites/team/_api",
        FaultKind::Status {
            status: 503,
            retry_after: Some(0),
        },
    ));
    let data = content(4096);
    let id = b
        .accept(
            "contoso-docs",
            vec![file("later.bin", None, ConflictMode::Fail, &data)],
            None,
        )
        .await;
    let (n, failed) = b.deliver().await;
    assert_eq!((n, failed.len()), (1, 1), "the item is reported failed");
    let job = b.jobs.get(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Uploading);
    assert!(job.lease.is_none(), "the lease is given back for the retry");
    assert!(b.emu.file_bytes(&format!("{SP_LIB}/later.bin")).is_none());
    // The message is hidden for the backoff, then comes back and lands.
    assert!(
        receive(&b.sqs, &b.infra.queue_url, "arn", 0)
            .await
            .records
            .is_empty()
    );
    b.emu.clear_faults();
    let event = receive(&b.sqs, &b.infra.queue_url, "arn", 5).await;
    assert_eq!(event.records.len(), 1);
    assert_eq!(event.records[0].attributes["ApproximateReceiveCount"], "2");
    let (_, failed) = b.run(event).await;
    assert!(failed.is_empty());
    let job = b.jobs.get(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Done);
    assert_eq!(job.attempts, 2);
    assert_eq!(
        b.emu.file_bytes(&format!("{SP_LIB}/later.bin")).unwrap(),
        data
    );
}

#[tokio::test]
async fn the_last_allowed_receive_ends_a_failing_job_and_a_dead_letter_fails_its_job() {
    let b = Bench::start(Options::default(), 1).await;
    b.emu.add_fault(FaultRule::new(
        "/sites/team/_api",
        FaultKind::Status {
            status: 503,
            retry_after: Some(0),
        },
    ));
    let id = b
        .accept(
            "contoso-docs",
            vec![file("never.bin", None, ConflictMode::Fail, b"n")],
            None,
        )
        .await;
    // maxReceiveCount 1: the first receive is the last, so the job fails instead of looping.
    assert!(b.deliver().await.1.is_empty());
    let job = b.jobs.get(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let message = job.error.clone().unwrap().message;
    assert!(message.starts_with("gave up after 1 attempts"), "{message}");

    // A worker that dies (receives the message and never answers) sends it to the DLQ.
    let id = b
        .accept(
            "contoso-docs",
            vec![file("poison.bin", None, ConflictMode::Fail, b"p")],
            None,
        )
        .await;
    let crashed = receive(&b.sqs, &b.infra.queue_url, "arn", 1).await;
    assert_eq!(crashed.records.len(), 1);
    b.sqs
        .change_message_visibility()
        .queue_url(&b.infra.queue_url)
        .receipt_handle(crashed.records[0].receipt_handle.clone().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    assert!(
        receive(&b.sqs, &b.infra.queue_url, "arn", 0)
            .await
            .records
            .is_empty()
    );
    let dead = receive(&b.sqs, &b.infra.dlq_url, &b.infra.dlq_arn, 1).await;
    assert_eq!(dead.records.len(), 1, "moto moved the message to the DLQ");
    assert!(b.run(dead).await.1.is_empty());
    let job = b.jobs.get(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.error.unwrap().message.contains("dead-letter queue"));
}

/// A one-shot HTTP server: answers 204 to every request and hands over each (headers, body).
async fn callback_sink() -> (
    url::Url,
    tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Vec<u8>)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/spbridge", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let mut headers = HeaderMap::new();
                for line in String::from_utf8_lossy(&buf[..head_end]).lines().skip(1) {
                    if let Some((k, v)) = line.split_once(':') {
                        if let (Ok(k), Ok(v)) = (
                            http::HeaderName::from_bytes(k.trim().as_bytes()),
                            http::HeaderValue::from_str(v.trim()),
                        ) {
                            headers.append(k, v);
                        }
                    }
                }
                let body = buf[head_end..head_end + len.min(buf.len() - head_end)].to_vec();
                let _ = sock
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send((headers, body));
            });
        }
    });
    (url.parse().unwrap(), rx)
}

#[tokio::test]
async fn the_callback_arrives_signed_and_verifies() {
    let b = Bench::start(Options::default(), 5).await;
    let (url, mut calls) = callback_sink().await;
    let data = content(777);
    let id = b
        .accept(
            "contoso-docs",
            vec![file("cb.bin", None, ConflictMode::Fail, &data)],
            Some(url),
        )
        .await;
    assert!(b.deliver().await.1.is_empty());
    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .expect("callback within 10 s")
        .expect("callback");
    // Verified by our own verifier...
    let verifier = WebhookVerifier::standard(vec![WebhookSecret::from_whsec(WHSEC).unwrap()]);
    let verified = verifier
        .verify_now(&headers, &body)
        .expect("signature verifies");
    assert_eq!(verified.webhook_id(), Some(format!("cb_{id}").as_str()));
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["type"], "upload.completed");
    assert_eq!(payload["data"]["job"], id.as_str());
    assert_eq!(payload["data"]["result"]["size"], 777);
    // ...and by the standardwebhooks reference library.
    let header = |n: &str| headers[n].to_str().unwrap().to_owned();
    let script = r#"
import sys, json
from standardwebhooks.webhooks import Webhook
secret, body, mid, ts, sig = sys.argv[1:6]
Webhook(secret).verify(body, {"webhook-id": mid, "webhook-timestamp": ts, "webhook-signature": sig})
print("verified")
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            WHSEC,
            std::str::from_utf8(&body).unwrap(),
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &header("webhook-signature"),
        ])
        .output()
        .expect("python3 runs (the venv with standardwebhooks must be on PATH)");
    assert!(
        out.status.success() && out.stdout.starts_with(b"verified"),
        "standardwebhooks refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The delivery is recorded on the job.
    let job = b.jobs.get(&id).await.unwrap();
    let cb = job.callback.expect("callback recorded");
    assert!(cb.delivered);
    assert_eq!((cb.status, cb.attempts), (Some(204), 1));
}
