//! `lichen core install` / `lichen core uninstall`: the core as a system service.
//!
//! Install creates the components' user and group (when missing), the root with the core's
//! modes, the launch directory `alts/init/bin/lichen` (a copy of this executable) named by
//! `alts/current`, merges an initial configuration, and registers the loader
//! (`alts/current/bin/lichen core loader`) with systemd — or, without systemd, starts it detached
//! and prints an init script. What it created is recorded in `alts/install.json`, so uninstall
//! removes exactly that and nothing the system had before. Installing over an existing root is an
//! upgrade: the new binary becomes a new launch directory, the previous one is kept as `alts/old`,
//! and configuration, deployments and components stay.

use super::{alts, layout, lock};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The systemd unit's name.
pub const UNIT: &str = "lichen.service";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// systemd when it runs this machine (`/run/systemd/system`), else none.
    Auto,
    Systemd,
    None,
}

#[derive(Args)]
pub struct InstallArgs {
    /// Core root directory.
    #[arg(long, default_value = "/greengrass/v2")]
    pub root: PathBuf,
    /// The default user and group components run as (created as system accounts when missing).
    #[arg(long, default_value = "ggc_user:ggc_group")]
    pub user: String,
    /// A Greengrass-style config.yaml (or .json) merged into the configuration once, at install.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A provisioning-by-claim configuration (the Greengrass installer's
    /// `aws.greengrass.FleetProvisioningByClaim` settings: endpoint, claim certificate and key,
    /// template and its parameters), checked and merged like --config; once the core is
    /// started, install waits until it has obtained its own certificate and prints its thing name.
    #[arg(long, value_name = "FILE")]
    pub provision: Option<PathBuf>,
    /// How long --provision waits for the core to provision itself.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub provision_timeout: u64,
    /// Register the service but do not start it.
    #[arg(long)]
    pub no_start: bool,
    /// How the core is started at boot.
    #[arg(long, value_enum, default_value = "auto")]
    pub init: Init,
    /// Where the systemd unit is written.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
}

#[derive(Args)]
pub struct UninstallArgs {
    /// Core root directory.
    #[arg(long, default_value = "/greengrass/v2")]
    pub root: PathBuf,
    /// Keep the root (configuration, deployments, components, logs) and the component user.
    #[arg(long)]
    pub keep_data: bool,
}

/// What `install` created, so that `uninstall` removes that and only that.
#[derive(Serialize, Deserialize, Default)]
struct Record {
    user: String,
    group: String,
    created_user: bool,
    created_group: bool,
    /// The topmost folder install created for the root (the root itself or an ancestor).
    created_dir: Option<PathBuf>,
    /// The unit file written, when systemd starts the core.
    unit_file: Option<PathBuf>,
}

fn record_path(root: &Path) -> PathBuf {
    alts::dir(root).join("install.json")
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub fn install(a: InstallArgs) -> anyhow::Result<ExitCode> {
    need_root()?;
    let (user, group) = match a.user.split_once(':') {
        Some((u, g)) if !u.is_empty() && !g.is_empty() => (u.to_string(), g.to_string()),
        None if !a.user.is_empty() => (a.user.clone(), a.user.clone()),
        _ => bail!(
            "--user {:?}: give `user:group` (e.g. ggc_user:ggc_group)",
            a.user
        ),
    };
    let init = match a.init {
        Init::Auto if systemd_running() => Init::Systemd,
        Init::Auto => Init::None,
        other => other,
    };
    layout::set_core_umask();
    let root_given = std::path::absolute(&a.root)?;
    let created_dir = topmost_missing(&root_given);
    layout::create_root(&root_given)?;
    let root = std::fs::canonicalize(&root_given)?;
    let mut rec: Record = std::fs::read(record_path(&root))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if rec.created_dir.is_none() {
        rec.created_dir = created_dir;
    }

    if !exists("group", &group)? {
        run(Command::new("groupadd").arg("--system").arg(&group))?;
        rec.created_group = true;
    }
    if !exists("passwd", &user)? {
        run(Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", "--gid"])
            .arg(&group)
            .arg(&user))?;
        rec.created_user = true;
    }
    rec.user = user.clone();
    rec.group = group.clone();

    layout::prepare(&root)?;
    let running = lock::is_held(&root);
    if (a.config.is_some() || a.provision.is_some()) && running {
        bail!(
            "--config/--provision: the core under {} is running; stop it first (`systemctl stop {UNIT}`)",
            root.display()
        );
    }
    if let Some(f) = &a.provision {
        check_provisioning_file(f, &root)?;
    }
    if !running {
        let store = lichen_config::ConfigStore::open(&root.join("config"))
            .with_context(|| format!("opening the configuration under {}", root.display()))?;
        if let Some(f) = &a.config {
            store
                .merge_file(f, lichen_config::now_ms())
                .with_context(|| format!("merging --config {}", f.display()))?;
        }
        if let Some(f) = &a.provision {
            store
                .merge_file(f, lichen_config::now_ms())
                .with_context(|| format!("merging --provision {}", f.display()))?;
        }
        let key = [
            "services",
            "aws.greengrass.Nucleus",
            "configuration",
            "runWithDefault",
            "posixUser",
        ];
        if store.get(&key).is_none() {
            store.set(
                &key,
                serde_json::Value::String(format!("{user}:{group}")),
                lichen_config::now_ms(),
            )?;
        }
    }

    let upgrade = alts::target(&root, alts::CURRENT).is_some();
    // Whether a core is (now) running under the root, for --provision to wait on.
    let mut started = false;
    stage_this_binary(&root)?;
    let exe = alts::binary(&root, alts::CURRENT);
    match init {
        Init::Systemd => {
            std::fs::create_dir_all(&a.unit_dir)?;
            let unit_file = a.unit_dir.join(UNIT);
            write_public(&unit_file, &unit_text(&root, &exe))?;
            rec.unit_file = Some(unit_file.clone());
            save_record(&root, &rec)?;
            if systemd_running() {
                run(Command::new("systemctl").arg("daemon-reload"))?;
            }
            // `enable` only links files, so it works where systemd is not running (an image build).
            run(Command::new("systemctl").args(["enable", UNIT]))?;
            if a.no_start {
                println!(
                    "installed {}; start it with `systemctl start {UNIT}`",
                    root.display()
                );
            } else if systemd_running() {
                // restart, not start: an upgrade's running loader must pick up the new launch dir.
                run(Command::new("systemctl").args(["restart", UNIT]))?;
                started = true;
                println!("installed and started {UNIT} (root {})", root.display());
            } else {
                println!(
                    "installed {}; systemd is not running, so nothing was started",
                    root.display()
                );
            }
        }
        _ => {
            save_record(&root, &rec)?;
            println!("{}", init_script(&root, &exe));
            if !a.no_start {
                started = true;
                let loader_running = loader_pid(&root).is_some();
                if upgrade && loader_running {
                    // The running loader would go on with the previous binary: restart it.
                    stop_core(&root)?;
                    let pid = start_detached(&root, &exe)?;
                    println!("# restarted the loader on the new binary (pid {pid})");
                } else if lock::is_held(&root) || loader_running {
                    println!("# the core under {} is already running", root.display());
                } else {
                    let pid = start_detached(&root, &exe)?;
                    println!(
                        "# started the loader (pid {pid}); logs in {}/logs",
                        root.display()
                    );
                }
            }
        }
    }
    if a.provision.is_some() {
        if started {
            let timeout = std::time::Duration::from_secs(a.provision_timeout);
            println!(
                "# waiting for the core to provision itself by claim (up to {} s)",
                timeout.as_secs()
            );
            let thing = super::provision::wait_for_identity(&root, timeout)?;
            println!("provisioned as thing {thing}");
        } else {
            println!("# the core provisions itself by claim when it first starts");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses a --provision file that is not a complete provisioning-by-claim configuration,
/// naming the key, before anything of it is merged (it is read into a scratch store).
fn check_provisioning_file(file: &Path, root: &Path) -> anyhow::Result<()> {
    let scratch = root
        .join("work")
        .join(format!(".provision-check-{}", std::process::id()));
    let checked = (|| {
        let store = lichen_config::ConfigStore::open(&scratch)?;
        store.merge_file(file, lichen_config::now_ms())?;
        super::provision::check(&store, root)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    checked.with_context(|| format!("--provision {}", file.display()))
}

pub fn uninstall(a: UninstallArgs) -> anyhow::Result<ExitCode> {
    need_root()?;
    let root = std::fs::canonicalize(&a.root)
        .with_context(|| format!("no Lichen install under {}", a.root.display()))?;
    let rec: Record =
        serde_json::from_slice(&std::fs::read(record_path(&root)).with_context(|| {
            format!(
                "{} (was the core installed with `lichen core install`?)",
                record_path(&root).display()
            )
        })?)
        .with_context(|| format!("reading {}", record_path(&root).display()))?;

    if let Some(unit) = &rec.unit_file {
        if systemd_running() {
            let _ = run(Command::new("systemctl").args(["disable", "--now", UNIT]));
        } else {
            let _ = run(Command::new("systemctl").args(["disable", UNIT]));
        }
        match std::fs::remove_file(unit) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", unit.display())),
        }
        if systemd_running() {
            let _ = run(Command::new("systemctl").arg("daemon-reload"));
        }
    }
    stop_core(&root)?;

    if a.keep_data {
        println!(
            "removed the service; kept {} and user {}",
            root.display(),
            rec.user
        );
        return Ok(ExitCode::SUCCESS);
    }
    let top = rec.created_dir.clone().unwrap_or_else(|| root.clone());
    std::fs::remove_dir_all(&top).with_context(|| format!("removing {}", top.display()))?;
    if rec.created_user {
        run(Command::new("userdel").arg(&rec.user))?;
    }
    if rec.created_group && exists("group", &rec.group)? {
        run(Command::new("groupdel").arg(&rec.group))?;
    }
    println!("removed {} and everything install created", top.display());
    Ok(ExitCode::SUCCESS)
}

/// Copies this executable into a launch directory named by `alts/current`: `alts/init` on a new
/// root; on an existing one a new directory, keeping the previous as `alts/old` (an upgrade).
fn stage_this_binary(root: &Path) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("finding this executable")?;
    match alts::target(root, alts::CURRENT) {
        None => {
            alts::stage_binary(root, alts::INIT, &me)?;
            alts::point(root, alts::CURRENT, alts::INIT)
        }
        Some(cur) => {
            let name = format!(
                "v{}-{}",
                env!("CARGO_PKG_VERSION"),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs()
            );
            alts::stage_binary(root, &name, &me)?;
            alts::point(root, alts::NEW, &name)?;
            alts::apply_new(root)?;
            // Launch directories no link names any more are dead weight.
            let keep = [alts::CURRENT, alts::OLD, alts::BROKEN, alts::NEW]
                .iter()
                .filter_map(|l| alts::target(root, l))
                .collect::<Vec<_>>();
            for entry in std::fs::read_dir(alts::dir(root))? {
                let entry = entry?;
                let n = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type()?.is_dir() && !keep.contains(&n) && n != cur {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            Ok(())
        }
    }
}

fn unit_text(root: &Path, exe: &Path) -> String {
    format!(
        "# Installed by `lichen core install`; removed by `lichen core uninstall`.
[Unit]
Description=Lichen edge runtime (AWS IoT Greengrass V2 compatible core)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
PIDFile={root}/alts/loader.pid
ExecStart={exe} core loader --root {root}
Restart=on-failure
RestartSec=10
# mixed: SIGTERM reaches the loader alone, which passes it to the core, which stops each
# component's process group in dependency order; whatever is left after TimeoutStopSec gets
# SIGKILL, so nothing is orphaned. (control-group would signal components behind the core's back.)
KillMode=mixed
TimeoutStopSec=120
LimitNOFILE=65536
# Root with every capability: the core runs components as other users (setuid/setgid) and
# RequiresPrivilege components as root, so User=, NoNewPrivileges= and a reduced
# CapabilityBoundingSet are left out; these protections leave both intact.
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes

[Install]
WantedBy=multi-user.target
",
        root = root.display(),
        exe = exe.display()
    )
}

fn init_script(root: &Path, exe: &Path) -> String {
    format!(
        "# systemd is not in use here: save this as /etc/init.d/lichen (or call it from your init).
#!/bin/sh
### BEGIN INIT INFO
# Provides:          lichen
# Required-Start:    $network $remote_fs
# Required-Stop:     $network $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: Lichen edge runtime
### END INIT INFO
PIDFILE={root}/alts/loader.pid
case \"$1\" in
  start) setsid {exe} core loader --root {root} >>{root}/logs/loader.log 2>&1 </dev/null & ;;
  stop) [ -f \"$PIDFILE\" ] && kill -TERM \"$(cat \"$PIDFILE\")\"
        while [ -f \"$PIDFILE\" ]; do sleep 1; done ;;
  restart) \"$0\" stop; \"$0\" start ;;
  *) echo \"usage: $0 start|stop|restart\"; exit 2 ;;
esac",
        root = root.display(),
        exe = exe.display()
    )
}

/// Starts the loader in its own session, logging to `logs/loader.log`; returns its pid.
fn start_detached(root: &Path, exe: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let log_path = root.join("logs").join("loader.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["core", "loader", "--root"])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid after fork only detaches the child from our terminal and session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(child.id())
}

fn loader_pid(root: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(alts::dir(root).join("loader.pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// Stops a loader started without systemd (and its core), then waits for the root's lock.
fn stop_core(root: &Path) -> anyhow::Result<()> {
    if let Some(pid) = loader_pid(root) {
        // SAFETY: kill(2) with SIGTERM on the pid the loader wrote.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while loader_pid(root).is_some() || lock::is_held(root) {
        if Instant::now() > deadline {
            bail!(
                "the core under {} did not stop within 180 s; stop it and run uninstall again",
                root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn save_record(root: &Path, rec: &Record) -> anyhow::Result<()> {
    let path = record_path(root);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn topmost_missing(path: &Path) -> Option<PathBuf> {
    let mut top = None;
    let mut p = Some(path);
    while let Some(cur) = p {
        if cur.exists() {
            break;
        }
        top = Some(cur.to_path_buf());
        p = cur.parent();
    }
    top
}

fn exists(db: &str, name: &str) -> anyhow::Result<bool> {
    let status = Command::new("getent")
        .args([db, name])
        .stdout(Stdio::null())
        .status()
        .context("running getent")?;
    Ok(status.success())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn need_root() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("installing a system service needs root: run it with sudo");
    }
    Ok(())
}
