//! token-refresh: keeps every stored refresh token alive ([`shared::signin::refresh`] runs it).
//!
//! A scheduled event refreshes every connection that is due; `{"connections": ["a", "b"]}` run by
//! hand refreshes those now. A failed run becomes a Lambda diagnostic whose `errorType` says
//! whether retrying may help (`SpBridge.Retryable.*`) or not (`SpBridge.Fatal.*`).

use lambda_runtime::Diagnostic;
use serde::Deserialize;
use shared::config::Config;
use shared::signin::refresh::{self, Run};
pub use shared::signin::refresh::{ConnectionReport, Report, RunFailure, certificate_not_after};

/// The time source; tests inject a shifted clock.
pub use shared::runtime::Clock;

/// What a warm container keeps between invocations.
pub type State = shared::runtime::Warm;

/// Builds the state once per cold start. The error text names the bad variable.
pub fn init() -> Result<State, String> {
    init_with(Config::from_env().map_err(|e| e.to_string())?)
}

/// Builds the state from an already-read configuration (refresh settings from the environment).
pub fn init_with(config: Config) -> Result<State, String> {
    State::from_config(config)
}

/// The events this function answers: the EventBridge schedule or a manual run.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Trigger {
    /// `{"connections": ["a", "b"]}` run by hand: refresh these now, due or not.
    Manual {
        /// Connection ids.
        connections: Vec<String>,
    },
    /// The scheduled EventBridge event.
    Scheduled(aws_lambda_events::event::eventbridge::EventBridgeEvent<serde_json::Value>),
}

/// A failed run, as the Lambda runtime reports it.
#[derive(Debug)]
pub struct Failed(pub RunFailure);

impl From<Failed> for Diagnostic {
    fn from(Failed(e): Failed) -> Self {
        Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// How long before the invocation's deadline a run stops starting refreshes: room for the ones
/// in flight to finish their token call and both secret writes, with retries.
pub const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Handles one trigger with no time limit.
pub async fn handle(state: &Result<State, String>, trigger: Trigger) -> Result<Report, Failed> {
    handle_until(state, trigger, None).await
}

/// Handles one trigger under Lambda's deadline (milliseconds since the Unix epoch, from the
/// invocation's context): refreshes stop starting [`STOP_MARGIN`] before it.
pub async fn handle_until(
    state: &Result<State, String>,
    trigger: Trigger,
    deadline_ms: Option<u64>,
) -> Result<Report, Failed> {
    let stop_by = deadline_ms.map(|d| {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64);
        let left = std::time::Duration::from_millis(d.saturating_sub(now_ms));
        tokio::time::Instant::now() + left.saturating_sub(STOP_MARGIN)
    });
    let state = state
        .as_ref()
        .map_err(|e| Failed(RunFailure::Config(e.clone())))?;
    let what = match trigger {
        Trigger::Manual { connections } => Run::Manual(connections),
        Trigger::Scheduled(_) => Run::Scheduled,
    };
    refresh::run_until(state, what, stop_by)
        .await
        .map_err(Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_configuration_error_fails_the_run_with_a_fatal_diagnostic() {
        let state: Result<State, String> = Err("SPBRIDGE_CLOUD is invalid".into());
        let e = handle(
            &state,
            Trigger::Manual {
                connections: vec![],
            },
        )
        .await
        .unwrap_err();
        let d: Diagnostic = e.into();
        assert_eq!(d.error_type, "SpBridge.Fatal.Misconfigured");
        assert!(d.error_message.contains("SPBRIDGE_CLOUD"));
    }
}
