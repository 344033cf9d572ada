//! Segment files: one run of records on disk or in memory, its preallocated tail and removal.

use super::PREALLOC_CHUNK;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

pub(super) enum Storage {
    File { file: Arc<File>, path: PathBuf },
    Memory(Vec<u8>),
}

pub(super) struct Segment {
    pub(super) first_seq: u64,
    pub(super) offsets: Vec<u32>,
    /// Logical size: the end of the last record.
    pub(super) bytes: u64,
    /// File length; bytes between `bytes` and `allocated` are zeros written ahead.
    pub(super) allocated: u64,
    pub(super) last_ingest_ms: i64,
    pub(super) storage: Storage,
}

impl Segment {
    pub(super) fn len(&self) -> u64 {
        self.offsets.len() as u64
    }
    pub(super) fn end_seq(&self) -> u64 {
        self.first_seq + self.len()
    }
    pub(super) fn record_end(&self, i: usize) -> u64 {
        self.offsets
            .get(i + 1)
            .map(|&o| o as u64)
            .unwrap_or(self.bytes)
    }
    /// Cuts a preallocated zero tail off a segment that takes no more appends.
    pub(super) fn seal(&mut self) {
        if let Storage::File { file, path } = &self.storage
            && self.allocated > self.bytes
        {
            match file.set_len(self.bytes) {
                Ok(()) => self.allocated = self.bytes,
                Err(e) => {
                    // Harmless: recovery treats a zero tail as free space.
                    tracing::warn!(path = %path.display(), error = %e, "could not trim a sealed segment")
                }
            }
        }
    }

    /// Zero-fills the file ahead of `need` (the end of the record about to be written), up to
    /// [`PREALLOC_CHUNK`] past the write position but not past the segment size. Best effort:
    /// when the disk is full the record is written without it and fails or succeeds alone.
    pub(super) fn preallocate(&mut self, need: u64, seg_size: u64) {
        let Storage::File { file, path } = &self.storage else {
            return;
        };
        if need <= self.allocated {
            return;
        }
        let target = (self.bytes + PREALLOC_CHUNK).min(seg_size);
        if target <= need {
            return;
        }
        let zeros = vec![0u8; (target - self.allocated) as usize];
        match file.write_all_at(&zeros, self.allocated) {
            Ok(()) => self.allocated = target,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot preallocate segment space");
                let _ = file.set_len(self.allocated);
            }
        }
    }

    pub(super) fn remove(self) {
        if let Storage::File { path, .. } = &self.storage
            && let Err(e) = fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not delete an expired segment");
        }
    }
}

pub(super) fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:019}.log")
}
