//! `lichen fleet serve`: opens (or creates) the fleet root — CA, registry, administrator
//! credentials and the console's first `admin` password — binds the listeners, writes
//! `<root>/endpoints.json`, and serves until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Args;
use lichen_fleet_api::{ApiState, EndpointHosts, ServiceHandler};
use lichen_fleet_pki::{FleetCa, create_private_dir, write_private};
use rand::Rng;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub struct ServeArgs {
    /// Fleet root directory (state, CA, administrator credentials); created 0700.
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
    /// Control-plane HTTP listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api: SocketAddr,
    /// Device MQTT listener: mutual TLS with the fleet CA's server certificate, AWS IoT policies
    /// (ALPN `x-amzn-mqtt-ca` accepted too; port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:8883")]
    pub mqtt: SocketAddr,
    /// Device HTTPS listener with mutual TLS (the credentials provider,
    /// `GET /role-aliases/<alias>/credentials`, and the Greengrass data plane under
    /// `/greengrass/v2/`; port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub data_plane: SocketAddr,
    /// A name (DNS or IP) for the server certificate besides localhost/127.0.0.1 (repeatable);
    /// the first one is what DescribeEndpoint answers.
    #[arg(long = "hostname")]
    pub hostnames: Vec<String>,
    /// Region in ARNs and in the administrator's config.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Keep the registry in PostgreSQL (`postgres://user[:password]@host[:port]/db`) instead of
    /// `<root>/fleet.db`, so several fleet processes serve one registry (give them the same CA:
    /// copy `<root>/ca`).
    #[arg(long, env = "LICHEN_FLEET_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// Keep component artifacts in an external S3-compatible store (MinIO, …):
    /// `s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT[&region=REGION]`, with its credentials in
    /// LICHEN_OBJECT_STORE_ACCESS_KEY_ID / LICHEN_OBJECT_STORE_SECRET_ACCESS_KEY. Recipes name
    /// its objects; devices get URLs presigned for it. Without it the fleet serves an S3 API
    /// on the control-plane listener, kept in `<root>/objects`.
    #[arg(long, env = "LICHEN_FLEET_OBJECT_STORE", value_name = "URL")]
    pub object_store: Option<String>,
    /// A core whose latest fleet status is older than this many seconds is UNHEALTHY
    /// (`statusReason` STATUS_STALE) even while connected; 0: no bound. The default leaves
    /// room for two missed statuses at the core's default cadence (3600 s).
    #[arg(long, value_name = "SECS", default_value_t = 3 * 3600 + 300)]
    pub device_stale_after: u64,
    /// Serve Prometheus text at `GET /metrics` here (devices' latest telemetry, fleet
    /// counters); off unless given. Unauthenticated: keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// `<root>/endpoints.json`: where each listener is (the credentials provider is served on the
/// data plane's listener).
#[derive(serde::Serialize)]
struct Endpoints {
    api: String,
    #[serde(rename = "rootCa")]
    root_ca: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtt: Option<String>,
    #[serde(rename = "dataPlane", skip_serializing_if = "Option::is_none")]
    data_plane: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials: Option<String>,
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(serve(a))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let root = &a.root;
    create_private_dir(root)
        .with_context(|| format!("creating the fleet root {}", root.display()))?;
    let endpoints_path = root.join("endpoints.json");
    // A stale file would send clients to a previous run's ports.
    let _ = std::fs::remove_file(&endpoints_path);

    let ca = Arc::new(FleetCa::open_or_create(&root.join("ca")).context("opening the fleet CA")?);
    let server_files = ca
        .write_server_certificate(&a.hostnames)
        .context("issuing the server certificate")?;
    let registry = {
        let (root, database, region) = (root.clone(), a.database.clone(), a.region.clone());
        // The PostgreSQL client blocks: connect and migrate off the async threads.
        Arc::new(
            tokio::task::spawn_blocking(move || {
                super::open_registry(&root, database.as_deref(), &region, true)
            })
            .await??,
        )
    };
    let (akid, secret) = registry
        .ensure_access_key("admin", generate_access_key)
        .context("recording the administrator's access key")?;
    write_admin_files(&root.join("admin"), &akid, &secret, &a.region)?;
    super::users::ensure_console_password(&registry, &root.join("admin"))
        .context("giving the console's user admin its first password")?;

    let listener = tokio::net::TcpListener::bind(a.api)
        .await
        .with_context(|| format!("binding the control-plane API on {}", a.api))?;
    let bound = listener.local_addr()?;
    let host = a
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let devices = super::devices::start(
        a.mqtt,
        registry.clone(),
        ca.ca_pem(),
        &server_files.cert_path,
        &server_files.key_path,
    )
    .await
    .context("starting the device endpoint")?;
    registry.set_device_stale_after(std::time::Duration::from_secs(a.device_stale_after));
    super::presence::start(&devices, registry.clone(), a.database.is_none());
    super::defender::start(&devices, registry.clone())
        .context("serving the Device Defender topics")?;
    // The console charts devices' recent telemetry, which the fleet otherwise keeps only latest.
    let console_telemetry = Arc::new(lichen_fleet_console::Telemetry::default());
    let sink = console_telemetry.clone();
    super::metrics::start(
        &devices,
        registry.clone(),
        a.metrics,
        Some(Arc::new(
            move |thing: &str, at_ms: i64, v: &serde_json::Value| sink.record(thing, at_ms, v),
        )),
    )
    .await
    .context("serving telemetry and /metrics")?;
    let data_plane = tokio::net::TcpListener::bind(a.data_plane)
        .await
        .with_context(|| format!("binding the data plane on {}", a.data_plane))?;
    let data_plane_tls = lichen_fleet_api::dataplane::tls_config(
        &std::fs::read(&server_files.cert_path)
            .with_context(|| format!("reading {}", server_files.cert_path.display()))?,
        &std::fs::read(&server_files.key_path)
            .with_context(|| format!("reading {}", server_files.key_path.display()))?,
        ca.ca_pem(),
    )
    .map_err(anyhow::Error::msg)
    .context("configuring the data plane's TLS")?;
    super::provisioning::start(&devices, registry.clone(), ca.clone())
        .context("serving fleet provisioning")?;
    let shadows = lichen_fleet_shadow::ShadowService::new(
        registry.clone(),
        Some(devices.clone()),
        lichen_fleet_shadow::Limits::default(),
    );
    shadows
        .serve_mqtt()
        .context("serving the device shadow topics")?;
    let jobs = lichen_fleet_jobs::JobsService::new(registry.clone());
    jobs.serve_mqtt(&devices)
        .context("serving the jobs topics")?;
    jobs.start();
    let deployments =
        super::greengrass::start(registry.clone(), &devices, jobs.clone(), shadows.clone())
            .context("starting the deployments service")?;
    let mut services: HashMap<String, Arc<dyn ServiceHandler>> = HashMap::new();
    services.insert(
        "iotdata".into(),
        Arc::new(super::devices::IotData {
            endpoint: devices.clone(),
            shadows: shadows.clone(),
        }),
    );
    let logs = lichen_fleet_api::logs::LogsService::new(registry.clone());
    logs.expire_every(std::time::Duration::from_secs(3600));
    services.insert("logs".into(), Arc::new(logs));
    let objects = {
        let dir = root.join("objects");
        let local = lichen_fleet_api::s3::LocalStore::open(&dir)
            .with_context(|| format!("opening the object store {}", dir.display()))?;
        // Presigned artifact URLs are signed with a key of their own, kept only in the registry.
        let (akid, secret) = registry
            .ensure_access_key("presign", generate_access_key)
            .context("recording the object store's presigning key")?;
        let remote = match &a.object_store {
            None => None,
            Some(url) => {
                let var = |name: &str| {
                    std::env::var(name).with_context(|| {
                        format!("--object-store needs the store's credentials in {name}")
                    })
                };
                let creds = lichen_fleet_api::s3::Credentials {
                    access_key_id: var("LICHEN_OBJECT_STORE_ACCESS_KEY_ID")?,
                    secret_access_key: var("LICHEN_OBJECT_STORE_SECRET_ACCESS_KEY")?,
                    session_token: None,
                };
                Some(
                    lichen_fleet_api::s3::remote::RemoteStore::parse(url, creds)
                        .map_err(anyhow::Error::msg)?,
                )
            }
        };
        Arc::new(lichen_fleet_api::s3::ObjectStore {
            local,
            remote,
            // Devices fetch presigned URLs from here: the advertised name when there is one.
            endpoint: match a.hostnames.first() {
                Some(h) => format!("http://{h}:{}", bound.port()),
                None => format!("http://{}", reachable(bound)),
            },
            region: a.region.clone(),
            presign: lichen_fleet_api::s3::Credentials {
                access_key_id: akid,
                secret_access_key: secret,
                session_token: None,
            },
        })
    };
    let console = lichen_fleet_console::ConsoleState {
        shadows: Some(shadows.clone()),
        deployments: Some(deployments.clone()),
        jobs: Some(jobs.clone()),
        objects: Some(objects.clone()),
        telemetry: console_telemetry,
        ..lichen_fleet_console::ConsoleState::new(registry.clone())
    };
    lichen_fleet_console::start_background(&console);
    let state = Arc::new(ApiState {
        objects: Some(objects),
        registry,
        ca,
        endpoints: EndpointHosts {
            data: host.clone(),
            credentials: host,
        },
        services,
        deployments: Some(deployments),
        jobs: Some(jobs),
    });

    let endpoints = Endpoints {
        api: format!("http://{}", reachable(bound)),
        root_ca: std::path::absolute(state.ca.ca_path())?,
        mqtt: Some(reachable(devices.local_addr()).to_string()),
        data_plane: Some(format!("https://{}", reachable(data_plane.local_addr()?))),
        credentials: Some(format!("https://{}", reachable(data_plane.local_addr()?))),
    };
    write_private(
        &endpoints_path,
        serde_json::to_string_pretty(&endpoints)?.as_bytes(),
    )
    .context("writing endpoints.json")?;
    tracing::info!(api = %endpoints.api, mqtt = ?endpoints.mqtt, data_plane = ?endpoints.data_plane, root = %root.display(), "fleet serving");

    // One signal stops both HTTP listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal = shutdown_signal()?;
    tokio::spawn(async move {
        signal.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let data_plane = tokio::spawn(lichen_fleet_api::dataplane::serve(
        data_plane,
        data_plane_tls,
        state.clone(),
        stopped(stop_rx.clone()),
    ));
    // The console shares the API's listener under /console (the API's router is the fallback).
    let app = lichen_fleet_api::router(state).merge(lichen_fleet_console::router(console));
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop_rx))
        .await
        .context("serving the control-plane API")?;
    data_plane
        .await
        .context("the data plane task failed")?
        .context("serving the data plane")?;
    devices.shutdown().await;
    let _ = std::fs::remove_file(&endpoints_path);
    tracing::info!("fleet stopped");
    Ok(())
}

/// The address clients use: an unspecified bind address is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// An AWS-shaped key pair: `AKIA` + 16 upper-case letters/digits, and a 40-character secret.
pub(crate) fn generate_access_key() -> (String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    let id: String = (0..16)
        .map(|_| UPPER[rng.random_range(0..UPPER.len())] as char)
        .collect();
    let secret: String = (0..40)
        .map(|_| SECRET[rng.random_range(0..SECRET.len())] as char)
        .collect();
    (format!("AKIA{id}"), secret)
}

/// `<root>/admin/credentials` and `config` in the shared-credentials format (profile
/// `default`), mode 0600 in a 0700 directory.
fn write_admin_files(dir: &Path, akid: &str, secret: &str, region: &str) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    write_private(
        &dir.join("credentials"),
        format!("[default]\naws_access_key_id = {akid}\naws_secret_access_key = {secret}\n")
            .as_bytes(),
    )?;
    write_private(
        &dir.join("config"),
        format!("[default]\nregion = {region}\noutput = json\n").as_bytes(),
    )?;
    lichen_fleet_pki::sync_dir(dir)?;
    Ok(())
}
