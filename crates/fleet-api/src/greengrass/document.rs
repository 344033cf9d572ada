//! CreateDeployment's request, validated into the spec the registry keeps, and the deployment
//! document a device receives (greengrass-core §6.3): `merge` arrives as JSON *text* and leaves
//! as an object; policies get their defaults; `configurationArn` names the target and revision.

use crate::error::{ApiError, ApiResult};
use serde_json::{Map, Value, json};

/// Tag (boto3 can send it; the model has no field for it) holding the bake time: a device's
/// success counts only after the deployment's components stayed RUNNING this long.
pub const BAKE_TAG: &str = "lichen:bakeTimeSeconds";
/// Tag the fleet puts on a deployment it made to undo an aborted one.
pub const ROLLBACK_TAG: &str = "lichen:rollbackOf";

pub(crate) fn validation(message: impl Into<String>) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "ValidationException",
        message,
    )
}

/// A target ARN, split: (`thing` | `thinggroup`, name).
pub fn parse_target(arn: &str) -> ApiResult<(&'static str, String)> {
    let bad = || {
        validation(format!(
            "targetArn {arn:?} is not a thing or thing group ARN; give \
             arn:aws:iot:<region>:<account>:thing/<name> or …:thinggroup/<name>"
        ))
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[2] != "iot" {
        return Err(bad());
    }
    let (kind, name) = parts[5].split_once('/').ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    match kind {
        "thing" => Ok(("thing", name.to_string())),
        "thinggroup" => Ok(("thinggroup", name.to_string())),
        _ => Err(bad()),
    }
}

fn obj<'a>(v: &'a Value, field: &str) -> ApiResult<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| validation(format!("{field} must be an object")))
}

fn opt_str<'a>(m: &'a Map<String, Value>, key: &str, field: &str) -> ApiResult<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(validation(format!("{field}.{key} must be a string"))),
    }
}

fn opt_int(m: &Map<String, Value>, key: &str, field: &str) -> ApiResult<Option<i64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| validation(format!("{field}.{key} must be an integer"))),
    }
}

fn one_of(v: Option<&str>, allowed: &[&str], field: &str) -> ApiResult<()> {
    match v {
        Some(s) if !allowed.contains(&s) => Err(validation(format!(
            "{field} is {s:?}; use one of {}",
            allowed.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// Checks a CreateDeployment body and returns the spec to keep: `components`,
/// `deploymentPolicies`, `iotJobConfiguration`, `tags` as given (validated).
pub fn validate_request(body: &Map<String, Value>) -> ApiResult<Value> {
    let components = match body.get("components") {
        None | Some(Value::Null) => Map::new(),
        Some(v) => obj(v, "components")?.clone(),
    };
    for (name, c) in &components {
        let field = format!("components.{name}");
        lichen_recipe::validate_component_name(name)
            .map_err(|e| validation(format!("{field}: {e}")))?;
        let c = obj(c, &field)?;
        let version = opt_str(c, "componentVersion", &field)?
            .ok_or_else(|| validation(format!("{field}.componentVersion is required")))?;
        lichen_recipe::parse_component_version(version)
            .map_err(|e| validation(format!("{field}.componentVersion: {e}")))?;
        if let Some(u) = c.get("configurationUpdate").filter(|v| !v.is_null()) {
            let u = obj(u, &format!("{field}.configurationUpdate"))?;
            if let Some(m) = opt_str(u, "merge", &format!("{field}.configurationUpdate"))? {
                match serde_json::from_str::<Value>(m) {
                    Ok(Value::Object(_)) => {}
                    _ => {
                        return Err(validation(format!(
                            "{field}.configurationUpdate.merge must be a JSON object written \
                             as a string, e.g. \"{{\\\"key\\\": 1}}\""
                        )));
                    }
                }
            }
            if let Some(r) = u.get("reset").filter(|v| !v.is_null()) {
                let ok = r.as_array().is_some_and(|a| {
                    a.iter().all(|p| {
                        p.as_str()
                            .is_some_and(|p| p.is_empty() || p.starts_with('/'))
                    })
                });
                if !ok {
                    return Err(validation(format!(
                        "{field}.configurationUpdate.reset must be a list of JSON pointers \
                         (\"\" or starting with /)"
                    )));
                }
            }
        }
        if let Some(r) = c.get("runWith").filter(|v| !v.is_null()) {
            let f = format!("{field}.runWith");
            let r = obj(r, &f)?;
            opt_str(r, "posixUser", &f)?;
            opt_str(r, "windowsUser", &f)?;
            if let Some(l) = r.get("systemResourceLimits").filter(|v| !v.is_null()) {
                let f = format!("{f}.systemResourceLimits");
                let l = obj(l, &f)?;
                if opt_int(l, "memory", &f)?.is_some_and(|m| m < 0) {
                    return Err(validation(format!("{f}.memory must be 0 or more (KiB)")));
                }
                match l.get("cpus") {
                    None | Some(Value::Null) => {}
                    Some(v) if v.as_f64().is_some_and(|c| c >= 0.0) => {}
                    _ => return Err(validation(format!("{f}.cpus must be a number ≥ 0"))),
                }
            }
        }
    }
    let policies = match body.get("deploymentPolicies") {
        None | Some(Value::Null) => Map::new(),
        Some(v) => obj(v, "deploymentPolicies")?.clone(),
    };
    one_of(
        opt_str(&policies, "failureHandlingPolicy", "deploymentPolicies")?,
        &["ROLLBACK", "DO_NOTHING"],
        "deploymentPolicies.failureHandlingPolicy",
    )?;
    if let Some(u) = policies.get("componentUpdatePolicy") {
        let f = "deploymentPolicies.componentUpdatePolicy";
        let u = obj(u, f)?;
        one_of(
            opt_str(u, "action", f)?,
            &["NOTIFY_COMPONENTS", "SKIP_NOTIFY_COMPONENTS"],
            &format!("{f}.action"),
        )?;
        opt_int(u, "timeoutInSeconds", f)?;
    }
    if let Some(u) = policies.get("configurationValidationPolicy") {
        let f = "deploymentPolicies.configurationValidationPolicy";
        opt_int(obj(u, f)?, "timeoutInSeconds", f)?;
    }
    let job = match body.get("iotJobConfiguration") {
        None | Some(Value::Null) => Map::new(),
        Some(v) => obj(v, "iotJobConfiguration")?.clone(),
    };
    if let Some(r) = job.get("jobExecutionsRolloutConfig") {
        let f = "iotJobConfiguration.jobExecutionsRolloutConfig";
        let r = obj(r, f)?;
        if opt_int(r, "maximumPerMinute", f)?.is_some_and(|m| !(1..=1000).contains(&m)) {
            return Err(validation(format!(
                "{f}.maximumPerMinute must be 1 to 1000"
            )));
        }
        if let Some(e) = r.get("exponentialRate") {
            let f = format!("{f}.exponentialRate");
            let e = obj(e, &f)?;
            if opt_int(e, "baseRatePerMinute", &f)?.is_some_and(|m| !(1..=1000).contains(&m)) {
                return Err(validation(format!(
                    "{f}.baseRatePerMinute must be 1 to 1000"
                )));
            }
            match e.get("incrementFactor").and_then(Value::as_f64) {
                Some(x) if (1.0..=5.0).contains(&x) => {}
                _ => return Err(validation(format!("{f}.incrementFactor must be 1 to 5"))),
            }
        }
    }
    if let Some(a) = job.get("abortConfig") {
        let f = "iotJobConfiguration.abortConfig";
        let list = obj(a, f)?
            .get("criteriaList")
            .and_then(Value::as_array)
            .ok_or_else(|| validation(format!("{f}.criteriaList is required (a list)")))?;
        for c in list {
            let c = obj(c, &format!("{f}.criteriaList[]"))?;
            one_of(
                opt_str(c, "failureType", f)?,
                &["FAILED", "REJECTED", "TIMED_OUT", "ALL"],
                &format!("{f}.criteriaList[].failureType"),
            )?;
            match c.get("thresholdPercentage").and_then(Value::as_f64) {
                Some(p) if (0.0..=100.0).contains(&p) => {}
                _ => {
                    return Err(validation(format!(
                        "{f}.criteriaList[].thresholdPercentage must be 0 to 100"
                    )));
                }
            }
        }
    }
    let tags = match body.get("tags") {
        None | Some(Value::Null) => Map::new(),
        Some(v) => obj(v, "tags")?.clone(),
    };
    if let Some(b) = tags.get(BAKE_TAG) {
        let ok = b
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s <= 7 * 24 * 3600);
        if !ok {
            return Err(validation(format!(
                "tags.{BAKE_TAG} must be a whole number of seconds (0 to 604800)"
            )));
        }
    }
    Ok(json!({
        "components": components,
        "deploymentPolicies": policies,
        "iotJobConfiguration": job,
        "tags": tags,
    }))
}

/// The bake time a spec asks for, in seconds (0: none).
pub fn bake_seconds(spec: &Value) -> u64 {
    spec.pointer(&format!("/tags/{}", BAKE_TAG.replace('/', "~1")))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `arn:aws:greengrass:<r>:<acct>:configuration:<thing|thinggroup>/<name>:<revision>`.
pub fn configuration_arn(region: &str, account: &str, target_arn: &str, revision: i64) -> String {
    let resource = target_arn.splitn(6, ':').nth(5).unwrap_or_default();
    format!("arn:aws:greengrass:{region}:{account}:configuration:{resource}:{revision}")
}

/// The deployment document for devices (greengrass-core §6.3).
pub fn device_document(
    d: &lichen_fleet_registry::Deployment,
    spec: &Value,
    region: &str,
    account: &str,
) -> Value {
    let mut components = Map::new();
    if let Some(cs) = spec.get("components").and_then(Value::as_object) {
        for (name, c) in cs {
            let mut out = Map::new();
            out.insert(
                "version".into(),
                c.get("componentVersion").cloned().unwrap_or(Value::Null),
            );
            if let Some(u) = c.get("configurationUpdate").and_then(Value::as_object) {
                let mut update = Map::new();
                if let Some(m) = u.get("merge").and_then(Value::as_str) {
                    update.insert(
                        "merge".into(),
                        serde_json::from_str(m).unwrap_or_else(|_| json!({})),
                    );
                }
                if let Some(r) = u.get("reset").filter(|v| !v.is_null()) {
                    update.insert("reset".into(), r.clone());
                }
                out.insert("configurationUpdate".into(), Value::Object(update));
            }
            if let Some(r) = c.get("runWith").filter(|v| !v.is_null()) {
                out.insert("runWith".into(), r.clone());
            }
            components.insert(name.clone(), Value::Object(out));
        }
    }
    let p = spec.get("deploymentPolicies").cloned().unwrap_or(json!({}));
    let update = p.get("componentUpdatePolicy");
    let validation = p.get("configurationValidationPolicy");
    let mut doc = json!({
        "deploymentId": d.id,
        "schemaDate": "2021-05-17",
        "configurationArn": configuration_arn(region, account, &d.target_arn, d.revision),
        "creationTimestamp": d.created_ms,
        "components": components,
        "failureHandlingPolicy": p.get("failureHandlingPolicy").and_then(Value::as_str).unwrap_or("ROLLBACK"),
        "componentUpdatePolicy": {
            "timeout": update.and_then(|u| u.get("timeoutInSeconds")).and_then(Value::as_i64).unwrap_or(60),
            "action": update.and_then(|u| u.get("action")).and_then(Value::as_str).unwrap_or("NOTIFY_COMPONENTS"),
        },
        "configurationValidationPolicy": {
            "timeout": validation.and_then(|u| u.get("timeoutInSeconds")).and_then(Value::as_i64).unwrap_or(30),
        },
    });
    if let Some(name) = &d.name {
        doc["deploymentName"] = json!(name);
    }
    if let Some(parent) = &d.parent_target_arn {
        doc["parentTargetArn"] = json!(parent);
        doc["onBehalfOf"] = json!(parent);
    }
    doc
}

/// Largest document a deployment job carries whole (a job document may hold 32 KiB).
pub const JOB_DOCUMENT_LIMIT: usize = 31 * 1024;
/// Largest document the deployment shadow carries whole (a shadow's state may hold 8 KiB).
pub const SHADOW_DOCUMENT_LIMIT: usize = 7 * 1024;

/// The document as delivered through a channel that holds `limit` bytes: whole when it fits,
/// else without its components and requiring `LARGE_CONFIGURATION`, so the device fetches the
/// whole one with GetDeploymentConfiguration (greengrass-core §6.3).
pub fn for_delivery(doc: Value, limit: usize) -> Value {
    if doc.to_string().len() <= limit {
        return doc;
    }
    let mut slim = doc;
    if let Some(o) = slim.as_object_mut() {
        o.remove("components");
        let caps = o.entry("requiredCapabilities").or_insert_with(|| json!([]));
        if let Some(list) = caps.as_array_mut()
            && !list.iter().any(|c| c == "LARGE_CONFIGURATION")
        {
            list.push(json!("LARGE_CONFIGURATION"));
        }
    }
    slim
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn merge_text_becomes_an_object_and_policies_get_defaults() {
        let spec = validate_request(&body(json!({
            "components": {"com.example.Hello": {"componentVersion": "1.0.0",
                "configurationUpdate": {"merge": "{\"greeting\": \"hi\"}", "reset": ["/old"]},
                "runWith": {"posixUser": "u:g", "systemResourceLimits": {"memory": 1024, "cpus": 0.5}}}},
            "tags": {BAKE_TAG: "5"},
        })))
        .unwrap();
        assert_eq!(bake_seconds(&spec), 5);
        let d = lichen_fleet_registry::Deployment {
            id: "d1".into(),
            target_arn: "arn:aws:iot:us-east-1:123456789012:thinggroup/G".into(),
            revision: 3,
            name: Some("n".into()),
            status: "ACTIVE".into(),
            spec: String::new(),
            job_id: Some("d1".into()),
            is_latest: true,
            parent_target_arn: None,
            rollback_of: None,
            created_ms: 1_700_000_000_000,
            updated_ms: 0,
        };
        let doc = device_document(&d, &spec, "us-east-1", "123456789012");
        assert_eq!(
            doc["configurationArn"],
            "arn:aws:greengrass:us-east-1:123456789012:configuration:thinggroup/G:3"
        );
        let c = &doc["components"]["com.example.Hello"];
        assert_eq!(c["version"], "1.0.0");
        assert_eq!(c["configurationUpdate"]["merge"]["greeting"], "hi");
        assert_eq!(c["configurationUpdate"]["reset"][0], "/old");
        assert_eq!(c["runWith"]["systemResourceLimits"]["memory"], 1024);
        assert_eq!(doc["failureHandlingPolicy"], "ROLLBACK");
        assert_eq!(doc["componentUpdatePolicy"]["action"], "NOTIFY_COMPONENTS");
        assert_eq!(doc["creationTimestamp"], 1_700_000_000_000i64);
    }

    #[test]
    fn bad_fields_are_named() {
        for (b, field) in [
            (
                json!({"components": {"A": {}}}),
                "components.A.componentVersion",
            ),
            (
                json!({"components": {"A": {"componentVersion": "x"}}}),
                "components.A.componentVersion",
            ),
            (
                json!({"components": {"A": {"componentVersion": "1.0.0", "configurationUpdate": {"merge": "[1]"}}}}),
                "merge",
            ),
            (
                json!({"deploymentPolicies": {"failureHandlingPolicy": "NOPE"}}),
                "failureHandlingPolicy",
            ),
            (
                json!({"iotJobConfiguration": {"jobExecutionsRolloutConfig": {"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 9}}}}),
                "incrementFactor",
            ),
            (json!({"tags": {BAKE_TAG: "soon"}}), BAKE_TAG),
        ] {
            let e = validate_request(&body(b)).unwrap_err();
            assert_eq!(e.code, "ValidationException");
            assert!(e.message.contains(field), "{} lacks {field}", e.message);
        }
        assert!(parse_target("arn:aws:iot:r:1:thing/T").is_ok());
        assert!(parse_target("arn:aws:iot:r:1:policy/T").is_err());
    }

    #[test]
    fn a_document_over_the_channel_limit_goes_without_components() {
        let doc = json!({"deploymentId": "d", "components": {"A": {"version": "1.0.0",
            "configurationUpdate": {"merge": {"pad": "x".repeat(40_000)}}}}});
        assert_eq!(for_delivery(doc.clone(), 64 * 1024), doc);
        let slim = for_delivery(doc, JOB_DOCUMENT_LIMIT);
        assert_eq!(slim["deploymentId"], "d");
        assert!(slim.get("components").is_none());
        assert_eq!(slim["requiredCapabilities"], json!(["LARGE_CONFIGURATION"]));
    }
}
