//! Fleet telemetry: cores' compact telemetry (`$aws/things/<thing>/lichen/telemetry`, sent by
//! the core's `aws.greengrass.telemetry.NucleusEmitter` with that `mqttTopic`) kept in memory
//! (the latest per thing), and Prometheus text at `GET /metrics` on the opt-in `--metrics`
//! listener: each device's latest figures, and fleet counters (connected devices, core devices
//! by status, telemetry messages).

// The core's Prometheus text writer (this module is also the root of `lichen-fleet`, which has
// no core module to reach it through).
#[path = "../core/telemetry/prometheus.rs"]
mod prometheus;

use lichen_fleet_mqtt::DeviceEndpoint;
use lichen_fleet_registry::{PageRequest, Registry};
use prometheus::{family, label, serve};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Also told each accepted telemetry message (thing, when taken, payload): the console's history.
pub type SampleSink = Arc<dyn Fn(&str, i64, &Value) + Send + Sync>;

pub const TOPIC_FILTER: &str = "$aws/things/+/lichen/telemetry";

#[derive(Default)]
struct Latest {
    by_thing: Mutex<BTreeMap<String, (i64, Value)>>,
    messages: AtomicU64,
    rejected: AtomicU64,
}

/// Takes telemetry from devices (always: a device's publish to a topic no one serves would be
/// refused, and it would send it again) and serves `/metrics` on `listen` when given.
pub async fn start(
    devices: &DeviceEndpoint,
    registry: Arc<Registry>,
    listen: Option<SocketAddr>,
    on_sample: Option<SampleSink>,
) -> anyhow::Result<()> {
    let latest = Arc::new(Latest::default());
    let mut topics = devices.serve_topics(TOPIC_FILTER)?;
    let l = latest.clone();
    tokio::spawn(async move {
        while let Some(p) = topics.recv().await {
            // The topic's thing must be the one that connected: a device reports for itself.
            let thing = p.topic.split('/').nth(2).unwrap_or_default().to_string();
            match serde_json::from_slice::<Value>(&p.payload) {
                Ok(v @ Value::Object(_)) if p.thing_name.as_deref() == Some(thing.as_str()) => {
                    l.messages.fetch_add(1, Ordering::Relaxed);
                    if let Some(f) = &on_sample {
                        f(&thing, now_ms(), &v);
                    }
                    l.by_thing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(thing, (now_ms(), v));
                }
                _ => {
                    l.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        client_id = p.client_id,
                        topic = p.topic,
                        "telemetry dropped: not a JSON object from the thing the topic names"
                    );
                }
            }
        }
    });
    let Some(listen) = listen else {
        return Ok(());
    };
    let text = Arc::new(Mutex::new(String::new()));
    serve(listen, text.clone()).await?;
    let devices = devices.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let r = registry.clone();
            let statuses = tokio::task::spawn_blocking(move || count_statuses(&r))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let body = exposition(&latest, devices.connected_clients().len(), &statuses);
            *text.lock().unwrap_or_else(|e| e.into_inner()) = body;
        }
    });
    Ok(())
}

fn count_statuses(r: &Registry) -> lichen_fleet_registry::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for status in ["HEALTHY", "UNHEALTHY"] {
        let mut page = PageRequest {
            token: None,
            size: Some(100),
        };
        let mut n = 0;
        loop {
            let p = r.list_core_devices(None, Some(status), None, &page)?;
            n += p.items.len() as u64;
            match p.next_token {
                Some(t) => page.token = Some(t),
                None => break,
            }
        }
        out.insert(status.to_string(), n);
    }
    Ok(out)
}

fn exposition(latest: &Latest, connected: usize, statuses: &BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "lichen_fleet_connected_devices",
        "gauge",
        "Devices connected to the MQTT endpoint now.",
        &[(String::new(), connected as f64)],
    );
    let s: Vec<(String, f64)> = statuses
        .iter()
        .map(|(k, n)| (format!("status=\"{k}\""), *n as f64))
        .collect();
    family(
        &mut out,
        "lichen_fleet_core_devices",
        "gauge",
        "Core devices by status (connection and freshness included).",
        &s,
    );
    family(
        &mut out,
        "lichen_fleet_telemetry_messages_total",
        "counter",
        "Telemetry messages taken.",
        &[(
            String::new(),
            latest.messages.load(Ordering::Relaxed) as f64,
        )],
    );
    family(
        &mut out,
        "lichen_fleet_telemetry_rejected_total",
        "counter",
        "Telemetry messages dropped (malformed, or for another thing).",
        &[(
            String::new(),
            latest.rejected.load(Ordering::Relaxed) as f64,
        )],
    );
    let by = latest
        .by_thing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let per = |key: &str, scale: f64| -> Vec<(String, f64)> {
        by.iter()
            .filter_map(|(t, (_, v))| {
                Some((
                    format!("thing=\"{}\"", label(t)),
                    v.get(key)?.as_f64()? * scale,
                ))
            })
            .collect()
    };
    family(
        &mut out,
        "lichen_device_cpu_usage_percent",
        "gauge",
        "Each device's latest CPU use.",
        &per("cpu", 1.0),
    );
    family(
        &mut out,
        "lichen_device_memory_used_bytes",
        "gauge",
        "Each device's latest memory in use.",
        &per("mem", 1_048_576.0),
    );
    family(
        &mut out,
        "lichen_device_open_fds",
        "gauge",
        "Each device's latest open file descriptors.",
        &per("fds", 1.0),
    );
    family(
        &mut out,
        "lichen_device_disk_used_bytes",
        "gauge",
        "Each device's latest root filesystem use.",
        &per("disk", 1.0),
    );
    let age: Vec<(String, f64)> = by
        .iter()
        .map(|(t, (at, _))| {
            (
                format!("thing=\"{}\"", label(t)),
                (now_ms() - at) as f64 / 1000.0,
            )
        })
        .collect();
    family(
        &mut out,
        "lichen_device_telemetry_age_seconds",
        "gauge",
        "Seconds since each device's latest telemetry.",
        &age,
    );
    let mut net: [Vec<(String, f64)>; 2] = [vec![], vec![]];
    let mut comps = vec![];
    for (t, (_, v)) in &by {
        if let Some(Value::Object(m)) = v.get("net") {
            for (iface, x) in m {
                for (i, slot) in net.iter_mut().enumerate() {
                    if let Some(n) = x.get(i).and_then(Value::as_f64) {
                        slot.push((
                            format!("thing=\"{}\",interface=\"{}\"", label(t), label(iface)),
                            n,
                        ));
                    }
                }
            }
        }
        if let Some(Value::Object(m)) = v.get("states") {
            for (state, n) in m {
                if let Some(n) = n.as_f64() {
                    comps.push((
                        format!("thing=\"{}\",state=\"{}\"", label(t), label(state)),
                        n,
                    ));
                }
            }
        }
    }
    let [rx, tx] = net;
    family(
        &mut out,
        "lichen_device_network_receive_bytes_total",
        "counter",
        "Each device's bytes received per interface.",
        &rx,
    );
    family(
        &mut out,
        "lichen_device_network_transmit_bytes_total",
        "counter",
        "Each device's bytes sent per interface.",
        &tx,
    );
    family(
        &mut out,
        "lichen_device_components",
        "gauge",
        "Each device's components per lifecycle state.",
        &comps,
    );
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
