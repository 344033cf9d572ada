//! One task per component: it owns the component's state machine and its processes, and reacts to
//! messages (requests, step completions) and to state changes of its HARD dependencies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lichen_recipe::{DependencyType, Step};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::logs::ComponentLog;
use crate::process::{
    self, KILL_GRACE, StepOutcome, run_one_shot, spawn_step, terminate_groups, wait_step,
};
use crate::{ComponentSpec, ComponentStatus, State, StateChange, SupervisorError};

pub(crate) use crate::shared::{Entry, Shared};

pub(crate) const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
pub(crate) const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const UNINSTALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The 3rd counted error from one state turns the component BROKEN (spec §1.10).
const ERRORS_UNTIL_BROKEN: u32 = 3;
const NONE: &str = "NONE";

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
    /// The task that waits for the current step's process (and reaps it).
    step_task: Option<tokio::task::JoinHandle<()>>,
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
        step_task: None,
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
        self.step_task = Some(tokio::spawn(async move {
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
        }));
        Launch::Started
    }

    /// Forgets the in-flight step; a one-shot step's processes are killed, an instance's stay in `groups`.
    fn abandon_active(&mut self) {
        if let Some(active) = self.active.take()
            && !matches!(active.phase, Phase::Startup | Phase::Run)
            && let Some(pgid) = active.pgid
        {
            let waiter = self.step_task.take();
            self.abandoned.spawn(async move {
                terminate_groups(&[pgid], KILL_GRACE).await;
                // Gone means reaped too: the step's own task waits for (and reaps) its process.
                if let Some(waiter) = waiter {
                    let _ = tokio::time::timeout(crate::process::KILL_WAIT, waiter).await;
                }
            });
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
