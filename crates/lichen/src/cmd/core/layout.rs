//! The core root's folders and who may read them.
//!
//! The core runs with umask 0077 (set first thing in `core run`), so what it creates is its own;
//! this module names the few places other users must reach and sets their modes explicitly, and
//! tightens state that an earlier version left readable under a permissive umask.
//!
//! Shared (0755): the root, `work/` and `packages/artifacts[-unarchived]/…` — component users
//! traverse them to reach the IPC socket (0666, set by the IPC server), their own work folder
//! (0700, owned by their user, set by the supervisor) and their artifacts (modes from the recipe's
//! `Permission`, set by the deployment engine). Private (0700 folders, owner-only files): the
//! configuration, deployments, logs, recipes, the CLI's tokens and the core's own work folders
//! (spooler, stream store).

use anyhow::Context;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Process umask of the core: group and others get nothing unless a mode says otherwise.
pub const CORE_UMASK: u32 = 0o077;

const SHARED: &[&str] = &[
    "work",
    "packages",
    "packages/artifacts",
    "packages/artifacts-unarchived",
];

/// Created private at every start.
const PRIVATE: &[&str] = &[
    "config",
    "logs",
    "deployments",
    "packages/recipes",
    "work/aws.greengrass.Nucleus",
];

/// Tightened when present: made by services only once deployed.
const PRIVATE_IF_PRESENT: &[&str] = &[
    "cli_ipc_info",
    "work/.groups",
    "work/aws.greengrass.StreamManager",
    "lichen.lock",
];

/// Sets the umask every later file and folder of the core is created under.
pub fn set_core_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(CORE_UMASK));
}

/// Creates the root (0755 when new) before anything else is written in it.
pub fn create_root(root: &Path) -> anyhow::Result<()> {
    if root.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(root)
        .with_context(|| format!("creating the core root {}", root.display()))?;
    set_mode(root, 0o755)
}

/// Creates the root's folders with their modes and tightens the core's own state.
pub fn prepare(root: &Path) -> anyhow::Result<()> {
    for rel in SHARED {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(&dir, 0o755)?;
    }
    for rel in PRIVATE {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        make_private(&dir)?;
    }
    for rel in PRIVATE_IF_PRESENT {
        let path = root.join(rel);
        if std::fs::symlink_metadata(&path).is_ok() {
            make_private(&path)?;
        }
    }
    Ok(())
}

/// Takes group and others' bits off `path` and everything under it (symlinks are not followed).
pub fn make_private(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("reading the permissions of {}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    let wanted = if meta.is_dir() { 0o700 } else { mode & 0o700 };
    if mode != wanted {
        set_mode(path, wanted)?;
    }
    if meta.is_dir() {
        let entries =
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?;
        for entry in entries {
            make_private(&entry?.path())?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the permissions of {} to {mode:o}", path.display()))
}
