//! Recent history for the console's charts, kept in memory: each device's CPU and memory from
//! the telemetry it sends (`$aws/things/<thing>/lichen/telemetry`, which the fleet otherwise
//! keeps only as the latest value), and the fleet's core devices by health, sampled every few
//! seconds. Bounded rings: a restart of the fleet starts the history again.

use lichen_fleet_registry::{PageRequest, Registry};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Samples kept per device (at the core's 60 s default cadence, six hours).
pub const DEVICE_SAMPLES: usize = 360;
/// Fleet health samples kept (at [`HEALTH_EVERY`], two hours).
pub const HEALTH_SAMPLES: usize = 1440;
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// Devices whose history is kept at most (the least recently reporting ones go first).
const MAX_DEVICES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceSample {
    pub at_ms: i64,
    /// CPU use, percent.
    pub cpu: Option<f64>,
    /// Memory in use, MiB.
    pub mem_mib: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSample {
    pub at_ms: i64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub connected: u64,
}

#[derive(Default)]
pub struct Telemetry {
    devices: Mutex<HashMap<String, VecDeque<DeviceSample>>>,
    health: Mutex<VecDeque<HealthSample>>,
}

impl Telemetry {
    /// Takes one telemetry message (`{"cpu": …, "mem": <MiB>, …}`) of `thing`.
    pub fn record(&self, thing: &str, at_ms: i64, v: &Value) {
        let s = DeviceSample {
            at_ms,
            cpu: v.get("cpu").and_then(Value::as_f64),
            mem_mib: v.get("mem").and_then(Value::as_f64),
        };
        if s.cpu.is_none() && s.mem_mib.is_none() {
            return;
        }
        let mut d = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if !d.contains_key(thing) && d.len() >= MAX_DEVICES {
            let oldest = d
                .iter()
                .min_by_key(|(_, q)| q.back().map(|s| s.at_ms).unwrap_or(0))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                d.remove(&k);
            }
        }
        let q = d.entry(thing.to_string()).or_default();
        if q.len() == DEVICE_SAMPLES {
            q.pop_front();
        }
        q.push_back(s);
    }

    pub fn device(&self, thing: &str) -> Vec<DeviceSample> {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(thing)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn record_health(&self, s: HealthSample) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == HEALTH_SAMPLES {
            h.pop_front();
        }
        h.push_back(s);
    }

    pub fn health(&self) -> Vec<HealthSample> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// Counts the core devices by health now.
pub fn count_health(r: &Registry, at_ms: i64) -> lichen_fleet_registry::Result<HealthSample> {
    let mut s = HealthSample {
        at_ms,
        healthy: 0,
        unhealthy: 0,
        connected: 0,
    };
    let mut page = PageRequest {
        token: None,
        size: Some(100),
    };
    loop {
        let p = r.list_core_devices(None, None, None, &page)?;
        for d in &p.items {
            if d.status == "HEALTHY" {
                s.healthy += 1;
            } else {
                s.unhealthy += 1;
            }
            if d.connected == Some(true) {
                s.connected += 1;
            }
        }
        match p.next_token {
            Some(t) => page.token = Some(t),
            None => return Ok(s),
        }
    }
}

pub(crate) fn start_health_sampler(registry: Arc<Registry>, t: Arc<Telemetry>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        loop {
            tick.tick().await;
            let r = registry.clone();
            let at = crate::layout::now_ms();
            match tokio::task::spawn_blocking(move || count_health(&r, at)).await {
                Ok(Ok(s)) => t.record_health(s),
                Ok(Err(e)) => tracing::debug!(error = %e, "console: health sample skipped"),
                Err(_) => {}
            }
        }
    });
}
