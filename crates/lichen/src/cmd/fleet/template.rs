//! A fleet provisioning template evaluated against a RegisterThing request's parameters: what
//! to create and attach, and the device configuration to answer.
//!
//! Supported: `Parameters` (`Type`, `Default`), the intrinsics `Ref`, `Fn::Join`, `Fn::Sub`,
//! `Fn::Select`, `Fn::Split` and `Fn::FindInMap` (over `Mappings`), and the resources
//! `AWS::IoT::Thing` (ThingName, AttributePayload, ThingTypeName, ThingGroups),
//! `AWS::IoT::Certificate` (CertificateId, Status) and `AWS::IoT::Policy` (PolicyName or
//! PolicyDocument).

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The template refused the request; the device gets it on `/rejected`.
#[derive(Debug)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(m: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError(m.into()))
}

#[derive(Debug, Default, PartialEq)]
pub struct ThingSpec {
    pub name: String,
    pub thing_type: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<String>,
}

#[derive(Debug, PartialEq)]
pub enum PolicySpec {
    Existing(String),
    Document(String),
}

/// What a template asks for.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub thing: Option<ThingSpec>,
    /// Whether the certificate resource activates the certificate (`Status: Active`).
    pub activate: bool,
    pub policies: Vec<PolicySpec>,
    pub device_configuration: Map<String, Value>,
}

struct Scope<'a> {
    values: BTreeMap<String, String>,
    mappings: Option<&'a Value>,
}

impl Scope<'_> {
    fn eval(&self, v: &Value) -> Result<Value, TemplateError> {
        match v {
            Value::Object(m) if m.len() == 1 => {
                let (k, arg) = m.iter().next().expect("one entry");
                match k.as_str() {
                    "Ref" => self.reference(arg).map(Value::String),
                    "Fn::Join" => self.join(arg),
                    "Fn::Sub" => self.sub(arg),
                    "Fn::Select" => self.select(arg),
                    "Fn::Split" => self.split(arg),
                    "Fn::FindInMap" => self.find_in_map(arg),
                    _ => Ok(Value::Object(
                        [(k.clone(), self.eval(arg)?)].into_iter().collect(),
                    )),
                }
            }
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), self.eval(v)?)))
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            Value::Array(a) => a
                .iter()
                .map(|v| self.eval(v))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            other => Ok(other.clone()),
        }
    }

    fn string(&self, v: &Value, what: &str) -> Result<String, TemplateError> {
        match self.eval(v)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => err(format!("{what} must be a string, not {other}")),
        }
    }

    fn reference(&self, arg: &Value) -> Result<String, TemplateError> {
        let Some(name) = arg.as_str() else {
            return err("Ref takes a parameter name");
        };
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| TemplateError(format!("Ref {name:?}: no such parameter")))
    }

    fn join(&self, arg: &Value) -> Result<Value, TemplateError> {
        let Some([sep, Value::Array(items)]) = arg.as_array().map(Vec::as_slice) else {
            return err("Fn::Join takes [separator, [values…]]");
        };
        let sep = self.string(sep, "Fn::Join separator")?;
        let parts = items
            .iter()
            .map(|i| self.string(i, "a Fn::Join value"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Value::String(parts.join(&sep)))
    }

    fn sub(&self, arg: &Value) -> Result<Value, TemplateError> {
        let Some(text) = arg.as_str() else {
            return err("Fn::Sub takes a string with ${Name} references");
        };
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let Some(j) = rest[i..].find('}') else {
                return err(format!("Fn::Sub {text:?}: an unclosed ${{"));
            };
            out.push_str(&self.reference(&Value::String(rest[i + 2..i + j].into()))?);
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        Ok(Value::String(out))
    }

    fn select(&self, arg: &Value) -> Result<Value, TemplateError> {
        let Some([index, list]) = arg.as_array().map(Vec::as_slice) else {
            return err("Fn::Select takes [index, [values…]]");
        };
        let index: usize = self
            .string(index, "Fn::Select index")?
            .parse()
            .map_err(|_| TemplateError("Fn::Select index must be a number".into()))?;
        match self.eval(list)? {
            Value::Array(items) => items
                .get(index)
                .cloned()
                .ok_or_else(|| TemplateError(format!("Fn::Select index {index} is out of range"))),
            _ => err("Fn::Select takes a list"),
        }
    }

    fn split(&self, arg: &Value) -> Result<Value, TemplateError> {
        let Some([sep, text]) = arg.as_array().map(Vec::as_slice) else {
            return err("Fn::Split takes [separator, string]");
        };
        let sep = self.string(sep, "Fn::Split separator")?;
        let text = self.string(text, "Fn::Split string")?;
        Ok(Value::Array(
            text.split(sep.as_str())
                .map(|s| Value::String(s.into()))
                .collect(),
        ))
    }

    fn find_in_map(&self, arg: &Value) -> Result<Value, TemplateError> {
        let Some([map, top, second]) = arg.as_array().map(Vec::as_slice) else {
            return err("Fn::FindInMap takes [map, key, key]");
        };
        let (map, top, second) = (
            self.string(map, "Fn::FindInMap map")?,
            self.string(top, "Fn::FindInMap key")?,
            self.string(second, "Fn::FindInMap key")?,
        );
        self.mappings
            .and_then(|m| m.get(&map)?.get(&top)?.get(&second))
            .cloned()
            .ok_or_else(|| TemplateError(format!("Fn::FindInMap: no {map}.{top}.{second}")))
    }
}

/// Evaluates `body` with the request's `parameters` for certificate `certificate_id`.
pub fn plan(
    body: &str,
    parameters: &Map<String, Value>,
    certificate_id: &str,
) -> Result<Plan, TemplateError> {
    let doc: Value = serde_json::from_str(body)
        .map_err(|e| TemplateError(format!("the template body is not JSON: {e}")))?;
    let mut values = BTreeMap::new();
    if let Some(Value::Object(declared)) = doc.get("Parameters") {
        for (name, decl) in declared {
            let given = match parameters.get(name) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return err(format!("parameter {name:?} must be a string, not {other}"));
                }
                None => decl
                    .get("Default")
                    .and_then(Value::as_str)
                    .map(String::from),
            };
            match given {
                Some(v) => {
                    values.insert(name.clone(), v);
                }
                None => return err(format!("parameter {name:?} is required by the template")),
            }
        }
    }
    values.insert("AWS::IoT::Certificate::Id".into(), certificate_id.into());
    let scope = Scope {
        values,
        mappings: doc.get("Mappings"),
    };
    let mut plan = Plan::default();
    let Some(Value::Object(resources)) = doc.get("Resources") else {
        return err("the template has no Resources");
    };
    for (logical, r) in resources {
        let props = match r.get("Properties") {
            Some(p) => scope.eval(p)?,
            None => Value::Object(Map::new()),
        };
        let text = |k: &str| -> Option<String> {
            match props.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            }
        };
        match r.get("Type").and_then(Value::as_str) {
            Some("AWS::IoT::Thing") => {
                let Some(name) = text("ThingName") else {
                    return err(format!("resource {logical}: ThingName is required"));
                };
                let mut thing = ThingSpec {
                    name,
                    thing_type: text("ThingTypeName"),
                    ..Default::default()
                };
                if let Some(Value::Object(a)) = props.get("AttributePayload") {
                    for (k, v) in a {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        thing.attributes.insert(k.clone(), v);
                    }
                }
                if let Some(Value::Array(groups)) = props.get("ThingGroups") {
                    for g in groups {
                        match g.as_str() {
                            Some(g) => thing.groups.push(g.into()),
                            None => {
                                return err(format!(
                                    "resource {logical}: ThingGroups must be strings"
                                ));
                            }
                        }
                    }
                }
                plan.thing = Some(thing);
            }
            Some("AWS::IoT::Certificate") => {
                if let Some(id) = text("CertificateId")
                    && id != certificate_id
                {
                    return err(format!(
                        "resource {logical}: CertificateId must be the certificate being provisioned"
                    ));
                }
                plan.activate = text("Status").is_some_and(|s| s.eq_ignore_ascii_case("active"));
            }
            Some("AWS::IoT::Policy") => match (text("PolicyName"), props.get("PolicyDocument")) {
                (Some(_), Some(_)) => {
                    return err(format!(
                        "resource {logical}: give PolicyName or PolicyDocument, not both"
                    ));
                }
                (Some(name), None) => plan.policies.push(PolicySpec::Existing(name)),
                (None, Some(Value::String(d))) => {
                    plan.policies.push(PolicySpec::Document(d.clone()))
                }
                (None, Some(d)) => plan.policies.push(PolicySpec::Document(d.to_string())),
                (None, None) => {
                    return err(format!(
                        "resource {logical}: PolicyName or PolicyDocument is required"
                    ));
                }
            },
            other => {
                return err(format!(
                    "resource {logical}: type {other:?} is not AWS::IoT::Thing, ::Certificate or ::Policy"
                ));
            }
        }
    }
    if let Some(dc) = doc.get("DeviceConfiguration") {
        match scope.eval(dc)? {
            Value::Object(m) => plan.device_configuration = m,
            _ => return err("DeviceConfiguration must be an object"),
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BODY: &str = r#"{
      "Parameters": { "SerialNumber": {"Type":"String"}, "Location": {"Type":"String","Default":"WA"} },
      "Mappings": { "Sites": { "WA": { "Region": "west" } } },
      "Resources": {
        "thing": { "Type": "AWS::IoT::Thing",
          "Properties": { "ThingName": {"Fn::Join":["",["ThingPrefix_",{"Ref":"SerialNumber"}]]},
            "AttributePayload": {"serialNumber":{"Ref":"SerialNumber"}}, "ThingGroups": [{"Ref":"Location"}] } },
        "certificate": { "Type": "AWS::IoT::Certificate",
          "Properties": { "CertificateId": {"Ref":"AWS::IoT::Certificate::Id"}, "Status": "Active" } },
        "policy": { "Type": "AWS::IoT::Policy", "Properties": { "PolicyName": "existing-policy" } } },
      "DeviceConfiguration": { "Site": {"Ref":"Location"}, "Name": {"Fn::Sub": "${SerialNumber}@${Location}"},
        "Region": {"Fn::FindInMap": ["Sites", {"Ref":"Location"}, "Region"]},
        "First": {"Fn::Select": ["0", {"Fn::Split": ["-", {"Ref":"SerialNumber"}]}]} }
    }"#;

    #[test]
    fn the_documented_template_evaluates() {
        let params = json!({"SerialNumber": "a-7"});
        let p = plan(BODY, params.as_object().unwrap(), "c1").unwrap();
        let thing = p.thing.unwrap();
        assert_eq!(thing.name, "ThingPrefix_a-7");
        assert_eq!(thing.attributes["serialNumber"], "a-7");
        assert_eq!(thing.groups, vec!["WA"]);
        assert!(p.activate);
        assert_eq!(
            p.policies,
            vec![PolicySpec::Existing("existing-policy".into())]
        );
        assert_eq!(
            Value::Object(p.device_configuration),
            json!({"Site": "WA", "Name": "a-7@WA", "Region": "west", "First": "a"})
        );
    }

    #[test]
    fn a_missing_parameter_is_refused_by_name() {
        let e = plan(BODY, &Map::new(), "c1").unwrap_err();
        assert!(e.0.contains("SerialNumber"), "{e}");
    }

    #[test]
    fn another_certificate_id_is_refused() {
        let body = r#"{"Resources": {"c": {"Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": "other", "Status": "Active"}}}}"#;
        assert!(plan(body, &Map::new(), "c1").is_err());
    }
}
