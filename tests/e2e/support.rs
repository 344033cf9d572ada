//! Running real `lichen` processes on temporary roots.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lichen"))
}

/// A core process on its own root; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Core {
    pub root: PathBuf,
    child: Option<Child>,
    /// The child is `unshare`, which ignores SIGTERM; the core is its only child.
    in_pid_namespace: bool,
}

impl Core {
    pub fn start(root: &Path) -> Core {
        Self::try_start(root).expect("core did not become ready")
    }

    pub fn try_start(root: &Path) -> Result<Core, String> {
        Self::spawn(root, Command::new(bin()), false)
    }

    /// A core run by `setpriv` as `nobody`, from `bin` (a copy of lichen that user can execute).
    pub fn start_as_nobody(root: &Path, bin: &Path) -> Core {
        // `setpriv` execs the core, so the child is the core itself.
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(bin);
        Self::spawn(root, command, false).expect("core did not become ready as nobody")
    }

    /// A core whose parent ignores SIGCHLD and blocks SIGTERM and SIGCHLD, as some service managers
    /// and CI runners do: both are inherited through exec.
    pub fn start_with_hostile_signals(root: &Path) -> Core {
        Self::spawn(root, Command::new(bin()), true).expect("core did not become ready")
    }

    /// A core in a new PID namespace (with its own /proc) whose session leader stays outside it, as
    /// in a container entered without a new session: there the kernel reports every session as 0.
    /// `None` where this machine does not allow new PID namespaces. The namespace ends with the
    /// `unshare` process (`--kill-child`), so dropping the core leaves nothing behind.
    pub fn start_in_pid_namespace(root: &Path) -> Option<Core> {
        let probe = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            return None;
        }
        let mut command = Command::new("unshare");
        command
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(bin());
        let mut core = Self::spawn(root, command, false).expect("core did not become ready");
        core.in_pid_namespace = true;
        Some(core)
    }

    fn spawn(root: &Path, mut command: Command, hostile_signals: bool) -> Result<Core, String> {
        // The harness waits for its children too: an inherited ignored SIGCHLD would lose their statuses.
        lichen_supervisor::restore_child_exit_signal();
        if hostile_signals {
            use std::os::unix::process::CommandExt;
            // SAFETY: signal, sigemptyset, sigaddset and pthread_sigmask on stack data, after fork.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGTERM);
                    libc::sigaddset(&mut set, libc::SIGCHLD);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(["core", "run", "--root"])
            .arg(root)
            .env("LICHEN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().unwrap();
        // Drain stderr all along (a full pipe would stall the core's logging) and keep it for errors.
        let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = stderr_text.clone();
        let stderr_done = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            use std::io::Read;
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("ready in") => {
                    // Keep draining stdout so the core never blocks on a full pipe.
                    std::thread::spawn(move || for _ in rx {});
                    return Ok(Core {
                        root: root.to_path_buf(),
                        child: Some(child),
                        in_pid_namespace: false,
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let _ = stderr_done.join();
                        let err = stderr_text.lock().unwrap().clone();
                        return Err(format!("core exited with {status}: {err}"));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err("core not ready within 60 s".into());
                    }
                }
            }
        }
    }

    /// SIGKILL: the core gets no chance to clean up.
    pub fn kill9(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let mut c = self.child.take().unwrap();
        self.sigterm(&c);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("core did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a CLI verb against this core's root.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.root, args)
    }

    /// Runs a CLI verb that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "lichen {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn components(&self) -> Vec<Value> {
        let out = self.ok(&["component", "list", "--json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn state(&self, name: &str) -> Option<(String, String)> {
        self.components()
            .into_iter()
            .find(|c| c["componentName"] == name)
            .map(|c| {
                (
                    c["version"].as_str().unwrap().to_string(),
                    c["state"].as_str().unwrap().to_string(),
                )
            })
    }

    /// Waits until `name` is in `state`, up to 60 s.
    pub fn wait_state(&self, name: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.state(name);
            if now.as_ref().map(|s| s.1.as_str()) == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reached {state}; last seen {now:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A deployment with `--wait`; returns (exit success, deployment JSON).
    pub fn deploy(&self, args: &[&str]) -> (bool, Value) {
        let mut full = vec!["deployment", "create", "--wait", "--json"];
        full.extend_from_slice(args);
        let out = self.cli(&full);
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(&text).unwrap_or_else(|_| {
            Value::String(format!("{}{}", text, String::from_utf8_lossy(&out.stderr)))
        });
        (out.status.success(), v)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }
}

impl Core {
    /// SIGTERM to the core itself (inside its PID namespace when it has one).
    fn sigterm(&self, child: &Child) {
        let parent = child.id() as i32;
        let pid = if self.in_pid_namespace {
            let children = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .find(|pid| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    stat.rfind(')')
                        .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<i32>().ok())
                        == Some(parent)
                });
            children.unwrap_or(parent)
        } else {
            parent
        };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.sigterm(&c);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn cli(root: &Path, args: &[&str]) -> Output {
    lichen_supervisor::restore_child_exit_signal();
    Command::new(bin())
        .args(args)
        .env("LICHEN_ROOT", root)
        .output()
        .unwrap()
}

/// Waits until `f` is true, up to `secs`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A recipe folder and artifact folder for a test.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("recipes")).unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Workspace { dir }
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn recipes(&self) -> String {
        self.dir.path().join("recipes").display().to_string()
    }
    pub fn artifacts(&self) -> String {
        self.dir.path().join("artifacts").display().to_string()
    }
    /// A fresh, empty recipe folder (for deployments that must see only some recipes).
    pub fn recipe_dir(&self, name: &str, recipes: &[(&str, &str)]) -> String {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (file, text) in recipes {
            std::fs::write(d.join(file), text).unwrap();
        }
        d.display().to_string()
    }
    pub fn recipe(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join("recipes").join(file), text).unwrap();
    }
    pub fn artifact(&self, name: &str, version: &str, file: &str, bytes: &[u8]) {
        let d = self.dir.path().join("artifacts").join(name).join(version);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(file), bytes).unwrap();
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// A minimal recipe with the given lifecycle (YAML block under `Lifecycle:`).
pub fn recipe(name: &str, version: &str, extra: &str, lifecycle: &str) -> String {
    let mut lc = String::new();
    for line in lifecycle.lines() {
        lc.push_str("      ");
        lc.push_str(line);
        lc.push('\n');
    }
    format!(
        "RecipeFormatVersion: '2020-01-25'\nComponentName: {name}\nComponentVersion: '{version}'\n{extra}\nManifests:\n  - Platform:\n      os: '*'\n    Lifecycle:\n{lc}"
    )
}

/// PIDs of live processes whose command line or environment contains `marker` (scripts export
/// it, so every descendant carries it even after `exec`).
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains(marker) && !String::from_utf8_lossy(&env).contains(marker) {
            continue;
        }
        // Zombies are reaped by their parent; only running ones count.
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .map(|s| s.trim_start().starts_with('Z'))
            == Some(true)
        {
            continue;
        }
        pids.push(pid);
    }
    pids
}

/// A core started with extra environment variables and extra `core run` arguments (`--config …`).
pub fn start_core_with(root: &Path, env: &[(&str, &str)], args: &[&str]) -> Core {
    // `sh -c 'exec "$0" "$@" <args>' lichen core run --root <root>`: the shell becomes the core
    // (same pid), with the extra arguments after the ones `spawn` adds.
    let mut script = String::from("exec \"$0\" \"$@\"");
    for a in args {
        script.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
    }
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).arg(bin());
    for (k, v) in env {
        command.env(k, v);
    }
    Core::spawn(root, command, false).expect("core did not become ready")
}
