//! A ledger of live process groups under `<root>/work/.groups/`, one small file per group, so a
//! core that died without warning (SIGKILL, crash) stops the processes it left behind when it starts
//! again on the same root. Files are not fsynced: after a power loss no process survives anyway.
//!
//! A process group id can be reused once its group is gone, so an entry only counts when it is from
//! this boot and either its leader is the very process recorded (same start time) or the leader has
//! exited (then the id cannot have been handed out again while any member of the group lives).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Where each live group's entry is (pgids are unique system-wide while their group lives).
static ENTRIES: Mutex<Option<HashMap<i32, PathBuf>>> = Mutex::new(None);

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Start time (clock ticks since boot) of `pid`, field 22 of /proc/<pid>/stat.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every live process in group `pgid`, whatever its session.
fn members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            crate::process::proc_stat(&pid.to_string())
                .is_some_and(|stat| stat.pgrp == pgid && stat.state != 'Z' && stat.state != 'X')
        })
        .collect()
}

pub(crate) fn ledger_dir(root: &Path) -> PathBuf {
    root.join("work").join(".groups")
}

/// Records a new group whose leader is `pgid`.
pub(crate) fn record(dir: &Path, pgid: i32, component: &str) {
    let Some(start) = start_time(pgid) else {
        return;
    };
    // The ledger is the core's: `work/` is searchable by component users, this folder is not.
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let path = dir.join(pgid.to_string());
    let written = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(format!("{}\n{start}\n{component}\n", boot_id()).as_bytes())
        });
    if written.is_ok() {
        ENTRIES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(pgid, path);
    }
}

/// Drops the entry of a group that is gone.
pub(crate) fn forget(pgid: i32) {
    let path = ENTRIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .remove(&pgid);
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

/// Stops the groups a previous core on this root left behind: SIGTERM, then SIGKILL after `grace`.
/// Returns how many groups still had processes.
pub(crate) async fn reap(dir: &Path, grace: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let boot = boot_id();
    let mut orphans = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(pgid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = text.lines();
        let (b, start, component) = (
            lines.next().unwrap_or(""),
            lines.next().and_then(|s| s.parse::<u64>().ok()),
            lines.next().unwrap_or("?").to_string(),
        );
        let _ = std::fs::remove_file(&path);
        if b != boot || pgid <= 1 {
            continue;
        }
        let ours = match start_time(pgid) {
            Some(now) => Some(now) == start,
            None => true,
        };
        if ours && !members(pgid).is_empty() {
            tracing::warn!(component = %component, pgid, "stopping processes left by a previous core on this root");
            orphans.push(pgid);
        }
    }
    let count = orphans.len();
    for (signal, wait) in [
        (libc::SIGTERM, grace),
        (libc::SIGKILL, Duration::from_secs(5)),
    ] {
        orphans.retain(|p| !members(*p).is_empty());
        for pgid in &orphans {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(-pgid, signal);
                libc::kill(-pgid, libc::SIGCONT);
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        while !orphans.is_empty() && tokio::time::Instant::now() < deadline {
            orphans.retain(|p| !members(*p).is_empty());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    count
}
