//! IPC authorization (Greengrass `accessControl` policies): deny by default.
//!
//! Policies are read from every component's `configuration.accessControl.<service>.<policyId>`
//! and re-read lazily after any change under `accessControl` (a config subscription marks them
//! stale; the next check reloads), so no config callback ever does work under the store's lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::config_source::ConfigSource;
use crate::router::IpcError;
use crate::tokens::TokenRegistry;

/// The Cli service id: its operations are open to external (CLI) identities and the Cli itself.
pub const CLI_SERVICE: &str = "aws.greengrass.Cli";

/// How a policy resource is compared with the requested resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceStyle {
    /// `*` glob (spanning `/`); MQTT `+`/`#` are literal characters.
    Standard,
    /// `*` glob plus MQTT wildcards: `+` one level, `#` (last level) the rest.
    MqttStyle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Star,
    Plus,
    Hash,
}

/// A compiled policy resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePattern {
    toks: Vec<Tok>,
}

fn parse_level(level: &str, toks: &mut Vec<Tok>) {
    let mut rest = level;
    while let Some(c) = rest.chars().next() {
        let escape = ["${*}", "${?}", "${$}"]
            .iter()
            .find(|e| rest.starts_with(**e));
        if let Some(e) = escape {
            toks.push(Tok::Lit(e.as_bytes()[2] as char));
            rest = &rest[e.len()..];
        } else {
            toks.push(if c == '*' { Tok::Star } else { Tok::Lit(c) });
            rest = &rest[c.len_utf8()..];
        }
    }
}

impl ResourcePattern {
    pub fn parse(pattern: &str, style: ResourceStyle) -> ResourcePattern {
        let mut toks = Vec::new();
        match style {
            ResourceStyle::Standard => parse_level(pattern, &mut toks),
            ResourceStyle::MqttStyle => {
                let levels: Vec<&str> = pattern.split('/').collect();
                for (i, level) in levels.iter().enumerate() {
                    if i > 0 {
                        toks.push(Tok::Lit('/'));
                    }
                    match *level {
                        "+" => toks.push(Tok::Plus),
                        "#" if i == levels.len() - 1 => toks.push(Tok::Hash),
                        _ => parse_level(level, &mut toks),
                    }
                }
            }
        }
        ResourcePattern { toks }
    }

    /// Whether the requested resource (a topic, a filter, a name…) is covered by this pattern.
    pub fn matches(&self, resource: &str) -> bool {
        let s: Vec<char> = resource.chars().collect();
        let (n, m) = (self.toks.len(), s.len());
        // can[i][j]: toks[i..] matches s[j..]; filled from the back.
        let mut can = vec![vec![false; m + 1]; n + 1];
        can[n][m] = true;
        for i in (0..n).rev() {
            for j in (0..=m).rev() {
                can[i][j] = match self.toks[i] {
                    Tok::Lit(c) => j < m && s[j] == c && can[i + 1][j + 1],
                    Tok::Star => can[i + 1][j] || (j < m && can[i][j + 1]),
                    Tok::Plus => {
                        can[i + 1][j] || (j < m && s[j] != '/' && s[j] != '#' && can[i][j + 1])
                    }
                    Tok::Hash => true,
                };
            }
        }
        can[0][0]
    }
}

#[derive(Debug, Clone)]
struct Policy {
    operations: Vec<String>,
    resources: Vec<String>,
}

/// principal → service id → policies (nested, so a check looks up borrowed names).
type PolicyMap = HashMap<String, HashMap<String, Vec<Policy>>>;

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The member of `value` named `key` in the configuration tree's key comparison.
fn child<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| lichen_config::same_key(k, key))
        .map(|(_, v)| v)
}

fn load_policies(config: &dyn ConfigSource) -> PolicyMap {
    let mut map = PolicyMap::new();
    let Some(Value::Object(services)) = config.get(&["services"]) else {
        return map;
    };
    for (component, service) in &services {
        // Keys as the configuration tree resolves them: any letter case.
        let Some(Value::Object(acl)) =
            child(service, "configuration").and_then(|c| child(c, "accessControl"))
        else {
            continue;
        };
        for (service_id, policies) in acl {
            let Value::Object(policies) = policies else {
                continue;
            };
            let entry = map
                .entry(component.clone())
                .or_default()
                .entry(service_id.clone())
                .or_default();
            for policy in policies.values() {
                entry.push(Policy {
                    operations: strings(policy.get("operations")),
                    resources: strings(policy.get("resources")),
                });
            }
        }
    }
    map
}

/// Decides whether a principal may perform an operation on a resource.
pub struct Authorizer {
    config: Arc<dyn ConfigSource>,
    tokens: Arc<TokenRegistry>,
    policies: RwLock<PolicyMap>,
    stale: Arc<AtomicBool>,
    subscription: u64,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    pub fn new(config: Arc<dyn ConfigSource>, tokens: Arc<TokenRegistry>) -> Authorizer {
        let stale = Arc::new(AtomicBool::new(true));
        let flag = stale.clone();
        let subscription = config.subscribe(
            &["services"],
            Box::new(move |path: &[String]| {
                // A change to a policy, or to a whole component or configuration container.
                if path.len() <= 3
                    || path
                        .iter()
                        .any(|p| lichen_config::same_key(p, "accessControl"))
                {
                    flag.store(true, Ordering::Release);
                }
            }),
        );
        Authorizer {
            config,
            tokens,
            policies: RwLock::new(PolicyMap::new()),
            stale,
            subscription,
        }
    }

    /// `Ok` when a policy of `principal` for `service_id` lists `operation` (or `*`) and a
    /// resource covering `resource`; otherwise `UnauthorizedError`.
    pub fn check(
        &self,
        principal: &str,
        service_id: &str,
        operation: &str,
        resource: &str,
        style: ResourceStyle,
    ) -> Result<(), IpcError> {
        if service_id == CLI_SERVICE
            && (principal == CLI_SERVICE || self.tokens.is_external(principal))
        {
            return Ok(());
        }
        if self.stale.swap(false, Ordering::AcqRel) {
            let fresh = load_policies(self.config.as_ref());
            *self.policies.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        let list = policies.get(principal).and_then(|by| by.get(service_id));
        let allowed = list.is_some_and(|list| {
            list.iter().any(|p| {
                p.operations.iter().any(|o| o == operation || o == "*")
                    && p.resources.iter().any(|r| {
                        // `*` covers everything in both styles: skip compiling it (hot for pub/sub).
                        r == "*" || ResourcePattern::parse(r, style).matches(resource)
                    })
            })
        });
        if allowed {
            Ok(())
        } else {
            Err(IpcError::Unauthorized {
                message: format!(
                    "Principal {principal} is not authorized to perform {service_id}:{operation} on resource {resource}; add an accessControl policy for {service_id} to the component's configuration"
                ),
            })
        }
    }
}

impl Drop for Authorizer {
    fn drop(&mut self) {
        self.config.unsubscribe(self.subscription);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_(p: &str, r: &str) -> bool {
        ResourcePattern::parse(p, ResourceStyle::Standard).matches(r)
    }
    fn mqtt(p: &str, r: &str) -> bool {
        ResourcePattern::parse(p, ResourceStyle::MqttStyle).matches(r)
    }

    #[test]
    fn star_alone_matches_everything() {
        assert!(std_("*", "a/b/c"));
        assert!(std_("*", ""));
        assert!(mqtt("*", "a/#"));
    }

    #[test]
    fn star_is_a_glob_spanning_levels() {
        assert!(std_("a/*", "a/b/c"));
        assert!(std_("a/*/c", "a/b/x/c"));
        assert!(std_("pre*fix", "prefix"));
        assert!(std_("pre*fix", "pre-and-fix"));
        assert!(!std_("a/*", "b/c"));
        assert!(!std_("a/*/c", "a/b/d"));
    }

    #[test]
    fn exact_and_question_mark_are_literal() {
        assert!(std_("a/b", "a/b"));
        assert!(!std_("a/b", "a/bc"));
        assert!(std_("a?", "a?"));
        assert!(!std_("a?", "ab"));
    }

    #[test]
    fn escapes() {
        assert!(std_("a/${*}", "a/*"));
        assert!(!std_("a/${*}", "a/b"));
        assert!(std_("${?}", "?"));
        assert!(std_("${$}{x}", "${x}"));
        assert!(!std_("${$}{x}", "a"));
    }

    #[test]
    fn standard_treats_mqtt_wildcards_literally() {
        assert!(std_("a/#", "a/#"));
        assert!(!std_("a/#", "a/b"));
        assert!(std_("a/+/c", "a/+/c"));
        assert!(!std_("a/+/c", "a/b/c"));
    }

    #[test]
    fn mqtt_style_wildcards() {
        assert!(mqtt("a/#", "a/b"));
        assert!(mqtt("a/#", "a/b/c"));
        assert!(mqtt("a/#", "a/#"));
        assert!(mqtt("a/+/c", "a/b/c"));
        assert!(mqtt("a/+/c", "a/+/c"));
        assert!(!mqtt("a/+/c", "a/b/d/c"));
        assert!(!mqtt("a/+", "a/#"));
        assert!(!mqtt("a/#", "b/c"));
        assert!(mqtt("a/*/c", "a/b/x/c"));
        // `+` inside a level is literal.
        assert!(mqtt("a/b+", "a/b+"));
        assert!(!mqtt("a/b+", "a/bx"));
    }
}
