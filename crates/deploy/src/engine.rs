//! The deployment engine: durable queue, planning, apply with rollback, history.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lichen_config::{Change, ConfigStore};
use lichen_recipe::{
    ComponentVars, DependencyType, InterpolationContext, Lifecycle, Platform, Recipe,
    SelectedRecipe,
};
use lichen_supervisor::{ComponentSpec, State, Supervisor};
use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};

use crate::artifacts::{self, ArtifactFetcher, Fetchers};
use crate::error::DeployError;
use crate::fsutil;
use crate::resolve::{self, Catalog};
use crate::store::{self, Store};
use crate::{
    DeploymentHooks, DeploymentRecord, DeploymentStatus, DetailedStatus, EngineConfig,
    FailureHandlingPolicy, LocalDeploymentRequest,
};

const SERVICES: &str = "services";
const DEPLOYMENT_SERVICE: &str = "DeploymentService";
const GROUP_ROOTS: &str = "GroupToRootComponents";
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
    state: Mutex<QueueState>,
    wake: Notify,
    idle: watch::Sender<bool>,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The deployment engine. Cheap to clone; all clones share one queue.
#[derive(Clone)]
pub struct DeploymentEngine {
    inner: Arc<Inner>,
}

/// What a deployment will commit, computed before anything changes.
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
        };
        let mut state = lock(&self.inner.state);
        let persisted = Persisted {
            record,
            phase: Phase::Queued,
            seq: state.next_seq,
            affected: Vec::new(),
            bootstrapped: Vec::new(),
        };
        state.next_seq += 1;
        self.inner.persist(&persisted)?;
        state.records.insert(id.clone(), persisted);
        state.queue.push_back(id.clone());
        self.inner.idle.send_replace(false);
        drop(state);
        self.inner.wake.notify_one();
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
        self.persist(&copy)
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

    /// Everything up to and including the wait after the commit. On failure after the commit,
    /// the policy decides about rollback.
    async fn execute(&self, persisted: &Persisted) -> Outcome {
        let id = persisted.record.id.as_str();
        let plan = match self.plan(persisted).await {
            Ok(plan) => plan,
            Err(e) => return Outcome::failed(DetailedStatus::FailedNoStateChange, e),
        };
        if lock(&self.state).cancel_requested.contains(id) {
            return Outcome::canceled(id);
        }
        // NOTIFY_COMPONENTS: subscribed components hear of the update first and may defer it.
        let notified = match &persisted.record.request.component_update_policy {
            Some(policy) if policy.notify_components => {
                self.hooks.pre_update(id, policy.timeout).await;
                true
            }
            _ => false,
        };
        // Configuration validation by the components whose configuration changes.
        for (component, configuration) in &plan.config_changed {
            if let Err(message) = self
                .hooks
                .validate_configuration(id, component, configuration, VALIDATION_TIMEOUT)
                .await
            {
                return Outcome::failed(
                    DetailedStatus::FailedNoStateChange,
                    DeployError::ConfigurationRejected {
                        component: component.clone(),
                        message,
                    },
                );
            }
        }
        if lock(&self.state).cancel_requested.contains(id) {
            return Outcome::canceled(id);
        }
        let mut outcome = self.commit_and_apply(id, persisted, &plan).await;
        outcome.notified = notified;
        outcome
    }

    /// Snapshot, bootstrap, the atomic commit, then reconcile and wait.
    async fn commit_and_apply(&self, id: &str, persisted: &Persisted, plan: &Plan) -> Outcome {
        let snapshot = self.snapshot(plan);
        if let Err(e) = self.write_snapshot(id, &snapshot) {
            return Outcome::failed(DetailedStatus::FailedNoStateChange, e);
        }
        let affected: Vec<String> = plan.changed.clone();
        if let Err(e) = self.update(id, |p| {
            p.phase = Phase::Committing;
            p.affected = affected;
        }) {
            return Outcome::failed(DetailedStatus::FailedNoStateChange, e);
        }
        match self.run_bootstraps(id, plan).await {
            Err(e) => return Outcome::failed(DetailedStatus::FailedNoStateChange, e),
            Ok(Some(reboot)) => {
                if self.hooks.restart_requested(reboot) {
                    tracing::warn!(
                        deployment = id,
                        "bootstrap asked for a restart; the deployment resumes after it"
                    );
                    // The core stops and starts again; the deployment resumes from its record.
                    std::future::pending::<()>().await;
                }
                tracing::warn!(
                    deployment = id,
                    "bootstrap asked for a restart, which this core cannot do; continuing without it"
                );
            }
            Ok(None) => {}
        }
        if let Err(e) = self.commit(id, plan) {
            return Outcome::failed(DetailedStatus::FailedNoStateChange, e);
        }
        if let Err(e) = self.update(id, |p| p.phase = Phase::Committed) {
            tracing::error!(deployment = id, error = %e, "cannot record commit phase");
        }
        self.apply_and_wait(
            id,
            &plan.changed,
            persisted.record.request.failure_handling_policy,
        )
        .await
    }

    /// After a commit: reconcile, wait, and on failure roll back per policy.
    async fn apply_and_wait(
        &self,
        id: &str,
        affected: &[String],
        policy: FailureHandlingPolicy,
    ) -> Outcome {
        match self.reconcile_and_wait(affected).await {
            Ok(()) => Outcome::succeeded(),
            Err(e) => match policy {
                FailureHandlingPolicy::DoNothing => {
                    Outcome::failed(DetailedStatus::FailedRollbackNotRequested, e)
                }
                FailureHandlingPolicy::Rollback => self.rollback(id, e).await,
            },
        }
    }

    async fn reconcile_and_wait(&self, affected: &[String]) -> Result<(), DeployError> {
        let specs = self.current_specs()?;
        self.hooks.services_committed().await;
        let names: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
        // BROKEN components that are (re)deployed are reinstalled (spec §6.6).
        let reinstall: BTreeSet<String> = names
            .iter()
            .filter(|n| {
                self.supervisor
                    .status(n)
                    .is_some_and(|s| s.state == State::Broken)
            })
            .cloned()
            .collect();
        self.supervisor
            .reconcile(specs, &reinstall)
            .await
            .map_err(|e| DeployError::Settle(e.to_string()))?;
        let mut wait: BTreeSet<String> = affected
            .iter()
            .filter(|n| names.contains(*n))
            .cloned()
            .collect();
        wait.extend(reinstall);
        if wait.is_empty() {
            return Ok(());
        }
        let wait: Vec<String> = wait.into_iter().collect();
        self.supervisor
            .wait_settled(&wait, self.cfg.settle_timeout)
            .await
            .map_err(|e| DeployError::Settle(e.to_string()))
    }

    async fn rollback(&self, id: &str, cause: DeployError) -> Outcome {
        tracing::warn!(deployment = id, error = %cause, "deployment failed after commit; rolling back");
        if let Err(e) = self.update(id, |p| p.phase = Phase::RollingBack) {
            tracing::error!(deployment = id, error = %e, "cannot record rollback phase");
        }
        let result = async {
            let snapshot = self.read_snapshot(id)?;
            self.restore(id, &snapshot)?;
            let affected: Vec<String> = snapshot
                .services
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(n, _)| n.clone())
                .collect();
            self.reconcile_and_wait(&affected).await
        }
        .await;
        match result {
            Ok(()) => Outcome::failed(DetailedStatus::FailedRollbackComplete, cause),
            Err(e) => {
                tracing::error!(deployment = id, error = %e, "rollback failed");
                let mut outcome = Outcome::failed(DetailedStatus::FailedUnableToRollback, cause);
                outcome.failure_cause = format!("{}; rollback failed: {e}", outcome.failure_cause);
                outcome
            }
        }
    }

    /// Records the terminal status, then collects garbage and trims history.
    async fn finish(&self, id: &str, outcome: Outcome) {
        let succeeded = outcome.status == DeploymentStatus::Succeeded;
        tracing::info!(
            deployment = id,
            status = outcome.status.as_str(),
            detailed = outcome.detailed.as_str(),
            cause = %outcome.failure_cause,
            "deployment finished"
        );
        if let Err(e) = self.update(id, |p| {
            p.phase = Phase::Done;
            p.record.status = outcome.status;
            p.record.detailed_status = Some(outcome.detailed);
            p.record.failure_cause = outcome.failure_cause.clone();
            p.record.error_stack = outcome.error_stack.clone();
            p.record.error_types = outcome.error_types.clone();
        }) {
            tracing::error!(deployment = id, error = %e, "cannot record deployment result");
        }
        if succeeded && let Err(e) = self.collect_garbage() {
            tracing::warn!(error = %e, "component store garbage collection failed");
        }
        // Staged recipes are in the store now (or no longer needed).
        let staged = self.deployments_dir.join(id).join("recipes");
        let _ = fsutil::remove_tree(&staged);
        self.trim_history();
        if outcome.notified {
            self.hooks.post_update(id);
        }
    }

    /// Continues a deployment the core died in the middle of.
    async fn resume(&self, id: &str) {
        let Some(persisted) = self.get(id) else {
            return;
        };
        let committed = self
            .config
            .get(&[SERVICES, DEPLOYMENT_SERVICE, COMMITTED_ID])
            .and_then(|v| v.as_str().map(str::to_string))
            .is_some_and(|c| c == id);
        let policy = persisted.record.request.failure_handling_policy;
        match persisted.phase {
            Phase::RollingBack => {
                tracing::info!(deployment = id, "resuming interrupted rollback");
                let cause = DeployError::Settle(
                    "the core stopped while the deployment was rolling back".to_string(),
                );
                let outcome = self.rollback(id, cause).await;
                self.finish(id, outcome).await;
            }
            Phase::Committing | Phase::Committed if committed => {
                tracing::info!(
                    deployment = id,
                    "resuming committed deployment: waiting for components"
                );
                let outcome = self.apply_and_wait(id, &persisted.affected, policy).await;
                self.finish(id, outcome).await;
            }
            _ => {
                // Not committed: the device is in the old state; run it again from the start.
                tracing::info!(
                    deployment = id,
                    "re-running interrupted deployment from the start"
                );
                self.run(id).await;
            }
        }
    }

    /// Group → component → version requirement, as committed.
    fn group_roots(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let Some(Value::Object(groups)) =
            self.config
                .get(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS])
        else {
            return out;
        };
        for (group, components) in groups {
            let Value::Object(components) = components else {
                continue;
            };
            let mut map = BTreeMap::new();
            for (name, info) in components {
                let requirement = match &info {
                    Value::Object(o) => {
                        o.get("version").and_then(Value::as_str).map(str::to_string)
                    }
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                };
                if let Some(r) = requirement {
                    map.insert(name, r);
                }
            }
            if !map.is_empty() {
                out.insert(group, map);
            }
        }
        out
    }

    /// `services.<name>` entries of components this engine deployed (not built-ins).
    fn managed_services(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let Some(Value::Object(services)) = self.config.get(&[SERVICES]) else {
            return out;
        };
        for (name, entry) in services {
            if self.cfg.builtins.contains_key(&name) || name == MAIN {
                continue;
            }
            if entry.get("version").is_some() && entry.get("componentType").is_some() {
                out.insert(name, entry);
            }
        }
        out
    }

    fn current_specs(&self) -> Result<Vec<ComponentSpec>, DeployError> {
        self.managed_services()
            .into_iter()
            .map(|(name, entry)| spec_from_entry(&name, &entry))
            .collect()
    }
}

/// Whether the tree's `stored` value is `planned`, with keys compared as the tree compares them
/// and runtime (`_`) keys, which the tree keeps beside a written value, left aside.
fn same_value(stored: &Value, planned: &Value) -> bool {
    match (stored, planned) {
        (Value::Object(stored), Value::Object(planned)) => {
            let stored: Vec<_> = stored.iter().filter(|(k, _)| !k.starts_with('_')).collect();
            // Keys that differ only in case name one node; the last one written is kept.
            let planned: Vec<_> = planned
                .iter()
                .enumerate()
                .filter(|(i, (k, _))| {
                    !k.starts_with('_')
                        && !planned
                            .keys()
                            .skip(i + 1)
                            .any(|later| lichen_config::same_key(later, k))
                })
                .map(|(_, kv)| kv)
                .collect();
            stored.len() == planned.len()
                && planned.iter().all(|(key, value)| {
                    stored
                        .iter()
                        .any(|(k, v)| lichen_config::same_key(k, key) && same_value(v, value))
                })
        }
        _ => stored == planned,
    }
}

/// How a deployment ended.
struct Outcome {
    status: DeploymentStatus,
    detailed: DetailedStatus,
    failure_cause: String,
    error_stack: Vec<String>,
    error_types: Vec<String>,
    notified: bool,
}

impl Outcome {
    fn succeeded() -> Self {
        Outcome {
            status: DeploymentStatus::Succeeded,
            detailed: DetailedStatus::Successful,
            failure_cause: String::new(),
            error_stack: Vec::new(),
            error_types: Vec::new(),
            notified: false,
        }
    }

    fn failed(detailed: DetailedStatus, error: DeployError) -> Self {
        Outcome {
            status: DeploymentStatus::Failed,
            detailed,
            failure_cause: error.to_string(),
            error_stack: error.error_stack(),
            error_types: vec![error.error_type().to_string()],
            notified: false,
        }
    }

    fn canceled(id: &str) -> Self {
        let error = DeployError::Canceled(id.to_string());
        Outcome {
            status: DeploymentStatus::Canceled,
            detailed: DetailedStatus::Rejected,
            failure_cause: error.to_string(),
            error_stack: Vec::new(),
            error_types: Vec::new(),
            notified: false,
        }
    }
}

/// Everything planning needs, owned, so it can run on a blocking thread.
struct PlanInput {
    request: LocalDeploymentRequest,
    group: String,
    roots: BTreeMap<String, BTreeMap<String, String>>,
    services: Map<String, Value>,
    store: Store,
    fetchers: Fetchers,
    builtins: BTreeMap<String, String>,
    platform: Platform,
    root: PathBuf,
    thing_name: String,
    staged_recipes: PathBuf,
}

impl Inner {
    async fn plan(&self, persisted: &Persisted) -> Result<Plan, DeployError> {
        let services = match self.config.get(&[SERVICES]) {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let input = PlanInput {
            request: persisted.record.request.clone(),
            group: persisted.record.group.clone(),
            roots: self.group_roots(),
            services,
            store: self.store.clone(),
            fetchers: lock(&self.fetchers).clone(),
            builtins: self.cfg.builtins.clone(),
            platform: self.cfg.platform.clone(),
            root: self.cfg.root.clone(),
            thing_name: self.cfg.thing_name.clone(),
            staged_recipes: self
                .deployments_dir
                .join(&persisted.record.id)
                .join("recipes"),
        };
        tokio::task::spawn_blocking(move || build_plan(input))
            .await
            .map_err(|e| DeployError::Config(format!("deployment planning panicked: {e}")))?
    }

    fn snapshot(&self, plan: &Plan) -> Snapshot {
        let mut names: BTreeSet<String> = self.managed_services().into_keys().collect();
        names.extend(plan.entries.keys().cloned());
        names.extend(plan.builtin_updates.keys().cloned());
        names.extend(plan.removed.iter().cloned());
        let services = names
            .into_iter()
            .map(|name| {
                let old = self.config.get(&[SERVICES, &name]);
                (name, old)
            })
            .collect();
        Snapshot {
            services,
            main: self.config.get(&[SERVICES, MAIN, "dependencies"]),
            roots: self
                .config
                .get(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS]),
        }
    }

    fn write_snapshot(&self, id: &str, snapshot: &Snapshot) -> Result<(), DeployError> {
        let path = self.deployments_dir.join(id).join("rollback.json");
        let text = serde_json::to_vec_pretty(snapshot)
            .map_err(|e| DeployError::Config(format!("cannot serialise rollback snapshot: {e}")))?;
        fsutil::write_atomic(&path, &text)
            .map_err(|e| DeployError::io("cannot write rollback snapshot", &path, e))
    }

    fn read_snapshot(&self, id: &str) -> Result<Snapshot, DeployError> {
        let path = self.deployments_dir.join(id).join("rollback.json");
        let text = fs::read(&path)
            .map_err(|e| DeployError::io("cannot read rollback snapshot", &path, e))?;
        serde_json::from_slice(&text).map_err(|e| DeployError::BadRecord {
            path,
            message: e.to_string(),
        })
    }

    /// The commit: new services, `main`, group roots and the committing id in ONE batch.
    fn commit(&self, id: &str, plan: &Plan) -> Result<(), DeployError> {
        let ts = lichen_config::now_ms();
        let mut changes = Vec::new();
        for name in &plan.removed {
            changes.push(Change::Remove {
                path: path(&[SERVICES, name]),
                ts,
            });
        }
        for (name, entry) in &plan.entries {
            changes.push(Change::Set {
                path: path(&[SERVICES, name]),
                value: entry.clone(),
                ts,
            });
        }
        for (name, (version, configuration)) in &plan.builtin_updates {
            changes.push(Change::Set {
                path: path(&[SERVICES, name, "version"]),
                value: Value::String(version.clone()),
                ts,
            });
            changes.push(Change::Set {
                path: path(&[SERVICES, name, "configuration"]),
                value: configuration.clone(),
                ts,
            });
        }
        let main: Vec<Value> = plan
            .roots
            .values()
            .flat_map(|m| m.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|n| Value::String(n.clone()))
            .collect();
        changes.push(Change::Set {
            path: path(&[SERVICES, MAIN, "dependencies"]),
            value: Value::Array(main),
            ts,
        });
        changes.push(Change::Set {
            path: path(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS]),
            value: roots_to_value(&plan.roots),
            ts,
        });
        changes.push(Change::Set {
            path: path(&[SERVICES, DEPLOYMENT_SERVICE, COMMITTED_ID]),
            value: Value::String(id.to_string()),
            ts,
        });
        // Overriding: the deployment's decision takes effect whatever timestamps the tree holds
        // (a node stamped in the future would otherwise make the commit a silent no-op).
        self.config
            .apply_overriding(changes)
            .map_err(|e| DeployError::Config(format!("cannot commit deployment {id}: {e}")))?;
        self.check_took_effect(id, plan)
    }

    /// Every committed service entry and built-in configuration reads back as planned; a
    /// deployment never reports success for a change the tree did not take.
    fn check_took_effect(&self, id: &str, plan: &Plan) -> Result<(), DeployError> {
        let mismatch = |name: &str, what: &str| {
            DeployError::Config(format!(
                "deployment {id}: the {what} of component {name} did not take effect in the configuration tree; inspect services.{name} in effectiveConfig.yaml and deploy again"
            ))
        };
        for (name, entry) in &plan.entries {
            let stored = self.config.get(&[SERVICES, name]).unwrap_or(Value::Null);
            if !same_value(&stored, entry) {
                return Err(mismatch(name, "configuration"));
            }
        }
        for (name, (_, configuration)) in &plan.builtin_updates {
            let stored = self
                .config
                .get(&[SERVICES, name, "configuration"])
                .unwrap_or(Value::Null);
            if !same_value(&stored, configuration) {
                return Err(mismatch(name, "configuration"));
            }
        }
        Ok(())
    }

    /// Puts the snapshot back exactly, in ONE batch.
    fn restore(&self, id: &str, snapshot: &Snapshot) -> Result<(), DeployError> {
        let ts = lichen_config::now_ms();
        let mut changes = Vec::new();
        for (name, old) in &snapshot.services {
            changes.push(Change::Remove {
                path: path(&[SERVICES, name]),
                ts,
            });
            if let Some(old) = old {
                changes.push(Change::Set {
                    path: path(&[SERVICES, name]),
                    value: old.clone(),
                    ts,
                });
            }
        }
        changes.push(Change::Remove {
            path: path(&[SERVICES, MAIN, "dependencies"]),
            ts,
        });
        if let Some(main) = &snapshot.main {
            changes.push(Change::Set {
                path: path(&[SERVICES, MAIN, "dependencies"]),
                value: main.clone(),
                ts,
            });
        }
        changes.push(Change::Remove {
            path: path(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS]),
            ts,
        });
        if let Some(roots) = &snapshot.roots {
            changes.push(Change::Set {
                path: path(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS]),
                value: roots.clone(),
                ts,
            });
        }
        changes.push(Change::Set {
            path: path(&[SERVICES, DEPLOYMENT_SERVICE, COMMITTED_ID]),
            value: Value::String(format!("{id}:rolled-back")),
            ts,
        });
        self.config
            .apply_overriding(changes)
            .map_err(|e| DeployError::Config(format!("cannot restore snapshot of {id}: {e}")))
    }

    /// Bootstrap steps of new/changed components, dependencies first. Exit 100/101 (restart
    /// core / reboot device) are logged and the deployment continues: the core does not
    /// restart itself mid-deployment.
    /// Runs the bootstrap steps the plan needs, skipping those already run for this deployment.
    /// `Ok(Some(reboot))` when a step asked for a restart (exit 100) or a reboot (exit 101).
    async fn run_bootstraps(&self, id: &str, plan: &Plan) -> Result<Option<bool>, DeployError> {
        let done = self.get(id).map(|p| p.bootstrapped).unwrap_or_default();
        let mut restart: Option<bool> = None;
        for name in &plan.bootstrap {
            let entry = &plan.entries[name];
            let spec = spec_from_entry(name, entry)?;
            let version = entry
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let component = format!("{name}@{version}");
            if done.contains(&component) {
                continue;
            }
            let code = self.supervisor.run_bootstrap(&spec).await.map_err(|e| {
                DeployError::BootstrapRun {
                    component: component.clone(),
                    message: e.to_string(),
                }
            })?;
            match code {
                0 => {}
                100 | 101 => {
                    tracing::warn!(component = %component, code, "bootstrap step requested a {}", if code == 100 { "core restart" } else { "device reboot" });
                    restart = Some(restart.unwrap_or(false) || code == 101);
                }
                code => return Err(DeployError::Bootstrap { component, code }),
            }
            let c = component.clone();
            self.update(id, move |p| p.bootstrapped.push(c))?;
        }
        Ok(restart)
    }

    /// Keeps each deployed component's `version` and `previousVersion`; removes the rest.
    fn collect_garbage(&self) -> Result<(), DeployError> {
        let mut keep: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, entry) in self.managed_services() {
            let versions = keep.entry(name).or_default();
            for key in ["version", "previousVersion"] {
                if let Some(v) = entry.get(key).and_then(Value::as_str) {
                    versions.insert(v.to_string());
                }
            }
        }
        let removed = self.store.collect_garbage(&keep)?;
        if !removed.is_empty() {
            tracing::info!(removed = ?removed, "component store garbage collected");
        }
        Ok(())
    }

    /// Keeps the newest `history_limit` finished records.
    fn trim_history(&self) {
        let mut state = lock(&self.state);
        let mut done: Vec<(u64, String)> = state
            .records
            .values()
            .filter(|p| p.record.status.is_terminal())
            .map(|p| (p.seq, p.record.id.clone()))
            .collect();
        if done.len() <= self.cfg.history_limit {
            return;
        }
        done.sort();
        let excess = done.len() - self.cfg.history_limit;
        for (_, id) in done.into_iter().take(excess) {
            state.records.remove(&id);
            let dir = self.deployments_dir.join(&id);
            if let Err(e) = fsutil::remove_tree(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove old deployment record");
            }
        }
    }
}

fn path(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn roots_to_value(roots: &BTreeMap<String, BTreeMap<String, String>>) -> Value {
    let mut groups = Map::new();
    for (group, components) in roots {
        let mut map = Map::new();
        for (name, requirement) in components {
            map.insert(name.clone(), json!({ "version": requirement }));
        }
        groups.insert(group.clone(), Value::Object(map));
    }
    Value::Object(groups)
}

/// The supervisor's view of a committed `services.<name>` entry.
fn spec_from_entry(name: &str, entry: &Value) -> Result<ComponentSpec, DeployError> {
    let bad = |field: &str, message: String| {
        DeployError::Config(format!(
            "services.{name}.{field}: {message}; redeploy the component"
        ))
    };
    let version = entry
        .get("version")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("version", "missing".into()))?;
    Version::parse(version).map_err(|e| bad("version", e.to_string()))?;
    let lifecycle_value = entry
        .get("lifecycle")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    let lifecycle = Lifecycle::from_value(
        &lifecycle_value,
        "configuration",
        &format!("services.{name}.lifecycle"),
    )
    .map_err(|e| bad("lifecycle", e.to_string()))?;
    let mut dependencies = Vec::new();
    if let Some(Value::Array(list)) = entry.get("dependencies") {
        for item in list {
            let Some(text) = item.as_str() else { continue };
            let (dep, kind) = text.split_once(':').unwrap_or((text, "HARD"));
            let kind = if kind.eq_ignore_ascii_case("SOFT") {
                DependencyType::Soft
            } else {
                DependencyType::Hard
            };
            dependencies.push((dep.to_string(), kind));
        }
    }
    let setenv = match entry.get("setenv") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let posix_user = entry
        .get("runWith")
        .and_then(|r| r.get("posixUser"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let error_reset_time = lifecycle_value
        .get("errorResetTime")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(3600));
    Ok(ComponentSpec {
        name: name.to_string(),
        version: version.to_string(),
        lifecycle,
        setenv,
        dependencies,
        posix_user,
        error_reset_time,
    })
}

/// Candidates from the store (only versions whose recipe has a manifest for this platform)
/// plus the built-ins.
struct StoreCatalog<'a> {
    store: &'a Store,
    builtins: &'a BTreeMap<String, String>,
    platform: &'a Platform,
    selected: std::cell::RefCell<BTreeMap<(String, Version), SelectedRecipe>>,
}

impl StoreCatalog<'_> {
    fn select(&self, name: &str, version: &Version) -> Result<SelectedRecipe, DeployError> {
        let key = (name.to_string(), version.clone());
        if let Some(s) = self.selected.borrow().get(&key) {
            return Ok(s.clone());
        }
        let recipe: Recipe = self.store.load_recipe(name, version)?;
        let selected = recipe
            .select(self.platform)
            .map_err(|e| DeployError::Platform {
                component: format!("{name}@{version}"),
                message: format!("{e}; the recipe has no manifest for this device's platform"),
            })?;
        self.selected.borrow_mut().insert(key, selected.clone());
        Ok(selected)
    }
}

impl Catalog for StoreCatalog<'_> {
    fn candidates(&self, name: &str) -> Result<Vec<Version>, DeployError> {
        if let Some(v) = self.builtins.get(name) {
            let version = Version::parse(v).map_err(|e| {
                DeployError::Config(format!("built-in {name} has an invalid version {v:?}: {e}"))
            })?;
            return Ok(vec![version]);
        }
        let stored = self.store.versions(name)?;
        let mut usable = Vec::new();
        let mut last_error = None;
        for version in stored.iter() {
            match self.select(name, version) {
                Ok(_) => usable.push(version.clone()),
                Err(e) => last_error = Some(e),
            }
        }
        if usable.is_empty()
            && let Some(e) = last_error
        {
            return Err(e);
        }
        Ok(usable)
    }

    fn dependencies(
        &self,
        name: &str,
        version: &Version,
    ) -> Result<Vec<(String, lichen_recipe::VersionRequirement, DependencyType)>, DeployError> {
        if self.builtins.contains_key(name) {
            return Ok(Vec::new());
        }
        let selected = self.select(name, version)?;
        Ok(selected
            .dependencies
            .iter()
            .map(|(dep, d)| (dep.clone(), d.requirement.clone(), d.dependency_type))
            .collect())
    }
}

/// The keys of a service entry this engine owns (others, like runtime state, are ignored
/// when deciding whether an entry changed).
const OWNED_KEYS: [&str; 6] = [
    "componentType",
    "version",
    "dependencies",
    "lifecycle",
    "configuration",
    "runWith",
];

fn owned_view(entry: Option<&Value>) -> Value {
    let mut out = Map::new();
    if let Some(Value::Object(map)) = entry {
        for key in OWNED_KEYS {
            if let Some(v) = map.get(key) {
                out.insert(key.to_string(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn build_plan(input: PlanInput) -> Result<Plan, DeployError> {
    // 1. Staged recipes into the store.
    if input.staged_recipes.is_dir() {
        let files = fsutil::walk_files(&input.staged_recipes)
            .map_err(|e| DeployError::io("cannot read staged recipes", &input.staged_recipes, e))?;
        for rel in files {
            let file = input.staged_recipes.join(rel);
            let recipe = lichen_recipe::parse_file(&file).map_err(|e| DeployError::BadRecipe {
                file: file.clone(),
                message: e.to_string(),
            })?;
            input.store.save_recipe(&recipe)?;
        }
    }
    // 2. The group's new roots.
    let mut roots = input.roots.clone();
    {
        let entry = roots.entry(input.group.clone()).or_default();
        for name in &input.request.root_components_to_remove {
            entry.remove(name);
        }
        for (name, version) in &input.request.root_components_to_add {
            entry.insert(name.clone(), version.clone());
        }
        if entry.is_empty() {
            roots.remove(&input.group);
        }
    }
    // 3. Versions.
    let catalog = StoreCatalog {
        store: &input.store,
        builtins: &input.builtins,
        platform: &input.platform,
        selected: Default::default(),
    };
    let resolution = resolve::resolve(&roots, &catalog)?;
    // 4. Artifacts, dependencies first.
    let mut selected: BTreeMap<String, SelectedRecipe> = BTreeMap::new();
    for name in &resolution.order {
        if input.builtins.contains_key(name) {
            continue;
        }
        let version = &resolution.versions[name];
        let recipe = catalog.select(name, version)?;
        artifacts::prepare(
            &input.store,
            &input.fetchers,
            name,
            version,
            &recipe.artifacts,
            input.request.artifacts_directory_path.as_deref(),
        )?;
        selected.insert(name.clone(), recipe);
    }
    // 5. Configurations: RESET, then recipe defaults under, then MERGE.
    let mut configurations: BTreeMap<String, Value> = BTreeMap::new();
    for name in resolution.versions.keys() {
        let old = input
            .services
            .get(name)
            .and_then(|e| e.get("configuration"))
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        let defaults = selected
            .get(name)
            .map(|s| s.default_configuration.clone())
            .unwrap_or(Value::Object(Map::new()));
        let update = input.request.configuration_updates.get(name);
        let reset: &[String] = update.map(|u| u.reset.as_slice()).unwrap_or(&[]);
        let merge = update.and_then(|u| u.merge.as_ref());
        let configuration =
            lichen_config::apply_configuration_update(&old, &defaults, reset, merge);
        configurations.insert(name.clone(), configuration);
    }
    // 6. Service entries with interpolated lifecycles.
    let vars = |name: &str| ComponentVars {
        name: name.to_string(),
        version: resolution.versions[name].to_string(),
        configuration: configurations[name].clone(),
    };
    let mut plan = Plan {
        roots,
        entries: BTreeMap::new(),
        builtin_updates: BTreeMap::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        config_changed: Vec::new(),
        bootstrap: Vec::new(),
    };
    for name in &resolution.order {
        let version = &resolution.versions[name];
        let old_entry = input.services.get(name);
        let old_configuration = old_entry.and_then(|e| e.get("configuration"));
        let configuration = &configurations[name];
        if let Some(builtin_version) = input.builtins.get(name) {
            let version_changed = old_entry
                .and_then(|e| e.get("version"))
                .and_then(Value::as_str)
                != Some(builtin_version.as_str());
            if version_changed || old_configuration != Some(configuration) {
                plan.builtin_updates.insert(
                    name.clone(),
                    (builtin_version.clone(), configuration.clone()),
                );
                if old_configuration.is_some() && old_configuration != Some(configuration) {
                    plan.config_changed
                        .push((name.clone(), configuration.clone()));
                }
            }
            continue;
        }
        let recipe = &selected[name];
        let context = InterpolationContext {
            root: input.root.clone(),
            thing_name: input.thing_name.clone(),
            component: vars(name),
            dependencies: recipe
                .dependencies
                .keys()
                .filter(|d| resolution.versions.contains_key(*d))
                .map(|d| (d.clone(), vars(d)))
                .collect(),
        };
        let lifecycle = recipe.lifecycle.interpolate(&context).to_value();
        let dependencies: Vec<Value> = recipe
            .dependencies
            .iter()
            .map(|(dep, d)| Value::String(format!("{dep}:{}", d.dependency_type.as_str())))
            .collect();
        let mut entry = Map::new();
        entry.insert(
            "componentType".into(),
            Value::String(recipe.component_type.as_config_str().to_string()),
        );
        entry.insert("version".into(), Value::String(version.to_string()));
        let old_version = old_entry
            .and_then(|e| e.get("version"))
            .and_then(Value::as_str)
            .map(str::to_string);
        match &old_version {
            Some(old) if *old != version.to_string() => {
                entry.insert("previousVersion".into(), Value::String(old.clone()));
            }
            _ => {
                if let Some(prev) = old_entry.and_then(|e| e.get("previousVersion")) {
                    entry.insert("previousVersion".into(), prev.clone());
                }
            }
        }
        entry.insert("dependencies".into(), Value::Array(dependencies));
        entry.insert("lifecycle".into(), lifecycle.clone());
        entry.insert("configuration".into(), configuration.clone());
        // Local deployments touch runWith only for the components they name (spec §6.3).
        let run_with = match input.request.run_with.get(name) {
            Some(info) => info.posix_user.as_ref().map(|u| json!({ "posixUser": u })),
            None => old_entry.and_then(|e| e.get("runWith")).cloned(),
        };
        if let Some(run_with) = run_with {
            entry.insert("runWith".into(), run_with);
        }
        let entry = Value::Object(entry);
        let is_new = old_entry.is_none();
        if owned_view(old_entry) != owned_view(Some(&entry)) {
            plan.changed.push(name.clone());
            if !is_new && old_configuration != Some(configuration) {
                plan.config_changed
                    .push((name.clone(), configuration.clone()));
            }
            let old_bootstrap = old_entry
                .and_then(|e| e.get("lifecycle"))
                .and_then(|l| bootstrap_of(l).cloned());
            let new_bootstrap = bootstrap_of(&lifecycle).cloned();
            let version_changed = old_version.as_deref() != Some(version.to_string().as_str());
            if new_bootstrap.is_some()
                && (is_new || version_changed || old_bootstrap != new_bootstrap)
            {
                plan.bootstrap.push(name.clone());
            }
        }
        plan.entries.insert(name.clone(), entry);
    }
    for (name, entry) in &input.services {
        if name == MAIN || name == NUCLEUS {
            continue;
        }
        // A built-in is deployed while its entry has a version; removing it stops its service.
        let managed = entry.get("version").is_some()
            && (input.builtins.contains_key(name) || entry.get("componentType").is_some());
        if managed && !resolution.versions.contains_key(name) {
            plan.removed.push(name.clone());
        }
    }
    Ok(plan)
}

/// The Bootstrap step of a lifecycle map, whatever its key's case.
fn bootstrap_of(lifecycle: &Value) -> Option<&Value> {
    lifecycle
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("bootstrap"))
        .map(|(_, v)| v)
}
