//! The cloud link as the core runs it: one MQTT connection to the configured endpoint
//! (`services.aws.greengrass.Nucleus.configuration.iotDataEndpoint`, mutual TLS with
//! `system.certificateFilePath` / `privateKeyPath` / `rootCaPath`), the spooler, and the IPC
//! operations PublishToIoTCore and SubscribeToIoTCore.
//!
//! With no endpoint configured (or credentials that cannot be loaded) the link runs offline:
//! PublishToIoTCore still spools (bounded by `mqtt.spooler.maxSizeInBytes`, so data produced
//! before provisioning is kept), SubscribeToIoTCore succeeds and delivers once a connection
//! exists. The spool lives in `<root>/work/aws.greengrass.Nucleus/spooler`; Lichen's default
//! storage is `Disk` (classic: `Memory`), because keeping data through outages is the point.

use std::path::PathBuf;
use std::time::Duration;

use lichen_cloud::{Endpoint, LinkConfig, StorageType, Version};
use serde_json::Value;

use super::builtins::ServiceContext;

const NUCLEUS: &str = "aws.greengrass.Nucleus";

/// What `stop` needs to close the link.
pub struct CloudLink {
    link: lichen_cloud::CloudLink,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn text(v: Option<Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: Option<Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn boolean(v: Option<Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(b),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Maps the nucleus `mqtt.*` settings (spec §5.3) onto the link's configuration.
fn link_config(ctx: &ServiceContext) -> LinkConfig {
    let config = &ctx.config;
    let nucleus = |path: &[&str]| {
        let mut p = vec!["services", NUCLEUS, "configuration"];
        p.extend_from_slice(path);
        config.get(&p)
    };
    let ms = |key: &str, default: u64| {
        Duration::from_millis(
            number(nucleus(&["mqtt", key]))
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(default),
        )
    };
    let thing = text(config.get(&["system", "thingName"])).unwrap_or_else(|| "lichen".into());
    let mut c = LinkConfig::new(&thing, ctx.root.join("work").join(NUCLEUS).join("spooler"));
    c.version = match text(nucleus(&["mqtt", "version"])).as_deref() {
        Some(v) if v.eq_ignore_ascii_case("mqtt3") => Version::V311,
        _ => Version::V5,
    };
    c.keep_alive = ms("keepAliveTimeoutMs", 60_000);
    c.ping_timeout = ms("pingTimeoutMs", 30_000);
    c.operation_timeout = ms("operationTimeoutMs", 30_000);
    c.reconnect_min = ms("minReconnectDelayMs", 1_000);
    c.reconnect_max = ms("maxReconnectDelayMs", 30_000);
    c.max_in_flight =
        number(nucleus(&["mqtt", "maxInFlightPublishes"])).map_or(5, |n| n.clamp(1, 100) as u16);
    c.max_message_size = number(nucleus(&["mqtt", "maxMessageSizeInBytes"]))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(131_072);
    c.max_publish_retry = number(nucleus(&["mqtt", "maxPublishRetry"])).unwrap_or(100);
    let spooler = |key: &str| nucleus(&["mqtt", "spooler", key]);
    c.spooler.storage = match text(spooler("storageType")).as_deref() {
        Some(s) if s.eq_ignore_ascii_case("memory") => StorageType::Memory,
        _ => StorageType::Disk,
    };
    c.spooler.max_size_bytes = number(spooler("maxSizeInBytes"))
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(2_621_440);
    c.spooler.keep_qos0_when_offline = boolean(spooler("keepQos0WhenOffline")).unwrap_or(false);
    if let Some(host) = text(nucleus(&["iotDataEndpoint"])) {
        let port = number(nucleus(&["mqtt", "port"]))
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(8883);
        let path = |key: &str| text(config.get(&["system", key])).map(PathBuf::from);
        match (
            path("rootCaPath"),
            path("certificateFilePath"),
            path("privateKeyPath"),
        ) {
            (Some(root_ca), Some(certificate), Some(private_key)) => {
                c.endpoint = Some(Endpoint {
                    host,
                    port,
                    root_ca,
                    certificate,
                    private_key,
                });
            }
            _ => tracing::error!(
                endpoint = %host,
                "iotDataEndpoint is set but system.rootCaPath, certificateFilePath or privateKeyPath is missing; the cloud link stays offline"
            ),
        }
    }
    c
}

/// Starts the cloud link (offline without an endpoint) and registers its IPC operations.
pub async fn start(ctx: &ServiceContext) -> anyhow::Result<Option<CloudLink>> {
    let config = link_config(ctx);
    let (link, recovered) = match lichen_cloud::CloudLink::start(config.clone()).await {
        Ok(l) => l,
        Err(lichen_cloud::CloudError::Tls { what }) => {
            tracing::error!(reason = %what, "cannot load the device credentials; the cloud link stays offline");
            let mut offline = config;
            offline.endpoint = None;
            lichen_cloud::CloudLink::start(offline).await?
        }
        Err(e) => return Err(e.into()),
    };
    if recovered.messages > 0 || recovered.truncated_bytes > 0 {
        tracing::info!(
            messages = recovered.messages,
            bytes = recovered.bytes,
            truncated_bytes = recovered.truncated_bytes,
            "cloud spool recovered"
        );
    }
    lichen_cloud::ipc::register(&ctx.router, link.clone());
    let tasks = lichen_cloud::ipc::forward_bus(link.clone(), ctx.iot_core.clone())?;
    Ok(Some(CloudLink { link, tasks }))
}

impl CloudLink {
    /// The link itself, for the services that talk to the cloud.
    pub fn handle(&self) -> &lichen_cloud::CloudLink {
        &self.link
    }
}

pub async fn stop(link: Option<CloudLink>) {
    if let Some(l) = link {
        l.link.shutdown().await;
        for t in l.tasks {
            t.abort();
        }
    }
}

/// Mirrors the link's connection status into `tx` (false while there is no link).
pub fn forward_status(link: &Option<CloudLink>, tx: tokio::sync::watch::Sender<bool>) {
    let Some(l) = link else { return };
    let mut status = l.link.status_watch();
    tokio::spawn(async move {
        loop {
            let up = *status.borrow_and_update() == lichen_cloud::ConnectionStatus::Connected;
            tx.send_replace(up);
            if status.changed().await.is_err() {
                tx.send_replace(false);
                return;
            }
        }
    });
}
