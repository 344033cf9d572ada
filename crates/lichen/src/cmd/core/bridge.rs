//! `aws.greengrass.clientdevices.mqtt.Bridge` in the core: the bridge runs over the service
//! context's buses (`local_mqtt`, `bus`, `iot_core`) while the component is deployed. A refused
//! configuration leaves the previous one in force.

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_bridge::{Bridge, BridgeConfig, Buses, SERVICE_NAME};
use serde_json::Value;
use std::sync::Arc;

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    vec![Arc::new(BridgeService {
        bridge: Bridge::new(Buses {
            local_mqtt: ctx.local_mqtt.clone(),
            pubsub: ctx.bus.clone(),
            iot_core: ctx.iot_core.clone(),
        }),
    })]
}

struct BridgeService {
    bridge: Bridge,
}

impl BuiltinService for BridgeService {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn version(&self) -> &'static str {
        "2.3.2"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(c) = configuration else {
                self.bridge.stop().await;
                tracing::info!(service = SERVICE_NAME, "stopped");
                return;
            };
            match BridgeConfig::from_component_config(&c) {
                Ok(config) => {
                    self.bridge.apply(&config).await;
                    tracing::info!(
                        service = SERVICE_NAME,
                        mappings = config.mappings.len(),
                        "configured"
                    );
                }
                Err(e) => {
                    tracing::error!(service = SERVICE_NAME, error = %e, "configuration refused; the previous one stays in force");
                }
            }
        })
    }
}
