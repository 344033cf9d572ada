//! The store's files are its owner's alone, whatever the process umask, and an earlier version's
//! readable files are tightened when the store opens.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lichen_config::{ConfigStore, now_ms};
use serde_json::json;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn log_effective_config_and_directory_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    let store = ConfigStore::open(&dir).unwrap();
    store
        .set(
            &["services", "a", "configuration", "secret"],
            json!("s3cr3t"),
            now_ms(),
        )
        .unwrap();
    let effective = dir.join("effectiveConfig.yaml");
    store.write_effective_config(&effective).unwrap();
    assert_eq!(mode(&dir), 0o700, "configuration directory");
    assert_eq!(mode(&dir.join("config.tlog")), 0o600, "config.tlog");
    assert_eq!(mode(&effective), 0o600, "effectiveConfig.yaml");
    drop(store);

    for (p, m) in [(&dir, 0o755), (&dir.join("config.tlog"), 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let store = ConfigStore::open(&dir).unwrap();
    assert_eq!(
        store.get(&["services", "a", "configuration", "secret"]),
        Some(json!("s3cr3t"))
    );
    assert_eq!(mode(&dir), 0o700, "directory tightened at open");
    assert_eq!(
        mode(&dir.join("config.tlog")),
        0o600,
        "log tightened at open"
    );
}
