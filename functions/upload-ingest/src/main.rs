#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init();
    // Config, secret store, job table, queue and staging clients: once per cold start.
    let state = upload_ingest::init().await;
    if let Err(e) = &state {
        tracing::error!(error = %e, "configuration error; every request will get a 500 naming it");
    }
    let state = &state;
    // Not lambda_http::run: it panics on a query a caller can send (shared::lambda_event).
    shared::lambda_event::run(move |req| upload_ingest::handle(state, req)).await
}
