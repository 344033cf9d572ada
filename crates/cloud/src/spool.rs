//! The spooler: every message for the cloud waits here until the cloud has it.
//!
//! Disk storage is a directory of append-only segment files (`<seq>.seg`, see [`crate::record`]).
//! One writer thread appends records in the order ids were assigned and fsyncs each batch before
//! the callers of that batch hear "durable" (group commit), so a message acknowledged to a caller
//! survives kill -9 and power loss. Delivery appends an ack record (not fsynced on its own: losing
//! one only means that message is sent once more). Segments are deleted oldest first once every
//! message in them is acked, which keeps each ack record alive as long as the message it covers.
//! Recovery reads every segment, skips a damaged record in the middle of a segment (resyncing on
//! the next whole record), truncates a torn or corrupt tail and keeps the messages without an ack.
//!
//! Memory storage keeps the same queue without files (lost on restart).
//!
//! The cap counts the encoded size of the messages not yet delivered; when the next message does
//! not fit, it is refused and nothing stored is dropped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use lichen_mqtt::QoS;
use tokio::sync::{Notify, oneshot};

use crate::record::{self, Decoded, Record};
use crate::{CloudError, CloudMessage, StorageType};

/// A message in the spool.
#[derive(Debug)]
pub(crate) struct Spooled {
    pub(crate) id: u64,
    pub(crate) message: CloudMessage,
    /// Times it was written to a connection (for DUP and `maxPublishRetry`).
    pub(crate) attempts: AtomicU32,
}

struct Entry {
    seg: u64,
    bytes: u64,
    msg: Arc<Spooled>,
}

#[derive(Default)]
struct State {
    pending: BTreeMap<u64, Entry>,
    /// Bytes of pending messages plus those on their way to disk.
    used: u64,
    next_id: u64,
    /// Pending messages per segment (disk storage only); the last key is the active segment.
    seg_live: BTreeMap<u64, usize>,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled whenever a message becomes pending.
    ready: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum WriteOp {
    Append {
        id: u64,
        record: Vec<u8>,
        msg: Arc<Spooled>,
        done: oneshot::Sender<Result<(), CloudError>>,
    },
    Ack {
        record: Vec<u8>,
    },
}

/// Resolves once the message is durable (disk) or queued (memory).
pub(crate) struct Pending(Option<oneshot::Receiver<Result<(), CloudError>>>);

impl Pending {
    pub(crate) async fn durable(self) -> Result<(), CloudError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(CloudError::Closed)),
        }
    }
}

pub(crate) struct Spool {
    inner: Arc<Inner>,
    max_bytes: u64,
    writer: Option<Mutex<mpsc::Sender<WriteOp>>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Spool {
    /// Lets the writer finish what it was given (acks included), so a spool reopened on the same
    /// directory starts from everything this one wrote.
    fn drop(&mut self) {
        self.writer = None;
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// What recovery found (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub messages: usize,
    pub bytes: u64,
    pub truncated_bytes: u64,
    /// Bytes of damaged records skipped in the middle of a segment.
    pub skipped_bytes: u64,
    pub segments_deleted: usize,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn storage_err(path: &Path, what: &str, e: std::io::Error) -> CloudError {
    CloudError::Storage {
        path: path.to_path_buf(),
        what: format!("{what}: {e}"),
    }
}

fn sync_dir(dir: &Path) -> Result<(), CloudError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage_err(dir, "syncing the spool directory", e))
}

fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 4).clamp(64 << 10, 16 << 20)
}

impl Spool {
    /// Opens the spool: for disk storage, recovers `dir` (created if missing) and starts the writer.
    pub(crate) fn open(
        storage: StorageType,
        dir: &Path,
        max_bytes: u64,
    ) -> Result<(Spool, Recovered), CloudError> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            ready: Notify::new(),
        });
        if storage == StorageType::Memory {
            return Ok((
                Spool {
                    inner,
                    max_bytes,
                    writer: None,
                    writer_thread: None,
                },
                Recovered::default(),
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| storage_err(dir, "creating the spool directory", e))?;
        let recovered = recover(dir, &mut inner.lock())?;
        let active = {
            let mut st = inner.lock();
            let next = st.seg_live.keys().next_back().map_or(1, |s| s + 1);
            st.seg_live.insert(next, 0);
            next
        };
        let path = seg_path(dir, active);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| storage_err(&path, "creating a spool segment", e))?;
        sync_dir(dir)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            inner: inner.clone(),
            dir: dir.to_path_buf(),
            file,
            active,
            active_len: 0,
            segment_bytes: segment_bytes(max_bytes),
        };
        let writer_thread = std::thread::Builder::new()
            .name("cloud-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| storage_err(dir, "starting the spool writer", e))?;
        Ok((
            Spool {
                inner,
                max_bytes,
                writer: Some(Mutex::new(tx)),
                writer_thread: Some(writer_thread),
            },
            recovered,
        ))
    }

    /// Queues `message`; the returned [`Pending`] resolves once it is durable. Refuses it when the
    /// spool is full (nothing stored is dropped to make room).
    pub(crate) fn enqueue(&self, message: CloudMessage) -> Result<Pending, CloudError> {
        let size = record::message_len(&message) as u64;
        let mut st = self.inner.lock();
        if st.used + size > self.max_bytes {
            return Err(CloudError::SpoolFull {
                used: st.used,
                max: self.max_bytes,
                needed: size,
            });
        }
        let id = st.next_id;
        st.next_id += 1;
        st.used += size;
        let msg = Arc::new(Spooled {
            id,
            message,
            attempts: AtomicU32::new(0),
        });
        let Some(writer) = &self.writer else {
            st.pending.insert(
                id,
                Entry {
                    seg: 0,
                    bytes: size,
                    msg,
                },
            );
            drop(st);
            self.inner.ready.notify_one();
            return Ok(Pending(None));
        };
        let record = record::encode_message(id, &msg.message);
        debug_assert_eq!(record.len() as u64, size);
        let (done, rx) = oneshot::channel();
        // Sent under the state lock so the writer sees ids in the order they were assigned.
        let sent = writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(WriteOp::Append {
                id,
                record,
                msg,
                done,
            });
        if sent.is_err() {
            st.used -= size;
            return Err(CloudError::Closed);
        }
        Ok(Pending(Some(rx)))
    }

    /// The first pending message with an id above `after`.
    pub(crate) fn next_after(&self, after: u64) -> Option<Arc<Spooled>> {
        let st = self.inner.lock();
        st.pending
            .range(after.saturating_add(1)..)
            .next()
            .map(|(_, e)| e.msg.clone())
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<Spooled>> {
        self.inner.lock().pending.get(&id).map(|e| e.msg.clone())
    }

    /// Marks `id` done (delivered or given up): it leaves the queue and frees its bytes.
    pub(crate) fn ack(&self, id: u64) {
        let mut st = self.inner.lock();
        let Some(e) = st.pending.remove(&id) else {
            return;
        };
        st.used -= e.bytes;
        if let Some(writer) = &self.writer {
            if let Some(n) = st.seg_live.get_mut(&e.seg) {
                *n = n.saturating_sub(1);
            }
            let _ = writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(WriteOp::Ack {
                    record: record::encode_ack(id),
                });
        }
    }

    /// Removes every pending QoS 0 message (going offline without `keepQos0WhenOffline`).
    pub(crate) fn drop_qos0(&self) -> usize {
        let ids: Vec<u64> = {
            let st = self.inner.lock();
            st.pending
                .values()
                .filter(|e| e.msg.message.qos == QoS::AtMostOnce)
                .map(|e| e.msg.id)
                .collect()
        };
        for id in &ids {
            self.ack(*id);
        }
        ids.len()
    }

    /// (pending messages, bytes used, cap).
    pub(crate) fn usage(&self) -> (usize, u64, u64) {
        let st = self.inner.lock();
        (st.pending.len(), st.used, self.max_bytes)
    }

    pub(crate) async fn wait_ready(&self) {
        self.inner.ready.notified().await
    }
}

/// Reads every segment into `st`; truncates torn or corrupt tails; deletes the leading segments
/// with nothing pending.
fn recover(dir: &Path, st: &mut State) -> Result<Recovered, CloudError> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| storage_err(dir, "listing the spool directory", e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    let mut out = Recovered::default();
    let mut messages: BTreeMap<u64, Entry> = BTreeMap::new();
    let mut acked = std::collections::HashSet::new();
    let mut max_id = 0;
    for &seq in &seqs {
        let path = seg_path(dir, seq);
        let buf =
            std::fs::read(&path).map_err(|e| storage_err(&path, "reading a spool segment", e))?;
        let mut pos = 0;
        let mut bad = None;
        while pos < buf.len() {
            match record::decode(&buf[pos..]) {
                Decoded::Record { record, len } => {
                    match record {
                        Record::Message { id, message } => {
                            max_id = max_id.max(id);
                            messages.insert(
                                id,
                                Entry {
                                    seg: seq,
                                    bytes: len as u64,
                                    msg: Arc::new(Spooled {
                                        id,
                                        message,
                                        attempts: AtomicU32::new(0),
                                    }),
                                },
                            );
                        }
                        Record::Ack { id } => {
                            max_id = max_id.max(id);
                            acked.insert(id);
                        }
                    }
                    pos += len;
                }
                Decoded::Incomplete | Decoded::Corrupt(_) => {
                    let why = match record::decode(&buf[pos..]) {
                        Decoded::Corrupt(why) => why,
                        _ => "torn record at the end",
                    };
                    // Damage in the middle of a segment (a bad sector, a flipped bit) costs
                    // only the records it hit: whole records after it are still good.
                    match resync(&buf, pos + 1) {
                        Some(next) => {
                            tracing::warn!(segment = %path.display(), offset = pos, reason = why, skipped_bytes = next - pos, "spool segment: skipping a damaged record");
                            out.skipped_bytes += (next - pos) as u64;
                            pos = next;
                        }
                        None => {
                            bad = Some(why);
                            break;
                        }
                    }
                }
            }
        }
        st.seg_live.insert(seq, 0);
        if let Some(why) = bad {
            tracing::warn!(segment = %path.display(), offset = pos, reason = why, dropped_bytes = buf.len() - pos, "spool segment: truncating after the last whole record");
            out.truncated_bytes += (buf.len() - pos) as u64;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| storage_err(&path, "opening a spool segment to truncate it", e))?;
            f.set_len(pos as u64)
                .and_then(|_| f.sync_all())
                .map_err(|e| storage_err(&path, "truncating a spool segment", e))?;
        }
    }
    for (id, e) in messages {
        if acked.contains(&id) {
            continue;
        }
        *st.seg_live.entry(e.seg).or_default() += 1;
        st.used += e.bytes;
        out.bytes += e.bytes;
        out.messages += 1;
        st.pending.insert(id, e);
    }
    st.next_id = max_id + 1;
    // Leading segments with nothing pending go (their acks only cover messages in them or before).
    while let Some((&seq, &live)) = st.seg_live.iter().next() {
        if live != 0 {
            break;
        }
        let path = seg_path(dir, seq);
        std::fs::remove_file(&path)
            .map_err(|e| storage_err(&path, "deleting a delivered spool segment", e))?;
        st.seg_live.remove(&seq);
        out.segments_deleted += 1;
    }
    Ok(out)
}

/// The offset of the next whole record at or after `from`, if any. Cheap checks on the header
/// (a plausible length, a known kind, an id below 2^48) come before the checksum, so scanning
/// past damage does not checksum a candidate body at every byte.
fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let last = buf.len().checked_sub(record::HEADER_LEN + 9)?;
    (from..=last).find(|&off| {
        let b = &buf[off..];
        let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
        let kind = b[record::HEADER_LEN];
        let id = u64::from_le_bytes(
            b[record::HEADER_LEN + 1..record::HEADER_LEN + 9]
                .try_into()
                .expect("8 bytes"),
        );
        let plausible = len >= 9
            && len <= b.len() - record::HEADER_LEN
            && record::is_kind(kind)
            && id > 0
            && id < 1 << 48;
        plausible && matches!(record::decode(b), Decoded::Record { .. })
    })
}

struct Writer {
    inner: Arc<Inner>,
    dir: PathBuf,
    file: File,
    active: u64,
    active_len: u64,
    segment_bytes: u64,
}

/// Most operations written per group commit.
const MAX_BATCH: usize = 4096;

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<WriteOp>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.write_batch(batch);
            if self.active_len >= self.segment_bytes {
                self.rotate();
            }
            self.delete_delivered();
        }
        let _ = self.file.sync_data();
    }

    fn write_batch(&mut self, batch: Vec<WriteOp>) {
        let mut buf = Vec::new();
        let mut appends = false;
        for op in &batch {
            match op {
                WriteOp::Append { record, .. } => {
                    appends = true;
                    buf.extend_from_slice(record);
                }
                WriteOp::Ack { record } => buf.extend_from_slice(record),
            }
        }
        let path = seg_path(&self.dir, self.active);
        let result = self.file.write_all(&buf).and_then(|_| {
            if appends {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.active_len += buf.len() as u64;
                let mut done = Vec::new();
                {
                    let mut st = self.inner.lock();
                    for op in batch {
                        if let WriteOp::Append {
                            id,
                            record,
                            msg,
                            done: tx,
                        } = op
                        {
                            st.pending.insert(
                                id,
                                Entry {
                                    seg: self.active,
                                    bytes: record.len() as u64,
                                    msg,
                                },
                            );
                            *st.seg_live.entry(self.active).or_default() += 1;
                            done.push(tx);
                        }
                    }
                }
                if !done.is_empty() {
                    self.inner.ready.notify_one();
                }
                for tx in done {
                    let _ = tx.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(segment = %path.display(), error = %e, "spool write failed; the publishes of this batch are refused");
                // Cut what part of the batch reached the file so the log stays whole records.
                let _ = self.file.set_len(self.active_len);
                let mut st = self.inner.lock();
                for op in batch {
                    if let WriteOp::Append { record, done, .. } = op {
                        st.used -= record.len() as u64;
                        let _ = done.send(Err(storage_err(&path, "appending to the spool", {
                            std::io::Error::new(e.kind(), e.to_string())
                        })));
                    }
                }
            }
        }
    }

    fn rotate(&mut self) {
        let next = self.active + 1;
        let path = seg_path(&self.dir, next);
        let opened = self
            .file
            .sync_data()
            .and_then(|_| OpenOptions::new().create(true).append(true).open(&path));
        match opened {
            Ok(f) => {
                let _ = sync_dir(&self.dir);
                self.file = f;
                self.active = next;
                self.active_len = 0;
                self.inner.lock().seg_live.insert(next, 0);
            }
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "cannot start a new spool segment; continuing in the current one");
            }
        }
    }

    fn delete_delivered(&mut self) {
        let mut gone = Vec::new();
        {
            let mut st = self.inner.lock();
            while let Some((&seq, &live)) = st.seg_live.iter().next() {
                if live != 0 || seq == self.active {
                    break;
                }
                st.seg_live.remove(&seq);
                gone.push(seq);
            }
        }
        for seq in gone {
            let path = seg_path(&self.dir, seq);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete a delivered spool segment");
            }
        }
    }
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
