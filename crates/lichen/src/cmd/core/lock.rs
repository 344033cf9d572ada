//! One core per root: an exclusive advisory lock on `<root>/lichen.lock` held for the core's life.

use anyhow::Context;
use rustix::fs::{FlockOperation, flock};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

pub struct RootLock {
    _file: File,
}

impl RootLock {
    pub fn acquire(root: &Path) -> anyhow::Result<RootLock> {
        let path = root.join("lichen.lock");
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            anyhow::bail!(
                "another Lichen core (pid {}) is already running on {}; stop it first or use another --root",
                pid.trim(),
                root.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(RootLock { _file: file })
    }
}

/// Whether a running core holds the root's lock.
pub fn is_held(root: &Path) -> bool {
    let Ok(file) = File::open(root.join("lichen.lock")) else {
        return false;
    };
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = flock(&file, FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}
