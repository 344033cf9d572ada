//! `lichen core loader`: starts the core from `alts/current` and acts on its exit code, as
//! Greengrass's `alts/current/distro/bin/loader` does; the service manager runs this.
//!
//! 0: stop. 100: start again, first switching to a staged `alts/new` (a core update). 101:
//! reboot the device. 102: the core, freshly switched to, gives up (it could not reach the cloud
//! in time): back to `alts/old` at once. Anything else: retried; after [`TRIES`] failures in a row the loader goes back
//! to `alts/old` (when there is one) and names the failed launch directory `alts/broken`, so the
//! old core finds out why and reports the update failed. SIGTERM/SIGINT are passed to the core,
//! which stops its components, and the loader ends with it.

use super::alts;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Failed starts of one launch directory before the loader returns to `alts/old`.
pub const TRIES: u32 = 3;

/// Set in the core's environment: the core is under a loader, so a restart is an exit with 100.
pub const LOADER_ENV: &str = "LICHEN_LOADER";

/// Exit codes of the core, as Greengrass's nucleus uses them.
pub const EXIT_RESTART: i32 = 100;
pub const EXIT_REBOOT: i32 = 101;
/// Lichen's own: a freshly switched core asks to go back to `alts/old` (it wrote why into its
/// launch directory's `failure` file).
pub const EXIT_ROLLBACK: i32 = 102;

#[derive(Args)]
pub struct LoaderArgs {
    /// Core root directory (holds `alts/`).
    #[arg(long, default_value = "/greengrass/v2")]
    pub root: PathBuf,
}

pub fn run(a: LoaderArgs) -> anyhow::Result<ExitCode> {
    let root = std::fs::canonicalize(&a.root).with_context(|| {
        format!(
            "the core root {} (run `lichen core install`)",
            a.root.display()
        )
    })?;
    let pid_file = alts::dir(&root).join("loader.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(supervise(root));
    let _ = std::fs::remove_file(&pid_file);
    result
}

async fn supervise(root: PathBuf) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut failures = 0u32;
    loop {
        if alts::apply_new(&root)? {
            log(&format!(
                "switched to {} (previous kept as alts/old)",
                alts::target(&root, alts::CURRENT).unwrap_or_default()
            ));
            failures = 0;
        }
        let bin = alts::binary(&root, alts::CURRENT);
        let mut child = tokio::process::Command::new(&bin)
            .args(["core", "run", "--root"])
            .arg(&root)
            .env(LOADER_ENV, "1")
            .spawn()
            .with_context(|| format!("starting {}", bin.display()));
        let status = match &mut child {
            Ok(c) => {
                // The loader only waits from here on.
                super::trim::release_executable_pages();
                tokio::select! {
                    s = c.wait() => s?,
                    _ = term.recv() => return stop(c).await,
                    _ = int.recv() => return stop(c).await,
                }
            }
            Err(e) => {
                log(&format!("{e:#}"));
                <std::process::ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(
                    127 << 8,
                )
            }
        };
        let code = std::os::unix::process::ExitStatusExt::signal(&status)
            .map(|s| 128 + s)
            .or(status.code())
            .unwrap_or(1);
        match code {
            0 => return Ok(ExitCode::SUCCESS),
            EXIT_RESTART => {
                failures = 0;
                continue;
            }
            EXIT_REBOOT => {
                log("the core asked for a reboot");
                let _ = std::process::Command::new("reboot").status();
                return Ok(ExitCode::SUCCESS);
            }
            EXIT_ROLLBACK if alts::roll_back(&root)? => {
                log(&format!(
                    "the new core gave up; returned to alts/{}, the failed launch directory is alts/broken",
                    alts::target(&root, alts::CURRENT).unwrap_or_default()
                ));
                failures = 0;
                continue;
            }
            _ => {
                failures += 1;
                log(&format!(
                    "the core in alts/{} exited with {code} ({failures} of {TRIES})",
                    alts::target(&root, alts::CURRENT).unwrap_or_default()
                ));
                if failures < TRIES {
                    continue;
                }
                if alts::roll_back(&root)? {
                    log(&format!(
                        "returned to alts/{}; the failed launch directory is alts/broken",
                        alts::target(&root, alts::CURRENT).unwrap_or_default()
                    ));
                    failures = 0;
                    continue;
                }
                // No older core to go back to: the service manager decides (Restart=on-failure).
                return Ok(ExitCode::from(code.clamp(1, 255) as u8));
            }
        }
    }
}

async fn stop(child: &mut tokio::process::Child) -> anyhow::Result<ExitCode> {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let status = child.wait().await?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The loader's lines go to its stderr: the journal under systemd, `logs/loader.log` otherwise.
fn log(line: &str) {
    eprintln!("lichen loader: {line}");
}
