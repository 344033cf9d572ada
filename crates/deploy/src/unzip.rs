//! Extracting `Unarchive: ZIP` artifacts without trusting the archive.
//!
//! The core extracts as root, so an archive must never reach outside its extraction folder:
//! - symbolic links are refused outright: a chain of harmless-looking links such as `x -> .`,
//!   `y -> x/..` climbs out of any folder, and component archives have no need of them;
//! - entry names are normalised lexically and refused when absolute, when `..` climbs above the
//!   folder, or when they contain a backslash or NUL;
//! - every folder is created and opened relative to its parent's descriptor with `O_NOFOLLOW`,
//!   every file with `O_CREAT | O_EXCL | O_NOFOLLOW`, so nothing is ever written through a link
//!   and no entry replaces another (duplicates are refused);
//! - the bytes actually inflated and the number of entries are capped ([`ArchiveLimits`]), whatever
//!   the headers claim;
//! - extraction goes to a fresh private sibling folder renamed into place at the end, so a refused
//!   archive leaves nothing behind.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::DeployError;
use crate::fsutil;

/// Bounds on what one archive may unpack to. The defaults fit large ML models and whole
/// application trees while keeping a hostile archive from filling the disk or the inode table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Bytes written for all entries together, counted as they are inflated.
    pub max_total_bytes: u64,
    /// Entries (files and folders) in the archive.
    pub max_entries: usize,
}

impl ArchiveLimits {
    /// 4 GiB and 100 000 entries.
    pub const DEFAULT: ArchiveLimits = ArchiveLimits {
        max_total_bytes: 4 << 30,
        max_entries: 100_000,
    };
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits::DEFAULT
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Extracts `archive` into `target`, replacing it once the whole archive has been extracted.
/// Files get `file_mode` (plus execute bits where the archive marks an entry executable), folders
/// 0755. On any error nothing is left at `target`'s parent but what was there before.
pub fn unarchive_zip(
    archive: &Path,
    target: &Path,
    file_mode: u32,
    limits: &ArchiveLimits,
) -> Result<(), DeployError> {
    let parent = target.parent().unwrap_or(Path::new("."));
    // Shared (0755) whatever the core's umask: component users traverse it to their artifacts.
    fsutil::create_shared_dir_all(parent)
        .map_err(|e| DeployError::io("cannot create directory", parent, e))?;
    let tmp = parent.join(format!(
        ".{}.unzip-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fsutil::remove_tree(&tmp);
    // Fresh and private until complete: nobody else can plant links in it meanwhile.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| DeployError::io("cannot create directory", &tmp, e))?;
    let result = extract_into(archive, &tmp, file_mode, limits).and_then(|()| {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(|e| DeployError::io("cannot set permissions of", &tmp, e))
    });
    if let Err(e) = result {
        let _ = fsutil::remove_tree(&tmp);
        return Err(e);
    }
    fsutil::remove_tree(target).map_err(|e| DeployError::io("cannot replace", target, e))?;
    fs::rename(&tmp, target)
        .map_err(|e| DeployError::io("cannot move unarchived files to", target, e))?;
    Ok(())
}

fn extract_into(
    archive: &Path,
    dest: &Path,
    file_mode: u32,
    limits: &ArchiveLimits,
) -> Result<(), DeployError> {
    let bad = |message: String| DeployError::BadArchive {
        archive: archive.to_path_buf(),
        message,
    };
    let too_big = |message: String| DeployError::ArchiveTooLarge {
        archive: archive.to_path_buf(),
        message,
    };
    let unsafe_entry = |entry: &str, reason: &str| DeployError::UnsafeArchive {
        archive: archive.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let file =
        File::open(archive).map_err(|e| DeployError::io("cannot open archive", archive, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    if zip.len() > limits.max_entries {
        return Err(too_big(format!(
            "{} entries, more than {} entries are allowed",
            zip.len(),
            limits.max_entries
        )));
    }
    // Headers can lie (checked again while inflating), but honest ones fail fast.
    if let Some(declared) = zip.decompressed_size()
        && declared > u128::from(limits.max_total_bytes)
    {
        return Err(too_big(format!(
            "unpacks to {declared} bytes, more than {} bytes are allowed",
            limits.max_total_bytes
        )));
    }
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| DeployError::io("cannot open directory", dest, e.into()))?;
    let mut written: u64 = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().to_string();
        let parts = entry_parts(&name).map_err(|reason| unsafe_entry(&name, reason))?;
        let file_type = entry.unix_mode().map_or(0, |m| m & S_IFMT);
        if entry.is_symlink() || file_type == S_IFLNK {
            return Err(unsafe_entry(
                &name,
                "it is a symbolic link, and archives may not contain symbolic links (one could lead outside the extraction folder)",
            ));
        }
        let is_dir = name.ends_with('/') || file_type == S_IFDIR;
        if !is_dir && file_type != 0 && file_type != S_IFREG {
            return Err(unsafe_entry(
                &name,
                "it is a device, pipe or socket; only files and folders can be extracted",
            ));
        }
        let clash = |e: io::Error, path: &str| match Errno::from_io_error(&e) {
            Some(Errno::EXIST | Errno::NOTDIR | Errno::LOOP) => unsafe_entry(
                &name,
                "it clashes with an entry extracted before (a duplicate name, or a file where a folder is needed)",
            ),
            _ => DeployError::io("cannot extract to", dest.join(path), e),
        };
        if is_dir {
            open_dirs(&root, &parts).map_err(|e| clash(e, &name))?;
            continue;
        }
        let Some((file_name, dirs)) = parts.split_last() else {
            return Err(unsafe_entry(&name, "it names no file"));
        };
        let dir = open_dirs(&root, dirs).map_err(|e| clash(e, &name))?;
        let fd = rustix::fs::openat(
            &dir,
            file_name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| clash(e.into(), &name))?;
        let mut out = File::from(fd);
        let budget = limits.max_total_bytes - written;
        // One byte past the budget is enough to know the cap is exceeded.
        let n = io::copy(&mut (&mut entry).take(budget.saturating_add(1)), &mut out)
            .map_err(|e| bad(format!("cannot extract entry {name:?}: {e}")))?;
        if n > budget {
            return Err(too_big(format!(
                "entry {name:?} inflates past the cap: more than {} bytes are allowed",
                limits.max_total_bytes
            )));
        }
        written += n;
        // Keep executable bits the archive carries, on top of the recipe's permission.
        let exec = entry.unix_mode().map_or(0, |m| m & 0o111);
        let mode = if exec != 0 {
            file_mode | ((file_mode & 0o444) >> 2)
        } else {
            file_mode
        };
        out.set_permissions(fs::Permissions::from_mode(if mode == 0 {
            0o400
        } else {
            mode
        }))
        .map_err(|e| DeployError::io("cannot set permissions of", dest.join(&name), e))?;
    }
    Ok(())
}

/// The normal components of an entry name once `.` and inner `..` are resolved lexically (sound
/// here: the extraction folder holds no links). Refuses names that could mean something else
/// elsewhere or climb out.
fn entry_parts(name: &str) -> Result<Vec<String>, &'static str> {
    if name.contains('\0') {
        return Err("its name contains a NUL byte");
    }
    if name.contains('\\') {
        return Err("its name contains a backslash, which some tools read as a folder separator");
    }
    if name.starts_with('/') {
        return Err("its path is absolute");
    }
    let mut parts: Vec<String> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("its path leaves the extraction folder");
                }
            }
            other => parts.push(other.to_string()),
        }
    }
    Ok(parts)
}

/// Opens (creating as needed, mode 0755) the folder `parts` below `root`, one component at a
/// time and never through a symbolic link.
fn open_dirs(root: &OwnedFd, parts: &[String]) -> io::Result<OwnedFd> {
    let mut current = root.try_clone()?;
    for part in parts {
        let part = OsStr::new(part);
        let created = match rustix::fs::mkdirat(&current, part, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(e.into()),
        };
        let next = rustix::fs::openat(
            &current,
            part,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if created {
            // Unarchived folders are readable and searchable by all, whatever the umask.
            rustix::fs::fchmod(&next, Mode::from_raw_mode(0o755))?;
        }
        current = next;
    }
    Ok(current)
}

#[cfg(test)]
#[path = "unzip_tests.rs"]
mod tests;
