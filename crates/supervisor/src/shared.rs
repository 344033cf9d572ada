//! What the [`crate::Supervisor`] handle and every component task share: the component table,
//! logs, and each component's cgroup.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lichen_recipe::Step;
use tokio::sync::{broadcast, mpsc};

use crate::actor::Msg;
use crate::cgroup::{ComponentCgroup, Hierarchy, ResourceLimits};
use crate::logs::ComponentLog;
use crate::process::{self, StepCommand};
use crate::{ComponentSpec, ComponentStatus, EnvProvider, StateChange, SupervisorConfig};

/// State shared by the [`crate::Supervisor`] handle and every component task.
pub(crate) struct Shared {
    pub cfg: SupervisorConfig,
    pub env: Arc<dyn EnvProvider>,
    pub table: Mutex<BTreeMap<String, Entry>>,
    pub events: broadcast::Sender<StateChange>,
    pub(crate) logs: Mutex<HashMap<String, Arc<ComponentLog>>>,
    pub(crate) warned_root: AtomicBool,
    /// Detected on first use: this core's cgroup folder, or why there is none.
    pub(crate) hierarchy: std::sync::OnceLock<Result<Hierarchy, String>>,
    pub(crate) cgroups: Mutex<HashMap<String, CgroupEntry>>,
}

/// A component's cgroup and what was last asked of it.
pub(crate) struct CgroupEntry {
    pub cgroup: Option<Arc<ComponentCgroup>>,
    pub applied: ResourceLimits,
    /// Why the limits are not (all) enforced.
    pub problem: Option<String>,
}

pub(crate) struct Entry {
    pub status: ComponentStatus,
    /// The spec last handed to the component, for reconcile's diff.
    pub spec: ComponentSpec,
    pub tx: mpsc::UnboundedSender<Msg>,
}

/// Why a step could not be prepared: the status code suffix (`CONFIG_NOT_VALID`, …) and the reason.
pub(crate) struct PrepareError {
    pub suffix: &'static str,
    pub reason: String,
}

impl Shared {
    pub(crate) fn new(cfg: SupervisorConfig, env: Arc<dyn EnvProvider>) -> Shared {
        Shared {
            cfg,
            env,
            table: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(1024).0,
            logs: Mutex::new(HashMap::new()),
            warned_root: AtomicBool::new(false),
            hierarchy: std::sync::OnceLock::new(),
            cgroups: Mutex::new(HashMap::new()),
        }
    }

    fn lock_cgroups(&self) -> std::sync::MutexGuard<'_, HashMap<String, CgroupEntry>> {
        self.cgroups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cgroup_if_any(&self, name: &str) -> Option<Arc<ComponentCgroup>> {
        self.lock_cgroups().get(name).and_then(|e| e.cgroup.clone())
    }

    pub(crate) fn limit_problem(&self, name: &str) -> Option<String> {
        self.lock_cgroups()
            .get(name)
            .and_then(|e| e.problem.clone())
    }

    /// The component's cgroup with the spec's limits applied (created on first use; limits
    /// rewritten when they changed). `None` where cgroups cannot be used: the component runs
    /// unconfined, and when it asked for limits that is logged and reported.
    pub(crate) fn cgroup_for(&self, spec: &ComponentSpec) -> Option<Arc<ComponentCgroup>> {
        let limits = spec.resource_limits;
        let mut table = self.lock_cgroups();
        if let Some(entry) = table.get_mut(&spec.name)
            && entry.cgroup.is_some()
        {
            let cgroup = entry.cgroup.clone();
            if entry.applied != limits {
                entry.applied = limits;
                entry.problem =
                    self.report_problems(spec, cgroup.as_ref().map(|c| c.apply(&limits)));
            }
            return cgroup;
        }
        let hierarchy = self.hierarchy.get_or_init(|| {
            let found = Hierarchy::detect(&self.cfg.root);
            if let Err(reason) = &found {
                tracing::debug!(%reason, "components run without cgroups");
            }
            found
        });
        let created = match hierarchy {
            Ok(h) => h.component(&spec.name),
            Err(reason) => Err(reason.clone()),
        };
        let (cgroup, problem) = match created {
            Ok(cg) => {
                let problems = cg.apply(&limits);
                (
                    Some(Arc::new(cg)),
                    self.report_problems(spec, Some(problems)),
                )
            }
            Err(reason) => (None, self.report_problems(spec, Some(vec![reason]))),
        };
        table.insert(
            spec.name.clone(),
            CgroupEntry {
                cgroup: cgroup.clone(),
                applied: limits,
                problem,
            },
        );
        cgroup
    }

    /// Logs problems with a component's limits; `Some(text)` when limits were asked for and are
    /// not all enforced.
    fn report_problems(
        &self,
        spec: &ComponentSpec,
        problems: Option<Vec<String>>,
    ) -> Option<String> {
        let problems = problems.unwrap_or_default();
        if spec.resource_limits.is_empty() || problems.is_empty() {
            return None;
        }
        let text = format!(
            "systemResourceLimits of {} are not enforced: {}; run the core as root or give it a \
             delegated cgroup (README: resource limits)",
            spec.name,
            problems.join("; ")
        );
        tracing::warn!("{text}");
        self.log_for(&spec.name).write("WARN", "limits", &text);
        Some(text)
    }

    /// Kills what is left in the component's cgroup and removes it.
    pub(crate) async fn release_cgroup(&self, name: &str) {
        let entry = self.lock_cgroups().remove(name);
        if let Some(cgroup) = entry.and_then(|e| e.cgroup) {
            remove_cgroup(&cgroup).await;
        }
    }

    /// At shutdown: every component's cgroup, then this core's folder.
    pub(crate) async fn release_cgroups(&self) {
        let entries: Vec<_> = self.lock_cgroups().drain().collect();
        for (_, entry) in entries {
            if let Some(cgroup) = entry.cgroup {
                remove_cgroup(&cgroup).await;
            }
        }
        if let Some(Ok(hierarchy)) = self.hierarchy.get() {
            hierarchy.remove();
        }
    }

    pub(crate) fn lock_table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn log_for(&self, component: &str) -> Arc<ComponentLog> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.entry(component.to_string())
            .or_insert_with(|| {
                Arc::new(ComponentLog::new(
                    &self.cfg.logs_dir,
                    component,
                    self.cfg.log_max_bytes,
                    self.cfg.log_keep_files,
                ))
            })
            .clone()
    }

    pub(crate) fn work_dir(&self, component: &str) -> PathBuf {
        self.cfg.root.join("work").join(component)
    }

    /// Builds the command for one step, or `None` when its Skipif says to skip it.
    pub(crate) fn prepare(
        &self,
        spec: &ComponentSpec,
        step_name: &'static str,
        step: &Step,
    ) -> Result<Option<StepCommand>, PrepareError> {
        let run_as = if !process::is_root() || step.requires_privilege {
            None
        } else {
            match spec
                .posix_user
                .as_deref()
                .or(self.cfg.default_posix_user.as_deref())
            {
                Some(user) => Some(process::resolve_user(user).map_err(|reason| PrepareError {
                    suffix: "CONFIG_NOT_VALID",
                    reason: format!("services.{}.runWith.posixUser: {reason}", spec.name),
                })?),
                None => {
                    // Documented choice: a fresh device works out of the box, so root is used with a warning.
                    if !self.warned_root.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "no runWith.posixUser and no runWithDefault.posixUser configured: \
                             component steps run as root; set runWithDefault.posixUser to drop privileges"
                        );
                    }
                    None
                }
            }
        };
        // Only what the core chose to hand on (base_env), never its whole environment: its
        // secrets and settings are not the component's.
        let mut env = self.cfg.base_env.clone();
        let own_user;
        let identity = match &run_as {
            Some(run_as) => Some(run_as),
            None => {
                own_user =
                    process::resolve_user(&rustix::process::geteuid().as_raw().to_string()).ok();
                own_user.as_ref()
            }
        };
        if let Some(identity) = identity {
            // Like `sudo -H`: the user's own home, not the core's.
            if let Some(home) = &identity.home {
                env.insert("HOME".into(), home.clone());
            }
            if let Some(name) = &identity.name {
                env.insert("USER".into(), name.clone());
                env.insert("LOGNAME".into(), name.clone());
            }
        }
        env.entry("PATH".into())
            .or_insert_with(|| process::DEFAULT_PATH.into());
        env.extend(self.env.component_env(&spec.name));
        env.extend(spec.setenv.clone());
        env.extend(spec.lifecycle.setenv.clone());
        env.extend(step.setenv.clone());

        // The name becomes a folder under work/: never `..` or a path, whoever built the spec.
        lichen_recipe::validate_component_name(&spec.name).map_err(|reason| PrepareError {
            suffix: "CONFIG_NOT_VALID",
            reason,
        })?;
        let cwd = self.work_dir(&spec.name);
        process::prepare_work_dir(&cwd, run_as.as_ref()).map_err(|err| PrepareError {
            suffix: "IO_ERROR",
            reason: format!("cannot prepare work directory {}: {err}", cwd.display()),
        })?;
        if let Some(run_as) = &run_as {
            let packages = self.cfg.root.join("packages");
            for tree in ["artifacts", "artifacts-unarchived"] {
                let dir = packages.join(tree).join(&spec.name).join(&spec.version);
                process::hand_artifacts(&dir, run_as).map_err(|err| PrepareError {
                    suffix: "IO_ERROR",
                    reason: format!(
                        "cannot hand the artifacts in {} to uid {}: {err}",
                        dir.display(),
                        run_as.uid
                    ),
                })?;
            }
        }
        if let Some(skip_if) = &step.skip_if
            && skip_if.evaluate(env.get("PATH").map(String::as_str), &cwd)
        {
            return Ok(None);
        }
        Ok(Some(StepCommand {
            component: spec.name.clone(),
            step: step_name,
            shell: self.cfg.posix_shell.clone(),
            script: step.script.clone(),
            cwd,
            env,
            run_as,
            log: self.log_for(&spec.name),
            cgroup_procs: self
                .cgroup_for(spec)
                .map(|cg| cg.procs_files())
                .unwrap_or_default(),
        }))
    }
}

impl Drop for Shared {
    /// A supervisor dropped without [`crate::Supervisor::shutdown`] leaves no cgroup behind when
    /// its processes die promptly.
    fn drop(&mut self) {
        let entries: Vec<_> = self.lock_cgroups().drain().collect();
        for (_, entry) in entries {
            if let Some(cgroup) = entry.cgroup {
                for _ in 0..10 {
                    cgroup.kill_all();
                    if cgroup.usage().pids == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                cgroup.remove();
            }
        }
        if let Some(Ok(hierarchy)) = self.hierarchy.get() {
            hierarchy.remove();
        }
    }
}

/// A cgroup can be removed only once its last process has been reaped by the kernel.
pub(crate) async fn remove_cgroup(cgroup: &ComponentCgroup) {
    for _ in 0..50 {
        cgroup.kill_all();
        if cgroup.usage().pids == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cgroup.remove();
}
