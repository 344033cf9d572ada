//! The deployment engine of the core: component store, version resolution, the durable
//! deployment queue, apply with rollback, deployment history.
//!
//! A deployment goes: submit (validate, stage recipes, persist the record) → queue (one at a
//! time, in submission order) → resolve versions across every group's roots → fetch and verify
//! artifacts → build the new `services` entries (interpolated lifecycles, merged configuration)
//! → hooks (notify, validate) → snapshot → bootstrap → commit → reconcile the supervisor → wait
//! for RUNNING/FINISHED → success (garbage-collect the store) or failure (roll back per policy).
//!
//! `docker:` artifacts (`docker.rs`) are images in the local Docker engine: fetched by asking the
//! engine (pulled only when absent), recorded in the store by a marker file, removed from the
//! engine when garbage collection drops the last version that records them.
//!
//! ```no_run
//! # async fn demo(engine: lichen_deploy::DeploymentEngine) -> Result<(), lichen_deploy::DeployError> {
//! use lichen_deploy::LocalDeploymentRequest;
//! let mut req = LocalDeploymentRequest::default();
//! req.root_components_to_add.insert("com.example.Hello".into(), "1.0.0".into());
//! req.recipe_directory_path = Some("/tmp/recipes".into());
//! let id = engine.submit_local(req)?;
//! engine.wait_idle().await;
//! println!("{:?}", engine.status(&id).map(|r| r.status));
//! # Ok(()) }
//! ```
//!
//! Architecture invariant: the committed configuration always holds one whole `services` set:
//! every commit and every rollback is a single atomic `ConfigStore::apply` batch that also
//! carries the group → root components map and the id of the committing deployment.
//!
//! Architecture invariant: a deployment that fails before its commit leaves the running set
//! and the configuration untouched (FAILED_NO_STATE_CHANGE).
//!
//! Architecture invariant: every record, recipe and artifact write is temp file + fsync +
//! rename; a record IN_PROGRESS at start-up is resumed (not yet committed ⇒ run again from the
//! start; committed ⇒ finish waiting or roll back per its policy).
//!
//! Architecture invariant: archives are extracted only by [`unarchive_zip`]: no symbolic links,
//! no entry outside the extraction folder, every path opened relative to its parent folder with
//! `O_NOFOLLOW` (nothing is written through a link), inflated bytes and entries capped by
//! [`ArchiveLimits`]. An artifact about to be downloaded needs a recipe `Digest`; only a local
//! deployment's own files may come without one.
//!
//! Cloud deployments ([`parse_document`] → [`DeploymentEngine::submit_cloud`]) take the same
//! queue: the document replaces its group's roots, components are negotiated with the cloud
//! through a [`CloudResolver`] (a LOCAL group's stored recipe still wins), recipes may have to
//! carry a trusted Ed25519 signature ([`SigningPolicy`]), and `s3` artifacts come from a fetcher
//! used only for cloud deployments.
//!
//! Architecture invariant: a cloud deployment is known by one id (the job id, or the shadow
//! document's deploymentId) and submitting it again is a no-op; one whose creationTimestamp is
//! older than its group's last processed deployment is recorded FAILED and never runs.
//!
//! A deployment that moves `aws.greengrass.Nucleus` to a version other than the built-in one is a
//! core update (the kernel-update path): before its commit, [`DeploymentHooks::stage_core_update`]
//! stages the new core and the deployment waits for the restart; resumed, it asks
//! [`DeploymentHooks::core_update_outcome`] whether the new core is the one running, and fails
//! with that cause before any change when it is not.
//!
//! Architecture invariant: every wait is bounded (`settle_timeout`), so a deployment cannot
//! block the queue forever.

mod artifacts;
mod cloud;
mod docker;
mod engine;
mod error;
mod fsutil;
mod resolve;
mod store;
mod unzip;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use artifacts::{ArtifactFetcher, FetchRequest};
pub use cloud::{
    CloudDocument, CloudInfo, CloudResolver, CloudSource, ResolvedComponent,
    SUPPORTED_CAPABILITIES, SigningPolicy, group_of_arn, key_id, parse_document,
};
pub use docker::{DockerEngine, DockerFetcher, ImageRef};
pub use engine::DeploymentEngine;
pub use error::DeployError;
pub use unzip::{ArchiveLimits, unarchive_zip};

/// Group name of deployments made without a group (Greengrass CLI without `--groupId`).
pub const LOCAL_GROUP: &str = "LOCAL_DEPLOYMENT";

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub root: PathBuf,
    pub platform: lichen_recipe::Platform,
    pub thing_name: String,
    /// Deployment records kept (default 50).
    pub history_limit: usize,
    /// Bound on waiting for RUNNING/FINISHED after a commit or rollback (default 120 s).
    pub settle_timeout: Duration,
    /// Built-in component name → version: always resolvable, never supervised as processes.
    pub builtins: BTreeMap<String, String>,
}

impl EngineConfig {
    /// Defaults for everything but the root and the platform.
    pub fn new(root: PathBuf, platform: lichen_recipe::Platform) -> Self {
        EngineConfig {
            root,
            platform,
            thing_name: String::new(),
            history_limit: 50,
            settle_timeout: Duration::from_secs(120),
            builtins: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LocalDeploymentRequest {
    /// None ⇒ `LOCAL_DEPLOYMENT`; Some(g) ⇒ `thinggroup/<g>`.
    pub group_name: Option<String>,
    /// Component name → version.
    pub root_components_to_add: BTreeMap<String, String>,
    pub root_components_to_remove: Vec<String>,
    pub configuration_updates: BTreeMap<String, ConfigurationUpdate>,
    pub run_with: BTreeMap<String, RunWithInfo>,
    pub recipe_directory_path: Option<PathBuf>,
    pub artifacts_directory_path: Option<PathBuf>,
    /// Default DoNothing for local deployments (spec §6.2).
    pub failure_handling_policy: FailureHandlingPolicy,
    /// `NOTIFY_COMPONENTS`: ask subscribed components before applying (they may defer). Local
    /// deployments skip notification unless asked (Greengrass: SKIP_NOTIFY_COMPONENTS).
    #[serde(default)]
    pub component_update_policy: Option<ComponentUpdatePolicy>,
    /// Set for cloud deployments: the document replaces its group's whole root set, every root
    /// gets its RunWith from the document, and components are resolved with the cloud.
    #[serde(default)]
    pub cloud: Option<CloudInfo>,
}

/// How components hear of an update before it is applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ComponentUpdatePolicy {
    pub notify_components: bool,
    /// How long to wait for the components' answers (and the cap on one deferral round).
    pub timeout: Duration,
}

impl LocalDeploymentRequest {
    /// The deployment group this request deploys to.
    pub fn group(&self) -> String {
        if let Some(cloud) = &self.cloud {
            return cloud.group.clone();
        }
        match &self.group_name {
            None => LOCAL_GROUP.to_string(),
            Some(g) => format!("thinggroup/{g}"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConfigurationUpdate {
    pub merge: Option<serde_json::Value>,
    pub reset: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunWithInfo {
    pub posix_user: Option<String>,
    /// `systemResourceLimits` as given (`memory` KiB, `cpus`, and our `pids`, `ioWeight`);
    /// checked when the deployment is planned.
    #[serde(default)]
    pub system_resource_limits: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailureHandlingPolicy {
    Rollback,
    #[default]
    DoNothing,
}

impl FailureHandlingPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureHandlingPolicy::Rollback => "ROLLBACK",
            FailureHandlingPolicy::DoNothing => "DO_NOTHING",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeploymentStatus {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    Canceled,
}

impl DeploymentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeploymentStatus::Queued => "QUEUED",
            DeploymentStatus::InProgress => "IN_PROGRESS",
            DeploymentStatus::Succeeded => "SUCCEEDED",
            DeploymentStatus::Failed => "FAILED",
            DeploymentStatus::Canceled => "CANCELED",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            DeploymentStatus::Succeeded | DeploymentStatus::Failed | DeploymentStatus::Canceled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DetailedStatus {
    Successful,
    FailedNoStateChange,
    FailedRollbackNotRequested,
    FailedRollbackComplete,
    FailedUnableToRollback,
    Rejected,
}

impl DetailedStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            DetailedStatus::Successful => "SUCCESSFUL",
            DetailedStatus::FailedNoStateChange => "FAILED_NO_STATE_CHANGE",
            DetailedStatus::FailedRollbackNotRequested => "FAILED_ROLLBACK_NOT_REQUESTED",
            DetailedStatus::FailedRollbackComplete => "FAILED_ROLLBACK_COMPLETE",
            DetailedStatus::FailedUnableToRollback => "FAILED_UNABLE_TO_ROLLBACK",
            DetailedStatus::Rejected => "REJECTED",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub group: String,
    pub status: DeploymentStatus,
    pub detailed_status: Option<DetailedStatus>,
    pub created_on_ms: i64,
    pub failure_cause: String,
    pub error_stack: Vec<String>,
    pub error_types: Vec<String>,
    pub request: LocalDeploymentRequest,
    /// What took effect only in part (say, resource limits this machine cannot enforce).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The artifact download under way (or the last one, once it is done).
    #[serde(default)]
    pub progress: Option<ArtifactProgress>,
}

/// How far one artifact's download has come; a Docker image counts its layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactProgress {
    /// `name@version` of the component the artifact belongs to.
    pub component: String,
    /// The artifact's URI.
    pub artifact: String,
    pub layers_done: u32,
    pub layers_total: u32,
    pub bytes_done: u64,
    /// Zero while the size is not known yet.
    pub bytes_total: u64,
    /// The artifact is complete (pulled, or found present).
    pub done: bool,
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Hooks the IPC layer plugs in (NOTIFY_COMPONENTS, configuration validation). Default: no-ops
/// that allow everything.
pub trait DeploymentHooks: Send + Sync + 'static {
    /// Before stopping/changing components: notify and wait for deferrals (only for deployments
    /// that ask for it; local deployments use SKIP_NOTIFY_COMPONENTS and do not call it).
    fn pre_update(&self, _deployment_id: &str, _timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn post_update(&self, _deployment_id: &str) {}
    /// The committed `services` changed (a deployment, a rollback, a restore at start): called
    /// before the supervisor starts components, so services that run inside the core (which
    /// components may depend on) are in place first.
    fn services_committed(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// A bootstrap step exited 100 (restart the core) or 101 (`reboot`: reboot the device).
    /// Return true when the restart will happen: the deployment then waits for it and resumes
    /// from its record at the next start. The default cannot restart anything.
    fn restart_requested(&self, _reboot: bool) -> bool {
        false
    }
    /// The deployment moves the core to nucleus `version`, whose artifacts are in `artifacts`
    /// (the kernel-update path): stage it as the next core and return Ok(()) when the core will
    /// restart into it; the deployment then waits and resumes there. Err(cause) fails the
    /// deployment before any change. The default cannot update the core.
    fn stage_core_update(&self, version: &str, _artifacts: &std::path::Path) -> Result<(), String> {
        Err(format!(
            "this core cannot update itself to aws.greengrass.Nucleus {version}: it runs without a loader"
        ))
    }
    /// After the restart into a staged core: Err(cause) when the core now running is not nucleus
    /// `version` (its loader went back to the previous core), which fails the deployment.
    fn core_update_outcome(&self, _version: &str) -> Result<(), String> {
        Ok(())
    }
    /// A deployment that moved the core to nucleus `version` failed after its commit and its
    /// components were rolled back (ROLLBACK policy; `cause` is its failure): the core binary
    /// should go back too. Some(note): it will, at the restart the engine asks for once the
    /// result (its cause extended by `note`) is recorded. The default keeps the binary.
    fn core_update_rolled_back(&self, _version: &str, _cause: &str) -> Option<String> {
        None
    }
    /// Ask a component to validate its proposed configuration; Err(message) rejects the
    /// deployment.
    fn validate_configuration(
        &self,
        _deployment_id: &str,
        _component: &str,
        _config: &serde_json::Value,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// Before the commit, once for each built-in of the new set: `configuration` is the one the
    /// deployment will commit and `versions` names every component of the new set with its
    /// version (a built-in that loads another component's artifacts finds them through it; they
    /// are in the store by now). Err(cause) fails the deployment with nothing changed.
    fn check_builtin(
        &self,
        _component: &str,
        _configuration: &serde_json::Value,
        _versions: &BTreeMap<String, String>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Hooks that allow everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl DeploymentHooks for NoHooks {}
