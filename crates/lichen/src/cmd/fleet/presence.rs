//! Device connection state: each lifecycle event of the device endpoint is recorded in the
//! registry (what makes a disconnected core UNHEALTHY) and published, as AWS IoT does, on
//! `$aws/events/presence/connected|disconnected/<clientId>`.

use lichen_fleet_mqtt::{DeviceEndpoint, PresenceEvent, QoS};
use lichen_fleet_registry::Registry;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// Starts recording. `sole_process`: this process serves every device of the registry
/// (SQLite), so connections recorded as open but not open here are stale (a previous run's).
pub fn start(devices: &DeviceEndpoint, registry: Arc<Registry>, sole_process: bool) {
    let mut events = devices.presence();
    let devices = devices.clone();
    tokio::spawn(async move {
        if sole_process {
            resync(&devices, &registry).await;
        }
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("{n} device lifecycle events missed; resynchronizing");
                    if sole_process {
                        resync(&devices, &registry).await;
                    }
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let r = registry.clone();
            let e = event.clone();
            let recorded = tokio::task::spawn_blocking(move || match &e {
                PresenceEvent::Connected {
                    client_id,
                    thing_name,
                    certificate_id,
                    session_id,
                    timestamp_ms,
                    ..
                } => r.record_connected(
                    client_id,
                    thing_name.as_deref(),
                    certificate_id,
                    session_id,
                    *timestamp_ms,
                ),
                PresenceEvent::Disconnected {
                    client_id,
                    session_id,
                    reason,
                    timestamp_ms,
                    ..
                } => r
                    .record_disconnected(client_id, session_id, reason, *timestamp_ms)
                    .map(|_| ()),
            })
            .await;
            match recorded {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(
                    client_id = event.client_id(),
                    "recording the device's connection state: {e}"
                ),
                Err(e) => tracing::warn!("recording a device's connection state: {e}"),
            }
            if let Err(e) = devices
                .publish(
                    &event.topic(),
                    event.payload().into(),
                    QoS::AtMostOnce,
                    false,
                )
                .await
            {
                tracing::debug!("publishing a lifecycle event: {e}");
            }
        }
    });
}

async fn resync(devices: &DeviceEndpoint, registry: &Arc<Registry>) {
    let live = devices.connected_clients();
    let r = registry.clone();
    match tokio::task::spawn_blocking(move || {
        r.reset_presence(&live, "SERVER_INITIATED_DISCONNECT")
    })
    .await
    {
        Ok(Ok(n)) if n > 0 => tracing::info!("{n} devices recorded as connected are not"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("resetting devices' connection state: {e}"),
        Err(e) => tracing::warn!("resetting devices' connection state: {e}"),
    }
}
