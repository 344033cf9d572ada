//! `aws.greengrass.ShadowManager` in the core: local shadows over IPC and local pub/sub, synced
//! with the cloud over the `iot_core` bus while the cloud link is up. A refused configuration
//! leaves the previous one in force.

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_shadow_manager::{SERVICE_NAME, ShadowManager};
use serde_json::Value;
use std::sync::Arc;

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    vec![Arc::new(ShadowService {
        manager: ShadowManager::new(
            ctx.root.join("work").join(SERVICE_NAME),
            ctx.router.clone(),
            ctx.bus.clone(),
            ctx.iot_core.clone(),
            ctx.cloud_connected.clone(),
        ),
        config: ctx.config.clone(),
    })]
}

struct ShadowService {
    manager: ShadowManager,
    config: lichen_config::ConfigStore,
}

impl BuiltinService for ShadowService {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn version(&self) -> &'static str {
        "2.3.9"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let thing = match self.config.get(&["system", "thingName"]) {
                Some(Value::String(s)) => s,
                _ => String::new(),
            };
            let stopping = configuration.is_none();
            match self.manager.apply(configuration.as_ref(), &thing).await {
                Ok(()) if stopping => tracing::info!(service = SERVICE_NAME, "stopped"),
                Ok(()) => tracing::info!(service = SERVICE_NAME, "configured"),
                Err(e) => {
                    tracing::error!(service = SERVICE_NAME, error = %e, "configuration refused; the previous one stays in force")
                }
            }
        })
    }
}
