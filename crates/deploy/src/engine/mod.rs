//! The deployment engine: its state, public API and the durable queue with its worker.

mod apply;
mod cloud_plan;
mod history;
mod plan;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lichen_config::ConfigStore;
use lichen_supervisor::Supervisor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, broadcast, watch};

use crate::artifacts::{ArtifactFetcher, Fetchers};
use crate::cloud::{CloudDocument, CloudResolver, SigningPolicy};
use crate::error::DeployError;
use crate::fsutil;
use crate::store::{self, Store};
use crate::{
    DeploymentHooks, DeploymentRecord, DeploymentStatus, DetailedStatus, EngineConfig,
    LocalDeploymentRequest,
};

const SERVICES: &str = "services";
const DEPLOYMENT_SERVICE: &str = "DeploymentService";
const GROUP_ROOTS: &str = "GroupToRootComponents";
/// `GroupToLastDeployment.<group>.{configArn, timestamp}`: stale cloud deployments are skipped.
const GROUP_LAST: &str = "GroupToLastDeployment";
/// Id of the deployment whose commit is in the config: tells a resumed deployment whether its
/// commit happened, because it is written in the same atomic batch as the services.
const COMMITTED_ID: &str = "CommittedDeploymentId";
const MAIN: &str = "main";
/// The nucleus's entry is the core's own, never removed by a deployment.
const NUCLEUS: &str = "aws.greengrass.Nucleus";
/// Configuration validation timeout of local deployments (spec §6.2).
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a deployment is in its pipeline; persisted so a restart knows what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    Queued,
    Preparing,
    /// The commit batch may or may not have been applied: the config's committed id decides.
    Committing,
    Committed,
    RollingBack,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    record: DeploymentRecord,
    phase: Phase,
    seq: u64,
    /// Components whose entries this deployment changed (waited on after the commit).
    #[serde(default)]
    affected: Vec<String>,
    /// `name@version` whose bootstrap step already ran for this deployment, so a deployment
    /// resumed after the restart a bootstrap step asked for does not run it again.
    #[serde(default)]
    bootstrapped: Vec<String>,
}

#[derive(Default)]
struct QueueState {
    records: BTreeMap<String, Persisted>,
    queue: VecDeque<String>,
    current: Option<String>,
    cancel_requested: BTreeSet<String>,
    next_seq: u64,
}

struct Inner {
    cfg: EngineConfig,
    config: ConfigStore,
    supervisor: Supervisor,
    hooks: Arc<dyn DeploymentHooks>,
    store: Store,
    deployments_dir: PathBuf,
    fetchers: Mutex<Fetchers>,
    cloud: Mutex<CloudSettings>,
    events: broadcast::Sender<DeploymentRecord>,
    state: Mutex<QueueState>,
    wake: Notify,
    idle: watch::Sender<bool>,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How cloud deployments resolve components.
#[derive(Default)]
struct CloudSettings {
    resolver: Option<Arc<dyn CloudResolver>>,
    signing: SigningPolicy,
}

/// The deployment engine. Cheap to clone; all clones share one queue.
#[derive(Clone)]
pub struct DeploymentEngine {
    inner: Arc<Inner>,
}

/// What a deployment will commit, computed before anything changes.
#[cfg_attr(test, derive(Default))]
struct Plan {
    /// Group → component → requirement, after this deployment.
    roots: BTreeMap<String, BTreeMap<String, String>>,
    /// New `services.<name>` entries of supervised components.
    entries: BTreeMap<String, Value>,
    /// New configuration (and version) of built-ins in the resolved set.
    builtin_updates: BTreeMap<String, (String, Value)>,
    /// Supervised components and deployed built-ins that go away.
    removed: Vec<String>,
    /// Components whose entry is new or differs (to bootstrap, validate and wait for).
    changed: Vec<String>,
    /// Changed components whose configuration changed and that existed before.
    config_changed: Vec<(String, Value)>,
    /// Components with a Bootstrap step to run, dependencies first.
    bootstrap: Vec<String>,
    /// Every built-in of the new set with the configuration it will have (checked before the
    /// commit through [`crate::DeploymentHooks::check_builtin`]).
    builtins: Vec<(String, Value)>,
    /// Every component of the new set → its version.
    versions: BTreeMap<String, String>,
    /// The nucleus version this deployment moves the core to (the kernel-update path, spec
    /// §6.6 step 4): staged through [`DeploymentHooks::stage_core_update`] before the commit.
    core_update: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// name → previous entry (None: absent before).
    services: BTreeMap<String, Option<Value>>,
    main: Option<Value>,
    roots: Option<Value>,
}

impl DeploymentEngine {
    pub fn new(
        cfg: EngineConfig,
        config: ConfigStore,
        supervisor: Supervisor,
        hooks: Arc<dyn DeploymentHooks>,
    ) -> Result<Self, DeployError> {
        let store = Store::new(&cfg.root)?;
        let deployments_dir = cfg.root.join("deployments");
        fs::create_dir_all(&deployments_dir)
            .map_err(|e| DeployError::io("cannot create", &deployments_dir, e))?;
        let mut state = QueueState::default();
        for entry in fs::read_dir(&deployments_dir)
            .map_err(|e| DeployError::io("cannot list", &deployments_dir, e))?
            .flatten()
        {
            let path = entry.path().join("deployment.json");
            if !path.is_file() {
                continue;
            }
            let text = fs::read(&path).map_err(|e| DeployError::io("cannot read", &path, e))?;
            let persisted: Persisted =
                serde_json::from_slice(&text).map_err(|e| DeployError::BadRecord {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            state.next_seq = state.next_seq.max(persisted.seq + 1);
            state.records.insert(persisted.record.id.clone(), persisted);
        }
        let mut pending: Vec<(u64, String)> = state
            .records
            .values()
            .filter(|p| p.record.status == DeploymentStatus::Queued)
            .map(|p| (p.seq, p.record.id.clone()))
            .collect();
        pending.sort();
        state.queue = pending.into_iter().map(|(_, id)| id).collect();
        let (idle, _) = watch::channel(true);
        Ok(DeploymentEngine {
            inner: Arc::new(Inner {
                cfg,
                config,
                supervisor,
                hooks,
                store,
                deployments_dir,
                fetchers: Mutex::new(Fetchers::new()),
                cloud: Mutex::new(CloudSettings::default()),
                events: broadcast::channel(64).0,
                state: Mutex::new(state),
                wake: Notify::new(),
                idle,
                worker: Mutex::new(None),
            }),
        })
    }

    /// Adds a fetcher for artifact URIs of `scheme` (`s3`, `https`, `greengrass`, `docker`).
    /// Local files from the deployment's artifact directory are always tried first.
    pub fn register_fetcher(&self, scheme: &str, fetcher: Arc<dyn ArtifactFetcher>) {
        lock(&self.inner.fetchers).register(scheme, fetcher);
    }

    /// Cloud deployments resolve components through `resolver` (resolveComponentCandidates),
    /// accepting recipes per `signing`.
    pub fn set_cloud_resolver(&self, resolver: Arc<dyn CloudResolver>, signing: SigningPolicy) {
        let mut cloud = lock(&self.inner.cloud);
        cloud.resolver = Some(resolver);
        cloud.signing = signing;
    }

    /// Every change of a deployment record (queued, in progress, terminal).
    pub fn subscribe(&self) -> broadcast::Receiver<DeploymentRecord> {
        self.inner.events.subscribe()
    }

    /// Queues a cloud deployment under its deployment id (the job id for jobs). Submitting an
    /// id the engine already knows returns it unchanged. A document this core cannot take
    /// (unsupported `requiredCapabilities`, stale for its group) is recorded as FAILED at once,
    /// so its status still gets reported. A newer shadow deployment replaces a queued one.
    pub fn submit_cloud(&self, doc: CloudDocument) -> Result<String, DeployError> {
        let info = doc.info().clone();
        let id = info.deployment_id.clone();
        if id.is_empty()
            || id.starts_with('.')
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(DeployError::BadRequest(format!(
                "deployment id {id:?} must be letters, digits, '-', '_', '.' or ':' (it names a folder)"
            )));
        }
        if lock(&self.inner.state).records.contains_key(&id) {
            return Ok(id);
        }
        let group = doc.group();
        let refused = {
            let unsupported = doc.unsupported_capabilities();
            let last = self.last_deployment_timestamp(&group);
            if !unsupported.is_empty() {
                Some(DeployError::Capabilities(unsupported.join(", ")))
            } else if let Some(last) = last
                && info.creation_timestamp < last
            {
                Some(DeployError::Stale {
                    id: id.clone(),
                    group: group.clone(),
                    created: info.creation_timestamp,
                    last,
                })
            } else {
                None
            }
        };
        if info.source == crate::CloudSource::Shadow {
            let queued: Vec<String> = lock(&self.inner.state)
                .records
                .values()
                .filter(|p| {
                    p.record.status == DeploymentStatus::Queued
                        && p.record.request.cloud.as_ref().map(|c| c.source)
                            == Some(crate::CloudSource::Shadow)
                })
                .map(|p| p.record.id.clone())
                .collect();
            for old in queued {
                let _ = self.cancel(&old);
            }
        }
        let mut record = DeploymentRecord {
            id: id.clone(),
            group,
            status: DeploymentStatus::Queued,
            detailed_status: None,
            created_on_ms: lichen_config::now_ms(),
            failure_cause: String::new(),
            error_stack: Vec::new(),
            error_types: Vec::new(),
            warnings: Vec::new(),
            progress: None,
            request: doc.request,
        };
        if let Some(e) = &refused {
            tracing::warn!(deployment = %id, error = %e, "cloud deployment refused");
            record.status = DeploymentStatus::Failed;
            record.detailed_status = Some(DetailedStatus::FailedNoStateChange);
            record.failure_cause = e.to_string();
            record.error_stack = e.error_stack();
            record.error_types = vec![e.error_type().to_string()];
        }
        self.enqueue(record, refused.is_none())?;
        Ok(id)
    }

    /// `GroupToLastDeployment.<group>.timestamp`.
    fn last_deployment_timestamp(&self, group: &str) -> Option<i64> {
        self.inner
            .config
            .get(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_LAST, group, "timestamp"])
            .and_then(|v| v.as_i64())
    }

    /// Persists a new record; queues it when `run`, else keeps it as it is (terminal).
    fn enqueue(&self, record: DeploymentRecord, run: bool) -> Result<(), DeployError> {
        let id = record.id.clone();
        let mut state = lock(&self.inner.state);
        let persisted = Persisted {
            record,
            phase: if run { Phase::Queued } else { Phase::Done },
            seq: state.next_seq,
            affected: Vec::new(),
            bootstrapped: Vec::new(),
        };
        state.next_seq += 1;
        self.inner.persist(&persisted)?;
        let _ = self.inner.events.send(persisted.record.clone());
        state.records.insert(id.clone(), persisted);
        if run {
            state.queue.push_back(id);
            self.inner.idle.send_replace(false);
            drop(state);
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// At core start: hand the committed `services` to the supervisor, then resume or roll back
    /// an interrupted deployment, then process the queue in a background task.
    pub async fn start(&self) -> Result<(), DeployError> {
        let specs = self.inner.current_specs()?;
        self.inner.hooks.services_committed().await;
        self.inner
            .supervisor
            .reconcile(specs, &BTreeSet::new())
            .await
            .map_err(|e| DeployError::Settle(format!("cannot start deployed components: {e}")))?;
        let interrupted: Vec<String> = {
            let state = lock(&self.inner.state);
            let mut list: Vec<(u64, String)> = state
                .records
                .values()
                .filter(|p| p.record.status == DeploymentStatus::InProgress)
                .map(|p| (p.seq, p.record.id.clone()))
                .collect();
            list.sort();
            list.into_iter().map(|(_, id)| id).collect()
        };
        for id in interrupted {
            self.inner.resume(&id).await;
        }
        {
            let state = lock(&self.inner.state);
            self.inner.idle.send_replace(state.queue.is_empty());
        }
        let inner = self.inner.clone();
        let handle = tokio::spawn(async move { inner.worker_loop().await });
        if let Some(old) = lock(&self.inner.worker).replace(handle) {
            old.abort();
        }
        Ok(())
    }

    /// Stops the background queue worker (a deployment in progress is abandoned where it is
    /// and resumed by the next `start`).
    pub fn shutdown(&self) {
        if let Some(handle) = lock(&self.inner.worker).take() {
            handle.abort();
        }
    }

    /// Validates the request, stages its recipes and persists it in the queue; returns the new
    /// deployment id.
    pub fn submit_local(&self, req: LocalDeploymentRequest) -> Result<String, DeployError> {
        if let Some(group) = &req.group_name
            && (group.is_empty() || group.contains(':'))
        {
            return Err(DeployError::BadRequest(format!(
                "group name {group:?} must be non-empty and must not contain ':'"
            )));
        }
        for name in req.root_components_to_add.keys() {
            if req.root_components_to_remove.contains(name) {
                return Err(DeployError::BadRequest(format!(
                    "component {name} is both added and removed; name it in one list only"
                )));
            }
        }
        for (name, version) in &req.root_components_to_add {
            lichen_recipe::VersionRequirement::parse(version).map_err(|e| {
                DeployError::BadRequest(format!(
                    "root component {name}: version {version:?} is invalid: {e}"
                ))
            })?;
        }
        let recipes = match &req.recipe_directory_path {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(DeployError::InvalidRecipeDirectory { path: dir.clone() });
                }
                store::read_recipe_dir(dir)?
            }
            None => Vec::new(),
        };
        if let Some(dir) = &req.artifacts_directory_path
            && !dir.is_dir()
        {
            return Err(DeployError::InvalidArtifactsDirectory { path: dir.clone() });
        }
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.inner.deployments_dir.join(&id);
        // Staged in the deployment's own directory, imported into the store when it runs, so
        // garbage collection of earlier deployments cannot remove them meanwhile.
        for (_, recipe) in &recipes {
            let path = dir
                .join("recipes")
                .join(format!("{}@{}.recipe.json", recipe.name, recipe.version));
            let text = serde_json::to_vec_pretty(&recipe.to_json())
                .map_err(|e| DeployError::Config(format!("cannot serialise recipe: {e}")))?;
            fsutil::write_atomic(&path, &text)
                .map_err(|e| DeployError::io("cannot stage recipe", &path, e))?;
        }
        let record = DeploymentRecord {
            id: id.clone(),
            group: req.group(),
            status: DeploymentStatus::Queued,
            detailed_status: None,
            created_on_ms: lichen_config::now_ms(),
            failure_cause: String::new(),
            error_stack: Vec::new(),
            error_types: Vec::new(),
            request: req,
            warnings: Vec::new(),
            progress: None,
        };
        self.enqueue(record, true)?;
        Ok(id)
    }

    pub fn status(&self, id: &str) -> Option<DeploymentRecord> {
        lock(&self.inner.state)
            .records
            .get(id)
            .map(|p| p.record.clone())
    }

    /// Every known deployment, newest first.
    pub fn list(&self) -> Vec<DeploymentRecord> {
        let state = lock(&self.inner.state);
        let mut all: Vec<&Persisted> = state.records.values().collect();
        all.sort_by_key(|p| std::cmp::Reverse(p.seq));
        all.into_iter().map(|p| p.record.clone()).collect()
    }

    /// Cancels a deployment while it is QUEUED, or in progress before its merge starts.
    pub fn cancel(&self, id: &str) -> Result<(), DeployError> {
        let mut state = lock(&self.inner.state);
        let Some(persisted) = state.records.get(id).cloned() else {
            return Err(DeployError::NotFound(id.to_string()));
        };
        match (persisted.record.status, persisted.phase) {
            (DeploymentStatus::Queued, _) => {
                let mut updated = persisted;
                updated.record.status = DeploymentStatus::Canceled;
                updated.record.detailed_status = Some(DetailedStatus::Rejected);
                updated.record.failure_cause = "cancelled before it started".to_string();
                updated.phase = Phase::Done;
                self.inner.persist(&updated)?;
                let _ = self.inner.events.send(updated.record.clone());
                state.records.insert(id.to_string(), updated);
                state.queue.retain(|q| q != id);
                if state.queue.is_empty() && state.current.is_none() {
                    self.inner.idle.send_replace(true);
                }
                Ok(())
            }
            (DeploymentStatus::InProgress, Phase::Preparing) => {
                state.cancel_requested.insert(id.to_string());
                Ok(())
            }
            (status, _) => Err(DeployError::NotCancelable {
                id: id.to_string(),
                status: status.as_str(),
            }),
        }
    }

    /// The `configuration` subtree of a deployed component.
    pub fn component_configuration(&self, name: &str) -> Option<Value> {
        self.inner.config.get(&[SERVICES, name, "configuration"])
    }

    /// name → (version, is_root) for every deployed component, built-ins included.
    pub fn deployed_components(&self) -> BTreeMap<String, (String, bool)> {
        let roots: BTreeSet<String> = self
            .inner
            .group_roots()
            .into_values()
            .flat_map(|m| m.into_keys())
            .collect();
        let mut out = BTreeMap::new();
        for (name, version) in &self.inner.cfg.builtins {
            out.insert(name.clone(), (version.clone(), roots.contains(name)));
        }
        for (name, entry) in self.inner.managed_services() {
            let version = entry
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let is_root = roots.contains(&name);
            out.insert(name, (version, is_root));
        }
        out
    }

    /// Resolves when the queue is empty and nothing is in progress. Requires `start`.
    pub async fn wait_idle(&self) {
        let mut rx = self.inner.idle.subscribe();
        let _ = rx.wait_for(|idle| *idle).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn record_path(&self, id: &str) -> PathBuf {
        self.deployments_dir.join(id).join("deployment.json")
    }

    fn persist(&self, persisted: &Persisted) -> Result<(), DeployError> {
        let path = self.record_path(&persisted.record.id);
        let text = serde_json::to_vec_pretty(persisted)
            .map_err(|e| DeployError::Config(format!("cannot serialise deployment record: {e}")))?;
        fsutil::write_atomic(&path, &text)
            .map_err(|e| DeployError::io("cannot write deployment record", &path, e))
    }

    /// Updates a record in memory and on disk.
    fn update(&self, id: &str, change: impl FnOnce(&mut Persisted)) -> Result<(), DeployError> {
        let mut state = lock(&self.state);
        let Some(persisted) = state.records.get_mut(id) else {
            return Err(DeployError::NotFound(id.to_string()));
        };
        change(persisted);
        let copy = persisted.clone();
        drop(state);
        self.persist(&copy)?;
        let _ = self.events.send(copy.record);
        Ok(())
    }

    fn get(&self, id: &str) -> Option<Persisted> {
        lock(&self.state).records.get(id).cloned()
    }

    async fn worker_loop(self: Arc<Self>) {
        loop {
            let next = {
                let mut state = lock(&self.state);
                let next = state.queue.pop_front();
                state.current = next.clone();
                if next.is_none() {
                    self.idle.send_replace(true);
                }
                next
            };
            match next {
                Some(id) => {
                    self.run(&id).await;
                    let mut state = lock(&self.state);
                    state.current = None;
                    state.cancel_requested.remove(&id);
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Runs one deployment from the start to a terminal status.
    async fn run(&self, id: &str) {
        let Some(persisted) = self.get(id) else {
            return;
        };
        tracing::info!(deployment = id, group = %persisted.record.group, "deployment started");
        if let Err(e) = self.update(id, |p| {
            p.record.status = DeploymentStatus::InProgress;
            p.phase = Phase::Preparing;
        }) {
            tracing::error!(deployment = id, error = %e, "cannot record deployment start");
        }
        let outcome = self.execute(&persisted).await;
        self.finish(id, outcome).await;
    }
}
