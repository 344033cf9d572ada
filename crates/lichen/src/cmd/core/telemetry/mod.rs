//! `aws.greengrass.telemetry.NucleusEmitter` as a built-in service: every
//! `telemetryPublishIntervalMs` it samples the system (CPU, memory, open file descriptors, root
//! disk, network per interface) and the components (count per state; each one's state and
//! restarts; memory and CPU time from its cgroup where it has one) and
//! - publishes Greengrass's emitter array (`[{"A","N","NS","TS","U","V"}]`) on the local topic
//!   `pubSubTopic` (`$local/greengrass/telemetry`) when `pubSubPublish`;
//! - sends a compact object to the cloud on `mqttTopic` when one is set (QoS 1, spooled):
//!   `{"ts", "cpu", "mem", "memTotal", "fds", "disk", "diskTotal", "net": {iface: [bytesIn,
//!   bytesOut, packetsIn, packetsOut]}, "states": {STATE: n}, "components": {name: [STATE,
//!   restarts]}, "usage": {name: [memoryBytes, cpuMicroseconds]}}` — about 300 bytes for a
//!   small core;
//! - serves the same figures as Prometheus text on `127.0.0.1:<lichen.prometheusPort>/metrics`
//!   when that (Lichen) setting is given.
//!
//! Nothing runs unless the component is deployed.

mod prometheus;
mod system;

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_bus::{Message, Payload};
use lichen_supervisor::State;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const NAME: &str = "aws.greengrass.telemetry.NucleusEmitter";
const DEFAULT_TOPIC: &str = "$local/greengrass/telemetry";

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    vec![Arc::new(Emitter {
        ctx: ctx.clone(),
        tasks: Mutex::new(vec![]),
    })]
}

struct Emitter {
    ctx: ServiceContext,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug, Clone)]
struct Settings {
    pubsub_topic: Option<String>,
    mqtt_topic: Option<String>,
    interval: Duration,
    prometheus_port: Option<u16>,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn settings(conf: &Value, thing: &str) -> Result<Settings, String> {
    let publish = text(conf.get("pubSubPublish")).is_none_or(|s| !s.eq_ignore_ascii_case("false"));
    let topic = text(conf.get("pubSubTopic"))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TOPIC.into());
    let mqtt = text(conf.get("mqttTopic"))
        .filter(|t| !t.is_empty())
        .map(|t| t.replace("{iot:thingName}", thing));
    let interval = match text(conf.get("telemetryPublishIntervalMs")) {
        None => 60_000,
        Some(s) => match s.parse::<f64>() {
            Ok(n) if n >= 500.0 => n as u64,
            _ => {
                return Err(format!(
                    "telemetryPublishIntervalMs {s:?}: use at least 500"
                ));
            }
        },
    };
    let port = match conf
        .get("lichen")
        .and_then(|l| text(l.get("prometheusPort")))
    {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => None,
            Ok(p) => Some(p),
            Err(_) => return Err(format!("lichen.prometheusPort {p:?} is not a port number")),
        },
    };
    Ok(Settings {
        pubsub_topic: publish.then_some(topic),
        mqtt_topic: mqtt,
        interval: Duration::from_millis(interval),
        prometheus_port: port,
    })
}

impl BuiltinService for Emitter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> &'static str {
        "1.0.9"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for t in self
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                t.abort();
            }
            let Some(conf) = configuration else {
                return;
            };
            let thing =
                text(self.ctx.config.get(&["system", "thingName"]).as_ref()).unwrap_or_default();
            let s = match settings(&conf, &thing) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(service = NAME, "configuration refused: {e}");
                    return;
                }
            };
            let text = Arc::new(Mutex::new(String::new()));
            let mut tasks = vec![];
            if let Some(port) = s.prometheus_port {
                match prometheus::serve(([127, 0, 0, 1], port).into(), text.clone()).await {
                    Ok(t) => tasks.push(t),
                    Err(e) => tracing::error!(
                        service = NAME,
                        "cannot serve /metrics on 127.0.0.1:{port}: {e}"
                    ),
                }
            }
            tasks.push(tokio::spawn(run(self.ctx.clone(), s, text)));
            *self.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        })
    }
}

async fn run(ctx: ServiceContext, s: Settings, text: Arc<Mutex<String>>) {
    let mut sampler = system::Sampler::default();
    sampler.sample();
    let mut changes = ctx.supervisor.subscribe();
    let mut starts: BTreeMap<String, u64> = BTreeMap::new();
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            change = changes.recv() => {
                if let Ok(c) = change && c.new == State::Starting {
                    *starts.entry(c.name).or_default() += 1;
                }
                continue;
            }
        }
        let sample = sampler.sample();
        let components = ctx.supervisor.list();
        let ts = now_ms();
        let mut per_state: BTreeMap<&'static str, u64> =
            State::ALL.iter().map(|st| (st.as_str(), 0)).collect();
        for c in &components {
            *per_state.entry(c.state.as_str()).or_default() += 1;
        }
        let restarts = |name: &str| starts.get(name).copied().unwrap_or(0).saturating_sub(1);
        // Memory and CPU of each component that runs in a cgroup of its own.
        let usage: BTreeMap<String, lichen_supervisor::ResourceUsage> = components
            .iter()
            .filter_map(|c| Some((c.name.clone(), ctx.supervisor.resource_usage(&c.name)?)))
            .collect();
        if let Some(topic) = &s.pubsub_topic {
            let payload = emitter_array(&sample, &per_state, ts);
            let _ = ctx.bus.publish(
                topic,
                Message {
                    payload: Payload::Json(payload),
                    publisher: NAME.into(),
                },
            );
        }
        if let Some(topic) = &s.mqtt_topic {
            let compact = json!({
                "ts": ts,
                "cpu": (sample.cpu_percent * 10.0).round() / 10.0,
                "mem": sample.mem_used_mb.round(),
                "memTotal": sample.mem_total_mb.round(),
                "fds": sample.open_fds,
                "disk": sample.disk_used_bytes,
                "diskTotal": sample.disk_total_bytes,
                "net": sample.interfaces.iter().map(|(k, i)| (k.clone(), json!([i.bytes_in, i.bytes_out, i.packets_in, i.packets_out]))).collect::<serde_json::Map<_, _>>(),
                "states": per_state.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "components": components.iter().map(|c| (c.name.clone(), json!([c.state.as_str(), restarts(&c.name)]))).collect::<serde_json::Map<_, _>>(),
                // [memory bytes, CPU microseconds] per component with a cgroup.
                "usage": usage.iter().map(|(k, u)| (k.clone(), json!([u.memory_bytes, u.cpu_usage_usec]))).collect::<serde_json::Map<_, _>>(),
            });
            let _ = ctx.iot_core.publish(
                topic,
                Message {
                    payload: Payload::Binary(compact.to_string().into()),
                    publisher: NAME.into(),
                },
            );
        }
        if s.prometheus_port.is_some() {
            let body = exposition(&sample, &per_state, &components, &restarts, &usage);
            *text.lock().unwrap_or_else(|e| e.into_inner()) = body;
        }
    }
}

fn emitter_array(s: &system::Sample, per_state: &BTreeMap<&'static str, u64>, ts: i64) -> Value {
    let m = |a: &str, n: &str, ns: &str, u: &str, v: f64| json!({"A": a, "N": n, "NS": ns, "TS": ts, "U": u, "V": v});
    let mut out = vec![
        m(
            "Average",
            "CpuUsage",
            "SystemMetrics",
            "Percent",
            s.cpu_percent,
        ),
        m(
            "Count",
            "SystemMemUsage",
            "SystemMetrics",
            "Megabytes",
            s.mem_used_mb.round(),
        ),
        m(
            "Count",
            "TotalNumberOfFDs",
            "SystemMetrics",
            "Count",
            s.open_fds as f64,
        ),
    ];
    for (state, n) in per_state {
        out.push(m(
            "Count",
            &format!("NumberOfComponents{}", title(state)),
            "GreengrassComponents",
            "Count",
            *n as f64,
        ));
    }
    Value::Array(out)
}

/// `RUNNING` → `Running`, as the emitter names its counts.
fn title(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut c = lower.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn exposition(
    s: &system::Sample,
    per_state: &BTreeMap<&'static str, u64>,
    components: &[lichen_supervisor::ComponentStatus],
    restarts: &dyn Fn(&str) -> u64,
    usage: &BTreeMap<String, lichen_supervisor::ResourceUsage>,
) -> String {
    use prometheus::{family, label};
    let mut out = String::new();
    family(
        &mut out,
        "lichen_cpu_usage_percent",
        "gauge",
        "System CPU use over the last interval.",
        &[(String::new(), s.cpu_percent)],
    );
    family(
        &mut out,
        "lichen_memory_used_bytes",
        "gauge",
        "System memory in use (total less available).",
        &[(String::new(), s.mem_used_mb * 1_048_576.0)],
    );
    family(
        &mut out,
        "lichen_memory_total_bytes",
        "gauge",
        "System memory.",
        &[(String::new(), s.mem_total_mb * 1_048_576.0)],
    );
    family(
        &mut out,
        "lichen_open_fds",
        "gauge",
        "Open file descriptors, system-wide.",
        &[(String::new(), s.open_fds as f64)],
    );
    family(
        &mut out,
        "lichen_disk_used_bytes",
        "gauge",
        "Used bytes of the root filesystem.",
        &[(String::new(), s.disk_used_bytes as f64)],
    );
    family(
        &mut out,
        "lichen_disk_total_bytes",
        "gauge",
        "Size of the root filesystem.",
        &[(String::new(), s.disk_total_bytes as f64)],
    );
    for (name, help, f) in [
        (
            "lichen_network_receive_bytes_total",
            "Bytes received per interface.",
            (|i: &system::Interface| i.bytes_in) as fn(&system::Interface) -> u64,
        ),
        (
            "lichen_network_transmit_bytes_total",
            "Bytes sent per interface.",
            |i| i.bytes_out,
        ),
        (
            "lichen_network_receive_packets_total",
            "Packets received per interface.",
            |i| i.packets_in,
        ),
        (
            "lichen_network_transmit_packets_total",
            "Packets sent per interface.",
            |i| i.packets_out,
        ),
    ] {
        let samples: Vec<(String, f64)> = s
            .interfaces
            .iter()
            .map(|(k, i)| (format!("interface=\"{}\"", label(k)), f(i) as f64))
            .collect();
        family(&mut out, name, "counter", help, &samples);
    }
    let states: Vec<(String, f64)> = per_state
        .iter()
        .map(|(k, n)| (format!("state=\"{k}\""), *n as f64))
        .collect();
    family(
        &mut out,
        "lichen_components",
        "gauge",
        "Components per lifecycle state.",
        &states,
    );
    let each: Vec<(String, f64)> = components
        .iter()
        .map(|c| {
            (
                format!(
                    "component=\"{}\",state=\"{}\"",
                    label(&c.name),
                    c.state.as_str()
                ),
                1.0,
            )
        })
        .collect();
    family(
        &mut out,
        "lichen_component_state",
        "gauge",
        "Each component's lifecycle state (1 for the current one).",
        &each,
    );
    let r: Vec<(String, f64)> = components
        .iter()
        .map(|c| {
            (
                format!("component=\"{}\"", label(&c.name)),
                restarts(&c.name) as f64,
            )
        })
        .collect();
    family(
        &mut out,
        "lichen_component_restarts_total",
        "counter",
        "Times each component started again since the emitter started.",
        &r,
    );
    let per = |f: &dyn Fn(&lichen_supervisor::ResourceUsage) -> f64| -> Vec<(String, f64)> {
        usage
            .iter()
            .map(|(name, u)| (format!("component=\"{}\"", label(name)), f(u)))
            .collect()
    };
    family(
        &mut out,
        "lichen_component_memory_bytes",
        "gauge",
        "Memory each component's processes use, from its cgroup.",
        &per(&|u| u.memory_bytes as f64),
    );
    family(
        &mut out,
        "lichen_component_cpu_seconds_total",
        "counter",
        "CPU time each component's processes used, from its cgroup.",
        &per(&|u| u.cpu_usage_usec as f64 / 1e6),
    );
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
