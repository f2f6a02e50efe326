#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init();
    let state = oauth_callback::init();
    if let Err(e) = &state {
        tracing::error!(error = %e, "configuration error; every request will get a 500");
    }
    let state = &state;
    // Not lambda_http::run: it panics on a query a caller can send (shared::lambda_event).
    shared::lambda_event::run(move |req| oauth_callback::handle(state, req)).await
}
