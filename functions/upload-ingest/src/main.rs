use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Config, secret store, job table, queue and staging clients: once per cold start.
    let state = upload_ingest::init().await;
    if let Err(e) = &state {
        tracing::error!(error = %e, "configuration error; every request will get a 500 naming it");
    }
    let state = &state;
    run(service_fn(move |req| async move {
        Ok::<_, Error>(upload_ingest::handle(state, req).await)
    }))
    .await
}
