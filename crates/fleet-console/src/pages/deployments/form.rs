//! The create-deployment form: its fields (kept as submitted, to fill the form again after a
//! preview or an error) and the CreateDeployment request they make, with errors that name the
//! field to fix.

use serde_json::{Map, Value, json};

/// Component rows the form shows (empty rows are ignored).
pub(crate) const COMPONENT_ROWS: usize = 4;

/// The form as submitted: field name → value (the last one wins).
#[derive(Debug, Clone, Default)]
pub(crate) struct DeployForm {
    fields: std::collections::BTreeMap<String, String>,
}

/// One component row.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ComponentRow {
    pub name: String,
    pub version: String,
    pub merge: String,
    pub reset: String,
}

impl DeployForm {
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        DeployForm {
            fields: pairs.into_iter().collect(),
        }
    }

    /// A field, trimmed ("" when absent).
    pub(crate) fn get(&self, k: &str) -> &str {
        self.fields.get(k).map_or("", |v| v.trim())
    }

    pub(crate) fn set(&mut self, k: &str, v: impl Into<String>) {
        self.fields.insert(k.to_string(), v.into());
    }

    /// Rows 0..COMPONENT_ROWS (at least), and any further rows submitted.
    pub(crate) fn rows(&self) -> Vec<ComponentRow> {
        let n = (0..64)
            .rev()
            .find(|i| {
                ["component", "version", "merge", "reset"]
                    .iter()
                    .any(|f| !self.get(&format!("{f}.{i}")).is_empty())
            })
            // One empty row after the last filled one.
            .map_or(0, |i| i + 2)
            .max(COMPONENT_ROWS);
        (0..n)
            .map(|i| ComponentRow {
                name: self.get(&format!("component.{i}")).to_string(),
                version: self.get(&format!("version.{i}")).to_string(),
                merge: self.get(&format!("merge.{i}")).to_string(),
                reset: self.get(&format!("reset.{i}")).to_string(),
            })
            .collect()
    }

    /// `thing` or `group`, and the name.
    pub(crate) fn target(&self) -> Result<(&'static str, String), String> {
        let name = self.get("target_name");
        if name.is_empty() {
            return Err("Target: give the thing group or thing to deploy to".into());
        }
        match self.get("target_kind") {
            "group" | "" => Ok(("thinggroup", name.to_string())),
            "thing" => Ok(("thing", name.to_string())),
            other => Err(format!("Target kind {other:?}: choose group or thing")),
        }
    }

    /// The CreateDeployment request body for `target_arn` (validated by the fleet afterwards).
    pub(crate) fn request(&self, target_arn: &str) -> Result<Map<String, Value>, String> {
        let mut components = Map::new();
        for (i, r) in self.rows().iter().enumerate() {
            let row = i + 1;
            if r.name.is_empty() && r.version.is_empty() && r.merge.is_empty() {
                continue;
            }
            if r.name.is_empty() || r.version.is_empty() {
                return Err(format!(
                    "Component row {row}: give both the component name and its version"
                ));
            }
            if components.contains_key(&r.name) {
                return Err(format!(
                    "Component row {row}: {} is listed twice; keep one row per component",
                    r.name
                ));
            }
            let mut c = json!({"componentVersion": r.version});
            let mut update = Map::new();
            if !r.merge.is_empty() {
                match serde_json::from_str::<Value>(&r.merge) {
                    Ok(Value::Object(_)) => {
                        update.insert("merge".into(), json!(r.merge));
                    }
                    Ok(_) => {
                        return Err(format!(
                            "Component row {row} ({}): the configuration merge must be a JSON \
                             object, e.g. {{\"key\": 1}}",
                            r.name
                        ));
                    }
                    Err(e) => {
                        return Err(format!(
                            "Component row {row} ({}): the configuration merge is not JSON: {e}",
                            r.name
                        ));
                    }
                }
            }
            if !r.reset.is_empty() {
                let paths: Vec<Value> = r
                    .reset
                    .split([',', '\n'])
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| json!(p))
                    .collect();
                update.insert("reset".into(), Value::Array(paths));
            }
            if !update.is_empty() {
                c["configurationUpdate"] = Value::Object(update);
            }
            components.insert(r.name.clone(), c);
        }
        if components.is_empty() {
            return Err("Components: give at least one component and version".into());
        }
        let mut body = Map::new();
        body.insert("targetArn".into(), json!(target_arn));
        body.insert("components".into(), Value::Object(components));
        if !self.get("name").is_empty() {
            body.insert("deploymentName".into(), json!(self.get("name")));
        }
        let mut policies = Map::new();
        if !self.get("failure_handling").is_empty() {
            policies.insert(
                "failureHandlingPolicy".into(),
                json!(self.get("failure_handling")),
            );
        }
        let mut update = Map::new();
        if !self.get("update_action").is_empty() {
            update.insert("action".into(), json!(self.get("update_action")));
        }
        if let Some(t) = self.int("update_timeout", "Component update timeout", 1, 86_400)? {
            update.insert("timeoutInSeconds".into(), json!(t));
        }
        if !update.is_empty() {
            policies.insert("componentUpdatePolicy".into(), Value::Object(update));
        }
        if let Some(t) = self.int(
            "validation_timeout",
            "Configuration validation timeout",
            1,
            86_400,
        )? {
            policies.insert(
                "configurationValidationPolicy".into(),
                json!({"timeoutInSeconds": t}),
            );
        }
        if !policies.is_empty() {
            body.insert("deploymentPolicies".into(), Value::Object(policies));
        }
        let mut job = Map::new();
        let mut rollout = Map::new();
        if let Some(m) = self.int(
            "rollout_max_per_minute",
            "Rollout: devices per minute",
            1,
            1000,
        )? {
            rollout.insert("maximumPerMinute".into(), json!(m));
        }
        if let Some(base) = self.int(
            "rollout_base_rate",
            "Rollout: base rate per minute",
            1,
            1000,
        )? {
            let factor = self
                .float("rollout_increment", "Rollout: increment factor", 1.0, 5.0)?
                .ok_or("Rollout: an exponential rate needs an increment factor (1 to 5)")?;
            let count = self
                .int(
                    "rollout_criteria_count",
                    "Rollout: devices before the rate increases",
                    1,
                    1_000_000,
                )?
                .ok_or("Rollout: an exponential rate needs the number of devices that raise it")?;
            let criteria = match self.get("rollout_criteria") {
                "succeeded" => json!({"numberOfSucceededThings": count}),
                _ => json!({"numberOfNotifiedThings": count}),
            };
            rollout.insert(
                "exponentialRate".into(),
                json!({"baseRatePerMinute": base, "incrementFactor": factor,
                       "rateIncreaseCriteria": criteria}),
            );
        }
        if !rollout.is_empty() {
            job.insert("jobExecutionsRolloutConfig".into(), Value::Object(rollout));
        }
        if let Some(p) = self.float("abort_threshold", "Abort: failure percentage", 0.0, 100.0)? {
            let min = self
                .int(
                    "abort_min_executed",
                    "Abort: devices finished first",
                    1,
                    1_000_000,
                )?
                .unwrap_or(1);
            let kind = match self.get("abort_failure_type") {
                "" => "FAILED",
                k => k,
            };
            job.insert(
                "abortConfig".into(),
                json!({"criteriaList": [{"failureType": kind, "action": "CANCEL",
                    "thresholdPercentage": p, "minNumberOfExecutedThings": min}]}),
            );
        }
        if let Some(m) = self.int("timeout_minutes", "In-progress timeout", 1, 10_080)? {
            job.insert(
                "timeoutConfig".into(),
                json!({"inProgressTimeoutInMinutes": m}),
            );
        }
        if !job.is_empty() {
            body.insert("iotJobConfiguration".into(), Value::Object(job));
        }
        if let Some(b) = self.int("bake_seconds", "Bake time", 0, 7 * 24 * 3600)? {
            body.insert(
                "tags".into(),
                json!({lichen_fleet_api::greengrass::document::BAKE_TAG: b.to_string()}),
            );
        }
        Ok(body)
    }

    fn int(&self, k: &str, label: &str, min: i64, max: i64) -> Result<Option<i64>, String> {
        let v = self.get(k);
        if v.is_empty() {
            return Ok(None);
        }
        match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "{label}: {v:?} is not a whole number from {min} to {max}"
            )),
        }
    }

    fn float(&self, k: &str, label: &str, min: f64, max: f64) -> Result<Option<f64>, String> {
        let v = self.get(k);
        if v.is_empty() {
            return Ok(None);
        }
        match v.parse::<f64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "{label}: {v:?} is not a number from {min} to {max}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(p: &[(&str, &str)]) -> DeployForm {
        DeployForm::from_pairs(
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_full_form_makes_the_create_deployment_request() {
        let f = form(&[
            ("target_kind", "group"),
            ("target_name", "line-1"),
            ("name", "hello"),
            ("component.0", "com.example.Hello"),
            ("version.0", "1.0.0"),
            ("merge.0", "{\"greeting\": \"hi\"}"),
            ("reset.0", "/old, /older"),
            ("failure_handling", "DO_NOTHING"),
            ("update_action", "SKIP_NOTIFY_COMPONENTS"),
            ("update_timeout", "30"),
            ("rollout_max_per_minute", "10"),
            ("abort_threshold", "50"),
            ("abort_min_executed", "2"),
            ("timeout_minutes", "15"),
            ("bake_seconds", "60"),
        ]);
        assert_eq!(f.target().unwrap(), ("thinggroup", "line-1".to_string()));
        let b = Value::Object(f.request("arn:aws:iot:r:1:thinggroup/line-1").unwrap());
        let c = &b["components"]["com.example.Hello"];
        assert_eq!(c["componentVersion"], "1.0.0");
        assert_eq!(c["configurationUpdate"]["merge"], "{\"greeting\": \"hi\"}");
        assert_eq!(c["configurationUpdate"]["reset"], json!(["/old", "/older"]));
        assert_eq!(
            b["deploymentPolicies"]["failureHandlingPolicy"],
            "DO_NOTHING"
        );
        assert_eq!(
            b["deploymentPolicies"]["componentUpdatePolicy"]["timeoutInSeconds"],
            30
        );
        let job = &b["iotJobConfiguration"];
        assert_eq!(job["jobExecutionsRolloutConfig"]["maximumPerMinute"], 10);
        assert_eq!(
            job["abortConfig"]["criteriaList"][0]["thresholdPercentage"],
            50.0
        );
        assert_eq!(
            job["abortConfig"]["criteriaList"][0]["minNumberOfExecutedThings"],
            2
        );
        assert_eq!(job["timeoutConfig"]["inProgressTimeoutInMinutes"], 15);
        assert_eq!(b["tags"]["lichen:bakeTimeSeconds"], "60");
        // The fleet's own validation accepts it.
        lichen_fleet_api::greengrass::document::validate_request(b.as_object().unwrap()).unwrap();
    }

    #[test]
    fn errors_name_the_field_to_fix() {
        let arn = "arn:aws:iot:r:1:thinggroup/g";
        let e = form(&[("target_name", "g")]).request(arn).unwrap_err();
        assert!(e.contains("at least one component"), "{e}");
        let e = form(&[("component.1", "a.B")]).request(arn).unwrap_err();
        assert!(e.starts_with("Component row 2"), "{e}");
        let e = form(&[
            ("component.0", "a.B"),
            ("version.0", "1.0.0"),
            ("merge.0", "[1]"),
        ])
        .request(arn)
        .unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
        let e = form(&[
            ("component.0", "a.B"),
            ("version.0", "1.0.0"),
            ("rollout_max_per_minute", "0"),
        ])
        .request(arn)
        .unwrap_err();
        assert!(e.contains("devices per minute"), "{e}");
        let e = form(&[
            ("component.0", "a.B"),
            ("version.0", "1.0.0"),
            ("rollout_base_rate", "5"),
        ])
        .request(arn)
        .unwrap_err();
        assert!(e.contains("increment factor"), "{e}");
        assert!(form(&[("target_name", "")]).target().is_err());
    }
}
