use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Config, HTTP client, secret store, token cache and Access: once per cold start.
    let state = upload_ingest::init();
    match &state {
        Ok(s) => {
            if let Err(e) = s.warm().await {
                tracing::error!(error = %e, "cannot build the upload pipeline; requests will get a 500 naming it");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration error; every request will get a 500 naming it")
        }
    }
    let state = &state;
    run(service_fn(move |req| async move {
        Ok::<_, Error>(upload_ingest::handle(state, req).await)
    }))
    .await
}
