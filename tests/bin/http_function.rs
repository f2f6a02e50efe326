//! An HTTP function as Lambda runs it, for `tests/integration/runtime_events.rs`: the real `init`
//! (configuration from the environment) and `handle` of upload-ingest (`ingest`) or oauth-callback
//! (`callback`) behind `shared::lambda_event::run`, exactly as their `main.rs` wire them, polling
//! the Runtime API at `AWS_LAMBDA_RUNTIME_API`. `ingest-lambda-http` serves upload-ingest through
//! `lambda_http::run` instead, the wiring the adapter replaced, so the test shows what it fixes.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    match std::env::args().nth(1).as_deref() {
        Some("ingest") => {
            let state = upload_ingest::init().await;
            let state = &state;
            shared::lambda_event::run(move |req| upload_ingest::handle(state, req)).await
        }
        Some("callback") => {
            let state = oauth_callback::init();
            let state = &state;
            shared::lambda_event::run(move |req| oauth_callback::handle(state, req)).await
        }
        Some("ingest-lambda-http") => {
            let state = upload_ingest::init().await;
            let state = &state;
            lambda_http::run(lambda_http::service_fn(move |req| async move {
                Ok::<_, lambda_http::Error>(upload_ingest::handle(state, req).await)
            }))
            .await
        }
        _ => Err("usage: http-function ingest|callback|ingest-lambda-http".into()),
    }
}
