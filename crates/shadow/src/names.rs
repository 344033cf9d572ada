//! Thing and shadow names, and the `$aws/things/<thing>/shadow[/name/<shadow>]/…` topics.

use crate::ShadowError;

/// Longest thing name AWS IoT accepts.
pub const MAX_THING_NAME: usize = 128;
/// Longest named-shadow name.
pub const MAX_SHADOW_NAME: usize = 64;
/// The reserved named shadow through which Greengrass delivers single-device deployments.
pub const DEPLOYMENT_SHADOW: &str = "AWSManagedGreengrassV2Deployment";

fn valid_chars(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// A thing name: 1–128 characters of `[a-zA-Z0-9:_-]`.
pub fn validate_thing_name(name: &str) -> Result<(), ShadowError> {
    const RULE: &str = "use 1-128 characters of a-z, A-Z, 0-9, ':', '_' and '-'";
    if name.is_empty() || name.len() > MAX_THING_NAME || !valid_chars(name) {
        return Err(ShadowError::invalid_name("thingName", name, RULE));
    }
    Ok(())
}

/// A named shadow's name: 1–64 characters of `[a-zA-Z0-9:_-]`. Names starting with `$` are
/// reserved by AWS IoT and refused (the `$` fails the character rule).
pub fn validate_shadow_name(name: &str) -> Result<(), ShadowError> {
    const RULE: &str = "use 1-64 characters of a-z, A-Z, 0-9, ':', '_' and '-'";
    if name.is_empty() || name.len() > MAX_SHADOW_NAME || !valid_chars(name) {
        return Err(ShadowError::invalid_name("shadowName", name, RULE));
    }
    Ok(())
}

/// The three shadow operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Get,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// What a shadow topic carries: the request itself or one of its responses and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Request,
    Accepted,
    Rejected,
    /// `update/delta` only.
    Delta,
    /// `update/documents` only.
    Documents,
}

impl TopicKind {
    fn suffix(self) -> Option<&'static str> {
        match self {
            TopicKind::Request => None,
            TopicKind::Accepted => Some("accepted"),
            TopicKind::Rejected => Some("rejected"),
            TopicKind::Delta => Some("delta"),
            TopicKind::Documents => Some("documents"),
        }
    }
}

/// A parsed shadow topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowTopic {
    pub thing: String,
    /// `None` for the classic shadow.
    pub shadow: Option<String>,
    pub operation: Operation,
    pub kind: TopicKind,
}

impl ShadowTopic {
    /// Parses `$aws/things/<thing>/shadow[/name/<shadow>]/<op>[/<suffix>]`. Returns `None` for
    /// any other topic, for a combination AWS does not define (`get/delta`), and for a thing
    /// or shadow name that breaks the naming rules.
    pub fn parse(topic: &str) -> Option<ShadowTopic> {
        let rest = topic.strip_prefix("$aws/things/")?;
        let (thing, rest) = rest.split_once('/')?;
        let rest = rest.strip_prefix("shadow/")?;
        let (shadow, rest) = match rest.strip_prefix("name/") {
            Some(named) => {
                let (name, rest) = named.split_once('/')?;
                validate_shadow_name(name).ok()?;
                (Some(name.to_string()), rest)
            }
            None => (None, rest),
        };
        validate_thing_name(thing).ok()?;
        let (op, suffix) = match rest.split_once('/') {
            Some((op, suffix)) => (op, Some(suffix)),
            None => (rest, None),
        };
        let operation = match op {
            "get" => Operation::Get,
            "update" => Operation::Update,
            "delete" => Operation::Delete,
            _ => return None,
        };
        let kind = match suffix {
            None => TopicKind::Request,
            Some("accepted") => TopicKind::Accepted,
            Some("rejected") => TopicKind::Rejected,
            Some("delta") if operation == Operation::Update => TopicKind::Delta,
            Some("documents") if operation == Operation::Update => TopicKind::Documents,
            Some(_) => return None,
        };
        Some(ShadowTopic {
            thing: thing.to_string(),
            shadow,
            operation,
            kind,
        })
    }

    /// The topic string for this thing, shadow, operation and kind.
    pub fn to_topic(&self) -> String {
        shadow_topic(
            &self.thing,
            self.shadow.as_deref(),
            self.operation,
            self.kind,
        )
    }
}

/// `$aws/things/<thing>/shadow` or `$aws/things/<thing>/shadow/name/<shadow>`.
pub fn shadow_topic_prefix(thing: &str, shadow: Option<&str>) -> String {
    match shadow {
        Some(name) => format!("$aws/things/{thing}/shadow/name/{name}"),
        None => format!("$aws/things/{thing}/shadow"),
    }
}

/// The full topic for an operation's request or one of its responses/events.
pub fn shadow_topic(
    thing: &str,
    shadow: Option<&str>,
    operation: Operation,
    kind: TopicKind,
) -> String {
    let mut topic = shadow_topic_prefix(thing, shadow);
    topic.push('/');
    topic.push_str(operation.as_str());
    if let Some(suffix) = kind.suffix() {
        topic.push('/');
        topic.push_str(suffix);
    }
    topic
}
