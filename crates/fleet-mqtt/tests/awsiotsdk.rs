//! The unmodified AWS IoT Device SDK for Python (awsiotsdk, MQTT 3 and MQTT 5 clients) against
//! the endpoint: it connects with a registered certificate and round-trips a message under its
//! policy, and is refused with a revoked certificate, with a client id it may not use, and when
//! publishing outside its policy. Uses the project's venv (`.venv`, made by `./scripts/test`).

mod support;

use lichen_fleet_mqtt::CertificateStatus::{Active, Revoked};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use support::*;

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run ./scripts/test once (it creates the venv from tests/requirements.txt)",
        venv.display()
    );
    venv
}

struct Device<'a> {
    fleet: &'a Fleet,
    dir: tempfile::TempDir,
}

impl<'a> Device<'a> {
    fn new(fleet: &'a Fleet, creds: &Credentials) -> Device<'a> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), fleet.ca.pem()).unwrap();
        std::fs::write(dir.path().join("device.pem"), &creds.pem).unwrap();
        std::fs::write(dir.path().join("device.key"), &creds.key_pem).unwrap();
        Device { fleet, dir }
    }

    /// Runs one SDK session; its JSON report.
    async fn run(&self, version: &str, client_id: &str, extra: &[&str]) -> Value {
        let d = self.dir.path();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/awsiotsdk_device.py");
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(script)
            .args(["--host", "localhost"])
            .args(["--port", &self.fleet.addr.port().to_string()])
            .arg("--ca")
            .arg(d.join("ca.pem"))
            .arg("--cert")
            .arg(d.join("device.pem"))
            .arg("--key")
            .arg(d.join("device.key"))
            .args(["--client-id", client_id, "--version", version])
            .args(extra)
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
            .await
            .expect("the SDK session ends")
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "SDK session failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("awsiotsdk MQTT {version} as {client_id}: {}", stdout.trim());
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("SDK report {stdout:?}: {e}"))
    }
}

#[tokio::test]
async fn awsiotsdk_round_trips_under_its_policy() {
    let fleet = Fleet::start().await;
    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    let device = Device::new(&fleet, &creds);
    let args = [
        "--subscribe",
        "dev/door-1/#",
        "--publish",
        "dev/door-1/t",
        "--payload",
        "21.5",
    ];
    let v3 = device.run("3", "door-1", &args).await;
    assert_eq!(v3["connected"], true, "{v3}");
    assert_eq!(v3["suback"], 1, "{v3}");
    assert_eq!(
        v3["received"],
        serde_json::json!(["dev/door-1/t", "21.5"]),
        "{v3}"
    );
    let v5 = device.run("5", "door-1", &args).await;
    assert_eq!(v5["connected"], true, "{v5}");
    assert_eq!(v5["suback"], serde_json::json!([1]), "{v5}");
    assert_eq!(v5["puback"], 0, "{v5}");
    assert_eq!(
        v5["received"],
        serde_json::json!(["dev/door-1/t", "21.5"]),
        "{v5}"
    );
}

#[tokio::test]
async fn awsiotsdk_is_refused_a_revoked_certificate_and_a_foreign_client_id() {
    let fleet = Fleet::start().await;
    let revoked = fleet.register("old", Revoked, &["door-1"], vec![thing_policy()]);
    let old = Device::new(&fleet, &revoked);
    let v3 = old.run("3", "door-1", &[]).await;
    assert_eq!(v3["connected"], false, "{v3}");
    let v5 = old.run("5", "door-1", &[]).await;
    assert_eq!(v5["connected"], false, "{v5}");
    assert_eq!(v5["reason"], 0x87, "{v5}");

    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    let device = Device::new(&fleet, &creds);
    let v3 = device.run("3", "door-2", &[]).await;
    assert_eq!(v3["connected"], false, "{v3}");
    let v5 = device.run("5", "door-2", &[]).await;
    assert_eq!(v5["reason"], 0x87, "{v5}");
}

#[tokio::test]
async fn awsiotsdk_publishing_outside_its_policy_is_refused() {
    let fleet = Fleet::start().await;
    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    let device = Device::new(&fleet, &creds);
    let args = ["--publish", "dev/door-2/t"];
    // MQTT 3.1.1: no PUBACK, the connection is closed.
    let v3 = device.run("3", "door-1", &args).await;
    assert_eq!(v3["connected"], true, "{v3}");
    assert_eq!(v3["puback"], false, "{v3}");
    assert_eq!(v3["interrupted"], true, "{v3}");
    // MQTT 5: PUBACK "not authorized".
    let v5 = device.run("5", "door-1", &args).await;
    assert_eq!(v5["puback"], 0x87, "{v5}");
}
