//! Deployments by jobs and by the deployment shadow (spec §6.4): subscriptions (the link
//! restores them after every reconnect), `$next` / shadow `get` at start, on reconnect and on
//! notifications, queueing in the engine, cancellation, and status reports.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use lichen_cloud::{CloudMessage, ConnectionStatus, MessageProperties, QoS};
use lichen_deploy::{CloudSource, DeploymentRecord, DeploymentStatus, parse_document};
use serde_json::{Value, json};

use super::reported::Reported;
use super::{Cloud, Context};

const NAMESPACE: &str = "namespace-aws-gg-deployment";
const SHADOW: &str = "AWSManagedGreengrassV2Deployment";

struct Source {
    ctx: Arc<Context>,
    cloud: Cloud,
    reported: Reported,
    /// Newest deployment-shadow version seen (older documents are skipped).
    shadow_version: AtomicI64,
}

impl Source {
    fn jobs(&self, rest: &str) -> String {
        format!("$aws/things/{}/jobs/{rest}", self.ctx.thing)
    }

    fn shadow(&self, rest: &str) -> String {
        format!("$aws/things/{}/shadow/name/{SHADOW}/{rest}", self.ctx.thing)
    }

    async fn publish(&self, topic: String, payload: Value) -> bool {
        let message = CloudMessage {
            topic: topic.clone(),
            payload: Bytes::from(payload.to_string()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
        };
        match self.ctx.link.publish(message).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "cannot publish to the cloud");
                false
            }
        }
    }

    async fn request_next(&self) {
        let payload = json!({
            "jobId": "$next",
            "thingName": self.ctx.thing,
            "includeJobDocument": true,
            "clientToken": uuid_like(),
        });
        self.publish(self.jobs(&format!("$next/{NAMESPACE}/get")), payload)
            .await;
    }

    async fn request_shadow(&self) {
        self.publish(self.shadow("get"), json!({})).await;
    }

    /// `…/$next/…/get/accepted`: the next job (or none).
    async fn on_next(&self, answer: &Value) {
        let execution = answer.get("execution").filter(|e| e.is_object());
        let next_id = execution
            .and_then(|e| e.get("jobId"))
            .and_then(Value::as_str);
        // A job of ours still waiting that the cloud no longer offers was cancelled.
        for record in self.ctx.engine.list() {
            let is_job = record.request.cloud.as_ref().map(|c| c.source) == Some(CloudSource::Job);
            let waiting = matches!(
                record.status,
                DeploymentStatus::Queued | DeploymentStatus::InProgress
            );
            if is_job && waiting && Some(record.id.as_str()) != next_id {
                match self.ctx.engine.cancel(&record.id) {
                    Ok(()) => {
                        tracing::info!(deployment = %record.id, "job cancelled in the cloud; deployment cancelled")
                    }
                    Err(e) => {
                        tracing::info!(deployment = %record.id, error = %e, "job gone from the cloud, but the deployment is past cancelling")
                    }
                }
            }
        }
        let (Some(execution), Some(job_id)) = (execution, next_id) else {
            return;
        };
        if self.ctx.engine.status(job_id).is_some() {
            return;
        }
        let Some(document) = execution.get("jobDocument") else {
            tracing::warn!(job = job_id, "job execution without a jobDocument; ignored");
            return;
        };
        self.submit(document, CloudSource::Job, job_id).await;
    }

    /// Parses, completes (groups, large configuration) and queues a document. A document that
    /// cannot be parsed is reported FAILED at once.
    async fn submit(&self, document: &Value, source: CloudSource, fallback_id: &str) {
        let mut parsed = match parse_document(document, source, fallback_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(deployment = fallback_id, error = %e, "bad deployment document");
                if source == CloudSource::Job {
                    let details = json!({
                        "detailed-deployment-status": "FAILED_NO_STATE_CHANGE",
                        "deployment-failure-cause": e.to_string(),
                        "deployment-error-stack": "[\"DEPLOYMENT_FAILURE\",\"DEPLOYMENT_DOCUMENT_NOT_VALID\"]",
                        "deployment-error-types": "[\"REQUEST_ERROR\"]",
                    });
                    self.publish(
                        self.jobs(&format!("{fallback_id}/{NAMESPACE}/update")),
                        json!({"status": "FAILED", "statusDetails": details}),
                    )
                    .await;
                }
                return;
            }
        };
        let id = parsed.info().deployment_id.clone();
        if parsed.info().large_configuration {
            match self
                .cloud
                .deployment_configuration(&id, &self.ctx.thing)
                .await
                .and_then(|full| parsed.set_components(&full))
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(deployment = %id, error = %e, "cannot fetch the large deployment configuration");
                    return;
                }
            }
        }
        // Groups the device left lose their components (ListThingGroupsForCoreDevice).
        match super::dataplane::retrying("ListThingGroupsForCoreDevice", || {
            self.cloud.plane.thing_groups(&self.ctx.thing)
        })
        .await
        {
            Ok(groups) => {
                let members: BTreeSet<String> = groups
                    .into_iter()
                    .map(|g| format!("thinggroup/{g}"))
                    .collect();
                parsed.info_mut().member_groups = Some(members);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the device's thing groups; no group's components are removed")
            }
        }
        match self.ctx.engine.submit_cloud(parsed) {
            Ok(id) => tracing::info!(deployment = %id, "cloud deployment queued"),
            Err(e) => tracing::error!(deployment = %id, error = %e, "cloud deployment refused"),
        }
    }

    /// A deployment shadow document (get/accepted or update/accepted).
    async fn on_shadow(&self, doc: &Value) {
        if let Some(version) = doc.get("version").and_then(Value::as_i64) {
            let seen = self.shadow_version.load(Ordering::SeqCst);
            if version < seen {
                return;
            }
            self.shadow_version.store(version, Ordering::SeqCst);
        }
        let state = doc.get("state");
        let Some(desired) = state.and_then(|s| s.get("desired")) else {
            return;
        };
        let Some(desired_status) = desired.get("desiredStatus").and_then(Value::as_str) else {
            return;
        };
        let Some(fleet_config) = desired.get("fleetConfig") else {
            return;
        };
        let document: Value = match fleet_config {
            Value::String(s) => match serde_json::from_str(s) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "deployment shadow fleetConfig is not JSON; ignored");
                    return;
                }
            },
            other => other.clone(),
        };
        let arn = document
            .get("configurationArn")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let fallback: String = arn
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let id = document
            .get("deploymentId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or(fallback.clone());
        if desired_status.eq_ignore_ascii_case("CANCELED") {
            if let Err(e) = self.ctx.engine.cancel(&id) {
                tracing::info!(deployment = %id, error = %e, "shadow deployment cancel");
            }
            return;
        }
        // Already done and reported (what get/accepted shows in `reported`).
        let reported = state.and_then(|s| s.get("reported"));
        let reported_arn = reported
            .and_then(|r| r.get("fleetConfigurationArnForStatus"))
            .and_then(Value::as_str);
        let reported_status = reported
            .and_then(|r| r.get("status"))
            .and_then(Value::as_str);
        if reported_arn == Some(arn.as_str())
            && matches!(reported_status, Some("SUCCEEDED" | "FAILED" | "REJECTED"))
        {
            return;
        }
        if self.ctx.engine.status(&id).is_some() {
            return;
        }
        self.submit(&document, CloudSource::Shadow, &fallback).await;
    }

    /// Sends the status of a cloud deployment where it came from (once per status).
    async fn report(&self, record: &DeploymentRecord) {
        let Some(cloud) = &record.request.cloud else {
            return;
        };
        let status = match record.status {
            DeploymentStatus::Queued => return,
            DeploymentStatus::InProgress => "IN_PROGRESS",
            DeploymentStatus::Succeeded => "SUCCEEDED",
            DeploymentStatus::Failed => "FAILED",
            // Cancelled in the cloud: the job or shadow already says so.
            DeploymentStatus::Canceled => return,
        };
        if self.reported.get(&record.id).as_deref() == Some(status) {
            return;
        }
        let detailed =
            record
                .detailed_status
                .map(|d| d.as_str())
                .unwrap_or(if status == "IN_PROGRESS" {
                    ""
                } else {
                    "FAILED_NO_STATE_CHANGE"
                });
        let sent = match cloud.source {
            CloudSource::Job => {
                let mut details = serde_json::Map::new();
                if record.status.is_terminal() {
                    details.insert("detailed-deployment-status".into(), json!(detailed));
                    if record.status != DeploymentStatus::Succeeded {
                        details.insert(
                            "deployment-failure-cause".into(),
                            json!(record.failure_cause),
                        );
                        details.insert(
                            "deployment-error-stack".into(),
                            json!(Value::from(record.error_stack.clone()).to_string()),
                        );
                        details.insert(
                            "deployment-error-types".into(),
                            json!(Value::from(record.error_types.clone()).to_string()),
                        );
                    }
                }
                self.publish(
                    self.jobs(&format!("{}/{NAMESPACE}/update", record.id)),
                    json!({"status": status, "statusDetails": details}),
                )
                .await
            }
            CloudSource::Shadow => {
                let reported = json!({
                    "fleetConfigurationArnForStatus": cloud.configuration_arn,
                    "status": status,
                    "statusDetails": {
                        "detailedStatus": detailed,
                        "failureCause": record.failure_cause,
                        "errorStack": record.error_stack,
                        "errorTypes": record.error_types,
                    },
                    "ggcVersion": self.ctx.ggc_version,
                });
                self.publish(
                    self.shadow("update"),
                    json!({"state": {"reported": reported}}),
                )
                .await
            }
        };
        if sent {
            self.reported.set(&record.id, status);
        }
        if record.status.is_terminal() && cloud.source == CloudSource::Job {
            // The next job, if the cloud has one waiting.
            self.request_next().await;
        }
    }
}

/// Not a security token: only tells our own get requests apart in logs.
fn uuid_like() -> String {
    format!("{:x}", rand::random::<u64>())
}

pub async fn start(
    ctx: Arc<Context>,
    cloud: Cloud,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let source = Arc::new(Source {
        reported: Reported::open(&ctx.root),
        ctx: ctx.clone(),
        cloud,
        shadow_version: AtomicI64::new(0),
    });
    let filters = [
        source.jobs(&format!("notify-{NAMESPACE}")),
        source.jobs(&format!("$next/{NAMESPACE}/get/accepted")),
        source.jobs(&format!("$next/{NAMESPACE}/get/rejected")),
        source.jobs(&format!("+/{NAMESPACE}/update/rejected")),
        source.shadow("get/accepted"),
        source.shadow("update/accepted"),
        source.shadow("update/rejected"),
    ];
    let mut subscriptions = Vec::new();
    for filter in filters {
        // Waits for nothing while offline: the link subscribes once it connects.
        let link = ctx.link.clone();
        let f = filter.clone();
        subscriptions.push(tokio::spawn(async move {
            link.subscribe(&f, QoS::AtLeastOnce).await
        }));
    }
    let mut subs = Vec::new();
    for s in subscriptions {
        match s.await? {
            Ok(sub) => subs.push(sub),
            Err(e) => tracing::error!(error = %e, "cannot subscribe to deployment topics"),
        }
    }
    let mut tasks = Vec::new();
    // Incoming messages, one task per subscription.
    for mut sub in subs {
        let source = source.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                let Ok(payload) = serde_json::from_slice::<Value>(&m.payload) else {
                    tracing::warn!(topic = %m.topic, "non-JSON payload on a deployment topic; ignored");
                    continue;
                };
                let topic = m.topic.as_str();
                if topic.ends_with(&format!("notify-{NAMESPACE}")) {
                    source.request_next().await;
                } else if topic.ends_with("/get/accepted") && topic.contains("/jobs/") {
                    source.on_next(&payload).await;
                } else if topic.ends_with("/rejected") {
                    tracing::warn!(topic = %topic, answer = %payload, "the cloud rejected a deployment request");
                } else {
                    source.on_shadow(&payload).await;
                }
            }
        }));
    }
    // Status reports: what the engine does, and at start what is left unreported.
    let mut events = ctx.engine.subscribe();
    {
        let source = source.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending: Vec<DeploymentRecord> = source.ctx.engine.list();
            pending.reverse();
            for record in pending {
                source.report(&record).await;
            }
            loop {
                match events.recv().await {
                    Ok(record) => source.report(&record).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for record in source.ctx.engine.list() {
                            source.report(&record).await;
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // `$next` and shadow get at start and after every reconnect.
    {
        let source = source.clone();
        let mut status = ctx.link.status_watch();
        tasks.push(tokio::spawn(async move {
            loop {
                if *status.borrow_and_update() == ConnectionStatus::Connected {
                    source.request_next().await;
                    source.request_shadow().await;
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        }));
    }
    Ok(tasks)
}
