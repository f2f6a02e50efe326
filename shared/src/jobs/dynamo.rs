//! [`JobStore`] on DynamoDB: one item per job, partition key `job` (S), TTL attribute
//! `expires_at`.
//!
//! Every write is one conditional request. Creation is a `PutItem` with
//! `attribute_not_exists(job)`; a repeated delivery reads the existing item from the failed
//! condition (`ReturnValuesOnConditionCheckFailure`) and adds its own status-token hash.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use futures_util::future::BoxFuture;
use serde_json::Value;
use time::OffsetDateTime;

use super::{
    CallbackRecord, Checkpoint, Created, Job, JobError, JobFailure, JobId, JobStatus, JobStore,
    Lease, NewJob, Outcome, Progress, StatusToken,
};

type Item = HashMap<String, AttributeValue>;

/// Most status tokens one job hands out (one per repeated delivery); later repeats still get
/// the job, with a token that opens nothing new.
const MAX_TOKENS: usize = 32;

/// Placeholders used in expressions (several attribute names are DynamoDB reserved words).
const NAMES: &[(&str, &str)] = &[
    ("#job", "job"),
    ("#st", "status"),
    ("#res", "result"),
    ("#err", "error"),
    ("#lo", "lease_owner"),
    ("#lu", "lease_until"),
    ("#gen", "generation"),
    ("#att", "attempts"),
    ("#upd", "updated_at"),
    ("#exp", "expires_at"),
    ("#bd", "bytes_done"),
    ("#fd", "files_done"),
    ("#cb", "callback"),
    ("#tok", "token_hashes"),
    ("#cp", "checkpoint"),
    ("#notes", "notes"),
    ("#ho", "handoffs"),
];

/// The DynamoDB adapter.
#[derive(Debug, Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
    retention: Duration,
}

impl DynamoJobStore {
    /// Jobs in `table`; a record expires `retention` after its last change.
    pub fn new(client: Client, table: impl Into<String>, retention: Duration) -> Self {
        DynamoJobStore {
            client,
            table: table.into(),
            retention,
        }
    }

    fn expires(&self, now: OffsetDateTime) -> AttributeValue {
        n(now.unix_timestamp() + self.retention.as_secs() as i64)
    }

    /// An `UpdateItem` on `id` with the placeholders its expressions use.
    fn update(
        &self,
        id: &JobId,
        set: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let mut names: HashMap<String, String> = NAMES
            .iter()
            .filter(|(p, _)| uses(set, p) || uses(condition, p))
            .map(|(p, a)| ((*p).to_owned(), (*a).to_owned()))
            .collect();
        // `#i` is a files_done index, given as a value-less name by the caller.
        if set.contains("#fd.#i") {
            if let Some((_, AttributeValue::S(i))) = values.iter().find(|(k, _)| *k == "#i") {
                names.insert("#i".into(), i.clone());
            }
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .key("job", s(id.as_str()))
            .update_expression(set)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(
                values
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(':'))
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            ))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    /// An `UpdateItem` that applies only while `lease` still holds the job (same owner and
    /// generation, and with `uploading` the job still uploading). Adds the condition's values.
    async fn leased_update(
        &self,
        lease: &Lease,
        set: &str,
        uploading: bool,
        mut values: Vec<(&str, AttributeValue)>,
    ) -> Result<(), JobError> {
        let condition = if uploading {
            values.push((":up", s(JobStatus::Uploading.as_str())));
            "#lo = :o AND #gen = :g AND #st = :up"
        } else {
            "#lo = :o AND #gen = :g"
        };
        values.push((":o", s(&lease.owner)));
        values.push((":g", n(lease.generation as i64)));
        self.update(&lease.job, set, condition, values)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| update_refused(&e, true))
    }

    /// Why a conditional write on an existing job failed, from the item it saw.
    fn refused(old: Option<&Item>, lease_expected: bool) -> JobError {
        let Some(item) = old else {
            return JobError::NotFound;
        };
        match parse(item) {
            Ok(job) if job.status.is_final() => JobError::Finished(Box::new(job)),
            Ok(_) if lease_expected => JobError::LeaseLost,
            Ok(job) => match job.lease {
                Some((_, until)) => JobError::LeaseHeld { until },
                None => JobError::LeaseLost,
            },
            Err(e) => e,
        }
    }
}

fn uses(expr: &str, placeholder: &str) -> bool {
    expr.match_indices(placeholder).any(|(i, _)| {
        !expr[i + placeholder.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn json_text<T: serde::Serialize>(v: &T) -> AttributeValue {
    s(&serde_json::to_string(v).unwrap_or_default())
}

fn unavailable<E: ProvideErrorMetadata + std::error::Error, R>(e: &SdkError<E, R>) -> JobError {
    let text = match e.as_service_error() {
        Some(svc) => format!(
            "{}: {}",
            svc.code().unwrap_or("error"),
            svc.message().unwrap_or("")
        ),
        None => match e {
            SdkError::TimeoutError(_) => "timed out".to_owned(),
            SdkError::DispatchFailure(_) => "could not connect".to_owned(),
            _ => "unexpected response".to_owned(),
        },
    };
    JobError::Unavailable(text)
}

fn get_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.get(key)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, key: &str) -> Option<i64> {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn get_json<T: serde::de::DeserializeOwned>(item: &Item, key: &str) -> Result<Option<T>, JobError> {
    get_s(item, key)
        .map(|t| serde_json::from_str(t).map_err(|e| JobError::Corrupt(format!("{key}: {e}"))))
        .transpose()
}

fn parse(item: &Item) -> Result<Job, JobError> {
    let need = |k: &str| {
        get_s(item, k)
            .map(str::to_owned)
            .ok_or_else(|| JobError::Corrupt(format!("no {k}")))
    };
    let status = JobStatus::parse(&need("status")?)
        .ok_or_else(|| JobError::Corrupt("unknown status".into()))?;
    let mut files_done = Vec::new();
    if let Some(AttributeValue::M(m)) = item.get("files_done") {
        for (k, v) in m {
            let (Ok(i), Ok(text)) = (k.parse::<usize>(), v.as_s()) else {
                continue;
            };
            if files_done.len() <= i {
                files_done.resize(i + 1, None);
            }
            files_done[i] = serde_json::from_str(text).ok();
        }
    }
    let lease = match (get_s(item, "lease_owner"), get_n(item, "lease_until")) {
        (Some(o), Some(u)) => Some((o.to_owned(), from_ms(u))),
        _ => None,
    };
    Ok(Job {
        id: JobId::parse(&need("job")?)?,
        connection: need("connection")?,
        delivery: need("delivery")?,
        payload_hash: need("payload_hash")?,
        status,
        attempts: get_n(item, "attempts").unwrap_or(0) as u32,
        progress: Progress {
            done: get_n(item, "bytes_done").unwrap_or(0) as u64,
            total: get_n(item, "bytes_total").map(|v| v as u64),
        },
        result: get_json::<Value>(item, "result")?,
        error: get_json::<JobFailure>(item, "error")?,
        files_done,
        callback: get_json::<CallbackRecord>(item, "callback")?,
        lease,
        generation: get_n(item, "generation").unwrap_or(0) as u64,
        checkpoint: get_json::<Checkpoint>(item, "checkpoint")?,
        notes: item
            .get("notes")
            .and_then(|v| v.as_l().ok())
            .map(|l| l.iter().filter_map(|n| n.as_s().ok().cloned()).collect())
            .unwrap_or_default(),
        handoffs: get_n(item, "handoffs").unwrap_or(0) as u32,
        created_at: from_ms(get_n(item, "created_at").unwrap_or(0)),
        updated_at: from_ms(get_n(item, "updated_at").unwrap_or(0)),
        expires_at: get_n(item, "expires_at").unwrap_or(0),
        token_hashes: item
            .get("token_hashes")
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
    })
}

impl JobStore for DynamoJobStore {
    fn create<'a>(
        &'a self,
        new: &'a NewJob,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Created, JobError>> {
        Box::pin(async move {
            let id = new.id();
            let token = StatusToken::generate();
            let mut item: Item = HashMap::from([
                ("job".into(), s(id.as_str())),
                ("connection".into(), s(&new.connection)),
                ("delivery".into(), s(new.delivery.as_str())),
                ("payload_hash".into(), s(&new.payload_hash)),
                ("status".into(), s(JobStatus::Accepted.as_str())),
                ("attempts".into(), n(0)),
                ("generation".into(), n(0)),
                ("bytes_done".into(), n(0)),
                ("files_done".into(), AttributeValue::M(HashMap::new())),
                ("created_at".into(), n(ms(now))),
                ("updated_at".into(), n(ms(now))),
                (
                    "expires_at".into(),
                    n(now.unix_timestamp() + new.retention.as_secs() as i64),
                ),
                (
                    "token_hashes".into(),
                    AttributeValue::Ss(vec![token.hash()]),
                ),
            ]);
            if let Some(total) = new.bytes_total {
                item.insert("bytes_total".into(), n(total as i64));
            }
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(#job)")
                .expression_attribute_names("#job", "job")
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let old = match put {
                Ok(_) => {
                    return Ok(Created {
                        job: parse(&item)?,
                        token,
                        existed: false,
                    });
                }
                Err(e) => match e.as_service_error() {
                    Some(svc) if svc.is_conditional_check_failed_exception() => match svc {
                        aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item().cloned(),
                        _ => None,
                    },
                    _ => return Err(unavailable(&e)),
                },
            };
            let existing = match old {
                Some(item) => parse(&item)?,
                None => self.get(&id).await?,
            };
            if existing.payload_hash != new.payload_hash {
                return Err(JobError::IdReused);
            }
            if existing.token_hashes.len() >= MAX_TOKENS {
                return Ok(Created {
                    job: existing,
                    token,
                    existed: true,
                });
            }
            let added = self
                .update(
                    &id,
                    "ADD #tok :t",
                    "attribute_exists(#job)",
                    vec![(":t", AttributeValue::Ss(vec![token.hash()]))],
                )
                .send()
                .await
                .map_err(|e| unavailable(&e))?;
            let job = match added.attributes() {
                Some(item) => parse(item)?,
                None => existing,
            };
            Ok(Created {
                job,
                token,
                existed: true,
            })
        })
    }

    fn get<'a>(&'a self, id: &'a JobId) -> BoxFuture<'a, Result<Job, JobError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("job", s(id.as_str()))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| unavailable(&e))?;
            out.item().map(parse).unwrap_or(Err(JobError::NotFound))
        })
    }

    fn acquire<'a>(
        &'a self,
        id: &'a JobId,
        owner: &'a str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(Lease, Job), JobError>> {
        Box::pin(async move {
            let out = self
                .update(
                    id,
                    "SET #lo = :o, #lu = :u, #st = :up, #upd = :now, #exp = :exp ADD #gen :one, #att :one",
                    "attribute_exists(#job) AND #st IN (:acc, :up) \
                     AND (attribute_not_exists(#lu) OR #lu < :nowms)",
                    vec![
                        (":o", s(owner)),
                        (":u", n(ms(until))),
                        (":up", s(JobStatus::Uploading.as_str())),
                        (":acc", s(JobStatus::Accepted.as_str())),
                        (":now", n(ms(now))),
                        (":nowms", n(ms(now))),
                        (":exp", self.expires(now)),
                        (":one", n(1)),
                    ],
                )
                .send()
                .await;
            match out {
                Ok(o) => {
                    let job = parse(o.attributes().ok_or(JobError::NotFound)?)?;
                    let lease = Lease {
                        job: id.clone(),
                        owner: owner.to_owned(),
                        generation: job.generation,
                        until,
                    };
                    Ok((lease, job))
                }
                Err(e) => Err(update_refused(&e, false)),
            }
        })
    }

    fn file_done<'a>(
        &'a self,
        lease: &'a Lease,
        index: usize,
        answer: &'a Value,
        progress: Progress,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.leased_update(
            lease,
            "SET #fd.#i = :a, #bd = :bd, #upd = :now REMOVE #cp",
            true,
            vec![
                ("#i", s(&index.to_string())),
                (":a", json_text(answer)),
                (":bd", n(progress.done as i64)),
                (":now", n(ms(now))),
            ],
        ))
    }

    fn finish<'a>(
        &'a self,
        lease: &'a Lease,
        outcome: &'a Outcome,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Job, JobError>> {
        Box::pin(async move {
            let (status, set, value) = match outcome {
                Outcome::Done(v) => (JobStatus::Done, "#res", json_text(v)),
                Outcome::Failed(f) => (JobStatus::Failed, "#err", json_text(f)),
            };
            let expr = format!(
                "SET #st = :fin, {set} = :x, #upd = :now, #exp = :exp REMOVE #lo, #lu, #cp"
            );
            let out = self
                .update(
                    &lease.job,
                    &expr,
                    "#lo = :o AND #gen = :g AND #st IN (:acc, :up)",
                    vec![
                        (":fin", s(status.as_str())),
                        (":x", value),
                        (":now", n(ms(now))),
                        (":exp", self.expires(now)),
                        (":o", s(&lease.owner)),
                        (":g", n(lease.generation as i64)),
                        (":acc", s(JobStatus::Accepted.as_str())),
                        (":up", s(JobStatus::Uploading.as_str())),
                    ],
                )
                .send()
                .await
                .map_err(|e| update_refused(&e, true))?;
            parse(out.attributes().ok_or(JobError::NotFound)?)
        })
    }

    fn checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        checkpoint: Option<&'a Checkpoint>,
        progress: Progress,
        note: Option<&'a str>,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let mut set = String::from("SET #bd = :bd, #upd = :now");
            let mut values = vec![(":bd", n(progress.done as i64)), (":now", n(ms(now)))];
            if let Some(cp) = checkpoint {
                set.push_str(", #cp = :cp");
                values.push((":cp", json_text(cp)));
            }
            if let Some(text) = note {
                set.push_str(", #notes = list_append(if_not_exists(#notes, :none), :note)");
                values.push((":none", AttributeValue::L(Vec::new())));
                values.push((":note", AttributeValue::L(vec![s(text)])));
            }
            if checkpoint.is_none() {
                set.push_str(" REMOVE #cp");
            }
            self.leased_update(lease, &set, true, values).await
        })
    }

    fn hand_off<'a>(
        &'a self,
        lease: &'a Lease,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.leased_update(
            lease,
            "SET #upd = :now REMOVE #lo, #lu ADD #ho :one, #att :minus",
            true,
            vec![(":now", n(ms(now))), (":one", n(1)), (":minus", n(-1))],
        ))
    }

    fn release<'a>(
        &'a self,
        lease: &'a Lease,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.leased_update(
            lease,
            "SET #upd = :now REMOVE #lo, #lu",
            false,
            vec![(":now", n(ms(now)))],
        ))
    }

    fn abandon<'a>(
        &'a self,
        id: &'a JobId,
        failure: &'a JobFailure,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Job, JobError>> {
        Box::pin(async move {
            let out = self
                .update(
                    id,
                    "SET #st = :fin, #err = :x, #upd = :now, #exp = :exp REMOVE #lo, #lu",
                    "attribute_exists(#job) AND #st IN (:acc, :up)",
                    vec![
                        (":fin", s(JobStatus::Failed.as_str())),
                        (":x", json_text(failure)),
                        (":now", n(ms(now))),
                        (":exp", self.expires(now)),
                        (":acc", s(JobStatus::Accepted.as_str())),
                        (":up", s(JobStatus::Uploading.as_str())),
                    ],
                )
                .send()
                .await
                .map_err(|e| update_refused(&e, false))?;
            parse(out.attributes().ok_or(JobError::NotFound)?)
        })
    }

    fn record_callback<'a>(
        &'a self,
        id: &'a JobId,
        record: &'a CallbackRecord,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            self.update(
                id,
                "SET #cb = :c, #upd = :now",
                "attribute_exists(#job)",
                vec![(":c", json_text(record)), (":now", n(ms(now)))],
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| update_refused(&e, false))
        })
    }
}

fn update_refused<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError, R>,
    lease_expected: bool,
) -> JobError {
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    match e.as_service_error() {
        Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
            DynamoJobStore::refused(c.item(), lease_expected)
        }
        _ => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_match_whole_names_only() {
        assert!(uses("SET #st = :x", "#st"));
        assert!(!uses("SET #stx = :x", "#st"));
        assert!(uses("a, #lu", "#lu"));
    }

    #[test]
    fn times_round_trip_in_milliseconds() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
            + time::Duration::milliseconds(250);
        assert_eq!(from_ms(ms(t)), t);
    }
}
