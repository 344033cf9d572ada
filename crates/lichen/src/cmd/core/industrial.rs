//! `lichen.IndustrialCollector` in the core: Modbus TCP and OPC UA sources, asset-model
//! processing, and samples appended to the built-in stream manager's store in-process. A
//! refused configuration leaves the previous one in force.

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_industrial::{IndustrialCollector, OpcUaWorker, SERVICE_NAME};
use serde_json::Value;
use std::sync::Arc;

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    vec![Arc::new(CollectorService {
        collector: IndustrialCollector::new(
            ctx.stream_store.clone(),
            ctx.root.join("work").join(SERVICE_NAME),
        )
        .with_opcua(Arc::new(OpcUaWorker::new(worker_executable()))),
    })]
}

struct CollectorService {
    collector: IndustrialCollector,
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
            if let Err(e) = self.collector.apply(configuration.as_ref()).await {
                tracing::error!(service = SERVICE_NAME, error = %e, "configuration refused; the previous one stays in force");
            }
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
