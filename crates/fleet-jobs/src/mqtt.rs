//! The device side of jobs over MQTT, as `awsiot.iotjobs` and the Greengrass nucleus use it:
//! requests on `$aws/things/<thing>/jobs/…` answered on `<request>/accepted` or `/rejected` to
//! the asking device alone, `notify` / `notify-next` published as the thing's pending list and
//! next execution change. Namespaced jobs (`namespaceId`) are seen only through
//! `<jobId>/namespace-<id>/get|update` and `notify[-next]-namespace-<id>`, plain ones only
//! through the plain topics. All times are epoch seconds (awsiotsdk rejects milliseconds).

use crate::model::ExecutionStatus;
use crate::store::{self, Effects};
use crate::{JobsService, rules};
use lichen_fleet_mqtt::{DeviceEndpoint, DevicePublish, EndpointError, QoS};
use lichen_fleet_registry::{ExecutionRow, JobsTx};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

const FILTER: &str = "$aws/things/+/jobs/#";
/// Requests are handled by this many workers; one thing's requests always go to the same one,
/// in order.
const WORKERS: usize = 4;

pub(crate) fn serve(svc: JobsService, endpoint: &DeviceEndpoint) -> Result<(), EndpointError> {
    let mut topics = endpoint.serve_topics(FILTER)?;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(String, String)>();
    *svc.inner.outbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(out_tx);
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some((topic, payload)) = out_rx.recv().await {
            if let Err(e) = ep
                .publish(&topic, payload.into(), QoS::AtLeastOnce, false)
                .await
            {
                tracing::warn!(topic, "jobs notification: {e}");
            }
        }
    });
    let mut workers = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        let (tx, mut rx) = mpsc::channel::<DevicePublish>(1024);
        let (svc, ep) = (svc.clone(), endpoint.clone());
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let s = svc.clone();
                let client_id = p.client_id.clone();
                let Ok(Some((topic, body))) =
                    tokio::task::spawn_blocking(move || handle(&s, &p)).await
                else {
                    continue;
                };
                match ep.publish_to(
                    &client_id,
                    &topic,
                    body.to_string().into(),
                    QoS::AtLeastOnce,
                ) {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(
                        client_id,
                        topic,
                        "jobs reply not delivered: the device does not subscribe to it"
                    ),
                    Err(e) => tracing::warn!(client_id, topic, "jobs reply: {e}"),
                }
            }
        });
        workers.push(tx);
    }
    tokio::spawn(async move {
        while let Some(p) = topics.recv().await {
            let thing = p.topic.split('/').nth(2).unwrap_or("");
            let i = thing
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                % WORKERS;
            if workers[i].send(p).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn now_secs() -> i64 {
    secs(crate::now_ms())
}

/// `JobExecutionSummary` of the MQTT API.
fn summary(e: &ExecutionRow) -> Value {
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
fn data(e: &ExecutionRow, document: Option<&str>) -> Value {
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

fn execution_state(e: &ExecutionRow) -> Value {
    json!({
        "status": e.status,
        "statusDetails": store::details(e),
        "versionNumber": e.version,
    })
}

/// The notify / notify-next messages for `thing` after a change to its executions in `ns`.
pub(crate) fn notifications(
    svc: &JobsService,
    thing: &str,
    ns: Option<&str>,
) -> crate::Result<Vec<(String, String)>> {
    let (running, queued, next) = svc.read(|tx| {
        let (running, queued) = store::pending(tx, thing, ns)?;
        let next = match running.first().or(queued.first()) {
            Some(e) => Some((e.clone(), document(tx, &e.job_id)?)),
            None => None,
        };
        Ok((running, queued, next))
    })?;
    let suffix = ns.map(|n| format!("-namespace-{n}")).unwrap_or_default();
    let base = format!("$aws/things/{thing}/jobs");
    let now = now_secs();
    let mut jobs = Map::new();
    if !queued.is_empty() {
        jobs.insert("QUEUED".into(), queued.iter().map(summary).collect());
    }
    if !running.is_empty() {
        jobs.insert("IN_PROGRESS".into(), running.iter().map(summary).collect());
    }
    let mut out = vec![(
        format!("{base}/notify{suffix}"),
        json!({"jobs": jobs, "timestamp": now}).to_string(),
    )];
    let next_id = next.as_ref().map(|(e, _)| e.job_id.clone());
    let key = (thing.to_string(), ns.map(str::to_string));
    let changed = {
        let mut last = svc
            .inner
            .last_next
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let changed = last.get(&key) != Some(&next_id);
        last.insert(key, next_id);
        changed
    };
    if changed {
        let mut body = json!({"timestamp": now});
        if let Some((e, doc)) = &next {
            body["execution"] = data(e, Some(doc));
        }
        out.push((format!("{base}/notify-next{suffix}"), body.to_string()));
    }
    Ok(out)
}

fn document(tx: &JobsTx<'_, '_, '_>, job_id: &str) -> crate::Result<String> {
    Ok(store::load(tx, job_id)?.body.document)
}

/// What a device asked for.
enum Request<'a> {
    Pending,
    StartNext,
    Describe(&'a str),
    Update(&'a str),
}

#[derive(Debug)]
pub(crate) struct Rejected {
    pub code: &'static str,
    pub message: String,
    pub state: Option<Box<ExecutionRow>>,
}

fn rejected(code: &'static str, message: impl Into<String>) -> Rejected {
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

/// Answers one device publish: the reply topic and payload, or `None` to stay silent.
fn handle(svc: &JobsService, p: &DevicePublish) -> Option<(String, Value)> {
    let parts: Vec<&str> = p.topic.split('/').collect();
    // $aws / things / <thing> / jobs / ...
    let (thing, rest) = (parts.get(2)?, parts.get(4..)?);
    if matches!(rest.last(), Some(&"accepted") | Some(&"rejected")) {
        return None;
    }
    let (request, ns) = match rest {
        ["get"] => (Request::Pending, None),
        ["start-next"] => (Request::StartNext, None),
        [job, "get"] => (Request::Describe(job), None),
        [job, "update"] => (Request::Update(job), None),
        [job, ns, "get"] if ns.starts_with("namespace-") => {
            (Request::Describe(job), Some(&ns["namespace-".len()..]))
        }
        [job, ns, "update"] if ns.starts_with("namespace-") => {
            (Request::Update(job), Some(&ns["namespace-".len()..]))
        }
        _ => {
            return Some(reply_rejected(
                &p.topic,
                None,
                rejected(
                    "InvalidTopic",
                    format!("{} is not a jobs request topic", p.topic),
                ),
            ));
        }
    };
    let payload: Map<String, Value> = if p.payload.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice(&p.payload) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Some(reply_rejected(
                    &p.topic,
                    None,
                    rejected("InvalidJson", "the payload is not a JSON object"),
                ));
            }
        }
    };
    let token = payload.get("clientToken").cloned();
    if p.thing_name.as_deref() != Some(thing) {
        return Some(reply_rejected(
            &p.topic,
            token,
            rejected(
                "InvalidRequest",
                format!(
                    "this connection is not thing {thing:?}: a device reads and updates only \
                     its own jobs"
                ),
            ),
        ));
    }
    let r = match request {
        Request::Pending => pending(svc, thing, ns),
        Request::StartNext => start_next(svc, thing, ns, &payload),
        Request::Describe(job) => describe(svc, thing, job, ns, &payload),
        Request::Update(job) => update(svc, thing, job, ns, &payload),
    };
    Some(match r {
        Ok(mut body) => {
            body["timestamp"] = json!(now_secs());
            if let Some(t) = token {
                body["clientToken"] = t;
            }
            (format!("{}/accepted", p.topic), body)
        }
        Err(r) => reply_rejected(&p.topic, token, r),
    })
}

fn reply_rejected(topic: &str, token: Option<Value>, r: Rejected) -> (String, Value) {
    let mut body = json!({"code": r.code, "message": r.message, "timestamp": now_secs()});
    if let Some(t) = token {
        body["clientToken"] = t;
    }
    if let Some(e) = &r.state {
        body["executionState"] = execution_state(e);
    }
    (format!("{topic}/rejected"), body)
}

fn pending(svc: &JobsService, thing: &str, ns: Option<&str>) -> Result<Value, Rejected> {
    let (running, queued) = svc.read(|tx| store::pending(tx, thing, ns))?;
    Ok(json!({
        "inProgressJobs": running.iter().map(summary).collect::<Vec<_>>(),
        "queuedJobs": queued.iter().map(summary).collect::<Vec<_>>(),
    }))
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

pub(crate) fn start_next(
    svc: &JobsService,
    thing: &str,
    ns: Option<&str>,
    payload: &Map<String, Value>,
) -> Result<Value, Rejected> {
    let details = str_map(payload.get("statusDetails"), "statusDetails")?;
    let step = int(payload.get("stepTimeoutInMinutes"), "stepTimeoutInMinutes")?;
    let now = crate::now_ms();
    let (fx, out) = svc.write(thing, "StartNextPendingJobExecution", thing, |tx| {
        let mut fx = Effects::default();
        let (running, queued) = store::pending(tx, thing, ns)?;
        let Some(mut e) = running.into_iter().next().or(queued.into_iter().next()) else {
            return Ok((fx, None));
        };
        let mut job = store::load(tx, &e.job_id)?;
        if store::exec_status(&e) == ExecutionStatus::Queued {
            store::set_status(
                tx,
                &mut job,
                &mut e,
                store::NewStatus {
                    status: ExecutionStatus::InProgress,
                    details: details.as_ref(),
                    step_timeout_min: step,
                },
                now,
                &mut fx,
            )?;
        }
        Ok((fx, Some((e, job.body.document.clone()))))
    })?;
    svc.announce(fx);
    Ok(match out {
        Some((e, doc)) => json!({"execution": data(&e, Some(&doc))}),
        None => json!({}),
    })
}

pub(crate) fn describe(
    svc: &JobsService,
    thing: &str,
    job: &str,
    ns: Option<&str>,
    payload: &Map<String, Value>,
) -> Result<Value, Rejected> {
    let include_doc = flag(payload.get("includeJobDocument"), true);
    let found = svc.read(|tx| {
        if job == "$next" {
            let (running, queued) = store::pending(tx, thing, ns)?;
            return match running.into_iter().next().or(queued.into_iter().next()) {
                Some(e) => Ok(Some((document(tx, &e.job_id)?, e))),
                None => Ok(None),
            };
        }
        Ok(execution_in(tx, thing, job, ns)?.map(|(j, e)| (j.body.document, e)))
    })?;
    match found {
        Some((doc, e)) => Ok(json!({"execution": data(&e, include_doc.then_some(doc.as_str()))})),
        None if job == "$next" => Ok(json!({})),
        None => Err(rejected(
            "ResourceNotFound",
            format!("thing {thing:?} has no execution of job {job:?}"),
        )),
    }
}

pub(crate) fn update(
    svc: &JobsService,
    thing: &str,
    job: &str,
    ns: Option<&str>,
    payload: &Map<String, Value>,
) -> Result<Value, Rejected> {
    let status = match payload.get("status").and_then(Value::as_str) {
        Some(s) => ExecutionStatus::parse(s).ok_or_else(|| {
            rejected(
                "InvalidRequest",
                format!(
                    "status {s:?} is not IN_PROGRESS, SUCCEEDED, FAILED or REJECTED (or another \
                     job execution status)"
                ),
            )
        })?,
        None => return Err(rejected("InvalidRequest", "status is required")),
    };
    let details = str_map(payload.get("statusDetails"), "statusDetails")?;
    let expected = int(payload.get("expectedVersion"), "expectedVersion")?;
    let execution_number = int(payload.get("executionNumber"), "executionNumber")?;
    let step = int(payload.get("stepTimeoutInMinutes"), "stepTimeoutInMinutes")?;
    let include_state = flag(payload.get("includeJobExecutionState"), false);
    let include_doc = flag(payload.get("includeJobDocument"), false);
    let now = crate::now_ms();
    // A refusal is decided inside the transaction and carried out of it as a value, so that
    // nothing is written for it.
    let (fx, out) = svc.write(
        thing,
        "UpdateJobExecution",
        &format!("{job}/{thing}"),
        |tx| {
            let mut fx = Effects::default();
            let Some((mut loaded, mut e)) = execution_in(tx, thing, job, ns)? else {
                return Ok((
                    fx,
                    Err(rejected(
                        "ResourceNotFound",
                        format!("thing {thing:?} has no execution of job {job:?}"),
                    )),
                ));
            };
            let refuse = |code, message: String| {
                Ok((
                    Effects::default(),
                    Err(Rejected {
                        code,
                        message,
                        state: Some(Box::new(e.clone())),
                    }),
                ))
            };
            if let Some(n) = execution_number
                && n != e.execution_number
            {
                return Ok((
                    fx,
                    Err(rejected(
                        "ResourceNotFound",
                        format!("job {job:?} has no execution number {n} for {thing:?}"),
                    )),
                ));
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
            store::set_status(
                tx,
                &mut loaded,
                &mut e,
                store::NewStatus {
                    status,
                    details: details.as_ref(),
                    step_timeout_min: step,
                },
                now,
                &mut fx,
            )?;
            Ok((fx, Ok((e, loaded.body.document.clone()))))
        },
    )?;
    svc.announce(fx);
    let (e, doc) = out?;
    let mut body = json!({});
    if include_state {
        body["executionState"] = execution_state(&e);
    }
    if include_doc {
        body["jobDocument"] = serde_json::from_str(&doc).unwrap_or(Value::Null);
    }
    Ok(body)
}
