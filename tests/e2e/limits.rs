//! `systemResourceLimits` through a real core: a deployment sets them, `component details` shows
//! the cgroup's use, an OOM kill is reported, and a later deployment lifts them.

use crate::support::*;
use serde_json::Value;

fn details(core: &Core, name: &str) -> Value {
    let out = core.ok(&["component", "details", name, "--json"]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn deployed_limits_confine_report_and_lift() {
    let ws = Workspace::new();
    ws.recipe(
        "spin.yaml",
        &recipe("test.Spin", "1.0.0", "", "Run: while :; do :; done"),
    );
    ws.recipe(
        "hog.yaml",
        &recipe(
            "test.Hog",
            "1.0.0",
            "",
            "Run: python3 -c 'b = b\"x\" * (256 << 20); import time; time.sleep(600)'",
        ),
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&[
        "--recipe-dir",
        &ws.recipes(),
        "--merge",
        "test.Spin=1.0.0",
        "--run-with",
        r#"test.Spin:systemResourceLimits={"cpus":0.1,"memory":65536,"pids":32}"#,
    ]);
    assert!(ok, "{d}");
    core.wait_state("test.Spin", "RUNNING");
    let first = details(&core, "test.Spin");
    let Some(usage) = first.get("resourceUsage") else {
        // No cgroups for this core: the deployment and the details say so, and it still runs.
        let why = first["resourceLimitsNotEnforced"]
            .as_str()
            .unwrap_or_default();
        assert!(why.contains("not enforced"), "{first}");
        assert!(d.to_string().contains("not enforced"), "{d}");
        eprintln!("cgroups unavailable, limits not checked: {why}");
        return;
    };
    assert!(usage["processes"].as_u64().unwrap() >= 1, "{first}");
    // Throttled by the quota (cpu.stat's throttled periods grow).
    eventually(60, "throttling", || {
        details(&core, "test.Spin")["resourceUsage"]["cpuThrottledPeriods"]
            .as_u64()
            .unwrap()
            > 5
    });
    let text = core.ok(&["component", "details", "test.Spin"]);
    assert!(
        text.contains("Memory: ") && text.contains("CPU: "),
        "{text}"
    );

    // Naming the component with no limits lifts them without a restart.
    let (ok, d) = core.deploy(&[
        "--merge",
        "test.Spin=1.0.0",
        "--run-with",
        "test.Spin:systemResourceLimits={}",
    ]);
    assert!(ok, "{d}");
    let lifted = details(&core, "test.Spin")["resourceUsage"].clone();
    eventually(60, "CPU use after the lift", || {
        details(&core, "test.Spin")["resourceUsage"]["cpuUsageMicros"]
            .as_u64()
            .unwrap()
            > lifted["cpuUsageMicros"].as_u64().unwrap() + 500_000
    });
    let later = details(&core, "test.Spin")["resourceUsage"].clone();
    assert_eq!(
        later["cpuThrottledPeriods"], lifted["cpuThrottledPeriods"],
        "{lifted} → {later}"
    );

    // A memory hog under a 32 MiB limit is killed and reported with the cause.
    let (_, d) = core.deploy(&[
        "--recipe-dir",
        &ws.recipes(),
        "--merge",
        "test.Hog=1.0.0",
        "--run-with",
        r#"test.Hog:systemResourceLimits={"memory":32768}"#,
    ]);
    eventually(60, "the OOM kill in the log", || {
        core.log("test.Hog").contains("out-of-memory killer")
    });
    let log = core.log("test.Hog");
    assert!(log.contains("32768 KiB"), "{log}\n{d}");
    assert!(log.contains("statusCode=RUN_ERROR"), "{log}");
    assert!(
        details(&core, "test.Hog")["resourceUsage"]["oomKills"]
            .as_u64()
            .unwrap()
            >= 1
    );
    core.terminate();
}

#[test]
fn limits_that_cannot_be_enforced_are_reported_and_the_component_still_runs() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    // As root every cgroup can be made: the unprivileged case runs the core as `nobody`.
    if !rustix::process::geteuid().is_root()
        || Command::new("setpriv").arg("--help").output().is_err()
    {
        eprintln!("needs root and setpriv to run a core as nobody; not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = base.join("lichen");
    std::fs::copy(bin(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let recipes = base.join("recipes");
    std::fs::create_dir(&recipes).unwrap();
    std::fs::write(
        recipes.join("sleeper.yaml"),
        recipe("test.Sleeper", "1.0.0", "", "Run: sleep 600"),
    )
    .unwrap();
    std::fs::set_permissions(&recipes, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.join("root");
    std::fs::create_dir(&root).unwrap();
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&nobody.stdout)
        .trim()
        .parse()
        .unwrap();
    std::os::unix::fs::chown(&root, Some(uid), None).unwrap();
    let core = Core::start_as_nobody(&root, &copy);
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&copy)
            .args(args)
            .arg("--root")
            .arg(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let d = as_nobody(&[
        "deployment",
        "create",
        "--wait",
        "--json",
        "--recipe-dir",
        recipes.to_str().unwrap(),
        "--merge",
        "test.Sleeper=1.0.0",
        "--run-with",
        r#"test.Sleeper:systemResourceLimits={"memory":65536}"#,
    ]);
    assert_eq!(d["status"], "SUCCEEDED", "{d}");
    let warnings = d["deploymentStatusDetails"]["warnings"].to_string();
    assert!(warnings.contains("test.Sleeper are not enforced"), "{d}");
    let details = as_nobody(&["component", "details", "test.Sleeper", "--json"]);
    assert_eq!(details["state"], "RUNNING", "{details}");
    assert!(
        details["resourceLimitsNotEnforced"].is_string(),
        "{details}"
    );
    assert!(details.get("resourceUsage").is_none(), "{details}");
    core.terminate();
}
