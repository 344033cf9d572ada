//! `lichen.IndustrialCollector` in the core: Modbus TCP and OPC UA sources, asset-model
//! processing, and samples appended to the built-in stream manager's store in-process. A
//! refused configuration leaves the previous one in force.

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_industrial::{IndustrialCollector, SERVICE_NAME};
use serde_json::Value;
use std::sync::Arc;

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    vec![Arc::new(CollectorService {
        collector: IndustrialCollector::new(
            ctx.stream_store.clone(),
            ctx.root.join("work").join(SERVICE_NAME),
        ),
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
