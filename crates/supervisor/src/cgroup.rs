//! Resource limits through Linux control groups (spec greengrass-core §5.3, §6.3, plus our
//! `pids` and `ioWeight`).
//!
//! Each core gets one folder, `lichen-<hash of its root>`, below its own cgroup (cgroup v2) or
//! below its own cgroup in each v1 hierarchy (memory, cpu, cpuacct, pids, blkio), and each
//! component a cgroup in it. A step process joins its component's cgroup between fork and exec
//! (it writes `0` to `cgroup.procs`), so everything it starts is inside before any of its code
//! runs. Without permission to create cgroups, components run unconfined and the supervisor
//! reports that limits are not enforced.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `systemResourceLimits` of one component. `None` fields are not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceLimits {
    /// `memory`: KiB of RAM for the whole process tree.
    pub memory_kb: Option<u64>,
    /// `cpus`: CPU time as a number of CPUs (0.5 = half of one CPU).
    pub cpus: Option<f64>,
    /// `pids` (our extension): most processes and threads at once.
    pub pids: Option<u64>,
    /// `ioWeight` (our extension): relative block-I/O weight, 1..=10000 (cgroup v2 `io.weight`).
    pub io_weight: Option<u32>,
}

impl ResourceLimits {
    pub fn is_empty(&self) -> bool {
        *self == ResourceLimits::default()
    }

    /// Parses a `systemResourceLimits` object; `field` names it in errors.
    pub fn from_json(value: &serde_json::Value, field: &str) -> Result<ResourceLimits, String> {
        let Some(map) = value.as_object() else {
            return Err(format!(
                "{field} must be an object such as {{\"memory\": 102400, \"cpus\": 0.5}}"
            ));
        };
        let mut limits = ResourceLimits::default();
        for (key, v) in map {
            let bad = |what: &str| format!("{field}.{key}: {what}, not {v}");
            match key.to_ascii_lowercase().as_str() {
                "memory" => {
                    let kb = v
                        .as_f64()
                        .filter(|n| *n >= 1.0)
                        .ok_or_else(|| bad("expected KiB, at least 1"))?;
                    limits.memory_kb = Some(kb as u64);
                }
                "cpus" => {
                    let cpus = v
                        .as_f64()
                        .filter(|n| *n > 0.0)
                        .ok_or_else(|| bad("expected a positive number of CPUs"))?;
                    limits.cpus = Some(cpus);
                }
                "pids" => {
                    let n = v
                        .as_u64()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad("expected a whole number, at least 1"))?;
                    limits.pids = Some(n);
                }
                "ioweight" => {
                    let w = v
                        .as_u64()
                        .filter(|n| (1..=10000).contains(n))
                        .ok_or_else(|| bad("expected a whole number from 1 to 10000"))?;
                    limits.io_weight = Some(w as u32);
                }
                _ => {
                    return Err(format!(
                        "{field}.{key}: unknown limit; use memory (KiB), cpus, pids or ioWeight"
                    ));
                }
            }
        }
        Ok(limits)
    }
}

/// What a component's cgroup reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceUsage {
    pub memory_bytes: u64,
    /// Highest memory use seen, where the kernel keeps it.
    pub memory_peak_bytes: Option<u64>,
    pub cpu_usage_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
    pub oom_kills: u64,
    pub pids: u64,
}

const CPU_PERIOD_USEC: u64 = 100_000;
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "blkio"];

/// Where this core's component cgroups live.
#[derive(Debug)]
pub(crate) enum Hierarchy {
    V2(PathBuf),
    /// Controller → this core's folder in that controller's hierarchy.
    V1(Vec<(&'static str, PathBuf)>),
}

impl Hierarchy {
    /// Finds (and creates) this core's folder; Err says why limits cannot be enforced here.
    pub(crate) fn detect(root: &Path) -> Result<Hierarchy, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let leaf = format!("lichen-{:016x}", fnv(root.as_os_str().as_bytes()));
        let mut v2_mount = None;
        let mut v1_mounts: Vec<(String, PathBuf, String)> = Vec::new();
        for line in mounts.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 5 || right.len() < 3 {
                continue;
            }
            let (mount_root, point) = (left[3].to_string(), PathBuf::from(left[4]));
            match right[0] {
                "cgroup2" => v2_mount = Some((mount_root, point)),
                "cgroup" => v1_mounts.push((mount_root, point, right[2].to_string())),
                _ => {}
            }
        }
        let path_in = |hier: &dyn Fn(&str) -> bool| {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                hier(ctrls).then(|| path.to_string())
            })
        };
        let join = |point: &Path, mount_root: &str, path: &str| {
            let rel = path.strip_prefix(mount_root).unwrap_or(path);
            point.join(rel.trim_start_matches('/'))
        };
        // v2 when it carries the memory and cpu controllers; else the v1 hierarchies.
        if let Some((mount_root, point)) = &v2_mount
            && let Some(path) = path_in(&|c| c.is_empty())
        {
            let own_dir = join(point, mount_root, &path);
            let controllers =
                std::fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if has("memory") && has("cpu") {
                return setup_v2(&own_dir, &leaf).map(Hierarchy::V2);
            }
        }
        let mut dirs = Vec::new();
        for controller in V1_CONTROLLERS {
            let Some((mount_root, point, _)) = v1_mounts
                .iter()
                .find(|(_, _, opts)| opts.split(',').any(|o| o == controller))
            else {
                continue;
            };
            let Some(path) = path_in(&|c| c.split(',').any(|x| x == controller)) else {
                continue;
            };
            let dir = join(point, mount_root, &path).join(&leaf);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
            dirs.push((controller, dir));
        }
        if dirs.is_empty() {
            return Err("no cgroup v2 with the memory and cpu controllers and no cgroup v1 hierarchy is mounted".into());
        }
        Ok(Hierarchy::V1(dirs))
    }

    /// The component's cgroup, created if missing.
    pub(crate) fn component(&self, name: &str) -> Result<ComponentCgroup, String> {
        let dirs: Vec<(&'static str, PathBuf)> = match self {
            Hierarchy::V2(base) => vec![("", base.join(name))],
            Hierarchy::V1(bases) => bases.iter().map(|(c, b)| (*c, b.join(name))).collect(),
        };
        let mut procs = Vec::new();
        for (_, dir) in &dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
            let file = dir.join("cgroup.procs");
            if !procs
                .iter()
                .any(|p: &CString| p.as_bytes() == file.as_os_str().as_bytes())
            {
                procs.push(CString::new(file.as_os_str().as_bytes()).map_err(|e| e.to_string())?);
            }
        }
        Ok(ComponentCgroup {
            v2: matches!(self, Hierarchy::V2(_)),
            dirs,
            procs,
        })
    }

    /// Removes this core's folder once its components' cgroups are gone (best effort).
    pub(crate) fn remove(&self) {
        match self {
            Hierarchy::V2(base) => {
                let _ = std::fs::remove_dir(base);
            }
            Hierarchy::V1(bases) => {
                for (_, base) in bases {
                    let _ = std::fs::remove_dir(base);
                }
            }
        }
    }
}

/// cgroup v2 forbids processes in a cgroup that hands controllers to children: when the core's
/// own cgroup holds processes, the core moves itself into a `lichen-core` leaf first.
fn setup_v2(own: &Path, leaf: &str) -> Result<PathBuf, String> {
    let enable = |dir: &Path| -> Result<(), String> {
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "cpu", "pids", "io"] {
            if available.split_whitespace().any(|x| x == c) {
                std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")).map_err(
                    |e| format!("cannot enable the {c} controller in {}: {e}", dir.display()),
                )?;
            }
        }
        Ok(())
    };
    if enable(own).is_err() {
        let core = own.join("lichen-core");
        std::fs::create_dir_all(&core)
            .map_err(|e| format!("cannot create cgroup {}: {e}", core.display()))?;
        // Every process of the core's cgroup moves: the core, and any sibling in it (a test harness).
        let members = std::fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default();
        for pid in members.lines() {
            let _ = std::fs::write(core.join("cgroup.procs"), pid);
        }
        enable(own)?;
    }
    let base = own.join(leaf);
    std::fs::create_dir_all(&base)
        .map_err(|e| format!("cannot create cgroup {}: {e}", base.display()))?;
    enable(&base)?;
    Ok(base)
}

/// One component's cgroup (in each v1 hierarchy, or the one v2 folder).
#[derive(Debug)]
pub(crate) struct ComponentCgroup {
    v2: bool,
    dirs: Vec<(&'static str, PathBuf)>,
    /// `cgroup.procs` of each folder, ready for the pre-exec write.
    procs: Vec<CString>,
}

impl ComponentCgroup {
    pub(crate) fn procs_files(&self) -> Vec<CString> {
        self.procs.clone()
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| self.v2 || *c == controller)
            .map(|(_, d)| d.as_path())
    }

    fn write(&self, controller: &str, file: &str, value: &str, problems: &mut Vec<String>) {
        let Some(dir) = self.dir(controller) else {
            problems.push(format!("the {controller} controller is not available"));
            return;
        };
        if let Err(e) = std::fs::write(dir.join(file), value) {
            problems.push(format!(
                "cannot write {value:?} to {}: {e}",
                dir.join(file).display()
            ));
        }
    }

    /// Sets every limit (a `None` one back to unlimited); returns what could not be set.
    pub(crate) fn apply(&self, limits: &ResourceLimits) -> Vec<String> {
        let mut problems = Vec::new();
        let quota = limits
            .cpus
            .map(|c| ((c * CPU_PERIOD_USEC as f64) as u64).max(1000));
        if self.v2 {
            let memory = limits
                .memory_kb
                .map_or("max".to_string(), |kb| (kb * 1024).to_string());
            self.write("memory", "memory.max", &memory, &mut problems);
            // Without swap the limit is the RAM the tree may use, as in Greengrass.
            if limits.memory_kb.is_some()
                || self
                    .dir("")
                    .is_some_and(|d| d.join("memory.swap.max").exists())
            {
                let swap = if limits.memory_kb.is_some() {
                    "0"
                } else {
                    "max"
                };
                let mut ignored = Vec::new();
                self.write("memory", "memory.swap.max", swap, &mut ignored);
            }
            let cpu = quota.map_or(format!("max {CPU_PERIOD_USEC}"), |q| {
                format!("{q} {CPU_PERIOD_USEC}")
            });
            self.write("cpu", "cpu.max", &cpu, &mut problems);
            let pids = limits.pids.map_or("max".to_string(), |n| n.to_string());
            self.write("pids", "pids.max", &pids, &mut problems);
            if let Some(w) = limits.io_weight {
                self.write("io", "io.weight", &format!("default {w}"), &mut problems);
            } else if self.dir("").is_some_and(|d| d.join("io.weight").exists()) {
                self.write("io", "io.weight", "default 100", &mut problems);
            }
        } else {
            let memory = limits
                .memory_kb
                .map_or("-1".to_string(), |kb| (kb * 1024).to_string());
            if limits.memory_kb.is_some() || self.dir("memory").is_some() {
                self.write("memory", "memory.limit_in_bytes", &memory, &mut problems);
                if limits.memory_kb.is_some() {
                    // Where swap accounting exists, RAM + swap gets the same bound.
                    let mut ignored = Vec::new();
                    self.write(
                        "memory",
                        "memory.memsw.limit_in_bytes",
                        &memory,
                        &mut ignored,
                    );
                }
            }
            if limits.cpus.is_some() || self.dir("cpu").is_some() {
                self.write(
                    "cpu",
                    "cpu.cfs_period_us",
                    &CPU_PERIOD_USEC.to_string(),
                    &mut problems,
                );
                let q = quota.map_or("-1".to_string(), |q| q.to_string());
                self.write("cpu", "cpu.cfs_quota_us", &q, &mut problems);
            }
            if limits.pids.is_some() || self.dir("pids").is_some() {
                let pids = limits.pids.map_or("max".to_string(), |n| n.to_string());
                self.write("pids", "pids.max", &pids, &mut problems);
            }
            if let Some(w) = limits.io_weight {
                // blkio.weight spans 10..=1000 where io.weight spans 1..=10000 (default 100 ↔ 500).
                let w1 = (w as u64 * 5).clamp(10, 1000);
                let file = match self.dir("blkio") {
                    Some(d) if d.join("blkio.bfq.weight").exists() => "blkio.bfq.weight",
                    _ => "blkio.weight",
                };
                self.write("blkio", file, &w1.to_string(), &mut problems);
            }
        }
        problems
    }

    pub(crate) fn usage(&self) -> ResourceUsage {
        let read = |controller: &str, file: &str| {
            self.dir(controller)
                .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
                .unwrap_or_default()
        };
        let num = |text: String| text.trim().parse::<u64>().ok();
        let keyed = |text: &str, key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
        };
        let pids = read("pids", "cgroup.procs").lines().count() as u64;
        let stat = read("cpu", "cpu.stat");
        if self.v2 {
            ResourceUsage {
                memory_bytes: num(read("memory", "memory.current")).unwrap_or(0),
                memory_peak_bytes: num(read("memory", "memory.peak")),
                cpu_usage_usec: keyed(&stat, "usage_usec").unwrap_or(0),
                nr_periods: keyed(&stat, "nr_periods").unwrap_or(0),
                nr_throttled: keyed(&stat, "nr_throttled").unwrap_or(0),
                throttled_usec: keyed(&stat, "throttled_usec").unwrap_or(0),
                oom_kills: keyed(&read("memory", "memory.events"), "oom_kill").unwrap_or(0),
                pids,
            }
        } else {
            ResourceUsage {
                memory_bytes: num(read("memory", "memory.usage_in_bytes")).unwrap_or(0),
                memory_peak_bytes: num(read("memory", "memory.max_usage_in_bytes")),
                cpu_usage_usec: num(read("cpuacct", "cpuacct.usage")).unwrap_or(0) / 1000,
                nr_periods: keyed(&stat, "nr_periods").unwrap_or(0),
                nr_throttled: keyed(&stat, "nr_throttled").unwrap_or(0),
                throttled_usec: keyed(&stat, "throttled_time").unwrap_or(0) / 1000,
                oom_kills: keyed(&read("memory", "memory.oom_control"), "oom_kill").unwrap_or(0),
                pids,
            }
        }
    }

    /// SIGKILLs every process still in the cgroup (those that left the step's process groups).
    pub(crate) fn kill_all(&self) {
        if let Some((_, dir)) = self.dirs.first() {
            let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if pid > 1 {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// Removes the cgroup once it is empty (best effort; a non-empty one stays).
    pub(crate) fn remove(&self) {
        for (_, dir) in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Joins the cgroups between fork and exec: only async-signal-safe calls on prepared paths.
pub(crate) fn join_in_child(procs: &[CString]) {
    for path in procs {
        // SAFETY: `path` is a valid NUL-terminated string; open/write/close are async-signal-safe.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    }
}

/// FNV-1a: a stable folder name per core root (not a security boundary).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_field_paths() {
        let v = serde_json::json!({"memory": 10240, "cpus": 0.5, "pids": 64, "ioWeight": 200});
        let l = ResourceLimits::from_json(&v, "runWith.systemResourceLimits").unwrap();
        assert_eq!(l.memory_kb, Some(10240));
        assert_eq!(l.cpus, Some(0.5));
        assert_eq!(l.pids, Some(64));
        assert_eq!(l.io_weight, Some(200));
        let err = ResourceLimits::from_json(&serde_json::json!({"cpus": -1}), "x").unwrap_err();
        assert!(err.contains("x.cpus"), "{err}");
        let err = ResourceLimits::from_json(&serde_json::json!({"disk": 1}), "x").unwrap_err();
        assert!(err.contains("x.disk: unknown limit"), "{err}");
        assert!(
            ResourceLimits::from_json(&serde_json::json!({}), "x")
                .unwrap()
                .is_empty()
        );
    }
}
