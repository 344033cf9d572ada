//! The component configuration: `mqttTopicMapping`, `mqtt5RouteOptions` and the connection
//! settings Greengrass accepts (checked, then unused: the bridge reaches the broker in process).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// One side of a mapping (Greengrass `source` / `target`, matched case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// The client-device broker (`local_mqtt` bus).
    LocalMqtt,
    /// Local publish/subscribe of components (IPC PublishToTopic / SubscribeToTopic).
    Pubsub,
    /// The cloud (`iot_core` bus, relayed by the cloud link with QoS 1 through its spooler).
    IotCore,
}

impl Endpoint {
    fn parse(s: &str) -> Option<Endpoint> {
        [Endpoint::LocalMqtt, Endpoint::Pubsub, Endpoint::IotCore]
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::LocalMqtt => "LocalMqtt",
            Endpoint::Pubsub => "Pubsub",
            Endpoint::IotCore => "IotCore",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `mqttTopicMapping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// A topic or an MQTT filter (`+`, `#`) on the source.
    pub topic: String,
    pub source: Endpoint,
    pub target: Endpoint,
    /// Prepended to the received topic to make the target topic.
    pub target_topic_prefix: String,
}

/// One entry of `mqtt5RouteOptions`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteOptions {
    pub no_local: bool,
    pub retain_as_published: bool,
}

/// The bridge's configuration, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeConfig {
    /// By mapping name.
    pub mappings: BTreeMap<String, Mapping>,
    /// By mapping name. The bridge never receives its own publishes (it subscribes from-others),
    /// so `noLocal` always holds; the buses carry no retain flag, so forwards are never retained.
    pub route_options: BTreeMap<String, RouteOptions>,
}

/// A configuration the bridge refuses; the previous one stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bridge configuration: `{path}` {reason}")]
pub struct ConfigError {
    /// Field path under the component's configuration, e.g. `mqttTopicMapping.m1.source`.
    pub path: String,
    pub reason: String,
}

fn err(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        reason: reason.into(),
    }
}

fn text<'a>(v: Option<&'a Value>, path: &str) -> Result<Option<&'a str>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(err(path, format!("must be a string, not {other}"))),
    }
}

fn flag(v: Option<&Value>, path: &str) -> Result<bool, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(err(path, format!("must be true or false, not {other}"))),
    }
}

fn object<'a>(
    v: Option<&'a Value>,
    path: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(err(path, format!("must be an object, not {other}"))),
    }
}

fn endpoint(v: Option<&Value>, path: &str) -> Result<Endpoint, ConfigError> {
    let s = text(v, path)?.ok_or_else(|| err(path, "is required: LocalMqtt, Pubsub or IotCore"))?;
    Endpoint::parse(s).ok_or_else(|| {
        err(
            path,
            format!("is {s:?}; use LocalMqtt, Pubsub or IotCore (any case)"),
        )
    })
}

impl BridgeConfig {
    /// Reads the component's `configuration` object (as deployed under
    /// `services.aws.greengrass.clientdevices.mqtt.Bridge.configuration`).
    pub fn from_component_config(config: &Value) -> Result<BridgeConfig, ConfigError> {
        let mut out = BridgeConfig::default();
        let empty = serde_json::Map::new();
        let root = object(Some(config), "configuration")?.unwrap_or(&empty);
        for (name, m) in object(root.get("mqttTopicMapping"), "mqttTopicMapping")?.unwrap_or(&empty)
        {
            let base = format!("mqttTopicMapping.{name}");
            let Some(m) = object(Some(m), &base)? else {
                // A mapping reset to null is no mapping.
                continue;
            };
            let path = |k: &str| format!("{base}.{k}");
            let topic = text(m.get("topic"), &path("topic"))?
                .ok_or_else(|| err(path("topic"), "is required: a topic or an MQTT filter"))?;
            lichen_bus::validate_filter(topic).map_err(|e| err(path("topic"), e.to_string()))?;
            let source = endpoint(m.get("source"), &path("source"))?;
            let target = endpoint(m.get("target"), &path("target"))?;
            if source == target {
                return Err(err(
                    path("target"),
                    format!(
                        "is {target}, the same as the source; a mapping joins two different places"
                    ),
                ));
            }
            let prefix =
                text(m.get("targetTopicPrefix"), &path("targetTopicPrefix"))?.unwrap_or_default();
            if prefix.contains(['+', '#', '\0']) {
                return Err(err(
                    path("targetTopicPrefix"),
                    format!("is {prefix:?}; a prefix of a topic may not hold `+`, `#` or NUL"),
                ));
            }
            out.mappings.insert(
                name.clone(),
                Mapping {
                    topic: topic.to_string(),
                    source,
                    target,
                    target_topic_prefix: prefix.to_string(),
                },
            );
        }
        for (name, o) in
            object(root.get("mqtt5RouteOptions"), "mqtt5RouteOptions")?.unwrap_or(&empty)
        {
            let base = format!("mqtt5RouteOptions.{name}");
            let Some(o) = object(Some(o), &base)? else {
                continue;
            };
            let options = RouteOptions {
                no_local: flag(o.get("noLocal"), &format!("{base}.noLocal"))?,
                retain_as_published: flag(
                    o.get("retainAsPublished"),
                    &format!("{base}.retainAsPublished"),
                )?,
            };
            match out.mappings.get(name) {
                Some(m) if m.source != Endpoint::LocalMqtt => tracing::warn!(
                    mapping = %name,
                    "mqtt5RouteOptions apply only to mappings with source LocalMqtt; ignored"
                ),
                None => tracing::warn!(
                    mapping = %name,
                    "mqtt5RouteOptions names no mapping of mqttTopicMapping; ignored"
                ),
                Some(_) => {}
            }
            out.route_options.insert(name.clone(), options);
        }
        let mqtt = object(root.get("mqtt"), "mqtt")?.unwrap_or(&empty);
        if let Some(v) = text(mqtt.get("version"), "mqtt.version")?
            && !v.eq_ignore_ascii_case("mqtt3")
            && !v.eq_ignore_ascii_case("mqtt5")
        {
            return Err(err("mqtt.version", format!("is {v:?}; use mqtt3 or mqtt5")));
        }
        Ok(out)
    }
}
