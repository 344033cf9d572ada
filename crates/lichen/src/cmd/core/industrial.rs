//! `lichen.IndustrialCollector` in the core: Modbus TCP and OPC UA sources, asset-model
//! processing, and samples appended to the built-in stream manager's store in-process. A
//! refused configuration leaves the previous one in force; one refused only because an OPC UA
//! source's user-name secret cannot be read yet is tried again until it can.

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_industrial::{
    IndustrialCollector, OpcUaWorker, SERVICE_NAME, SecretLookup, WorkerIdentity,
};
use serde_json::Value;
use std::sync::Arc;

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    let workers = Arc::new(OpcUaWorker::new(worker_executable()));
    vec![Arc::new(CollectorService {
        collector: Arc::new(
            IndustrialCollector::new(
                ctx.stream_store.clone(),
                ctx.root.join("work").join(SERVICE_NAME),
            )
            .with_opcua(workers.clone())
            .with_secrets(secret_lookup(ctx.secrets.clone())),
        ),
        workers,
        config: ctx.config.clone(),
        retry: std::sync::Mutex::new(None),
    })]
}

/// OPC UA user names and passwords come from the secret manager's store. Built-ins are
/// reconciled in order, the secret manager before the collector, so a deployment that brings
/// both has synced its secrets by the time the collector asks.
fn secret_lookup(slot: super::builtins::SecretManagerSlot) -> SecretLookup {
    Arc::new(move |id: String| {
        let slot = slot.clone();
        Box::pin(async move {
            let manager = slot.lock().await.clone().ok_or_else(|| {
                format!(
                    "{} is not deployed; deploy it with this secret in its cloudSecrets",
                    lichen_secrets::SERVICE_NAME
                )
            })?;
            manager.current_string(&id).await
        })
    })
}

/// How often a configuration refused only because a secret could not be read is tried again.
const SECRET_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

struct CollectorService {
    collector: Arc<IndustrialCollector>,
    /// The OPC UA workers' runner, told which user to run them as at each configuration.
    workers: Arc<OpcUaWorker>,
    config: lichen_config::ConfigStore,
    /// Retries a configuration whose secret could not be read yet (offline at its deployment).
    retry: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn secret_unreadable(e: &lichen_industrial::ConfigError) -> bool {
    e.field.ends_with(".usernameSecretArn")
}

impl BuiltinService for CollectorService {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn version(&self) -> &'static str {
        "1.0.0"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(old) = self.retry.lock().unwrap_or_else(|p| p.into_inner()).take() {
                old.abort();
            }
            // OPC UA workers parse what servers send: they run as the collector's component
            // user (`runWith.posixUser`, else `runWithDefault.posixUser`), never as root when
            // one is configured.
            match super::builtins::component_user(&self.config, Some(SERVICE_NAME)) {
                Ok(user) => self.workers.set_identity(user.map(|u| WorkerIdentity {
                    uid: u.uid,
                    gid: u.gid,
                })),
                Err(e) => {
                    tracing::error!(service = SERVICE_NAME, error = %e, "configuration refused; the previous one stays in force");
                    return;
                }
            }
            let Err(e) = self.collector.apply(configuration.as_ref()).await else {
                return;
            };
            tracing::error!(service = SERVICE_NAME, error = %e, "configuration refused; the previous one stays in force");
            let Some(configuration) = configuration.filter(|_| secret_unreadable(&e)) else {
                return;
            };
            // The secret may reach the device later (the cloud was unreachable): try again.
            let collector = self.collector.clone();
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SECRET_RETRY).await;
                    match collector.apply(Some(&configuration)).await {
                        Ok(()) => {
                            tracing::info!(
                                service = SERVICE_NAME,
                                "configuration applied once its secret could be read"
                            );
                            return;
                        }
                        Err(e) if secret_unreadable(&e) => {
                            tracing::debug!(service = SERVICE_NAME, error = %e, "secret still unreadable")
                        }
                        Err(e) => {
                            tracing::error!(service = SERVICE_NAME, error = %e, "configuration refused");
                            return;
                        }
                    }
                }
            });
            *self.retry.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        })
    }
}

/// `lichen-opcua` beside the running `lichen` (as `lichen-inference` is), else on PATH; the OPC
/// UA stack runs there, never in the core's process.
fn worker_executable() -> std::path::PathBuf {
    const NAME: &str = "lichen-opcua";
    let beside = std::env::current_exe()
        .map(|me| me.with_file_name(NAME))
        .unwrap_or_else(|_| NAME.into());
    if beside.is_file() {
        return beside;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(NAME))
                .find(|p| p.is_file())
        })
        .unwrap_or(beside)
}
