//! AWS IoT policy documents: parsing, policy variables and evaluation, as the fleet's device
//! endpoint applies them to every CONNECT, PUBLISH, SUBSCRIBE and delivery.
//!
//! # Documents
//! A policy is a JSON object: `Version` (optional; if present it must be `"2012-10-17"`) and
//! `Statement`, one statement object or a non-empty array of them. A statement has `Effect`
//! (`Allow` or `Deny`), `Action` and `Resource` (each a string or a non-empty array of strings),
//! and optionally `Sid` and `Condition`. `NotAction`, `NotResource`, `Principal` and `NotPrincipal`
//! are refused with [`PolicyError`], as is any other key: a policy this crate cannot read exactly
//! is never half-applied.
//!
//! # Matching
//! Actions and resources are patterns where `*` matches any run of characters (empty included)
//! and `?` exactly one character. **`+` and `#` are ordinary characters** in a policy, as AWS IoT
//! defines: `topicfilter/a/#` allows subscribing to the filter `a/#` and nothing else, and
//! `topic/a/*` covers `a/b/c`. Actions compare without regard to ASCII case (`iot:publish` is
//! `iot:Publish`); resources compare exactly. `${*}`, `${?}` and `${$}` stand for the literal
//! characters `*`, `?` and `$` (as in IAM).
//!
//! # Policy variables
//! `${iot:ClientId}`, `${iot:Connection.Thing.ThingName}`, `${iot:Connection.Thing.ThingTypeName}`,
//! `${iot:Connection.Thing.IsAttached}` (`true`/`false`) and `${iot:Connection.Thing.Attributes[NAME]}`
//! are replaced by values from the request's [`Context`]. A value is always literal text: a client
//! id `a*` in `topic/${iot:ClientId}` matches the topic `a*` only, never `ab`. A resource whose
//! variable has no value in the context (no thing for the connection, an attribute the thing lacks,
//! a variable this crate does not know) matches nothing, in `Allow` and `Deny` statements alike, as
//! IAM does.
//!
//! # Conditions
//! Condition keys are not evaluated. So that this never widens access, an `Allow` statement with a
//! `Condition` grants nothing, and a `Deny` statement with a `Condition` applies as if its
//! condition held.
//!
//! # Evaluation
//! Over every policy attached to the principal: an explicit `Deny` that matches wins; otherwise any
//! matching `Allow` allows; otherwise the request is denied by default ([`evaluate`]).
//!
//! Architecture invariant: matching allocates nothing and takes time proportional to the pattern
//! length times the subject length at worst (no backtracking blow-up); substitution never builds a
//! pattern string, so a value cannot inject wildcards.
//!
//! ```
//! use lichen_fleet_policy::{Context, Decision, Policy, evaluate};
//! let policy = Policy::parse("p", r#"{"Version":"2012-10-17","Statement":[
//!     {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/dev/${iot:ClientId}/*"}]}"#).unwrap();
//! let ctx = Context { client_id: Some("sensor-1"), thing: None };
//! let allowed = evaluate([&policy], "iot:Publish", "arn:aws:iot:eu-west-1:1:topic/dev/sensor-1/t", &ctx);
//! assert!(matches!(allowed, Decision::Allow { .. }));
//! let other = evaluate([&policy], "iot:Publish", "arn:aws:iot:eu-west-1:1:topic/dev/sensor-2/t", &ctx);
//! assert_eq!(other, Decision::ImplicitDeny);
//! ```

mod pattern;

use pattern::Pattern;
use serde_json::Value;
use std::collections::BTreeMap;

pub use pattern::Variable;

/// The only policy language version AWS IoT accepts for documents with variables.
pub const VERSION: &str = "2012-10-17";

/// A policy document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy:?} is not valid JSON: {what}")]
    Json { policy: String, what: String },
    #[error("policy {policy:?}: {path}: {what}")]
    Shape {
        policy: String,
        path: String,
        what: String,
    },
}

/// Allow or Deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
struct Statement {
    effect: Effect,
    /// `Allow` with a condition grants nothing; `Deny` with one applies (see the crate doc).
    conditional: bool,
    actions: Vec<Pattern>,
    resources: Vec<Pattern>,
}

/// A parsed policy document, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Policy {
    name: String,
    document: String,
    statements: Vec<Statement>,
}

/// The thing a connection acts as, for `${iot:Connection.Thing.*}`.
#[derive(Debug, Clone, Copy)]
pub struct ThingContext<'a> {
    pub name: &'a str,
    pub type_name: Option<&'a str>,
    pub attributes: &'a BTreeMap<String, String>,
}

/// What policy variables resolve to for one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    pub client_id: Option<&'a str>,
    /// The registered thing the connection acts as, if any.
    pub thing: Option<ThingContext<'a>>,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Some `Allow` matched and no `Deny` did. `literal` is true when at least one matching
    /// `Allow` resource has no wildcard (after variables are replaced): the policy names this
    /// resource rather than a family of them.
    Allow { literal: bool },
    /// A `Deny` statement matched.
    ExplicitDeny,
    /// Nothing matched: denied by default.
    ImplicitDeny,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

impl Policy {
    /// Parses a policy document (`name` is used in errors).
    pub fn parse(name: &str, document: &str) -> Result<Policy, PolicyError> {
        let value: Value = serde_json::from_str(document).map_err(|e| PolicyError::Json {
            policy: name.to_owned(),
            what: e.to_string(),
        })?;
        let shape = |path: &str, what: String| PolicyError::Shape {
            policy: name.to_owned(),
            path: path.to_owned(),
            what,
        };
        let Value::Object(top) = value else {
            return Err(shape("(document)", "must be a JSON object".into()));
        };
        let mut statements = None;
        for (key, v) in &top {
            match key.as_str() {
                "Version" => {
                    if v.as_str() != Some(VERSION) {
                        return Err(shape(
                            "Version",
                            format!("is {v}; the supported version is \"{VERSION}\""),
                        ));
                    }
                }
                "Statement" => statements = Some(v),
                "Id" => {}
                other => {
                    return Err(shape(
                        other,
                        "unknown key; a policy has Version and Statement".into(),
                    ));
                }
            }
        }
        let Some(statements) = statements else {
            return Err(shape("Statement", "is missing".into()));
        };
        let list: Vec<&Value> = match statements {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![statements],
            _ => {
                return Err(shape(
                    "Statement",
                    "must be an object or an array of objects".into(),
                ));
            }
        };
        if list.is_empty() {
            return Err(shape("Statement", "is empty".into()));
        }
        let statements = list
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                parse_statement(s, &format!("Statement[{i}]")).map_err(|(p, w)| shape(&p, w))
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            name: name.to_owned(),
            document: document.to_owned(),
            statements,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The document as it was given.
    pub fn document(&self) -> &str {
        &self.document
    }
}

fn parse_statement(v: &Value, path: &str) -> Result<Statement, (String, String)> {
    let Value::Object(map) = v else {
        return Err((path.into(), "must be an object".into()));
    };
    let mut effect = None;
    let mut actions = None;
    let mut resources = None;
    let mut conditional = false;
    for (key, v) in map {
        let at = format!("{path}.{key}");
        match key.as_str() {
            "Effect" => {
                effect = Some(match v.as_str() {
                    Some("Allow") => Effect::Allow,
                    Some("Deny") => Effect::Deny,
                    _ => return Err((at, format!("is {v}; use \"Allow\" or \"Deny\""))),
                })
            }
            "Action" => actions = Some(patterns(v, &at, false)?),
            "Resource" => resources = Some(patterns(v, &at, true)?),
            "Condition" => {
                if !v.is_object() {
                    return Err((at, "must be an object".into()));
                }
                conditional = true;
            }
            "Sid" => {
                if !v.is_string() {
                    return Err((at, "must be a string".into()));
                }
            }
            "NotAction" | "NotResource" | "Principal" | "NotPrincipal" => {
                return Err((
                    at,
                    "is not supported in AWS IoT policies; use Action and Resource".into(),
                ));
            }
            _ => {
                return Err((
                    at,
                    "unknown key; a statement has Effect, Action, Resource, and optionally Sid and Condition"
                        .into(),
                ));
            }
        }
    }
    let missing = |k: &str| (format!("{path}.{k}"), "is missing".to_owned());
    Ok(Statement {
        effect: effect.ok_or_else(|| missing("Effect"))?,
        conditional,
        actions: actions.ok_or_else(|| missing("Action"))?,
        resources: resources.ok_or_else(|| missing("Resource"))?,
    })
}

fn patterns(v: &Value, at: &str, variables: bool) -> Result<Vec<Pattern>, (String, String)> {
    let items: Vec<&Value> = match v {
        Value::String(_) => vec![v],
        Value::Array(a) if !a.is_empty() => a.iter().collect(),
        _ => {
            return Err((
                at.into(),
                "must be a string or a non-empty array of strings".into(),
            ));
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Some(s) = item.as_str() else {
                return Err((format!("{at}[{i}]"), "must be a string".into()));
            };
            if s.is_empty() {
                return Err((format!("{at}[{i}]"), "is empty".into()));
            }
            if !variables && s != "*" && !s.contains(':') {
                return Err((
                    format!("{at}[{i}]"),
                    format!(
                        "{s:?} is not an action; actions look like \"iot:Publish\" or \"iot:*\""
                    ),
                ));
            }
            Pattern::parse(s, variables).map_err(|what| (format!("{at}[{i}]"), what))
        })
        .collect()
}

/// Evaluates `action` (such as `iot:Publish`) on `resource` (a full ARN) against every policy
/// attached to the principal: explicit Deny wins, then any Allow, else denied by default.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    action: &str,
    resource: &str,
    ctx: &Context<'_>,
) -> Decision {
    let mut allowed = None::<bool>;
    for policy in policies {
        for s in &policy.statements {
            if s.effect == Effect::Allow && s.conditional {
                continue;
            }
            if !s
                .actions
                .iter()
                .any(|a| a.matches(action, ctx, true) == Some(true))
            {
                continue;
            }
            let mut literal = false;
            let mut hit = false;
            for r in &s.resources {
                if r.matches(resource, ctx, false) == Some(true) {
                    hit = true;
                    literal |= !r.has_wildcard();
                }
            }
            if !hit {
                continue;
            }
            match s.effect {
                Effect::Deny => return Decision::ExplicitDeny,
                Effect::Allow => allowed = Some(allowed.unwrap_or(false) | literal),
            }
        }
    }
    match allowed {
        Some(literal) => Decision::Allow { literal },
        None => Decision::ImplicitDeny,
    }
}

/// Builds the ARNs the device endpoint checks, for one region and account.
#[derive(Debug, Clone)]
pub struct Arns {
    prefix: String,
}

impl Arns {
    pub fn new(region: &str, account: &str) -> Arns {
        Arns {
            prefix: format!("arn:aws:iot:{region}:{account}:"),
        }
    }

    /// `arn:aws:iot:<region>:<account>:client/<client_id>`
    pub fn client(&self, client_id: &str) -> String {
        format!("{}client/{client_id}", self.prefix)
    }

    /// `arn:aws:iot:<region>:<account>:topic/<topic>`
    pub fn topic(&self, topic: &str) -> String {
        format!("{}topic/{topic}", self.prefix)
    }

    /// `arn:aws:iot:<region>:<account>:topicfilter/<filter>`
    pub fn topic_filter(&self, filter: &str) -> String {
        format!("{}topicfilter/{filter}", self.prefix)
    }
}

#[cfg(test)]
mod tests;
