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
