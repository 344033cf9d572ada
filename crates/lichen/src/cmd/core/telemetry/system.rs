//! System figures from /proc and statvfs: CPU use since the last sample, memory, open file
//! descriptors (system-wide, as Greengrass's `TotalNumberOfFDs`), the root filesystem's use,
//! and bytes/packets per network interface.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interface {
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub cpu_percent: f64,
    pub mem_used_mb: f64,
    pub mem_total_mb: f64,
    pub open_fds: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub interfaces: BTreeMap<String, Interface>,
}

/// Remembers the previous CPU counters, for the use between two samples.
#[derive(Default)]
pub struct Sampler {
    last_cpu: Option<(u64, u64)>,
}

fn cpu_counters() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

pub fn interfaces() -> BTreeMap<String, Interface> {
    let mut out = BTreeMap::new();
    let Ok(dev) = std::fs::read_to_string("/proc/net/dev") else {
        return out;
    };
    for line in dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() >= 10 {
            out.insert(
                name.trim().to_string(),
                Interface {
                    bytes_in: v[0],
                    packets_in: v[1],
                    bytes_out: v[8],
                    packets_out: v[9],
                },
            );
        }
    }
    out
}

impl Sampler {
    pub fn sample(&mut self) -> Sample {
        let mut s = Sample::default();
        if let Some((total, idle)) = cpu_counters() {
            if let Some((t0, i0)) = self.last_cpu
                && total > t0
            {
                let busy = (total - t0).saturating_sub(idle.saturating_sub(i0));
                s.cpu_percent = 100.0 * busy as f64 / (total - t0) as f64;
            }
            self.last_cpu = Some((total, idle));
        }
        if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
            let field = |k: &str| {
                mem.lines()
                    .find(|l| l.starts_with(k))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|x| x.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let total = field("MemTotal:");
            s.mem_total_mb = total / 1024.0;
            s.mem_used_mb = (total - field("MemAvailable:")) / 1024.0;
        }
        s.open_fds = std::fs::read_to_string("/proc/sys/fs/file-nr")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        if let Ok(st) = rustix::fs::statvfs("/") {
            let frsize = st.f_frsize;
            s.disk_total_bytes = st.f_blocks * frsize;
            s.disk_used_bytes = (st.f_blocks - st.f_bfree) * frsize;
        }
        s.interfaces = interfaces();
        s
    }
}
