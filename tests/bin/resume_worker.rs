//! One upload-worker invocation in a process of its own, as Lambda runs one: the real `init`
//! (configuration from the environment, `SPBRIDGE_WORKER_BUDGET_SECS` included) and the real
//! `handle` on one batch received from the job queue (`SPBRIDGE_JOB_QUEUE_URL`). Messages not
//! named as failed are deleted, as the event source mapping does. Prints one JSON line:
//! `{"records": n, "failed": n, "peak_rss_kib": n}` (the process's VmHWM).

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), String> {
    let state = upload_worker::init().await;
    let queue = std::env::var("SPBRIDGE_JOB_QUEUE_URL").map_err(|e| e.to_string())?;
    let sqs = aws_sdk_sqs::Client::new(&aws_config::load_from_env().await);
    let out = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut event = SqsEvent::default();
    let mut receipts = Vec::new();
    for m in out.messages.unwrap_or_default() {
        if let (Some(id), Some(r)) = (&m.message_id, &m.receipt_handle) {
            receipts.push((id.clone(), r.clone()));
        }
        event
            .records
            .push(upload_worker::event_record(m, "arn:local:jobs"));
    }
    let records = event.records.len();
    let mut failed = 0;
    if records > 0 {
        let mut ctx = Context::default();
        ctx.request_id = uuid::Uuid::new_v4().to_string();
        let answer = upload_worker::handle(&state, LambdaEvent::new(event, ctx)).await;
        let names: Vec<String> = answer
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        failed = names.len();
        for (id, receipt) in receipts {
            if !names.contains(&id) {
                let _ = sqs
                    .delete_message()
                    .queue_url(&queue)
                    .receipt_handle(receipt)
                    .send()
                    .await;
            }
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({"records": records, "failed": failed, "peak_rss_kib": peak})
    );
    Ok(())
}
