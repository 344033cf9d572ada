//! Per-component log files: one timestamped line per output line or state change, rotated by size.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Component logs are the core's, as under Greengrass (root-owned): a component's output may hold
/// what other users must not read, and the component itself has IPC, not its log, to talk to the core.
const LOG_MODE: u32 = 0o600;
use std::sync::Mutex;

use time::OffsetDateTime;
use time::macros::format_description;

/// `<logs_dir>/<component>.log`, shared by every step of that component.
pub(crate) struct ComponentLog {
    component: String,
    file: Mutex<LogFile>,
}

struct LogFile {
    path: PathBuf,
    handle: Option<File>,
    size: u64,
    max_bytes: u64,
    keep_files: usize,
}

pub(crate) fn timestamp_now() -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}

impl ComponentLog {
    pub(crate) fn new(logs_dir: &Path, component: &str, max_bytes: u64, keep_files: usize) -> Self {
        ComponentLog {
            component: component.to_string(),
            file: Mutex::new(LogFile {
                path: logs_dir.join(format!("{component}.log")),
                handle: None,
                size: 0,
                max_bytes,
                keep_files,
            }),
        }
    }

    /// Appends `<ts> <level> [<component>] <context>: <text>`; failures go to tracing, never to the caller,
    /// because a full disk must not stop a component.
    pub(crate) fn write(&self, level: &str, context: &str, text: &str) {
        let line = format!(
            "{} {level} [{}] {context}: {text}\n",
            timestamp_now(),
            self.component
        );
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(err) = file.append(line.as_bytes()) {
            tracing::warn!(path = %file.path.display(), error = %err, "cannot write component log");
        }
    }
}

impl LogFile {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.handle.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let handle = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(LOG_MODE)
                .open(&self.path)?;
            self.size = handle.metadata()?.len();
            self.handle = Some(handle);
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let handle = self.handle.as_mut().expect("log file opened above");
        handle.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `<c>.log` → `<c>.log.1` → … → `<c>.log.<keep_files>`; the oldest falls off.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.handle = None;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep_files > 0 {
            for n in (1..self.keep_files).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        let handle = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(LOG_MODE)
            .open(&self.path)?;
        self.size = 0;
        self.handle = Some(handle);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = ComponentLog::new(dir.path(), "rot", 200, 2);
        for i in 0..40 {
            log.write(
                "INFO",
                "lifecycle=Run stream=stdout",
                &format!("line number {i:03}"),
            );
        }
        let main = std::fs::read_to_string(dir.path().join("rot.log")).unwrap();
        let first = std::fs::read_to_string(dir.path().join("rot.log.1")).unwrap();
        let second = std::fs::read_to_string(dir.path().join("rot.log.2")).unwrap();
        assert!(!dir.path().join("rot.log.3").exists());
        for content in [&main, &first, &second] {
            assert!(content.len() <= 200, "file over the size limit: {content}");
        }
        assert!(main.contains("line number 039"));
        assert!(!main.contains("line number 000"));
        // Lines continue across files without a gap: the newest rotated file ends just before the live one starts.
        let last_of_first = first.lines().last().unwrap();
        let first_of_main = main.lines().next().unwrap();
        let n = |l: &str| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap();
        assert_eq!(n(last_of_first) + 1, n(first_of_main));
        let line = main.lines().next().unwrap();
        let re_ok = line.len() > 24
            && line.as_bytes()[10] == b'T'
            && line[..24].ends_with('Z')
            && line.contains(" INFO [rot] lifecycle=Run stream=stdout: line number");
        assert!(re_ok, "unexpected line format: {line}");
    }
}
