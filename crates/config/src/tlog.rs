//! The durable transaction log `config.tlog`.
//!
//! Format: one record per line, `<crc32 as 8 hex digits> <byte length> <json>\n`, where the CRC and
//! length cover the JSON text. The JSON is one Greengrass-style entry object
//! (`{"TS":…,"TP":[…],"W":"changed","V":…}`) or an array of them for a multi-change transaction;
//! a record is applied whole or not at all. Compact JSON never contains a raw newline, so a line
//! is a record.
//!
//! Recovery rule: replay stops at the first record that is torn (no newline), fails its length or
//! CRC, or does not decode; that record and everything after it are dropped (logged at `warn` for
//! a torn tail, `error` otherwise, with a copy of the damaged file kept as `config.tlog.corrupt`),
//! and the file is truncated to the last good record so later appends are not hidden behind it.
//!
//! Compaction writes the whole persisted tree to `config.tlog+`, fsyncs it, renames it over
//! `config.tlog` and fsyncs the directory. A `config.tlog+` found at open is an unfinished
//! compaction and is deleted: the rename is the commit point, so `config.tlog` is always complete.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file the store writes: the configuration holds secrets (keys' paths, tokens'
/// policies, component configuration) and is the core's alone, whatever the process umask.
pub(crate) const PRIVATE_FILE: u32 = 0o600;
const PRIVATE_DIR: u32 = 0o700;

/// Creates `dir` if needed and makes it (and so everything in it) reachable by its owner only;
/// a directory left readable by an earlier version is tightened.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(dir).map_err(|e| ConfigError::io("create directory", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))
        .map_err(|e| ConfigError::io("restrict the permissions of", dir, e))
}

/// Creates (truncating) a file only its owner may read or write.
pub(crate) fn private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)
}

use serde_json::Value;

use crate::ConfigError;
use crate::tree::{Entry, Node, apply_entry};

pub(crate) const TLOG: &str = "config.tlog";
pub(crate) const TLOG_NEW: &str = "config.tlog+";
pub(crate) const TLOG_CORRUPT: &str = "config.tlog.corrupt";

/// Encodes one record line (with its newline).
pub(crate) fn encode_record(entries: &[Entry]) -> Vec<u8> {
    let json = match entries {
        [one] => one.to_json(),
        many => Value::Array(many.iter().map(Entry::to_json).collect()),
    };
    let text = serde_json::to_string(&json).expect("JSON values always serialise");
    let crc = crc32fast::hash(text.as_bytes());
    format!("{crc:08x} {} {text}\n", text.len()).into_bytes()
}

/// Decodes one record line (without its newline).
pub(crate) fn decode_record(line: &[u8]) -> Result<Vec<Entry>, &'static str> {
    let mut parts = line.splitn(3, |b| *b == b' ');
    let crc = parts.next().ok_or("no checksum")?;
    let len = parts.next().ok_or("no length")?;
    let json = parts.next().ok_or("no body")?;
    let crc = std::str::from_utf8(crc)
        .ok()
        .filter(|s| s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or("malformed checksum")?;
    let len: usize = std::str::from_utf8(len)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or("malformed length")?;
    if len != json.len() {
        return Err("length mismatch");
    }
    if crc32fast::hash(json) != crc {
        return Err("checksum mismatch");
    }
    let value: Value = serde_json::from_slice(json).map_err(|_| "body is not JSON")?;
    match &value {
        Value::Array(items) if !items.is_empty() => items.iter().map(Entry::from_json).collect(),
        Value::Object(_) => Ok(vec![Entry::from_json(&value)?]),
        _ => Err("body is neither an entry nor a list of entries"),
    }
}

/// What replaying a log produced.
pub(crate) struct Replay {
    pub root: Node,
    /// Bytes of good records from the start of the file.
    pub good_len: u64,
    /// Entries applied.
    pub entries: u64,
    /// The first bad record: offset, reason, and whether it is just a torn tail.
    pub damage: Option<(u64, &'static str, bool)>,
}

/// Replays log bytes into a fresh tree, stopping at the first bad record.
pub(crate) fn replay(bytes: &[u8]) -> Replay {
    let mut root = Node::empty(0);
    let mut pos = 0usize;
    let mut entries = 0u64;
    let mut scratch = Vec::new();
    let mut damage = None;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|b| *b == b'\n') else {
            damage = Some((pos as u64, "record has no end of line", true));
            break;
        };
        match decode_record(&bytes[pos..pos + nl]) {
            Ok(record) => {
                for entry in &record {
                    apply_entry(&mut root, entry, &mut scratch);
                    scratch.clear();
                }
                entries += record.len() as u64;
                pos += nl + 1;
            }
            Err(reason) => {
                let is_last = pos + nl + 1 == bytes.len();
                damage = Some((pos as u64, reason, is_last));
                break;
            }
        }
    }
    Replay {
        root,
        good_len: pos as u64,
        entries,
        damage,
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ConfigError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ConfigError::io("fsync directory", dir, e))
}

/// The open log file and the bookkeeping for automatic compaction.
pub(crate) struct Tlog {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    len: u64,
    /// Entries in the file beyond what a compaction of the current tree would write.
    pub excess_entries: u64,
    compact_after_entries: u64,
}

impl Tlog {
    /// Opens (creating if needed) the log in `dir` and replays it.
    pub(crate) fn open(
        dir: &Path,
        compact_after_entries: u64,
    ) -> Result<(Tlog, Node), ConfigError> {
        private_dir(dir)?;
        let path = dir.join(TLOG);
        let unfinished = dir.join(TLOG_NEW);
        if unfinished.exists() {
            tracing::warn!(file = %unfinished.display(), "removing the output of an unfinished compaction; {} is complete", path.display());
            std::fs::remove_file(&unfinished)
                .map_err(|e| ConfigError::io("remove", &unfinished, e))?;
        }
        let existed = path.exists();
        let bytes = if existed {
            std::fs::read(&path).map_err(|e| ConfigError::io("read", &path, e))?
        } else {
            Vec::new()
        };
        let replay = replay(&bytes);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(PRIVATE_FILE)
            .open(&path)
            .map_err(|e| ConfigError::io("open for appending", &path, e))?;
        // A log written by an earlier version under a permissive umask.
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))
            .map_err(|e| ConfigError::io("restrict the permissions of", &path, e))?;
        if let Some((offset, reason, torn)) = replay.damage {
            let dropped = bytes.len() as u64 - offset;
            if torn {
                tracing::warn!(file = %path.display(), offset, dropped, reason, "dropping a torn record at the end of the configuration log (interrupted write)");
            } else {
                let copy = dir.join(TLOG_CORRUPT);
                tracing::error!(file = %path.display(), offset, dropped, reason, copy = %copy.display(), "configuration log is damaged; keeping the records before the damage and dropping the rest; the damaged file is kept for inspection");
                private_file(&copy)
                    .and_then(|mut f| f.write_all(&bytes))
                    .map_err(|e| ConfigError::io("write", &copy, e))?;
            }
            file.set_len(replay.good_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| ConfigError::io("truncate", &path, e))?;
        }
        if !existed {
            fsync_dir(dir)?;
        }
        let excess_entries = replay
            .entries
            .saturating_sub(replay.root.persisted_entry_count());
        let tlog = Tlog {
            dir: dir.to_path_buf(),
            path,
            file,
            len: replay.good_len,
            excess_entries,
            compact_after_entries,
        };
        Ok((tlog, replay.root))
    }

    /// Appends one record and fsyncs it. On failure the file is cut back to its previous length,
    /// so a half-written record never hides later ones.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), ConfigError> {
        let record = encode_record(entries);
        let result = self
            .file
            .write_all(&record)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            if let Err(cut) = self.file.set_len(self.len) {
                tracing::error!(file = %self.path.display(), error = %cut, "cannot cut a failed append back; the next open drops it as a torn record");
            }
            return Err(ConfigError::io("append to", &self.path, e));
        }
        self.len += record.len() as u64;
        self.excess_entries += entries.len() as u64;
        Ok(())
    }

    pub(crate) fn wants_compaction(&self) -> bool {
        self.excess_entries >= self.compact_after_entries
    }

    /// Rewrites the log from the tree (see the module docs for the crash-safety argument).
    pub(crate) fn compact(&mut self, root: &Node) -> Result<(), ConfigError> {
        let tmp = self.dir.join(TLOG_NEW);
        let file = private_file(&tmp).map_err(|e| ConfigError::io("create", &tmp, e))?;
        let mut out = BufWriter::new(file);
        let mut len = 0u64;
        for entry in root.dump_entries() {
            let record = encode_record(std::slice::from_ref(&entry));
            out.write_all(&record)
                .map_err(|e| ConfigError::io("write", &tmp, e))?;
            len += record.len() as u64;
        }
        let file = out
            .into_inner()
            .map_err(|e| ConfigError::io("write", &tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| ConfigError::io("fsync", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(|e| ConfigError::io("rename", &tmp, e))?;
        fsync_dir(&self.dir)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| ConfigError::io("open for appending", &self.path, e))?;
        self.len = len;
        self.excess_entries = 0;
        tracing::debug!(file = %self.path.display(), bytes = len, "compacted configuration log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Op;
    use serde_json::json;

    #[test]
    fn record_round_trip() {
        let entries = vec![
            Entry {
                path: vec!["a".into(), "b\nc".into()],
                ts: 3,
                op: Op::Changed(json!("line\nbreak")),
            },
            Entry {
                path: vec!["d".into()],
                ts: 4,
                op: Op::Removed,
            },
        ];
        let line = encode_record(&entries);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(decode_record(&line[..line.len() - 1]).unwrap(), entries);
        let single = encode_record(&entries[1..]);
        let text = String::from_utf8(single.clone()).unwrap();
        assert!(
            text.ends_with("{\"TS\":4,\"TP\":[\"d\"],\"W\":\"removed\"}\n"),
            "{text}"
        );
        assert_eq!(
            decode_record(&single[..single.len() - 1]).unwrap(),
            entries[1..]
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let line = encode_record(&[Entry {
            path: vec!["services".into(), "c".into()],
            ts: 1_700_000_000_000,
            op: Op::Changed(json!([1, 2])),
        }]);
        let body = &line[..line.len() - 1];
        for i in 0..body.len() {
            for bit in 0..8 {
                let mut damaged = body.to_vec();
                damaged[i] ^= 1 << bit;
                // A flip may land on a newline, splitting the line; the first part must be bad.
                let first = damaged.split(|b| *b == b'\n').next().unwrap();
                assert!(decode_record(first).is_err(), "byte {i} bit {bit}");
            }
        }
    }
}
