//! The iot jobs operations (CreateJob … GetJobDocument) over the fleet's jobs service, in
//! botocore's shapes: configuration members pass through in their model names, times are epoch
//! seconds, and `statusDetails` is wrapped in `detailsMap`.

use super::who;
use crate::call::{Call, seconds, str_field};
use crate::error::{ApiError, ApiResult};
use crate::{ApiState, json};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use lichen_fleet_jobs::{
    CreateJob, ExecutionStatus, Job, JobExecution, JobStatus, JobsError, JobsService,
    TargetSelection,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

impl From<JobsError> for ApiError {
    fn from(e: JobsError) -> Self {
        let message = e.to_string();
        match e {
            JobsError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
            }
            JobsError::AlreadyExists { job_id, arn } => ApiError {
                status: StatusCode::CONFLICT,
                code: "ResourceAlreadyExistsException",
                message,
                extra: vec![("resourceId", job_id), ("resourceArn", arn)],
            },
            JobsError::Invalid(_) => Self::invalid(message),
            JobsError::InvalidStateTransition { .. } | JobsError::TerminalState { .. } => {
                Self::new(
                    StatusCode::CONFLICT,
                    "InvalidStateTransitionException",
                    message,
                )
            }
            JobsError::VersionMismatch { .. } => {
                Self::new(StatusCode::CONFLICT, "VersionConflictException", message)
            }
            JobsError::Registry(r) => r.into(),
        }
    }
}

/// Whether `segs` is a jobs route.
pub(super) fn serves(segs: &[&str]) -> bool {
    matches!(segs, ["jobs", ..] | ["things", _, "jobs", ..])
}

pub(super) fn route(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let Some(jobs) = &s.jobs else {
        return Err(ApiError::unknown_operation(
            c.method.as_str(),
            &c.path,
            "iot (jobs are not served by this fleet)",
        ));
    };
    match (&c.method, c.segs().as_slice()) {
        (&Method::PUT, ["jobs", id]) => create_job(jobs, c, id),
        (&Method::GET, ["jobs", id]) => {
            let job = jobs.describe_job_blocking(id)?;
            Ok(json(json!({"job": job_json(&job, true)})))
        }
        (&Method::GET, ["jobs"]) => list_jobs(jobs, c),
        (&Method::PUT, ["jobs", id, "cancel"]) => {
            let body = c.json()?;
            let reason = str_field(&body, "reasonCode")?.map(str::to_string);
            if let Some(r) = &reason
                && (r.is_empty()
                    || !r
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
            {
                return Err(ApiError::invalid(format!(
                    "reasonCode {r:?} must be upper-case letters, digits and '_'"
                )));
            }
            let comment = str_field(&body, "comment")?.map(str::to_string);
            let force = c.q_bool("force")?.unwrap_or(false);
            let j = jobs.cancel_job_blocking(who(c), id, force, reason, comment)?;
            let mut out = json!({"jobArn": j.job_arn, "jobId": j.job_id});
            if let Some(d) = j.description {
                out["description"] = json!(d);
            }
            Ok(json(out))
        }
        (&Method::DELETE, ["jobs", id]) => {
            jobs.delete_job_blocking(who(c), id, c.q_bool("force")?.unwrap_or(false))?;
            Ok(json(json!({})))
        }
        (&Method::GET, ["jobs", id, "job-document"]) => {
            Ok(json(json!({"document": jobs.job_document_blocking(id)?})))
        }
        (&Method::GET, ["jobs", id, "things"]) => {
            let status = status_filter(c)?;
            let arn = |t: &str| s.registry.arn(&format!("thing/{t}"));
            let items: Vec<(String, Value)> = jobs
                .list_executions_for_job_blocking(id)?
                .into_iter()
                .filter(|e| status.is_none_or(|s| e.status == s))
                .map(|e| {
                    (
                        e.thing_name.clone(),
                        json!({"thingArn": arn(&e.thing_name), "jobExecutionSummary": summary_json(&e)}),
                    )
                })
                .collect();
            page(c, "executionSummaries", items)
        }
        (&Method::GET, ["things", thing, "jobs"]) => {
            let status = status_filter(c)?;
            let job_filter = c.q("jobId");
            let items: Vec<(String, Value)> = jobs
                .list_executions_for_thing_blocking(thing, c.q("namespaceId"))?
                .into_iter()
                .filter(|e| status.is_none_or(|s| e.status == s))
                .filter(|e| job_filter.is_none_or(|j| e.job_id == j))
                .enumerate()
                .map(|(i, e)| {
                    (
                        format!("{i:010}"),
                        json!({"jobId": e.job_id, "jobExecutionSummary": summary_json(&e)}),
                    )
                })
                .collect();
            page(c, "executionSummaries", items)
        }
        (&Method::GET, ["things", thing, "jobs", id]) => {
            let e = jobs.describe_execution_blocking(id, thing)?;
            if let Some(n) = c.q_int("executionNumber")?
                && n != e.execution_number
            {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFoundException",
                    format!("job {id:?} has no execution number {n} for thing {thing:?}"),
                ));
            }
            Ok(json(json!({"execution": execution_json(s, &e)})))
        }
        (&Method::PUT, ["things", thing, "jobs", id, "cancel"]) => {
            let body = c.json()?;
            let expected = match body.get("expectedVersion") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_i64()
                        .ok_or_else(|| ApiError::invalid("expectedVersion must be an integer"))?,
                ),
            };
            let details = details_map(body.get("statusDetails"), "statusDetails")?;
            jobs.cancel_execution_blocking(
                who(c),
                id,
                thing,
                c.q_bool("force")?.unwrap_or(false),
                expected,
                details,
            )?;
            Ok(json(json!({})))
        }
        _ => Err(ApiError::unknown_operation(
            c.method.as_str(),
            &c.path,
            "iot",
        )),
    }
}

fn create_job(jobs: &JobsService, c: &Call, id: &str) -> ApiResult<Response> {
    let body = c.json()?;
    let targets = match body.get("targets") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid("targets must be a list of ARN strings"))
            })
            .collect::<ApiResult<Vec<_>>>()?,
        _ => {
            return Err(ApiError::invalid(
                "targets (a list of thing and thing-group ARNs) is required",
            ));
        }
    };
    let document = match (str_field(&body, "document")?, body.get("documentSource")) {
        (Some(d), _) => d.to_string(),
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "documentSource (a document in S3) is not served by this fleet; pass the \
                 document inline as document",
            ));
        }
        (None, None) => return Err(ApiError::invalid("document is required")),
    };
    let target_selection = match str_field(&body, "targetSelection")? {
        None | Some("SNAPSHOT") => TargetSelection::Snapshot,
        Some("CONTINUOUS") => TargetSelection::Continuous,
        Some(o) => {
            return Err(ApiError::invalid(format!(
                "targetSelection {o:?} is not SNAPSHOT or CONTINUOUS"
            )));
        }
    };
    let req = CreateJob {
        job_id: id.to_string(),
        targets,
        document,
        description: str_field(&body, "description")?.map(str::to_string),
        target_selection,
        rollout: member(&body, "jobExecutionsRolloutConfig")?,
        abort: member(&body, "abortConfig")?,
        timeout: member(&body, "timeoutConfig")?,
        namespace_id: str_field(&body, "namespaceId")?.map(str::to_string),
    };
    let j = jobs.create_job_blocking(who(c), &req)?;
    let mut out = json!({"jobArn": j.job_arn, "jobId": j.job_id});
    if let Some(d) = j.description {
        out["description"] = json!(d);
    }
    Ok(json(out))
}

/// A configuration member read in its model shape, with the member named in errors.
fn member<T: serde::de::DeserializeOwned>(
    body: &Map<String, Value>,
    name: &str,
) -> ApiResult<Option<T>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| ApiError::invalid(format!("{name}: {e}"))),
    }
}

fn details_map(v: Option<&Value>, name: &str) -> ApiResult<Option<BTreeMap<String, String>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("{name} must be an object of strings"))),
    }
}

fn status_filter(c: &Call) -> ApiResult<Option<ExecutionStatus>> {
    c.q("status")
        .map(|s| {
            ExecutionStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!("status {s:?} is not a job execution status"))
            })
        })
        .transpose()
}

fn list_jobs(jobs: &JobsService, c: &Call) -> ApiResult<Response> {
    let status = c
        .q("status")
        .map(|s| {
            JobStatus::parse(s)
                .ok_or_else(|| ApiError::invalid(format!("status {s:?} is not a job status")))
        })
        .transpose()?;
    let selection = c.q("targetSelection");
    let group = c.q("thingGroupName");
    let items: Vec<(String, Value)> = jobs
        .list_jobs_blocking(status, c.q("namespaceId"), "", usize::MAX)?
        .into_iter()
        .filter(|j| selection.is_none_or(|s| j.target_selection.as_str() == s))
        .filter(|j| {
            group.is_none_or(|g| {
                j.targets
                    .iter()
                    .any(|t| t.ends_with(&format!(":thinggroup/{g}")))
            })
        })
        .map(|j| {
            let mut v = json!({
                "jobArn": j.job_arn,
                "jobId": j.job_id,
                "targetSelection": j.target_selection.as_str(),
                "status": j.status.as_str(),
                "createdAt": seconds(j.created_at),
                "lastUpdatedAt": seconds(j.last_updated_at),
                "isConcurrent": false,
            });
            if let Some(t) = j.completed_at {
                v["completedAt"] = seconds(t);
            }
            (j.job_id.clone(), v)
        })
        .collect();
    page(c, "jobs", items)
}

/// One page of `items` (key, value) in key order: `nextToken` is the last key returned.
fn page(c: &Call, key: &str, items: Vec<(String, Value)>) -> ApiResult<Response> {
    let limit = match c.q_int("maxResults")? {
        None => 250,
        Some(n) if (1..=250).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "maxResults {n} is out of range; use 1 to 250"
            )));
        }
    };
    let after = c.q("nextToken").unwrap_or("");
    let mut rest: Vec<(String, Value)> = items
        .into_iter()
        .filter(|(k, _)| k.as_str() > after)
        .collect();
    let next = (rest.len() > limit).then(|| rest[limit - 1].0.clone());
    rest.truncate(limit);
    let mut out = Map::new();
    out.insert(
        key.into(),
        Value::Array(rest.into_iter().map(|(_, v)| v).collect()),
    );
    if let Some(t) = next {
        out.insert("nextToken".into(), t.into());
    }
    Ok(json(Value::Object(out)))
}

fn job_json(j: &Job, full: bool) -> Value {
    let p = &j.process;
    let mut v = json!({
        "jobArn": j.job_arn,
        "jobId": j.job_id,
        "targetSelection": j.target_selection.as_str(),
        "status": j.status.as_str(),
        "forceCanceled": j.force_canceled,
        "targets": j.targets,
        "createdAt": seconds(j.created_at),
        "lastUpdatedAt": seconds(j.last_updated_at),
        "jobProcessDetails": {
            "processingTargets": p.processing_targets,
            "numberOfCanceledThings": p.canceled,
            "numberOfSucceededThings": p.succeeded,
            "numberOfFailedThings": p.failed,
            "numberOfRejectedThings": p.rejected,
            "numberOfQueuedThings": p.queued,
            "numberOfInProgressThings": p.in_progress,
            "numberOfRemovedThings": p.removed,
            "numberOfTimedOutThings": p.timed_out,
        },
        "isConcurrent": false,
    });
    let mut put = |k: &str, x: Option<Value>| {
        if let Some(x) = x {
            v[k] = x;
        }
    };
    put("description", j.description.clone().map(Value::from));
    put("reasonCode", j.reason_code.clone().map(Value::from));
    put("comment", j.comment.clone().map(Value::from));
    put("completedAt", j.completed_at.map(seconds));
    put("namespaceId", j.namespace_id.clone().map(Value::from));
    if full {
        put(
            "jobExecutionsRolloutConfig",
            j.rollout
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
        );
        put(
            "abortConfig",
            j.abort.as_ref().and_then(|r| serde_json::to_value(r).ok()),
        );
        put(
            "timeoutConfig",
            j.timeout
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
        );
    }
    v
}

fn summary_json(e: &JobExecution) -> Value {
    let mut v = json!({
        "status": e.status.as_str(),
        "queuedAt": seconds(e.queued_at),
        "lastUpdatedAt": seconds(e.last_updated_at),
        "executionNumber": e.execution_number,
        "retryAttempt": 0,
    });
    if let Some(t) = e.started_at {
        v["startedAt"] = seconds(t);
    }
    v
}

fn execution_json(s: &ApiState, e: &JobExecution) -> Value {
    let mut v = json!({
        "jobId": e.job_id,
        "status": e.status.as_str(),
        "forceCanceled": e.force_canceled,
        "statusDetails": {"detailsMap": e.status_details},
        "thingArn": s.registry.arn(&format!("thing/{}", e.thing_name)),
        "queuedAt": seconds(e.queued_at),
        "lastUpdatedAt": seconds(e.last_updated_at),
        "executionNumber": e.execution_number,
        "versionNumber": e.version_number,
    });
    if let Some(t) = e.started_at {
        v["startedAt"] = seconds(t);
    }
    if let (Some(t), ExecutionStatus::InProgress) = (e.timeout_at, e.status) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        v["approximateSecondsBeforeTimedOut"] = json!(((t - now) / 1000).max(0));
    }
    v
}
