//! A size-rotated log file for the core's own log (`logs/lichen.log`) and the built-in services'
//! logs (`logs/<component>.log`), used as a tracing writer.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

struct Inner {
    path: PathBuf,
    /// `None` until the first write, for a log that should exist only once something is logged.
    file: Option<File>,
    written: u64,
    max_bytes: u64,
    keep: usize,
}

impl Inner {
    fn rotate(&mut self) -> io::Result<()> {
        for i in (1..self.keep).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = Some(open(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// A cloneable handle; each `write` appends whole lines and rotates past `max_bytes`.
#[derive(Clone)]
pub struct RotatingFile(Arc<Mutex<Inner>>);

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let file = open(path)?;
        let written = file.metadata()?.len();
        Ok(Self(Arc::new(Mutex::new(Inner {
            path: path.to_path_buf(),
            file: Some(file),
            written,
            max_bytes,
            keep,
        }))))
    }

    /// Like [`RotatingFile::open`], but creates or opens the file only when the first line is
    /// written (a built-in service's log appears once the service logs something).
    pub fn open_on_first_write(path: &Path, max_bytes: u64, keep: usize) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            path: path.to_path_buf(),
            file: None,
            written: 0,
            max_bytes,
            keep,
        })))
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if inner.file.is_none() {
            let file = open(&inner.path)?;
            inner.written = file.metadata()?.len();
            inner.file = Some(file);
        }
        if inner.written + buf.len() as u64 > inner.max_bytes && inner.written > 0 {
            inner.rotate()?;
        }
        inner.file.as_mut().expect("opened above").write_all(buf)?;
        inner.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RotatingFile {
    type Writer = RotatingFile;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_the_size_limit_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lichen.log");
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        for i in 0..30 {
            writeln!(f, "line number {i:04}").unwrap();
        }
        assert!(path.exists());
        assert!(rotated(&path, 1).exists());
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.contains("line number 0029"));
    }

    #[test]
    fn a_log_opened_on_first_write_appears_with_its_first_line_and_appends_to_an_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aws.greengrass.StreamManager.log");
        let mut f = RotatingFile::open_on_first_write(&path, 1000, 2);
        assert!(!path.exists(), "nothing logged yet, no file");
        writeln!(f, "first").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");
        drop(f);
        let mut again = RotatingFile::open_on_first_write(&path, 1000, 2);
        writeln!(again, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\nsecond\n");
    }
}
