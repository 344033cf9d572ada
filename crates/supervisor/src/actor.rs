//! One task per component: it owns the component's state machine and its processes, and reacts to
//! messages (requests, step completions) and to state changes of its HARD dependencies.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lichen_recipe::{DependencyType, Step};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::cgroup::{ComponentCgroup, Hierarchy, ResourceLimits};
use crate::logs::ComponentLog;
use crate::process::{
    self, KILL_GRACE, StepCommand, StepOutcome, run_one_shot, spawn_step, terminate_groups,
    wait_step,
};
use crate::{
    ComponentSpec, ComponentStatus, EnvProvider, State, StateChange, SupervisorConfig,
    SupervisorError,
};

pub(crate) const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
pub(crate) const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const UNINSTALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The 3rd counted error from one state turns the component BROKEN (spec §1.10).
const ERRORS_UNTIL_BROKEN: u32 = 3;
const NONE: &str = "NONE";

/// State shared by the [`crate::Supervisor`] handle and every component task.
pub(crate) struct Shared {
    pub cfg: SupervisorConfig,
    pub env: Arc<dyn EnvProvider>,
    pub table: Mutex<BTreeMap<String, Entry>>,
    pub events: broadcast::Sender<StateChange>,
    logs: Mutex<HashMap<String, Arc<ComponentLog>>>,
    warned_root: AtomicBool,
    /// Detected on first use: this core's cgroup folder, or why there is none.
    hierarchy: std::sync::OnceLock<Result<Hierarchy, String>>,
    cgroups: Mutex<HashMap<String, CgroupEntry>>,
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
async fn remove_cgroup(cgroup: &ComponentCgroup) {
    for _ in 0..50 {
        cgroup.kill_all();
        if cgroup.usage().pids == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cgroup.remove();
}

/// What a reconcile changes about a component that stays deployed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Change {
    Reinstall,
    Restart,
    /// Only bookkeeping fields changed (dependencies, errorResetTime): nothing restarts.
    Quiet,
}

pub(crate) enum Msg {
    Update {
        spec: Box<ComponentSpec>,
        change: Change,
        ack: oneshot::Sender<()>,
    },
    Restart {
        ack: oneshot::Sender<Result<(), SupervisorError>>,
    },
    Stop {
        done: oneshot::Sender<()>,
    },
    Remove {
        done: oneshot::Sender<()>,
    },
    Signal(libc::c_int),
    Report(State),
    /// Re-run `advance` on a later poll.
    Continue,
    StepDone {
        generation: u64,
        outcome: StepOutcome,
    },
    StopDone {
        generation: u64,
        shutdown: Option<StepOutcome>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Install,
    Startup,
    Run,
    Stopping,
    Recover,
    Uninstall,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    phase: Phase,
    generation: u64,
    pgid: Option<i32>,
}

/// Where STOPPING leads once the processes are gone.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AfterStop {
    Installed,
    New,
    Finished,
    Remove,
}

enum Launch {
    Started,
    Skipped,
    Failed(&'static str, String),
}

fn log_outcome(log: &ComponentLog, step_name: &str, outcome: &StepOutcome) {
    let context = format!("lifecycle={step_name}");
    match outcome {
        StepOutcome::Exited(0) => log.write("INFO", &context, "exited with code 0"),
        StepOutcome::Exited(code) => {
            log.write("WARN", &context, &format!("exited with code {code}"))
        }
        StepOutcome::TimedOut => {
            log.write("WARN", &context, "timed out; its process group was killed")
        }
        StepOutcome::SpawnFailed(reason) => log.write("WARN", &context, reason),
    }
}

struct Actor {
    shared: Arc<Shared>,
    name: String,
    spec: ComponentSpec,
    log: Arc<ComponentLog>,
    tx: mpsc::UnboundedSender<Msg>,
    state: State,
    status_code: String,
    reason: String,
    want_running: bool,
    next_generation: u64,
    active: Option<Active>,
    /// Process groups of the current instance (startup leftovers, the run process).
    groups: Vec<i32>,
    after_stop: AfterStop,
    /// The shutdown step of the instance that was started, so the matching version runs.
    started_shutdown: Option<Step>,
    errors: HashMap<State, (u32, Instant)>,
    errored_from: State,
    broken_pending: bool,
    stop_error_reported: bool,
    stop_waiters: Vec<oneshot::Sender<()>>,
    remove_waiter: Option<oneshot::Sender<()>>,
    /// Abandoned one-shot steps whose processes are still being terminated: a stop is only done,
    /// and the actor only exits, once they are gone, so no step outlives a core's shutdown.
    abandoned: tokio::task::JoinSet<()>,
    exit: bool,
    /// OOM kills of the component's cgroup already accounted for.
    oom_seen: Option<u64>,
    /// State changes of all components; only HARD dependencies' matter here.
    events: broadcast::Receiver<StateChange>,
}

/// Registers the component as NEW and starts its task.
pub(crate) fn spawn_component(shared: &Arc<Shared>, spec: ComponentSpec) {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = shared.events.subscribe();
    let status = ComponentStatus {
        name: spec.name.clone(),
        version: spec.version.clone(),
        state: State::New,
        status_code: NONE.to_string(),
        reason: String::new(),
    };
    shared.lock_table().insert(
        spec.name.clone(),
        Entry {
            status,
            spec: spec.clone(),
            tx: tx.clone(),
        },
    );
    let actor = Actor {
        shared: shared.clone(),
        name: spec.name.clone(),
        log: shared.log_for(&spec.name),
        spec,
        tx,
        state: State::New,
        status_code: NONE.to_string(),
        reason: String::new(),
        want_running: true,
        next_generation: 0,
        active: None,
        groups: Vec::new(),
        after_stop: AfterStop::Finished,
        started_shutdown: None,
        errors: HashMap::new(),
        errored_from: State::New,
        broken_pending: false,
        stop_error_reported: false,
        stop_waiters: Vec::new(),
        remove_waiter: None,
        abandoned: tokio::task::JoinSet::new(),
        exit: false,
        oom_seen: None,
        events,
    };
    tokio::spawn(actor.run(rx));
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.advance();
        while !self.exit {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                event = self.events.recv() => match event {
                    Ok(change) if !self.depends_hard_on(&change.name) => continue,
                    // The dependency may already be ready again when this is read (a quick restart),
                    // so the transition itself, not the table, decides (spec §1.3).
                    Ok(change) if !change.new.is_dependency_ready() => self.on_dependency_lost(&change.name),
                    // Lagged: `advance` re-checks the table rather than guess what was missed.
                    _ => {}
                },
                // An abandoned step's processes are gone: a waiting stop may now be done.
                Some(_) = self.abandoned.join_next(), if !self.abandoned.is_empty() => {}
            }
            self.advance();
        }
        while self.abandoned.join_next().await.is_some() {}
        if self.exit {
            self.shared.release_cgroup(&self.name).await;
        }
        self.shared.lock_table().remove(&self.name);
        if let Some(done) = self.remove_waiter.take() {
            let _ = done.send(());
        }
        for done in self.stop_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    fn depends_hard_on(&self, other: &str) -> bool {
        self.spec
            .dependencies
            .iter()
            .any(|(name, kind)| name == other && *kind == DependencyType::Hard)
    }

    /// HARD dependencies that are not supervised here (built-in services of the core) count as ready.
    fn hard_deps_ready(&self) -> bool {
        let table = self.shared.lock_table();
        self.spec
            .dependencies
            .iter()
            .filter(|(_, kind)| *kind == DependencyType::Hard)
            .all(|(name, _)| {
                table
                    .get(name)
                    .is_none_or(|entry| entry.status.state.is_dependency_ready())
            })
    }

    fn set_state(&mut self, new: State, code: &str) {
        let old = self.state;
        if old == new && self.status_code == code {
            return;
        }
        if new != State::Errored && new != old {
            // Reaching a non-error state from `old` clears the error count of `old` (spec §1.10).
            self.errors.remove(&old);
        }
        if matches!(new, State::Running | State::Finished | State::Installed) {
            self.reason.clear();
        }
        self.state = new;
        self.status_code = code.to_string();
        if let Some(entry) = self.shared.lock_table().get_mut(&self.name) {
            entry.status.state = new;
            entry.status.status_code = self.status_code.clone();
            entry.status.reason = self.reason.clone();
            entry.status.version = self.spec.version.clone();
        }
        let mut text = format!("{old} -> {new} statusCode={code}");
        if !self.reason.is_empty() && new == State::Errored || new == State::Broken {
            text.push_str(&format!(" reason={}", self.reason));
        }
        self.log.write(
            if new == State::Errored || new == State::Broken {
                "ERROR"
            } else {
                "INFO"
            },
            "state",
            &text,
        );
        tracing::debug!(component = %self.name, %old, %new, code, "component state changed");
        let _ = self.shared.events.send(StateChange {
            name: self.name.clone(),
            old,
            new,
            status_code: code.to_string(),
        });
    }

    fn advance(&mut self) {
        // Bounded so that a step failing synchronously forever (say, with errorResetTime 0) still
        // yields to the runtime between rounds instead of spinning inside one poll.
        for round in 0.. {
            let before = (self.state, self.active.map(|a| a.generation));
            self.step_once();
            if self.exit || before == (self.state, self.active.map(|a| a.generation)) {
                break;
            }
            if round == 64 {
                let _ = self.tx.send(Msg::Continue);
                break;
            }
        }
        if self.active.is_none() && !self.want_running && self.abandoned.is_empty() {
            for done in self.stop_waiters.drain(..) {
                let _ = done.send(());
            }
        }
    }

    fn step_once(&mut self) {
        if self.exit {
            return;
        }
        let idle = self.active.is_none();
        if self.remove_waiter.is_some() {
            if idle
                && !matches!(
                    self.state,
                    State::Starting | State::Running | State::Stopping
                )
            {
                self.begin_uninstall();
            }
            return;
        }
        match self.state {
            State::Starting | State::Running if !self.hard_deps_ready() => {
                self.on_dependency_lost("(state missed)")
            }
            State::New if idle && self.want_running => self.begin_install(),
            State::Installed if idle && self.want_running => {
                // Changes queued so far are older than the table read below; acting on them later
                // would restart this component for a dependency state that has already passed.
                while !matches!(
                    self.events.try_recv(),
                    Err(broadcast::error::TryRecvError::Empty
                        | broadcast::error::TryRecvError::Closed)
                ) {}
                if self.hard_deps_ready() {
                    self.begin_start()
                }
            }
            _ => {}
        }
    }

    fn on_dependency_lost(&mut self, dependency: &str) {
        if matches!(self.state, State::Starting | State::Running) && self.remove_waiter.is_none() {
            self.log.write(
                "INFO",
                "state",
                &format!("HARD dependency {dependency} is no longer ready: restarting"),
            );
            self.begin_stop(self.stop_target());
        }
    }

    fn stop_target(&self) -> AfterStop {
        if self.remove_waiter.is_some() {
            AfterStop::Remove
        } else if self.want_running {
            AfterStop::Installed
        } else {
            AfterStop::Finished
        }
    }

    fn launch(
        &mut self,
        phase: Phase,
        step_name: &'static str,
        step: &Step,
        default_timeout: Option<Duration>,
    ) -> Launch {
        let cmd = match self.shared.prepare(&self.spec, step_name, step) {
            Err(err) => return Launch::Failed(err.suffix, err.reason),
            Ok(None) => {
                self.log.write(
                    "INFO",
                    &format!("lifecycle={step_name}"),
                    "skipped (Skipif)",
                );
                return Launch::Skipped;
            }
            Ok(Some(cmd)) => cmd,
        };
        if self.oom_seen.is_none() {
            self.oom_seen = self
                .shared
                .cgroup_if_any(&self.name)
                .map(|cg| cg.usage().oom_kills);
        }
        let (child, pgid) = match spawn_step(&cmd) {
            Ok(spawned) => spawned,
            Err(err) => {
                return Launch::Failed(
                    "IO_ERROR",
                    format!("cannot start {} -c for {step_name}: {err}", cmd.shell),
                );
            }
        };
        self.next_generation += 1;
        let generation = self.next_generation;
        self.active = Some(Active {
            phase,
            generation,
            pgid: Some(pgid),
        });
        let belongs_to_instance = matches!(phase, Phase::Startup | Phase::Run);
        if belongs_to_instance {
            self.groups.push(pgid);
        }
        let timeout = step.timeout.or(default_timeout);
        let tx = self.tx.clone();
        let log = self.log.clone();
        tokio::spawn(async move {
            let outcome = wait_step(child, pgid, timeout).await;
            log_outcome(&log, step_name, &outcome);
            if !belongs_to_instance {
                // One-shot steps own nothing once they exit.
                terminate_groups(&[pgid], KILL_GRACE).await;
            }
            let _ = tx.send(Msg::StepDone {
                generation,
                outcome,
            });
        });
        Launch::Started
    }

    /// Forgets the in-flight step; a one-shot step's processes are killed, an instance's stay in `groups`.
    fn abandon_active(&mut self) {
        if let Some(active) = self.active.take()
            && !matches!(active.phase, Phase::Startup | Phase::Run)
            && let Some(pgid) = active.pgid
        {
            self.abandoned
                .spawn(async move { terminate_groups(&[pgid], KILL_GRACE).await });
        }
    }

    fn begin_install(&mut self) {
        let Some(step) = self.spec.lifecycle.install.clone() else {
            self.set_state(State::Installed, NONE);
            return;
        };
        match self.launch(Phase::Install, "Install", &step, Some(INSTALL_TIMEOUT)) {
            Launch::Started => {}
            Launch::Skipped => self.set_state(State::Installed, NONE),
            Launch::Failed(suffix, reason) => {
                self.fail(State::New, format!("INSTALL_{suffix}"), reason)
            }
        }
    }

    fn begin_start(&mut self) {
        self.set_state(State::Starting, NONE);
        self.started_shutdown = self.spec.lifecycle.shutdown.clone();
        if let Some(step) = self.spec.lifecycle.startup.clone() {
            match self.launch(Phase::Startup, "Startup", &step, Some(STARTUP_TIMEOUT)) {
                Launch::Started => {}
                Launch::Skipped => self.set_state(State::Running, NONE),
                Launch::Failed(suffix, reason) => {
                    self.fail(State::Starting, format!("STARTUP_{suffix}"), reason)
                }
            }
        } else if let Some(step) = self.spec.lifecycle.run.clone() {
            match self.launch(Phase::Run, "Run", &step, None) {
                Launch::Started => self.set_state(State::Running, NONE),
                Launch::Skipped => self.set_state(State::Finished, NONE),
                Launch::Failed(suffix, reason) => {
                    self.fail(State::Starting, format!("RUN_{suffix}"), reason)
                }
            }
        } else {
            self.set_state(State::Finished, NONE);
        }
    }

    fn begin_uninstall(&mut self) {
        if let Some(step) = self.spec.lifecycle.uninstall.clone()
            && matches!(
                self.launch(
                    Phase::Uninstall,
                    "Uninstall",
                    &step,
                    Some(UNINSTALL_TIMEOUT)
                ),
                Launch::Started
            )
        {
            return;
        }
        self.exit = true;
    }

    /// Enters STOPPING: the cached shutdown step runs, then every process of the instance is killed.
    fn begin_stop(&mut self, after: AfterStop) {
        self.after_stop = after;
        self.abandon_active();
        let groups = std::mem::take(&mut self.groups);
        self.stop_error_reported = false;
        self.set_state(State::Stopping, NONE);
        self.next_generation += 1;
        let generation = self.next_generation;
        self.active = Some(Active {
            phase: Phase::Stopping,
            generation,
            pgid: None,
        });
        let shutdown = self
            .started_shutdown
            .take()
            .or_else(|| self.spec.lifecycle.shutdown.clone());
        let command = match shutdown {
            None => None,
            Some(step) => match self.shared.prepare(&self.spec, "Shutdown", &step) {
                Ok(Some(cmd)) => Some((cmd, step.timeout.unwrap_or(SHUTDOWN_TIMEOUT))),
                Ok(None) => None,
                Err(err) => {
                    self.log.write("WARN", "lifecycle=Shutdown", &err.reason);
                    None
                }
            },
        };
        let tx = self.tx.clone();
        let cgroup = self.shared.cgroup_if_any(&self.name);
        tokio::spawn(async move {
            let shutdown = match command {
                Some((cmd, timeout)) => {
                    let outcome = run_one_shot(&cmd, Some(timeout)).await;
                    log_outcome(&cmd.log, "Shutdown", &outcome);
                    Some(outcome)
                }
                None => None,
            };
            terminate_groups(&groups, KILL_GRACE).await;
            // Processes that left the step's groups (setsid, daemons) are still in the cgroup.
            if let Some(cgroup) = cgroup {
                cgroup.kill_all();
            }
            let _ = tx.send(Msg::StopDone {
                generation,
                shutdown,
            });
        });
    }

    fn finish_stop(&mut self) {
        let next = match self.after_stop {
            AfterStop::Installed => State::Installed,
            AfterStop::New => State::New,
            AfterStop::Finished | AfterStop::Remove => State::Finished,
        };
        self.set_state(next, NONE);
    }

    /// Enters ERRORED from `from`, counts the error, runs Recover, then retries or turns BROKEN.
    fn fail(&mut self, from: State, code: String, reason: String) {
        self.abandon_active();
        let now = Instant::now();
        let count = match self.errors.get(&from) {
            Some((n, last)) if now.duration_since(*last) < self.spec.error_reset_time => n + 1,
            _ => 1,
        };
        self.errors.insert(from, (count, now));
        self.reason = reason;
        self.set_state(State::Errored, &code);
        self.errored_from = from;
        self.broken_pending = count >= ERRORS_UNTIL_BROKEN;
        if let Some(step) = self.spec.lifecycle.recover.clone() {
            match self.launch(Phase::Recover, "Recover", &step, Some(RECOVER_TIMEOUT)) {
                Launch::Started => return,
                Launch::Skipped => {}
                Launch::Failed(_, reason) => self.log.write("WARN", "lifecycle=Recover", &reason),
            }
        }
        self.after_error();
    }

    fn after_error(&mut self) {
        if std::mem::take(&mut self.broken_pending) {
            let groups = std::mem::take(&mut self.groups);
            let code = self.status_code.clone();
            self.set_state(State::Broken, &code);
            tokio::spawn(async move { terminate_groups(&groups, KILL_GRACE).await });
            return;
        }
        match self.errored_from {
            State::New => self.set_state(State::New, NONE),
            State::Stopping => self.finish_stop(),
            _ => self.begin_stop(self.stop_target()),
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::StepDone {
                generation,
                outcome,
            } => self.on_step_done(generation, outcome),
            Msg::StopDone {
                generation,
                shutdown,
            } => {
                if self.active.map(|a| a.generation) != Some(generation) {
                    return;
                }
                self.active = None;
                match shutdown {
                    Some(StepOutcome::Exited(0)) | None if !self.stop_error_reported => {
                        self.finish_stop()
                    }
                    Some(StepOutcome::Exited(0)) | None => self.fail(
                        State::Stopping,
                        "SHUTDOWN_ERROR".into(),
                        "the component reported ERRORED while stopping".into(),
                    ),
                    Some(StepOutcome::Exited(code)) => self.fail(
                        State::Stopping,
                        "SHUTDOWN_ERROR".into(),
                        format!("shutdown exited with code {code}"),
                    ),
                    Some(StepOutcome::TimedOut) => self.fail(
                        State::Stopping,
                        "SHUTDOWN_TIMEOUT".into(),
                        "shutdown did not finish within its timeout".into(),
                    ),
                    Some(StepOutcome::SpawnFailed(reason)) => {
                        self.fail(State::Stopping, "SHUTDOWN_IO_ERROR".into(), reason)
                    }
                }
            }
            Msg::Update { spec, change, ack } => {
                self.spec = *spec;
                // New limits reach the running processes now: no restart needed.
                if self.shared.cgroup_if_any(&self.name).is_some() {
                    self.shared.cgroup_for(&self.spec);
                }
                match change {
                    Change::Quiet => {}
                    Change::Reinstall => self.reinstall(),
                    Change::Restart if self.state == State::Broken => self.reinstall(),
                    Change::Restart => self.restart(),
                }
                let _ = ack.send(());
            }
            Msg::Restart { ack } => {
                let result = if self.state == State::Broken {
                    Err(SupervisorError::Broken(self.name.clone()))
                } else {
                    self.restart();
                    Ok(())
                };
                let _ = ack.send(result);
            }
            Msg::Stop { done } => {
                self.want_running = false;
                self.stop_waiters.push(done);
                match self.state {
                    State::Starting | State::Running => self.begin_stop(AfterStop::Finished),
                    State::Stopping if self.after_stop != AfterStop::Remove => {
                        self.after_stop = AfterStop::Finished
                    }
                    State::New | State::Installed => self.abandon_active(),
                    _ => {}
                }
            }
            Msg::Remove { done } => {
                self.want_running = false;
                self.remove_waiter = Some(done);
                match self.state {
                    State::Starting | State::Running => self.begin_stop(AfterStop::Remove),
                    State::Stopping => self.after_stop = AfterStop::Remove,
                    State::Errored => {}
                    _ => self.abandon_active(),
                }
            }
            Msg::Signal(signal) => {
                let mut groups = self.groups.clone();
                groups.extend(self.active.and_then(|a| a.pgid));
                for pgid in groups {
                    process::signal_group(pgid, signal);
                }
            }
            Msg::Report(reported) => self.on_report(reported),
            Msg::Continue => {}
        }
    }

    fn reinstall(&mut self) {
        self.errors.clear();
        self.broken_pending = false;
        self.want_running = true;
        match self.state {
            State::Starting | State::Running => self.begin_stop(AfterStop::New),
            State::Stopping => {
                if self.after_stop != AfterStop::Remove {
                    self.after_stop = AfterStop::New
                }
            }
            _ => {
                self.abandon_active();
                let groups = std::mem::take(&mut self.groups);
                if !groups.is_empty() {
                    tokio::spawn(async move { terminate_groups(&groups, KILL_GRACE).await });
                }
                self.set_state(State::New, NONE);
            }
        }
    }

    fn restart(&mut self) {
        self.want_running = true;
        match self.state {
            State::Starting | State::Running => self.begin_stop(AfterStop::Installed),
            State::Stopping if self.after_stop == AfterStop::Finished => {
                self.after_stop = AfterStop::Installed
            }
            State::Finished => self.set_state(State::Installed, NONE),
            _ => {}
        }
    }

    fn on_step_done(&mut self, generation: u64, outcome: StepOutcome) {
        let Some(active) = self.active else { return };
        if active.generation != generation {
            return;
        }
        self.active = None;
        let oom = if outcome == StepOutcome::Exited(0) {
            None
        } else {
            self.oom_killed()
        };
        let failure = |prefix: &str, outcome: &StepOutcome| -> (String, String) {
            match outcome {
                StepOutcome::Exited(code) => (
                    format!("{prefix}_ERROR"),
                    match &oom {
                        Some(cause) => format!(
                            "{} step exited with code {code}: {cause}",
                            prefix.to_lowercase()
                        ),
                        None => format!("{prefix} step exited with code {code}").to_lowercase(),
                    },
                ),
                StepOutcome::TimedOut => (
                    format!("{prefix}_TIMEOUT"),
                    format!("{prefix} step did not finish within its timeout").to_lowercase(),
                ),
                StepOutcome::SpawnFailed(reason) => (format!("{prefix}_IO_ERROR"), reason.clone()),
            }
        };
        match (active.phase, &outcome) {
            (Phase::Install, StepOutcome::Exited(0)) => self.set_state(State::Installed, NONE),
            (Phase::Install, _) => {
                let (code, reason) = failure("INSTALL", &outcome);
                self.fail(State::New, code, reason)
            }
            (Phase::Startup, StepOutcome::Exited(0)) => {
                if self.state == State::Starting {
                    self.set_state(State::Running, NONE)
                }
            }
            (Phase::Startup, _) => {
                let (code, reason) = failure("STARTUP", &outcome);
                let from = self.state;
                self.fail(from, code, reason)
            }
            (Phase::Run, StepOutcome::Exited(0)) => self.begin_stop(AfterStop::Finished),
            (Phase::Run, _) => {
                let (code, reason) = failure("RUN", &outcome);
                self.fail(State::Running, code, reason)
            }
            (Phase::Recover, _) => {
                if outcome != StepOutcome::Exited(0) {
                    self.log.write(
                        "WARN",
                        "lifecycle=Recover",
                        &format!("{outcome:?} (ignored)"),
                    );
                }
                self.after_error()
            }
            (Phase::Uninstall, _) => self.exit = true,
            (Phase::Stopping, _) => {}
        }
    }

    /// The cause when the kernel's OOM killer struck the component's cgroup since last asked.
    fn oom_killed(&mut self) -> Option<String> {
        let kills = self.shared.cgroup_if_any(&self.name)?.usage().oom_kills;
        let seen = self.oom_seen.replace(kills).unwrap_or(0);
        if kills <= seen {
            return None;
        }
        let limit = match self.spec.resource_limits.memory_kb {
            Some(kb) => format!("its memory limit of {kb} KiB (systemResourceLimits.memory)"),
            None => "the memory available to it".to_string(),
        };
        let cause =
            format!("killed by the kernel's out-of-memory killer: the component reached {limit}");
        self.log.write("ERROR", "limits", &cause);
        Some(cause)
    }

    /// IPC UpdateState: only the transitions of spec §1.10 are honoured.
    fn on_report(&mut self, reported: State) {
        let reason = || format!("the component reported {reported}");
        match (self.state, reported) {
            (State::New, State::Errored) => self.fail(State::New, NONE.into(), reason()),
            (State::Starting, State::Running) => self.set_state(State::Running, NONE),
            (State::Starting | State::Running, State::Errored) => {
                let from = self.state;
                self.fail(from, NONE.into(), reason())
            }
            (State::Starting | State::Running, State::Finished) => {
                self.begin_stop(AfterStop::Finished)
            }
            (State::Stopping, State::Errored) => self.stop_error_reported = true,
            (State::Stopping, State::Finished) => {}
            (current, reported) if current == reported => {}
            (current, _) => {
                tracing::warn!(component = %self.name, %current, %reported, "ignored state report not allowed from the current state");
                self.log.write(
                    "WARN",
                    "state",
                    &format!("ignored report of {reported} while {current}"),
                );
            }
        }
    }
}
