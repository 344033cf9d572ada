//! A SIGKILLed step process that cannot die at once — stuck in the kernel, as a process under
//! memory reclaim or on a hung file system can be — is waited for: a stop returns only once it is
//! gone. The cgroup v1 freezer makes such a process on demand (a frozen task holds a pending SIGKILL
//! until it is thawed), so this test needs root and a v1 `freezer` hierarchy; elsewhere it is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lichen_recipe::{Lifecycle, Step};
use lichen_supervisor::{ComponentSpec, EnvProvider, Supervisor, SupervisorConfig};

struct NoEnv;

impl EnvProvider for NoEnv {
    fn component_env(&self, _: &str) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// A fresh cgroup in the v1 freezer hierarchy, removed on drop (after thawing it).
struct Freezer(PathBuf);

impl Freezer {
    fn create() -> Option<Freezer> {
        let base = PathBuf::from("/sys/fs/cgroup/freezer");
        if !base.join("cgroup.procs").exists() {
            return None;
        }
        let dir = base.join(format!("lichen-stuck-test-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        Some(Freezer(dir))
    }

    fn freeze(&self, pid: i32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
        std::fs::write(self.0.join("freezer.state"), "FROZEN").unwrap();
    }

    fn thaw(dir: &std::path::Path) {
        let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        Freezer::thaw(&self.0);
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Live processes whose command line is exactly `sleep <marker>`.
fn sleeping(marker: &str) -> Vec<i32> {
    let wanted = format!("sleep\0{marker}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_none_or(|s| s == "Z");
            !zombie
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c == wanted.as_bytes())
        })
        .collect()
}

/// Whether `pid` has a SIGKILL pending (it was killed but has not died yet).
fn sigkill_pending(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().any(|l| {
        (l.starts_with("ShdPnd:") || l.starts_with("SigPnd:"))
            && u64::from_str_radix(l.split_whitespace().nth(1).unwrap_or("0"), 16)
                .is_ok_and(|mask| mask & (1 << (libc::SIGKILL - 1)) != 0)
    })
}

#[tokio::test]
async fn stop_returns_only_once_a_killed_step_that_dies_late_is_gone() {
    let Some(freezer) = Freezer::create() else {
        eprintln!("skipped: needs root and a cgroup v1 freezer hierarchy");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::new(
        SupervisorConfig::new(dir.path().join("root")),
        Arc::new(NoEnv),
    );
    let lifecycle = Lifecycle {
        install: Some(Step {
            // Ignoring SIGTERM survives exec: only the SIGKILL after the grace period ends it.
            script: "trap '' TERM; exec sleep 100339".into(),
            requires_privilege: false,
            skip_if: None,
            timeout: None,
            setenv: BTreeMap::new(),
        }),
        ..Lifecycle::default()
    };
    sup.reconcile(
        vec![ComponentSpec::new("late", "1.0.0", lifecycle)],
        &BTreeSet::new(),
    )
    .await
    .unwrap();
    let mut pid = None;
    for _ in 0..3000 {
        if let Some(p) = sleeping("100339").first() {
            pid = Some(*p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = pid.expect("the install step runs");
    freezer.freeze(pid);
    // Thawed well after the SIGKILL (which follows SIGTERM's grace): a stop that gives up a few
    // seconds after SIGKILL would return while the process still lives.
    let frozen = freezer.0.clone();
    let thawer = std::thread::spawn(move || {
        while !sigkill_pending(pid) && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(8));
        Freezer::thaw(&frozen);
    });
    sup.stop("late").await.unwrap();
    assert!(
        sleeping("100339").is_empty(),
        "stop returned while its killed install step was still alive"
    );
    thawer.join().unwrap();
    sup.shutdown().await;
}
