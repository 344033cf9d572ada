//! A real core in a temp root: persistent ConfigStore, real Supervisor running shell scripts.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lichen_config::ConfigStore;
use lichen_deploy::{
    DeploymentEngine, DeploymentRecord, DeploymentStatus, EngineConfig, LocalDeploymentRequest,
    NoHooks,
};
use lichen_recipe::Platform;
use lichen_supervisor::{EnvProvider, State, Supervisor, SupervisorConfig};

pub struct NoEnv;

impl EnvProvider for NoEnv {
    fn component_env(&self, _: &str) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

pub struct Core {
    pub root: PathBuf,
    pub config: ConfigStore,
    pub supervisor: Supervisor,
    pub engine: DeploymentEngine,
}

pub const NUCLEUS: &str = "aws.greengrass.Nucleus";

/// A Run script that keeps its component running.
pub const SLEEP: &str = "exec sleep 1000";

pub fn engine_config(root: &Path) -> EngineConfig {
    let mut cfg = EngineConfig::new(
        root.to_path_buf(),
        Platform::parse("os=linux,architecture=amd64").unwrap(),
    );
    cfg.thing_name = "test-thing".into();
    cfg.settle_timeout = Duration::from_secs(60);
    cfg.builtins.insert(NUCLEUS.into(), "2.14.0".into());
    cfg
}

impl Core {
    /// Opens (or reopens) a core on `root` without starting the engine.
    pub fn open(root: &Path) -> Core {
        Core::open_with(engine_config(root))
    }

    pub fn open_with(cfg: EngineConfig) -> Core {
        let root = cfg.root.clone();
        let config = ConfigStore::open(&root.join("config")).unwrap();
        let supervisor = Supervisor::new(SupervisorConfig::new(&root), Arc::new(NoEnv));
        let engine =
            DeploymentEngine::new(cfg, config.clone(), supervisor.clone(), Arc::new(NoHooks))
                .unwrap();
        Core {
            root,
            config,
            supervisor,
            engine,
        }
    }

    pub async fn start(root: &Path) -> Core {
        let core = Core::open(root);
        core.engine.start().await.unwrap();
        core
    }

    /// Starts a core on `<base>/root` and deploys `name` 1.0.0 (Run step `script`, extra recipe
    /// YAML `top`) from new inputs labelled `label`, which are returned for later requests.
    pub async fn start_deployed(
        base: &Path,
        label: &str,
        name: &str,
        top: &str,
        script: &str,
    ) -> (Core, Inputs) {
        let core = Core::start(&base.join("root")).await;
        let inputs = Inputs::new(base, label);
        inputs.run_recipe(name, "1.0.0", top, script);
        let record = core.deploy(inputs.request(&[(name, "1.0.0")])).await;
        assert_eq!(
            record.status,
            DeploymentStatus::Succeeded,
            "{}",
            record.failure_cause
        );
        (core, inputs)
    }

    pub async fn deploy(&self, req: LocalDeploymentRequest) -> DeploymentRecord {
        let id = self.engine.submit_local(req).unwrap();
        self.engine.wait_idle().await;
        self.engine.status(&id).unwrap()
    }

    pub fn state(&self, name: &str) -> Option<State> {
        self.supervisor.status(name).map(|s| s.state)
    }

    pub fn version(&self, name: &str) -> Option<String> {
        self.config
            .get(&["services", name, "version"])
            .and_then(|v| v.as_str().map(str::to_string))
    }

    /// Stops the engine's worker and every component process.
    pub async fn stop(self) {
        self.engine.shutdown();
        self.supervisor.shutdown().await;
    }
}

/// A recipe directory and an artifacts directory next to the root.
pub struct Inputs {
    pub recipes: PathBuf,
    pub artifacts: PathBuf,
}

impl Inputs {
    pub fn new(base: &Path, label: &str) -> Inputs {
        let recipes = base.join(format!("in-{label}/recipes"));
        let artifacts = base.join(format!("in-{label}/artifacts"));
        std::fs::create_dir_all(&recipes).unwrap();
        std::fs::create_dir_all(&artifacts).unwrap();
        Inputs { recipes, artifacts }
    }

    /// Writes a YAML recipe with the given extra top-level YAML and the manifest's lifecycle /
    /// artifacts YAML (indented by the caller as a manifest body).
    pub fn recipe(&self, name: &str, version: &str, top: &str, manifest: &str) -> PathBuf {
        let text = format!(
            "RecipeFormatVersion: '2020-01-25'\nComponentName: {name}\nComponentVersion: '{version}'\n{top}\nManifests:\n  - Platform:\n      os: linux\n{manifest}\n"
        );
        let path = self.recipes.join(format!("{name}-{version}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A recipe whose Run step is `script` (YAML single-quoted).
    pub fn run_recipe(&self, name: &str, version: &str, top: &str, script: &str) -> PathBuf {
        let script = script.replace('\'', "''");
        self.recipe(
            name,
            version,
            top,
            &format!("    Lifecycle:\n      Run: '{script}'"),
        )
    }

    pub fn artifact(&self, name: &str, version: &str, file: &str, content: &[u8]) -> PathBuf {
        let dir = self.artifacts.join(name).join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(file);
        std::fs::write(&path, content).unwrap();
        path
    }

    pub fn request(&self, roots: &[(&str, &str)]) -> LocalDeploymentRequest {
        LocalDeploymentRequest {
            root_components_to_add: roots
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            recipe_directory_path: Some(self.recipes.clone()),
            artifacts_directory_path: Some(self.artifacts.clone()),
            ..Default::default()
        }
    }
}

/// Polls until `check` holds; panics with `what` after a generous bound (not a timing assertion:
/// only a guard against hanging forever).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
