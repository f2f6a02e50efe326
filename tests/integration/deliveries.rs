//! 1,000 deliveries through the receiver, moto's SQS/DynamoDB/S3 and worker loops into the
//! tenant emulator: 10% are repeats, 30% of SharePoint's answers are 429/503, and one worker
//! dies in the middle of a job. Every delivery ends as exactly one file with its bytes, every
//! repeat answers with its first delivery's job, and no job is lost or left unfinished.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;
use shared::jobs::{JobId, JobStatus, JobStore};
use tenant_emulator::{FaultKind, FaultRule, Options};

use crate::ingest::{QUEUE_ARN, SP_LIB, Setup, World, new_id, signed_raw};

const DISTINCT: usize = 900;
const REPEATS: usize = 100;
const FOLDER: &str = "deliveries";

fn body_of(i: usize) -> Vec<u8> {
    let len = 64 + (i * 37) % 2048;
    (0..len).map(|k| ((k * 131 + i * 7) % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_deliveries_make_one_file_each() {
    let started = Instant::now();
    let throttled = |status| FaultKind::Status {
        status,
        retry_after: None,
    };
    let w = World::start(Setup {
        opts: Options {
            // 15% 429, then 15% of all answers 503 (0.15 / 0.85 of the rest): 30% faulted.
            faults: vec![
                FaultRule::new("/sites/team/_api", throttled(429)).rate(0.15),
                FaultRule::new("/sites/team/_api", throttled(503)).rate(0.15 / 0.85),
            ],
            ..Options::default()
        },
        env: vec![("SPBRIDGE_SECRET_CACHE_TTL_SECS", "300".into())],
        visibility_secs: Some(4),
        max_receives: Some(10),
        no_workers: true,
        ..Setup::default()
    })
    .await;
    let (jobs, _, _) = w.infra.adapters();
    let sqs = aws_sdk_sqs::Client::new(&w.infra.sdk);
    let ids: Vec<String> = (0..DISTINCT).map(|_| new_id()).collect();
    let send = |i: usize, repeat: bool| {
        let w = &w;
        let id = ids[i].clone();
        async move {
            let req = signed_raw(
                "/upload/contoso-docs",
                &format!("name=d{i:04}.bin&folder={FOLDER}&conflict=replace"),
                &id,
                &body_of(i),
            );
            let (s, b, h) = w.send_raw(req).await;
            // A repeat that arrives after its job has ended gets the job's 201 result; its
            // Location still names the job.
            if !(repeat && s == 201) {
                assert_eq!(s, 202, "delivery {i}: {b}");
                assert_eq!(h["location"], b["status_url"].as_str().unwrap());
            }
            let job = h["location"]
                .split("/uploads/")
                .nth(1)
                .and_then(|rest| rest.split('?').next())
                .unwrap_or_else(|| panic!("delivery {i}: no job in {h:?}"));
            (i, job.to_owned())
        }
    };

    // One worker dies mid-job: it takes delivery 0's message, starts it, and is aborted once
    // the job is leased (status uploading) but before it ends.
    let (_, first_job) = send(0, false).await;
    let first = JobId::parse(&first_job).unwrap();
    let event = loop {
        let e = spbridge_tests::sqs_event(&sqs, &w.infra.queue_url, QUEUE_ARN, 1).await;
        if !e.records.is_empty() {
            break e;
        }
    };
    let state = w.worker_state.clone();
    let victim = tokio::spawn(async move {
        let mut ctx = lambda_runtime::Context::default();
        ctx.request_id = "victim".into();
        upload_worker::handle(&state, lambda_runtime::LambdaEvent::new(event, ctx)).await
    });
    loop {
        let job = jobs.get(&first).await.unwrap();
        if job.status == JobStatus::Uploading || job.status.is_final() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    victim.abort();
    assert!(victim.await.unwrap_err().is_cancelled());
    let killed = jobs.get(&first).await.unwrap();
    assert_eq!(
        killed.status,
        JobStatus::Uploading,
        "the worker died mid-job"
    );

    for _ in 0..4 {
        w.add_worker();
    }
    // Deliveries 1..900 and 100 repeats (every ninth delivery again), 32 at a time.
    let mut order: Vec<(usize, bool)> = (1..DISTINCT).map(|i| (i, false)).collect();
    for r in 0..REPEATS {
        // A repeat goes some way behind its first delivery, so some meet a running job.
        let at = (r * 9 + 40).min(order.len());
        order.insert(at, (r * 9, true));
    }
    assert_eq!(order.len() + 1, DISTINCT + REPEATS);
    let answers: Vec<(usize, bool, String)> = futures_util::stream::iter(order)
        .map(|(i, repeat)| {
            let send = &send;
            async move {
                let (i, job) = send(i, repeat).await;
                (i, repeat, job)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    eprintln!("accepted in {:.1} s", started.elapsed().as_secs_f64());
    let mut job_of: HashMap<usize, String> = HashMap::from([(0, first_job.clone())]);
    for (i, repeat, job) in answers.iter().filter(|a| !a.1) {
        assert!(!repeat);
        job_of.insert(*i, job.clone());
    }
    assert_eq!(job_of.len(), DISTINCT);
    for (i, _, job) in answers.iter().filter(|a| a.1) {
        assert_eq!(
            &job_of[i], job,
            "repeat of delivery {i} answered another job"
        );
    }
    let distinct_jobs: HashSet<&String> = job_of.values().collect();
    assert_eq!(distinct_jobs.len(), DISTINCT, "one job per delivery");

    // Every job ends; none is lost or left hanging. (One read per job once it has ended:
    // polling all 900 each round would load moto more than the workers do.) The bound is for
    // liveness only: a loaded 2-core machine needs well over two minutes.
    let deadline = Instant::now() + Duration::from_secs(400);
    let mut ended = HashMap::new();
    for (i, job) in &job_of {
        let id = JobId::parse(job).unwrap();
        loop {
            let job = jobs.get(&id).await.unwrap();
            if job.status.is_final() {
                ended.insert(*i, job);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "delivery {i}'s job is still {:?} after {} ended",
                job.status,
                ended.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (i, job) in &ended {
        assert_eq!(job.status, JobStatus::Done, "delivery {i}: {:?}", job.error);
        let path = format!("{SP_LIB}/{FOLDER}/d{i:04}.bin");
        assert_eq!(
            job.result.as_ref().unwrap()["path"],
            Value::from(path.clone())
        );
        assert_eq!(
            w.bytes(&path).unwrap(),
            body_of(*i),
            "bytes of delivery {i}"
        );
    }
    assert!(
        ended[&0].attempts >= 2,
        "the killed job was taken over: {} attempts",
        ended[&0].attempts
    );
    // Exactly one file per delivery: nothing else in the folder, nothing half-uploaded.
    let files: Vec<_> = w
        .emu()
        .files()
        .into_iter()
        .filter(|f| !f.is_folder && f.path.starts_with(&format!("{SP_LIB}/{FOLDER}/")))
        .collect();
    assert_eq!(files.len(), DISTINCT);
    w.assert_no_half_files();
    let faulted = ended.values().filter(|j| j.attempts > 1).count();
    eprintln!(
        "1,000 deliveries: {DISTINCT} files in {:.1} s; {faulted} jobs needed more than one attempt",
        started.elapsed().as_secs_f64()
    );
}
