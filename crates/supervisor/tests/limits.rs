//! Resource limits on real processes through the machine's cgroups. Where this process may not
//! create cgroups (not root, no delegated subtree) the tests check that components still run and
//! that the supervisor says the limits are not enforced, then stop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lichen_recipe::{Lifecycle, Step};
use lichen_supervisor::{
    ComponentSpec, EnvProvider, ResourceLimits, State, Supervisor, SupervisorConfig,
};

struct NoEnv;
impl EnvProvider for NoEnv {
    fn component_env(&self, _: &str) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

fn run_step(script: &str) -> Lifecycle {
    Lifecycle {
        run: Some(Step {
            script: script.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn supervisor(dir: &tempfile::TempDir) -> Supervisor {
    let mut cfg = SupervisorConfig::new(dir.path().join("root"));
    cfg.base_env
        .insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    Supervisor::new(cfg, Arc::new(NoEnv))
}

async fn wait_for(sup: &Supervisor, what: &str, mut ok: impl FnMut(&Supervisor) -> bool) {
    for _ in 0..3000 {
        if ok(sup) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}: {:?}", sup.list());
}

/// Skips (returning true) where this machine gives us no cgroups, after checking the fallback.
async fn no_cgroups(sup: &Supervisor, name: &str) -> bool {
    if sup.resource_usage(name).is_some() {
        return false;
    }
    let why = sup
        .limits_not_enforced(name)
        .expect("a reason when limits are not enforced");
    assert!(why.contains("not enforced"), "{why}");
    eprintln!("cgroups unavailable here, limits not checked: {why}");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_oom_killed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(&dir);
    let mut spec = ComponentSpec::new(
        "hog",
        "1.0.0",
        // 256 MiB of touched pages against a 32 MiB limit.
        run_step("python3 -c 'b = b\"x\" * (256 << 20); import time; time.sleep(60)'"),
    );
    spec.resource_limits = ResourceLimits {
        memory_kb: Some(32 * 1024),
        ..Default::default()
    };
    let mut changes = sup.subscribe();
    sup.reconcile(vec![spec], &BTreeSet::new()).await.unwrap();
    wait_for(&sup, "a cgroup or a reason", |s| {
        s.resource_usage("hog").is_some() || s.limits_not_enforced("hog").is_some()
    })
    .await;
    if no_cgroups(&sup, "hog").await {
        sup.shutdown().await;
        return;
    }
    wait_for(&sup, "hog to be OOM-killed", |s| {
        s.status("hog")
            .is_some_and(|st| st.reason.contains("out-of-memory"))
    })
    .await;
    let status = sup.status("hog").unwrap();
    assert!(
        status.reason.contains("32768 KiB"),
        "the cause names the limit: {status:?}"
    );
    let errored = loop {
        let change = changes.recv().await.unwrap();
        if change.name == "hog" && change.new == State::Errored {
            break change;
        }
    };
    assert_eq!(errored.status_code, "RUN_ERROR", "{errored:?}");
    let log = std::fs::read_to_string(dir.path().join("root/logs/hog.log")).unwrap();
    assert!(log.contains("out-of-memory killer"), "{log}");
    assert!(sup.resource_usage("hog").unwrap().oom_kills >= 1);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinner_is_held_to_its_quota_until_a_deployment_lifts_it() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(&dir);
    let mut spec = ComponentSpec::new("spin", "1.0.0", run_step("while :; do :; done"));
    spec.resource_limits = ResourceLimits {
        cpus: Some(0.1),
        pids: Some(64),
        ..Default::default()
    };
    sup.reconcile(vec![spec.clone()], &BTreeSet::new())
        .await
        .unwrap();
    wait_for(&sup, "spin RUNNING", |s| {
        s.status("spin")
            .is_some_and(|st| st.state == State::Running)
            && (s.resource_usage("spin").is_some() || s.limits_not_enforced("spin").is_some())
    })
    .await;
    if no_cgroups(&sup, "spin").await {
        sup.shutdown().await;
        return;
    }
    // Over at least 20 scheduler periods the spinner gets at most its quota (10 ms of each
    // 100 ms period), and the kernel throttled it: both read from cpu.stat, not from a clock.
    let before = sup.resource_usage("spin").unwrap();
    wait_for(&sup, "20 periods", |s| {
        s.resource_usage("spin").unwrap().nr_periods >= before.nr_periods + 20
    })
    .await;
    let after = sup.resource_usage("spin").unwrap();
    let periods = after.nr_periods - before.nr_periods;
    let used = after.cpu_usage_usec - before.cpu_usage_usec;
    assert!(
        after.nr_throttled > before.nr_throttled,
        "throttled: {before:?} → {after:?}"
    );
    // One period of slack for the periods at either end of the sample.
    assert!(
        used <= (periods + 2) * 10_000 + 5_000,
        "{used} µs of CPU in {periods} periods of 10 ms quota"
    );

    // A later deployment without limits lifts them on the running processes (no restart).
    spec.resource_limits = ResourceLimits::default();
    sup.reconcile(vec![spec], &BTreeSet::new()).await.unwrap();
    let lifted = sup.resource_usage("spin").unwrap();
    wait_for(&sup, "10 more periods", |s| {
        s.resource_usage("spin").unwrap().nr_periods >= lifted.nr_periods + 10
            || s.resource_usage("spin").unwrap().cpu_usage_usec >= lifted.cpu_usage_usec + 300_000
    })
    .await;
    let later = sup.resource_usage("spin").unwrap();
    assert_eq!(
        later.nr_throttled, lifted.nr_throttled,
        "no throttling once the quota is lifted: {lifted:?} → {later:?}"
    );
    assert!(sup.limits_not_enforced("spin").is_none());
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_left_its_group_dies_with_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(&dir);
    let pidfile = dir.path().join("escaped.pid");
    // `setsid` puts the sleeper in a session and process group of its own: only the cgroup
    // still ties it to the component.
    let script = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 600' & sleep 600",
        pidfile.display()
    );
    let mut spec = ComponentSpec::new("escape", "1.0.0", run_step(&script));
    spec.resource_limits.pids = Some(1000);
    sup.reconcile(vec![spec], &BTreeSet::new()).await.unwrap();
    wait_for(&sup, "the escaped pid", |_| {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.trim().parse::<i32>().is_ok())
    })
    .await;
    if no_cgroups(&sup, "escape").await {
        sup.shutdown().await;
        return;
    }
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    sup.stop("escape").await.unwrap();
    wait_for(&sup, "the escaped process to be gone", |_| {
        // A zombie is gone too: it no longer runs.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.split(") ")
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    })
    .await;
    sup.shutdown().await;
}
