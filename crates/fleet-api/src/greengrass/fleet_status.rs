//! Fleet status messages (greengrass-core §6.7), parsed leniently: keys as the Java and lite
//! cores send them; a message must name its sequence number and, when it names a thing, the
//! thing whose topic it came on.

use lichen_fleet_registry::{FleetStatusReport, ReportedComponent};
use serde_json::Value;

#[derive(Debug)]
pub struct Parsed {
    pub report: FleetStatusReport,
    /// `deploymentInformation`: (deployment id, SUCCEEDED|FAILED|…, failure cause).
    pub deployment: Option<(String, String, Option<String>)>,
}

pub fn parse(thing: &str, payload: &[u8]) -> Result<Parsed, String> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("fleet status from {thing} is not JSON: {e}"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    if let Some(t) = s("thing")
        && t != thing
    {
        return Err(format!(
            "fleet status on {thing}'s topic names thing {t:?}; a device reports only itself"
        ));
    }
    let sequence_number = v
        .get("sequenceNumber")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("fleet status from {thing} has no integer sequenceNumber"))?;
    let complete = match s("messageType").as_deref() {
        Some("COMPLETE") => true,
        Some("PARTIAL") | None => false,
        Some(o) => {
            return Err(format!(
                "fleet status from {thing}: messageType {o:?} is not COMPLETE or PARTIAL"
            ));
        }
    };
    let chunk_id = v
        .pointer("/chunkInfo/chunkId")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let mut components = Vec::new();
    for c in v
        .get("components")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let cs = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(name), Some(status)) = (cs("componentName"), cs("status")) else {
            return Err(format!(
                "fleet status from {thing}: a component lacks componentName or status"
            ));
        };
        components.push(ReportedComponent {
            name,
            version: cs("version").unwrap_or_default(),
            status,
            is_root: c.get("isRoot").and_then(Value::as_bool).unwrap_or(false),
            status_codes: c
                .pointer("/componentStatusDetails/statusCodes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            status_reason: c
                .pointer("/componentStatusDetails/statusReason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            config_arns: c
                .get("fleetConfigArns")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    let deployment = v.get("deploymentInformation").and_then(|d| {
        let id = d.get("deploymentId")?.as_str()?.to_owned();
        let status = d.get("status")?.as_str()?.to_owned();
        let cause = d
            .pointer("/statusDetails/failureCause")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        Some((id, status, cause))
    });
    Ok(Parsed {
        report: FleetStatusReport {
            sequence_number,
            complete,
            chunk_id,
            overall_status: s("overallDeviceStatus").unwrap_or_else(|| "HEALTHY".into()),
            platform: s("platform"),
            architecture: s("architecture"),
            core_version: s("ggcVersion"),
            runtime: s("runtime").or_else(|| Some("aws_nucleus_classic".into())),
            components,
        },
        deployment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_message_parses_and_a_foreign_thing_is_refused() {
        let msg = serde_json::json!({
            "ggcVersion": "2.14.0", "platform": "linux", "architecture": "amd64", "thing": "T",
            "overallDeviceStatus": "UNHEALTHY", "sequenceNumber": 42, "timestamp": 1,
            "messageType": "COMPLETE", "trigger": "CADENCE", "chunkInfo": {"chunkId": 2, "totalChunks": 2},
            "components": [{"componentName": "X", "version": "1.0.0", "isRoot": true, "status": "BROKEN",
                "fleetConfigArns": ["arn:c"],
                "componentStatusDetails": {"statusCodes": ["RUN_ERROR"], "statusReason": "exit 1"}}],
            "deploymentInformation": {"status": "FAILED", "deploymentId": "d1",
                "statusDetails": {"failureCause": "boom"}}
        })
        .to_string();
        let p = parse("T", msg.as_bytes()).unwrap();
        assert_eq!(p.report.sequence_number, 42);
        assert!(p.report.complete);
        assert_eq!(p.report.chunk_id, 2);
        assert_eq!(p.report.overall_status, "UNHEALTHY");
        assert_eq!(p.report.components[0].status_codes, ["RUN_ERROR"]);
        assert_eq!(
            p.deployment,
            Some(("d1".into(), "FAILED".into(), Some("boom".into())))
        );
        assert!(
            parse("U", msg.as_bytes())
                .unwrap_err()
                .contains("names thing")
        );
        assert!(parse("T", b"{}").unwrap_err().contains("sequenceNumber"));
    }
}
