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

/// One element of a resource or operation pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A byte that must be there as is.
    Byte(u8),
    /// `*` written in the policy: any run of bytes, including none and `/`.
    Any,
}

/// Tokens of `pattern`, with every `${iot:Connection.Thing.ThingName}` replaced by the thing
/// name as literal bytes: a `*` (or `?`, `+`, `#`) in a substituted value never acts as a
/// wildcard, so a device cannot widen a policy by choosing its name.
fn tokens(pattern: &str, thing_name: Option<&str>) -> Vec<Token> {
    let pattern_tokens = |text: &str, out: &mut Vec<Token>| {
        out.extend(text.bytes().map(|b| match b {
            b'*' => Token::Any,
            b => Token::Byte(b),
        }));
    };
    let mut out = Vec::with_capacity(pattern.len());
    let mut rest = pattern;
    if let Some(thing) = thing_name {
        while let Some(at) = rest.find(THING_NAME_VARIABLE) {
            pattern_tokens(&rest[..at], &mut out);
            out.extend(thing.bytes().map(Token::Byte));
            rest = &rest[at + THING_NAME_VARIABLE.len()..];
        }
    }
    pattern_tokens(rest, &mut out);
    out
}

/// Whether `text` matches the tokens; one backtracking point, so time is at most
/// pattern × text and nothing is allocated.
fn tokens_match(p: &[Token], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(Token::Any) => {
                backtrack = Some((pi, ti));
                pi += 1;
            }
            Some(Token::Byte(b)) if *b == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match backtrack {
                Some((bp, bt)) => {
                    pi = bp + 1;
                    ti = bt + 1;
                    backtrack = Some((bp, bt + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == Token::Any)
}

/// `*` matches any run of characters (including none and `/`); everything else is literal.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    tokens_match(&tokens(pattern, None), text.as_bytes())
}

/// Whether a policy resource matches, its thing-name variable standing for `thing_name` literally.
pub(crate) fn resource_matches(pattern: &str, thing_name: &str, resource: &str) -> bool {
    tokens_match(&tokens(pattern, Some(thing_name)), resource.as_bytes())
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
                // A null entry (a key removed by a configuration merge) is no entry.
                let Some(st) = object(Some(statements), &path)? else {
                    continue;
                };
                let mut list = Vec::new();
                for (sid, s) in st {
                    let spath = format!("{path}.{sid}");
                    let Some(s) = object(Some(s), &spath)? else {
                        continue;
                    };
                    list.push(Statement {
                        operations: strings(s.get("operations"), &format!("{spath}.operations"))?,
                        resources: strings(s.get("resources"), &format!("{spath}.resources"))?,
                    });
                }
                policies.insert(name.clone(), list);
            }
        }
        let mut groups = Vec::new();
        if let Some(defs) = object(root.get("definitions"), "definitions")? {
            for (group, def) in defs {
                let path = format!("definitions.{group}");
                let Some(def) = object(Some(def), &path)? else {
                    continue;
                };
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
                    && s.resources
                        .iter()
                        .any(|r| resource_matches(r, thing_name, resource))
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
    fn a_substituted_thing_name_matches_literally() {
        let g = groups();
        // A `*` (or `?`, `+`, `#`) in the thing name is a character, never a wildcard.
        assert!(!g.authorize("sensor*", "mqtt:publish", "mqtt:topic:sensors/sensor2/data"));
        assert!(!g.authorize(
            "sensor*",
            "mqtt:publish",
            "mqtt:topic:sensors/sensor/x/data"
        ));
        assert!(g.authorize("sensor*", "mqtt:publish", "mqtt:topic:sensors/sensor*/data"));
        assert!(!g.authorize("sensor+", "mqtt:publish", "mqtt:topic:sensors/sensor1/data"));
        assert!(!g.authorize("sensor?", "mqtt:publish", "mqtt:topic:sensors/sensor1/data"));
        // Around the variable, `*` still is a wildcard.
        let g = DeviceGroups::from_config(Some(&json!({
            "definitions": {"all": {"selectionRule": "thingName: *", "policyName": "p"}},
            "policies": {"p": {"s": {"operations": ["mqtt:publish"], "resources": [
                "mqtt:topic:*/${iot:Connection.Thing.ThingName}/*"
            ]}}}
        })))
        .unwrap();
        assert!(g.authorize("t1", "mqtt:publish", "mqtt:topic:a/t1/b/c"));
        assert!(!g.authorize("t*", "mqtt:publish", "mqtt:topic:a/t1/b"));
        assert!(g.authorize("t*", "mqtt:publish", "mqtt:topic:a/t*/b"));
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
    fn null_entries_are_absent_entries() {
        for shape in [
            json!({"definitions": {"g": null}}),
            json!({"definitions": null, "policies": {"p": null}}),
            json!({"policies": {"p": {"s": null}}}),
            json!({
                "definitions": {"g": {"selectionRule": "thingName: a", "policyName": "p"}, "h": null},
                "policies": {"p": {"s": null, "t": {"operations": null, "resources": null}}, "q": null}
            }),
        ] {
            let g = DeviceGroups::from_config(Some(&shape)).unwrap();
            assert!(
                !g.authorize("a", "mqtt:connect", "mqtt:clientId:a"),
                "{shape}"
            );
        }
        let e = DeviceGroups::from_config(Some(&json!({
            "definitions": {"g": {"selectionRule": "thingName: a", "policyName": "p"}},
            "policies": {"p": null}
        })))
        .unwrap_err();
        assert!(matches!(e, PolicyError::UnknownPolicy { .. }), "{e}");
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
