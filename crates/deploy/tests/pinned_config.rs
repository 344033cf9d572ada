//! A deployment's configuration takes effect even over configuration stamped in the future (as
//! a component could once write it through UpdateConfiguration, and as older logs still hold).

mod common;

use common::{Core, eventually, read};
use lichen_deploy::{ConfigurationUpdate, DeploymentStatus};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_merge_wins_over_configuration_pinned_in_the_future() {
    let tmp = tempfile::tempdir().unwrap();
    let (core, inputs) = Core::start_deployed(
        tmp.path(),
        "a",
        "com.example.Cfg",
        "ComponentConfiguration:\n  DefaultConfiguration:\n    message: default",
        "echo {configuration:/message} > {work:path}/msg.txt",
    )
    .await;
    let out = core.root.join("work/com.example.Cfg/msg.txt");
    eventually("default message", || read(&out).trim() == "default").await;

    // Pinned a year ahead, as a component's future-dated UpdateConfiguration left it.
    let year_ms = 365 * 86_400_000;
    core.config
        .merge(
            &["services", "com.example.Cfg", "configuration"],
            json!({"message": "pinned", "mine": 1}),
            lichen_config::now_ms() + year_ms,
        )
        .unwrap();

    let mut req = inputs.request(&[("com.example.Cfg", "1.0.0")]);
    req.configuration_updates.insert(
        "com.example.Cfg".into(),
        ConfigurationUpdate {
            merge: Some(json!({"message": "deployed"})),
            reset: vec![],
        },
    );
    let record = core.deploy(req).await;
    let configuration = core.engine.component_configuration("com.example.Cfg");
    assert_eq!(
        (record.status, configuration),
        (
            DeploymentStatus::Succeeded,
            Some(json!({"message": "deployed", "mine": 1}))
        ),
        "{}",
        record.failure_cause
    );
    eventually("deployed message", || read(&out).trim() == "deployed").await;
    // The deployment's write is stamped with the core's clock, not the pinned future.
    let ts = core
        .config
        .timestamp(&["services", "com.example.Cfg", "configuration", "message"])
        .unwrap();
    assert!(ts <= lichen_config::now_ms(), "stamped {ts}");
    core.stop().await;
}
