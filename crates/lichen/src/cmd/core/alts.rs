//! The root's launch directories (`alts/`), as Greengrass's loader keeps them.
//!
//! `alts/<name>/bin/lichen` is one core binary; `alts/current` names the one the loader starts,
//! `alts/new` one staged by a core update, `alts/old` the one to fall back to, `alts/broken` one
//! that failed to start. Every change of a name is a symlink written beside it and renamed over it,
//! so a kill -9 at any point leaves each name pointing at a complete launch directory, and a switch
//! cut short is finished (or found already done) by the next loader start.

use anyhow::Context;
use std::path::{Path, PathBuf};

pub const CURRENT: &str = "current";
pub const NEW: &str = "new";
pub const OLD: &str = "old";
pub const BROKEN: &str = "broken";
/// The launch directory `core install` creates.
pub const INIT: &str = "init";

pub fn dir(root: &Path) -> PathBuf {
    root.join("alts")
}

/// The binary inside launch directory `name` (a link such as `current` or a real directory).
pub fn binary(root: &Path, name: &str) -> PathBuf {
    dir(root).join(name).join("bin").join("lichen")
}

/// Where link `name` points (a launch directory's name), if it exists.
pub fn target(root: &Path, name: &str) -> Option<String> {
    std::fs::read_link(dir(root).join(name))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// Points link `name` at launch directory `to`, atomically, and makes the change durable.
pub fn point(root: &Path, name: &str, to: &str) -> anyhow::Result<()> {
    let alts = dir(root);
    let tmp = alts.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(to, &tmp)
        .with_context(|| format!("creating the link {}", tmp.display()))?;
    std::fs::rename(&tmp, alts.join(name))
        .with_context(|| format!("pointing {}/{name} at {to}", alts.display()))?;
    sync_dir(&alts)
}

/// Removes link `name` (absent is fine) and makes the removal durable.
pub fn unlink(root: &Path, name: &str) -> anyhow::Result<()> {
    let path = dir(root).join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(&dir(root)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Copies the binary `from` into a fresh launch directory `alts/<name>/bin/lichen` (0755),
/// written under a temporary name and renamed, so a half-copied binary is never a launch directory.
/// Executables the core runs from beside itself (`lichen.Inference`'s engine, the OPC UA
/// sources of `lichen.IndustrialCollector`), staged with it when they lie beside the binary being
/// staged.
pub const COMPANIONS: [&str; 2] = ["lichen-inference", "lichen-opcua"];

pub fn stage_binary(root: &Path, name: &str, from: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let alts = dir(root);
    std::fs::create_dir_all(&alts).with_context(|| format!("creating {}", alts.display()))?;
    let tmp = alts.join(format!(".{name}.staging"));
    let _ = std::fs::remove_dir_all(&tmp);
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for d in [&tmp, &bin] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    // The core, and the worker executables it runs from beside itself where they came with it.
    let mut copies = vec![(from.to_path_buf(), bin.join("lichen"))];
    for companion in COMPANIONS {
        let src = from.with_file_name(companion);
        if src.is_file() {
            copies.push((src, bin.join(companion)));
        }
    }
    for (src, dest) in copies {
        std::fs::copy(&src, &dest)
            .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&dest)?.sync_all()?;
    }
    let final_dir = alts.join(name);
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
    sync_dir(&alts)
}

/// Finishes a staged switch: `old` ← what `current` names, `current` ← what `new` names, `new`
/// removed. Returns whether a switch happened. Safe to repeat after a kill at any step: once
/// `current` already names `new`'s target, only the removal of `new` is left.
pub fn apply_new(root: &Path) -> anyhow::Result<bool> {
    let Some(new) = target(root, NEW) else {
        return Ok(false);
    };
    let current = target(root, CURRENT);
    if current.as_deref() != Some(new.as_str()) {
        if let Some(cur) = &current {
            point(root, OLD, cur)?;
        }
        point(root, CURRENT, &new)?;
    }
    unlink(root, NEW)?;
    Ok(true)
}

/// Returns to `old` after the current launch directory failed: `broken` ← current, `current` ←
/// old, `old` removed. Returns false (and changes nothing) when there is no `old`.
pub fn roll_back(root: &Path) -> anyhow::Result<bool> {
    let Some(old) = target(root, OLD) else {
        return Ok(false);
    };
    if let Some(cur) = target(root, CURRENT)
        && cur != old
    {
        point(root, BROKEN, &cur)?;
    }
    point(root, CURRENT, &old)?;
    unlink(root, OLD)?;
    Ok(true)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(names: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::create_dir_all(dir(t.path()).join(n).join("bin")).unwrap();
        }
        t
    }

    #[test]
    fn switch_keeps_old_and_a_repeat_after_a_cut_is_harmless() {
        let t = root_with(&["a", "b"]);
        let r = t.path();
        point(r, CURRENT, "a").unwrap();
        point(r, NEW, "b").unwrap();
        assert!(apply_new(r).unwrap());
        assert_eq!(target(r, CURRENT).as_deref(), Some("b"));
        assert_eq!(target(r, OLD).as_deref(), Some("a"));
        assert_eq!(target(r, NEW), None);
        // A kill after `current` moved but before `new` went: the repeat must keep old = a.
        point(r, NEW, "b").unwrap();
        assert!(apply_new(r).unwrap());
        assert_eq!(target(r, OLD).as_deref(), Some("a"));
        assert_eq!(target(r, CURRENT).as_deref(), Some("b"));
        assert!(!apply_new(r).unwrap());
    }

    #[test]
    fn roll_back_marks_broken_and_needs_an_old() {
        let t = root_with(&["a", "b"]);
        let r = t.path();
        point(r, CURRENT, "b").unwrap();
        assert!(!roll_back(r).unwrap());
        point(r, OLD, "a").unwrap();
        assert!(roll_back(r).unwrap());
        assert_eq!(target(r, CURRENT).as_deref(), Some("a"));
        assert_eq!(target(r, BROKEN).as_deref(), Some("b"));
        assert_eq!(target(r, OLD), None);
    }
}
