//! oauth-callback: starts and completes Microsoft sign-in and consent flows.

use lambda_http::{Body, Request, Response, http::StatusCode};
use shared::config::Config;

/// What a warm container keeps between invocations.
pub struct State {
    pub config: Config,
    pub http: reqwest::Client,
}

/// Builds the state once per cold start. The error text names the bad variable.
pub fn init() -> Result<State, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let http = shared::http::build_client(&config.http).map_err(|e| e.to_string())?;
    Ok(State { config, http })
}

/// Answers one API Gateway request.
pub async fn handle(state: &Result<State, String>, req: Request) -> Response<Body> {
    let _state = match state {
        Ok(s) => s,
        Err(e) => return json(StatusCode::INTERNAL_SERVER_ERROR, "configuration_error", e),
    };
    match (req.method().as_str(), req.uri().path()) {
        ("GET", p) if p.starts_with("/connect/") || p == "/callback" => json(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "sign-in flows are not implemented yet",
        ),
        ("POST", "/callback") => json(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "sign-in flows are not implemented yet",
        ),
        _ => json(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

fn json(status: StatusCode, error: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}
