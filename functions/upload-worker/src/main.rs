use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Config, AWS clients, HTTP client and token access: once per cold start.
    let state = upload_worker::init().await;
    if let Err(e) = &state {
        tracing::error!(error = %e, "configuration error; every message will be retried until fixed");
    }
    let state = &state;
    run(service_fn(move |event| async move {
        Ok::<_, Error>(upload_worker::handle(state, event).await)
    }))
    .await
}
