//! `aws.greengrass.DeviceDefender` (3.x) as a built-in service: every `SampleIntervalSeconds`
//! it publishes AWS IoT Device Defender's metrics document (long names) to
//! `$aws/things/<thing>/defender/metrics/json` through the cloud link: listening TCP and UDP
//! ports, established TCP connections, bytes and packets in/out (all interfaces but loopback,
//! since boot), and as `custom_metrics` the authorization failures of the client-device broker
//! (`local_broker_authorization_failures`) and of IPC (`ipc_authorization_failures`).
//! Greengrass's minimum interval is 300 s; Lichen accepts down to 1 s (for tests).

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_bus::{Message, Payload};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const NAME: &str = "aws.greengrass.DeviceDefender";

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    vec![Arc::new(Defender {
        ctx: ctx.clone(),
        task: Mutex::new(None),
    })]
}

struct Defender {
    ctx: ServiceContext,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl BuiltinService for Defender {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> &'static str {
        "3.1.1"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
            let Some(conf) = configuration else {
                return;
            };
            let secs = match conf.get("SampleIntervalSeconds") {
                None => 300.0,
                Some(v) => match v.as_f64().or_else(|| v.as_str()?.trim().parse().ok()) {
                    Some(n) if n >= 1.0 => n,
                    _ => {
                        tracing::error!(
                            service = NAME,
                            "SampleIntervalSeconds {v}: use a number of seconds (300 or more, as Greengrass)"
                        );
                        return;
                    }
                },
            };
            let Some(Value::String(thing)) = self.ctx.config.get(&["system", "thingName"]) else {
                tracing::error!(
                    service = NAME,
                    "system.thingName is not set: the metrics topic names the thing"
                );
                return;
            };
            let topic = format!("$aws/things/{thing}/defender/metrics/json");
            let bus = self.ctx.iot_core.clone();
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(secs));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_id = 0i64;
                loop {
                    tick.tick().await;
                    // report_id: epoch seconds, kept increasing.
                    let id = (now_ms() / 1000).max(last_id + 1);
                    last_id = id;
                    let doc = document(id);
                    let _ = bus.publish(
                        &topic,
                        Message {
                            payload: Payload::Binary(doc.to_string().into()),
                            publisher: NAME.into(),
                        },
                    );
                }
            });
            *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        })
    }
}

/// A socket from /proc/net/{tcp,tcp6,udp,udp6}: (local ip, local port, remote ip, remote port,
/// state).
fn sockets(file: &str) -> Vec<(String, u16, String, u16, u8)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/net/{file}")) else {
        return vec![];
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (lip, lport) = addr(f.get(1)?)?;
            let (rip, rport) = addr(f.get(2)?)?;
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            Some((lip, lport, rip, rport, state))
        })
        .collect()
}

/// `0100007F:1F90` (little-endian 32-bit words) → ("127.0.0.1", 8080).
fn addr(s: &str) -> Option<(String, u16)> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let bytes: Vec<u8> = (0..ip.len() / 2)
        .map(|i| u8::from_str_radix(&ip[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match bytes.len() {
        4 => std::net::Ipv4Addr::from(u32::from_le_bytes(bytes.try_into().ok()?)).to_string(),
        16 => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_le_bytes(bytes[4 * w..4 * w + 4].try_into().ok()?);
                b[4 * w..4 * w + 4].copy_from_slice(&word.to_be_bytes());
            }
            std::net::Ipv6Addr::from(b).to_string()
        }
        _ => return None,
    };
    Some((ip, port))
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0A;
const UDP_UNCONNECTED: u8 = 0x07;

fn ports(list: &[(String, u16, String, u16, u8)], state: u8) -> Value {
    let mut seen = std::collections::BTreeSet::new();
    let ports: Vec<Value> = list
        .iter()
        .filter(|s| s.4 == state && seen.insert((s.0.clone(), s.1)))
        .map(|s| json!({"interface": s.0, "port": s.1}))
        .collect();
    json!({"ports": ports, "total": ports.len()})
}

fn document(report_id: i64) -> Value {
    let tcp: Vec<_> = [sockets("tcp"), sockets("tcp6")].concat();
    let udp: Vec<_> = [sockets("udp"), sockets("udp6")].concat();
    let established: Vec<Value> = tcp
        .iter()
        .filter(|s| s.4 == TCP_ESTABLISHED)
        .map(|s| {
            let remote = if s.2.contains(':') {
                format!("[{}]:{}", s.2, s.3)
            } else {
                format!("{}:{}", s.2, s.3)
            };
            json!({"local_interface": s.0, "local_port": s.1, "remote_addr": remote})
        })
        .collect();
    let (mut bi, mut bo, mut pi, mut po) = (0u64, 0u64, 0u64, 0u64);
    if let Ok(dev) = std::fs::read_to_string("/proc/net/dev") {
        for line in dev.lines().skip(2) {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            if name.trim() == "lo" {
                continue;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() >= 10 {
                bi += v[0];
                pi += v[1];
                bo += v[8];
                po += v[9];
            }
        }
    }
    json!({
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": ports(&tcp, TCP_LISTEN),
            "listening_udp_ports": ports(&udp, UDP_UNCONNECTED),
            "network_stats": {"bytes_in": bi, "bytes_out": bo, "packets_in": pi, "packets_out": po},
            "tcp_connections": {"established_connections": {
                "connections": established.clone(), "total": established.len()}},
        },
        "custom_metrics": {
            "local_broker_authorization_failures": [{"number": lichen_clientauth::authorization_failures()}],
            "ipc_authorization_failures": [{"number": lichen_ipc::authorization_failures()}],
        },
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_addresses_decode() {
        assert_eq!(
            super::addr("0100007F:1F90"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(
            super::addr("00000000000000000000000001000000:0016"),
            Some(("::1".into(), 22))
        );
    }
}
