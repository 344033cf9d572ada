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

/// A pattern element as written: `Hash` only ends an MQTT-style pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Lit(char),
    Star,
    Plus,
    Hash,
}

/// A compiled pattern element, matched against the resource's UTF-8 bytes (a literal character
/// is its bytes; UTF-8 never matches a character's bytes from the middle of another one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(u8),
    /// Any bytes (`*`, and a final `#`, which matches whatever follows).
    Star,
    /// Any bytes but `/` and `#` (MQTT `+`). Always followed by `/` or the pattern's end (it is
    /// a whole level), which makes the level it takes unambiguous.
    Plus,
}

/// The largest resource a check compares, in bytes (the bus's topic limit); a longer one is
/// refused before any pattern is looked at.
pub const MAX_RESOURCE_BYTES: usize = 65_535;

/// A compiled policy resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePattern {
    toks: Vec<Tok>,
}

fn parse_level(level: &str, toks: &mut Vec<Written>) {
    let mut rest = level;
    while let Some(c) = rest.chars().next() {
        let escape = ["${*}", "${?}", "${$}"]
            .iter()
            .find(|e| rest.starts_with(**e));
        if let Some(e) = escape {
            toks.push(Written::Lit(e.as_bytes()[2] as char));
            rest = &rest[e.len()..];
        } else {
            toks.push(if c == '*' {
                Written::Star
            } else {
                Written::Lit(c)
            });
            rest = &rest[c.len_utf8()..];
        }
    }
}

/// Compiles written elements: `#` (last) becomes `*`; a `+` next to a `*` adds nothing and goes
/// (`+*` and `*+` match what `*` matches), as do repeats of either.
fn compile(written: &[Written]) -> Vec<Tok> {
    let mut toks: Vec<Tok> = Vec::with_capacity(written.len());
    for w in written {
        match w {
            Written::Lit(c) => {
                let mut buf = [0u8; 4];
                toks.extend(c.encode_utf8(&mut buf).bytes().map(Tok::Lit));
            }
            Written::Star | Written::Hash => {
                while toks.last() == Some(&Tok::Plus) {
                    toks.pop();
                }
                if toks.last() != Some(&Tok::Star) {
                    toks.push(Tok::Star);
                }
            }
            Written::Plus => {
                if !matches!(toks.last(), Some(Tok::Star | Tok::Plus)) {
                    toks.push(Tok::Plus);
                }
            }
        }
    }
    debug_assert!(
        toks.windows(2)
            .all(|w| w[0] != Tok::Plus || matches!(w[1], Tok::Lit(b'/' | b'#'))),
        "a `+` must be a whole level"
    );
    toks
}

/// Matches the star-free `seg` at `s[at..]` and gives where the match ends. There is at most
/// one match: a `+` takes its whole level (it is followed by `/`, `#` or the pattern's end).
fn match_segment(seg: &[Tok], s: &[u8], mut at: usize) -> Option<usize> {
    for tok in seg {
        match *tok {
            Tok::Lit(b) => {
                if s.get(at) != Some(&b) {
                    return None;
                }
                at += 1;
            }
            Tok::Plus => {
                while at < s.len() && s[at] != b'/' && s[at] != b'#' {
                    at += 1;
                }
            }
            Tok::Star => unreachable!("segments are split at stars"),
        }
    }
    Some(at)
}

impl ResourcePattern {
    pub fn parse(pattern: &str, style: ResourceStyle) -> ResourcePattern {
        let mut written = Vec::new();
        match style {
            ResourceStyle::Standard => parse_level(pattern, &mut written),
            ResourceStyle::MqttStyle => {
                let levels: Vec<&str> = pattern.split('/').collect();
                for (i, level) in levels.iter().enumerate() {
                    if i > 0 {
                        written.push(Written::Lit('/'));
                    }
                    match *level {
                        "+" => written.push(Written::Plus),
                        "#" if i == levels.len() - 1 => written.push(Written::Hash),
                        _ => parse_level(level, &mut written),
                    }
                }
            }
        }
        ResourcePattern {
            toks: compile(&written),
        }
    }

    /// Whether the requested resource (a topic, a filter, a name…) is covered by this pattern.
    ///
    /// Glob matching without allocation: the pattern is split at its stars; the first piece
    /// must match at the start, the last at the end, and each piece between takes its earliest
    /// match (a later one never helps: the star after it absorbs the difference). Time is at
    /// most pattern × resource length; extra memory is constant.
    pub fn matches(&self, resource: &str) -> bool {
        let s = resource.as_bytes();
        let mut pieces = self.toks.split(|t| *t == Tok::Star).peekable();
        let first = pieces.next().unwrap_or_default();
        let Some(mut at) = match_segment(first, s, 0) else {
            return false;
        };
        if pieces.peek().is_none() {
            return at == s.len();
        }
        while let Some(piece) = pieces.next() {
            if pieces.peek().is_none() {
                // The last piece ends the resource; without a `+` its length fixes its start.
                if !piece.contains(&Tok::Plus) {
                    return s.len().checked_sub(piece.len()).is_some_and(|start| {
                        start >= at && match_segment(piece, s, start) == Some(s.len())
                    });
                }
                return (at..=s.len()).any(|start| match_segment(piece, s, start) == Some(s.len()));
            }
            match (at..=s.len()).find_map(|start| match_segment(piece, s, start)) {
                Some(end) => at = end,
                None => return false,
            }
        }
        unreachable!("the loop returns at the last piece")
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
        // Limits before any work that grows with the resource.
        if resource.len() > MAX_RESOURCE_BYTES {
            return Err(IpcError::invalid_arguments(format!(
                "the resource of {service_id}:{operation} is {} bytes, over the limit of {MAX_RESOURCE_BYTES}; use a shorter topic or name",
                resource.len()
            )));
        }
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
            AUTHORIZATION_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

/// IPC operations refused by policy since the process started.
static AUTHORIZATION_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many IPC operations the authorizer refused since the process started (security metrics).
pub fn authorization_failures() -> u64 {
    AUTHORIZATION_FAILURES.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The straightforward matcher (a table over pattern × resource), to compare with.
    fn reference_matches(pattern: &str, style: ResourceStyle, resource: &str) -> bool {
        let mut toks = Vec::new();
        match style {
            ResourceStyle::Standard => parse_level(pattern, &mut toks),
            ResourceStyle::MqttStyle => {
                let levels: Vec<&str> = pattern.split('/').collect();
                for (i, level) in levels.iter().enumerate() {
                    if i > 0 {
                        toks.push(Written::Lit('/'));
                    }
                    match *level {
                        "+" => toks.push(Written::Plus),
                        "#" if i == levels.len() - 1 => toks.push(Written::Hash),
                        _ => parse_level(level, &mut toks),
                    }
                }
            }
        }
        let s: Vec<char> = resource.chars().collect();
        let (n, m) = (toks.len(), s.len());
        let mut can = vec![vec![false; m + 1]; n + 1];
        can[n][m] = true;
        for i in (0..n).rev() {
            for j in (0..=m).rev() {
                can[i][j] = match toks[i] {
                    Written::Lit(c) => j < m && s[j] == c && can[i + 1][j + 1],
                    Written::Star => can[i + 1][j] || (j < m && can[i][j + 1]),
                    Written::Plus => {
                        can[i + 1][j] || (j < m && s[j] != '/' && s[j] != '#' && can[i][j + 1])
                    }
                    Written::Hash => true,
                };
            }
        }
        can[0][0]
    }

    fn text(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(alphabet), 0..max)
            .prop_map(|parts| parts.concat())
    }

    const PATTERN_PARTS: &[&str] = &[
        "a", "b", "/", "+", "#", "*", "?", "é", "${*}", "${?}", "${$}", "$", "{", "}", "a/", "/+/",
        "/#",
    ];
    const RESOURCE_PARTS: &[&str] = &["a", "b", "/", "+", "#", "*", "?", "é", "$", "{", "}", "ab/"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn matches_as_the_reference_matcher(
            pattern in text(PATTERN_PARTS, 10),
            resource in text(RESOURCE_PARTS, 14),
            mqtt_style in any::<bool>(),
        ) {
            let style = if mqtt_style { ResourceStyle::MqttStyle } else { ResourceStyle::Standard };
            prop_assert_eq!(
                ResourcePattern::parse(&pattern, style).matches(&resource),
                reference_matches(&pattern, style, &resource),
                "pattern {:?} ({:?}) on {:?}", pattern, style, resource
            );
        }
    }

    #[test]
    fn a_resource_over_the_limit_is_refused_before_any_policy_is_read() {
        let store = lichen_config::ConfigStore::in_memory();
        store
            .merge(
                &["services", "c", "configuration", "accessControl"],
                serde_json::json!({ "svc": { "p": { "operations": ["*"], "resources": ["*"] } } }),
                1,
            )
            .unwrap();
        let authorizer = Authorizer::new(Arc::new(store), Arc::new(TokenRegistry::new()));
        let at_limit = "t".repeat(MAX_RESOURCE_BYTES);
        assert_eq!(
            authorizer.check("c", "svc", "op", &at_limit, ResourceStyle::Standard),
            Ok(())
        );
        let over = "t".repeat(MAX_RESOURCE_BYTES + 1);
        for principal in ["c", "unknown"] {
            match authorizer.check(principal, "svc", "op", &over, ResourceStyle::MqttStyle) {
                Err(IpcError::InvalidArguments { message }) => {
                    assert!(message.contains("over the limit"), "{message}")
                }
                other => panic!("a {} byte resource: {other:?}", over.len()),
            }
        }
    }

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
