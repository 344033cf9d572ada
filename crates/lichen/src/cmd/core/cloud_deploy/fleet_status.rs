//! Fleet status (spec §6.7): `$aws/things/<thing>/greengrassv2/health/json`, QoS 1.
//! COMPLETE at launch and every `fleetStatusService.periodicStatusPublishIntervalSeconds`
//! (default 3600, where Greengrass waits 86400: the fleet counts a core whose status is older
//! than its `--device-stale-after` bound as UNHEALTHY, so a live core must say so more often
//! than daily; a COMPLETE status of a few components is about 1 KB, 24 KB a day); PARTIAL with only the changed components after a deployment
//! and when a component's state changes. Messages over 128000 bytes are split into chunks that
//! share one sequence number, which is persisted under
//! `services.FleetStatusService.sequenceNumber`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lichen_cloud::{CloudMessage, MessageProperties, QoS};
use lichen_deploy::{CloudSource, DeploymentRecord, DeploymentStatus};
use serde_json::{Value, json};

use super::{Context, NUCLEUS};

const MAX_MESSAGE: usize = 128_000;
/// Seconds between COMPLETE statuses unless configured.
const DEFAULT_CADENCE_SECS: u64 = 3600;
const SERVICE: &str = "FleetStatusService";
/// Component state changes arriving together are sent as one PARTIAL message.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// name → (version, status) as last published.
type Snapshot = BTreeMap<String, (String, String)>;

pub fn start(ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { run(ctx).await })
}

fn interval(ctx: &Context) -> Duration {
    let secs = ctx
        .config
        .get(&[
            "services",
            NUCLEUS,
            "configuration",
            "fleetStatusService",
            "periodicStatusPublishIntervalSeconds",
        ])
        .and_then(|v| match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_CADENCE_SECS);
    Duration::from_secs(secs)
}

async fn run(ctx: Arc<Context>) {
    let mut deployments = ctx.engine.subscribe();
    let mut states = ctx.supervisor.subscribe();
    let mut last: Snapshot = BTreeMap::new();
    let mut last_deployment: Option<DeploymentRecord> = None;
    publish(&ctx, "NUCLEUS_LAUNCH", true, &mut last, None).await;
    let mut cadence = tokio::time::interval(interval(&ctx));
    cadence.tick().await;
    loop {
        tokio::select! {
            _ = cadence.tick() => {
                publish(&ctx, "CADENCE", true, &mut last, last_deployment.as_ref()).await;
            }
            event = deployments.recv() => match event {
                Ok(record) if record.status.is_terminal() && record.status != DeploymentStatus::Canceled => {
                    let trigger = match record.request.cloud.as_ref().map(|c| c.source) {
                        Some(CloudSource::Job) => "THING_GROUP_DEPLOYMENT",
                        Some(CloudSource::Shadow) => "THING_DEPLOYMENT",
                        None => "LOCAL_DEPLOYMENT",
                    };
                    last_deployment = Some(record.clone());
                    publish(&ctx, trigger, false, &mut last, Some(&record)).await;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            change = states.recv() => match change {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while states.try_recv().is_ok() {}
                    publish(&ctx, "COMPONENT_STATUS_CHANGE", false, &mut last, None).await;
                }
                Err(_) => return,
            },
        }
    }
}

/// Every component as fleet status lists it.
fn components(ctx: &Context) -> Vec<Value> {
    let roots = ctx
        .config
        .get(&["services", "DeploymentService", "GroupToRootComponents"]);
    let last = ctx
        .config
        .get(&["services", "DeploymentService", "GroupToLastDeployment"]);
    let mut arns: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(Value::Object(groups)) = &roots {
        for (group, members) in groups {
            let arn = last
                .as_ref()
                .and_then(|l| l.get(group))
                .and_then(|g| g.get("configArn"))
                .and_then(Value::as_str);
            if let (Value::Object(members), Some(arn)) = (members, arn) {
                for name in members.keys() {
                    arns.entry(name.clone())
                        .or_default()
                        .insert(arn.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for (name, (version, is_root)) in ctx.engine.deployed_components() {
        let status = ctx.supervisor.status(&name);
        let state = status
            .as_ref()
            .map_or("RUNNING", |s| s.state.as_str())
            .to_string();
        let mut c = json!({
            "componentName": name,
            "version": version,
            "fleetConfigArns": arns.get(&name).cloned().unwrap_or_default(),
            "isRoot": is_root,
            "status": state,
        });
        if let Some(s) = &status
            && matches!(state.as_str(), "ERRORED" | "BROKEN")
        {
            c["componentStatusDetails"] = json!({
                "statusCodes": [s.status_code],
                "statusReason": s.reason,
            });
        }
        out.push(c);
    }
    out
}

fn next_sequence(ctx: &Context) -> i64 {
    let n = ctx
        .config
        .get(&["services", SERVICE, "sequenceNumber"])
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
        + 1;
    if let Err(e) = ctx.config.set(
        &["services", SERVICE, "sequenceNumber"],
        json!(n),
        lichen_config::now_ms(),
    ) {
        tracing::warn!(error = %e, "cannot persist the fleet status sequence number");
    }
    n
}

fn snapshot(components: &[Value]) -> Snapshot {
    components
        .iter()
        .map(|c| {
            let f = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (f("componentName"), (f("version"), f("status")))
        })
        .collect()
}

/// Publishes one status message. PARTIAL lists the components that differ from what was last
/// published, and after a deployment also that deployment's root components (state-change
/// messages may already have told of them).
async fn publish(
    ctx: &Context,
    trigger: &str,
    complete: bool,
    last: &mut Snapshot,
    deployment: Option<&DeploymentRecord>,
) {
    let all = components(ctx);
    let now = snapshot(&all);
    let roots: BTreeSet<&String> = deployment
        .map(|d| d.request.root_components_to_add.keys().collect())
        .unwrap_or_default();
    let listed: Vec<Value> = if complete {
        all
    } else {
        let changed = all.into_iter().filter(|c| {
            let name = c["componentName"].as_str().unwrap_or_default();
            last.get(name) != now.get(name) || roots.contains(&name.to_string())
        });
        // Components gone since the last message are listed UNINSTALLED (as the lite nucleus
        // does), so the cloud drops them from the device's installed components.
        let gone = last
            .iter()
            .filter(|(name, _)| !now.contains_key(*name))
            .map(|(name, (version, _))| {
                json!({"componentName": name, "version": version, "status": "UNINSTALLED",
                       "isRoot": false, "fleetConfigArns": []})
            });
        changed.chain(gone).collect()
    };
    let removed = last.keys().any(|k| !now.contains_key(k));
    *last = now;
    if !complete && listed.is_empty() && deployment.is_none() && !removed {
        return;
    }
    let unhealthy = last.values().any(|(_, s)| s == "BROKEN");
    let architecture = ctx
        .platform
        .attributes
        .get("architecture")
        .cloned()
        .unwrap_or_default();
    let mut base = json!({
        "ggcVersion": ctx.ggc_version,
        "platform": ctx.platform.attributes.get("os").cloned().unwrap_or_else(|| "linux".into()),
        "architecture": architecture,
        "thing": ctx.thing,
        "overallDeviceStatus": if unhealthy { "UNHEALTHY" } else { "HEALTHY" },
        "sequenceNumber": next_sequence(ctx),
        "timestamp": lichen_config::now_ms(),
        "messageType": if complete { "COMPLETE" } else { "PARTIAL" },
        "trigger": trigger,
    });
    if let Some(record) = deployment {
        let status = match record.status {
            DeploymentStatus::Succeeded => "SUCCEEDED",
            DeploymentStatus::InProgress | DeploymentStatus::Queued => "IN_PROGRESS",
            _ => "FAILED",
        };
        base["deploymentInformation"] = json!({
            "status": status,
            "deploymentId": record.id,
            "fleetConfigurationArnForStatus": record.request.cloud.as_ref().map(|c| c.configuration_arn.clone()),
            "unchangedRootComponents": [],
            "statusDetails": {
                "detailedStatus": record.detailed_status.map(|d| d.as_str()).unwrap_or_default(),
                "failureCause": record.failure_cause,
                "errorStack": record.error_stack,
                "errorTypes": record.error_types,
            },
        });
    }
    for message in chunks(base, listed) {
        let topic = format!("$aws/things/{}/greengrassv2/health/json", ctx.thing);
        let m = CloudMessage {
            topic: topic.clone(),
            payload: Bytes::from(message.to_string()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
        };
        if let Err(e) = ctx.link.publish(m).await {
            tracing::warn!(topic = %topic, error = %e, "cannot publish fleet status");
        }
    }
}

/// Splits `components` over as many messages as keep each under [`MAX_MESSAGE`] bytes;
/// `chunkInfo` only when there is more than one.
pub(super) fn chunks(base: Value, components: Vec<Value>) -> Vec<Value> {
    let overhead = base.to_string().len() + 64;
    let mut groups: Vec<Vec<Value>> = vec![Vec::new()];
    let mut size = overhead;
    for c in components {
        let n = c.to_string().len() + 1;
        if size + n > MAX_MESSAGE && !groups.last().is_some_and(Vec::is_empty) {
            groups.push(Vec::new());
            size = overhead;
        }
        size += n;
        if let Some(g) = groups.last_mut() {
            g.push(c);
        }
    }
    let total = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, group)| {
            let mut m = base.clone();
            m["components"] = Value::Array(group);
            if total > 1 {
                m["chunkInfo"] = json!({"chunkId": i + 1, "totalChunks": total});
            }
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_messages_are_chunked_under_the_limit() {
        let base = json!({"messageType": "COMPLETE", "sequenceNumber": 7});
        let components: Vec<Value> = (0..600)
            .map(|i| json!({"componentName": format!("com.example.C{i}"), "version": "1.0.0", "pad": "x".repeat(400)}))
            .collect();
        let messages = chunks(base.clone(), components);
        assert!(messages.len() >= 3, "{}", messages.len());
        let mut names = 0;
        for (i, m) in messages.iter().enumerate() {
            assert!(m.to_string().len() <= MAX_MESSAGE);
            assert_eq!(m["chunkInfo"]["chunkId"], json!(i + 1));
            assert_eq!(m["chunkInfo"]["totalChunks"], json!(messages.len()));
            assert_eq!(m["sequenceNumber"], json!(7));
            names += m["components"].as_array().unwrap().len();
        }
        assert_eq!(names, 600);
        let single = chunks(base, vec![json!({"componentName": "a"})]);
        assert_eq!(single.len(), 1);
        assert!(single[0].get("chunkInfo").is_none());
    }
}
