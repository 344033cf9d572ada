//! Reopening a stream directory after a restart or a crash: the definition, the export
//! checkpoints and every segment, with damaged bytes cut out.
//!
//! A damaged record in the middle of a segment (a flipped bit, a bad sector) costs only the
//! records it hit: the scan resyncs on the next whole record ([`next_record`]), which moves
//! to a segment file of its own named by its sequence number, and the damaged file is cut at
//! the damage. Sequence numbers skip the lost records; they are never reused.

use super::{
    CHECKPOINT_FILE, Clock, DEFINITION_FILE, Segment, Storage, StoreError, Stream, all_zero,
    io_err, new_stream, record, segment_file_name, sync_dir,
};
use crate::export::{ExportCheckpoint, carry_checkpoints};
use crate::model::StreamDefinition;
use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Reopens one stream directory: reads its definition and checkpoints, scans every segment,
/// moves the whole records after damage to a segment of their own and cuts the damage off.
pub(super) fn recover_stream(
    dir: &Path,
    clock: &Clock,
    yielding: &Arc<AtomicBool>,
) -> Result<Stream, StoreError> {
    let def_path = dir.join(DEFINITION_FILE);
    let text = fs::read(&def_path).map_err(io_err("read", &def_path))?;
    let definition: StreamDefinition =
        serde_json::from_slice(&text).map_err(|e| StoreError::Io {
            op: "parse",
            path: def_path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
    let cp_path = dir.join(CHECKPOINT_FILE);
    let saved: Vec<ExportCheckpoint> = fs::read(&cp_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let checkpoints = carry_checkpoints(&definition.exports, &saved);

    let mut firsts: Vec<u64> = fs::read_dir(dir)
        .map_err(io_err("list", dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".log")
                .filter(|s| s.len() == 19)
                .and_then(|s| s.parse().ok())
        })
        .collect();
    if firsts.is_empty() {
        firsts.push(0);
    }
    // A set: a resync adds the segment it starts, which an interrupted earlier recovery may
    // already have written.
    let mut firsts: BTreeSet<u64> = firsts.into_iter().collect();
    let mut segments = VecDeque::new();
    let mut next_seq = 0;
    while let Some(first_seq) = firsts.pop_first() {
        let path = dir.join(segment_file_name(first_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open segment", &path))?;
        let file_len = file
            .metadata()
            .map_err(io_err("stat segment", &path))?
            .len();
        let reader = io::BufReader::with_capacity(1 << 20, &file);
        let scan = record::scan_reader(reader, file_len, first_seq)
            .map_err(io_err("read segment", &path))?;
        let mut last = firsts.is_empty();
        let mut allocated = file_len;
        let expected = first_seq + scan.offsets.len() as u64;
        if scan.valid_len < file_len
            && let Some(moved) = split_after_damage(
                dir,
                &file,
                &path,
                scan.valid_len,
                file_len,
                expected,
                firsts.first().copied(),
            )?
        {
            firsts.insert(moved);
            last = false;
            allocated = scan.valid_len;
        } else if scan.valid_len < file_len {
            let zero_tail =
                all_zero(&file, scan.valid_len, file_len).map_err(io_err("read segment", &path))?;
            if !zero_tail {
                tracing::warn!(
                    path = %path.display(),
                    kept_records = scan.offsets.len(),
                    dropped_bytes = file_len - scan.valid_len,
                    "segment has a torn or damaged tail; truncating it"
                );
            }
            // The active segment keeps a zero tail as preallocated space; anything else goes,
            // so that bytes of a lost record can never follow new ones.
            if !(last && zero_tail) {
                file.set_len(scan.valid_len)
                    .map_err(io_err("truncate", &path))?;
                file.sync_all().map_err(io_err("fsync", &path))?;
                allocated = scan.valid_len;
            }
        }
        if scan.offsets.is_empty() && !last {
            drop(file);
            let _ = fs::remove_file(&path);
            continue;
        }
        next_seq = first_seq + scan.offsets.len() as u64;
        segments.push_back(Segment {
            first_seq,
            offsets: scan.offsets,
            bytes: scan.valid_len,
            allocated,
            last_ingest_ms: scan.last_ingest_ms,
            storage: Storage::File {
                file: Arc::new(file),
                path,
            },
        });
    }
    // Records lost from a damaged or unsynced tail may already have been exported: never hand
    // their numbers out again, or exporters would skip the new records as already sent.
    let exported_next = checkpoints
        .iter()
        .map(|c| (c.last_exported_sequence_number + 1).max(0) as u64)
        .max()
        .unwrap_or(0);
    if exported_next > next_seq {
        tracing::warn!(
            dir = %dir.display(),
            from = next_seq,
            to = exported_next,
            "stream lost records that were already exported; continuing numbering after them"
        );
        next_seq = exported_next;
        let path = dir.join(segment_file_name(next_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create segment", &path))?;
        sync_dir(dir)?;
        if segments.back().is_some_and(|s| s.offsets.is_empty())
            && let Some(empty) = segments.pop_back()
        {
            empty.remove();
        }
        if let Some(sealed) = segments.back_mut() {
            sealed.seal();
        }
        segments.push_back(Segment {
            first_seq: next_seq,
            offsets: Vec::new(),
            bytes: 0,
            allocated: 0,
            last_ingest_ms: 0,
            storage: Storage::File {
                file: Arc::new(file),
                path,
            },
        });
    }
    Ok(new_stream(
        definition,
        checkpoints,
        segments,
        next_seq,
        Some(dir.to_path_buf()),
        clock,
        yielding,
    ))
}

/// Looks past the damage at `valid_len` of a segment for the next whole record (a sequence
/// number after `expected` and before `next_segment`). When there is one, the bytes from it to
/// the end go to a new segment file named by its number (written and synced first, so a crash
/// here loses nothing), the damaged file is cut at `valid_len`, and the new number is returned.
fn split_after_damage(
    dir: &Path,
    file: &File,
    path: &Path,
    valid_len: u64,
    file_len: u64,
    expected: u64,
    next_segment: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    let found = next_record(file, valid_len, file_len, expected)
        .map_err(io_err("read segment", path))?
        .filter(|&(_, seq)| next_segment.is_none_or(|n| seq < n));
    let Some((offset, seq)) = found else {
        return Ok(None);
    };
    tracing::warn!(
        path = %path.display(),
        damaged_bytes = offset - valid_len,
        lost_records = seq - expected,
        first_lost = expected,
        resumes_at = seq,
        "segment has a damaged record; keeping the records after it"
    );
    let moved = dir.join(segment_file_name(seq));
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&moved)
        .map_err(io_err("create segment", &moved))?;
    let mut chunk = vec![0u8; COPY_CHUNK.min((file_len - offset) as usize)];
    let mut at = offset;
    while at < file_len {
        let n = chunk.len().min((file_len - at) as usize);
        file.read_exact_at(&mut chunk[..n], at)
            .map_err(io_err("read segment", path))?;
        out.write_all(&chunk[..n])
            .map_err(io_err("write segment", &moved))?;
        at += n as u64;
    }
    out.sync_all().map_err(io_err("fsync", &moved))?;
    sync_dir(dir)?;
    file.set_len(valid_len).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("fsync", path))?;
    Ok(Some(seq))
}

const COPY_CHUNK: usize = 1 << 20;

/// The offset and number of the first whole record after `from` (a damaged one) whose number
/// follows `expected`, reading the file a window at a time: headers are checked first, and a
/// body is read and checksummed only for a plausible header.
fn next_record(file: &File, from: u64, end: u64, expected: u64) -> io::Result<Option<(u64, u64)>> {
    let mut window = vec![0u8; COPY_CHUNK + record::HEADER_LEN];
    let mut base = from + 1;
    while base + record::HEADER_LEN as u64 <= end {
        let n = window.len().min((end - base) as usize);
        file.read_exact_at(&mut window[..n], base)?;
        let positions = (n + 1 - record::HEADER_LEN).min(COPY_CHUNK);
        for i in 0..positions {
            let off = base + i as u64;
            let Some((len, seq)) = record::plausible_header(
                &window[i..i + record::HEADER_LEN],
                expected,
                off - from,
                end - off,
            ) else {
                continue;
            };
            let mut rec = vec![0u8; len];
            file.read_exact_at(&mut rec, off)?;
            if record::decode(&rec).is_some_and(|d| d.seq == seq) {
                return Ok(Some((off, seq)));
            }
        }
        base += positions as u64;
    }
    Ok(None)
}
