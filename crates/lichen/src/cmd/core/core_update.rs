//! Core updates through deployments (the kernel-update path, spec §6.6 step 4): a deployment
//! that moves `aws.greengrass.Nucleus` to another version stages that version's `lichen`
//! artifact as launch directory `alts/nucleus-<version>`, names it `alts/new`, and the core exits
//! 100; the loader switches to it (keeping `alts/old`). The resumed deployment asks
//! [`outcome`]: running from the staged directory means success; finding it named `alts/broken`
//! means the loader went back after the new core failed to start, and the deployment fails with
//! that cause.
//!
//! A staged launch directory holds the file `unconfirmed` until the new core has proved itself:
//! at its first start(s) it must reach the cloud within `lichen.nucleusUpdate.connectTimeoutSeconds`
//! ([`DEFAULT_CONNECT_TIMEOUT_S`]) before it resumes any deployment; if it cannot, it writes the
//! cause to `failure` in its launch directory and exits [`loader::EXIT_ROLLBACK`], and the loader
//! goes back to `alts/old` at once.

use super::{alts, loader};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// In a staged launch directory: the nucleus version it was deployed as.
const VERSION_FILE: &str = "version";
/// In a staged launch directory: present until the new core has reached the cloud once.
const UNCONFIRMED_FILE: &str = "unconfirmed";
/// In a launch directory the core left for `alts/old`: why (read by the old core's report).
const FAILURE_FILE: &str = "failure";

/// How long a freshly switched core may take to reach the cloud (Greengrass's nucleus gives
/// a new core no such bound; a few minutes covers a slow network and the cloud link's backoff).
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 300;

/// The core's root (set once at start; the deployment hooks have no other handle on it).
pub fn set_root(root: &Path) {
    let _ = ROOT.set(root.to_path_buf());
}

fn launch_dir(version: &str) -> String {
    format!("nucleus-{version}")
}

/// Stages the new core from the component's artifacts; Err(cause) when it cannot.
pub fn stage(version: &str, artifacts: &Path) -> Result<(), String> {
    let root = ROOT.get().ok_or("the core root is not known yet")?;
    if std::env::var_os(loader::LOADER_ENV).is_none() {
        return Err(format!(
            "updating aws.greengrass.Nucleus to {version} needs the loader: install the core with \
             `lichen core install` (it runs `lichen core loader`)"
        ));
    }
    let bin = artifacts.join("lichen");
    if !bin.is_file() {
        return Err(format!(
            "aws.greengrass.Nucleus {version} has no `lichen` artifact (looked for {}): publish \
             the core binary under that name",
            bin.display()
        ));
    }
    let name = launch_dir(version);
    if alts::target(root, alts::CURRENT).as_deref() == Some(name.as_str()) {
        return Err(format!(
            "aws.greengrass.Nucleus {version} is the core running now (alts/{name})"
        ));
    }
    alts::stage_binary(root, &name, &bin).map_err(|e| format!("{e:#}"))?;
    let dir = alts::dir(root).join(&name);
    std::fs::write(dir.join(VERSION_FILE), version)
        .map_err(|e| format!("recording the staged core's version: {e}"))?;
    // Durable before `alts/new` names the directory: a switched core must always find it.
    std::fs::File::create(dir.join(UNCONFIRMED_FILE))
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::File::open(&dir)?.sync_all())
        .map_err(|e| format!("marking the staged core unconfirmed: {e}"))?;
    if alts::target(root, alts::BROKEN).as_deref() == Some(name.as_str()) {
        alts::unlink(root, alts::BROKEN).map_err(|e| format!("{e:#}"))?;
    }
    alts::point(root, alts::NEW, &name).map_err(|e| format!("{e:#}"))?;
    tracing::warn!(
        version,
        "staged the new core as alts/new; restarting into it"
    );
    Ok(())
}

/// The nucleus version the running core was deployed as (`alts/current/version`), when it runs
/// under the loader from a launch directory a deployment staged.
pub fn running_version(root: &Path) -> Option<String> {
    std::env::var_os(loader::LOADER_ENV)?;
    let text =
        std::fs::read_to_string(alts::dir(root).join(alts::CURRENT).join(VERSION_FILE)).ok()?;
    let v = text.trim();
    semver::Version::parse(v).ok().map(|_| v.to_string())
}

/// The nucleus version of the running core when it was switched to by a deployment and has not
/// reached the cloud yet (its launch directory still holds `unconfirmed`).
pub fn unconfirmed(root: &Path) -> Option<String> {
    let dir = alts::dir(root).join(alts::CURRENT);
    if !dir.join(UNCONFIRMED_FILE).exists() {
        return None;
    }
    running_version(root)
}

/// The running core reached the cloud: it stays, whatever happens to the deployment after.
pub fn confirm(root: &Path) -> anyhow::Result<()> {
    let dir = alts::dir(root).join(alts::CURRENT);
    match std::fs::remove_file(dir.join(UNCONFIRMED_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

/// Records why the running core gives up, for the old core to report once the loader went back.
pub fn record_failure(root: &Path, cause: &str) -> anyhow::Result<()> {
    let dir = alts::dir(root).join(alts::CURRENT);
    let tmp = dir.join(format!(".{FAILURE_FILE}.tmp"));
    std::fs::write(&tmp, cause)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(FAILURE_FILE))?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

/// After a deployment that switched to nucleus `version` failed and rolled its components back:
/// when this core is that version and an `alts/old` exists, records why (for the loader's log
/// readers) and returns the note for the deployment's cause; the core then exits
/// [`loader::EXIT_ROLLBACK`] at the restart the deployment asks for.
pub fn prepare_binary_rollback(version: &str, cause: &str) -> anyhow::Result<Option<String>> {
    let Some(root) = ROOT.get() else {
        return Ok(None);
    };
    let name = launch_dir(version);
    let Some(old) = alts::target(root, alts::OLD) else {
        return Ok(None);
    };
    if std::env::var_os(loader::LOADER_ENV).is_none()
        || alts::target(root, alts::CURRENT).as_deref() != Some(name.as_str())
    {
        return Ok(None);
    }
    tracing::warn!(
        version,
        old,
        "the update's components were rolled back; going back to the previous core binary"
    );
    record_failure(
        root,
        &format!(
            "the deployment failed after the switch to aws.greengrass.Nucleus {version} and was \
             rolled back, the core binary too: {cause}"
        ),
    )?;
    Ok(Some(format!(
        "the core binary was rolled back too (from aws.greengrass.Nucleus {version} to alts/{old})"
    )))
}

/// After the restart: Ok when this core runs from the staged launch directory.
pub fn outcome(version: &str) -> Result<(), String> {
    let root = ROOT.get().ok_or("the core root is not known yet")?;
    let name = launch_dir(version);
    let current = alts::target(root, alts::CURRENT).unwrap_or_default();
    if current == name {
        return Ok(());
    }
    if alts::target(root, alts::BROKEN).as_deref() == Some(name.as_str()) {
        if let Ok(cause) = std::fs::read_to_string(alts::dir(root).join(&name).join(FAILURE_FILE)) {
            return Err(format!(
                "{}; the loader went back to alts/{current} and named the failed one alts/broken",
                cause.trim()
            ));
        }
        return Err(format!(
            "the new core (aws.greengrass.Nucleus {version}) failed to start {} times; the loader \
             went back to alts/{current} and named the failed one alts/broken (see the loader's \
             log: logs/loader.log or the service's journal)",
            loader::TRIES
        ));
    }
    Err(format!(
        "the core restarted without switching to aws.greengrass.Nucleus {version} (alts/current \
         names {current:?})"
    ))
}
