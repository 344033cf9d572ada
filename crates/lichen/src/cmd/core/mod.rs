//! `lichen core …`: run the device core, or print its effective configuration.
//!
//! `core run` wires the kernel together: configuration store, supervisor, deployment engine, the IPC
//! server with the kernel's operations and the CLI operations, then waits for SIGTERM/SIGINT and
//! stops every component in reverse dependency order.

mod alts;
#[cfg(test)]
mod authz_matrix_tests;
mod bridge;
mod builtins;
mod client_devices;
mod cloud;
mod cloud_deploy;
mod core_update;
mod defender;
#[cfg(feature = "industrial")]
mod industrial;
#[cfg(feature = "inference")]
mod inference;
mod install;
mod ipc_ops;
mod layout;
mod loader;
mod lock;
mod logmanager;
mod provision;
mod secrets;
mod shadows;
mod telemetry;
mod tes;
mod trim;

use super::RootArgs;
use anyhow::Context;
use clap::{Args, Subcommand};
use lichen_config::ConfigStore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Greengrass nucleus version this core reports (`GGC_VERSION`, built-in component versions).
pub const NUCLEUS_VERSION: &str = "2.14.0";

#[derive(Subcommand)]
pub enum CoreCommand {
    /// Run the core in the foreground until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Print the effective configuration as YAML.
    EffectiveConfig {
        #[command(flatten)]
        root: RootArgs,
    },
    /// Install the core as a system service (user, root, launch directories, systemd unit).
    Install(install::InstallArgs),
    /// Remove what `core install` created (the root too, unless --keep-data).
    Uninstall(install::UninstallArgs),
    /// Start the core from `alts/current` and act on its exit code (what the service runs).
    Loader(loader::LoaderArgs),
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub root: RootArgs,
    /// A Greengrass-style config.yaml (or .json) merged over the stored configuration at start.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(c: CoreCommand) -> anyhow::Result<ExitCode> {
    match c {
        CoreCommand::Run(a) => run_core(a),
        CoreCommand::EffectiveConfig { root } => effective_config(&root.root),
        CoreCommand::Install(a) => install::install(a),
        CoreCommand::Uninstall(a) => install::uninstall(a),
        CoreCommand::Loader(a) => loader::run(a),
    }
}

fn effective_config(root: &Path) -> anyhow::Result<ExitCode> {
    let dir = root.join("config");
    if lock::is_held(root) {
        // The running core owns the store; it rewrites this dump after every change that matters.
        let path = dir.join("effectiveConfig.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        print!("{text}");
    } else {
        if !dir.exists() {
            anyhow::bail!(
                "no configuration under {}: run `lichen core run --root {}` first",
                dir.display(),
                root.display()
            );
        }
        let store = ConfigStore::open(&dir)?;
        print!("{}", store.to_yaml());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_core(a: RunArgs) -> anyhow::Result<ExitCode> {
    // Before the first file: the core's state is its own (component steps get umask 0022 from
    // the supervisor, and shared paths get explicit modes).
    layout::set_core_umask();
    let started = Instant::now();
    let root = a.root.root;
    layout::create_root(&root)?;
    let root = std::fs::canonicalize(&root)?;
    let _lock = lock::RootLock::acquire(&root)?;
    layout::prepare(&root)?;
    init_tracing(&root)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    let _lock = _lock;
    match rt.block_on(serve(root, a.config, started))? {
        Stopped::Exit => Ok(ExitCode::SUCCESS),
        Stopped::RollBack => Ok(ExitCode::from(loader::EXIT_ROLLBACK as u8)),
        Stopped::Restart => {
            drop(rt);
            drop(_lock);
            if std::env::var_os(loader::LOADER_ENV).is_some() {
                // The loader starts the core again (from a staged `alts/new` when there is one).
                return Ok(ExitCode::from(loader::EXIT_RESTART as u8));
            }
            // Same process, same arguments: deployments resume from their records.
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new("/proc/self/exe")
                .args(std::env::args_os().skip(1))
                .exec();
            Err(anyhow::anyhow!("cannot restart the core: {err}"))
        }
    }
}

/// How `serve` ended.
enum Stopped {
    /// SIGTERM/SIGINT: exit 0.
    Exit,
    /// A bootstrap step asked for a restart: start again in the same process.
    Restart,
    /// A freshly switched core could not reach the cloud in time: the loader goes back.
    RollBack,
}

/// Targets whose events belong to the stream manager's own log, as Greengrass keeps each
/// component's output in `logs/<component>.log`.
const STREAM_MANAGER_TARGET: &str = "lichen_streams";

/// Targets whose events belong to the industrial collector's log: the collector itself and the
/// lines of its OPC UA workers (a server refusing the session, a certificate not trusted).
const COLLECTOR_TARGET: &str = "lichen_industrial";

type LevelHandle = tracing_subscriber::reload::Handle<
    tracing_subscriber::filter::LevelFilter,
    tracing_subscriber::Registry,
>;

/// The level of `logs/aws.greengrass.StreamManager.log`, changed by its `LOG_LEVEL` key.
static STREAM_MANAGER_LEVEL: std::sync::OnceLock<LevelHandle> = std::sync::OnceLock::new();

/// Applies the stream manager's `LOG_LEVEL` to its log (no-op before tracing is set up).
pub(crate) fn set_stream_manager_log_level(level: tracing_subscriber::filter::LevelFilter) {
    if let Some(h) = STREAM_MANAGER_LEVEL.get() {
        let _ = h.modify(|l| *l = level);
    }
}

/// `logs/lichen.log` gets the core's events (level from `LICHEN_LOG`, default info);
/// `logs/aws.greengrass.StreamManager.log`, created with its first line, gets the stream
/// manager's (level from its `LOG_LEVEL`, default INFO); `logs/lichen.IndustrialCollector.log`
/// the collector's and its workers' (INFO), and the core's word on its configurations too.
fn init_tracing(root: &Path) -> anyhow::Result<()> {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
    use tracing_subscriber::prelude::*;
    let logs = root.join("logs");
    let file = crate::logfile::RotatingFile::open(&logs.join("lichen.log"), 10 << 20, 5)?;
    let sm_file = crate::logfile::RotatingFile::open_on_first_write(
        &logs.join(format!("{}.log", builtins::STREAM_MANAGER)),
        10 << 20,
        5,
    );
    let collector_file = crate::logfile::RotatingFile::open_on_first_write(
        // Named literally: the collector is an optional feature, its log path is not.
        &logs.join("lichen.IndustrialCollector.log"),
        10 << 20,
        5,
    );
    let collector = || {
        filter_fn(|m| {
            m.target().starts_with(COLLECTOR_TARGET)
                || m.target() == concat!(module_path!(), "::industrial")
        })
    };
    let collector_only = || filter_fn(|m| m.target().starts_with(COLLECTOR_TARGET));
    let filter = tracing_subscriber::EnvFilter::try_from_env("LICHEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let streams = || filter_fn(|m| m.target().starts_with(STREAM_MANAGER_TARGET));
    let (sm_level, handle) = tracing_subscriber::reload::Layer::new(LevelFilter::INFO);
    let installed = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(sm_file)
                .with_filter(streams().and(sm_level)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(collector_file)
                .with_filter(collector().and(LevelFilter::INFO)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(file)
                .with_filter(filter.and(streams().not()).and(collector_only().not())),
        )
        .try_init()
        .is_ok();
    if installed {
        let _ = STREAM_MANAGER_LEVEL.set(handle);
    }
    Ok(())
}

async fn serve(
    root: PathBuf,
    config_file: Option<PathBuf>,
    started: Instant,
) -> anyhow::Result<Stopped> {
    core_update::set_root(&root);
    let config = ConfigStore::open(&root.join("config")).with_context(|| {
        format!(
            "opening the configuration under {}",
            root.join("config").display()
        )
    })?;
    if let Some(f) = &config_file {
        config
            .merge_file(f, lichen_config::now_ms())
            .with_context(|| format!("merging --config {}", f.display()))?;
    }
    // Before anything reads the thing name or the endpoint: they come from provisioning.
    provision::ensure(&config, &root).await?;
    let settings = Settings::from_config(&config, &root)?;
    settings.write_defaults(&config)?;

    let tokens = Arc::new(lichen_ipc::TokenRegistry::new());
    let (socket_abs, socket_for_components) = lichen_ipc::component_socket_path(&root);

    let mut base_env = inherited_env(&settings.pass_environment);
    base_env.insert("AWS_REGION".into(), settings.region.clone());
    base_env.insert("AWS_DEFAULT_REGION".into(), settings.region.clone());
    base_env.insert("AWS_IOT_THING_NAME".into(), settings.thing_name.clone());
    base_env.insert("GGC_VERSION".into(), NUCLEUS_VERSION.into());
    // `docker run` in a lifecycle step reaches the engine the core pulls images into.
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        base_env.entry("DOCKER_HOST".into()).or_insert(host);
    }
    // Lambda components' lifecycle runs `"$LICHEN_EXE" lambda launch`.
    if let Ok(exe) = std::env::current_exe() {
        base_env.insert("LICHEN_EXE".into(), exe.display().to_string());
    }
    base_env.insert("GG_ROOT_CA_PATH".into(), settings.root_ca_path.clone());
    base_env.insert(
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH".into(),
        socket_abs.display().to_string(),
    );
    base_env.insert(
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT".into(),
        socket_for_components.display().to_string(),
    );

    let supervisor = lichen_supervisor::Supervisor::new(
        lichen_supervisor::SupervisorConfig {
            root: root.clone(),
            logs_dir: root.join("logs"),
            base_env,
            default_posix_user: settings.default_posix_user.clone(),
            posix_shell: settings.posix_shell.clone(),
            log_max_bytes: settings.log_file_size_kb * 1024,
            log_keep_files: settings.log_keep_files,
        },
        Arc::new(TokenEnv(tokens.clone(), config.clone())),
    );

    let new_bus = || lichen_bus::Bus::with_queue_bytes(settings.bus_queue_bytes);
    let bus = new_bus();
    let config_source: Arc<dyn lichen_ipc::ConfigSource> = Arc::new(config.clone());
    let authorizer = Arc::new(lichen_ipc::Authorizer::new(
        config_source.clone(),
        tokens.clone(),
    ));
    let router = Arc::new(lichen_ipc::Router::new(authorizer));
    lichen_ipc::register_kernel_operations(
        &router,
        bus.clone(),
        config_source.clone(),
        tokens.clone(),
    );
    let (cloud_connected_tx, cloud_connected_rx) = tokio::sync::watch::channel(false);
    let service_ctx = builtins::ServiceContext {
        config: config.clone(),
        root: root.clone(),
        tokens: tokens.clone(),
        router: router.clone(),
        bus: bus.clone(),
        iot_core: new_bus(),
        local_mqtt: new_bus(),
        cloud_connected: cloud_connected_rx.clone(),
        supervisor: supervisor.clone(),
        stream_store: Default::default(),
        secrets: Default::default(),
    };
    let cloud_link = cloud::start(&service_ctx).await?;
    cloud::forward_status(&cloud_link, cloud_connected_tx);
    let services = builtins::services(&service_ctx);
    let hooks = Arc::new(ipc_ops::ComponentUpdateHooks::default());
    let engine = lichen_deploy::DeploymentEngine::new(
        lichen_deploy::EngineConfig {
            root: root.clone(),
            platform: settings.platform.clone(),
            thing_name: settings.thing_name.clone(),
            history_limit: settings.deployment_history,
            settle_timeout: Duration::from_secs(settings.settle_timeout_s),
            builtins: builtins::versions(&services),
        },
        config.clone(),
        supervisor.clone(),
        hooks.clone(),
    )?;
    // `docker:` artifacts (aws.greengrass.DockerApplicationManager): a private registry's login
    // is the component's `dockerRegistryCredentials.<registry>` {username, password}.
    let creds_config = config.clone();
    engine.register_fetcher(
        "docker",
        Arc::new(lichen_deploy::DockerFetcher::new(
            lichen_deploy::DockerEngine::from_env(),
            move |component, registry| {
                let login = creds_config.get(&[
                    "services",
                    component,
                    "configuration",
                    "dockerRegistryCredentials",
                    registry,
                ])?;
                Some((
                    login.get("username")?.as_str()?.to_string(),
                    login.get("password")?.as_str()?.to_string(),
                ))
            },
        )),
    );

    ipc_ops::register(
        &router,
        ipc_ops::Kernel {
            supervisor: supervisor.clone(),
            engine: engine.clone(),
            config: config.clone(),
            hooks: hooks.clone(),
        },
    );
    let server = lichen_ipc::IpcServer::bind(
        &socket_abs,
        router.clone(),
        tokens.clone(),
        lichen_ipc::ServerOptions::default(),
    )?;
    write_cli_token(&root, &tokens, &socket_abs)?;

    let orphans = supervisor.reap_orphans().await;
    if orphans > 0 {
        tracing::warn!(
            groups = orphans,
            "stopped component processes left by a previous core"
        );
    }
    let services = builtins::Builtins::new(
        config.clone(),
        root.clone(),
        tokens.clone(),
        services,
        service_ctx.stream_store.clone(),
    );
    hooks.set_builtins(services.clone());
    // Before the engine resumes an interrupted deployment, which may need the cloud.
    let cloud_deployments = match (&cloud_link, settings.cloud_configured) {
        (Some(link), true) => {
            cloud_deploy::start(cloud_deploy::Context {
                config: config.clone(),
                root: root.clone(),
                thing: settings.thing_name.clone(),
                platform: settings.platform.clone(),
                engine: engine.clone(),
                supervisor: supervisor.clone(),
                link: link.handle().clone(),
                ggc_version: core_update::running_version(&root)
                    .unwrap_or_else(|| NUCLEUS_VERSION.to_string()),
            })
            .await?
        }
        _ => None,
    };
    let stopped = 'running: {
        // A core a deployment just switched to proves it can reach the cloud before it resumes
        // that deployment (which would report it a success) or starts any component.
        if let Some(stop) = confirm_switched_core(&root, &settings, cloud_connected_rx).await? {
            break 'running stop;
        }
        // A resumed deployment may stage a core update and ask for the restart before we are ready.
        let early_restart = tokio::select! {
            r = engine.start() => { r?; false }
            _ = hooks.restart_wanted() => true,
        };
        services.watch();
        keep_effective_config(&config, root.join("config/effectiveConfig.yaml"))?;
        let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(ready_ms, root = %root.display(), "core ready");
        println!("Lichen core {NUCLEUS_VERSION} ready in {ready_ms:.1} ms");
        println!("  root:   {}", root.display());
        println!("  socket: {}", socket_abs.display());
        println!("  logs:   {}", root.join("logs").display());
        if settings.cloud_configured {
            println!("  cloud:  {}", settings.iot_data_endpoint);
        } else {
            println!("  cloud:  none configured (running offline)");
        }
        // Start-up code is not needed again: only what runs from now on stays resident.
        trim::keep_trimmed(&engine);

        tokio::select! {
            _ = std::future::ready(()), if early_restart => {
                if hooks.core_rollback_asked() { Stopped::RollBack } else { Stopped::Restart }
            }
            r = wait_for_signal() => { r?; Stopped::Exit }
            reboot = hooks.restart_wanted() => {
                if hooks.core_rollback_asked() {
                    break 'running Stopped::RollBack;
                }
                if reboot {
                    if let Some(cmd) = &settings.reboot_command {
                        tracing::warn!(command = %cmd, "a bootstrap step asked for a device reboot; running the reboot command after stopping components");
                    } else {
                        tracing::warn!("a bootstrap step asked for a device reboot; restarting the core instead (set bootstrapRebootCommand in the nucleus configuration to reboot)");
                    }
                }
                Stopped::Restart
            }
        }
    };
    tracing::info!("stop requested; stopping components in reverse dependency order");
    engine.shutdown();
    if let Some(c) = cloud_deployments {
        c.stop();
    }
    supervisor.shutdown().await;
    services.shutdown().await;
    cloud::stop(cloud_link).await;
    server.shutdown().await;
    let _ = config.write_effective_config(&root.join("config/effectiveConfig.yaml"));
    tracing::info!("core stopped");
    if let (Stopped::Restart, Some(true), Some(cmd)) =
        (&stopped, hooks.reboot_asked(), &settings.reboot_command)
    {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .await;
        tracing::warn!(command = %cmd, ?status, "reboot command ran");
        return Ok(Stopped::Exit);
    }
    Ok(stopped)
}

/// For a core a deployment switched to and that has not reached the cloud yet: waits for the
/// cloud link up to `lichen.nucleusUpdate.connectTimeoutSeconds`. None: carry on (connected, or
/// no cloud configured, or not a fresh switch). Some: stop now (a signal, or the bound passed:
/// then the cause is recorded for the old core and the loader is asked to go back).
async fn confirm_switched_core(
    root: &Path,
    settings: &Settings,
    mut connected: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<Stopped>> {
    let Some(version) = core_update::unconfirmed(root) else {
        return Ok(None);
    };
    if settings.cloud_configured {
        let bound = settings.connect_timeout_s;
        tracing::info!(
            version,
            timeout_s = bound,
            "new core: waiting to reach the cloud before resuming the deployment"
        );
        let reached = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(bound), connected.wait_for(|up| *up)) => {
                matches!(r, Ok(Ok(_)))
            }
            r = wait_for_signal() => { r?; return Ok(Some(Stopped::Exit)); }
        };
        if !reached {
            let cause = format!(
                "the new core (aws.greengrass.Nucleus {version}) did not reach the cloud ({}) \
                 within {bound} s (services.aws.greengrass.Nucleus.configuration.lichen.\
                 nucleusUpdate.connectTimeoutSeconds)",
                settings.iot_data_endpoint
            );
            tracing::error!("{cause}; asking the loader to go back to the previous core");
            core_update::record_failure(root, &cause)?;
            return Ok(Some(Stopped::RollBack));
        }
    }
    core_update::confirm(root)?;
    tracing::info!(version, "new core confirmed");
    Ok(None)
}

/// Writes `effectiveConfig.yaml` now and again after changes (at most every 50 ms), so
/// `lichen core effective-config` and people reading the root see the running configuration.
fn keep_effective_config(config: &ConfigStore, path: PathBuf) -> anyhow::Result<()> {
    config.write_effective_config(&path)?;
    let changed = Arc::new(tokio::sync::Notify::new());
    let n = changed.clone();
    config.subscribe(
        &[],
        Box::new(move |e: &lichen_config::ConfigEvent| {
            if !e.path.iter().any(|p| p.starts_with('_')) {
                n.notify_one();
            }
        }),
    );
    let config = config.clone();
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Err(e) = config.write_effective_config(&path) {
                tracing::warn!(error = %e, "cannot write the effective configuration");
            }
        }
    });
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// What of the core's own environment its components see: PATH, the locale and time zone, and the
/// variables named by the nucleus's `lichen.passEnvironment` (a Lichen key; Greengrass has none).
/// Nothing else: the core's environment may hold credentials and settings that are not theirs.
fn inherited_env(pass: &[String]) -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            matches!(k.as_str(), "PATH" | "LANG" | "LANGUAGE" | "TZ")
                || k.starts_with("LC_")
                || pass.iter().any(|p| p == k)
        })
        .collect()
}

/// Gives each component process its IPC token (SVCUID and AWS_CONTAINER_AUTHORIZATION_TOKEN).
/// Components that depend on the token exchange service also get its endpoint.
struct TokenEnv(Arc<lichen_ipc::TokenRegistry>, ConfigStore);

impl lichen_supervisor::EnvProvider for TokenEnv {
    fn component_env(&self, component: &str) -> BTreeMap<String, String> {
        let mut env = self.0.component_env(component);
        env.extend(tes::component_env(&self.1, component));
        env
    }
}

/// Writes `<root>/cli_ipc_info/user-<uid>` (mode 0600) so the CLI of the same user can connect,
/// as the Greengrass CLI service does. The token is fresh at every start and only lives there.
fn write_cli_token(
    root: &Path,
    tokens: &lichen_ipc::TokenRegistry,
    socket: &Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = root.join("cli_ipc_info");
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let uid = rustix::process::geteuid().as_raw();
    let identity = format!("greengrass-cli#user-{uid}");
    let token = tokens.mint(&identity);
    tokens.register_external(&identity, &token);
    let body = serde_json::json!({
        "cli_auth_token": token,
        "domain_socket_path": socket.display().to_string(),
    });
    let path = dir.join(format!("user-{uid}"));
    let tmp = dir.join(format!(".user-{uid}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    use std::io::Write;
    f.write_all(body.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The nucleus settings the core reads at start (spec: `services.aws.greengrass.Nucleus.configuration`
/// and `system`).
struct Settings {
    thing_name: String,
    region: String,
    root_ca_path: String,
    iot_data_endpoint: String,
    cloud_configured: bool,
    default_posix_user: Option<String>,
    posix_shell: String,
    platform: lichen_recipe::Platform,
    log_file_size_kb: u64,
    log_keep_files: usize,
    deployment_history: usize,
    settle_timeout_s: u64,
    /// What a bootstrap step's exit 101 (reboot) runs; without it the core restarts instead.
    reboot_command: Option<String>,
    /// Variables of the core's environment handed on to components (`lichen.passEnvironment`).
    pass_environment: Vec<String>,
    /// Bytes each subscriber of a message bus may have queued (`lichen.busQueueBytes`).
    bus_queue_bytes: usize,
    /// How long a freshly switched core may take to reach the cloud
    /// (`lichen.nucleusUpdate.connectTimeoutSeconds`).
    connect_timeout_s: u64,
    root: PathBuf,
}

const NUCLEUS: &str = "aws.greengrass.Nucleus";

impl Settings {
    fn from_config(config: &ConfigStore, root: &Path) -> anyhow::Result<Settings> {
        let nucleus = |path: &[&str]| {
            let mut p = vec!["services", NUCLEUS, "configuration"];
            p.extend_from_slice(path);
            config.get(&p)
        };
        let str_of = |v: Option<serde_json::Value>| -> Option<String> {
            match v? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let num_of = |v: Option<serde_json::Value>, default: u64| -> u64 {
            match v {
                Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(default),
                Some(serde_json::Value::String(s)) => s.parse().unwrap_or(default),
                _ => default,
            }
        };
        let thing_name =
            str_of(config.get(&["system", "thingName"])).unwrap_or_else(default_thing_name);
        let region = str_of(nucleus(&["awsRegion"])).unwrap_or_else(|| "us-east-1".into());
        let iot_data_endpoint = str_of(nucleus(&["iotDataEndpoint"])).unwrap_or_default();
        let mut overrides = BTreeMap::new();
        if let Some(serde_json::Value::Object(m)) = nucleus(&["platformOverride"]) {
            for (k, v) in m {
                if let serde_json::Value::String(s) = v {
                    overrides.insert(k, s);
                }
            }
        }
        Ok(Settings {
            thing_name,
            region,
            root_ca_path: str_of(config.get(&["system", "rootCaPath"])).unwrap_or_default(),
            cloud_configured: !iot_data_endpoint.is_empty(),
            iot_data_endpoint,
            default_posix_user: str_of(nucleus(&["runWithDefault", "posixUser"])),
            posix_shell: str_of(nucleus(&["runWithDefault", "posixShell"]))
                .unwrap_or_else(|| "sh".into()),
            platform: lichen_recipe::Platform::detect().with_overrides(&overrides),
            log_file_size_kb: num_of(nucleus(&["logging", "fileSizeKB"]), 1024),
            log_keep_files: 5,
            deployment_history: num_of(nucleus(&["deploymentHistorySize"]), 50) as usize,
            settle_timeout_s: num_of(nucleus(&["deploymentSettleTimeoutSeconds"]), 120),
            reboot_command: str_of(nucleus(&["bootstrapRebootCommand"])),
            pass_environment: names_of(nucleus(&["lichen", "passEnvironment"]))?,
            bus_queue_bytes: num_of(
                nucleus(&["lichen", "busQueueBytes"]),
                lichen_bus::DEFAULT_QUEUE_BYTES as u64,
            ) as usize,
            connect_timeout_s: num_of(
                nucleus(&["lichen", "nucleusUpdate", "connectTimeoutSeconds"]),
                core_update::DEFAULT_CONNECT_TIMEOUT_S,
            ),
            root: root.to_path_buf(),
        })
    }

    /// Records what the core runs as, so `effective-config` and components see it.
    fn write_defaults(&self, config: &ConfigStore) -> anyhow::Result<()> {
        let ts = lichen_config::now_ms();
        config.set(
            &["system", "rootpath"],
            serde_json::json!(self.root.display().to_string()),
            ts,
        )?;
        config.set(
            &["system", "thingName"],
            serde_json::json!(self.thing_name),
            1,
        )?;
        config.set(
            &["services", NUCLEUS, "componentType"],
            serde_json::json!("NUCLEUS"),
            1,
        )?;
        // Under the loader, the version this launch directory was deployed as.
        let version = core_update::running_version(&self.root);
        config.set(
            &["services", NUCLEUS, "version"],
            serde_json::json!(version.as_deref().unwrap_or(NUCLEUS_VERSION)),
            ts,
        )?;
        Ok(())
    }
}

/// A list of environment variable names: a YAML/JSON list or one comma-separated string.
fn names_of(v: Option<serde_json::Value>) -> anyhow::Result<Vec<String>> {
    let key = "services.aws.greengrass.Nucleus.configuration.lichen.passEnvironment";
    let names: Vec<String> = match v {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::String(s)) => s.split(',').map(|n| n.trim().to_string()).collect(),
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                serde_json::Value::String(s) => Ok(s.trim().to_string()),
                other => Err(anyhow::anyhow!(
                    "{key}: {other} is not a variable name; list names as strings"
                )),
            })
            .collect::<anyhow::Result<_>>()?,
        Some(other) => anyhow::bail!("{key}: expected a list of variable names, got {other}"),
    };
    Ok(names.into_iter().filter(|n| !n.is_empty()).collect())
}

fn default_thing_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("lichen-{}", if host.is_empty() { "device" } else { &host })
}
