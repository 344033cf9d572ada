//! The device's jobs requests (get pending, start-next, describe, update), answered inside one
//! registry transaction per batch: requests that arrive while a batch commits go together in the
//! next one, so a fleet of devices costs one fsync per batch rather than one per request (group
//! commit). A device's refusal (`VersionMismatch`, `TerminalStateReached`, …) is a value that
//! writes nothing; only a registry failure aborts the batch, and then every request in it is
//! answered `InternalError`.

use crate::JobsService;
use crate::model::ExecutionStatus;
use crate::rules;
use crate::store::{self, Effects};
use lichen_fleet_registry::{ExecutionRow, JobsTx};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// What a device asked for.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Pending,
    StartNext,
    Describe(String),
    Update(String),
}

/// One request: the thing (as authorized), its namespace and the JSON payload.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub thing: String,
    pub ns: Option<String>,
    pub op: Op,
    pub payload: Map<String, Value>,
}

#[derive(Debug)]
pub(crate) struct Rejected {
    pub code: &'static str,
    pub message: String,
    pub state: Option<Box<ExecutionRow>>,
}

pub(crate) fn rejected(code: &'static str, message: impl Into<String>) -> Rejected {
    Rejected {
        code,
        message: message.into(),
        state: None,
    }
}

impl From<crate::JobsError> for Rejected {
    fn from(e: crate::JobsError) -> Self {
        match e {
            crate::JobsError::NotFound(m) => rejected("ResourceNotFound", m),
            crate::JobsError::Registry(r) => {
                tracing::error!("jobs request: {r}");
                rejected("InternalError", "the fleet registry failed; try again")
            }
            e => rejected("InvalidRequest", e.to_string()),
        }
    }
}

pub(crate) type Answer = Result<Value, Rejected>;

/// Answers `requests` in one transaction, in order; notifications go out after it commits.
pub(crate) fn run(svc: &JobsService, requests: &[Request]) -> Vec<Answer> {
    let now = crate::now_ms();
    let resource = match requests {
        [one] => one.thing.clone(),
        _ => format!("{} device requests", requests.len()),
    };
    let r = svc.write("iot-jobs-devices", "DeviceJobsRequests", &resource, |tx| {
        let mut fx = Effects::default();
        let mut out = Vec::with_capacity(requests.len());
        for q in requests {
            out.push(run_in(tx, q, now, &mut fx)?);
        }
        Ok((fx, out))
    });
    match r {
        Ok((fx, out)) => {
            svc.announce(fx);
            out
        }
        Err(e) => {
            let r = Rejected::from(e);
            requests
                .iter()
                .map(|_| Err(rejected(r.code, r.message.clone())))
                .collect()
        }
    }
}

fn run_in(
    tx: &JobsTx<'_, '_, '_>,
    q: &Request,
    now: i64,
    fx: &mut Effects,
) -> crate::Result<Answer> {
    let ns = q.ns.as_deref();
    match &q.op {
        Op::Pending => {
            let (running, queued) = store::pending(tx, &q.thing, ns)?;
            Ok(Ok(json!({
                "inProgressJobs": running.iter().map(summary).collect::<Vec<_>>(),
                "queuedJobs": queued.iter().map(summary).collect::<Vec<_>>(),
            })))
        }
        Op::StartNext => start_next_in(tx, &q.thing, ns, &q.payload, now, fx),
        Op::Describe(job) => describe_in(tx, &q.thing, job, ns, &q.payload),
        Op::Update(job) => update_in(tx, &q.thing, job, ns, &q.payload, now, fx),
    }
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// `JobExecutionSummary` of the MQTT API.
pub(crate) fn summary(e: &ExecutionRow) -> Value {
    let mut v = json!({
        "jobId": e.job_id,
        "queuedAt": secs(e.queued_at),
        "lastUpdatedAt": secs(e.updated_at),
        "versionNumber": e.version,
        "executionNumber": e.execution_number,
    });
    if let Some(s) = e.started_at {
        v["startedAt"] = json!(secs(s));
    }
    v
}

/// `JobExecutionData` of the MQTT API; `document` is the job's document text.
pub(crate) fn data(e: &ExecutionRow, document: Option<&str>) -> Value {
    let mut v = json!({
        "jobId": e.job_id,
        "thingName": e.thing_name,
        "status": e.status,
        "statusDetails": store::details(e),
        "queuedAt": secs(e.queued_at),
        "lastUpdatedAt": secs(e.updated_at),
        "versionNumber": e.version,
        "executionNumber": e.execution_number,
    });
    if let Some(s) = e.started_at {
        v["startedAt"] = json!(secs(s));
    }
    if let Some(d) = document {
        v["jobDocument"] = serde_json::from_str(d).unwrap_or(Value::Null);
    }
    v
}

pub(crate) fn execution_state(e: &ExecutionRow) -> Value {
    json!({
        "status": e.status,
        "statusDetails": store::details(e),
        "versionNumber": e.version,
    })
}

pub(crate) fn document(tx: &JobsTx<'_, '_, '_>, job_id: &str) -> crate::Result<String> {
    Ok(store::load(tx, job_id)?.body.document)
}

fn str_map(v: Option<&Value>, field: &str) -> Result<Option<BTreeMap<String, String>>, Rejected> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(rejected(
                    "InvalidRequest",
                    format!("{field}.{k} must be a string"),
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(rejected(
            "InvalidRequest",
            format!("{field} must be an object of strings"),
        )),
    }
}

fn int(v: Option<&Value>, field: &str) -> Result<Option<i64>, Rejected> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
        Some(Value::String(s)) if s.parse::<i64>().is_ok() => Ok(s.parse().ok()),
        Some(_) => Err(rejected(
            "InvalidRequest",
            format!("{field} must be an integer"),
        )),
    }
}

fn flag(v: Option<&Value>, default: bool) -> bool {
    v.and_then(Value::as_bool).unwrap_or(default)
}

/// The thing's execution of `job` as this topic may see it (namespace must match).
fn execution_in(
    tx: &JobsTx<'_, '_, '_>,
    thing: &str,
    job: &str,
    ns: Option<&str>,
) -> crate::Result<Option<(store::Loaded, ExecutionRow)>> {
    let Some(row) = tx.job(job)? else {
        return Ok(None);
    };
    if row.namespace.as_deref() != ns {
        return Ok(None);
    }
    match tx.execution(job, thing)? {
        Some(e) if e.released => Ok(Some((store::load(tx, job)?, e))),
        _ => Ok(None),
    }
}

/// `?` for a device refusal inside a function whose outer result is the transaction's.
macro_rules! refuse_on {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return Ok(Err(r)),
        }
    };
}

fn start_next_in(
    tx: &JobsTx<'_, '_, '_>,
    thing: &str,
    ns: Option<&str>,
    payload: &Map<String, Value>,
    now: i64,
    fx: &mut Effects,
) -> crate::Result<Answer> {
    let details = refuse_on!(str_map(payload.get("statusDetails"), "statusDetails"));
    let step = refuse_on!(int(
        payload.get("stepTimeoutInMinutes"),
        "stepTimeoutInMinutes"
    ));
    let (running, queued) = store::pending(tx, thing, ns)?;
    let Some(mut e) = running.into_iter().next().or(queued.into_iter().next()) else {
        return Ok(Ok(json!({})));
    };
    let mut job = store::load(tx, &e.job_id)?;
    if store::exec_status(&e) == ExecutionStatus::Queued {
        let new = store::NewStatus {
            status: ExecutionStatus::InProgress,
            details: details.as_ref(),
            step_timeout_min: step,
        };
        store::set_status(tx, &mut job, &mut e, new, now, fx)?;
    }
    Ok(Ok(json!({"execution": data(&e, Some(&job.body.document))})))
}

fn describe_in(
    tx: &JobsTx<'_, '_, '_>,
    thing: &str,
    job: &str,
    ns: Option<&str>,
    payload: &Map<String, Value>,
) -> crate::Result<Answer> {
    let include_doc = flag(payload.get("includeJobDocument"), true);
    let found = if job == "$next" {
        let (running, queued) = store::pending(tx, thing, ns)?;
        match running.into_iter().next().or(queued.into_iter().next()) {
            Some(e) => Some((document(tx, &e.job_id)?, e)),
            None => None,
        }
    } else {
        execution_in(tx, thing, job, ns)?.map(|(j, e)| (j.body.document, e))
    };
    Ok(match found {
        Some((doc, e)) => Ok(json!({"execution": data(&e, include_doc.then_some(doc.as_str()))})),
        None if job == "$next" => Ok(json!({})),
        None => Err(rejected(
            "ResourceNotFound",
            format!("thing {thing:?} has no execution of job {job:?}"),
        )),
    })
}

fn update_in(
    tx: &JobsTx<'_, '_, '_>,
    thing: &str,
    job: &str,
    ns: Option<&str>,
    payload: &Map<String, Value>,
    now: i64,
    fx: &mut Effects,
) -> crate::Result<Answer> {
    let status = match payload.get("status").and_then(Value::as_str) {
        Some(s) => refuse_on!(ExecutionStatus::parse(s).ok_or_else(|| {
            rejected(
                "InvalidRequest",
                format!(
                    "status {s:?} is not IN_PROGRESS, SUCCEEDED, FAILED or REJECTED (or another \
                     job execution status)"
                ),
            )
        })),
        None => return Ok(Err(rejected("InvalidRequest", "status is required"))),
    };
    let details = refuse_on!(str_map(payload.get("statusDetails"), "statusDetails"));
    let expected = refuse_on!(int(payload.get("expectedVersion"), "expectedVersion"));
    let execution_number = refuse_on!(int(payload.get("executionNumber"), "executionNumber"));
    let step = refuse_on!(int(
        payload.get("stepTimeoutInMinutes"),
        "stepTimeoutInMinutes"
    ));
    let include_state = flag(payload.get("includeJobExecutionState"), false);
    let include_doc = flag(payload.get("includeJobDocument"), false);

    let Some((mut loaded, mut e)) = execution_in(tx, thing, job, ns)? else {
        return Ok(Err(rejected(
            "ResourceNotFound",
            format!("thing {thing:?} has no execution of job {job:?}"),
        )));
    };
    // Every refusal below is decided before anything is written.
    let refuse = |code, message: String| {
        Ok(Err(Rejected {
            code,
            message,
            state: Some(Box::new(e.clone())),
        }))
    };
    if let Some(n) = execution_number
        && n != e.execution_number
    {
        return Ok(Err(rejected(
            "ResourceNotFound",
            format!("job {job:?} has no execution number {n} for {thing:?}"),
        )));
    }
    if let Some(v) = expected
        && v != e.version
    {
        return refuse(
            "VersionMismatch",
            format!(
                "expectedVersion {v} is not the execution's current version {}",
                e.version
            ),
        );
    }
    let from = store::exec_status(&e);
    match rules::device_transition(from, status) {
        Ok(()) => {}
        Err(rules::Refusal::Terminal) => {
            return refuse(
                "TerminalStateReached",
                format!(
                    "the execution of job {job:?} is {}: it can no longer change",
                    from.as_str()
                ),
            );
        }
        Err(rules::Refusal::InvalidTransition) => {
            return refuse(
                "InvalidStateTransition",
                format!(
                    "a device cannot move an execution from {} to {}",
                    from.as_str(),
                    status.as_str()
                ),
            );
        }
    }
    let new = store::NewStatus {
        status,
        details: details.as_ref(),
        step_timeout_min: step,
    };
    store::set_status(tx, &mut loaded, &mut e, new, now, fx)?;
    let mut body = json!({});
    if include_state {
        body["executionState"] = execution_state(&e);
    }
    if include_doc {
        body["jobDocument"] = serde_json::from_str(&loaded.body.document).unwrap_or(Value::Null);
    }
    Ok(Ok(body))
}

/// One request on its own (tests, and callers outside the MQTT loop).
#[cfg(test)]
pub(crate) fn one(
    svc: &JobsService,
    thing: &str,
    ns: Option<&str>,
    op: Op,
    payload: Value,
) -> Answer {
    let q = Request {
        thing: thing.into(),
        ns: ns.map(str::to_string),
        op,
        payload: payload.as_object().cloned().unwrap_or_default(),
    };
    run(svc, &[q]).pop().expect("one answer per request")
}
