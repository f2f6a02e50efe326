use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use token_refresh::Trigger;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let state = token_refresh::init();
    if let Err(e) = &state {
        tracing::error!(error = %e, "configuration error; every run will fail naming it");
    }
    let state = &state;
    // Errors become Lambda diagnostics whose errorType says whether a retry may help.
    run(service_fn(move |event: LambdaEvent<Trigger>| async move {
        token_refresh::handle_until(state, event.payload, Some(event.context.deadline)).await
    }))
    .await
}
