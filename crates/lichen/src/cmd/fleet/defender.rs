//! Device Defender metrics: devices publish AWS IoT Device Defender's document to
//! `$aws/things/<thing>/defender/metrics/json`; the fleet stores each report, checks it against
//! the bounds of the thing's groups, and answers on `…/accepted` or `…/rejected` as AWS does.
//!
//! A bound is a thing group attribute `defender.<metric>.max` (a number), for the metrics
//! `listening_tcp_ports`, `listening_udp_ports`, `established_connections`, `bytes_in`,
//! `bytes_out`, `packets_in`, `packets_out` and the custom metrics the core sends
//! (`local_broker_authorization_failures`, `ipc_authorization_failures`). A value over a bound
//! of any of the thing's direct groups is a violation: stored with the report and logged.

use lichen_fleet_mqtt::{DeviceEndpoint, DevicePublish, QoS};
use lichen_fleet_registry::{DefenderReport, PageRequest, Registry};
use serde_json::{Value, json};
use std::sync::Arc;

const FILTER: &str = "$aws/things/+/defender/metrics/json";

pub fn start(devices: &DeviceEndpoint, registry: Arc<Registry>) -> anyhow::Result<()> {
    let mut topics = devices.serve_topics(FILTER)?;
    let devices = devices.clone();
    tokio::spawn(async move {
        while let Some(p) = topics.recv().await {
            let r = registry.clone();
            let p2 = p.clone();
            let answer = tokio::task::spawn_blocking(move || handle(&r, &p2))
                .await
                .unwrap_or_else(|e| Err((0, format!("internal failure: {e}"))));
            let thing = p.topic.split('/').nth(2).unwrap_or_default();
            let (suffix, body) = match answer {
                Ok(id) => (
                    "accepted",
                    json!({"thingName": thing, "reportId": id, "status": "ACCEPTED"}),
                ),
                Err((id, message)) => (
                    "rejected",
                    json!({"thingName": thing, "reportId": id, "status": "REJECTED",
                           "statusDetails": {"ErrorCode": "InvalidPayload", "ErrorMessage": message}}),
                ),
            };
            let _ = devices.publish_to(
                &p.client_id,
                &format!("{}/{suffix}", p.topic),
                body.to_string().into(),
                QoS::AtMostOnce,
            );
        }
    });
    Ok(())
}

/// The values a report gives, by metric name.
fn values(doc: &Value) -> Vec<(&'static str, f64)> {
    let m = &doc["metrics"];
    let mut out = vec![];
    let mut put = |name, v: &Value| {
        if let Some(x) = v.as_f64() {
            out.push((name, x));
        }
    };
    put("listening_tcp_ports", &m["listening_tcp_ports"]["total"]);
    put("listening_udp_ports", &m["listening_udp_ports"]["total"]);
    put(
        "established_connections",
        &m["tcp_connections"]["established_connections"]["total"],
    );
    for k in ["bytes_in", "bytes_out", "packets_in", "packets_out"] {
        put(k, &m["network_stats"][k]);
    }
    for k in [
        "local_broker_authorization_failures",
        "ipc_authorization_failures",
    ] {
        put(k, &doc["custom_metrics"][k][0]["number"]);
    }
    out
}

fn handle(r: &Registry, p: &DevicePublish) -> Result<i64, (i64, String)> {
    let thing = p.topic.split('/').nth(2).unwrap_or_default();
    let doc: Value = serde_json::from_slice(&p.payload)
        .map_err(|e| (0, format!("the report is not JSON: {e}")))?;
    let id = doc["header"]["report_id"]
        .as_i64()
        .ok_or((0, "header.report_id (an integer) is missing".to_string()))?;
    if p.thing_name.as_deref() != Some(thing) {
        return Err((
            id,
            format!("a device reports for itself: it is not connected as {thing}"),
        ));
    }
    if !doc["metrics"].is_object() {
        return Err((id, "metrics (an object) is missing".into()));
    }
    let mut violations = vec![];
    let groups = r
        .list_groups_for_thing(
            thing,
            &PageRequest {
                token: None,
                size: Some(250),
            },
        )
        .map(|p| p.items)
        .unwrap_or_default();
    for (group, _) in groups {
        let Ok(g) = r.describe_thing_group(&group) else {
            continue;
        };
        for (metric, value) in values(&doc) {
            let bound = g
                .attributes
                .get(&format!("defender.{metric}.max"))
                .and_then(|b| b.parse::<f64>().ok());
            if let Some(bound) = bound
                && value > bound
            {
                tracing::warn!(
                    thing,
                    group,
                    metric,
                    value,
                    bound,
                    "Device Defender: value over the group's bound"
                );
                violations.push(
                    json!({"metric": metric, "value": value, "bound": bound, "group": group}),
                );
            }
        }
    }
    r.record_defender_report(&DefenderReport {
        thing_name: thing.to_string(),
        report_id: id,
        received_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        document: doc.to_string(),
        violations: Value::Array(violations).to_string(),
    })
    .map_err(|e| (id, format!("storing the report: {e}")))?;
    Ok(id)
}
