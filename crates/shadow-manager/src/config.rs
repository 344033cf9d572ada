//! The component's configuration (`services.aws.greengrass.ShadowManager.configuration`), read
//! with Greengrass' keys and defaults. Bad values are refused with the key's path.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::DEPLOYMENT_SHADOW;

/// Greengrass' default and maximum for `shadowDocumentSizeLimitBytes`.
pub const DEFAULT_SIZE_LIMIT: usize = 8192;
pub const MAX_SIZE_LIMIT: usize = 30720;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    BetweenDeviceAndCloud,
    DeviceToCloud,
    CloudToDevice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Each change is synced as it happens.
    RealTime,
    /// Changes wait and are synced every `delay`.
    Periodic(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub max_outbound_sync_updates_per_second: f64,
    pub max_total_local_requests_rate: f64,
    pub max_local_requests_per_second_per_thing: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            max_outbound_sync_updates_per_second: 100.0,
            max_total_local_requests_rate: 200.0,
            max_local_requests_per_second_per_thing: 20.0,
        }
    }
}

/// One shadow: (thing, shadow name, "" = classic).
pub type ShadowId = (String, String);

#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// The shadows kept in sync (never the deployment shadow).
    pub shadows: BTreeSet<ShadowId>,
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// `None`: `synchronize` is not configured, nothing syncs.
    pub sync: Option<SyncConfig>,
    pub strategy: Strategy,
    pub rate_limits: RateLimits,
    pub size_limit: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            sync: None,
            strategy: Strategy::RealTime,
            rate_limits: RateLimits::default(),
            size_limit: DEFAULT_SIZE_LIMIT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn object<'a>(
    v: Option<&'a Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(err(key, format!("is {other}; expected an object"))),
    }
}

/// Deployments often carry numbers and booleans as strings.
fn number(v: Option<&Value>, key: &str) -> Result<Option<f64>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| err(key, format!("is {s:?}; expected a number"))),
        Some(other) => Err(err(key, format!("is {other}; expected a number"))),
    }
}

fn boolean(v: Option<&Value>, key: &str) -> Result<Option<bool>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(err(key, format!("is {other}; expected true or false"))),
    }
}

fn names(v: Option<&Value>, key: &str) -> Result<Vec<String>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, n)| match n {
                Value::String(s) if crate::rules::valid_shadow_name(s) => Ok(s.clone()),
                other => Err(err(
                    &format!("{key}[{i}]"),
                    format!("is {other}; a shadow name is 1-64 of [a-zA-Z0-9:_-]"),
                )),
            })
            .collect(),
        Some(other) => Err(err(
            key,
            format!("is {other}; expected a list of shadow names"),
        )),
    }
}

/// Adds one thing's entry (`{classic, namedShadows}`) to `out`.
fn thing_entry(
    thing: &str,
    entry: &Map<String, Value>,
    key: &str,
    out: &mut BTreeSet<ShadowId>,
) -> Result<(), ConfigError> {
    if !crate::rules::valid_thing_name(thing) {
        return Err(err(
            key,
            format!("thing name {thing:?} is not 1-128 of [a-zA-Z0-9:_-]"),
        ));
    }
    if boolean(entry.get("classic"), &format!("{key}.classic"))?.unwrap_or(true) {
        out.insert((thing.to_string(), String::new()));
    }
    for n in names(entry.get("namedShadows"), &format!("{key}.namedShadows"))? {
        if n != DEPLOYMENT_SHADOW {
            out.insert((thing.to_string(), n));
        }
    }
    Ok(())
}

impl ShadowConfig {
    /// Reads the component configuration; `core_thing` is the core's thing name (`coreThing`
    /// entries are keyed on it, so a renamed core re-keys them).
    pub fn from_component_config(c: &Value, core_thing: &str) -> Result<ShadowConfig, ConfigError> {
        let mut out = ShadowConfig::default();
        let empty = Map::new();
        let root = object(Some(c), "configuration")?.unwrap_or(&empty);
        if let Some(s) = object(root.get("strategy"), "strategy")? {
            let kind = s.get("type").and_then(Value::as_str).unwrap_or("realTime");
            out.strategy = if kind.eq_ignore_ascii_case("realTime") {
                Strategy::RealTime
            } else if kind.eq_ignore_ascii_case("periodic") {
                let delay = number(s.get("delay"), "strategy.delay")?.ok_or_else(|| {
                    err("strategy.delay", "is required (seconds) with type periodic")
                })?;
                if !(1.0..=86_400.0).contains(&delay) {
                    return Err(err(
                        "strategy.delay",
                        format!("is {delay}; use 1 to 86400 seconds"),
                    ));
                }
                Strategy::Periodic(Duration::from_secs_f64(delay))
            } else {
                return Err(err(
                    "strategy.type",
                    format!("is {kind:?}; use realTime or periodic"),
                ));
            };
        }
        if let Some(r) = object(root.get("rateLimits"), "rateLimits")? {
            let rate = |key: &str, slot: &mut f64| -> Result<(), ConfigError> {
                let path = format!("rateLimits.{key}");
                if let Some(n) = number(r.get(key), &path)? {
                    if n.is_nan() || n <= 0.0 {
                        return Err(err(&path, format!("is {n}; it must be above 0")));
                    }
                    *slot = n;
                }
                Ok(())
            };
            rate(
                "maxOutboundSyncUpdatesPerSecond",
                &mut out.rate_limits.max_outbound_sync_updates_per_second,
            )?;
            rate(
                "maxTotalLocalRequestsRate",
                &mut out.rate_limits.max_total_local_requests_rate,
            )?;
            rate(
                "maxLocalRequestsPerSecondPerThing",
                &mut out.rate_limits.max_local_requests_per_second_per_thing,
            )?;
        }
        if let Some(n) = number(
            root.get("shadowDocumentSizeLimitBytes"),
            "shadowDocumentSizeLimitBytes",
        )? {
            if !(1.0..=MAX_SIZE_LIMIT as f64).contains(&n) {
                return Err(err(
                    "shadowDocumentSizeLimitBytes",
                    format!("is {n}; use 1 to {MAX_SIZE_LIMIT}"),
                ));
            }
            out.size_limit = n as usize;
        }
        if let Some(s) = object(root.get("synchronize"), "synchronize")? {
            let mut shadows = BTreeSet::new();
            if let Some(core) = object(s.get("coreThing"), "synchronize.coreThing")? {
                thing_entry(core_thing, core, "synchronize.coreThing", &mut shadows)?;
            }
            if let Some(map) = object(
                s.get("shadowDocumentsMap"),
                "synchronize.shadowDocumentsMap",
            )? {
                for (thing, entry) in map {
                    let key = format!("synchronize.shadowDocumentsMap.{thing}");
                    let entry = object(Some(entry), &key)?.unwrap_or(&empty);
                    thing_entry(thing, entry, &key, &mut shadows)?;
                }
            }
            match s.get("shadowDocuments") {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) => {
                    for (i, e) in list.iter().enumerate() {
                        let key = format!("synchronize.shadowDocuments[{i}]");
                        let e = object(Some(e), &key)?.unwrap_or(&empty);
                        let thing =
                            e.get("thingName").and_then(Value::as_str).ok_or_else(|| {
                                err(
                                    &format!("{key}.thingName"),
                                    "is required (the thing's name)",
                                )
                            })?;
                        thing_entry(thing, e, &key, &mut shadows)?;
                    }
                }
                Some(other) => {
                    return Err(err(
                        "synchronize.shadowDocuments",
                        format!(
                            "is {other}; expected a list of {{thingName, classic, namedShadows}}"
                        ),
                    ));
                }
            }
            let direction = match s.get("direction").and_then(Value::as_str) {
                None => Direction::BetweenDeviceAndCloud,
                Some(d) if d.eq_ignore_ascii_case("betweenDeviceAndCloud") => {
                    Direction::BetweenDeviceAndCloud
                }
                Some(d) if d.eq_ignore_ascii_case("deviceToCloud") => Direction::DeviceToCloud,
                Some(d) if d.eq_ignore_ascii_case("cloudToDevice") => Direction::CloudToDevice,
                Some(d) => {
                    return Err(err(
                        "synchronize.direction",
                        format!(
                            "is {d:?}; use betweenDeviceAndCloud, deviceToCloud or cloudToDevice"
                        ),
                    ));
                }
            };
            out.sync = Some(SyncConfig { shadows, direction });
        }
        Ok(out)
    }

    /// Whether a local change to this shadow must go to the cloud.
    pub fn syncs_to_cloud(&self, thing: &str, shadow: &str) -> bool {
        self.sync.as_ref().is_some_and(|s| {
            s.direction != Direction::CloudToDevice
                && s.shadows.contains(&(thing.to_string(), shadow.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_full_form() {
        let c = ShadowConfig::from_component_config(&json!({}), "core").unwrap();
        assert_eq!(c, ShadowConfig::default());
        let c = ShadowConfig::from_component_config(
            &json!({
                "strategy": {"type": "periodic", "delay": "5"},
                "synchronize": {
                    "coreThing": {"classic": true, "namedShadows": ["a", DEPLOYMENT_SHADOW]},
                    "shadowDocumentsMap": {"dev1": {"classic": false, "namedShadows": ["x"]}},
                    "shadowDocuments": [{"thingName": "dev2"}],
                    "direction": "deviceToCloud"
                },
                "rateLimits": {"maxOutboundSyncUpdatesPerSecond": 5},
                "shadowDocumentSizeLimitBytes": 30720
            }),
            "core",
        )
        .unwrap();
        assert_eq!(c.strategy, Strategy::Periodic(Duration::from_secs(5)));
        let s = c.sync.as_ref().unwrap();
        let want: BTreeSet<ShadowId> = [("core", ""), ("core", "a"), ("dev1", "x"), ("dev2", "")]
            .iter()
            .map(|(t, n)| (t.to_string(), n.to_string()))
            .collect();
        assert_eq!(s.shadows, want);
        assert_eq!(s.direction, Direction::DeviceToCloud);
        assert_eq!(c.rate_limits.max_outbound_sync_updates_per_second, 5.0);
        assert_eq!(c.size_limit, 30720);
        assert!(c.syncs_to_cloud("core", "a"));
        assert!(!c.syncs_to_cloud("core", DEPLOYMENT_SHADOW));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (c, key) in [
            (
                json!({"shadowDocumentSizeLimitBytes": 40000}),
                "shadowDocumentSizeLimitBytes",
            ),
            (json!({"strategy": {"type": "periodic"}}), "strategy.delay"),
            (
                json!({"synchronize": {"direction": "up"}}),
                "synchronize.direction",
            ),
            (
                json!({"rateLimits": {"maxTotalLocalRequestsRate": 0}}),
                "rateLimits.maxTotalLocalRequestsRate",
            ),
            (
                json!({"synchronize": {"coreThing": {"namedShadows": ["bad name"]}}}),
                "synchronize.coreThing.namedShadows[0]",
            ),
        ] {
            let e = ShadowConfig::from_component_config(&c, "core").unwrap_err();
            assert_eq!(e.key, key, "{c}");
        }
    }
}
