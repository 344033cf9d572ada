//! Real processes in temporary roots: every test starts a supervisor, drives components through their
//! lifecycle and checks what the scripts did (files they wrote, /proc) rather than wall-clock timings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lichen_recipe::{DependencyType, Lifecycle, SkipIf, Step};
use lichen_supervisor::{
    ComponentSpec, EnvProvider, State, StateChange, Supervisor, SupervisorConfig, SupervisorError,
};

const SETTLE: Duration = Duration::from_secs(60);

struct FixedEnv(BTreeMap<String, String>);

impl EnvProvider for FixedEnv {
    fn component_env(&self, component: &str) -> BTreeMap<String, String> {
        let mut env = self.0.clone();
        env.insert("SVCUID".into(), format!("token-of-{component}"));
        env
    }
}

struct Harness {
    dir: tempfile::TempDir,
    sup: Supervisor,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(|_| {}, BTreeMap::new())
    }

    fn with(
        tune: impl FnOnce(&mut SupervisorConfig),
        provided: BTreeMap<String, String>,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SupervisorConfig::new(dir.path().join("root"));
        tune(&mut cfg);
        let sup = Supervisor::new(cfg, Arc::new(FixedEnv(provided)));
        Harness { dir, sup }
    }

    /// A directory every component's scripts can write to, exported to them as `$T`.
    fn shared_dir(&self) -> PathBuf {
        let path = self.dir.path().join("shared");
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    fn spec(&self, name: &str, lifecycle: Lifecycle) -> ComponentSpec {
        let mut spec = ComponentSpec::new(name, "1.0.0", lifecycle);
        spec.setenv
            .insert("T".into(), self.shared_dir().display().to_string());
        spec
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("root/logs/{name}.log")))
            .unwrap_or_default()
    }

    /// Every component's status and log, for failure messages.
    fn dump(&self) -> String {
        let mut out = String::new();
        for status in self.sup.list() {
            out.push_str(&format!("{status:?}\n{}\n", self.log(&status.name)));
        }
        out
    }

    fn work(&self, name: &str) -> PathBuf {
        self.dir.path().join("root/work").join(name)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.shared_dir().join(file)).unwrap_or_default()
    }

    fn lines(&self, file: &str) -> usize {
        self.read(file).lines().count()
    }

    async fn reconcile(&self, specs: Vec<ComponentSpec>) {
        self.sup.reconcile(specs, &BTreeSet::new()).await.unwrap();
    }

    async fn wait_state(&self, name: &str, state: State) {
        wait_until(&self.sup, || {
            self.sup.status(name).map(|s| s.state) == Some(state)
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{name} never reached {state}; now {:?}; log:\n{}",
                self.sup.status(name),
                self.log(name)
            )
        });
    }
}

impl Harness {
    /// Live processes whose working directory is inside this harness's root.
    fn processes(&self) -> Vec<i32> {
        all_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .map(|cwd| cwd.starts_with(self.dir.path()))
                    .unwrap_or(false)
                    && proc_state(*pid) != "Z"
            })
            .collect()
    }
}

fn proc_state(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("Z")
        .to_string()
}

impl Drop for Harness {
    /// Kills whatever a failed test left running in its work directories, so one failure cannot leak
    /// processes into later runs.
    fn drop(&mut self) {
        let root = self.dir.path().to_path_buf();
        for pid in all_pids() {
            let in_root = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|cwd| cwd.starts_with(&root))
                .unwrap_or(false);
            if in_root {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Waits (driven by state changes, re-checked every 20 ms for file-based conditions) until `done()`.
async fn wait_until(sup: &Supervisor, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let mut changes = sup.subscribe();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return Err(());
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), changes.recv()).await;
    }
    Ok(())
}

fn step(script: &str) -> Option<Step> {
    Some(Step {
        script: script.to_string(),
        requires_privilege: false,
        skip_if: None,
        timeout: None,
        setenv: BTreeMap::new(),
    })
}

fn lifecycle() -> Lifecycle {
    Lifecycle::default()
}

/// Live processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("Z");
            state != "Z" && String::from_utf8_lossy(&cmdline).contains(marker)
        })
        .collect()
}

/// Live `sleep <marker>` processes: exactly that command line, so never the shell that will exec it.
fn sleeping(marker: &str) -> Vec<i32> {
    let wanted = format!("sleep\0{marker}\0");
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes())
                && proc_state(*pid) != "Z"
        })
        .collect()
}

fn collect_changes(
    rx: &mut tokio::sync::broadcast::Receiver<StateChange>,
    name: &str,
) -> Vec<State> {
    let mut states = Vec::new();
    while let Ok(change) = rx.try_recv() {
        if change.name == name {
            states.push(change.new);
        }
    }
    states
}

#[tokio::test]
async fn hello_world_reaches_finished_and_its_output_is_logged() {
    let h = Harness::new();
    let mut changes = h.sup.subscribe();
    let mut lc = lifecycle();
    lc.run = step("echo Hello world; echo oops >&2");
    h.reconcile(vec![h.spec("hello", lc)]).await;
    h.sup.wait_settled(&["hello".into()], SETTLE).await.unwrap();
    h.wait_state("hello", State::Finished).await;
    wait_until(&h.sup, || h.log("hello").contains("stream=stderr: oops"))
        .await
        .unwrap();
    let log = h.log("hello");
    assert!(
        log.contains(" INFO [hello] lifecycle=Run stream=stdout: Hello world"),
        "{log}"
    );
    assert!(
        log.contains(" WARN [hello] lifecycle=Run stream=stderr: oops"),
        "{log}"
    );
    assert!(log.contains("RUNNING -> STOPPING"), "{log}");
    assert_eq!(
        collect_changes(&mut changes, "hello"),
        [
            State::Installed,
            State::Starting,
            State::Running,
            State::Stopping,
            State::Finished
        ]
    );
    let status = h.sup.status("hello").unwrap();
    assert_eq!(status.status_code, "NONE");
    assert_eq!(status.version, "1.0.0");
    assert_eq!(h.sup.list().len(), 1);
}

#[tokio::test]
async fn startup_component_runs_and_its_background_processes_die_at_stop() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.startup = step("sleep 100111 & echo started > \"$T/started\"");
    h.reconcile(vec![h.spec("daemon", lc)]).await;
    h.wait_state("daemon", State::Running).await;
    assert_eq!(h.read("started").trim(), "started");
    assert_eq!(processes_with("100111").len(), 1);
    h.sup.stop("daemon").await.unwrap();
    assert_eq!(h.sup.status("daemon").unwrap().state, State::Finished);
    assert!(processes_with("100111").is_empty());
}

#[tokio::test]
async fn no_startup_and_no_run_means_finished_after_install() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.install = step("echo installed >> \"$T/install\"");
    h.reconcile(vec![h.spec("lib", lc)]).await;
    h.sup.wait_settled(&["lib".into()], SETTLE).await.unwrap();
    assert_eq!(h.sup.status("lib").unwrap().state, State::Finished);
    assert_eq!(h.lines("install"), 1);
}

#[tokio::test]
async fn run_failing_three_times_turns_broken_after_recover_runs() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.run = step("echo attempt >> \"$T/runs\"; exit 1");
    lc.recover = step("echo recovered >> \"$T/recovers\"");
    h.reconcile(vec![h.spec("flaky", lc)]).await;
    h.wait_state("flaky", State::Broken).await;
    let err = h
        .sup
        .wait_settled(&["flaky".into()], SETTLE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SupervisorError::Broken(ref n) if n == "flaky"),
        "{err}"
    );
    let status = h.sup.status("flaky").unwrap();
    assert_eq!(status.state, State::Broken);
    assert_eq!(status.status_code, "RUN_ERROR");
    assert_eq!(h.lines("runs"), 3);
    assert!(
        h.lines("recovers") >= 2,
        "recover ran {} times",
        h.lines("recovers")
    );
    // A plain restart does not revive a BROKEN component.
    assert!(matches!(
        h.sup.restart("flaky").await,
        Err(SupervisorError::Broken(_))
    ));
    assert_eq!(h.sup.status("flaky").unwrap().state, State::Broken);
    // A reinstall does.
    let mut lc = lifecycle();
    lc.run = step("echo fixed >> \"$T/fixed\"");
    let mut reinstall = BTreeSet::new();
    reinstall.insert("flaky".to_string());
    h.sup
        .reconcile(vec![h.spec("flaky", lc)], &reinstall)
        .await
        .unwrap();
    h.wait_state("flaky", State::Finished).await;
    assert_eq!(h.lines("fixed"), 1);
}

#[tokio::test]
async fn errors_spaced_beyond_the_error_reset_time_never_break() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.run = step("echo attempt >> \"$T/runs\"; exit 2");
    let mut spec = h.spec("persistent", lc);
    spec.error_reset_time = Duration::ZERO;
    let mut changes = h.sup.subscribe();
    h.reconcile(vec![spec]).await;
    wait_until(&h.sup, || h.lines("runs") >= 5).await.unwrap();
    h.sup.stop("persistent").await.unwrap();
    let states = collect_changes(&mut changes, "persistent");
    assert!(!states.contains(&State::Broken), "{states:?}");
    assert!(states.iter().filter(|s| **s == State::Errored).count() >= 4);
    assert_eq!(h.sup.status("persistent").unwrap().state, State::Finished);
    assert!(
        h.log("persistent")
            .contains("lifecycle=Run: exited with code 2")
    );
}

#[tokio::test]
async fn run_timeout_is_reported_and_kills_the_run_process() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.run = Some(Step {
        timeout: Some(Duration::from_secs(1)),
        ..step("exec sleep 100888").unwrap()
    });
    h.reconcile(vec![h.spec("overtime", lc)]).await;
    wait_until(&h.sup, || {
        h.sup.status("overtime").unwrap().status_code == "RUN_TIMEOUT"
    })
    .await
    .unwrap();
    h.sup.shutdown().await;
    assert!(h.processes().is_empty());
}

#[tokio::test]
async fn failing_install_is_retried_from_new_and_reported() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.install = step("echo try >> \"$T/installs\"; exit 3");
    lc.run = step("echo never >> \"$T/runs\"");
    h.reconcile(vec![h.spec("badinstall", lc)]).await;
    let err = h.sup.wait_settled(&["badinstall".into()], SETTLE).await;
    assert!(matches!(err, Err(SupervisorError::Broken(_))));
    assert_eq!(
        h.sup.status("badinstall").unwrap().status_code,
        "INSTALL_ERROR"
    );
    assert_eq!(h.lines("installs"), 3);
    assert_eq!(h.lines("runs"), 0);
}

#[tokio::test]
async fn hard_dependency_is_running_before_the_dependent_starts() {
    let h = Harness::new();
    let mut b = lifecycle();
    b.startup = step("sleep 0.3; date +%s%N > \"$T/b_ready\"");
    let mut a = lifecycle();
    a.startup = step("date +%s%N > \"$T/a_start\"");
    let mut a = h.spec("A", a);
    a.dependencies.push(("B".into(), DependencyType::Hard));
    // A built-in service is not supervised here and must not block.
    a.dependencies
        .push(("aws.greengrass.Nucleus".into(), DependencyType::Hard));
    h.reconcile(vec![a, h.spec("B", b)]).await;
    h.sup
        .wait_settled(&["A".into(), "B".into()], SETTLE)
        .await
        .unwrap();
    let b_ready: u128 = h.read("b_ready").trim().parse().unwrap();
    let a_start: u128 = h.read("a_start").trim().parse().unwrap();
    assert!(
        a_start > b_ready,
        "A started at {a_start}, B was ready at {b_ready}"
    );
    h.sup.shutdown().await;
}

#[tokio::test]
async fn restarting_a_hard_dependency_restarts_the_dependent() {
    let h = Harness::new();
    let mut b = lifecycle();
    b.run = step("echo b >> \"$T/b_runs\"; exec sleep 100222");
    let mut a = lifecycle();
    a.run = step("echo a >> \"$T/a_runs\"; exec sleep 100223");
    let mut a = h.spec("A", a);
    a.dependencies.push(("B".into(), DependencyType::Hard));
    h.reconcile(vec![a, h.spec("B", b)]).await;
    h.sup
        .wait_settled(&["A".into(), "B".into()], SETTLE)
        .await
        .unwrap();
    wait_until(&h.sup, || h.lines("a_runs") == 1).await.unwrap();
    let mut changes = h.sup.subscribe();
    h.sup.restart("B").await.unwrap();
    wait_until(&h.sup, || {
        h.lines("a_runs") == 2
            && h.sup.status("A").unwrap().state == State::Running
            && h.sup.status("B").unwrap().state == State::Running
    })
    .await
    .unwrap_or_else(|_| panic!("{}", h.dump()));
    assert_eq!(h.lines("b_runs"), 2);
    let a_states = collect_changes(&mut changes, "A");
    assert!(
        a_states.starts_with(&[State::Stopping, State::Installed]),
        "{a_states:?}"
    );
    assert_eq!(processes_with("100223").len(), 1);
    h.sup.shutdown().await;
    assert!(processes_with("100222").is_empty());
    assert!(processes_with("100223").is_empty());
}

#[tokio::test]
async fn soft_dependency_does_not_block() {
    let h = Harness::new();
    let mut b = lifecycle();
    b.install = step("exec sleep 100333");
    let mut a = lifecycle();
    a.run = step("exec sleep 100334");
    let mut a = h.spec("A", a);
    a.dependencies.push(("B".into(), DependencyType::Soft));
    h.reconcile(vec![a, h.spec("B", b)]).await;
    h.wait_state("A", State::Running).await;
    assert_eq!(h.sup.status("B").unwrap().state, State::New);
    h.sup.shutdown().await;
    assert!(processes_with("100333").is_empty());
    assert!(processes_with("100334").is_empty());
}

#[tokio::test]
async fn stop_and_shutdown_during_install_return_once_its_processes_are_gone() {
    let h = Harness::new();
    // Ignoring SIGTERM survives exec: only the SIGKILL after the grace period ends these.
    let mut stopped = lifecycle();
    stopped.install = step("trap '' TERM; exec sleep 100335");
    let mut shut = lifecycle();
    shut.install = step("trap '' TERM; exec sleep 100336");
    h.reconcile(vec![h.spec("stopped", stopped), h.spec("shut", shut)])
        .await;
    wait_until(&h.sup, || {
        sleeping("100335").len() == 1 && sleeping("100336").len() == 1
    })
    .await
    .expect("both install steps run");
    h.sup.stop("stopped").await.unwrap();
    assert_eq!(h.sup.status("stopped").unwrap().state, State::New);
    assert!(processes_with("100335").is_empty());
    h.sup.shutdown().await;
    assert!(processes_with("100336").is_empty());
}

#[tokio::test]
async fn step_timeout_kills_the_whole_process_group() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.startup = Some(Step {
        timeout: Some(Duration::from_secs(1)),
        ..step("sleep 100444 & sleep 100444 & sleep 100445").unwrap()
    });
    h.reconcile(vec![h.spec("slow", lc)]).await;
    let mut changes = h.sup.subscribe();
    wait_until(&h.sup, || {
        h.sup.status("slow").unwrap().status_code == "STARTUP_TIMEOUT"
    })
    .await
    .unwrap();
    assert!(matches!(
        h.sup.wait_settled(&["slow".into()], SETTLE).await,
        Err(SupervisorError::Broken(_))
    ));
    assert!(collect_changes(&mut changes, "slow").contains(&State::Errored));
    wait_until(&h.sup, || processes_with("10044").is_empty())
        .await
        .expect("timed-out processes left behind");
}

#[tokio::test]
async fn shutdown_runs_shutdown_steps_and_leaves_no_process_behind() {
    let h = Harness::new();
    let mut specs = Vec::new();
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        let mut lc = lifecycle();
        lc.startup = step(&format!("sleep 10055{i} & sleep 10056{i} &"));
        lc.shutdown = step(&format!("echo {name} >> \"$T/shutdowns\""));
        let mut spec = h.spec(name, lc);
        if i > 0 {
            spec.dependencies
                .push((["one", "two"][i - 1].to_string(), DependencyType::Hard));
        }
        specs.push(spec);
    }
    let mut lc = lifecycle();
    lc.run = step("trap '' TERM; sleep 100570; sleep 100571");
    specs.push(h.spec("stubborn", lc));
    h.reconcile(specs).await;
    let names: Vec<String> = ["one", "two", "three", "stubborn"]
        .map(String::from)
        .to_vec();
    h.sup.wait_settled(&names, SETTLE).await.unwrap();
    wait_until(&h.sup, || processes_with("1005").len() == 8)
        .await
        .expect("six background sleeps, the stubborn shell and its sleep");
    h.sup.shutdown().await;
    for name in &names {
        assert_eq!(h.sup.status(name).unwrap().state, State::Finished, "{name}");
    }
    assert!(
        processes_with("1005").is_empty(),
        "left: {:?}",
        processes_with("1005")
    );
    // Reverse dependency order: dependents shut down first.
    assert_eq!(h.read("shutdowns"), "three\ntwo\none\n");
}

#[tokio::test]
async fn environment_layers_apply_in_precedence_order() {
    let layer = |value: &str, keys: &[&str]| -> BTreeMap<String, String> {
        keys.iter()
            .map(|k| (k.to_string(), value.to_string()))
            .collect()
    };
    let h = Harness::with(
        |cfg| cfg.base_env = layer("base", &["P1", "P2", "P3", "P4", "P5"]),
        layer("provider", &["P2", "P3", "P4", "P5"]),
    );
    let mut lc = lifecycle();
    lc.setenv = layer("lifecycle", &["P4", "P5"]);
    lc.run = Some(Step {
        setenv: layer("step", &["P5"]),
        ..step("echo \"$P1 $P2 $P3 $P4 $P5 $SVCUID ${PATH:+has-path} $(pwd)\" > \"$T/env\"")
            .unwrap()
    });
    let mut spec = h.spec("envy", lc);
    spec.setenv.extend(layer("service", &["P3", "P4", "P5"]));
    h.reconcile(vec![spec]).await;
    h.wait_state("envy", State::Finished).await;
    let work = h.work("envy").canonicalize().unwrap();
    assert_eq!(
        h.read("env").trim(),
        format!(
            "base provider service lifecycle step token-of-envy has-path {}",
            work.display()
        )
    );
}

#[tokio::test]
async fn skipif_skips_steps() {
    let h = Harness::new();
    std::fs::create_dir_all(h.work("skippy")).unwrap();
    std::fs::write(h.work("skippy").join("already-installed"), "").unwrap();
    let skip = |expr: &str, script: &str| {
        Some(Step {
            skip_if: Some(SkipIf::parse(expr).unwrap()),
            ..step(script).unwrap()
        })
    };
    let mut lc = lifecycle();
    lc.install = skip("exists already-installed", "echo install >> \"$T/ran\"");
    lc.startup = skip("onpath sh", "echo startup >> \"$T/ran\"");
    lc.shutdown = skip("onpath no-such-program-here", "echo shutdown >> \"$T/ran\"");
    h.reconcile(vec![h.spec("skippy", lc)]).await;
    h.wait_state("skippy", State::Running).await;
    h.sup.stop("skippy").await.unwrap();
    assert_eq!(h.read("ran"), "shutdown\n");
    assert!(
        h.log("skippy")
            .contains("lifecycle=Install: skipped (Skipif)")
    );
}

#[tokio::test]
async fn steps_run_as_the_configured_posix_user() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: user switching needs root");
        return;
    }
    let h = Harness::with(
        |cfg| cfg.default_posix_user = Some("nobody".into()),
        BTreeMap::new(),
    );
    let mut lc = lifecycle();
    lc.install = Some(Step {
        requires_privilege: true,
        ..step("id -u > install-uid").unwrap()
    });
    lc.run = step("id -u > run-uid; id -g > run-gid; echo \"$HOME\" > run-home");
    h.reconcile(vec![h.spec("asuser", lc.clone())]).await;
    let mut numeric = h.spec("asnumber", lc);
    numeric.posix_user = Some("4242:4343".into());
    h.reconcile(vec![h.spec("asuser", numeric.lifecycle.clone()), numeric])
        .await;
    h.wait_state("asuser", State::Finished).await;
    h.wait_state("asnumber", State::Finished).await;
    let read = |c: &str, f: &str| {
        std::fs::read_to_string(h.work(c).join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("asuser", "install-uid"), "0");
    assert_eq!(read("asuser", "run-uid"), "65534");
    assert_eq!(read("asnumber", "run-uid"), "4242");
    assert_eq!(read("asnumber", "run-gid"), "4343");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(h.work("asuser")).unwrap().uid(), 65534);
    assert_ne!(
        read("asuser", "run-home"),
        std::env::var("HOME").unwrap_or_default()
    );
}

#[tokio::test]
async fn report_state_follows_the_allowed_transitions() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.startup = step("exec sleep 100666");
    h.reconcile(vec![h.spec("reporter", lc)]).await;
    h.wait_state("reporter", State::Starting).await;
    let mut changes = h.sup.subscribe();
    // Not allowed from STARTING: ignored (still Ok, as Greengrass answers UpdateState).
    h.sup.report_state("reporter", State::Installed).unwrap();
    h.sup.report_state("reporter", State::Running).unwrap();
    h.wait_state("reporter", State::Running).await;
    assert_eq!(collect_changes(&mut changes, "reporter"), [State::Running]);
    assert!(
        h.log("reporter")
            .contains("ignored report of INSTALLED while STARTING")
    );
    // The report may come before the step's shell has even been exec'd.
    wait_until(&h.sup, || sleeping("100666").len() == 1)
        .await
        .expect("the startup process runs");
    h.sup.report_state("reporter", State::Finished).unwrap();
    h.wait_state("reporter", State::Finished).await;
    assert!(processes_with("100666").is_empty());
    h.sup.report_state("reporter", State::Running).unwrap();
    h.sup.report_state("reporter", State::Errored).unwrap();
    h.sup.stop("reporter").await.unwrap();
    assert_eq!(h.sup.status("reporter").unwrap().state, State::Finished);
    assert!(matches!(
        h.sup.report_state("ghost", State::Running),
        Err(SupervisorError::NotFound(_))
    ));
}

#[tokio::test]
async fn reconcile_reinstalls_restarts_leaves_alone_and_removes() {
    let h = Harness::new();
    let component = |name: &str, install: &str, run_marker: &str| {
        let mut lc = lifecycle();
        lc.install = step(&format!("echo {install} >> \"$T/{name}_installs\""));
        lc.run = step(&format!(
            "echo run >> \"$T/{name}_runs\"; exec sleep {run_marker}"
        ));
        lc.uninstall = step(&format!("echo bye >> \"$T/{name}_uninstalls\""));
        h.spec(name, lc)
    };
    h.reconcile(vec![
        component("a", "v1", "100771"),
        component("b", "v1", "100772"),
        component("c", "v1", "100773"),
    ])
    .await;
    let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    h.sup.wait_settled(&all, SETTLE).await.unwrap();
    wait_until(&h.sup, || {
        h.lines("a_runs") == 1 && h.lines("b_runs") == 1 && h.lines("c_runs") == 1
    })
    .await
    .unwrap();

    // a: run changed ⇒ restart; b unchanged; c removed.
    let mut changes = h.sup.subscribe();
    h.reconcile(vec![
        component("a", "v1", "100774"),
        component("b", "v1", "100772"),
    ])
    .await;
    assert!(h.sup.status("c").is_none());
    assert!(processes_with("100773").is_empty());
    assert_eq!(h.lines("c_uninstalls"), 1);
    h.sup
        .wait_settled(&["a".into(), "b".into()], SETTLE)
        .await
        .unwrap();
    // The sleep itself, not its shell (whose command line names the marker before it has run echo).
    wait_until(&h.sup, || sleeping("100774").len() == 1)
        .await
        .unwrap();
    assert_eq!(h.lines("a_installs"), 1);
    assert_eq!(h.lines("a_runs"), 2);
    assert!(processes_with("100771").is_empty());
    assert!(collect_changes(&mut changes, "b").is_empty());
    assert_eq!(h.lines("b_runs"), 1);

    // a: install changed ⇒ reinstall.
    h.reconcile(vec![
        component("a", "v2", "100774"),
        component("b", "v1", "100772"),
    ])
    .await;
    h.sup
        .wait_settled(&["a".into(), "b".into()], SETTLE)
        .await
        .unwrap();
    assert_eq!(h.read("a_installs"), "v1\nv2\n");
    assert_eq!(h.lines("b_installs"), 1);
    h.sup.shutdown().await;
    assert!(processes_with("10077").is_empty());
}

#[tokio::test]
async fn component_logs_rotate_by_size() {
    let h = Harness::with(
        |cfg| {
            cfg.log_max_bytes = 2000;
            cfg.log_keep_files = 2;
        },
        BTreeMap::new(),
    );
    let mut lc = lifecycle();
    lc.run = step("i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done");
    h.reconcile(vec![h.spec("chatty", lc)]).await;
    h.wait_state("chatty", State::Finished).await;
    let logs = h.dir.path().join("root/logs");
    wait_until(&h.sup, || {
        ["chatty.log", "chatty.log.1"].iter().any(|f| {
            std::fs::read_to_string(logs.join(f))
                .unwrap_or_default()
                .contains("line 199")
        })
    })
    .await
    .unwrap_or_else(|_| panic!("{}", h.dump()));
    assert!(logs.join("chatty.log.1").exists());
    assert!(logs.join("chatty.log.2").exists());
    assert!(!logs.join("chatty.log.3").exists());
    for file in ["chatty.log", "chatty.log.1", "chatty.log.2"] {
        assert!(std::fs::metadata(logs.join(file)).unwrap().len() <= 2000);
    }
}

#[tokio::test]
async fn bootstrap_returns_valid_codes_and_fails_on_others() {
    let h = Harness::new();
    let bootstrap = |script: &str| {
        let mut lc = lifecycle();
        lc.bootstrap = step(script);
        h.spec("boot", lc)
    };
    assert_eq!(h.sup.run_bootstrap(&bootstrap("exit 0")).await.unwrap(), 0);
    assert_eq!(
        h.sup.run_bootstrap(&bootstrap("exit 100")).await.unwrap(),
        100
    );
    assert_eq!(
        h.sup.run_bootstrap(&bootstrap("exit 101")).await.unwrap(),
        101
    );
    assert!(matches!(
        h.sup.run_bootstrap(&bootstrap("exit 7")).await,
        Err(SupervisorError::StepFailed { code: 7, .. })
    ));
    assert_eq!(
        h.sup
            .run_bootstrap(&h.spec("boot", lifecycle()))
            .await
            .unwrap(),
        0
    );
    assert!(h.log("boot").contains("lifecycle=Bootstrap") || h.log("boot").is_empty());
}

#[tokio::test]
async fn pause_freezes_and_resume_continues() {
    let h = Harness::new();
    let mut lc = lifecycle();
    lc.run = step("while true; do echo tick >> \"$T/ticks\"; sleep 0.02; done");
    h.reconcile(vec![h.spec("ticker", lc)]).await;
    wait_until(&h.sup, || h.lines("ticks") >= 2).await.unwrap();
    h.sup.pause("ticker").await.unwrap();
    // Stopped processes show state T in /proc. A shell that vforked `sleep` just as the group was
    // stopped waits in D for its stopped child to exec: it runs nothing either.
    wait_until(&h.sup, || {
        let states: Vec<String> = h.processes().iter().map(|pid| proc_state(*pid)).collect();
        states.iter().any(|s| s == "T") && states.iter().all(|s| s == "T" || s == "D")
    })
    .await
    .unwrap();
    let frozen = h.lines("ticks");
    h.sup.resume("ticker").await.unwrap();
    wait_until(&h.sup, || h.lines("ticks") > frozen + 2)
        .await
        .unwrap();
    h.sup.shutdown().await;
    assert!(h.processes().is_empty());
}

#[allow(dead_code)]
fn _assert_send_sync(sup: Supervisor) -> impl Send + Sync + Clone {
    sup
}
