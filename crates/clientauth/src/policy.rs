//! `deviceGroups`: which client devices may do what. Groups select devices by thing name; each
//! names a policy of statements (operations × resources). Deny by default; the permissions of all
//! matching groups are unioned; there are no deny statements.

use crate::rule::{RuleError, SelectionRule};
use serde_json::Value;
use std::collections::HashMap;

/// The only `deviceGroups.formatVersion` Greengrass defines.
pub const FORMAT_VERSION: &str = "2021-03-05";
/// Policy variable replaced by the device's thing name in resources.
pub const THING_NAME_VARIABLE: &str = "${iot:Connection.Thing.ThingName}";

/// A `deviceGroups` configuration that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("deviceGroups.formatVersion is {0:?}; the only supported format is \"2021-03-05\"")]
    FormatVersion(String),
    #[error("deviceGroups.{path}: {what}")]
    Shape { path: String, what: String },
    #[error("deviceGroups.definitions.{group}.selectionRule: {source}")]
    Rule { group: String, source: RuleError },
    #[error(
        "deviceGroups.definitions.{group}.policyName {policy:?} names no policy under deviceGroups.policies; add it or fix the name"
    )]
    UnknownPolicy { group: String, policy: String },
}

#[derive(Debug, Clone)]
struct Statement {
    operations: Vec<String>,
    resources: Vec<String>,
}

#[derive(Debug, Clone)]
struct Group {
    rule: SelectionRule,
    policy: String,
}

/// Parsed `deviceGroups`.
#[derive(Debug, Clone, Default)]
pub struct DeviceGroups {
    groups: Vec<Group>,
    policies: HashMap<String, Vec<Statement>>,
}

fn strings(v: Option<&Value>, path: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| PolicyError::Shape {
                        path: path.to_string(),
                        what: "every entry must be a string".into(),
                    })
            })
            .collect(),
        Some(_) => Err(PolicyError::Shape {
            path: path.to_string(),
            what: "expected a list of strings".into(),
        }),
    }
}

fn object<'a>(
    v: Option<&'a Value>,
    path: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, PolicyError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(PolicyError::Shape {
            path: path.to_string(),
            what: "expected a map".into(),
        }),
    }
}

/// `*` matches any run of characters (including none and `/`); everything else is literal.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((bp, bt)) = backtrack {
            pi = bp + 1;
            ti = bt + 1;
            backtrack = Some((bp, bt + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

impl DeviceGroups {
    /// Parses the `deviceGroups` node of the component configuration (absent = no groups).
    pub fn from_config(v: Option<&Value>) -> Result<DeviceGroups, PolicyError> {
        let Some(root) = object(v, "")? else {
            return Ok(DeviceGroups::default());
        };
        match root.get("formatVersion") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == FORMAT_VERSION => {}
            Some(other) => {
                return Err(PolicyError::FormatVersion(match other {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                }));
            }
        }
        let mut policies = HashMap::new();
        if let Some(ps) = object(root.get("policies"), "policies")? {
            for (name, statements) in ps {
                let path = format!("policies.{name}");
                let mut list = Vec::new();
                if let Some(st) = object(Some(statements), &path)? {
                    for (sid, s) in st {
                        let spath = format!("{path}.{sid}");
                        let s = object(Some(s), &spath)?.expect("present");
                        list.push(Statement {
                            operations: strings(
                                s.get("operations"),
                                &format!("{spath}.operations"),
                            )?,
                            resources: strings(s.get("resources"), &format!("{spath}.resources"))?,
                        });
                    }
                }
                policies.insert(name.clone(), list);
            }
        }
        let mut groups = Vec::new();
        if let Some(defs) = object(root.get("definitions"), "definitions")? {
            for (group, def) in defs {
                let path = format!("definitions.{group}");
                let def = object(Some(def), &path)?.expect("present");
                let rule_text = def
                    .get("selectionRule")
                    .and_then(Value::as_str)
                    .ok_or_else(|| PolicyError::Shape {
                        path: format!("{path}.selectionRule"),
                        what: "missing; add e.g. \"thingName: MyDevice*\"".into(),
                    })?;
                let rule = SelectionRule::parse(rule_text).map_err(|source| PolicyError::Rule {
                    group: group.clone(),
                    source,
                })?;
                let policy = def
                    .get("policyName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| PolicyError::Shape {
                        path: format!("{path}.policyName"),
                        what: "missing; name a policy under deviceGroups.policies".into(),
                    })?;
                if !policies.contains_key(policy) {
                    return Err(PolicyError::UnknownPolicy {
                        group: group.clone(),
                        policy: policy.to_string(),
                    });
                }
                groups.push(Group {
                    rule,
                    policy: policy.to_string(),
                });
            }
        }
        Ok(DeviceGroups { groups, policies })
    }

    /// Whether the device `thing_name` may perform `operation` (e.g. `mqtt:publish`) on
    /// `resource` (e.g. `mqtt:topic:a/b`): some statement of some matching group allows it.
    pub fn authorize(&self, thing_name: &str, operation: &str, resource: &str) -> bool {
        self.groups
            .iter()
            .filter(|g| g.rule.matches(thing_name))
            .filter_map(|g| self.policies.get(&g.policy))
            .flatten()
            .any(|s| {
                s.operations.iter().any(|o| glob_matches(o, operation))
                    && s.resources.iter().any(|r| {
                        let r = r.replace(THING_NAME_VARIABLE, thing_name);
                        glob_matches(&r, resource)
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn groups() -> DeviceGroups {
        DeviceGroups::from_config(Some(&json!({
            "formatVersion": "2021-03-05",
            "definitions": {
                "sensors": {"selectionRule": "thingName: sensor*", "policyName": "sensorPolicy"},
                "admins": {"selectionRule": "thingName: admin OR thingName: root*", "policyName": "all"},
                "both": {"selectionRule": "thingName: sensor-x", "policyName": "extra"}
            },
            "policies": {
                "sensorPolicy": {
                    "connect": {"operations": ["mqtt:connect"], "resources": ["mqtt:clientId:sensor*"]},
                    "pub": {"operations": ["mqtt:publish"], "resources": [
                        "mqtt:topic:sensors/${iot:Connection.Thing.ThingName}/data"
                    ]},
                    "sub": {"operations": ["mqtt:subscribe"], "resources": ["mqtt:topicfilter:cmd/+/x"]}
                },
                "all": {"any": {"operations": ["*"], "resources": ["*"], "statementDescription": "all"}},
                "extra": {"e": {"operations": ["mqtt:*"], "resources": ["mqtt:topic:extra/*"]}}
            }
        })))
        .unwrap()
    }

    #[test]
    fn deny_by_default_and_per_statement() {
        let g = groups();
        assert!(g.authorize("sensor1", "mqtt:connect", "mqtt:clientId:sensor1"));
        assert!(!g.authorize("other", "mqtt:connect", "mqtt:clientId:other"));
        assert!(!g.authorize("sensor1", "mqtt:publish", "mqtt:topic:anything"));
        assert!(!g.authorize(
            "sensor1",
            "mqtt:subscribe",
            "mqtt:topicfilter:sensors/sensor1/data"
        ));
    }

    #[test]
    fn thing_name_variable_is_substituted() {
        let g = groups();
        assert!(g.authorize("sensor1", "mqtt:publish", "mqtt:topic:sensors/sensor1/data"));
        assert!(!g.authorize("sensor1", "mqtt:publish", "mqtt:topic:sensors/sensor2/data"));
    }

    #[test]
    fn topic_filters_compare_as_strings() {
        let g = groups();
        assert!(g.authorize("sensor1", "mqtt:subscribe", "mqtt:topicfilter:cmd/+/x"));
        assert!(!g.authorize("sensor1", "mqtt:subscribe", "mqtt:topicfilter:cmd/a/x"));
    }

    #[test]
    fn matching_groups_are_unioned_and_operation_wildcards_work() {
        let g = groups();
        assert!(g.authorize("sensor-x", "mqtt:publish", "mqtt:topic:extra/a/b"));
        assert!(g.authorize("sensor-x", "mqtt:connect", "mqtt:clientId:sensor-x"));
        assert!(!g.authorize("sensor-y", "mqtt:publish", "mqtt:topic:extra/a/b"));
        assert!(g.authorize("root7", "mqtt:subscribe", "mqtt:topicfilter:#"));
        assert!(g.authorize("admin", "mqtt:connect", "mqtt:clientId:admin"));
    }

    #[test]
    fn glob() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*c", "abbbc"));
        assert!(glob_matches("a*c*", "a/c/d"));
        assert!(!glob_matches("a*c", "abcd"));
        assert!(glob_matches("*b*b", "abxbb"));
        assert!(!glob_matches("abc", "ab"));
    }

    #[test]
    fn bad_configurations_say_where() {
        let e =
            DeviceGroups::from_config(Some(&json!({"formatVersion": "2020-01-01"}))).unwrap_err();
        assert!(matches!(e, PolicyError::FormatVersion(_)));
        let e = DeviceGroups::from_config(Some(&json!({
            "definitions": {"g": {"selectionRule": "thingName: a*b", "policyName": "p"}},
            "policies": {"p": {}}
        })))
        .unwrap_err();
        assert!(e.to_string().contains("definitions.g.selectionRule"), "{e}");
        let e = DeviceGroups::from_config(Some(&json!({
            "definitions": {"g": {"selectionRule": "thingName: a", "policyName": "missing"}}
        })))
        .unwrap_err();
        assert!(matches!(e, PolicyError::UnknownPolicy { .. }));
        assert!(DeviceGroups::from_config(None).unwrap().groups.is_empty());
    }
}
