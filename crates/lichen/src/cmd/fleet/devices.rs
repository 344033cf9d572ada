//! The device endpoint inside `lichen fleet serve`: the registry as its [`DeviceDirectory`],
//! registry changes turned into [`DeviceEndpoint::certificate_changed`], and `iot-data` (SigV4
//! service `iotdata`): Publish through the endpoint, and the shadow operations through the
//! shadow service (also for devices on the data plane).

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use lichen_broker::rustls::pki_types::pem::PemObject;
use lichen_broker::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use lichen_fleet_api::{ApiError, Call, ServiceHandler};
use lichen_fleet_mqtt::{
    CertificateStatus, DeviceCertificate, DeviceDirectory, DeviceEndpoint, DeviceThing,
    DirectoryError, EndpointConfig, EndpointError, QoS,
};
use lichen_fleet_registry::{self as registry, Registry};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How often every connected device's certificate is re-read: changes made by another fleet
/// process on the same database reach this one's devices within this time.
const RECHECK: Duration = Duration::from_secs(30);

/// The registry as the device endpoint sees it.
pub struct RegistryDirectory {
    registry: Arc<Registry>,
}

impl DeviceDirectory for RegistryDirectory {
    fn certificate(
        &self,
        certificate_id: &str,
    ) -> impl Future<Output = Result<Option<DeviceCertificate>, DirectoryError>> + Send {
        let registry = self.registry.clone();
        let id = certificate_id.to_owned();
        async move {
            // SQLite behind a mutex: keep it off the async workers.
            tokio::task::spawn_blocking(move || load(&registry, &id))
                .await
                .map_err(|e| DirectoryError(format!("registry lookup failed: {e}")))?
        }
    }
}

fn status(s: registry::CertificateStatus) -> CertificateStatus {
    use registry::CertificateStatus as R;
    match s {
        R::Active => CertificateStatus::Active,
        R::Inactive => CertificateStatus::Inactive,
        R::Revoked => CertificateStatus::Revoked,
        R::PendingTransfer => CertificateStatus::PendingTransfer,
        R::RegisterInactive => CertificateStatus::RegisterInactive,
        R::PendingActivation => CertificateStatus::PendingActivation,
    }
}

fn load(registry: &Registry, id: &str) -> Result<Option<DeviceCertificate>, DirectoryError> {
    let Some(auth) = registry
        .principal_authorization(id)
        .map_err(|e| DirectoryError(e.to_string()))?
    else {
        return Ok(None);
    };
    let mut policies = Vec::with_capacity(auth.policies.len());
    for (name, document) in &auth.policies {
        // The API validates documents as they are stored; one that still does not parse grants
        // nothing (and an unparsed Deny cannot be honoured, so it is said loudly).
        match lichen_fleet_policy::Policy::parse(name, document) {
            Ok(p) => policies.push(p),
            Err(e) => tracing::error!(
                policy = name,
                certificate = id,
                "policy ignored for device authorization: {e}"
            ),
        }
    }
    Ok(Some(DeviceCertificate {
        id: auth.certificate_id,
        status: status(auth.status),
        things: auth
            .things
            .into_iter()
            .map(|t| DeviceThing {
                name: t.name,
                thing_type: t.thing_type,
                attributes: t.attributes,
            })
            .collect(),
        policies,
    }))
}

/// Starts the device endpoint on `listen` with the fleet's server certificate, trusting the
/// fleet CA for device certificates, and keeps its connections current with the registry.
pub async fn start(
    listen: SocketAddr,
    registry: Arc<Registry>,
    ca_pem: &str,
    server_cert: &Path,
    server_key: &Path,
) -> anyhow::Result<DeviceEndpoint> {
    use anyhow::Context;
    let server_chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(server_cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .with_context(|| format!("reading {}", server_cert.display()))?;
    let server_key = PrivateKeyDer::from_pem_file(server_key)
        .with_context(|| format!("reading {}", server_key.display()))?;
    let client_cas: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("reading the fleet CA certificate")?;
    let config = EndpointConfig {
        listen,
        server_chain,
        server_key,
        client_cas,
        region: registry.region().to_owned(),
        account: registry.account().to_owned(),
        broker: Default::default(),
        recheck_interval: Some(RECHECK),
    };
    // Subscribed before the endpoint admits anyone, so no change after an admission is missed.
    let changes = registry.subscribe();
    let endpoint = DeviceEndpoint::start(
        config,
        Arc::new(RegistryDirectory {
            registry: registry.clone(),
        }),
    )
    .await?;
    tokio::spawn(follow_changes(registry, endpoint.clone(), changes));
    Ok(endpoint)
}

/// Every committed registry change re-reads the certificates it may affect; the endpoint
/// disconnects the devices no longer allowed (a revoked certificate goes within moments).
async fn follow_changes(
    registry: Arc<Registry>,
    endpoint: DeviceEndpoint,
    mut changes: tokio::sync::broadcast::Receiver<registry::Change>,
) {
    loop {
        let change = match changes.recv().await {
            Ok(c) => c,
            Err(RecvError::Lagged(n)) => {
                // The periodic recheck re-reads every connected certificate.
                tracing::warn!(
                    "device endpoint missed {n} registry changes; they apply at the next recheck (within {RECHECK:?})"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let r = registry.clone();
        let affected =
            match tokio::task::spawn_blocking(move || r.certificates_affected_by(&change)).await {
                Ok(Ok(ids)) => ids,
                Ok(Err(e)) => {
                    tracing::warn!("device endpoint: reading a change's certificates: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("device endpoint: reading a change's certificates: {e}");
                    continue;
                }
            };
        for id in affected {
            if let Err(e) = endpoint.certificate_changed(&id).await {
                tracing::warn!(certificate = id, "device endpoint: {e}");
            }
        }
    }
}

/// `iot-data` (signing name `iotdata`): Publish, and the device shadow operations.
pub struct IotData {
    pub endpoint: DeviceEndpoint,
    pub shadows: lichen_fleet_shadow::ShadowService,
}

impl ServiceHandler for IotData {
    fn handle(&self, call: Call) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            if let Some(r) = self.shadows.handle_rest(&call).await {
                return r;
            }
            match self.publish(&call).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        })
    }

    fn handle_device(
        &self,
        certificate_id: &str,
        call: Call,
    ) -> Option<Pin<Box<dyn Future<Output = Response> + Send + '_>>> {
        let certificate_id = certificate_id.to_string();
        Some(Box::pin(async move {
            match self
                .shadows
                .handle_device_rest(&certificate_id, &call)
                .await
            {
                Some(r) => r,
                None => ApiError::unknown_operation(call.method.as_str(), &call.path, "iotdata")
                    .into_response(),
            }
        }))
    }
}

impl IotData {
    async fn publish(&self, call: &Call) -> Result<Response, ApiError> {
        let segs = call.segs();
        let topic = match (&call.method, segs.as_slice()) {
            (&Method::POST, ["topics", topic]) => *topic,
            _ => {
                return Err(ApiError::unknown_operation(
                    call.method.as_str(),
                    &call.path,
                    "iotdata",
                ));
            }
        };
        let qos = match call.q_int("qos")? {
            None | Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            Some(q) => {
                return Err(ApiError::invalid(format!(
                    "qos={q} is not supported: use 0 or 1"
                )));
            }
        };
        let retain = call.q_bool("retain")?.unwrap_or(false);
        self.endpoint
            .publish(topic, call.body.clone(), qos, retain)
            .await
            .map_err(|e| match e {
                EndpointError::Stopped => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailableException",
                    "the device endpoint has stopped",
                ),
                e => ApiError::invalid(e.to_string()),
            })?;
        Ok(StatusCode::OK.into_response())
    }
}
