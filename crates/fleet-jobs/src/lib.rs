//! AWS IoT Jobs on the fleet, for any job document: durable jobs and job executions in the
//! fleet registry, the iot control operations' semantics ([`JobsService`]), the device side
//! over MQTT (`$aws/things/<thing>/jobs/…`, plain and namespaced, [`JobsService::serve_mqtt`]),
//! rollouts (`maximumPerMinute`, `exponentialRate`), abort criteria, in-progress timeouts and
//! CONTINUOUS jobs that follow their target groups.
//!
//! - **State.** A job and its executions live in the registry's `jobs` / `job_executions`
//!   tables; every transition (a device's update, a cancel, an abort with the cancels it causes,
//!   a rollout's releases, a timeout) is one registry transaction, read-modify-write.
//! - **Rollouts.** Executions are created at once for every target thing but stay unreleased
//!   (invisible to the device, uncounted) until the rollout's rate lets them out; a one-second
//!   tick and each finished execution release more.
//! - **Events.** After commit the service announces [`JobEvent`]s to [`JobsService::subscribe`]
//!   and publishes `notify` (the pending list changed) and `notify-next` (the next execution
//!   changed) to the things concerned.
//!
//! Architecture invariant: `Ok` means committed — nothing a device or caller was told is lost to
//! a kill -9 — and nothing is announced or published before its transaction commits.
//! Architecture invariant: a device sees and changes only its own executions (the thing in the
//! topic must be the thing it connected as), and namespaced jobs only through namespaced topics.

mod model;
mod mqtt;
pub mod rules;
mod store;

pub use model::*;

use lichen_fleet_mqtt::DeviceEndpoint;
use lichen_fleet_registry::{Change, JobsTx, Registry, RegistryError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

/// Failures of a jobs operation; the control plane maps them to iot error shapes.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("{0}")]
    NotFound(String),
    #[error("job {job_id:?} already exists")]
    AlreadyExists { job_id: String, arn: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{message}")]
    InvalidStateTransition {
        message: String,
        execution: Option<Box<JobExecution>>,
    },
    #[error("{message}")]
    TerminalState {
        message: String,
        execution: Option<Box<JobExecution>>,
    },
    #[error("{message}")]
    VersionMismatch {
        message: String,
        execution: Option<Box<JobExecution>>,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

pub type Result<T> = std::result::Result<T, JobsError>;

/// The audit log's `who` for transitions the service makes on its own (rollouts, timeouts).
const SERVICE: &str = "iot-jobs";

/// The jobs service: a cheap-to-clone handle.
#[derive(Clone)]
pub struct JobsService {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    /// `arn:aws:iot:<region>:<account>:`.
    arn_prefix: String,
    events: broadcast::Sender<JobEvent>,
    /// Publishes to devices, in order, once [`JobsService::serve_mqtt`] has run.
    outbox: Mutex<Option<mpsc::UnboundedSender<(String, String)>>>,
    /// The next execution last announced on `notify-next`, per (thing, namespace).
    last_next: Mutex<HashMap<ThingNamespace, Option<String>>>,
}

/// A thing and the jobs namespace it is seen through.
type ThingNamespace = (String, Option<String>);

pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl JobsService {
    pub fn new(registry: Arc<Registry>) -> Self {
        let (events, _) = broadcast::channel(4096);
        JobsService {
            inner: Arc::new(Inner {
                arn_prefix: registry.arn(""),
                registry,
                events,
                outbox: Mutex::new(None),
                last_next: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the background work (inside a tokio runtime): the one-second tick (rollouts,
    /// timeouts) and CONTINUOUS jobs following the registry's group changes. Things that joined
    /// a target group while the fleet was down get their executions now.
    pub fn start(&self) {
        let svc = self.clone();
        let mut changes = self.inner.registry.subscribe();
        tokio::spawn(async move {
            let s = svc.clone();
            let _ = tokio::task::spawn_blocking(move || s.reconcile_continuous()).await;
            loop {
                match changes.recv().await {
                    Ok(Change::Thing { thing_name }) => {
                        let s = svc.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || s.thing_changed(&thing_name)).await;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let s = svc.clone();
                        let _ = tokio::task::spawn_blocking(move || s.reconcile_continuous()).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let svc = JobsService { inner };
                let r = tokio::task::spawn_blocking(move || svc.tick_blocking(now_ms())).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!("jobs tick: {e}");
                }
            }
        });
    }

    /// Serves the device jobs API on `endpoint` (`$aws/things/+/jobs/#`) and publishes
    /// notifications through it.
    pub fn serve_mqtt(
        &self,
        endpoint: &DeviceEndpoint,
    ) -> std::result::Result<(), lichen_fleet_mqtt::EndpointError> {
        mqtt::serve(self.clone(), endpoint)
    }

    /// Committed events, in commit order. A receiver that lags gets `Lagged` and should re-read.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.inner.events.subscribe()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    // ---- the contract's async operations (the registry blocks: each runs on the blocking pool)

    pub async fn create_job(&self, req: CreateJob) -> Result<JobSummary> {
        let s = self.clone();
        blocking(move || s.create_job_blocking("iot-jobs", &req)).await
    }

    pub async fn cancel_job(
        &self,
        job_id: &str,
        force: bool,
        reason: Option<String>,
    ) -> Result<()> {
        let (s, id) = (self.clone(), job_id.to_string());
        blocking(move || {
            s.cancel_job_blocking(SERVICE, &id, force, reason.clone(), None)
                .map(|_| ())
        })
        .await
    }

    pub async fn describe_job(&self, job_id: &str) -> Result<Job> {
        let (s, id) = (self.clone(), job_id.to_string());
        blocking(move || s.describe_job_blocking(&id)).await
    }

    pub async fn list_executions_for_job(&self, job_id: &str) -> Result<Vec<JobExecution>> {
        let (s, id) = (self.clone(), job_id.to_string());
        blocking(move || s.list_executions_for_job_blocking(&id)).await
    }

    pub async fn list_executions_for_thing(
        &self,
        thing: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<JobExecution>> {
        let (s, t, ns) = (
            self.clone(),
            thing.to_string(),
            namespace.map(str::to_string),
        );
        blocking(move || s.list_executions_for_thing_blocking(&t, ns.as_deref())).await
    }

    // ---- synchronous forms (for callers already on a blocking thread, such as the API)

    /// CreateJob. The document must be a JSON object.
    pub fn create_job_blocking(&self, who: &str, req: &CreateJob) -> Result<JobSummary> {
        validate(req)?;
        let now = now_ms();
        let fx = self.write(who, "CreateJob", &req.job_id, |tx| {
            store::create(tx, &self.inner.arn_prefix, req, now)
        })?;
        self.announce(fx);
        Ok(JobSummary {
            job_id: req.job_id.clone(),
            job_arn: format!("{}job/{}", self.inner.arn_prefix, req.job_id),
            description: req.description.clone(),
        })
    }

    /// CancelJob: QUEUED executions are canceled, IN_PROGRESS ones too when `force`.
    pub fn cancel_job_blocking(
        &self,
        who: &str,
        job_id: &str,
        force: bool,
        reason_code: Option<String>,
        comment: Option<String>,
    ) -> Result<JobSummary> {
        let now = now_ms();
        let (fx, summary) = self.write(who, "CancelJob", job_id, |tx| {
            let mut job = store::load(tx, job_id)?;
            let mut fx = store::Effects::default();
            store::cancel_in(
                tx,
                &mut job,
                force,
                reason_code.clone(),
                comment.clone(),
                now,
                &mut fx,
            )?;
            let summary = JobSummary {
                job_id: job.row.id.clone(),
                job_arn: job.body.arn.clone(),
                description: job.body.description.clone(),
            };
            Ok((fx, summary))
        })?;
        self.announce(fx);
        Ok(summary)
    }

    /// DeleteJob: an IN_PROGRESS job only with `force` (its executions go with it).
    pub fn delete_job_blocking(&self, who: &str, job_id: &str, force: bool) -> Result<()> {
        let fx = self.write(who, "DeleteJob", job_id, |tx| {
            let job = store::load(tx, job_id)?;
            if job.status() == JobStatus::InProgress && !force {
                return Err(JobsError::InvalidStateTransition {
                    message: format!(
                        "job {job_id:?} is IN_PROGRESS: cancel it first, or delete with force=true"
                    ),
                    execution: None,
                });
            }
            let mut fx = store::Effects::default();
            for e in tx.executions_for_job(job_id)? {
                if e.released && !store::exec_status(&e).is_terminal() {
                    fx.things.insert((e.thing_name, job.row.namespace.clone()));
                }
            }
            tx.delete_job(job_id)?;
            Ok(fx)
        })?;
        self.announce(fx);
        Ok(())
    }

    pub fn describe_job_blocking(&self, job_id: &str) -> Result<Job> {
        self.read(|tx| {
            let job = store::load(tx, job_id)?;
            Ok(store::to_job(&job, &tx.executions_for_job(job_id)?))
        })
    }

    /// ListJobs: at most `limit` jobs after `after` (by id), filtered by status and namespace.
    pub fn list_jobs_blocking(
        &self,
        status: Option<JobStatus>,
        namespace: Option<&str>,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.read(|tx| {
            let mut out = vec![];
            for row in tx.jobs(status.map(JobStatus::as_str), after, limit)? {
                if namespace.is_some() && row.namespace.as_deref() != namespace {
                    continue;
                }
                let job = store::load(tx, &row.id)?;
                out.push(store::to_job(&job, &[]));
            }
            Ok(out)
        })
    }

    /// The job's released executions, by thing name.
    pub fn list_executions_for_job_blocking(&self, job_id: &str) -> Result<Vec<JobExecution>> {
        self.read(|tx| {
            let job = store::load(tx, job_id)?;
            Ok(tx
                .executions_for_job(job_id)?
                .iter()
                .filter(|e| e.released)
                .map(|e| store::to_execution(e, job.row.namespace.as_deref()))
                .collect())
        })
    }

    /// The thing's released executions, oldest first; `namespace` filters when given.
    pub fn list_executions_for_thing_blocking(
        &self,
        thing: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<JobExecution>> {
        self.read(|tx| {
            let mut out = vec![];
            for e in tx.executions_for_thing(thing)? {
                if !e.released {
                    continue;
                }
                let ns = tx.job(&e.job_id)?.and_then(|j| j.namespace);
                if namespace.is_some() && ns.as_deref() != namespace {
                    continue;
                }
                out.push(store::to_execution(&e, ns.as_deref()));
            }
            Ok(out)
        })
    }

    /// DescribeJobExecution (control plane: any namespace).
    pub fn describe_execution_blocking(&self, job_id: &str, thing: &str) -> Result<JobExecution> {
        self.read(|tx| {
            let job = store::load(tx, job_id)?;
            match tx.execution(job_id, thing)? {
                Some(e) if e.released => Ok(store::to_execution(&e, job.row.namespace.as_deref())),
                _ => Err(JobsError::NotFound(format!(
                    "job {job_id:?} has no execution for thing {thing:?}"
                ))),
            }
        })
    }

    /// CancelJobExecution: a QUEUED execution, or an IN_PROGRESS one with `force`.
    pub fn cancel_execution_blocking(
        &self,
        who: &str,
        job_id: &str,
        thing: &str,
        force: bool,
        expected_version: Option<i64>,
        details: Option<BTreeMap<String, String>>,
    ) -> Result<()> {
        let now = now_ms();
        let fx = self.write(
            who,
            "CancelJobExecution",
            &format!("{job_id}/{thing}"),
            |tx| {
                let mut job = store::load(tx, job_id)?;
                let mut e = match tx.execution(job_id, thing)? {
                    Some(e) if e.released => e,
                    _ => {
                        return Err(JobsError::NotFound(format!(
                            "job {job_id:?} has no execution for thing {thing:?}"
                        )));
                    }
                };
                let ns = job.row.namespace.clone();
                let state = || Some(Box::new(store::to_execution(&e, ns.as_deref())));
                if let Some(v) = expected_version
                    && v != e.version
                {
                    return Err(JobsError::VersionMismatch {
                        message: format!(
                            "expectedVersion {v} is not the execution's version {}",
                            e.version
                        ),
                        execution: state(),
                    });
                }
                let s = store::exec_status(&e);
                if s.is_terminal() || (s == ExecutionStatus::InProgress && !force) {
                    return Err(JobsError::InvalidStateTransition {
                        message: format!(
                            "the execution of job {job_id:?} on {thing:?} is {}; {}",
                            s.as_str(),
                            if s.is_terminal() {
                                "it is finished"
                            } else {
                                "cancel it with force=true"
                            }
                        ),
                        execution: state(),
                    });
                }
                e.force_canceled = s == ExecutionStatus::InProgress;
                let mut fx = store::Effects::default();
                store::set_status(
                    tx,
                    &mut job,
                    &mut e,
                    store::NewStatus {
                        status: ExecutionStatus::Canceled,
                        details: details.as_ref(),
                        step_timeout_min: None,
                    },
                    now,
                    &mut fx,
                )?;
                Ok(fx)
            },
        )?;
        self.announce(fx);
        Ok(())
    }

    /// GetJobDocument.
    pub fn job_document_blocking(&self, job_id: &str) -> Result<String> {
        Ok(self.describe_job_blocking(job_id)?.document)
    }

    /// Runs the due work at `now` (rollout releases, timeouts); the background tick calls it
    /// every second.
    pub fn tick_blocking(&self, now: i64) -> Result<()> {
        let fx = self.write(SERVICE, "JobsTick", "jobs", |tx| store::tick(tx, now))?;
        self.announce(fx);
        Ok(())
    }

    fn thing_changed(&self, thing: &str) {
        let now = now_ms();
        let r = self.write(SERVICE, "ContinuousJobTarget", thing, |tx| {
            store::thing_changed(tx, &self.inner.arn_prefix, thing, now)
        });
        match r {
            Ok(fx) => self.announce(fx),
            Err(e) => tracing::warn!(thing, "continuous jobs for a changed thing: {e}"),
        }
    }

    /// Every member of every active CONTINUOUS job's target groups has its execution.
    fn reconcile_continuous(&self) {
        let things = self.read(|tx| {
            let mut things = std::collections::BTreeSet::new();
            for row in tx.active_jobs()? {
                if !row.continuous {
                    continue;
                }
                let Ok(job) = store::load(tx, &row.id) else {
                    continue;
                };
                for t in &job.body.targets {
                    if let Ok(store::Target::Group(g)) =
                        store::parse_target(&self.inner.arn_prefix, t)
                        && tx.group_exists(&g)?
                    {
                        things.extend(tx.things_in_group(&g)?);
                    }
                }
            }
            Ok(things)
        });
        match things {
            Ok(things) => things.iter().for_each(|t| self.thing_changed(t)),
            Err(e) => tracing::warn!("continuous jobs: {e}"),
        }
    }

    /// After commit: events to subscribers, `notify` / `notify-next` to devices.
    pub(crate) fn announce(&self, fx: store::Effects) {
        for e in fx.events {
            let _ = self.inner.events.send(e);
        }
        if fx.things.is_empty() {
            return;
        }
        let Some(out) = self
            .inner
            .outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return;
        };
        for (thing, ns) in fx.things {
            match mqtt::notifications(self, &thing, ns.as_deref()) {
                Ok(msgs) => msgs.into_iter().for_each(|m| {
                    let _ = out.send(m);
                }),
                Err(e) => tracing::warn!(thing, "jobs notification: {e}"),
            }
        }
    }
}

/// Checks a CreateJob request's fields as the iot model constrains them.
fn validate(req: &CreateJob) -> Result<()> {
    let id_ok = !req.job_id.is_empty()
        && req.job_id.len() <= 64
        && req
            .job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(JobsError::Invalid(format!(
            "jobId {:?} must be 1 to 64 letters, digits, '_' or '-'",
            req.job_id
        )));
    }
    if req.targets.is_empty() {
        return Err(JobsError::Invalid(
            "targets must name at least one thing or thing-group ARN".into(),
        ));
    }
    if req.document.len() > 32 * 1024 {
        return Err(JobsError::Invalid(
            "document is over 32 KiB; keep it smaller or use documentSource".into(),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(&req.document) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => {
            return Err(JobsError::Invalid(
                "document must be a JSON object (as text)".into(),
            ));
        }
    }
    if let Some(r) = &req.rollout {
        if let Some(m) = r.maximum_per_minute
            && !(1..=1000).contains(&m)
        {
            return Err(JobsError::Invalid(format!(
                "jobExecutionsRolloutConfig.maximumPerMinute {m} is not within 1..1000"
            )));
        }
        if let Some(e) = &r.exponential_rate {
            if !(1..=1000).contains(&e.base_rate_per_minute) {
                return Err(JobsError::Invalid(
                    "jobExecutionsRolloutConfig.exponentialRate.baseRatePerMinute must be 1..1000"
                        .into(),
                ));
            }
            if !(1.1..=5.0).contains(&e.increment_factor) {
                return Err(JobsError::Invalid(
                    "jobExecutionsRolloutConfig.exponentialRate.incrementFactor must be 1.1..5"
                        .into(),
                ));
            }
            let c = &e.rate_increase_criteria;
            if c.number_of_notified_things.is_some() == c.number_of_succeeded_things.is_some() {
                return Err(JobsError::Invalid(
                    "exponentialRate.rateIncreaseCriteria needs exactly one of \
                     numberOfNotifiedThings and numberOfSucceededThings"
                        .into(),
                ));
            }
        }
    }
    if let Some(a) = &req.abort {
        for (i, c) in a.criteria_list.iter().enumerate() {
            if !["FAILED", "REJECTED", "TIMED_OUT", "ALL"].contains(&c.failure_type.as_str()) {
                return Err(JobsError::Invalid(format!(
                    "abortConfig.criteriaList[{i}].failureType {:?} is not FAILED, REJECTED, \
                     TIMED_OUT or ALL",
                    c.failure_type
                )));
            }
            if c.action != "CANCEL" {
                return Err(JobsError::Invalid(format!(
                    "abortConfig.criteriaList[{i}].action {:?} is not CANCEL",
                    c.action
                )));
            }
            if !(0.0..=100.0).contains(&c.threshold_percentage) {
                return Err(JobsError::Invalid(format!(
                    "abortConfig.criteriaList[{i}].thresholdPercentage must be 0..100"
                )));
            }
        }
    }
    if let Some(t) = &req.timeout
        && let Some(m) = t.in_progress_timeout_in_minutes
        && !(1..=10080).contains(&m)
    {
        return Err(JobsError::Invalid(
            "timeoutConfig.inProgressTimeoutInMinutes must be 1..10080".into(),
        ));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(JobsError::Registry(RegistryError::Invalid(format!(
            "jobs operation panicked: {e}"
        ))))
    })
}

/// Marks a jobs error carried across the registry's transaction closure.
const CARRIED: &str = "\u{0}jobs-error";

impl JobsService {
    /// One registry write transaction whose closure speaks [`JobsError`].
    pub(crate) fn write<T: Send>(
        &self,
        who: &str,
        operation: &str,
        resource: &str,
        mut f: impl FnMut(&JobsTx<'_, '_, '_>) -> Result<T> + Send,
    ) -> Result<T> {
        let carried = Mutex::new(None);
        let r = self
            .inner
            .registry
            .jobs_write(who, operation, resource, |tx| {
                f(tx).map_err(|e| carry(&carried, e))
            });
        r.map_err(|e| uncarry(carried, e))
    }

    /// One registry read transaction whose closure speaks [`JobsError`].
    pub(crate) fn read<T: Send>(
        &self,
        mut f: impl FnMut(&JobsTx<'_, '_, '_>) -> Result<T> + Send,
    ) -> Result<T> {
        let carried = Mutex::new(None);
        let r = self
            .inner
            .registry
            .jobs_read(|tx| f(tx).map_err(|e| carry(&carried, e)));
        r.map_err(|e| uncarry(carried, e))
    }
}

fn carry(slot: &Mutex<Option<JobsError>>, e: JobsError) -> RegistryError {
    match e {
        JobsError::Registry(r) => r,
        other => {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(other);
            RegistryError::Invalid(CARRIED.into())
        }
    }
}

fn uncarry(slot: Mutex<Option<JobsError>>, e: RegistryError) -> JobsError {
    match e {
        RegistryError::Invalid(m) if m == CARRIED => slot
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(|| JobsError::Invalid("the jobs operation failed".into())),
        e => JobsError::Registry(e),
    }
}

#[cfg(test)]
mod tests;
