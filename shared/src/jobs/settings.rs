//! Where the jobs infrastructure is: read from the environment the template sets.

use std::time::Duration;

use super::dynamo::DynamoJobStore;
use super::queue::SqsQueue;
use super::staging::S3Staging;
use super::worker::WorkerSettings;

/// The jobs table, queue, dead-letter queue and staging bucket, and the worker's tuning.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// `SPBRIDGE_JOBS_TABLE`.
    pub table: String,
    /// `SPBRIDGE_JOB_QUEUE_URL`.
    pub queue_url: String,
    /// `SPBRIDGE_STAGING_BUCKET`.
    pub bucket: String,
    /// `SPBRIDGE_DEAD_LETTER_QUEUE_ARN`: records from it are dead letters.
    pub dead_letter_arn: Option<String>,
    /// `SPBRIDGE_JOB_RETENTION_DAYS` (default 7).
    pub retention: Duration,
    /// `SPBRIDGE_MAX_RECEIVES` (the queue's `maxReceiveCount`, default 5) and
    /// `SPBRIDGE_WORKER_LEASE_SECS` (the function's timeout, default 900),
    /// `SPBRIDGE_WORKER_BUDGET_SECS` (one invocation's working time; unset or 0: the Lambda
    /// deadline less [`super::worker::WorkerSettings::margin`]).
    pub worker: WorkerSettings,
}

impl JobsConfig {
    /// Reads the settings through `get`; the error names the missing or bad variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let need = |k: &str| {
            get(k)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("{k} is not set"))
        };
        let number = |k: &str, default: u64| -> Result<u64, String> {
            match get(k).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{k} must be a whole number, not {v:?}")),
            }
        };
        let worker = WorkerSettings {
            max_receives: u32::try_from(number("SPBRIDGE_MAX_RECEIVES", 5)?)
                .map_err(|_| "SPBRIDGE_MAX_RECEIVES is too large".to_owned())?,
            lease: Duration::from_secs(number("SPBRIDGE_WORKER_LEASE_SECS", 900)?),
            budget: match number("SPBRIDGE_WORKER_BUDGET_SECS", 0)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            ..WorkerSettings::default()
        };
        Ok(JobsConfig {
            table: need("SPBRIDGE_JOBS_TABLE")?,
            queue_url: need("SPBRIDGE_JOB_QUEUE_URL")?,
            bucket: need("SPBRIDGE_STAGING_BUCKET")?,
            dead_letter_arn: get("SPBRIDGE_DEAD_LETTER_QUEUE_ARN").filter(|v| !v.is_empty()),
            retention: Duration::from_secs(number("SPBRIDGE_JOB_RETENTION_DAYS", 7)? * 86_400),
            worker,
        })
    }

    /// [`JobsConfig::from_lookup`] over the process environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The three adapters over one SDK configuration.
    pub fn connect(&self, sdk: &aws_config::SdkConfig) -> (DynamoJobStore, SqsQueue, S3Staging) {
        (
            DynamoJobStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                &self.table,
                self.retention,
            ),
            SqsQueue::new(aws_sdk_sqs::Client::new(sdk), &self.queue_url),
            S3Staging::new(
                // A custom endpoint (moto in scripts/dev) serves buckets on paths, not on
                // subdomains of 127.0.0.1.
                aws_sdk_s3::Client::from_conf(
                    aws_sdk_s3::config::Builder::from(sdk)
                        .force_path_style(sdk.endpoint_url().is_some())
                        .build(),
                ),
                &self.bucket,
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing_or_bad() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let e = JobsConfig::from_lookup(env(&[])).unwrap_err();
        assert!(e.contains("SPBRIDGE_JOBS_TABLE"), "{e}");
        let base = [
            ("SPBRIDGE_JOBS_TABLE", "t"),
            ("SPBRIDGE_JOB_QUEUE_URL", "q"),
            ("SPBRIDGE_STAGING_BUCKET", "b"),
            ("SPBRIDGE_MAX_RECEIVES", "three"),
        ];
        let e = JobsConfig::from_lookup(env(Box::leak(Box::new(base)))).unwrap_err();
        assert!(e.contains("SPBRIDGE_MAX_RECEIVES"), "{e}");
        let ok = JobsConfig::from_lookup(env(Box::leak(Box::new([
            ("SPBRIDGE_JOBS_TABLE", "t"),
            ("SPBRIDGE_JOB_QUEUE_URL", "q"),
            ("SPBRIDGE_STAGING_BUCKET", "b"),
        ]))))
        .unwrap();
        assert_eq!(ok.worker.max_receives, 5);
        assert_eq!(ok.retention, Duration::from_secs(7 * 86_400));
    }
}
