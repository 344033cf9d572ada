//! Wires the Greengrass deployments service into the fleet: the jobs service delivers
//! thing-group deployments, the device endpoint brings fleet status, and job events and a
//! one-second bake check feed the deployments' per-device state.

use lichen_fleet_api::greengrass::{
    DEPLOYMENT_SHADOW, DeploymentJob, DeploymentJobs, DeploymentShadow, Deployments,
    ExecutionUpdate, JOB_NAMESPACE, service::BoxFuture,
};
use lichen_fleet_jobs::{CreateJob, JobEvent, JobsService, TargetSelection};
use lichen_fleet_mqtt::DeviceEndpoint;
use lichen_fleet_registry::Registry;
use lichen_fleet_shadow::{ShadowChange, ShadowEvent, ShadowService};
use std::sync::Arc;

/// The fleet status topic cores publish to.
const FLEET_STATUS: &str = "$aws/things/+/greengrassv2/health/json";

struct Jobs(JobsService);

fn config<T: serde::de::DeserializeOwned>(
    v: Option<serde_json::Value>,
    what: &str,
) -> Result<Option<T>, String> {
    v.map(|v| serde_json::from_value(v).map_err(|e| format!("iotJobConfiguration.{what}: {e}")))
        .transpose()
}

impl DeploymentJobs for Jobs {
    fn create_job(&self, job: DeploymentJob) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let req = CreateJob {
                job_id: job.job_id,
                targets: vec![job.target_arn],
                document: job.document.to_string(),
                description: job.description,
                target_selection: TargetSelection::Continuous,
                rollout: config(job.rollout, "jobExecutionsRolloutConfig")?,
                abort: config(job.abort, "abortConfig")?,
                timeout: config(job.timeout, "timeoutConfig")?,
                namespace_id: Some(JOB_NAMESPACE.into()),
            };
            self.0
                .create_job(req)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn cancel_job(&self, job_id: &str, reason: &str) -> BoxFuture<'_, Result<(), String>> {
        let (id, reason) = (job_id.to_string(), reason.to_string());
        Box::pin(async move {
            self.0
                .cancel_job(&id, false, Some(reason))
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The deployment shadow on the fleet's shadow service.
struct Shadow(ShadowService);

impl DeploymentShadow for Shadow {
    fn write_desired(
        &self,
        thing: &str,
        desired: serde_json::Value,
    ) -> BoxFuture<'_, Result<(), String>> {
        let thing = thing.to_string();
        Box::pin(async move {
            self.0
                .update(
                    &thing,
                    Some(DEPLOYMENT_SHADOW),
                    serde_json::json!({"state": {"desired": desired}}),
                    None,
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// Starts the deployments service on the fleet's jobs service.
pub fn start(
    registry: Arc<Registry>,
    devices: &DeviceEndpoint,
    jobs: JobsService,
    shadows: ShadowService,
) -> anyhow::Result<Arc<Deployments>> {
    let deployments = Deployments::new(
        registry,
        Arc::new(Jobs(jobs.clone())),
        Arc::new(Shadow(shadows.clone())),
    );

    // A core reports a thing deployment's status on its deployment shadow.
    let mut shadow_events = shadows.subscribe();
    let d = deployments.clone();
    tokio::spawn(async move {
        loop {
            match shadow_events.recv().await {
                Ok(ShadowEvent {
                    thing,
                    shadow: Some(name),
                    change: ShadowChange::Updated { documents },
                }) if name == DEPLOYMENT_SHADOW => {
                    if let Some(reported) = documents.pointer("/current/state/reported") {
                        d.on_shadow_reported(&thing, reported).await;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("deployments missed {n} shadow events");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });

    let mut status = devices.serve_topics(FLEET_STATUS)?;
    let d = deployments.clone();
    tokio::spawn(async move {
        while let Some(p) = status.recv().await {
            let thing = p.topic.split('/').nth(2).unwrap_or_default().to_string();
            if p.thing_name.as_deref() != Some(thing.as_str()) {
                tracing::warn!(topic = %p.topic, client_id = %p.client_id, "fleet status for a thing the device is not connected as; dropped");
                continue;
            }
            if let Err(e) = d.on_fleet_status(&thing, &p.payload).await {
                tracing::warn!(topic = %p.topic, "fleet status refused: {e}");
            }
        }
    });

    let mut events = jobs.subscribe();
    let d = deployments.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(JobEvent::ExecutionChanged {
                    job_id,
                    thing,
                    status,
                    status_details,
                }) => {
                    d.on_execution(ExecutionUpdate {
                        job_id,
                        thing,
                        status: status.as_str().to_string(),
                        status_details: status_details
                            .into_iter()
                            .map(|(k, v)| (k, serde_json::Value::String(v)))
                            .collect(),
                    })
                    .await;
                }
                Ok(JobEvent::JobAborted { job_id, .. }) => {
                    if let Err(e) = d.on_job_aborted(&job_id).await {
                        tracing::error!(job = %job_id, "rolling back an aborted deployment: {}", e.message);
                    }
                }
                Ok(JobEvent::JobCompleted { .. }) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("deployments missed {n} job events");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });

    let d = deployments.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            d.check_bake().await;
        }
    });
    Ok(deployments)
}
