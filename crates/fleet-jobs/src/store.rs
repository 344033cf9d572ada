//! The job and execution transitions, each one registry transaction: the job's rows are read,
//! changed by the rules and written back before anything is announced. Every function returns
//! the [`Effects`] to announce after commit (events, things whose pending list changed).

use crate::model::*;
use crate::rules::{self, Outcomes, Window};
use crate::{JobsError, Result};
use lichen_fleet_registry::{ExecutionRow, JobRow, JobsTx, RegistryError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A job's stored configuration and progress (the `body` column).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Body {
    pub arn: String,
    pub document: String,
    pub targets: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub rollout: Option<RolloutConfig>,
    #[serde(default)]
    pub abort: Option<AbortConfig>,
    #[serde(default)]
    pub timeout: Option<TimeoutConfig>,
    #[serde(default)]
    pub force_canceled: bool,
    #[serde(default)]
    pub reason_code: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub completed_at: Option<i64>,
    #[serde(default)]
    pub window: Window,
}

/// What a committed transition announces.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub events: Vec<JobEvent>,
    /// (thing, namespace) whose pending executions may have changed.
    pub things: BTreeSet<(String, Option<String>)>,
}

pub(crate) struct Loaded {
    pub row: JobRow,
    pub body: Body,
}

impl Loaded {
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.row.status).unwrap_or(JobStatus::InProgress)
    }

    fn save(&mut self, tx: &JobsTx<'_, '_, '_>, now: i64) -> Result<()> {
        self.row.body = serde_json::to_string(&self.body).expect("a job body serializes");
        self.row.updated_at = now;
        tx.put_job(&self.row)?;
        Ok(())
    }
}

pub(crate) fn load(tx: &JobsTx<'_, '_, '_>, id: &str) -> Result<Loaded> {
    let row = tx
        .job(id)?
        .ok_or_else(|| JobsError::NotFound(format!("job {id:?} does not exist")))?;
    let body: Body = serde_json::from_str(&row.body).map_err(|e| {
        JobsError::Registry(RegistryError::Invalid(format!(
            "stored job {id:?} is unreadable: {e}"
        )))
    })?;
    Ok(Loaded { row, body })
}

pub(crate) fn exec_status(e: &ExecutionRow) -> ExecutionStatus {
    ExecutionStatus::parse(&e.status).unwrap_or(ExecutionStatus::Queued)
}

pub(crate) fn details(e: &ExecutionRow) -> BTreeMap<String, String> {
    serde_json::from_str(&e.status_details).unwrap_or_default()
}

pub(crate) fn to_execution(e: &ExecutionRow, namespace: Option<&str>) -> JobExecution {
    JobExecution {
        job_id: e.job_id.clone(),
        thing_name: e.thing_name.clone(),
        namespace_id: namespace.map(str::to_string),
        status: exec_status(e),
        status_details: details(e),
        queued_at: e.queued_at,
        started_at: e.started_at,
        last_updated_at: e.updated_at,
        version_number: e.version,
        execution_number: e.execution_number,
        force_canceled: e.force_canceled,
        timeout_at: e.timeout_at,
    }
}

pub(crate) fn to_job(l: &Loaded, execs: &[ExecutionRow]) -> Job {
    let mut process = ProcessDetails::default();
    let mut waiting = false;
    for e in execs {
        if e.released {
            process.count(exec_status(e));
        } else if exec_status(e) == ExecutionStatus::Queued {
            waiting = true;
        }
    }
    if waiting {
        process.processing_targets = l.body.targets.clone();
    }
    Job {
        job_id: l.row.id.clone(),
        job_arn: l.body.arn.clone(),
        status: l.status(),
        target_selection: if l.row.continuous {
            TargetSelection::Continuous
        } else {
            TargetSelection::Snapshot
        },
        targets: l.body.targets.clone(),
        document: l.body.document.clone(),
        description: l.body.description.clone(),
        namespace_id: l.row.namespace.clone(),
        rollout: l.body.rollout.clone(),
        abort: l.body.abort.clone(),
        timeout: l.body.timeout.clone(),
        force_canceled: l.body.force_canceled,
        reason_code: l.body.reason_code.clone(),
        comment: l.body.comment.clone(),
        created_at: l.row.created_at,
        last_updated_at: l.row.updated_at,
        completed_at: l.body.completed_at,
        process,
    }
}

/// A target ARN's resource: `thing/<name>` or `thinggroup/<name>`.
pub(crate) enum Target {
    Thing(String),
    Group(String),
}

pub(crate) fn parse_target(arn_prefix: &str, arn: &str) -> Result<Target> {
    let bad = || {
        JobsError::Invalid(format!(
            "target {arn:?} is not a thing or thing-group ARN of this fleet \
             ({arn_prefix}thing/<name> or {arn_prefix}thinggroup/<name>)"
        ))
    };
    let resource = arn.strip_prefix(arn_prefix).ok_or_else(bad)?;
    match resource.split_once('/') {
        Some(("thing", n)) if !n.is_empty() => Ok(Target::Thing(n.into())),
        Some(("thinggroup", n)) if !n.is_empty() => Ok(Target::Group(n.into())),
        _ => Err(bad()),
    }
}

fn new_execution(job_id: &str, thing: &str, now: i64) -> ExecutionRow {
    ExecutionRow {
        job_id: job_id.into(),
        thing_name: thing.into(),
        status: ExecutionStatus::Queued.as_str().into(),
        status_details: "{}".into(),
        version: 1,
        execution_number: 1,
        queued_at: now,
        started_at: None,
        updated_at: now,
        released: false,
        timeout_at: None,
        force_canceled: false,
    }
}

/// CreateJob inside `tx`: the job, an (unreleased) execution per target thing, then the first
/// releases of its rollout.
pub(crate) fn create(
    tx: &JobsTx<'_, '_, '_>,
    arn_prefix: &str,
    req: &CreateJob,
    now: i64,
) -> Result<Effects> {
    let arn = format!("{arn_prefix}job/{}", req.job_id);
    if tx.job(&req.job_id)?.is_some() {
        return Err(JobsError::AlreadyExists {
            job_id: req.job_id.clone(),
            arn,
        });
    }
    let mut things = BTreeSet::new();
    for t in &req.targets {
        match parse_target(arn_prefix, t)? {
            Target::Thing(n) => {
                if !tx.thing_exists(&n)? {
                    return Err(JobsError::NotFound(format!(
                        "target thing {n:?} does not exist"
                    )));
                }
                things.insert(n);
            }
            Target::Group(g) => {
                if !tx.group_exists(&g)? {
                    return Err(JobsError::NotFound(format!(
                        "target thing group {g:?} does not exist"
                    )));
                }
                things.extend(tx.things_in_group(&g)?);
            }
        }
    }
    let body = Body {
        arn,
        document: req.document.clone(),
        targets: req.targets.clone(),
        description: req.description.clone(),
        rollout: req.rollout.clone(),
        abort: req.abort.clone(),
        timeout: req.timeout.clone(),
        force_canceled: false,
        reason_code: None,
        comment: None,
        completed_at: None,
        window: Window::default(),
    };
    let mut job = Loaded {
        row: JobRow {
            id: req.job_id.clone(),
            namespace: req.namespace_id.clone(),
            status: JobStatus::InProgress.as_str().into(),
            continuous: req.target_selection == TargetSelection::Continuous,
            body: String::new(),
            created_at: now,
            updated_at: now,
        },
        body,
    };
    job.save(tx, now)?;
    for t in &things {
        tx.put_execution(&new_execution(&req.job_id, t, now))?;
    }
    let mut fx = Effects::default();
    settle(tx, &mut job, now, &mut fx)?;
    Ok(fx)
}

/// After any change to a job's executions: abort if its criteria trip, release what the rollout
/// allows, and complete a SNAPSHOT job whose executions are all terminal.
pub(crate) fn settle(
    tx: &JobsTx<'_, '_, '_>,
    job: &mut Loaded,
    now: i64,
    fx: &mut Effects,
) -> Result<()> {
    if job.status() != JobStatus::InProgress {
        return Ok(());
    }
    let execs = tx.executions_for_job(&job.row.id)?;
    let mut o = Outcomes::default();
    let mut notified = 0u64;
    for e in execs.iter().filter(|e| e.released) {
        notified += 1;
        match exec_status(e) {
            ExecutionStatus::Succeeded => o.succeeded += 1,
            ExecutionStatus::Failed => o.failed += 1,
            ExecutionStatus::Rejected => o.rejected += 1,
            ExecutionStatus::TimedOut => o.timed_out += 1,
            _ => {}
        }
    }
    if let Some(c) = job
        .body
        .abort
        .as_ref()
        .and_then(|a| rules::abort_tripped(&a.criteria_list, &o))
    {
        let reason = rules::abort_reason(c);
        let comment = format!(
            "aborted: {} of {} executed things {} (threshold {}% after at least {})",
            match c.failure_type.as_str() {
                "FAILED" => o.failed,
                "REJECTED" => o.rejected,
                "TIMED_OUT" => o.timed_out,
                _ => o.failed + o.rejected + o.timed_out,
            },
            o.executed(),
            c.failure_type,
            c.threshold_percentage,
            c.min_number_of_executed_things
        );
        let succeeded_things = execs
            .iter()
            .filter(|e| exec_status(e) == ExecutionStatus::Succeeded)
            .map(|e| e.thing_name.clone())
            .collect();
        cancel_in(tx, job, false, Some(reason.clone()), Some(comment), now, fx)?;
        fx.events.push(JobEvent::JobAborted {
            job_id: job.row.id.clone(),
            reason_code: reason,
            succeeded_things,
        });
        return Ok(());
    }
    let waiting: Vec<&ExecutionRow> = execs
        .iter()
        .filter(|e| !e.released && exec_status(e) == ExecutionStatus::Queued)
        .collect();
    if !waiting.is_empty() {
        let rate = rules::rate_per_minute(job.body.rollout.as_ref(), notified, o.succeeded);
        let (n, window) = rules::releasable(rate, job.body.window, now, waiting.len() as u64);
        job.body.window = window;
        for e in waiting.iter().take(n as usize) {
            let mut e = (*e).clone();
            e.released = true;
            e.queued_at = now;
            e.updated_at = now;
            tx.put_execution(&e)?;
            fx.things
                .insert((e.thing_name.clone(), job.row.namespace.clone()));
            fx.events.push(JobEvent::ExecutionChanged {
                job_id: e.job_id.clone(),
                thing: e.thing_name.clone(),
                status: ExecutionStatus::Queued,
                status_details: BTreeMap::new(),
            });
        }
        job.save(tx, now)?;
        if n < waiting.len() as u64 {
            return Ok(());
        }
    }
    // Everything is released here: the job is done when no execution is open.
    let open = execs.iter().any(|e| !exec_status(e).is_terminal());
    if !job.row.continuous && !open {
        job.row.status = JobStatus::Completed.as_str().into();
        job.body.completed_at = Some(now);
        job.save(tx, now)?;
        fx.events.push(JobEvent::JobCompleted {
            job_id: job.row.id.clone(),
            status: JobStatus::Completed,
        });
    }
    Ok(())
}

/// Cancels the job: QUEUED executions (and IN_PROGRESS ones when `force`) become CANCELED.
pub(crate) fn cancel_in(
    tx: &JobsTx<'_, '_, '_>,
    job: &mut Loaded,
    force: bool,
    reason_code: Option<String>,
    comment: Option<String>,
    now: i64,
    fx: &mut Effects,
) -> Result<()> {
    match job.status() {
        JobStatus::InProgress => {}
        JobStatus::Canceled if force && !job.body.force_canceled => {}
        JobStatus::Canceled => return Ok(()),
        s => {
            return Err(JobsError::InvalidStateTransition {
                message: format!(
                    "job {:?} is {} and cannot be canceled",
                    job.row.id,
                    s.as_str()
                ),
                execution: None,
            });
        }
    }
    job.row.status = JobStatus::Canceled.as_str().into();
    job.body.force_canceled |= force;
    if reason_code.is_some() {
        job.body.reason_code = reason_code;
    }
    if comment.is_some() {
        job.body.comment = comment;
    }
    job.body.completed_at.get_or_insert(now);
    job.save(tx, now)?;
    for mut e in tx.executions_for_job(&job.row.id)? {
        let s = exec_status(&e);
        if s == ExecutionStatus::Queued || (force && s == ExecutionStatus::InProgress) {
            e.status = ExecutionStatus::Canceled.as_str().into();
            e.force_canceled = s == ExecutionStatus::InProgress;
            e.updated_at = now;
            e.version += 1;
            e.timeout_at = None;
            tx.put_execution(&e)?;
            if e.released {
                fx.things
                    .insert((e.thing_name.clone(), job.row.namespace.clone()));
                fx.events.push(JobEvent::ExecutionChanged {
                    job_id: e.job_id.clone(),
                    thing: e.thing_name.clone(),
                    status: ExecutionStatus::Canceled,
                    status_details: details(&e),
                });
            }
        }
    }
    fx.events.push(JobEvent::JobCompleted {
        job_id: job.row.id.clone(),
        status: JobStatus::Canceled,
    });
    Ok(())
}

/// A status change: the new status, details to merge, a step timeout (minutes).
pub(crate) struct NewStatus<'a> {
    pub status: ExecutionStatus,
    pub details: Option<&'a BTreeMap<String, String>>,
    pub step_timeout_min: Option<i64>,
}

/// Sets an execution's status (and merges `details`), then settles its job.
pub(crate) fn set_status(
    tx: &JobsTx<'_, '_, '_>,
    job: &mut Loaded,
    e: &mut ExecutionRow,
    new: NewStatus<'_>,
    now: i64,
    fx: &mut Effects,
) -> Result<()> {
    let NewStatus {
        status,
        details: merge,
        step_timeout_min,
    } = new;
    let before = exec_status(e);
    if let Some(m) = merge {
        let mut d = details(e);
        d.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        e.status_details = serde_json::to_string(&d).expect("details serialize");
    }
    if before == ExecutionStatus::Queued && status == ExecutionStatus::InProgress {
        e.started_at = Some(now);
        e.timeout_at = job
            .body
            .timeout
            .as_ref()
            .and_then(|t| t.in_progress_timeout_in_minutes)
            .map(|m| now + m * 60_000);
    }
    if status == ExecutionStatus::InProgress
        && let Some(m) = step_timeout_min
    {
        let step = now + m * 60_000;
        e.timeout_at = Some(e.timeout_at.map_or(step, |t| t.min(step)));
    }
    if status.is_terminal() {
        e.timeout_at = None;
    }
    e.status = status.as_str().into();
    e.version += 1;
    e.updated_at = now;
    tx.put_execution(e)?;
    fx.things
        .insert((e.thing_name.clone(), job.row.namespace.clone()));
    fx.events.push(JobEvent::ExecutionChanged {
        job_id: e.job_id.clone(),
        thing: e.thing_name.clone(),
        status,
        status_details: details(e),
    });
    if status.is_terminal() {
        settle(tx, job, now, fx)?;
    }
    Ok(())
}

/// The thing's released, open executions in `namespace`: IN_PROGRESS first, then QUEUED, each
/// oldest first (the order `$next` takes).
pub(crate) fn pending(
    tx: &JobsTx<'_, '_, '_>,
    thing: &str,
    namespace: Option<&str>,
) -> Result<(Vec<ExecutionRow>, Vec<ExecutionRow>)> {
    let mut jobs: BTreeMap<String, Option<String>> = BTreeMap::new();
    let (mut running, mut queued) = (vec![], vec![]);
    for e in tx.executions_for_thing(thing)? {
        if !e.released {
            continue;
        }
        let s = exec_status(&e);
        if s.is_terminal() {
            continue;
        }
        let ns = match jobs.get(&e.job_id) {
            Some(ns) => ns.clone(),
            None => {
                let ns = tx.job(&e.job_id)?.and_then(|j| j.namespace);
                jobs.insert(e.job_id.clone(), ns.clone());
                ns
            }
        };
        if ns.as_deref() != namespace {
            continue;
        }
        if s == ExecutionStatus::InProgress {
            running.push(e);
        } else {
            queued.push(e);
        }
    }
    Ok((running, queued))
}

/// Every active job's due work at `now`: IN_PROGRESS executions past their timeout become
/// TIMED_OUT, and rollouts release what their rate allows.
pub(crate) fn tick(tx: &JobsTx<'_, '_, '_>, now: i64) -> Result<Effects> {
    let mut fx = Effects::default();
    for mut e in tx.timed_out_executions(now)? {
        let mut job = load(tx, &e.job_id)?;
        set_status(
            tx,
            &mut job,
            &mut e,
            NewStatus {
                status: ExecutionStatus::TimedOut,
                details: None,
                step_timeout_min: None,
            },
            now,
            &mut fx,
        )?;
    }
    for row in tx.active_jobs()? {
        let mut job = load(tx, &row.id)?;
        settle(tx, &mut job, now, &mut fx)?;
    }
    Ok(fx)
}

/// A thing joined groups: each active CONTINUOUS job targeting one of them gets an execution
/// for it (once).
pub(crate) fn thing_changed(
    tx: &JobsTx<'_, '_, '_>,
    arn_prefix: &str,
    thing: &str,
    now: i64,
) -> Result<Effects> {
    let mut fx = Effects::default();
    if !tx.thing_exists(thing)? {
        return Ok(fx);
    }
    let groups: BTreeSet<String> = tx.groups_of_thing(thing)?.into_iter().collect();
    for row in tx.active_jobs()? {
        if !row.continuous || tx.execution(&row.id, thing)?.is_some() {
            continue;
        }
        let mut job = load(tx, &row.id)?;
        let targeted = job.body.targets.iter().any(
            |t| matches!(parse_target(arn_prefix, t), Ok(Target::Group(g)) if groups.contains(&g)),
        );
        if targeted {
            tx.put_execution(&new_execution(&row.id, thing, now))?;
            settle(tx, &mut job, now, &mut fx)?;
        }
    }
    Ok(fx)
}
