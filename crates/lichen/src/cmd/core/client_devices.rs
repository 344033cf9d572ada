//! Client devices in the core: `aws.greengrass.clientdevices.Auth` (the CA, device groups and the
//! client-device IPC operations) and the client-device broker under either Greengrass name,
//! `aws.greengrass.clientdevices.mqtt.EMQX` or `aws.greengrass.clientdevices.mqtt.Moquette`.
//! The broker takes its certificates and its connect/publish/subscribe decisions from the Auth
//! service and joins the `local_mqtt` bus.

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_clientauth::{BrokerSettings, ClientDeviceAuth, DeviceBroker, SERVICE_NAME};
use serde_json::Value;
use std::sync::Arc;

const EMQX: &str = "aws.greengrass.clientdevices.mqtt.EMQX";
const MOQUETTE: &str = "aws.greengrass.clientdevices.mqtt.Moquette";

/// The Auth service first: the brokers need its certificates when they start.
pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    let auth = ClientDeviceAuth::new(ctx.root.join("work").join(SERVICE_NAME));
    vec![
        Arc::new(AuthService {
            auth: auth.clone(),
            router: ctx.router.clone(),
        }),
        Arc::new(BrokerService::new(EMQX, "2.0.1", &auth, ctx)),
        Arc::new(BrokerService::new(MOQUETTE, "2.3.7", &auth, ctx)),
    ]
}

struct AuthService {
    auth: ClientDeviceAuth,
    router: Arc<lichen_ipc::Router>,
}

impl BuiltinService for AuthService {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn version(&self) -> &'static str {
        "2.5.3"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match configuration {
                Some(c) => match self.auth.apply(Some(&c)).await {
                    Ok(()) => {
                        self.auth.register_ipc(&self.router);
                        tracing::info!(service = SERVICE_NAME, "configured");
                    }
                    Err(e) => {
                        tracing::error!(service = SERVICE_NAME, error = %e, "configuration refused; the previous one stays in force");
                    }
                },
                None => {
                    ClientDeviceAuth::unregister_ipc(&self.router);
                    let _ = self.auth.apply(None).await;
                    tracing::info!(service = SERVICE_NAME, "stopped");
                }
            }
        })
    }
}

struct BrokerService {
    name: &'static str,
    version: &'static str,
    auth: ClientDeviceAuth,
    local_mqtt: lichen_bus::Bus,
    running: tokio::sync::Mutex<Option<DeviceBroker>>,
}

impl BrokerService {
    fn new(
        name: &'static str,
        version: &'static str,
        auth: &ClientDeviceAuth,
        ctx: &ServiceContext,
    ) -> BrokerService {
        BrokerService {
            name,
            version,
            auth: auth.clone(),
            local_mqtt: ctx.local_mqtt.clone(),
            running: tokio::sync::Mutex::new(None),
        }
    }
}

impl BuiltinService for BrokerService {
    fn name(&self) -> &'static str {
        self.name
    }

    fn version(&self) -> &'static str {
        self.version
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            if let Some(old) = running.take() {
                old.stop().await;
                tracing::info!(service = self.name, "stopped");
            }
            let Some(c) = configuration else {
                return;
            };
            let settings = match BrokerSettings::from_component_config(self.name, &c) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(service = self.name, error = %e, "invalid configuration; not started");
                    return;
                }
            };
            if self.auth.server_identity().borrow().is_none() {
                tracing::warn!(
                    service = self.name,
                    "{SERVICE_NAME} is not deployed: TLS handshakes fail until it is"
                );
            }
            match DeviceBroker::start(&self.auth, &settings, self.local_mqtt.clone()).await {
                Ok(b) => {
                    tracing::info!(service = self.name, addr = %b.local_addr(), "started");
                    *running = Some(b);
                }
                Err(e) => tracing::error!(service = self.name, error = %e, "cannot start"),
            }
        })
    }
}
