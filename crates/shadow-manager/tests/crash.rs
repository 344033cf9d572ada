//! Crash safety of the shadow store: a child process acknowledges updates (prints the version
//! once `update` returned) and is killed with SIGKILL mid-stream; every acknowledged update, and
//! its sync-queue entry, is there when the store is opened again.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use lichen_shadow_manager::{Origin, ShadowConfig, Shadows};
use serde_json::json;

const CHILD_ENV: &str = "LICHEN_SHADOW_CRASH_CHILD_DIR";

fn synced_config() -> ShadowConfig {
    ShadowConfig::from_component_config(
        &json!({"synchronize": {"coreThing": {"classic": true, "namedShadows": ["n"]}}}),
        "core",
    )
    .unwrap()
}

/// The child: updates the classic shadow and a named one as fast as it can, printing each
/// acknowledged version. Does nothing unless started by the parent test.
#[tokio::test]
async fn crash_child_writes_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let shadows = Shadows::open(std::path::Path::new(&dir), lichen_bus::Bus::new()).unwrap();
    shadows.set_config(synced_config());
    for i in 0u64.. {
        let body = json!({"state": {"reported": {"i": i, "pad": "x".repeat(200)}}}).to_string();
        let shadow = if i % 2 == 0 { "" } else { "n" };
        let u = shadows
            .update("core", shadow, body.into_bytes(), Origin::Local)
            .await
            .unwrap();
        println!("ACK {shadow} {} {i}", u.document["version"]);
    }
}

#[test]
fn kill_9_loses_no_acknowledged_update() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_writes_until_killed", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut last: std::collections::HashMap<String, (u64, u64)> = Default::default();
    let mut acks = 0;
    for line in out.lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let parts: Vec<&str> = rest.split(' ').collect();
        let (shadow, version, i) = (
            parts[0].to_string(),
            parts[1].parse().unwrap(),
            parts[2].parse().unwrap(),
        );
        last.insert(shadow, (version, i));
        acks += 1;
        if acks == 150 {
            // Killed mid-stream: more updates are in flight.
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    assert_eq!(acks, 150, "the child stopped before it was killed");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let shadows = Shadows::open(dir.path(), lichen_bus::Bus::new()).unwrap();
        for (shadow, (version, i)) in &last {
            let doc = shadows.get("core", shadow).await.unwrap();
            let stored = doc["version"].as_u64().unwrap();
            assert!(
                stored >= *version,
                "{shadow:?}: version {stored} on disk, {version} acknowledged"
            );
            assert!(doc["state"]["reported"]["i"].as_u64().unwrap() >= *i);
        }
        let queued = shadows.queued().await.unwrap();
        assert!(queued.contains(&("core".into(), "".into())), "{queued:?}");
        assert!(queued.contains(&("core".into(), "n".into())), "{queued:?}");
        // And the store takes writes again.
        shadows
            .update(
                "core",
                "",
                br#"{"state":{"reported":{"after":1}}}"#.to_vec(),
                Origin::Local,
            )
            .await
            .unwrap();
    });
}
