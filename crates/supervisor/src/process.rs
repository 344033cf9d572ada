//! Lifecycle steps as processes: who they run as, their environment, their process group, and how they end.
//!
//! Every step runs as `<shell> -c <script>` in a process group of its own, so that stopping a component
//! reaches every process its scripts started, even after the shell itself has exited.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::logs::ComponentLog;

/// PATH of a step when the core hands on none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The umask of every step process, whatever the core's own (0077, for its private state): what a
/// component creates is readable by others as under Greengrass's usual systemd service (umask 0022).
pub(crate) const STEP_UMASK: libc::mode_t = 0o022;

/// SIGTERM → SIGKILL grace period (spec §1.6: "5 s grace").
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);

/// Puts SIGCHLD back to its default disposition when the process inherited it ignored.
///
/// A parent that ignores SIGCHLD (some service managers and CI runners do) hands that on through
/// `exec`; the kernel then reaps children by itself, so their exit status is lost and a supervisor
/// waiting for a step to end waits forever. A handler someone installed (tokio's) is left alone.
pub fn restore_child_exit_signal() {
    // SAFETY: sigaction with a zeroed struct only queries; the second call installs SIG_DFL, which
    // is always valid. Both are plain system calls on stack data.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
        {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGCHLD, &default, std::ptr::null_mut());
        }
    }
}

/// Unblocks every signal in the calling thread; call first thing in `main`, before any thread starts.
///
/// A blocked mask is inherited through `exec` too: a core started with SIGTERM blocked would never
/// see its stop signal, and every component would inherit the same deafness.
pub fn unblock_inherited_signals() {
    // SAFETY: an empty set built by sigemptyset, installed with pthread_sigmask.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// The identity a step runs as when the core is root.
#[derive(Debug, Clone, PartialEq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<String>,
    pub name: Option<String>,
}

/// Resolves `user[:group]` (names or numeric ids) against the system databases.
pub fn resolve_user(spec: &str) -> Result<RunAs, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u.trim(), Some(g.trim())),
        None => (spec.trim(), None),
    };
    if user.is_empty() {
        return Err(format!("posixUser {spec:?} names no user"));
    }
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_by_uid(uid).or(Some(PasswdEntry {
            name: None,
            uid,
            gid: uid,
            home: None,
        })),
        Err(_) => passwd_by_name(user),
    };
    let entry =
        entry.ok_or_else(|| format!("user {user:?} of posixUser {spec:?} does not exist"))?;
    let gid = match group.filter(|g| !g.is_empty()) {
        None => entry.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_by_name(g)
                .ok_or_else(|| format!("group {g:?} of posixUser {spec:?} does not exist"))?,
        },
    };
    let mut groups = match &entry.name {
        Some(name) => group_list(name, gid),
        None => Vec::new(),
    };
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    Ok(RunAs {
        uid: entry.uid,
        gid,
        groups,
        home: entry.home,
        name: entry.name,
    })
}

struct PasswdEntry {
    name: Option<String>,
    uid: u32,
    gid: u32,
    home: Option<String>,
}

fn passwd_lookup(
    call: impl Fn(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> libc::c_int,
) -> Option<PasswdEntry> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter; the buffer outlives the call and every string read below.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = call(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
    if rc != 0 || result.is_null() {
        return None;
    }
    let text = |p: *const libc::c_char| {
        if p.is_null() {
            None
        } else {
            // SAFETY: getpw*_r filled `p` with a NUL-terminated string inside `buf`.
            Some(
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    };
    Some(PasswdEntry {
        name: text(pwd.pw_name),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: text(pwd.pw_dir),
    })
}

fn passwd_by_name(name: &str) -> Option<PasswdEntry> {
    let cname = CString::new(name).ok()?;
    // SAFETY: all pointers are valid for the duration of the call.
    passwd_lookup(|pwd, buf, len, out| unsafe {
        libc::getpwnam_r(cname.as_ptr(), pwd, buf, len, out)
    })
}

fn passwd_by_uid(uid: u32) -> Option<PasswdEntry> {
    // SAFETY: all pointers are valid for the duration of the call.
    passwd_lookup(|pwd, buf, len, out| unsafe { libc::getpwuid_r(uid, pwd, buf, len, out) })
}

fn group_by_name(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: zeroed group is a valid out-parameter; pointers are valid for the call.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

fn group_list(user: &str, gid: u32) -> Vec<u32> {
    let Ok(cname) = CString::new(user) else {
        return vec![gid];
    };
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let mut n = count;
        // SAFETY: `groups` has room for `n` entries; getgrouplist updates `n`.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if n <= count || count > 65536 {
            return vec![gid];
        }
        count = n;
    }
}

pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Everything needed to start one step process.
pub(crate) struct StepCommand {
    pub component: String,
    /// `Install`, `Run`, … as used in the log context `lifecycle=<Step>`.
    pub step: &'static str,
    pub shell: String,
    pub script: String,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub run_as: Option<RunAs>,
    pub log: Arc<ComponentLog>,
    /// `cgroup.procs` files the process joins before exec (empty: no cgroup).
    pub cgroup_procs: Vec<std::ffi::CString>,
}

/// How a step process ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StepOutcome {
    /// Exit status; a signal death is reported as 128 + signal like a shell does.
    Exited(i32),
    TimedOut,
    /// The process could not be started (bad shell, bad user, unwritable work dir).
    SpawnFailed(String),
}

/// Starts the step process in its own process group; returns it and its process group id.
pub(crate) fn spawn_step(cmd: &StepCommand) -> std::io::Result<(Child, i32)> {
    let mut command = Command::new(&cmd.shell);
    command
        .arg("-c")
        .arg(&cmd.script)
        .current_dir(&cmd.cwd)
        .env_clear()
        .envs(&cmd.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let run_as = cmd.run_as.clone();
    let cgroup_procs = cmd.cgroup_procs.clone();
    // SAFETY: the closure only makes async-signal-safe system calls on data prepared before fork.
    unsafe {
        command.pre_exec(move || {
            // First, while still privileged: everything the step starts is inside the cgroup.
            crate::cgroup::join_in_child(&cgroup_procs);
            // A step starts with no signal blocked, whatever thread of the core forked it.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::umask(STEP_UMASK);
            if let Some(run_as) = &run_as {
                let groups = &run_as.groups;
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgid(run_as.gid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setuid(run_as.uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pgid = child.id().map(|id| id as i32).unwrap_or(0);
    if let Some(work) = cmd.cwd.parent() {
        crate::ledger::record(&work.join(".groups"), pgid, &cmd.component);
    }
    let context_out = format!("lifecycle={} stream=stdout", cmd.step);
    let context_err = format!("lifecycle={} stream=stderr", cmd.step);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump_lines(out, cmd.log.clone(), "INFO", context_out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump_lines(err, cmd.log.clone(), "WARN", context_err));
    }
    Ok((child, pgid))
}

/// Longest output line written as one log line; a longer one is cut into parts of this size, each
/// later part marked `[continued] `, so a component that never prints a newline cannot make the
/// core buffer its output.
pub(crate) const MAX_LINE_BYTES: usize = 64 << 10;

/// Copies each output line into the component log until every writer of the pipe has closed it.
async fn pump_lines(
    stream: impl AsyncRead + Unpin,
    log: Arc<ComponentLog>,
    level: &'static str,
    context: String,
) {
    let mut reader = BufReader::new(stream);
    let mut line: Vec<u8> = Vec::new();
    let mut continued = false;
    let write = |part: &[u8], continued: bool| {
        let text = String::from_utf8_lossy(part);
        let text = text.trim_end_matches(['\n', '\r']);
        if continued {
            log.write(level, &context, &format!("[continued] {text}"));
        } else {
            log.write(level, &context, text);
        }
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                if !line.is_empty() {
                    write(&line, continued);
                }
                return;
            }
            Ok(buf) => buf,
        };
        let room = MAX_LINE_BYTES - line.len();
        let (take, ends) = match buf.iter().take(room).position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len().min(room), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if ends {
            write(&line, continued);
            line.clear();
            continued = false;
        } else if line.len() >= MAX_LINE_BYTES {
            // Cut at a character boundary; the bytes of a split character start the next part.
            let cut = complete_chars(&line);
            write(&line[..cut], continued);
            line.drain(..cut);
            continued = true;
        }
    }
}

/// Length of the prefix of `bytes` that does not end inside a UTF-8 character.
fn complete_chars(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0xC0 {
            // A lead byte: its character is complete only if all its bytes are here.
            let need = if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else {
                2
            };
            return if need > back {
                bytes.len() - back
            } else {
                bytes.len()
            };
        }
        if b & 0xC0 != 0x80 {
            break;
        }
    }
    bytes.len()
}

/// Waits for the step's shell to exit; on timeout kills its whole group.
pub(crate) async fn wait_step(
    mut child: Child,
    pgid: i32,
    timeout: Option<Duration>,
) -> StepOutcome {
    let waited = match timeout {
        Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                terminate_groups(&[pgid], KILL_GRACE).await;
                let _ = child.wait().await;
                return StepOutcome::TimedOut;
            }
        },
        None => child.wait().await,
    };
    match waited {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            StepOutcome::Exited(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            )
        }
        Err(err) => StepOutcome::SpawnFailed(format!("waiting for the step process failed: {err}")),
    }
}

/// Runs a step to completion and kills whatever it left behind in its group.
pub(crate) async fn run_one_shot(cmd: &StepCommand, timeout: Option<Duration>) -> StepOutcome {
    match spawn_step(cmd) {
        Ok((child, pgid)) => {
            let outcome = wait_step(child, pgid, timeout).await;
            terminate_groups(&[pgid], KILL_GRACE).await;
            outcome
        }
        Err(err) => StepOutcome::SpawnFailed(format!(
            "cannot start {} -c for step {} of {} in {}: {err}",
            cmd.shell,
            cmd.step,
            cmd.component,
            cmd.cwd.display()
        )),
    }
}

/// Sends `signal` to every process of the group; a group that is already gone is not an error.
pub(crate) fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 1 && !group_members(pgid).is_empty() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Live (non-zombie) processes whose process group is `pgid` and whose session is ours, read from /proc.
///
/// Step groups are made with setpgid inside the core's session; requiring that session keeps a group
/// id that was freed and reused by an unrelated program (which would lead its own session) out of reach.
/// Our own session is read from /proc too, not from getsid: in a PID namespace whose session leader
/// lives outside it (a container started without a new session) the kernel reports session 0, and
/// /proc then shows 0 for every process of that session, so both sides must come from the same view.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    let Some(own_session) = proc_stat("self").map(|s| s.session) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            proc_stat(&pid.to_string()).is_some_and(|stat| {
                stat.pgrp == pgid
                    && stat.session == own_session
                    && stat.state != 'Z'
                    && stat.state != 'X'
            })
        })
        .collect()
}

/// The fields of /proc/<pid>/stat that group membership needs.
pub(crate) struct ProcStat {
    pub(crate) state: char,
    pub(crate) pgrp: i32,
    pub(crate) session: i32,
}

pub(crate) fn proc_stat(pid: &str) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        session,
    })
}

/// SIGTERM to each group, SIGKILL to what is left after `grace`; returns once the groups are empty
/// (or, for a process stuck in the kernel, [`KILL_WAIT`] after SIGKILL).
pub(crate) async fn terminate_groups(pgids: &[i32], grace: Duration) {
    terminate_live_groups(pgids, grace).await;
    for pgid in pgids {
        if group_members(*pgid).is_empty() {
            crate::ledger::forget(*pgid);
        }
    }
}

/// How long a SIGKILLed group may take to go. A killed process needs CPU time to exit, and on a
/// loaded machine (or in a memory cgroup under reclaim) that has taken over 5 s; a stop that
/// returned then would leave it running past the core's shutdown.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(60);

async fn terminate_live_groups(pgids: &[i32], grace: Duration) {
    let mut alive: Vec<i32> = pgids
        .iter()
        .copied()
        .filter(|p| *p > 1 && !group_members(*p).is_empty())
        .collect();
    alive.sort_unstable();
    alive.dedup();
    if alive.is_empty() {
        return;
    }
    for pgid in &alive {
        signal_group(*pgid, libc::SIGTERM);
        // A paused component must wake up to act on SIGTERM.
        signal_group(*pgid, libc::SIGCONT);
    }
    let deadline = Instant::now() + grace;
    while wait_for_groups(&mut alive, deadline).await {}
    if alive.is_empty() {
        return;
    }
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        for pgid in &alive {
            signal_group(*pgid, libc::SIGKILL);
        }
        // Re-sent every second: a member forked by a process that had not seen the first yet
        // is killed too.
        let next = (Instant::now() + Duration::from_secs(1)).min(deadline);
        while wait_for_groups(&mut alive, next).await {}
        if alive.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(groups = ?alive, "processes survived SIGKILL");
            return;
        }
    }
}

/// One poll: true while some group is alive and `until` has not passed (after a short sleep).
async fn wait_for_groups(alive: &mut Vec<i32>, until: Instant) -> bool {
    let mut confirmed_gone = alive.clone();
    alive.retain(|p| !group_members(*p).is_empty());
    if alive.is_empty() {
        // Confirm with a second scan before calling the groups gone.
        tokio::time::sleep(Duration::from_millis(5)).await;
        confirmed_gone.retain(|p| !group_members(*p).is_empty());
        if confirmed_gone.is_empty() {
            return false;
        }
        *alive = confirmed_gone;
    }
    if Instant::now() >= until {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(25)).await;
    true
}

/// Makes the run-as user the owner of the artifact files under `dir` (a missing `dir` is fine), as
/// Greengrass does, so the recipe's `Permission` (OWNER by default) is about that user. Folders stay
/// the core's, so a component cannot add or remove its artifacts; symlinks are never followed.
pub(crate) fn hand_artifacts(dir: &Path, run_as: &RunAs) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            hand_artifacts(&path, run_as)?;
        } else if meta.is_file() && (meta.uid(), meta.gid()) != (run_as.uid, run_as.gid) {
            std::os::unix::fs::lchown(&path, Some(run_as.uid), Some(run_as.gid))?;
        }
    }
    Ok(())
}

/// Creates the work directory and hands it to the run-as user, who alone may enter it (0700).
pub(crate) fn prepare_work_dir(dir: &Path, run_as: Option<&RunAs>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    if let Some(run_as) = run_as {
        std::os::unix::fs::chown(dir, Some(run_as.uid), Some(run_as.gid))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endless_line_is_written_in_bounded_parts() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ComponentLog::new(dir.path(), "long", 64 << 20, 1));
        let mut output = vec![b'x'; (1 << 20) + 1];
        output.extend_from_slice("é".repeat(40_000).as_bytes());
        output.extend_from_slice(b"\nshort line\n");
        pump_lines(
            &output[..],
            log.clone(),
            "INFO",
            "lifecycle=Run stream=stdout".into(),
        )
        .await;
        let text = std::fs::read_to_string(dir.path().join("long.log")).unwrap();
        let longest = text.lines().map(str::len).max().unwrap();
        assert!(
            longest <= MAX_LINE_BYTES + 200,
            "a log line of {longest} bytes"
        );
        let xs = text.bytes().filter(|b| *b == b'x').count();
        assert_eq!(xs, (1 << 20) + 1, "every byte of the long line was kept");
        assert_eq!(text.matches('é').count(), 40_000, "no character was split");
        assert!(text.contains("[continued] "), "{}", &text[..200]);
        assert!(text.lines().last().unwrap().ends_with(": short line"));
    }
}
