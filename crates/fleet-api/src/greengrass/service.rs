//! The deployments service: records deployments in the registry and delivers them — a thing
//! group through a CONTINUOUS job in namespace `aws-gg-deployment` ([`DeploymentJobs`]), a
//! thing through its `AWSManagedGreengrassV2Deployment` shadow ([`DeploymentShadow`]) — and
//! follows what devices report: job execution updates, fleet status, aborted rollouts.
//!
//! Fleet-wide safety (our extensions):
//! - **Rollback on abort.** When a deployment's job aborts (its abort criteria tripped), the
//!   deployment is FAILED and the fleet creates the next revision for the same target with the
//!   components of the newest earlier revision that did not fail (tag `lichen:rollbackOf`), so
//!   every device that took the failed revision is returned to the previous one. Devices that
//!   never took it receive the same components they run, which changes nothing.
//! - **Bake time** (tag `lichen:bakeTimeSeconds`). A device's SUCCEEDED report is recorded as
//!   the device's status, but the deployment's own per-device state (what
//!   ListEffectiveDeployments shows) stays IN_PROGRESS until fleet status has shown each of the
//!   deployment's components RUNNING at its version for the bake time; an ERRORED or BROKEN
//!   component, or no such status within the bake time plus ten minutes, makes it FAILED.
//!   Such failures come after the job execution SUCCEEDED, so the jobs service's abort
//!   criteria cannot see them: the deployment judges its FAILED/ALL criteria on its own
//!   per-device state, and when one trips it stops the job and rolls back as an abort does.
//!
//! Architecture invariant: a deployment is recorded (committed) before anything is sent to a
//! device, so every delivered document names a deployment the fleet knows.

use super::document::{self, ROLLBACK_TAG};
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use lichen_fleet_registry::deployments::{ACTIVE, CANCELED, FAILED};
use lichen_fleet_registry::{Deployment, NewDeployment, Registry};
use serde_json::{Map, Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The jobs namespace Greengrass deployments use.
pub const JOB_NAMESPACE: &str = "aws-gg-deployment";
/// The named shadow single-thing deployments use.
pub const DEPLOYMENT_SHADOW: &str = "AWSManagedGreengrassV2Deployment";
/// How long past the bake time a held success waits for fleet status before it fails.
const BAKE_GRACE_MS: i64 = 10 * 60 * 1000;

/// A job that delivers a thing-group deployment.
#[derive(Debug, Clone)]
pub struct DeploymentJob {
    pub job_id: String,
    /// The thing group's ARN (the job is CONTINUOUS: later members get it too).
    pub target_arn: String,
    /// The deployment document (greengrass-core §6.3), as the job document.
    pub document: Value,
    pub description: Option<String>,
    /// `iot.CreateJob` shapes from `iotJobConfiguration`, when given.
    pub rollout: Option<Value>,
    pub abort: Option<Value>,
    pub timeout: Option<Value>,
}

/// The jobs service as deployments use it.
pub trait DeploymentJobs: Send + Sync {
    fn create_job(&self, job: DeploymentJob) -> BoxFuture<'_, Result<(), String>>;
    fn cancel_job(&self, job_id: &str, reason: &str) -> BoxFuture<'_, Result<(), String>>;
}

/// The deployment shadow: writes `state.desired` of the thing's
/// `AWSManagedGreengrassV2Deployment` shadow, as a device's update would.
pub trait DeploymentShadow: Send + Sync {
    fn write_desired(&self, thing: &str, desired: Value) -> BoxFuture<'_, Result<(), String>>;
}

/// A job execution's change, as the jobs service announces it.
#[derive(Debug, Clone)]
pub struct ExecutionUpdate {
    pub job_id: String,
    pub thing: String,
    pub status: String,
    pub status_details: Map<String, Value>,
}

/// A validated CreateDeployment (see [`super::document::validate_request`] for `spec`).
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub target_arn: String,
    pub name: Option<String>,
    pub spec: Value,
    pub parent_target_arn: Option<String>,
    /// The aborted deployment this one undoes.
    pub rollback_of: Option<String>,
    pub client_token: Option<String>,
}

pub struct Deployments {
    pub(crate) registry: Arc<Registry>,
    jobs: Arc<dyn DeploymentJobs>,
    shadow: Arc<dyn DeploymentShadow>,
}

fn internal(what: &str, e: String) -> ApiError {
    tracing::error!("{what}: {e}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerException",
        format!("{what}: {e}"),
    )
}

/// Runs a blocking registry call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> lichen_fleet_registry::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal("registry task", e.to_string()))?
        .map_err(ApiError::from)
}

impl Deployments {
    pub fn new(
        registry: Arc<Registry>,
        jobs: Arc<dyn DeploymentJobs>,
        shadow: Arc<dyn DeploymentShadow>,
    ) -> Arc<Self> {
        Arc::new(Deployments {
            registry,
            jobs,
            shadow,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The document devices receive for `d`.
    pub fn document(&self, d: &Deployment) -> Value {
        let spec: Value = serde_json::from_str(&d.spec).unwrap_or_else(|_| json!({}));
        document::device_document(d, &spec, self.registry.region(), self.registry.account())
    }

    /// Records a validated deployment and delivers it; a superseded deployment's delivery
    /// stops. Returns the new deployment.
    pub async fn create(&self, who: &str, req: CreateRequest) -> ApiResult<Deployment> {
        let CreateRequest {
            target_arn,
            name,
            spec,
            parent_target_arn,
            rollback_of,
            client_token,
        } = req;
        let target_arn = target_arn.as_str();
        let (kind, target) = document::parse_target(target_arn)?;
        let registry = self.registry.clone();
        let (t, k) = (target.clone(), kind);
        // The target must exist (its ARN is ours).
        blocking(move || match k {
            "thing" => registry.describe_thing(&t).map(|_| ()),
            _ => registry.describe_thing_group(&t).map(|_| ()),
        })
        .await?;
        let new = NewDeployment {
            id: uuid::Uuid::new_v4().to_string(),
            target_arn: target_arn.to_string(),
            name,
            spec: spec.to_string(),
            with_job: kind == "thinggroup",
            parent_target_arn,
            rollback_of,
            client_token,
        };
        let registry = self.registry.clone();
        let who = who.to_string();
        let created = blocking(move || registry.create_deployment(&who, &new)).await?;
        if created.replayed {
            return Ok(created.deployment);
        }
        let d = created.deployment;
        if let Some(old) = &created.superseded
            && let Some(job) = &old.job_id
            && let Err(e) = self
                .jobs
                .cancel_job(job, &format!("superseded by deployment {}", d.id))
                .await
        {
            tracing::warn!(deployment = %old.id, "stopping the superseded deployment's job: {e}");
        }
        let doc = self.document(&d);
        let delivered = if kind == "thinggroup" {
            let job = spec
                .get("iotJobConfiguration")
                .cloned()
                .unwrap_or(json!({}));
            let pick = |k: &str| job.get(k).filter(|v| !v.is_null()).cloned();
            self.jobs
                .create_job(DeploymentJob {
                    job_id: d.id.clone(),
                    target_arn: target_arn.to_string(),
                    document: document::for_delivery(doc, document::JOB_DOCUMENT_LIMIT),
                    description: d.name.clone(),
                    rollout: pick("jobExecutionsRolloutConfig"),
                    abort: pick("abortConfig"),
                    timeout: pick("timeoutConfig"),
                })
                .await
        } else {
            self.shadow
                .write_desired(
                    &target,
                    json!({
                        "fleetConfig": document::for_delivery(doc, document::SHADOW_DOCUMENT_LIMIT).to_string(),
                        "desiredStatus": "ACTIVE",
                    }),
                )
                .await
        };
        if let Err(e) = delivered {
            let registry = self.registry.clone();
            let id = d.id.clone();
            let _ = blocking(move || registry.set_deployment_status("lichen", &id, FAILED)).await;
            return Err(internal(
                &format!("delivering deployment {} to {target_arn}", d.id),
                e,
            ));
        }
        Ok(d)
    }

    /// CancelDeployment: stops the job (or tells the thing through its shadow).
    pub async fn cancel(&self, who: &str, id: &str) -> ApiResult<Deployment> {
        let registry = self.registry.clone();
        let (w, i) = (who.to_string(), id.to_string());
        let d = blocking(move || registry.get_deployment(&i)).await?;
        if d.status != ACTIVE {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                code: "ConflictException",
                message: format!(
                    "deployment {id} is {}; only an ACTIVE deployment can be cancelled",
                    d.status
                ),
                extra: vec![
                    ("resourceId", id.to_string()),
                    ("resourceType", "deployment".into()),
                ],
            });
        }
        let registry = self.registry.clone();
        let i = id.to_string();
        blocking(move || registry.set_deployment_status(&w, &i, CANCELED)).await?;
        let stopped = match &d.job_id {
            Some(job) => self.jobs.cancel_job(job, "deployment cancelled").await,
            None => {
                let (_, thing) = document::parse_target(&d.target_arn)?;
                let doc = self.document(&d);
                self.shadow
                    .write_desired(
                        &thing,
                        json!({"fleetConfig": doc.to_string(), "desiredStatus": "CANCELED"}),
                    )
                    .await
            }
        };
        stopped.map_err(|e| internal(&format!("cancelling deployment {id}"), e))?;
        Ok(d)
    }

    /// A job execution changed: the device's view of the deployment follows.
    pub async fn on_execution(&self, u: ExecutionUpdate) {
        let registry = self.registry.clone();
        let r = blocking(move || {
            let Some(d) = registry.deployment_for_job(&u.job_id)? else {
                return Ok(());
            };
            let spec: Value = serde_json::from_str(&d.spec).unwrap_or_default();
            let hold = document::bake_seconds(&spec) > 0;
            let detail = |k: &str| u.status_details.get(k).and_then(Value::as_str);
            let reason =
                detail("deployment-failure-cause").or(detail("detailed-deployment-status"));
            let list = |k: &str| {
                detail(k)
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .unwrap_or(json!([]))
            };
            let details = json!({
                "errorStack": list("deployment-error-stack"),
                "errorTypes": list("deployment-error-types"),
            });
            let status = if u.status == "REMOVED" {
                "CANCELED"
            } else {
                u.status.as_str()
            };
            registry.record_device_report(
                &u.thing,
                &d.id,
                status,
                reason,
                &details.to_string(),
                hold,
            )?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!("recording a deployment job update: {}", e.message);
        }
    }

    /// A job's abort criteria tripped: the deployment failed, and its target goes back to the
    /// previous revision (see the module doc).
    pub async fn on_job_aborted(&self, job_id: &str) -> ApiResult<Option<Deployment>> {
        let registry = self.registry.clone();
        let j = job_id.to_string();
        let Some(d) = blocking(move || registry.deployment_for_job(&j)).await? else {
            return Ok(None);
        };
        if d.rollback_of.is_some() {
            // A rollback that aborts is not rolled back again.
            let registry = self.registry.clone();
            let id = d.id.clone();
            blocking(move || registry.set_deployment_status("lichen", &id, FAILED)).await?;
            return Ok(None);
        }
        let registry = self.registry.clone();
        let (id, target, revision) = (d.id.clone(), d.target_arn.clone(), d.revision);
        let previous = blocking(move || {
            registry.set_deployment_status("lichen", &id, FAILED)?;
            registry.previous_good_deployment(&target, revision)
        })
        .await?;
        if !d.is_latest {
            return Ok(None);
        }
        let mut spec: Value = match &previous {
            Some(p) => serde_json::from_str(&p.spec).unwrap_or_else(|_| json!({})),
            None => json!({"components": {}}),
        };
        // The rollback reaches every member at once: no rollout limits, no abort.
        spec["iotJobConfiguration"] = json!({});
        if !spec["tags"].is_object() {
            spec["tags"] = json!({});
        }
        spec["tags"][ROLLBACK_TAG] = json!(d.id);
        let name = Some(format!(
            "rollback of {}",
            d.name.clone().unwrap_or_else(|| d.id.clone())
        ));
        tracing::warn!(deployment = %d.id, target = %d.target_arn, previous = ?previous.as_ref().map(|p| &p.id), "rollout aborted; rolling the target back");
        let rollback = self
            .create(
                "lichen",
                CreateRequest {
                    target_arn: d.target_arn.clone(),
                    name,
                    spec,
                    parent_target_arn: d.parent_target_arn.clone(),
                    rollback_of: Some(d.id.clone()),
                    client_token: None,
                },
            )
            .await?;
        Ok(Some(rollback))
    }

    /// A fleet status message from `thing` (topic `$aws/things/<thing>/greengrassv2/health/json`).
    pub async fn on_fleet_status(&self, thing: &str, payload: &[u8]) -> Result<bool, String> {
        let report = super::fleet_status::parse(thing, payload)?;
        let registry = self.registry.clone();
        let t = thing.to_string();
        let applied = blocking(move || {
            let applied = registry.record_fleet_status(&t, &report.report)?;
            // A thing deployment's outcome arrives here (the shadow carries it too).
            if applied && let Some((id, status, reason)) = &report.deployment {
                let d = registry.get_deployment(id).ok();
                if d.is_some_and(|d| d.job_id.is_none()) {
                    let spec_hold = registry
                        .get_deployment(id)
                        .ok()
                        .and_then(|d| serde_json::from_str::<Value>(&d.spec).ok())
                        .is_some_and(|s| document::bake_seconds(&s) > 0);
                    registry.record_device_report(
                        &t,
                        id,
                        status,
                        reason.as_deref(),
                        "{\"errorStack\":[],\"errorTypes\":[]}",
                        spec_hold,
                    )?;
                }
            }
            Ok(applied)
        })
        .await
        .map_err(|e| e.message)?;
        Ok(applied)
    }

    /// The device reported on its deployment shadow (`state.reported`: the configuration ARN it
    /// reports for, `status`, `statusDetails`).
    pub async fn on_shadow_reported(&self, thing: &str, reported: &Value) {
        let Some(arn) = reported
            .get("fleetConfigurationArnForStatus")
            .and_then(Value::as_str)
        else {
            return;
        };
        let Some(status) = reported.get("status").and_then(Value::as_str) else {
            return;
        };
        // arn:aws:greengrass:<r>:<acct>:configuration:thing/<T>:<revision>
        let Some((resource, revision)) = arn
            .split_once(":configuration:")
            .and_then(|(_, r)| r.rsplit_once(':'))
            .and_then(|(res, rev)| Some((res.to_string(), rev.parse::<i64>().ok()?)))
        else {
            tracing::warn!(
                thing,
                arn,
                "deployment shadow reports for an ARN that is not a configuration ARN"
            );
            return;
        };
        let details = reported.get("statusDetails").cloned().unwrap_or(json!({}));
        let reason = details
            .get("failureCause")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .or(details.get("detailedStatus").and_then(Value::as_str))
            .map(str::to_owned);
        let stored = json!({
            "errorStack": details.get("errorStack").cloned().unwrap_or(json!([])),
            "errorTypes": details.get("errorTypes").cloned().unwrap_or(json!([])),
        });
        let registry = self.registry.clone();
        let (t, status) = (thing.to_string(), status.to_string());
        let r = blocking(move || {
            let target = registry.arn(&resource);
            let Some(d) = registry.deployment_revision(&target, revision)? else {
                return Ok(());
            };
            let spec: Value = serde_json::from_str(&d.spec).unwrap_or_default();
            registry.record_device_report(
                &t,
                &d.id,
                &status,
                reason.as_deref(),
                &stored.to_string(),
                document::bake_seconds(&spec) > 0,
            )?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!("recording a deployment shadow report: {}", e.message);
        }
    }

    /// Ends held successes whose bake time has passed (or whose components failed). Run
    /// periodically; returns how many were ended.
    pub async fn check_bake(&self) -> usize {
        let registry = self.registry.clone();
        let r = blocking(move || {
            let now = lichen_now_ms();
            let mut ended = 0;
            let mut failed = std::collections::BTreeSet::new();
            for e in registry.held_successes()? {
                let d = registry.get_deployment(&e.deployment_id)?;
                let spec: Value = serde_json::from_str(&d.spec).unwrap_or_default();
                let bake_ms = document::bake_seconds(&spec) as i64 * 1000;
                let installed = registry.installed_components(&e.thing_name)?;
                let mut verdict: Option<(&str, String)> = None;
                let mut all_baked = true;
                let wanted = spec["components"].as_object().cloned().unwrap_or_default();
                for (name, c) in &wanted {
                    let version = c["componentVersion"].as_str().unwrap_or_default();
                    match installed
                        .iter()
                        .find(|i| &i.name == name && i.version == version)
                    {
                        Some(i) if matches!(i.lifecycle_state.as_str(), "ERRORED" | "BROKEN") => {
                            verdict = Some((
                                FAILED,
                                format!(
                                    "{name}@{version} became {} during the bake time of {}s",
                                    i.lifecycle_state,
                                    bake_ms / 1000
                                ),
                            ));
                            break;
                        }
                        Some(i) if i.running_since_ms.is_some_and(|s| now - s >= bake_ms) => {}
                        Some(i)
                            if i.lifecycle_state == "FINISHED"
                                && now - i.last_status_change_ms >= bake_ms => {}
                        _ => all_baked = false,
                    }
                }
                let started = e.device_succeeded_ms.unwrap_or(e.modified_ms);
                if verdict.is_none() && all_baked {
                    verdict = Some(("SUCCEEDED", String::new()));
                } else if verdict.is_none() && now - started > bake_ms + BAKE_GRACE_MS {
                    verdict = Some((
                        FAILED,
                        format!(
                            "fleet status did not show the deployment's components RUNNING for \
                             the bake time of {}s",
                            bake_ms / 1000
                        ),
                    ));
                }
                if let Some((status, reason)) = verdict {
                    if status == FAILED {
                        failed.insert(d.id.clone());
                    }
                    let reason = (!reason.is_empty()).then_some(reason);
                    registry.finish_effective_deployment(
                        &e.thing_name,
                        &e.deployment_id,
                        status,
                        reason.as_deref(),
                    )?;
                    ended += 1;
                }
            }
            Ok((ended, failed))
        })
        .await;
        let (ended, failed) = r.unwrap_or_else(|e| {
            tracing::warn!("checking bake times: {}", e.message);
            (0, Default::default())
        });
        for id in failed {
            if let Err(e) = self.judge_abort(&id).await {
                tracing::warn!(deployment = %id, "judging abort criteria after a failed bake: {}", e.message);
            }
        }
        ended
    }

    /// A device failed its bake time after its job execution had SUCCEEDED, which the jobs
    /// service's abort criteria no longer see: judge the deployment's FAILED/ALL criteria on the
    /// deployment's own per-device state, and when one trips, stop the job and roll back as an
    /// abort does. Returns whether it tripped.
    pub async fn judge_abort(&self, id: &str) -> ApiResult<bool> {
        let registry = self.registry.clone();
        let i = id.to_string();
        let (d, rows) = blocking(move || {
            Ok((
                registry.get_deployment(&i)?,
                registry.effective_deployments_of(&i)?,
            ))
        })
        .await?;
        let Some(job) = d.job_id.clone().filter(|_| d.status == ACTIVE) else {
            return Ok(false);
        };
        let spec: Value = serde_json::from_str(&d.spec).unwrap_or_default();
        let count = |statuses: &[&str]| {
            rows.iter()
                .filter(|e| statuses.contains(&e.execution_status.as_str()))
                .count() as f64
        };
        let executed = count(&["SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED"]);
        let tripped = spec
            .pointer("/iotJobConfiguration/abortConfig/criteriaList")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                let failures = match c["failureType"].as_str() {
                    Some("FAILED") => count(&["FAILED"]),
                    Some("ALL") => count(&["FAILED", "TIMED_OUT", "REJECTED"]),
                    _ => return false,
                };
                let min = c["minNumberOfExecutedThings"].as_f64().unwrap_or(1.0);
                let threshold = c["thresholdPercentage"].as_f64().unwrap_or(100.0);
                executed >= min && executed > 0.0 && failures * 100.0 / executed >= threshold
            });
        if !tripped {
            return Ok(false);
        }
        tracing::warn!(deployment = %id, "devices failed their bake time past the abort criteria");
        if let Err(e) = self
            .jobs
            .cancel_job(
                &job,
                "devices failed their bake time past the abort criteria",
            )
            .await
        {
            tracing::warn!(deployment = %id, "stopping the job after failed bakes: {e}");
        }
        self.on_job_aborted(&job).await?;
        Ok(true)
    }
}

fn lichen_now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
