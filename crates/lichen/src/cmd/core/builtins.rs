//! Built-in services: Greengrass components that run inside the core as tokio tasks. A deployment
//! that names one (as a root or a dependency) writes its `services.<name>` entry; this module
//! watches those entries and starts, reconfigures or stops the service to match.

use lichen_config::ConfigStore;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A service that runs inside the core while its component is deployed. The manager calls
/// [`BuiltinService::apply`] with the component's `configuration` when it is deployed or its
/// configuration changes, and with `None` when it is removed or the core stops; the service starts,
/// reconfigures or stops itself to match.
pub trait BuiltinService: Send + Sync + 'static {
    /// The Greengrass component name it answers to.
    fn name(&self) -> &'static str;
    /// The version it reports (same major series as the Greengrass component).
    fn version(&self) -> &'static str;
    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()>;
    /// Before a deployment commits `configuration` for this service (`versions`: every
    /// component of the new set → its version): Err(cause) fails the deployment, nothing
    /// changed. The default accepts.
    fn check<'a>(
        &'a self,
        _configuration: &'a Value,
        _versions: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// What built-in services may use from the kernel.
#[allow(dead_code)] // fields are read by the services listed in `services()`
#[derive(Clone)]
pub struct ServiceContext {
    pub config: ConfigStore,
    pub root: PathBuf,
    pub tokens: Arc<lichen_ipc::TokenRegistry>,
    pub router: Arc<lichen_ipc::Router>,
    /// Local pub/sub (IPC PublishToTopic/SubscribeToTopic; the bridge's `Pubsub`).
    pub bus: lichen_bus::Bus,
    /// The cloud's topics (the bridge's `IotCore`): publishing here sends to the cloud through the
    /// cloud link's spooler; messages from the cloud arrive here.
    pub iot_core: lichen_bus::Bus,
    /// The client-device broker's topics (the bridge's `LocalMqtt`): what client devices publish
    /// arrives here; publishing here delivers to client devices.
    pub local_mqtt: lichen_bus::Bus,
    /// Whether the cloud link is connected now (and its changes).
    pub cloud_connected: tokio::sync::watch::Receiver<bool>,
    /// The components' states (telemetry).
    pub supervisor: lichen_supervisor::Supervisor,
    /// The stream manager's store while it runs, for built-ins that append in-process.
    pub stream_store: StreamStoreSlot,
    /// The secret manager while it is deployed, for built-ins that read secrets in-process.
    pub secrets: SecretManagerSlot,
}

/// The running secret manager, or None.
pub type SecretManagerSlot = Arc<tokio::sync::Mutex<Option<lichen_secrets::SecretManager>>>;

/// The running stream manager's store, or None. Holders of the read lock keep the stream
/// manager from being stopped (and its store reopened) under them.
pub type StreamStoreSlot = Arc<tokio::sync::RwLock<Option<Arc<lichen_streams::Store>>>>;

/// Every built-in service other than the stream manager (which predates this list). Adding a
/// service is one line here.
pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    let mut services: Vec<Arc<dyn BuiltinService>> = vec![];
    services.extend(super::client_devices::services(ctx));
    services.extend(super::bridge::services(ctx));
    services.extend(super::shadows::services(ctx));
    services.extend(super::tes::services(ctx));
    services.extend(super::secrets::services(ctx));
    services.extend(super::logmanager::services(ctx));
    services.extend(super::telemetry::services(ctx));
    services.extend(super::defender::services(ctx));
    #[cfg(feature = "inference")]
    services.extend(super::inference::services(ctx));
    #[cfg(feature = "industrial")]
    services.extend(super::industrial::services(ctx));
    services
}

pub const STREAM_MANAGER: &str = "aws.greengrass.StreamManager";
const CLI: &str = "aws.greengrass.Cli";

/// Built-in components and the versions they report: always resolvable by deployments (a 2.x in the
/// same major series as the Greengrass component each stands for), never run as processes.
pub fn versions(services: &[Arc<dyn BuiltinService>]) -> BTreeMap<String, String> {
    let mut v: BTreeMap<String, String> = [
        ("aws.greengrass.Nucleus", super::NUCLEUS_VERSION),
        ("aws.greengrass.Cli", super::NUCLEUS_VERSION),
        (
            "aws.greengrass.TokenExchangeService",
            super::NUCLEUS_VERSION,
        ),
        (STREAM_MANAGER, "2.2.1"),
        // Its work (docker: artifacts) is the deployment engine's DockerFetcher.
        ("aws.greengrass.DockerApplicationManager", "2.0.11"),
        // Lambda components depend on these; `lichen lambda launch` is all three.
        ("aws.greengrass.LambdaLauncher", "2.0.12"),
        ("aws.greengrass.LambdaRuntimes", "2.0.8"),
        ("aws.greengrass.LambdaManager", "2.3.5"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    for s in services {
        v.insert(s.name().to_string(), s.version().to_string());
    }
    v
}

/// The privileges an S3 export task appended by `component` opens its input file with: the
/// user the supervisor runs that component as (`runWith.posixUser`, else the nucleus's
/// `runWithDefault.posixUser`; an unknown appender gets the latter, as Greengrass runs its
/// stream manager as the default component user). A core that is not root, or that runs the
/// component as root (no user configured), opens with its own privileges.
fn task_file_access(config: &ConfigStore, component: Option<String>) -> lichen_streams::FileAccess {
    use lichen_streams::FileAccess;
    // CLI clients register tokens too; they are not components and get the default user.
    let component = component.filter(|c| config.get(&["services", c.as_str()]).is_some());
    match component_user(config, component.as_deref()) {
        Ok(None) => FileAccess::Own,
        Ok(Some(u)) => FileAccess::User {
            uid: u.uid,
            gid: u.gid,
            groups: u.groups,
        },
        Err(reason) => FileAccess::Denied(reason),
    }
}

/// The user that `component`'s processes run as: its `runWith.posixUser`, else the nucleus's
/// `runWithDefault.posixUser`. None when the core is not root (it can switch to no one) or when
/// that user is root or none is configured.
pub(crate) fn component_user(
    config: &ConfigStore,
    component: Option<&str>,
) -> Result<Option<lichen_supervisor::RunAs>, String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let text = |path: &[&str]| match config.get(path) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let own = component.and_then(|c| text(&["services", c, "runWith", "posixUser"]));
    let spec = own.or_else(|| {
        text(&[
            "services",
            super::NUCLEUS,
            "configuration",
            "runWithDefault",
            "posixUser",
        ])
    });
    let Some(spec) = spec else {
        return Ok(None);
    };
    match lichen_supervisor::resolve_user(&spec) {
        Ok(u) if u.uid == 0 => Ok(None),
        Ok(u) => Ok(Some(u)),
        Err(reason) => Err(format!("posixUser {spec:?}: {reason}")),
    }
}

/// What a running built-in was started with, to tell a reconfiguration from a no-op.
struct Running<T> {
    config: Value,
    service: T,
}

type LastApplied = tokio::sync::Mutex<Option<Value>>;

pub struct Builtins {
    config: ConfigStore,
    root: PathBuf,
    tokens: Arc<lichen_ipc::TokenRegistry>,
    changed: Arc<Notify>,
    stream_manager: tokio::sync::Mutex<Option<Running<lichen_streams::StreamManager>>>,
    /// The other services with the configuration each was last given.
    others: Vec<(Arc<dyn BuiltinService>, LastApplied)>,
    /// Lifecycle state of each deployed service, as its last reconciliation left it.
    states: std::sync::Mutex<BTreeMap<String, &'static str>>,
    stream_store: StreamStoreSlot,
}

impl Builtins {
    pub fn new(
        config: ConfigStore,
        root: PathBuf,
        tokens: Arc<lichen_ipc::TokenRegistry>,
        services: Vec<Arc<dyn BuiltinService>>,
        stream_store: StreamStoreSlot,
    ) -> Arc<Builtins> {
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        let names = versions(&services);
        config.subscribe(
            &["services"],
            Box::new(move |e: &lichen_config::ConfigEvent| {
                // Only a built-in's own entry matters (its version or configuration).
                if e.path.len() >= 2 && names.contains_key(&e.path[1]) {
                    notify.notify_one();
                }
            }),
        );
        let others = services
            .into_iter()
            .map(|s| (s, tokio::sync::Mutex::new(None)))
            .collect();
        Arc::new(Builtins {
            config,
            root,
            tokens,
            changed,
            stream_manager: tokio::sync::Mutex::new(None),
            others,
            states: std::sync::Mutex::new(BTreeMap::new()),
            stream_store,
        })
    }

    /// Brings services in line with the configuration now, then whenever it changes.
    pub fn watch(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.reconcile().await;
                me.changed.notified().await;
            }
        });
    }

    fn deployed(&self, name: &str) -> Option<Value> {
        self.config.get(&["services", name, "version"])?;
        Some(
            self.config
                .get(&["services", name, "configuration"])
                .unwrap_or_else(|| Value::Object(Default::default())),
        )
    }

    /// The state `ListComponents` reports for built-in `name`, or `None` when it is not deployed
    /// (or not a built-in). The nucleus and the CLI are always there: the core is them.
    pub fn listed_state(&self, name: &str) -> Option<&'static str> {
        if name == super::NUCLEUS || name == CLI {
            return Some("RUNNING");
        }
        self.config.get(&["services", name, "version"])?;
        let served = name == STREAM_MANAGER || self.others.iter().any(|(s, _)| s.name() == name);
        if !served {
            // A built-in without a service of its own (the token exchange service) is part of the
            // core and runs when the core does.
            return versions(&[]).contains_key(name).then_some("RUNNING");
        }
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        // Deployed, not reconciled yet.
        Some(states.get(name).copied().unwrap_or("STARTING"))
    }

    fn set_state(&self, name: &str, state: Option<&'static str>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => states.insert(name.to_string(), s),
            None => states.remove(name),
        };
    }

    /// A deployment's check of built-in `name` before its commit ([`BuiltinService::check`]).
    pub async fn check(
        &self,
        name: &str,
        configuration: &Value,
        versions: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        match self.others.iter().find(|(s, _)| s.name() == name) {
            Some((s, _)) => s.check(configuration, versions).await,
            None => Ok(()),
        }
    }

    pub async fn reconcile(&self) {
        self.reconcile_stream_manager().await;
        for (service, last) in &self.others {
            let mut last = last.lock().await;
            let wanted = self.deployed(service.name());
            if *last != wanted {
                service.apply(wanted.clone()).await;
                self.set_state(service.name(), wanted.is_some().then_some("RUNNING"));
                *last = wanted;
            }
        }
    }

    async fn reconcile_stream_manager(&self) {
        let mut slot = self.stream_manager.lock().await;
        // The bound port is written back under `port`; it is not part of what we were asked for.
        let wanted = self.deployed(STREAM_MANAGER).map(|mut c| {
            if let Some(m) = c.as_object_mut() {
                m.remove("port");
            }
            c
        });
        if slot.as_ref().map(|r| &r.config) == wanted.as_ref() {
            return;
        }
        if let Some(old) = slot.take() {
            *self.stream_store.write().await = None;
            old.service.stop().await;
            tracing::info!(service = STREAM_MANAGER, "stopped");
        }
        let Some(wanted) = wanted else {
            self.set_state(STREAM_MANAGER, None);
            return;
        };
        // Until it starts, a stream manager that cannot is ERRORED, as a component whose Run fails.
        self.set_state(STREAM_MANAGER, Some("ERRORED"));
        let default_root = self.root.join("work").join(STREAM_MANAGER);
        // The stream store is the core's: `work/` is searchable by component users, this is not.
        if let Err(e) = std::fs::create_dir_all(&default_root).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&default_root, std::fs::Permissions::from_mode(0o700))
        }) {
            tracing::warn!(service = STREAM_MANAGER, error = %e, "cannot make the stream store private");
        }
        let mut cfg = match lichen_streams::StreamManagerConfig::from_component_config(
            &wanted,
            default_root,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(service = STREAM_MANAGER, key = %e.key, reason = %e.reason, "invalid configuration; not started");
                return;
            }
        };
        super::set_stream_manager_log_level(cfg.log_level);
        let tokens = self.tokens.clone();
        cfg.token_validator = Some(Arc::new(move |t: &str| tokens.identity(t).is_some()));
        let (tokens, config) = (self.tokens.clone(), self.config.clone());
        cfg.task_file_access = Some(Arc::new(move |token: Option<&str>| {
            task_file_access(&config, token.and_then(|t| tokens.identity(t)))
        }));
        match lichen_streams::StreamManager::start(cfg).await {
            Ok(sm) => {
                let port = sm.local_addr().port();
                tracing::info!(service = STREAM_MANAGER, port, "started");
                let _ = self.config.set(
                    &["services", STREAM_MANAGER, "configuration", "port"],
                    Value::String(port.to_string()),
                    lichen_config::now_ms(),
                );
                *self.stream_store.write().await = Some(sm.store().clone());
                *slot = Some(Running {
                    config: wanted,
                    service: sm,
                });
                self.set_state(STREAM_MANAGER, Some("RUNNING"));
            }
            Err(e) => tracing::error!(service = STREAM_MANAGER, error = %e, "cannot start"),
        }
    }

    pub async fn shutdown(&self) {
        // The others first: those that append to streams in-process write their last batch.
        for (service, last) in self.others.iter().rev() {
            let mut last = last.lock().await;
            if last.take().is_some() {
                service.apply(None).await;
            }
        }
        if let Some(sm) = self.stream_manager.lock().await.take() {
            *self.stream_store.write().await = None;
            sm.service.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lichen_streams::FileAccess;

    fn set(config: &ConfigStore, path: &[&str], value: &str) {
        config
            .set(path, Value::String(value.into()), lichen_config::now_ms())
            .unwrap();
    }

    #[test]
    fn s3_task_files_are_opened_as_the_component_user_the_supervisor_would_use() {
        let config = ConfigStore::in_memory();
        let access = |c: Option<&str>| task_file_access(&config, c.map(str::to_string));
        if !rustix::process::geteuid().is_root() {
            // Nothing to drop: the core's own privileges are all it has.
            assert_eq!(access(Some("a")), FileAccess::Own);
            return;
        }
        // No user configured anywhere: components run as root, and so does the open.
        assert_eq!(access(Some("a")), FileAccess::Own);
        set(
            &config,
            &[
                "services",
                super::super::NUCLEUS,
                "configuration",
                "runWithDefault",
                "posixUser",
            ],
            "nobody",
        );
        set(&config, &["services", "a", "version"], "1.0.0");
        let Ok(user) = lichen_supervisor::resolve_user("nobody") else {
            eprintln!("skipped: this system has no user nobody");
            return;
        };
        let nobody = FileAccess::User {
            uid: user.uid,
            gid: user.gid,
            groups: user.groups,
        };
        assert_eq!(access(Some("a")), nobody);
        // Unknown appenders and CLI clients get the default component user.
        assert_eq!(access(None), nobody);
        assert_eq!(access(Some("greengrass-cli#1")), nobody);
        set(&config, &["services", "a", "runWith", "posixUser"], "0:0");
        assert_eq!(access(Some("a")), FileAccess::Own);
        set(
            &config,
            &["services", "a", "runWith", "posixUser"],
            "no-such-user-here",
        );
        assert!(
            matches!(access(Some("a")), FileAccess::Denied(why) if why.contains("no-such-user-here")),
        );
    }
}
