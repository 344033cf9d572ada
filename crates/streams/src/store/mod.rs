//! The stream store: one segmented, append-only, checksummed log per stream.
//!
//! Layout under the store root: `<dir>/definition.json` (the stream definition),
//! `<dir>/exports.json` (export checkpoints) and `<dir>/<first seq, 19 digits>.log` segments, where
//! `<dir>` is the stream name when it is a safe file name and `~<sha256 of the name>` otherwise.
//! Creation and deletion are atomic by rename; definitions and checkpoints are replaced by
//! temp file + fsync + rename.
//!
//! Invariants: sequence numbers of a stream strictly increase and are never reused (the active
//! segment's file name carries the next number across restarts); an append acknowledged with
//! `flushOnWrite` is on disk before the acknowledgement; recovery loses only damaged records: whole
//! records after damage in a segment move to a segment of their own (see `store/recover.rs`), and only a
//! tail with no whole record after it is cut; memory per stream is the
//! index (4 bytes per record) plus small per-segment state, whatever the backlog — payloads are
//! read from disk.
//!
//! Durable appends: the active segment of a flushOnWrite stream is zero-filled ahead of the
//! write position in [`PREALLOC_CHUNK`] steps, so records overwrite blocks that already belong to
//! the file and an `fdatasync` writes data only, instead of also committing a new file size to
//! the journal on every group commit. The logical end is where the record scan stops: a zero
//! length field ends it. Recovery keeps an all-zero tail of the active segment as preallocated
//! space and truncates any other tail (a torn record), so an old record can never reappear
//! behind new ones. Sealed segments are cut to their logical size when the next one starts.

mod appenders;
mod commit;
mod record;
mod recover;
mod segment;

use crate::export::{ExportCheckpoint, ExportKind, carry_checkpoints};
use crate::file_access::FileAccess;
use crate::model::{DefinitionError, Persistence, StrategyOnFull, StreamDefinition};
use appenders::Appenders;
use commit::{GroupCommit, SyncOutcome};
use segment::{Segment, Storage, segment_file_name};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::sync::watch;

#[cfg(test)]
use record::HEADER_LEN;

const DEFINITION_FILE: &str = "definition.json";
const CHECKPOINT_FILE: &str = "exports.json";
/// How far ahead of the write position a flushOnWrite segment is zero-filled: one file-size
/// change (one journal commit) per this many bytes of records instead of one per group commit.
const PREALLOC_CHUNK: u64 = 1 << 20;

/// A failed store operation; each variant maps to one protocol status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {0:?} does not exist; create it first")]
    NotFound(String),
    #[error("stream {0:?} already exists; update it or delete it first")]
    AlreadyExists(String),
    #[error(transparent)]
    InvalidDefinition(#[from] DefinitionError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(
        "stream {name:?} is full ({max_size} bytes) and its strategy is RejectNewData; read and \
         delete data, raise maxSize, or use OverwriteOldestData"
    )]
    StreamFull { name: String, max_size: u64 },
    #[error("a record of {size} bytes can never fit stream {name:?} whose maxSize is {max_size}")]
    RecordTooLarge {
        name: String,
        size: u64,
        max_size: u64,
    },
    #[error("update of stream {name:?} not allowed: {reason}")]
    UpdateNotAllowed { name: String, reason: String },
    #[error(
        "record {seq} of stream {name:?} failed its checksum in {path}; the segment is damaged"
    )]
    Corrupt {
        name: String,
        seq: u64,
        path: PathBuf,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// A record read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub sequence_number: u64,
    pub ingest_time_ms: i64,
    pub payload: Vec<u8>,
}

/// A stream's definition with its storage figures and export checkpoints.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub definition: StreamDefinition,
    pub oldest_sequence_number: u64,
    /// `oldest - 1` when the stream holds no records.
    pub newest_sequence_number: i64,
    pub total_bytes: u64,
    pub export_checkpoints: Vec<ExportCheckpoint>,
}

/// The result of an append: its sequence number, and whether the caller must wait for
/// [`Stream::wait_durable`] before acknowledging (flushOnWrite).
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub sequence_number: u64,
    pub needs_sync: bool,
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A contiguous run of records of one segment, planned under the lock and read outside it.
struct Chunk {
    source: ChunkSource,
    first_seq: u64,
    /// Record offsets relative to the start of the chunk.
    offsets: Vec<u32>,
    len: u64,
}

enum ChunkSource {
    File {
        file: Arc<File>,
        path: PathBuf,
        base: u64,
    },
    Memory(Vec<u8>),
}

struct Inner {
    definition: StreamDefinition,
    checkpoints: Vec<ExportCheckpoint>,
    segments: VecDeque<Segment>,
    next_seq: u64,
    total_bytes: u64,
    dir: Option<PathBuf>,
    deleted: bool,
    /// Files with writes not yet fsynced by a group commit (sealed segments).
    unsynced: Vec<(Arc<File>, PathBuf)>,
    scratch: Vec<u8>,
    /// Who appended the records, while the stream has an S3 export (see [`Stream::append_as`]).
    appenders: Appenders,
}

/// One stream. Appends serialize on the stream's lock; durable appends share fsyncs.
pub struct Stream {
    name: String,
    inner: Mutex<Inner>,
    /// Durable appends share fsyncs through it.
    commit: GroupCommit,
    /// Next sequence number to be assigned: long-polling readers wait on it.
    appended: watch::Sender<u64>,
    clock: Clock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the index inconsistent with the files in a
    // way recovery would not also face; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stream {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends one record. With flushOnWrite the record is written but not yet durable: call
    /// [`Stream::wait_durable`] before acknowledging it.
    pub fn append(&self, payload: &[u8]) -> Result<Appended, StoreError> {
        self.append_as(payload, None)
    }

    /// [`Stream::append`], remembering who appended: while the stream has an S3 export, its
    /// task records are opened with the appender's privileges ([`Stream::appended_by`]). Kept
    /// in memory only: after a restart every record's appender is unknown.
    pub fn append_as(
        &self,
        payload: &[u8],
        appender: Option<&Arc<FileAccess>>,
    ) -> Result<Appended, StoreError> {
        if payload.is_empty() {
            return Err(StoreError::InvalidRequest(
                "payload must not be empty".into(),
            ));
        }
        if payload.len() > record::MAX_PAYLOAD_LEN {
            return Err(StoreError::InvalidRequest(
                "payload exceeds 2^30 bytes".into(),
            ));
        }
        let now = (self.clock)();
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        if inner.deleted {
            return Err(StoreError::NotFound(self.name.clone()));
        }
        inner.expire(now)?;
        let rec_len = (record::HEADER_LEN + payload.len()) as u64;
        let def = &inner.definition;
        if rec_len > def.max_size {
            return Err(StoreError::RecordTooLarge {
                name: self.name.clone(),
                size: rec_len,
                max_size: def.max_size,
            });
        }
        while inner.total_bytes + rec_len > inner.definition.max_size {
            if inner.definition.strategy_on_full == StrategyOnFull::RejectNewData {
                return Err(StoreError::StreamFull {
                    name: self.name.clone(),
                    max_size: inner.definition.max_size,
                });
            }
            if inner.segments.len() == 1 {
                inner.roll()?;
            }
            inner.drop_oldest();
        }
        let seg_size = inner.definition.effective_segment_size();
        let active = inner
            .segments
            .back()
            .expect("a stream always has an active segment");
        if active.bytes + rec_len > seg_size && !active.offsets.is_empty() {
            inner.roll()?;
        }
        let seq = inner.next_seq;
        inner.scratch.clear();
        record::encode(seq, now, payload, &mut inner.scratch);
        let flush_on_write = inner.definition.flush_on_write;
        let active = inner.segments.back_mut().expect("active segment");
        let offset = active.bytes;
        if flush_on_write {
            active.preallocate(offset + rec_len, seg_size);
        }
        match &mut active.storage {
            Storage::File { file, path } => {
                if let Err(e) = file.write_all_at(&inner.scratch, offset) {
                    // Cut off whatever part was written so the file matches the index again.
                    let _ = file.set_len(offset);
                    active.allocated = offset;
                    return Err(io_err("append to", path)(e));
                }
            }
            Storage::Memory(data) => data.extend_from_slice(&inner.scratch),
        }
        active.offsets.push(offset as u32);
        active.bytes += rec_len;
        active.allocated = active.allocated.max(active.bytes);
        active.last_ingest_ms = now;
        inner.total_bytes += rec_len;
        inner.next_seq += 1;
        let s3_tasks = inner
            .definition
            .exports
            .iter()
            .any(|e| e.kind == ExportKind::S3TaskExecutor);
        inner.appenders.record(seq, appender.filter(|_| s3_tasks));
        let needs_sync = inner.definition.flush_on_write && inner.dir.is_some();
        drop(g);
        // Notifying takes a lock per waker slot of the channel: skip it when nobody listens
        // (a new subscriber catches up in `subscribe`).
        if self.appended.receiver_count() > 0 {
            self.publish_next(seq + 1);
        }
        Ok(Appended {
            sequence_number: seq,
            needs_sync,
        })
    }

    /// Blocks until record `seq` is on disk (see [`commit`] for how callers share fsyncs). Fails
    /// with the error of the fsync that was to cover it, or `NotFound` when the stream was
    /// deleted before the record reached the disk.
    pub fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        self.commit.wait(seq, &|| self.sync_appended())
    }

    /// Syncs every file written so far.
    fn sync_appended(&self) -> SyncOutcome {
        let (covers, files) = {
            let mut inner = lock(&self.inner);
            if inner.deleted {
                return SyncOutcome {
                    covers: inner.next_seq,
                    result: Err(StoreError::NotFound(self.name.clone())),
                };
            }
            let mut files = std::mem::take(&mut inner.unsynced);
            if let Some(Storage::File { file, path }) = inner.segments.back().map(|s| &s.storage) {
                files.push((file.clone(), path.clone()));
            }
            (inner.next_seq, files)
        };
        for (i, (file, path)) in files.iter().enumerate() {
            if let Err(e) = file.sync_data() {
                // Sealed files not yet synced stay queued for the next commit.
                let mut inner = lock(&self.inner);
                let active = inner.segments.back().map(|s| match &s.storage {
                    Storage::File { file, .. } => Arc::as_ptr(file),
                    Storage::Memory(_) => std::ptr::null(),
                });
                for pending in &files[i..] {
                    if Some(Arc::as_ptr(&pending.0)) != active {
                        inner.unsynced.push(pending.clone());
                    }
                }
                return SyncOutcome {
                    covers,
                    result: Err(io_err("fsync", path)(e)),
                };
            }
        }
        SyncOutcome {
            covers,
            result: Ok(()),
        }
    }

    /// Group commits done so far (for benchmarks and metrics: records per fsync).
    pub fn group_commits(&self) -> u64 {
        self.commit.commits()
    }

    /// Reads up to `max_count` records starting at `max(start, oldest)`, stopping before the
    /// total payload would pass `max_bytes` (but always returning at least one record if any).
    pub fn read(
        &self,
        start: u64,
        max_count: usize,
        max_bytes: u64,
    ) -> Result<Vec<Message>, StoreError> {
        // Plan under the lock, read the files outside it, so readers never stall appends. A
        // segment deleted meanwhile stays readable through the open handle.
        let chunks = self.plan_read(start, max_count, max_bytes)?;
        let mut out = Vec::new();
        for chunk in chunks {
            let (buf, path) = match chunk.source {
                ChunkSource::File { file, path, base } => {
                    let mut buf = vec![0u8; chunk.len as usize];
                    file.read_exact_at(&mut buf, base)
                        .map_err(io_err("read", &path))?;
                    (buf, path)
                }
                ChunkSource::Memory(buf) => (buf, PathBuf::from("<memory>")),
            };
            for (i, &o) in chunk.offsets.iter().enumerate() {
                let seq = chunk.first_seq + i as u64;
                let d = record::decode(&buf[o as usize..])
                    .filter(|d| d.seq == seq)
                    .ok_or_else(|| StoreError::Corrupt {
                        name: self.name.clone(),
                        seq,
                        path: path.clone(),
                    })?;
                out.push(Message {
                    sequence_number: seq,
                    ingest_time_ms: d.ingest_ms,
                    payload: d.payload.to_vec(),
                });
            }
        }
        Ok(out)
    }

    fn plan_read(
        &self,
        start: u64,
        max_count: usize,
        max_bytes: u64,
    ) -> Result<Vec<Chunk>, StoreError> {
        let now = (self.clock)();
        let mut g = lock(&self.inner);
        if g.deleted {
            return Err(StoreError::NotFound(self.name.clone()));
        }
        g.expire(now)?;
        let mut chunks = Vec::new();
        let mut count = 0usize;
        let mut bytes = 0u64;
        let first = g.segments.partition_point(|s| s.end_seq() <= start);
        for seg in g.segments.iter().skip(first) {
            if count >= max_count {
                break;
            }
            if seg.offsets.is_empty() {
                continue;
            }
            let from = start.saturating_sub(seg.first_seq) as usize;
            let mut to = from;
            let mut span = 0u64;
            while to < seg.offsets.len() && count + (to - from) < max_count {
                let rec = seg.record_end(to) - seg.offsets[to] as u64;
                if (bytes + span + rec > max_bytes) && !(count == 0 && to == from) {
                    break;
                }
                span += rec;
                to += 1;
            }
            if to == from {
                break;
            }
            let base = seg.offsets[from] as u64;
            let end = seg.record_end(to - 1);
            let source = match &seg.storage {
                Storage::File { file, path } => ChunkSource::File {
                    file: file.clone(),
                    path: path.clone(),
                    base,
                },
                Storage::Memory(data) => {
                    ChunkSource::Memory(data[base as usize..end as usize].to_vec())
                }
            };
            chunks.push(Chunk {
                source,
                first_seq: seg.first_seq + from as u64,
                offsets: seg.offsets[from..to]
                    .iter()
                    .map(|&o| o - base as u32)
                    .collect(),
                len: end - base,
            });
            count += to - from;
            bytes += span;
            if to < seg.offsets.len() {
                break; // stopped by count or bytes
            }
        }
        Ok(chunks)
    }

    /// Who appended record `seq` through [`Stream::append_as`], when the store was told and the
    /// stream had an S3 export at the time.
    pub fn appended_by(&self, seq: u64) -> Option<Arc<FileAccess>> {
        lock(&self.inner).appenders.of(seq)
    }

    /// The next sequence number to be assigned; changes on every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        // Subscribe first: every append from now on notifies; then catch up with the appends
        // made while nobody listened.
        let rx = self.appended.subscribe();
        let next = lock(&self.inner).next_seq;
        self.publish_next(next);
        rx
    }

    /// Raises the published next sequence number (never lowers it: appends finishing out of
    /// order publish out of order).
    fn publish_next(&self, next: u64) {
        self.appended.send_if_modified(|published| {
            let raised = next > *published;
            *published = (*published).max(next);
            raised
        });
    }

    pub fn info(&self) -> StreamInfo {
        let g = lock(&self.inner);
        let oldest = g
            .segments
            .iter()
            .find(|s| !s.offsets.is_empty())
            .map(|s| s.first_seq)
            .unwrap_or(g.next_seq);
        let newest = if g.segments.iter().any(|s| !s.offsets.is_empty()) {
            g.next_seq as i64 - 1
        } else {
            oldest as i64 - 1
        };
        StreamInfo {
            definition: g.definition.clone(),
            oldest_sequence_number: oldest,
            newest_sequence_number: newest,
            total_bytes: g.total_bytes,
            export_checkpoints: g.checkpoints.clone(),
        }
    }

    /// Records export progress (for exporters); persisted for File streams.
    pub fn set_checkpoint(&self, checkpoint: ExportCheckpoint) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        let Some(slot) = g
            .checkpoints
            .iter_mut()
            .find(|c| c.identifier == checkpoint.identifier)
        else {
            return Err(StoreError::InvalidRequest(format!(
                "stream {:?} has no export {:?}",
                self.name, checkpoint.identifier
            )));
        };
        *slot = checkpoint;
        if let Some(dir) = &g.dir {
            write_json_atomic(&dir.join(CHECKPOINT_FILE), &g.checkpoints)?;
        }
        Ok(())
    }

    fn sync_all(&self) {
        let g = lock(&self.inner);
        for s in &g.segments {
            if let Storage::File { file, .. } = &s.storage {
                let _ = file.sync_data();
            }
        }
    }
}

impl Inner {
    /// Seals the active segment and starts a new one at `next_seq`.
    fn roll(&mut self) -> Result<(), StoreError> {
        let storage = match &self.dir {
            Some(dir) => {
                let path = dir.join(segment_file_name(self.next_seq));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(io_err("create segment", &path))?;
                if self.definition.flush_on_write {
                    sync_dir(dir)?;
                }
                Storage::File {
                    file: Arc::new(file),
                    path,
                }
            }
            None => Storage::Memory(Vec::new()),
        };
        if let Some(sealed) = self.segments.back_mut() {
            sealed.seal();
            if let Storage::File { file, path } = &sealed.storage
                && self.definition.flush_on_write
            {
                self.unsynced.push((file.clone(), path.clone()));
            }
        }
        self.segments.push_back(Segment {
            first_seq: self.next_seq,
            offsets: Vec::new(),
            bytes: 0,
            allocated: 0,
            last_ingest_ms: 0,
            storage,
        });
        Ok(())
    }

    fn drop_oldest(&mut self) {
        if let Some(s) = self.segments.pop_front() {
            self.total_bytes -= s.bytes;
            s.remove();
            let oldest = self.segments.front().map_or(self.next_seq, |f| f.first_seq);
            self.appenders.forget_before(oldest);
        }
    }

    /// Deletes whole segments whose newest record is past the TTL.
    fn expire(&mut self, now: i64) -> Result<(), StoreError> {
        let Some(ttl) = self.definition.time_to_live_millis else {
            return Ok(());
        };
        let expired = |s: &Segment| {
            !s.offsets.is_empty() && s.last_ingest_ms.saturating_add(ttl as i64) < now
        };
        while self.segments.front().is_some_and(expired) {
            if self.segments.len() == 1 {
                self.roll()?;
            }
            self.drop_oldest();
        }
        Ok(())
    }
}

/// The set of streams under one store root.
pub struct Store {
    root: PathBuf,
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    clock: Clock,
    /// Whether durable-append waiters yield the CPU before they sleep (every stream's group
    /// commit reads it; see [`Store::set_yield_while_waiting`]).
    yielding: Arc<AtomicBool>,
}

impl Store {
    /// Opens (creating if needed) the store at `root` and recovers every File stream in it.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        Self::open_with_clock(root, Arc::new(system_clock))
    }

    /// As [`Store::open`], with a clock (epoch milliseconds) for ingest times and TTL.
    pub fn open_with_clock(root: impl Into<PathBuf>, clock: Clock) -> Result<Store, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err("create store root", &root))?;
        let yielding = Arc::new(AtomicBool::new(true));
        let mut streams = BTreeMap::new();
        let entries = fs::read_dir(&root).map_err(io_err("list store root", &root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list store root", &root))?;
            let path = entry.path();
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with(".del-") || file_name.starts_with(".new-") {
                // Interrupted delete or create: finish it.
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() {
                continue;
            }
            match recover::recover_stream(&path, &clock, &yielding) {
                Ok(stream) => {
                    streams.insert(stream.name.clone(), Arc::new(stream));
                }
                Err(e) => {
                    tracing::error!(dir = %path.display(), error = %e, "skipping a stream that cannot be recovered")
                }
            }
        }
        Ok(Store {
            root,
            streams: RwLock::new(streams),
            clock,
            yielding,
        })
    }

    /// Whether a caller of [`Stream::wait_durable`] yields the CPU for a while before it sleeps
    /// (default: yes). Yielding makes group commits of several writers faster where fsyncs are
    /// fast (no wake-ups between commits) at the price of CPU time while they wait; without
    /// it, waiters sleep at once (devices that count every milliwatt). Applies to every stream,
    /// from their next wait.
    pub fn set_yield_while_waiting(&self, yielding: bool) {
        self.yielding.store(yielding, Ordering::Relaxed);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn create(&self, definition: StreamDefinition) -> Result<Arc<Stream>, StoreError> {
        definition.validate()?;
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&definition.name) {
            return Err(StoreError::AlreadyExists(definition.name));
        }
        let checkpoints = carry_checkpoints(&definition.exports, &[]);
        let (dir, storage) = match definition.persistence {
            Persistence::Memory => (None, Storage::Memory(Vec::new())),
            Persistence::File => {
                let staging = self.root.join(format!(".new-{}", uuid::Uuid::new_v4()));
                fs::create_dir(&staging).map_err(io_err("create", &staging))?;
                let seg = staging.join(segment_file_name(0));
                File::create(&seg).map_err(io_err("create segment", &seg))?;
                write_json_atomic(&staging.join(CHECKPOINT_FILE), &checkpoints)?;
                write_json_atomic(&staging.join(DEFINITION_FILE), &definition)?;
                let dir = self.root.join(dir_name(&definition.name));
                fs::rename(&staging, &dir).map_err(io_err("rename into place", &dir))?;
                sync_dir(&self.root)?;
                let path = dir.join(segment_file_name(0));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open segment", &path))?;
                (
                    Some(dir),
                    Storage::File {
                        file: Arc::new(file),
                        path,
                    },
                )
            }
        };
        let segment = Segment {
            first_seq: 0,
            offsets: Vec::new(),
            bytes: 0,
            allocated: 0,
            last_ingest_ms: 0,
            storage,
        };
        let stream = Arc::new(new_stream(
            definition,
            checkpoints,
            VecDeque::from([segment]),
            0,
            dir,
            &self.clock,
            &self.yielding,
        ));
        map.insert(stream.name.clone(), stream.clone());
        Ok(stream)
    }

    pub fn get(&self, name: &str) -> Result<Arc<Stream>, StoreError> {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    pub fn list(&self) -> Vec<String> {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    /// Replaces a stream's definition (spec §1.6): persistence cannot change and `maxSize` may
    /// not drop below the data already held; exports are matched by identifier.
    pub fn update(&self, definition: StreamDefinition) -> Result<(), StoreError> {
        definition.validate()?;
        let stream = self.get(&definition.name)?;
        let now = (self.clock)();
        let mut g = lock(&stream.inner);
        if g.deleted {
            return Err(StoreError::NotFound(definition.name));
        }
        let not_allowed = |reason: String| StoreError::UpdateNotAllowed {
            name: definition.name.clone(),
            reason,
        };
        if g.definition.persistence != definition.persistence {
            return Err(not_allowed(
                "persistence cannot change; delete and recreate the stream".into(),
            ));
        }
        if definition.max_size < g.total_bytes {
            return Err(not_allowed(format!(
                "maxSize {} is below the {} bytes the stream holds",
                definition.max_size, g.total_bytes
            )));
        }
        let newest = g.next_seq;
        for c in &definition.exports {
            let changed = g
                .definition
                .exports
                .iter()
                .find(|o| o.identifier == c.identifier)
                .is_none_or(|o| o.start_sequence_number != c.start_sequence_number);
            if let Some(start) = c.start_sequence_number
                && changed
                && start > newest
            {
                return Err(not_allowed(format!(
                    "export {:?}: startSequenceNumber {start} is past the newest sequence number",
                    c.identifier
                )));
            }
        }
        let checkpoints = carry_checkpoints(&definition.exports, &g.checkpoints);
        if let Some(dir) = &g.dir {
            write_json_atomic(&dir.join(CHECKPOINT_FILE), &checkpoints)?;
            write_json_atomic(&dir.join(DEFINITION_FILE), &definition)?;
        }
        g.definition = definition;
        g.checkpoints = checkpoints;
        g.expire(now)?;
        Ok(())
    }

    /// Removes a stream and all its data.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let stream = {
            let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
            map.remove(name)
                .ok_or_else(|| StoreError::NotFound(name.to_string()))?
        };
        let mut g = lock(&stream.inner);
        g.deleted = true;
        g.segments.clear();
        g.total_bytes = 0;
        if let Some(dir) = g.dir.take() {
            let tomb = self.root.join(format!(".del-{}", uuid::Uuid::new_v4()));
            fs::rename(&dir, &tomb).map_err(io_err("rename for deletion", &dir))?;
            let _ = sync_dir(&self.root);
            fs::remove_dir_all(&tomb).map_err(io_err("delete", &tomb))?;
        }
        drop(g);
        // Wake long-polling readers so they see the deletion.
        stream.appended.send_modify(|_| {});
        Ok(())
    }

    /// Applies TTLs to every stream; the server calls this periodically.
    pub fn expire_all(&self) {
        let now = (self.clock)();
        let streams: Vec<_> = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for s in streams {
            let mut g = lock(&s.inner);
            if !g.deleted
                && let Err(e) = g.expire(now)
            {
                tracing::warn!(stream = %s.name, error = %e, "TTL expiry failed");
            }
        }
    }

    /// Flushes every File stream to disk (graceful shutdown).
    pub fn sync_all(&self) {
        let streams: Vec<_> = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for s in streams {
            s.sync_all();
        }
    }
}

fn new_stream(
    definition: StreamDefinition,
    checkpoints: Vec<ExportCheckpoint>,
    segments: VecDeque<Segment>,
    next_seq: u64,
    dir: Option<PathBuf>,
    clock: &Clock,
    yielding: &Arc<AtomicBool>,
) -> Stream {
    let total_bytes = segments.iter().map(|s| s.bytes).sum();
    Stream {
        name: definition.name.clone(),
        inner: Mutex::new(Inner {
            definition,
            checkpoints,
            segments,
            next_seq,
            total_bytes,
            dir,
            deleted: false,
            unsynced: Vec::new(),
            scratch: Vec::new(),
            appenders: Appenders::default(),
        }),
        commit: GroupCommit::new(next_seq, yielding.clone()),
        appended: watch::Sender::new(next_seq),
        clock: clock.clone(),
    }
}

/// A stream's directory name: the name itself when it is a plain portable file name, otherwise
/// `~` and the SHA-256 of the name (names may be `..`, or 255 multi-byte characters).
fn dir_name(name: &str) -> String {
    let plain = name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_ ,.-".contains(&b));
    if plain {
        name.to_string()
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("~{hex}")
    }
}

/// Whether bytes `from..to` of `file` are all zero (preallocated, never written).
fn all_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Io {
        op: "serialize",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&body).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_commit;
