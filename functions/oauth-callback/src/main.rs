use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let state = oauth_callback::init();
    if let Err(e) = &state {
        tracing::error!(error = %e, "configuration error; every request will get a 500");
    }
    let state = &state;
    run(service_fn(move |req| async move {
        Ok::<_, Error>(oauth_callback::handle(state, req).await)
    }))
    .await
}
