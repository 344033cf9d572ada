//! A component name is a folder under `work/`: a spec whose name is not a component name must
//! not get a working directory, whoever built the spec.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lichen_recipe::{Lifecycle, Step};
use lichen_supervisor::{ComponentSpec, EnvProvider, State, Supervisor, SupervisorConfig};

struct NoEnv;

impl EnvProvider for NoEnv {
    fn component_env(&self, _: &str) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

#[tokio::test]
async fn a_dot_dot_component_gets_no_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sup = Supervisor::new(SupervisorConfig::new(&root), Arc::new(NoEnv));
    // Relative to its working directory: `work/..` would be the core root.
    let lifecycle = Lifecycle {
        run: Some(Step {
            script: "touch planted".into(),
            requires_privilege: false,
            skip_if: None,
            timeout: None,
            setenv: BTreeMap::new(),
        }),
        ..Lifecycle::default()
    };
    sup.reconcile(
        vec![ComponentSpec::new("..", "1.0.0", lifecycle)],
        &BTreeSet::new(),
    )
    .await
    .unwrap();
    let mut changes = sup.subscribe();
    for _ in 0..3000 {
        let state = sup.status("..").map(|s| s.state);
        if matches!(state, Some(State::Broken | State::Finished)) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), changes.recv()).await;
    }
    let status = sup.status("..").unwrap();
    assert!(!root.join("planted").exists(), "{status:?}");
    assert_eq!(status.state, State::Broken, "{status:?}");
    sup.shutdown().await;
}
