//! `lichen core install` / `uninstall` and the loader, in a private mount and PID namespace
//! (`unshare`): /etc is a tmpfs copy there, so users, groups and the unit never reach the host.

use super::support::bin;
use std::process::{Command, Stdio};

/// `unshare --mount --pid` works here (root, or a kernel that lets us), else the test is skipped.
pub fn namespaces_allowed() -> bool {
    rustix::process::geteuid().is_root()
        && Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "true",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs one of tests/e2e's namespace scripts with the binary under test; returns its output.
pub fn run_script(script: &str, args: &[&str]) -> (bool, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/e2e")
        .join(script);
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "bash",
        ])
        .arg(path)
        .arg(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn install_runs_a_component_as_ggc_user_upgrades_in_place_and_uninstalls_without_a_trace() {
    if !namespaces_allowed() {
        eprintln!("skipped: needs root and `unshare --mount --pid` on this machine");
        return;
    }
    let (ok, out) = run_script("install_ns.sh", &[]);
    assert!(ok && out.contains("ALL OK"), "{out}");
}

#[test]
fn a_nucleus_deployment_switches_cores_falls_back_from_a_broken_one_and_survives_kill_9() {
    if !namespaces_allowed() {
        eprintln!("skipped: needs root and `unshare --mount --pid` on this machine");
        return;
    }
    let (ok, out) = run_script("core_update_ns.sh", &[]);
    assert!(ok && out.contains("ALL OK"), "{out}");
}

#[test]
fn a_switched_core_that_cannot_reach_the_cloud_in_time_is_rolled_back_and_the_old_one_says_why() {
    if !namespaces_allowed() {
        eprintln!("skipped: needs root and `unshare --mount --pid` on this machine");
        return;
    }
    let (ok, out) = run_script("core_unreachable_ns.sh", &[]);
    assert!(ok && out.contains("ALL OK"), "{out}");
}

#[test]
fn the_debian_package_installs_upgrades_in_place_keeping_the_root_and_purges_cleanly() {
    let has_dpkg = Command::new("dpkg-deb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !namespaces_allowed() || !has_dpkg {
        eprintln!("skipped: needs root, `unshare --mount --pid` and dpkg on this machine");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-deb");
    let debs: Vec<String> = ["0.0.1~e2e1", "0.0.1~e2e2"]
        .iter()
        .map(|v| {
            let built = Command::new(&script)
                .arg(bin())
                .arg(out.path())
                .env("VERSION", v)
                // A debug binary: compressing it would be most of the test's time.
                .env("COMPRESS", "none")
                .output()
                .expect("running scripts/build-deb");
            assert!(
                built.status.success(),
                "{}",
                String::from_utf8_lossy(&built.stderr)
            );
            String::from_utf8_lossy(&built.stdout).trim().to_string()
        })
        .collect();
    let (ok, text) = run_script("deb_ns.sh", &[&debs[0], &debs[1]]);
    assert!(ok && text.contains("ALL OK"), "{text}");
}

#[test]
fn a_nucleus_update_without_the_loader_fails_clearly_and_changes_nothing() {
    use super::support::{Core, Workspace};
    let ws = Workspace::new();
    ws.recipe(
        "n.yaml",
        "RecipeFormatVersion: '2020-01-25'\nComponentName: aws.greengrass.Nucleus\nComponentVersion: '2.14.1'\nComponentType: aws.greengrass.nucleus\nManifests:\n  - Platform:\n      os: linux\n    Artifacts:\n      - Uri: s3://fleet/lichen\n",
    );
    ws.artifact("aws.greengrass.Nucleus", "2.14.1", "lichen", b"#!/bin/sh\n");
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&[
        "--recipe-dir",
        &ws.recipes(),
        "--artifact-dir",
        &ws.artifacts(),
        "--merge",
        "aws.greengrass.Nucleus=2.14.1",
    ]);
    assert!(!ok, "{d}");
    let text = d.to_string();
    assert!(text.contains("lichen core install"), "{text}");
    assert!(text.contains("FAILED_NO_STATE_CHANGE"), "{text}");
    let cfg = core.ok(&["core", "effective-config"]);
    assert!(!cfg.contains("2.14.1"), "{cfg}");
}
