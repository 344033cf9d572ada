//! Runs component lifecycle steps as processes and drives the Greengrass component state machine
//! (spec greengrass-core §1.3, §1.6, §1.10).
//!
//! [`Supervisor::reconcile`] makes the supervised set equal to the deployed one; each component then has
//! one tokio task that owns its state machine (NEW → INSTALLED → STARTING → RUNNING → STOPPING →
//! FINISHED, ERRORED with retries, BROKEN after the 3rd error from one state) and its processes. Steps run
//! as `<posixShell> -c <script>` in `<root>/work/<component>/`, each in its own process group, as the
//! component's POSIX user; their output lines go to `<logs>/<component>.log` (0600, the core's), a
//! line longer than 64 KiB in parts.
//!
//! What a step gets: the environment in [`SupervisorConfig::base_env`], the run-as user's HOME, USER
//! and LOGNAME, the per-component variables of the [`EnvProvider`] and the recipe's Setenv layers —
//! never the core's own environment; umask 0022 whatever the core's; a work folder that is its
//! user's alone (0700); artifact files owned by its user (folders stay the core's).
//!
//! Where the core may create cgroups (v2, or the v1 hierarchies where that is what is mounted),
//! each component has one (`cgroup.rs`): a step joins it between fork and exec, so its whole
//! process tree carries the component's [`ResourceLimits`]; limits change in place at the next
//! reconcile; an OOM kill becomes the cause of the ERRORED state. Without cgroups components run
//! unconfined and [`Supervisor::limits_not_enforced`] says why.
//!
//! Architecture invariant: every process a step starts lives in a process group the supervisor created
//! and kills (SIGTERM, then SIGKILL after the grace period) when the component stops, errors or breaks;
//! nothing survives [`Supervisor::shutdown`] short of a process that left its group on purpose.
//! Architecture invariant: callers never wait on a script: requests are messages to the component's task,
//! and only the calls documented to wait (stop, reconcile's removals, shutdown, wait_settled) do.
//! Architecture invariant: a step process is in its component's cgroup before it executes any of
//! its own code; what a stopped component left in its cgroup is killed.
//! Architecture invariant: this crate knows recipes only as [`lichen_recipe::Lifecycle`]; it reads no
//! configuration and no recipe files.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lichen_supervisor::SupervisorError> {
//! use std::collections::{BTreeMap, BTreeSet};
//! use std::sync::Arc;
//! use lichen_supervisor::*;
//! struct NoTokens;
//! impl EnvProvider for NoTokens {
//!     fn component_env(&self, _: &str) -> BTreeMap<String, String> { BTreeMap::new() }
//! }
//! let sup = Supervisor::new(SupervisorConfig::new("/var/lib/lichen"), Arc::new(NoTokens));
//! let mut lifecycle = lichen_recipe::Lifecycle::default();
//! lifecycle.run = Some(lichen_recipe::Step { script: "echo Hello world".into(), ..Default::default() });
//! sup.reconcile(vec![ComponentSpec::new("hello", "1.0.0", lifecycle)], &BTreeSet::new()).await?;
//! sup.wait_settled(&["hello".to_string()], std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```

mod actor;
mod cgroup;
mod error;
mod ledger;
mod logs;
mod process;
mod shared;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};

use actor::{Change, Msg, Shared};
pub use cgroup::{ResourceLimits, ResourceUsage};
pub use error::SupervisorError;
pub use process::{RunAs, resolve_user, restore_child_exit_signal, unblock_inherited_signals};
pub use state::State;

/// One component as the deployment engine hands it to the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSpec {
    pub name: String,
    pub version: String,
    /// The selected lifecycle, already interpolated.
    pub lifecycle: lichen_recipe::Lifecycle,
    /// `services.<c>.setenv`.
    pub setenv: BTreeMap<String, String>,
    pub dependencies: Vec<(String, lichen_recipe::DependencyType)>,
    /// `runWith.posixUser`: `user[:group]`, numeric ids allowed.
    pub posix_user: Option<String>,
    /// `lifecycle.errorResetTime`, default 3600 s.
    pub error_reset_time: Duration,
    /// The effective `systemResourceLimits` (the component's `runWith`, else `runWithDefault`).
    /// A change applies to the running processes at the next reconcile, without a restart.
    pub resource_limits: ResourceLimits,
}

impl ComponentSpec {
    /// A spec with no setenv, no dependencies, no user and the default error reset time.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        lifecycle: lichen_recipe::Lifecycle,
    ) -> ComponentSpec {
        ComponentSpec {
            name: name.into(),
            version: version.into(),
            lifecycle,
            setenv: BTreeMap::new(),
            dependencies: Vec::new(),
            posix_user: None,
            error_reset_time: Duration::from_secs(3600),
            resource_limits: ResourceLimits::default(),
        }
    }
}

/// Where and how the supervisor runs components.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Work directories are `<root>/work/<name>/`.
    pub root: PathBuf,
    /// Component logs are `<logs_dir>/<name>.log`.
    pub logs_dir: PathBuf,
    /// The root `setenv` namespace (AWS_REGION, GGC_VERSION, socket paths, …) and whatever else of
    /// the core's own environment components may see (PATH, locale): a step's environment starts
    /// from this, never from the core's whole environment.
    pub base_env: BTreeMap<String, String>,
    /// `runWithDefault.posixUser`.
    pub default_posix_user: Option<String>,
    /// `runWithDefault.posixShell`.
    pub posix_shell: String,
    pub log_max_bytes: u64,
    pub log_keep_files: usize,
}

impl SupervisorConfig {
    /// Defaults: logs in `<root>/logs`, shell `sh`, logs rotated at 10 MiB keeping 5 files.
    pub fn new(root: impl Into<PathBuf>) -> SupervisorConfig {
        let root = root.into();
        SupervisorConfig {
            logs_dir: root.join("logs"),
            root,
            base_env: BTreeMap::new(),
            default_posix_user: None,
            posix_shell: "sh".to_string(),
            log_max_bytes: 10 * 1024 * 1024,
            log_keep_files: 5,
        }
    }
}

/// Per-component environment that only the core knows (SVCUID, AWS_CONTAINER_AUTHORIZATION_TOKEN, …).
pub trait EnvProvider: Send + Sync + 'static {
    fn component_env(&self, component: &str) -> BTreeMap<String, String>;
}

/// A component's current state as IPC and fleet status report it.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentStatus {
    pub name: String,
    pub version: String,
    pub state: State,
    /// `NONE`, `INSTALL_ERROR`, `RUN_TIMEOUT`, … (spec §1.10).
    pub status_code: String,
    pub reason: String,
}

/// One state transition, broadcast to subscribers.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub name: String,
    pub old: State,
    pub new: State,
    pub status_code: String,
}

/// A cheap, cloneable handle on the supervised components.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
    /// Serializes reconcile and shutdown so that their ordering guarantees hold.
    ops: Arc<tokio::sync::Mutex<()>>,
}

impl Supervisor {
    /// Call inside a tokio runtime: component tasks are spawned on it.
    pub fn new(cfg: SupervisorConfig, env: Arc<dyn EnvProvider>) -> Supervisor {
        process::restore_child_exit_signal();
        Supervisor {
            shared: Arc::new(Shared::new(cfg, env)),
            ops: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Stops the processes a previous core on this root left running when it died without a
    /// chance to stop them (SIGKILL, crash): call once at start, before components start.
    /// Returns how many process groups were found.
    pub async fn reap_orphans(&self) -> usize {
        ledger::reap(
            &ledger::ledger_dir(&self.shared.cfg.root),
            process::KILL_GRACE,
        )
        .await
    }

    /// Make the running set equal to `specs`: components absent from `specs` are stopped (reverse
    /// dependency order, waiting for each to stop) and forgotten; a component whose install step, version
    /// or posix_user changed, or whose name is in `reinstall`, goes back to NEW and reinstalls; one whose
    /// other lifecycle steps or setenv changed restarts; new ones install and start in dependency order;
    /// unchanged ones are left alone. Returns once stops are complete and starts have been requested.
    pub async fn reconcile(
        &self,
        specs: Vec<ComponentSpec>,
        reinstall: &BTreeSet<String>,
    ) -> Result<(), SupervisorError> {
        let _serial = self.ops.lock().await;
        let mut wanted: BTreeMap<String, ComponentSpec> = BTreeMap::new();
        for spec in specs {
            if wanted.contains_key(&spec.name) {
                return Err(SupervisorError::Duplicate {
                    component: spec.name,
                });
            }
            wanted.insert(spec.name.clone(), spec);
        }
        let start_order = dependency_order(
            wanted
                .values()
                .map(|s| (s.name.clone(), dep_names(s)))
                .collect(),
        )?;

        let current: BTreeMap<String, Vec<String>> = self
            .shared
            .lock_table()
            .iter()
            .map(|(name, entry)| (name.clone(), dep_names(&entry.spec)))
            .collect();
        let removed: BTreeMap<String, Vec<String>> = current
            .into_iter()
            .filter(|(name, _)| !wanted.contains_key(name))
            .collect();
        // Dependents stop before what they depend on; a cycle among leftovers is stopped in name order.
        let removal_order =
            dependency_order(removed.clone()).unwrap_or_else(|_| removed.keys().cloned().collect());
        for name in removal_order.into_iter().rev() {
            let (done, wait) = oneshot::channel();
            if self.send(&name, Msg::Remove { done }).is_ok() {
                let _ = wait.await;
            }
        }

        for name in start_order {
            let spec = wanted
                .remove(&name)
                .expect("ordered names come from `wanted`");
            let previous = self
                .shared
                .lock_table()
                .get(&name)
                .map(|entry| entry.spec.clone());
            let Some(previous) = previous else {
                actor::spawn_component(&self.shared, spec);
                continue;
            };
            let change = classify_change(&previous, &spec, reinstall.contains(&name));
            if let Some(entry) = self.shared.lock_table().get_mut(&name) {
                entry.spec = spec.clone();
            }
            let (ack, acked) = oneshot::channel();
            self.send(
                &name,
                Msg::Update {
                    spec: Box::new(spec),
                    change,
                    ack,
                },
            )?;
            let _ = acked.await;
        }
        Ok(())
    }

    /// Waits until every named component is RUNNING or FINISHED (Ok) or one is BROKEN (Err names it),
    /// at most `timeout`.
    pub async fn wait_settled(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<(), SupervisorError> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut settled = true;
            for name in names {
                let status = self
                    .status(name)
                    .ok_or_else(|| SupervisorError::NotFound(name.clone()))?;
                match status.state {
                    State::Broken => return Err(SupervisorError::Broken(name.clone())),
                    State::Running | State::Finished => {}
                    _ => settled = false,
                }
            }
            if settled {
                return Ok(());
            }
            tokio::select! {
                received = changes.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = received {
                        return Err(SupervisorError::Gone(names.join(",")));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(SupervisorError::Timeout {
                        what: format!("components {names:?} to reach RUNNING or FINISHED"),
                        after: timeout,
                    });
                }
            }
        }
    }

    pub fn status(&self, name: &str) -> Option<ComponentStatus> {
        self.shared
            .lock_table()
            .get(name)
            .map(|entry| entry.status.clone())
    }

    /// Every supervised component, by name.
    pub fn list(&self) -> Vec<ComponentStatus> {
        self.shared
            .lock_table()
            .values()
            .map(|entry| entry.status.clone())
            .collect()
    }

    /// Memory and CPU use of the component's cgroup; `None` when it has none (cgroups unavailable,
    /// or the component never ran a step).
    pub fn resource_usage(&self, name: &str) -> Option<ResourceUsage> {
        self.shared.cgroup_if_any(name).map(|cg| cg.usage())
    }

    /// Why the component's `systemResourceLimits` are not (all) enforced; `None` when they are or
    /// when it has none.
    pub fn limits_not_enforced(&self, name: &str) -> Option<String> {
        self.shared.limit_problem(name)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.shared.events.subscribe()
    }

    /// Restarts a component (STOPPING → INSTALLED → STARTING…); a BROKEN one stays BROKEN (Err).
    /// Returns once the restart has begun.
    pub async fn restart(&self, name: &str) -> Result<(), SupervisorError> {
        let (ack, acked) = oneshot::channel();
        self.send(name, Msg::Restart { ack })?;
        acked
            .await
            .map_err(|_| SupervisorError::Gone(name.to_string()))?
    }

    /// Stops a component (→ FINISHED) and keeps it stopped until restarted; returns once it stopped.
    pub async fn stop(&self, name: &str) -> Result<(), SupervisorError> {
        let (done, stopped) = oneshot::channel();
        self.send(name, Msg::Stop { done })?;
        let _ = stopped.await;
        Ok(())
    }

    /// Freezes every process of the component (SIGSTOP to its process groups).
    pub async fn pause(&self, name: &str) -> Result<(), SupervisorError> {
        self.send(name, Msg::Signal(libc::SIGSTOP))
    }

    pub async fn resume(&self, name: &str) -> Result<(), SupervisorError> {
        self.send(name, Msg::Signal(libc::SIGCONT))
    }

    /// IPC UpdateState. Honoured: NEW→ERRORED, STARTING→{RUNNING, ERRORED, FINISHED},
    /// RUNNING→{ERRORED, FINISHED}, STOPPING→{ERRORED, FINISHED}. Any other report is ignored with a
    /// warning and still Ok, as in Greengrass: SDK clients routinely report RUNNING from a `run` step
    /// that is already RUNNING and must not get an error back. Err only when `name` is unknown.
    pub fn report_state(&self, name: &str, state: State) -> Result<(), SupervisorError> {
        self.send(name, Msg::Report(state))
    }

    /// Stops everything in reverse dependency order (shutdown steps, SIGTERM, SIGKILL after the grace
    /// period); components that nothing running depends on stop together.
    pub async fn shutdown(&self) {
        let _serial = self.ops.lock().await;
        let graph: BTreeMap<String, Vec<String>> = self
            .shared
            .lock_table()
            .iter()
            .map(|(name, entry)| (name.clone(), dep_names(&entry.spec)))
            .collect();
        let mut remaining: BTreeSet<String> = graph.keys().cloned().collect();
        while !remaining.is_empty() {
            // Components no remaining component depends on; on a cycle, everything left at once.
            let mut layer: Vec<String> = remaining
                .iter()
                .filter(|name| {
                    !remaining
                        .iter()
                        .any(|other| graph[other].iter().any(|dep| dep == *name))
                })
                .cloned()
                .collect();
            if layer.is_empty() {
                layer = remaining.iter().cloned().collect();
            }
            let mut waits = Vec::new();
            for name in &layer {
                remaining.remove(name);
                let (done, stopped) = oneshot::channel();
                if self.send(name, Msg::Stop { done }).is_ok() {
                    waits.push(stopped);
                }
            }
            for wait in waits {
                let _ = wait.await;
            }
        }
        self.shared.release_cgroups().await;
    }

    /// Runs the bootstrap step now (deployment time). Ok carries 0 (nothing to do), 100 (restart the
    /// core) or 101 (reboot the device); a missing or skipped step is Ok(0); any other exit code is
    /// [`SupervisorError::StepFailed`].
    pub async fn run_bootstrap(&self, spec: &ComponentSpec) -> Result<i32, SupervisorError> {
        let Some(step) = &spec.lifecycle.bootstrap else {
            return Ok(0);
        };
        let spawn_error = |reason: String| SupervisorError::Spawn {
            component: spec.name.clone(),
            step: "Bootstrap".into(),
            reason,
        };
        let cmd = match self.shared.prepare(spec, "Bootstrap", step) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return Ok(0),
            Err(err) => return Err(spawn_error(err.reason)),
        };
        let timeout = step.timeout.unwrap_or(actor::BOOTSTRAP_TIMEOUT);
        match process::run_one_shot(&cmd, Some(timeout)).await {
            process::StepOutcome::Exited(code @ (0 | 100 | 101)) => Ok(code),
            process::StepOutcome::Exited(code) => Err(SupervisorError::StepFailed {
                component: spec.name.clone(),
                step: "Bootstrap".into(),
                code,
            }),
            process::StepOutcome::TimedOut => Err(SupervisorError::Timeout {
                what: format!("the Bootstrap step of {:?}", spec.name),
                after: timeout,
            }),
            process::StepOutcome::SpawnFailed(reason) => Err(spawn_error(reason)),
        }
    }

    fn send(&self, name: &str, msg: Msg) -> Result<(), SupervisorError> {
        let table = self.shared.lock_table();
        let entry = table
            .get(name)
            .ok_or_else(|| SupervisorError::NotFound(name.to_string()))?;
        entry
            .tx
            .send(msg)
            .map_err(|_| SupervisorError::Gone(name.to_string()))
    }
}

fn dep_names(spec: &ComponentSpec) -> Vec<String> {
    spec.dependencies
        .iter()
        .map(|(name, _)| name.clone())
        .collect()
}

/// What a redeployment of `previous` as `next` requires (spec §1.6, "Changes pushed by a deployment").
fn classify_change(previous: &ComponentSpec, next: &ComponentSpec, forced: bool) -> Change {
    if forced
        || previous.version != next.version
        || previous.posix_user != next.posix_user
        || previous.lifecycle.install != next.lifecycle.install
    {
        Change::Reinstall
    } else if previous.lifecycle != next.lifecycle || previous.setenv != next.setenv {
        Change::Restart
    } else {
        Change::Quiet
    }
}

/// Names ordered so that each comes after the dependencies it has inside `graph` (HARD and SOFT alike);
/// dependencies outside `graph` are ignored. A cycle is an error naming its members.
fn dependency_order(graph: BTreeMap<String, Vec<String>>) -> Result<Vec<String>, SupervisorError> {
    let mut order = Vec::with_capacity(graph.len());
    let mut placed: BTreeSet<String> = BTreeSet::new();
    while order.len() < graph.len() {
        let ready: Vec<String> = graph
            .iter()
            .filter(|(name, deps)| {
                !placed.contains(*name)
                    && deps
                        .iter()
                        .all(|d| placed.contains(d) || !graph.contains_key(d) || d == *name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        if ready.is_empty() {
            let stuck = graph
                .keys()
                .filter(|name| !placed.contains(*name))
                .cloned()
                .collect();
            return Err(SupervisorError::DependencyCycle(stuck));
        }
        for name in ready {
            placed.insert(name.clone());
            order.push(name);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn dependency_order_puts_dependencies_first_and_reports_cycles() {
        let order = dependency_order(graph(&[
            ("a", &["b", "aws.greengrass.Nucleus"]),
            ("b", &["c"]),
            ("c", &[]),
        ]))
        .unwrap();
        assert_eq!(order, ["c", "b", "a"]);
        let err = dependency_order(graph(&[("a", &["b"]), ("b", &["a"]), ("c", &[])])).unwrap_err();
        match err {
            SupervisorError::DependencyCycle(names) => assert_eq!(names, ["a", "b"]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn change_classification_follows_the_deployment_rules() {
        let lifecycle = lichen_recipe::Lifecycle {
            install: Some(lichen_recipe::Step {
                script: "true".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let base = ComponentSpec::new("x", "1.0.0", lifecycle);
        assert_eq!(classify_change(&base, &base, false), Change::Quiet);
        assert_eq!(classify_change(&base, &base, true), Change::Reinstall);
        let mut v = base.clone();
        v.version = "1.0.1".into();
        assert_eq!(classify_change(&base, &v, false), Change::Reinstall);
        let mut u = base.clone();
        u.posix_user = Some("nobody".into());
        assert_eq!(classify_change(&base, &u, false), Change::Reinstall);
        let mut r = base.clone();
        r.lifecycle.run = Some(lichen_recipe::Step {
            script: "sleep 1".into(),
            ..Default::default()
        });
        assert_eq!(classify_change(&base, &r, false), Change::Restart);
        let mut e = base.clone();
        e.setenv.insert("K".into(), "V".into());
        assert_eq!(classify_change(&base, &e, false), Change::Restart);
        let mut d = base.clone();
        d.dependencies
            .push(("y".into(), lichen_recipe::DependencyType::Soft));
        assert_eq!(classify_change(&base, &d, false), Change::Quiet);
    }
}
