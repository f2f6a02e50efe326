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
    // One SDK configuration for every AWS client, the secret store's too: one HTTP client.
    let sdk = aws_config::load_from_env().await;
    let store = shared::secrets::from_config_with(&config, Some(&sdk))
        .await
        .map_err(|e| e.to_string())?;
    let warm = Warm::from_config(config.clone())?.with_store(store);
    let access = warm.access().await.map_err(|e| e.to_string())?;
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
    let sources =
        shared::jobs::fetch::source_client(&config.http, config.ingest.source_allow_loopback)?;
    let worker = Worker {
        jobs: Arc::new(store),
        queue: Arc::new(queue),
        staging: Arc::new(staging),
        store: store_handle,
        secrets: config.secrets.clone(),
        uploader,
        callbacks,
        sources,
        max_source_bytes: config.ingest.max_source_bytes,
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
    // Lambda's deadline (ms since the epoch); 0 when not run by Lambda.
    let deadline = (event.context.deadline > 0)
        .then(|| std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.context.deadline));
    let stop_at = state
        .worker
        .settings
        .stop_at(tokio::time::Instant::now(), deadline);
    let batch: Vec<Received> = event
        .payload
        .records
        .into_iter()
        .filter_map(|m| received(m, state.dead_letter_arn.as_deref()))
        .collect();
    answer.set_failures(state.worker.run_batch(batch, &owner, stop_at).await);
    answer
}

/// `scripts/dev`'s stand-in for Lambda's two event source mappings: long-polls the job queue
/// and the dead-letter queue, builds the [`SqsEvent`] as Lambda does, runs [`handle`], and deletes
/// every message the answer does not name as failed. Runs until the process ends.
pub async fn poll_locally(state: &Result<State, String>, queue_url: &str, dead_letter_url: &str) {
    let sdk = aws_config::load_from_env().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq_arn = state
        .as_ref()
        .ok()
        .and_then(|s| s.dead_letter_arn.clone())
        .unwrap_or_default();
    loop {
        for (url, arn) in [
            (queue_url, "arn:local:jobs"),
            (dead_letter_url, dlq_arn.as_str()),
        ] {
            if let Err(e) = poll_once(state, &sqs, url, arn).await {
                tracing::warn!(error = %e, "local poll failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// The record Lambda's event source mapping builds from one received message
/// (`eventSourceARN` = `arn`, the system attributes such as `ApproximateReceiveCount` kept).
pub fn event_record(m: aws_sdk_sqs::types::Message, arn: &str) -> SqsMessage {
    let mut r = SqsMessage::default();
    r.message_id = m.message_id;
    r.receipt_handle = m.receipt_handle;
    r.body = m.body;
    r.event_source_arn = Some(arn.to_owned());
    r.event_source = Some("aws:sqs".into());
    r.attributes = m
        .attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect();
    r
}

async fn poll_once(
    state: &Result<State, String>,
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    arn: &str,
) -> Result<(), String> {
    use aws_sdk_sqs::types::MessageSystemAttributeName;
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut event = SqsEvent::default();
    let mut receipts = Vec::new();
    for m in out.messages.unwrap_or_default() {
        if let (Some(id), Some(receipt)) = (&m.message_id, &m.receipt_handle) {
            receipts.push((id.clone(), receipt.clone()));
        }
        event.records.push(event_record(m, arn));
    }
    if event.records.is_empty() {
        return Ok(());
    }
    let mut ctx = lambda_runtime::Context::default();
    ctx.request_id = format!(
        "local-{}",
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let answer = handle(state, LambdaEvent::new(event, ctx)).await;
    let failed: Vec<String> = answer
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    for (id, receipt) in receipts {
        if !failed.contains(&id) {
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(receipt)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
        }
    }
    Ok(())
}
