//! Durable file writes and small directory helpers.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A new file only its owner may read: deployment records and snapshots are the core's, and the
/// copy of an artifact gets its recipe's mode only once it is complete and verified.
fn private_file(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Creates `dir` and any missing parent as readable and searchable by all (0755), whatever the
/// umask: artifact folders must be reachable by the component users (spec §1.7).
pub(crate) fn create_shared_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content, never a torn
/// file: temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut f = private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Copies `from` to `to` durably (temp + fsync + rename). The target may be read-only: rename
/// replaces it without needing write permission on the file itself.
pub(crate) fn copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    let dir = to
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", to.display())))?;
    // Artifacts only: their folders are reachable by component users.
    create_shared_dir_all(dir)?;
    let file_name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut src = File::open(from)?;
        let mut dst = private_file(&tmp)?;
        io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
    }
    fs::rename(&tmp, to)?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a directory tree, first making every directory in it writable by us so read-only
/// artifact trees can be deleted. Missing paths are fine.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            remove_tree(&entry.path())?;
        }
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    }
}

/// Lists the files under `dir` recursively (symlinks are not followed), as paths relative to `dir`,
/// sorted so processing order is deterministic.
pub(crate) fn walk_files(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let child = rel.join(entry.file_name());
            if ft.is_dir() {
                stack.push(child);
            } else if ft.is_file() {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}
