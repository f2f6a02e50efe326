//! Outages: each dependency fails in the middle of a run, and comes back.
//!
//! AWS services sit behind [`Switch`]es (a proxy whose port closes, or which answers 503, while
//! moto keeps its state), Microsoft's behind the emulator's fault rules. Each test checks what a
//! user sees: a clear 503 with `Retry-After` from the receiver and oauth-callback, a job that is
//! retried by the worker rather than failed, no half-recorded delivery, exactly one file per
//! delivery once the dependency is back, and no refresh token lost or marked needing consent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_http::{Body, Request, Response};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use shared::access::Access;
use shared::config::{Config, LifecycleConfig};
use shared::identity::TokenCache;
use shared::ingest::pipeline::Receiver;
use shared::jobs::callback::Callbacks;
use shared::jobs::upload::Uploader;
use shared::jobs::worker::{Worker, WorkerSettings};
use shared::jobs::{DeliveryKey, DynamoJobStore, Job, JobId, JobStatus, JobStore, NewJob};
use shared::secrets::SecretStore;
use shared::secrets::schema::ConnectionStatus;
use shared::upload::RetryPolicy;
use spbridge_tests::JobsInfra;
use spbridge_tests::outages::{AwsSwitches, Mode, Switch};
use tenant_emulator::{Emulator, FaultKind, FaultRule, Options, RunningEmulator};

use crate::ingest::{SP_LIB, WHSEC, new_id, signed_raw};

const ARN: &str = "arn:aws:sqs:us-east-1:123456789012:jobs";
/// The queue's visibility timeout: how soon a message whose retry delay could not be set (SQS
/// down) comes back.
const VISIBILITY_SECS: u32 = 3;

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// The receiver and the worker over AWS adapters behind switches, the emulator, and direct
/// (switch-free) handles to inspect what was recorded.
struct World {
    emu: RunningEmulator,
    aws: AwsSwitches,
    infra: JobsInfra,
    prefix: String,
    receiver: Result<upload_ingest::State, String>,
    worker: Result<upload_worker::State, String>,
    /// The jobs table without a switch.
    jobs: DynamoJobStore,
    /// SQS without a switch: Lambda's event source mapping.
    sqs: aws_sdk_sqs::Client,
}

impl World {
    async fn start() -> World {
        let emu = Emulator::start(Options::default())
            .await
            .expect("emulator starts");
        spbridge_tests::secret_values::remember("webhook secret", WHSEC);
        spbridge_tests::secret_values::watch(emu.issued_credentials());
        let info = emu.info().clone();
        let prefix = spbridge_tests::unique_prefix();
        let env: HashMap<&str, String> = HashMap::from([
            ("SPBRIDGE_SECRET_PREFIX", prefix.clone()),
            ("SPBRIDGE_SECRET_BACKEND", "aws".into()),
            ("SPBRIDGE_GRAPH_URL", info.graph.clone()),
            ("SPBRIDGE_ACS_URL", info.acs.clone()),
            ("SPBRIDGE_LOGIN_URL", info.login.clone()),
            // Every read reaches the store, so an outage is not hidden by the cache.
            ("SPBRIDGE_SECRET_CACHE_TTL_SECS", "0".into()),
        ]);
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("config");
        let infra = JobsInfra::create_with(10, VISIBILITY_SECS).await;
        let aws = AwsSwitches::start(spbridge_tests::moto().url()).await;
        let a = aws.adapters(&infra).await;
        let direct: Arc<dyn SecretStore> = Arc::new(spbridge_tests::moto_store().await);
        let site = info.site("team").expect("site").clone();
        let drive_id = site.libraries[0].drive_id.clone();
        let acs = info.acs_app("acs-app").expect("acs-app");
        let entra = info.entra_app("entra-app").expect("entra-app");
        for (name, value) in [
            (format!("{prefix}webhook"), json!({"secrets": [WHSEC]})),
            (
                format!("{prefix}acs-app"),
                json!({"client_id": acs.client_id, "client_secret": acs.client_secret,
                       "realm": info.realm, "tenant_id": info.tenant_id}),
            ),
            (
                format!("{prefix}app"),
                json!({"client_id": entra.client_id, "client_secret": entra.client_secret,
                       "tenant_id": info.tenant_id}),
            ),
            (
                format!("{prefix}connections/sp"),
                json!({"provider": "acs", "auth": "app_only", "status": "active",
                       "app_secret": format!("{prefix}acs-app"), "realm": info.realm,
                       "target": {"kind": "sharepoint", "site_url": site.url, "library": "Shared Documents"}}),
            ),
            (
                format!("{prefix}connections/drive"),
                json!({"provider": "entra", "auth": "app_only", "status": "active",
                       "tenant_id": info.tenant_id, "target": {"kind": "drive", "drive_id": drive_id}}),
            ),
            (
                format!("{prefix}senders/sp"),
                json!({"webhook_secrets": [WHSEC]}),
            ),
            (
                format!("{prefix}senders/drive"),
                json!({"webhook_secrets": [WHSEC]}),
            ),
        ] {
            direct.put(&name, &value, None).await.expect("seeded");
        }
        let store: Arc<dyn SecretStore> = Arc::new(a.store);
        let http = shared::http::build_client(&config.http).expect("client");
        let access = Access::new(
            http.clone(),
            config.endpoints.clone(),
            Arc::new(TokenCache::new(Duration::from_secs(300))),
            store.clone(),
            config.secrets.clone(),
        );
        // Per request: a few quick retries, so an outage outlasts them and the job is retried.
        let uploader = Uploader::new(
            http.clone(),
            config.endpoints.graph.clone(),
            config.ingest.chunk_bytes,
            Arc::new(access),
        )
        .with_retry(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_total_wait: Duration::from_millis(500),
        });
        let receiver = Receiver::new(
            config.clone(),
            store.clone(),
            Arc::new(a.jobs.clone()),
            Arc::new(a.queue.clone()),
            Arc::new(a.staging.clone()),
            shared::jobs::DEFAULT_RETENTION,
        );
        let worker = Worker {
            jobs: Arc::new(a.jobs),
            queue: Arc::new(a.queue),
            staging: Arc::new(a.staging),
            store,
            secrets: config.secrets.clone(),
            uploader,
            callbacks: Callbacks::new(http),
            sources: shared::jobs::fetch::source_client(&config.http, true).expect("client"),
            max_source_bytes: config.ingest.max_source_bytes,
            settings: WorkerSettings {
                max_receives: 10,
                // A worker that could not record its end holds the job this long.
                lease: Duration::from_secs(2),
                base_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(1),
                ..WorkerSettings::default()
            },
            clock: Arc::new(time::OffsetDateTime::now_utc),
        };
        let (jobs, _, _) = infra.adapters();
        let sqs = aws_sdk_sqs::Client::new(&infra.sdk);
        World {
            emu,
            aws,
            infra,
            prefix,
            receiver: Ok(upload_ingest::State::new(receiver, None)),
            worker: Ok(upload_worker::State::new(worker, None)),
            jobs,
            sqs,
        }
    }

    /// Sends an upload to the receiver.
    async fn send(&self, req: Request) -> (u16, Value, HashMap<String, String>) {
        answer(upload_ingest::handle(&self.receiver, req).await)
    }

    /// One round of Lambda's event source mapping; answers how many messages ran.
    async fn pump(&self) -> usize {
        spbridge_tests::pump_once(&self.worker, &self.sqs, &self.infra.queue_url, ARN).await
    }

    /// Hands `event` to the worker as Lambda would.
    async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut ctx = lambda_runtime::Context::default();
        ctx.request_id = uuid::Uuid::new_v4().to_string();
        upload_worker::handle(&self.worker, lambda_runtime::LambdaEvent::new(event, ctx)).await
    }

    /// Pumps until the job ends (or `within` passes); answers the job.
    async fn run_until_final(&self, job: &JobId, within: Duration) -> Job {
        let deadline = Instant::now() + within;
        loop {
            let job = self.jobs.get(job).await.expect("job readable");
            if job.status.is_final() {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {} still {:?} after {within:?}",
                job.id,
                job.status
            );
            if self.pump().await == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// How many jobs the table holds.
    async fn job_count(&self) -> i32 {
        aws_sdk_dynamodb::Client::new(&self.infra.sdk)
            .scan()
            .table_name(&self.infra.table)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .send()
            .await
            .expect("scan")
            .count
    }

    /// Every stored file (not folder) whose name starts with `stem`.
    fn files_named(&self, stem: &str) -> Vec<tenant_emulator::StoredItem> {
        self.emu
            .files()
            .into_iter()
            .filter(|f| {
                !f.is_folder
                    && f.path
                        .rsplit('/')
                        .next()
                        .is_some_and(|n| n.starts_with(stem))
            })
            .collect()
    }

    /// Names an answer to an unauthenticated caller must not carry.
    fn internal_names(&self) -> Vec<String> {
        vec![
            self.prefix.clone(),
            self.infra.table.clone(),
            self.infra.bucket.clone(),
            self.infra.queue_url.clone(),
            self.aws.secrets.url(),
            spbridge_tests::moto().url().to_owned(),
        ]
    }

    /// Asserts the receiver's 503 `unavailable` with `Retry-After` that names nothing internal.
    fn assert_retry_later(
        &self,
        what: &str,
        (status, body, headers): &(u16, Value, HashMap<String, String>),
    ) {
        let names = self.internal_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_retry_later(
            what,
            *status,
            headers.get("retry-after").map(String::as_str),
            &body.to_string(),
            &names,
        );
        assert_eq!(body["error"], "unavailable", "{what}: {body}");
    }

    /// While `switch` is down, then while it answers 503: `d` gets a clear 503 (`what`).
    async fn refused_while_out(&self, switch: &Switch, what: &str, d: &Delivery<'_>) {
        for mode in [Mode::Down, Mode::Unavailable] {
            switch.set(mode).await;
            let a = self.send(d.request()).await;
            self.assert_retry_later(&format!("{what} ({mode:?})"), &a);
        }
    }

    /// Sends `d` and asserts it is accepted; answers the body and the headers.
    async fn accept(&self, d: &Delivery<'_>) -> (Value, HashMap<String, String>) {
        let (status, body, headers) = self.send(d.request()).await;
        assert_eq!(status, 202, "{}: {body}", d.name);
        (body, headers)
    }

    /// `switch` is back: the sender's retry of `d` is accepted and lands one file. Answers the
    /// headers of the accept and the job.
    async fn resent_lands(
        &self,
        switch: &Switch,
        d: &Delivery<'_>,
    ) -> (HashMap<String, String>, Job) {
        switch.up().await;
        let (_, headers) = self.accept(d).await;
        (headers, self.lands(d).await)
    }

    /// One worker round during an outage: `d`'s job is retried, not failed, and nothing is
    /// stored yet. Answers the job.
    async fn retried_not_failed(&self, d: &Delivery<'_>) -> Job {
        assert_eq!(self.pump().await, 1, "{}", d.name);
        let job = self.jobs.get(&d.job()).await.expect("job readable");
        assert_eq!(
            job.status,
            JobStatus::Uploading,
            "{}: retried, not failed: {:?}",
            d.name,
            job.error
        );
        assert!(
            self.files_named(d.stem()).is_empty(),
            "{}: nothing stored yet",
            d.name
        );
        job
    }

    /// Pumps until `d`'s job ends: done, with exactly one file holding its bytes.
    async fn lands(&self, d: &Delivery<'_>) -> Job {
        let job = self
            .run_until_final(&d.job(), Duration::from_secs(20))
            .await;
        assert_eq!(job.status, JobStatus::Done, "{}: {:?}", d.name, job.error);
        assert_one_file(self, SP_LIB, &d.name, d.data);
        job
    }
}

/// One delivery: a signed raw upload of `data` as `name` to connection `conn`, with its own
/// `webhook-id`.
struct Delivery<'a> {
    conn: &'a str,
    name: String,
    id: String,
    data: &'a [u8],
}

impl<'a> Delivery<'a> {
    fn new(conn: &'a str, name: impl Into<String>, data: &'a [u8]) -> Self {
        Delivery {
            conn,
            name: name.into(),
            id: new_id(),
            data,
        }
    }

    fn request(&self) -> Request {
        signed_raw(
            &format!("/upload/{}", self.conn),
            &format!("name={}", self.name),
            &self.id,
            self.data,
        )
    }

    /// The job this delivery names.
    fn job(&self) -> JobId {
        NewJob {
            connection: self.conn.into(),
            delivery: DeliveryKey::webhook_id(&self.id),
            payload_hash: String::new(),
            bytes_total: None,
            retention: shared::jobs::DEFAULT_RETENTION,
        }
        .id()
    }

    /// The file name without its extension.
    fn stem(&self) -> &str {
        self.name.split('.').next().unwrap_or(&self.name)
    }
}

fn answer(resp: Response<Body>) -> (u16, Value, HashMap<String, String>) {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null);
    (status, body, headers)
}

/// Asserts a 503 whose `Retry-After` is 1 to 60 seconds and whose body carries none of
/// `internal`.
fn assert_retry_later(
    what: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    internal: &[&str],
) {
    assert_eq!(status, 503, "{what}: {body}");
    let wait: u64 = retry_after
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After {retry_after:?} is not in seconds"));
    assert!((1..=60).contains(&wait), "{what}: Retry-After {wait}");
    spbridge_tests::assert_reveals_nothing(what, body, internal);
}

/// Asserts that exactly one file named `name` exists in the SharePoint library, holding `bytes`
/// in one version.
fn assert_one_file(w: &World, folder_path: &str, name: &str, bytes: &[u8]) {
    let stem = name.split('.').next().unwrap_or(name);
    let found = w.files_named(stem);
    assert_eq!(
        found.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec![format!("{folder_path}/{name}")],
        "exactly one file"
    );
    assert_eq!(
        found[0].versions.len(),
        1,
        "one version: {:?}",
        found[0].versions
    );
    assert_eq!(
        w.emu
            .file_bytes(&format!("{folder_path}/{name}"))
            .as_deref(),
        Some(bytes)
    );
}

#[tokio::test]
async fn secrets_manager_outage_answers_503_and_retries_the_job() {
    let w = World::start().await;
    let sm = &w.aws.secrets;
    let data = content(3000, 1);

    // The receiver cannot read the sender secret: 503, and nothing is recorded.
    let a = Delivery::new("sp", "sm-a.bin", &data);
    w.refused_while_out(sm, "an upload while Secrets Manager is out", &a)
        .await;
    assert!(sm.refused() > 0, "the store was really asked");
    assert_eq!(w.job_count().await, 0, "nothing recorded");
    w.resent_lands(sm, &a).await;

    // Accepted, then the store goes: the worker cannot read the connection and retries.
    let b = Delivery::new("sp", "sm-b.bin", &data);
    w.accept(&b).await;
    sm.down().await;
    let job = w.retried_not_failed(&b).await;
    assert!(job.lease.is_none(), "the lease is given back");
    sm.up().await;
    assert_eq!(w.lands(&b).await.attempts, 2);
}

#[tokio::test]
async fn dynamodb_outage_answers_503_and_the_job_lands_once_when_it_returns() {
    let w = World::start().await;
    let db = &w.aws.dynamo;
    let data = content(2500, 2);

    // The receiver cannot record the job: 503, and nothing is queued.
    let a = Delivery::new("sp", "db-a.bin", &data);
    w.refused_while_out(db, "an upload while DynamoDB is out", &a)
        .await;
    assert_eq!(w.pump().await, 0, "no message was queued");
    assert_eq!(w.job_count().await, 0);
    w.resent_lands(db, &a).await;

    // Queued, then DynamoDB goes before the worker takes the job: the message comes back.
    let b = Delivery::new("sp", "db-b.bin", &data);
    let (body, _) = w.accept(&b).await;
    db.down().await;
    // The sender's status URL answers 503 meanwhile, not 404.
    let mut get = Request::default();
    *get.uri_mut() = body["status_url"]
        .as_str()
        .expect("status_url")
        .parse()
        .unwrap();
    let a = answer(upload_ingest::handle(&w.receiver, get).await);
    w.assert_retry_later("a job status while DynamoDB is out", &a);
    assert_eq!(w.pump().await, 1);
    assert!(w.files_named(b.stem()).is_empty());
    db.up().await;
    w.lands(&b).await;

    // DynamoDB goes while the file is being uploaded and comes back a second and a half later:
    // the file lands, and the worker records it once the table answers again (a lost record
    // would make the job's retry meet its own file as a conflict). The outage starts once the
    // job says where its one request writes (saved just before that request, which the
    // latency holds back).
    let c = Delivery::new("sp", "db-c.bin", &data);
    w.accept(&c).await;
    w.emu.add_fault(FaultRule::new(
        "/sites/team/_api",
        FaultKind::Latency { ms: 700 },
    ));
    let blip = async {
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let job = w.jobs.get(&c.job()).await.unwrap();
            if job
                .checkpoint
                .as_ref()
                .is_some_and(|cp| cp.state.single.is_some())
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "no record before the request"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        db.down().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            w.files_named(c.stem()).len(),
            1,
            "the file landed during the outage"
        );
        db.up().await;
    };
    let (ran, ()) = tokio::join!(w.pump(), blip);
    assert_eq!(ran, 1);
    w.emu.clear_faults();
    let job = w.jobs.get(&c.job()).await.unwrap();
    assert_eq!(
        (job.status, job.attempts),
        (JobStatus::Done, 1),
        "{:?}",
        job.error
    );
    assert_eq!(
        job.result.as_ref().map(|r| r["path"].clone()),
        Some(json!(format!("{SP_LIB}/db-c.bin")))
    );
    assert_one_file(&w, SP_LIB, "db-c.bin", &data);
}

#[tokio::test]
async fn sqs_outage_answers_503_and_a_lost_delete_makes_no_second_file() {
    let w = World::start().await;
    let q = &w.aws.sqs;
    let data = content(2000, 3);

    // The job is recorded but cannot be queued: 503. Nothing is uploaded meanwhile, and the
    // sender's retry finds the same job and queues it.
    let a = Delivery::new("sp", "q-a.bin", &data);
    w.refused_while_out(q, "an upload while SQS is out", &a)
        .await;
    let job = w.jobs.get(&a.job()).await.expect("the job is recorded");
    assert_eq!((job.status, job.attempts), (JobStatus::Accepted, 0));
    assert_eq!(w.pump().await, 0, "nothing queued");
    let (headers, _) = w.resent_lands(q, &a).await;
    assert_eq!(
        headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(w.job_count().await, 1, "one job for the delivery");

    // The worker stores the file, then SQS goes before the message is deleted: it comes back
    // after its visibility timeout, and the worker sees the job done.
    let b = Delivery::new("sp", "q-b.bin", &data);
    w.accept(&b).await;
    let event = spbridge_tests::sqs_event(&w.sqs, &w.infra.queue_url, ARN, 1).await;
    assert_eq!(event.records.len(), 1);
    let receipt = event.records[0].receipt_handle.clone().unwrap();
    assert!(w.handle(event).await.batch_item_failures.is_empty());
    q.down().await;
    let switched =
        aws_sdk_sqs::Client::new(&spbridge_tests::outages::sdk_config_at(&q.url()).await);
    let deleted = switched
        .delete_message()
        .queue_url(&w.infra.queue_url)
        .receipt_handle(receipt)
        .send()
        .await;
    assert!(deleted.is_err(), "the delete is lost in the outage");
    q.up().await;
    let back =
        spbridge_tests::sqs_event(&w.sqs, &w.infra.queue_url, ARN, VISIBILITY_SECS as i32 + 2)
            .await;
    assert_eq!(back.records.len(), 1, "the message comes back");
    assert!(
        w.handle(back).await.batch_item_failures.is_empty(),
        "a finished job is acknowledged"
    );
    let job = w.jobs.get(&b.job()).await.unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Done, 1));
    assert_one_file(&w, SP_LIB, "q-b.bin", &data);
}

#[tokio::test]
async fn s3_outage_answers_503_for_a_large_body_and_the_worker_waits_for_it() {
    let w = World::start().await;
    let s3 = &w.aws.s3;
    // Above the inline budget: the body is staged in S3.
    let data = content(300 * 1024, 4);

    let a = Delivery::new("sp", "s3-a.bin", &data);
    w.refused_while_out(s3, "a large upload while S3 is out", &a)
        .await;
    assert_eq!(w.pump().await, 0, "nothing queued without its body");
    w.resent_lands(s3, &a).await;
    assert_eq!(w.job_count().await, 1);

    // Staged, then S3 goes before the worker reads the body: retried, then lands.
    let b = Delivery::new("sp", "s3-b.bin", &data);
    w.accept(&b).await;
    s3.down().await;
    w.retried_not_failed(&b).await;
    s3.up().await;
    w.lands(&b).await;
}

#[tokio::test]
async fn a_token_endpoint_outage_retries_the_job_until_it_lands() {
    let w = World::start().await;
    let data = content(1500, 5);
    // No token is cached yet: the first attempt needs the token endpoint.
    w.emu.add_fault(FaultRule::new(
        "",
        FaultKind::TokenOutage {
            retry_after: Some(3),
        },
    ));
    let d = Delivery::new("sp", "tok.bin", &data);
    w.accept(&d).await;
    w.retried_not_failed(&d).await;
    // The token endpoint's Retry-After (3 s: on a busy machine still far from the worker's
    // 200 ms backoff) holds the message back.
    let started = Instant::now();
    assert_eq!(w.pump().await, 0, "not redelivered before Retry-After");
    w.emu.clear_faults();
    w.lands(&d).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sharepoint_and_graph_outages_retry_the_job_and_land_one_file() {
    let w = World::start().await;
    let faults = [
        (
            "ra",
            FaultKind::Status {
                status: 503,
                retry_after: Some(3),
            },
        ),
        (
            "nora",
            FaultKind::Status {
                status: 503,
                retry_after: None,
            },
        ),
        ("reset", FaultKind::ResetAfter { bytes: 0 }),
    ];
    for (conn, prefix) in [("sp", "/sites/team/_api"), ("drive", "/graph/")] {
        for (label, fault) in &faults {
            let data = content(4000, label.len() as u8);
            let d = Delivery::new(conn, format!("{conn}-{label}.bin"), &data);
            w.emu.add_fault(FaultRule::new(prefix, fault.clone()));
            w.accept(&d).await;
            w.retried_not_failed(&d).await;
            if *label == "ra" {
                // Microsoft's Retry-After (3 s) outweighs the worker's first backoff (200 ms).
                assert_eq!(
                    w.pump().await,
                    0,
                    "{}: redelivered before Retry-After",
                    d.name
                );
            }
            w.emu.clear_faults();
            let job = w.lands(&d).await;
            assert!(job.attempts >= 2, "{}: {} attempts", d.name, job.attempts);
        }
    }
    assert!(
        w.emu.open_uploads().is_empty(),
        "no upload session left open"
    );
}

/// Every delegated connection is due (the skew exceeds every access-token lifetime).
fn all_due() -> LifecycleConfig {
    LifecycleConfig::from_lookup(|k| {
        (k == "SPBRIDGE_REFRESH_ACCESS_SKEW_SECS").then(|| "172800".to_owned())
    })
    .expect("lifecycle config")
}

/// Asserts a token-refresh run that failed as retryable (the scheduler runs it again).
fn assert_retryable<T: std::fmt::Debug, E: Into<lambda_runtime::Diagnostic>>(run: Result<T, E>) {
    let diag: lambda_runtime::Diagnostic = run.expect_err("the run fails").into();
    assert!(
        diag.error_type.starts_with("SpBridge.Retryable."),
        "{}",
        diag.error_type
    );
}

async fn refresh_tokens(
    env: &crate::lifecycle::Env,
    ids: &[&str],
) -> Vec<(ConnectionStatus, String)> {
    let mut out = Vec::new();
    for id in ids {
        let c = env.stored(id).await.value;
        let rt = c
            .refresh_token
            .map(|t| t.expose_secret().to_owned())
            .unwrap_or_default();
        out.push((c.status, rt));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_outages_mark_nothing_needs_consent_and_lose_no_refresh_token() {
    let env = crate::lifecycle::env().await;
    let cb = env.callback();
    let ids = ["e", "m", "a"];
    for (id, provider) in ids.iter().zip(["entra", "msa", "acs"]) {
        env.connection(id, provider).await;
        let c = crate::lifecycle::start_consent(&env, &cb, id).await;
        assert_eq!(
            crate::lifecycle::finish_consent(&cb, &c).await.status(),
            200
        );
    }
    let consented = refresh_tokens(&env, &ids).await;
    let switch = Switch::start(spbridge_tests::moto().url()).await;
    let switched: Arc<dyn SecretStore> = Arc::new(shared::secrets::AwsSecretStore::new(
        &spbridge_tests::outages::sdk_config_at(&switch.url()).await,
    ));
    let refresher = |store: Arc<dyn SecretStore>| {
        Ok::<_, String>(
            token_refresh::State::new(env.config.clone(), all_due(), env.http.clone())
                .with_store(store),
        )
    };
    let run = |state| async move {
        token_refresh::handle(
            &state,
            token_refresh::Trigger::Manual {
                connections: ids.iter().map(|s| s.to_string()).collect(),
            },
        )
        .await
    };

    // The token endpoint is down: the run fails as retryable, and nothing is changed.
    env.emu.add_fault(FaultRule::new(
        "",
        FaultKind::TokenOutage { retry_after: None },
    ));
    assert_retryable(run(refresher(env.store.clone())).await);
    assert_eq!(
        refresh_tokens(&env, &ids).await,
        consented,
        "nothing changed"
    );
    env.emu.clear_faults();

    // Secrets Manager is down: the run fails as retryable before anything is asked of Microsoft.
    switch.down().await;
    assert_retryable(run(refresher(switched.clone())).await);
    assert_eq!(
        refresh_tokens(&env, &ids).await,
        consented,
        "nothing changed"
    );
    switch.up().await;

    // Secrets Manager blinks while Microsoft answers (the token endpoint is slow): the rotated
    // refresh tokens are stored once it is back, nothing is lost.
    env.emu
        .add_fault(FaultRule::new("", FaultKind::Latency { ms: 600 }).times(3));
    let blink = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        switch.down().await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        switch.up().await;
    };
    let (result, ()) = tokio::join!(run(refresher(switched.clone())), blink);
    let report = result.expect("the run waits out a short outage");
    assert_eq!(report.summary.refreshed, 3, "{report:?}");
    let rotated = refresh_tokens(&env, &ids).await;
    for ((id, (status, rt)), (_, before)) in ids.iter().zip(&rotated).zip(&consented) {
        assert_eq!(*status, ConnectionStatus::Active, "{id}");
        // Entra and Microsoft accounts hand out a new refresh token on each refresh (the
        // emulator's ACS keeps its own).
        if *id != "a" {
            assert_ne!(rt, before, "{id}: the rotated refresh token was stored");
        }
    }

    // Secrets Manager goes for longer than the write is retried: the run fails as retryable,
    // and nothing is half-written (every connection keeps the refresh token it had, which the
    // emulator, like Entra, keeps valid after handing out a rotated one).
    env.emu
        .add_fault(FaultRule::new("", FaultKind::Latency { ms: 600 }).times(3));
    let cut = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        switch.down().await;
    };
    let (result, ()) = tokio::join!(run(refresher(switched.clone())), cut);
    assert_retryable(result);
    assert_eq!(refresh_tokens(&env, &ids).await, rotated);
    switch.up().await;
    env.emu.clear_faults();

    // Back: every connection refreshes with what is stored, and stays active.
    let report = run(refresher(switched)).await.expect("the run succeeds");
    assert_eq!(report.summary.refreshed, 3, "{report:?}");
    for (id, (status, rt)) in ids.iter().zip(refresh_tokens(&env, &ids).await) {
        assert_eq!(status, ConnectionStatus::Active, "{id}");
        assert!(!rt.is_empty(), "{id}: a refresh token is stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_callback_answers_503_while_secrets_manager_is_out_and_then_completes() {
    let env = crate::lifecycle::env().await;
    env.connection("c", "entra").await;
    let switch = Switch::start(spbridge_tests::moto().url()).await;
    let switched: Arc<dyn SecretStore> = Arc::new(shared::secrets::AwsSecretStore::new(
        &spbridge_tests::outages::sdk_config_at(&switch.url()).await,
    ));
    let state = Ok::<_, String>(
        oauth_callback::State::new(
            env.config.clone(),
            LifecycleConfig::from_lookup(|_| None).expect("lifecycle config"),
            env.http.clone(),
        )
        .with_store(switched),
    );
    let check_503 = |resp: &Response<Body>, what: &str| {
        assert_retry_later(
            what,
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("")),
            &String::from_utf8_lossy(resp.body()),
            &[&env.config.secrets.prefix],
        );
    };

    // /connect while the store is out.
    let path = env.connect_path("c", false).await;
    switch.down().await;
    let resp = oauth_callback::handle(
        &state,
        crate::lifecycle::get(
            &path,
            &[("accept", "application/json"), ("host", "127.0.0.1:9")],
        ),
    )
    .await;
    check_503(&resp, "/connect while Secrets Manager is out");
    switch.up().await;
    // The link was not used up: it works once the store is back.
    let resp = oauth_callback::handle(
        &state,
        crate::lifecycle::get(&path, &[("accept", "text/html"), ("host", "127.0.0.1:9")]),
    )
    .await;
    assert_eq!(
        resp.status(),
        302,
        "{}",
        String::from_utf8_lossy(resp.body())
    );

    // The callback during an outage is 503; the browser's retry of it completes.
    let consent = crate::lifecycle::start_consent(&env, &state, "c").await;
    switch.unavailable().await;
    let resp = crate::lifecycle::finish_consent(&state, &consent).await;
    check_503(&resp, "/callback while Secrets Manager answers 503");
    switch.up().await;
    let resp = crate::lifecycle::finish_consent(&state, &consent).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        String::from_utf8_lossy(resp.body())
    );
    let stored = env.stored("c").await.value;
    assert_eq!(stored.status, ConnectionStatus::Active);
    assert!(stored.refresh_token.is_some());
}
