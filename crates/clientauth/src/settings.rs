//! The client-device broker's settings from its component configuration: where it listens and
//! the bounds that keep one client device from exhausting the core.
//!
//! Keys, under the component's `configuration`:
//! - Moquette: `moquette.{ssl_port, host, netty.mqtt.message_size}`.
//! - EMQX: `emqx.{listener.ssl.external (port or host:port), mqtt.max_packet_size,
//!   zone.external.max_subscriptions, zone.external.session_expiry_interval,
//!   retainer.max_retained_messages}`, as EMQX spells them (sizes may be `128KB`, `1MB`;
//!   durations `90s`, `30m`, `2h`; EMQX's `0` means no bound).
//! - Both (a Lichen extension, since neither broker's configuration has all of them):
//!   `brokerLimits.{maxRetainedMessages, maxRetainedBytes, maxSubscriptionsPerClient,
//!   maxSessions, maxSessionExpirySeconds}`; where a bound is set both ways, this one wins.

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

const MOQUETTE: &str = "aws.greengrass.clientdevices.mqtt.Moquette";
const DEFAULT_PORT: u16 = 8883;
/// 128 KiB: AWS IoT Core's own limit and Moquette's default.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 131_072;
pub const DEFAULT_MAX_RETAINED_MESSAGES: usize = 10_000;
pub const DEFAULT_MAX_RETAINED_BYTES: usize = 16 * 1024 * 1024;
/// AWS IoT Core's limit on subscriptions per connection is 50; twice that leaves room for the
/// bridge and other components.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT: usize = 100;
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// AWS IoT Core's default persistent session expiry (one hour).
pub const DEFAULT_MAX_SESSION_EXPIRY_SECS: u32 = 3600;

/// Where and how the broker listens, and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    pub addr: SocketAddr,
    pub max_packet_size: u32,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub max_subscriptions_per_client: usize,
    pub max_sessions: usize,
    /// How long a session outlives its connection: MQTT 3.1.1 persistent sessions expire after
    /// it, MQTT 5 clients asking for longer get it.
    pub max_session_expiry_secs: u32,
}

/// Looks up `key` under `section` as a literal dotted key (`"listener.ssl.external"`, as the
/// Greengrass components spell them) or as a nested path.
fn lookup<'a>(cfg: &'a Value, section: &str, key: &str) -> Option<&'a Value> {
    let s = cfg.get(section)?;
    if let Some(v) = s.get(key) {
        return Some(v);
    }
    key.split('.').try_fold(s, |v, k| v.get(k))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        // Configuration merged from JSON documents may carry whole numbers as `2.0`.
        Value::Number(n) => Some(match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => (f as u64).to_string(),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

/// A byte size: a number, or with EMQX's `KB`/`MB`/`GB` (powers of 1024).
fn bytes(t: &str) -> Option<u64> {
    let upper = t.to_ascii_uppercase();
    let (digits, unit) = match upper.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => upper.split_at(at),
        None => (upper.as_str(), ""),
    };
    let n: u64 = digits.parse().ok()?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KB" | "K" => 1024,
        "MB" | "M" => 1024 * 1024,
        "GB" | "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// A duration in seconds: a number, or with EMQX's `s`/`m`/`h`/`d`.
fn seconds(t: &str) -> Option<u64> {
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => t.split_at(at),
        None => (t, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let unit = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Reads one bound; `parse` turns its text into a number; `zero_unbounded` follows EMQX, where
/// 0 means no bound (otherwise 0 is refused).
fn bound(
    v: Option<&Value>,
    key: &str,
    what: &str,
    parse: fn(&str) -> Option<u64>,
    zero_unbounded: bool,
) -> Result<Option<u64>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let n = text(v)
        .and_then(|t| parse(&t))
        .ok_or_else(|| format!("{key} must be {what}"))?;
    match n {
        0 if zero_unbounded => Ok(Some(u64::MAX)),
        0 => Err(format!("{key} must be at least 1")),
        n => Ok(Some(n)),
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl BrokerSettings {
    /// Reads the keys listed in the module documentation; a value that makes no sense is an
    /// error naming its key.
    pub fn from_component_config(component: &str, cfg: &Value) -> Result<BrokerSettings, String> {
        let emqx = component != MOQUETTE;
        let (section, port_key, size_key) = if emqx {
            ("emqx", "listener.ssl.external", "mqtt.max_packet_size")
        } else {
            ("moquette", "ssl_port", "netty.mqtt.message_size")
        };
        let host_text = lookup(cfg, section, "host")
            .and_then(text)
            .unwrap_or_else(|| "0.0.0.0".into());
        let mut ip: IpAddr = host_text
            .parse()
            .map_err(|_| format!("{section}.host {host_text:?} is not an IP address"))?;
        let mut port = DEFAULT_PORT;
        if let Some(v) = lookup(cfg, section, port_key) {
            let t = text(v).ok_or_else(|| format!("{section}.{port_key} must be a port"))?;
            if let Ok(addr) = t.parse::<SocketAddr>() {
                ip = addr.ip();
                port = addr.port();
            } else {
                port = t.parse().map_err(|_| {
                    format!("{section}.{port_key} {t:?} is not a port or host:port")
                })?;
            }
        }
        let size = bound(
            lookup(cfg, section, size_key),
            &format!("{section}.{size_key}"),
            "a positive number of bytes (or with KB / MB)",
            bytes,
            false,
        )?;
        let max_packet_size = match size {
            None => DEFAULT_MAX_PACKET_SIZE,
            Some(n) => u32::try_from(n)
                .map_err(|_| format!("{section}.{size_key} must be at most 4294967295 bytes"))?,
        };
        let count = "a positive number";
        let ours = |key: &str| cfg.get("brokerLimits").and_then(|l| l.get(key));
        let native = |key: &str| if emqx { lookup(cfg, "emqx", key) } else { None };
        let pick = |ours: Option<u64>, native: Option<u64>, default: u64| {
            ours.or(native).unwrap_or(default)
        };
        let retained_messages = pick(
            bound(
                ours("maxRetainedMessages"),
                "brokerLimits.maxRetainedMessages",
                count,
                number,
                false,
            )?,
            bound(
                native("retainer.max_retained_messages"),
                "emqx.retainer.max_retained_messages",
                count,
                number,
                true,
            )?,
            DEFAULT_MAX_RETAINED_MESSAGES as u64,
        );
        let retained_bytes = pick(
            bound(
                ours("maxRetainedBytes"),
                "brokerLimits.maxRetainedBytes",
                "a positive number of bytes (or with KB / MB)",
                bytes,
                false,
            )?,
            None,
            DEFAULT_MAX_RETAINED_BYTES as u64,
        );
        let subscriptions = pick(
            bound(
                ours("maxSubscriptionsPerClient"),
                "brokerLimits.maxSubscriptionsPerClient",
                count,
                number,
                false,
            )?,
            bound(
                native("zone.external.max_subscriptions"),
                "emqx.zone.external.max_subscriptions",
                count,
                number,
                true,
            )?,
            DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT as u64,
        );
        let sessions = pick(
            bound(
                ours("maxSessions"),
                "brokerLimits.maxSessions",
                count,
                number,
                false,
            )?,
            None,
            DEFAULT_MAX_SESSIONS as u64,
        );
        let expiry = pick(
            bound(
                ours("maxSessionExpirySeconds"),
                "brokerLimits.maxSessionExpirySeconds",
                "a positive number of seconds (or with s / m / h / d)",
                seconds,
                false,
            )?,
            bound(
                native("zone.external.session_expiry_interval"),
                "emqx.zone.external.session_expiry_interval",
                "a duration such as 2h, 30m or 3600s",
                seconds,
                false,
            )?,
            u64::from(DEFAULT_MAX_SESSION_EXPIRY_SECS),
        );
        Ok(BrokerSettings {
            addr: SocketAddr::new(ip, port),
            max_packet_size,
            max_retained_messages: to_usize(retained_messages),
            max_retained_bytes: to_usize(retained_bytes),
            max_subscriptions_per_client: to_usize(subscriptions),
            max_sessions: to_usize(sessions),
            max_session_expiry_secs: u32::try_from(expiry).unwrap_or(u32::MAX),
        })
    }
}

/// A plain count.
fn number(t: &str) -> Option<u64> {
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EMQX: &str = "aws.greengrass.clientdevices.mqtt.EMQX";

    #[test]
    fn the_defaults_are_bounded() {
        for component in [EMQX, MOQUETTE] {
            let d = BrokerSettings::from_component_config(component, &json!({})).unwrap();
            assert_eq!(d.max_packet_size, 131_072);
            assert_eq!(d.max_retained_messages, DEFAULT_MAX_RETAINED_MESSAGES);
            assert_eq!(d.max_retained_bytes, DEFAULT_MAX_RETAINED_BYTES);
            assert_eq!(d.max_subscriptions_per_client, 100);
            assert_eq!(d.max_sessions, DEFAULT_MAX_SESSIONS);
            assert_eq!(d.max_session_expiry_secs, 3600);
        }
    }

    #[test]
    fn emqx_keys_set_the_bounds_as_emqx_reads_them() {
        let e = BrokerSettings::from_component_config(
            EMQX,
            &json!({"emqx": {
                "mqtt.max_packet_size": "1MB",
                "zone.external.max_subscriptions": "7",
                "zone.external.session_expiry_interval": "2h",
                "retainer.max_retained_messages": 0
            }}),
        )
        .unwrap();
        assert_eq!(e.max_packet_size, 1024 * 1024);
        assert_eq!(e.max_subscriptions_per_client, 7);
        assert_eq!(e.max_session_expiry_secs, 7200);
        assert_eq!(e.max_retained_messages, usize::MAX, "EMQX's 0 is no bound");
        // Moquette reads only its own keys.
        let m = BrokerSettings::from_component_config(
            MOQUETTE,
            &json!({"emqx": {"zone.external.max_subscriptions": "7"}, "moquette": {"netty.mqtt.message_size": 4096}}),
        )
        .unwrap();
        assert_eq!(m.max_subscriptions_per_client, 100);
        assert_eq!(m.max_packet_size, 4096);
    }

    #[test]
    fn broker_limits_set_the_bounds_for_both_and_win() {
        for component in [EMQX, MOQUETTE] {
            let s = BrokerSettings::from_component_config(
                component,
                &json!({
                    "emqx": {"zone.external.max_subscriptions": "7"},
                    "brokerLimits": {
                        "maxRetainedMessages": 2.0, "maxRetainedBytes": "1KB",
                        "maxSubscriptionsPerClient": "3", "maxSessions": 4,
                        "maxSessionExpirySeconds": "90s"
                    }
                }),
            )
            .unwrap();
            assert_eq!(s.max_retained_messages, 2);
            assert_eq!(s.max_retained_bytes, 1024);
            assert_eq!(s.max_subscriptions_per_client, 3);
            assert_eq!(s.max_sessions, 4);
            assert_eq!(s.max_session_expiry_secs, 90);
        }
    }

    #[test]
    fn nonsense_bounds_name_their_key() {
        for (cfg, key) in [
            (
                json!({"brokerLimits": {"maxSessions": 0}}),
                "brokerLimits.maxSessions",
            ),
            (
                json!({"brokerLimits": {"maxRetainedBytes": "lots"}}),
                "brokerLimits.maxRetainedBytes",
            ),
            (
                json!({"emqx": {"zone.external.session_expiry_interval": "2 weeks"}}),
                "emqx.zone.external.session_expiry_interval",
            ),
            (
                json!({"emqx": {"mqtt.max_packet_size": "8GB"}}),
                "emqx.mqtt.max_packet_size",
            ),
            (
                json!({"emqx": {"mqtt.max_packet_size": 0}}),
                "emqx.mqtt.max_packet_size",
            ),
        ] {
            let e = BrokerSettings::from_component_config(EMQX, &cfg).unwrap_err();
            assert!(e.contains(key), "{cfg}: {e}");
        }
    }
}
