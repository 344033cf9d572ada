//! Built-ins check what a deployment will give them before its commit
//! ([`DeploymentHooks::check_builtin`]): a refusal fails the deployment with nothing changed.

mod common;

use common::{Core, Inputs, NoEnv, SLEEP, engine_config};
use lichen_config::ConfigStore;
use lichen_deploy::{
    BoxFuture, ConfigurationUpdate, DeploymentEngine, DeploymentHooks, DeploymentStatus,
    DetailedStatus,
};
use lichen_supervisor::{Supervisor, SupervisorConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const BUILTIN: &str = "test.Builtin";

/// What one check was given: the built-in, its configuration, the new set's versions.
type Asked = (String, Value, BTreeMap<String, String>);

/// Refuses any configuration with `"refuse": true`, and records what it was asked.
#[derive(Default)]
struct Checker {
    asked: Mutex<Vec<Asked>>,
}

impl DeploymentHooks for Checker {
    fn check_builtin(
        &self,
        component: &str,
        configuration: &Value,
        versions: &BTreeMap<String, String>,
    ) -> BoxFuture<'_, Result<(), String>> {
        self.asked.lock().unwrap().push((
            component.to_string(),
            configuration.clone(),
            versions.clone(),
        ));
        let refuse = configuration.get("refuse") == Some(&json!(true));
        Box::pin(async move {
            if refuse {
                Err("model m does not load: bad file".to_string())
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builtin_that_refuses_fails_the_deployment_before_its_commit() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let mut cfg = engine_config(&root);
    cfg.builtins.insert(BUILTIN.into(), "1.0.0".into());
    let config = ConfigStore::open(&root.join("config")).unwrap();
    let supervisor = Supervisor::new(SupervisorConfig::new(&root), Arc::new(NoEnv));
    let checker = Arc::new(Checker::default());
    let engine =
        DeploymentEngine::new(cfg, config.clone(), supervisor.clone(), checker.clone()).unwrap();
    engine.start().await.unwrap();
    let core = Core {
        root,
        config,
        supervisor,
        engine,
    };
    let inputs = Inputs::new(base.path(), "a");
    let dep = format!(
        "ComponentDependencies:\n  {BUILTIN}:\n    VersionRequirement: '>=1.0.0'\n    DependencyType: HARD"
    );
    inputs.run_recipe("com.example.App", "1.0.0", &dep, SLEEP);
    let record = core
        .deploy(inputs.request(&[("com.example.App", "1.0.0")]))
        .await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    {
        let asked = checker.asked.lock().unwrap();
        assert_eq!(asked.len(), 1, "{asked:?}");
        let (name, _, versions) = &asked[0];
        assert_eq!(name, BUILTIN);
        // The whole new set, the supervised component included.
        assert_eq!(
            versions.get("com.example.App").map(String::as_str),
            Some("1.0.0")
        );
        assert_eq!(versions.get(BUILTIN).map(String::as_str), Some("1.0.0"));
    }
    // Asking the built-in to take a configuration it refuses: nothing is committed.
    let mut req = inputs.request(&[(BUILTIN, "1.0.0")]);
    req.configuration_updates.insert(
        BUILTIN.into(),
        ConfigurationUpdate {
            merge: Some(json!({"refuse": true})),
            reset: vec![],
        },
    );
    let record = core.deploy(req).await;
    assert_eq!(record.status, DeploymentStatus::Failed);
    assert_eq!(
        record.detailed_status,
        Some(DetailedStatus::FailedNoStateChange)
    );
    assert!(
        record.failure_cause.contains(BUILTIN) && record.failure_cause.contains("bad file"),
        "{}",
        record.failure_cause
    );
    assert_eq!(
        core.config
            .get(&["services", BUILTIN, "configuration", "refuse"]),
        None
    );
    core.stop().await;
}
