//! The upload worker: SQS batches in, partial batch failures out. The behaviour is
//! [`shared::jobs::worker::Worker`]; this crate converts the event and wires the clients.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;
use shared::config::Config;
use shared::jobs::JobsConfig;
use shared::jobs::callback::Callbacks;
use shared::jobs::upload::Uploader;
use shared::jobs::worker::{Received, Worker};
use shared::runtime::Warm;

/// What a warm worker keeps.
pub struct State {
    worker: Worker,
    dead_letter_arn: Option<String>,
}

impl State {
    /// A state over a worker built elsewhere (tests).
    pub fn new(worker: Worker, dead_letter_arn: Option<String>) -> Self {
        State {
            worker,
            dead_letter_arn,
        }
    }
}

/// Reads the environment and builds the clients; the error names what is wrong.
pub async fn init() -> Result<State, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let jobs = JobsConfig::from_env()?;
    let warm = Warm::from_config(config.clone())?;
    let access = warm.access().await.map_err(|e| e.to_string())?;
    let sdk = aws_config::load_from_env().await;
    let (store, queue, staging) = jobs.connect(&sdk);
    let http = access.http().clone();
    let store_handle = access.store().clone();
    let uploader = Uploader::new(
        http.clone(),
        config.endpoints.graph.clone(),
        config.ingest.chunk_bytes,
        Arc::new(access),
    );
    let mut callbacks = Callbacks::new(http);
    callbacks.allow_loopback = config.ingest.source_allow_loopback;
    let worker = Worker {
        jobs: Arc::new(store),
        queue: Arc::new(queue),
        staging: Arc::new(staging),
        store: store_handle,
        secrets: config.secrets.clone(),
        uploader,
        callbacks,
        settings: jobs.worker.clone(),
        clock: Arc::new(time::OffsetDateTime::now_utc),
    };
    Ok(State::new(worker, jobs.dead_letter_arn))
}

/// The message as the worker wants it; `None` without an id (nothing could be reported).
fn received(m: SqsMessage, dead_letter_arn: Option<&str>) -> Option<Received> {
    let receive_count = m
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let dead_letter = dead_letter_arn.is_some() && m.event_source_arn.as_deref() == dead_letter_arn;
    Some(Received {
        message_id: m.message_id?,
        receipt: m.receipt_handle.unwrap_or_default(),
        body: m.body.unwrap_or_default(),
        receive_count,
        dead_letter,
    })
}

/// Runs a batch; the answer names the messages SQS must deliver again.
pub async fn handle(
    state: &Result<State, String>,
    event: LambdaEvent<SqsEvent>,
) -> SqsBatchResponse {
    let mut answer = SqsBatchResponse::default();
    let state = match state {
        Ok(s) => s,
        Err(_) => {
            // Misconfigured: keep every message for when it is fixed.
            answer.set_failures(
                event
                    .payload
                    .records
                    .into_iter()
                    .filter_map(|m| m.message_id),
            );
            return answer;
        }
    };
    let owner = event.context.request_id.clone();
    let batch: Vec<Received> = event
        .payload
        .records
        .into_iter()
        .filter_map(|m| received(m, state.dead_letter_arn.as_deref()))
        .collect();
    answer.set_failures(state.worker.run_batch(batch, &owner).await);
    answer
}
