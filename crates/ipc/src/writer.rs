//! A connection's write side, shared by everything that sends on it (the reader answering calls,
//! event sinks, the client's callers).
//!
//! When nothing is queued and no write is under way, a sender writes its frame to the socket
//! itself (a non-blocking `try_write`): no task wake-up and no thread hop between a publish and
//! the subscriber's socket. Otherwise the frame is queued and the writer task sends everything
//! queued in one write. Order is the order frames were handed over: a direct write happens only
//! while the queue is empty and the writer idle, both checked under the same lock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Bytes queued per connection before senders wait (a slow reader slows its own senders only).
const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// Bytes gathered for one write at most (larger frames go out alone).
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// The connection is closed (peer gone, write failed, or closed by its owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterClosed;

#[derive(Clone)]
pub(crate) struct FrameWriter {
    inner: Arc<Inner>,
    /// Closes the writer when the last handle goes (e.g. its connection task was aborted), so
    /// the writer task never outlives everyone who could send.
    _last: Arc<CloseOnDrop>,
}

struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter").finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
    /// The writer task: frames were queued, or the writer is closing.
    wake: Notify,
    /// Senders waiting for queue space.
    space: Notify,
}

struct State {
    /// The socket's write half; `None` while the writer task holds it for a write, and after
    /// the close (dropping it shuts the write side down, so the peer sees the end).
    half: Option<OwnedWriteHalf>,
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// No more frames are accepted; the writer flushes the queue and ends.
    closing: bool,
    /// The writer ended (flushed, or the socket failed).
    closed: bool,
}

impl FrameWriter {
    /// Starts the writer task for `half`. The handle ends once [`FrameWriter::close`] was called
    /// and the queue is flushed, or the socket failed.
    pub(crate) fn spawn(half: OwnedWriteHalf) -> (FrameWriter, JoinHandle<()>) {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                half: Some(half),
                queue: VecDeque::new(),
                queued_bytes: 0,
                closing: false,
                closed: false,
            }),
            wake: Notify::new(),
            space: Notify::new(),
        });
        let task = tokio::spawn(run(inner.clone()));
        let last = Arc::new(CloseOnDrop(inner.clone()));
        (FrameWriter { inner, _last: last }, task)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands over one encoded frame, waiting while the connection has too much queued.
    pub(crate) async fn send(&self, frame: Bytes) -> Result<(), WriterClosed> {
        loop {
            let space = self.inner.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closing || st.closed {
                    return Err(WriterClosed);
                }
                if st.queue.is_empty() || st.queued_bytes < MAX_QUEUED_BYTES {
                    self.enqueue_or_write(&mut st, frame);
                    return Ok(());
                }
            }
            space.await;
        }
    }

    /// Hands over one frame without waiting (beyond the queue bound if need be): for `Drop`.
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), WriterClosed> {
        let mut st = self.lock();
        if st.closing || st.closed {
            return Err(WriterClosed);
        }
        self.enqueue_or_write(&mut st, frame);
        Ok(())
    }

    fn enqueue_or_write(&self, st: &mut State, frame: Bytes) {
        let mut frame = frame;
        if st.queue.is_empty()
            && let Some(half) = st.half.as_ref()
        {
            // Idle writer and nothing queued: write it here.
            let stream: &tokio::net::UnixStream = half.as_ref();
            match stream.try_write(&frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => frame = frame.slice(n..),
                // WouldBlock, or an error the writer task will meet and report.
                Err(_) => {}
            }
        }
        st.queued_bytes += frame.len();
        st.queue.push_back(frame);
        self.inner.wake.notify_one();
    }

    /// Accepts no more frames; the writer flushes what is queued, shuts the write side down and
    /// ends.
    pub(crate) fn close(&self) {
        self.inner.close();
    }
}

impl Inner {
    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closing = true;
        self.wake.notify_one();
        self.space.notify_waiters();
    }
}

async fn run(inner: Arc<Inner>) {
    let lock = || inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut batch = BytesMut::new();
    loop {
        let wake = inner.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let taken = {
            let mut st = lock();
            if st.queue.is_empty() {
                if st.closing {
                    st.closed = true;
                    // Dropping the write half shuts the write side down.
                    st.half = None;
                    break;
                }
                None
            } else {
                let Some(half) = st.half.take() else {
                    break;
                };
                st.queued_bytes = 0;
                let frames: Vec<Bytes> = st.queue.drain(..).collect();
                Some((half, frames))
            }
        };
        let Some((mut half, frames)) = taken else {
            wake.await;
            continue;
        };
        inner.space.notify_waiters();
        let result = if frames.len() == 1 {
            half.write_all(&frames[0]).await
        } else {
            let mut result = Ok(());
            for frame in &frames {
                if !batch.is_empty() && batch.len() + frame.len() > WRITE_BATCH_BYTES {
                    result = half.write_all(&batch).await;
                    batch.clear();
                    if result.is_err() {
                        break;
                    }
                }
                batch.extend_from_slice(frame);
            }
            if result.is_ok() && !batch.is_empty() {
                result = half.write_all(&batch).await;
            }
            batch.clear();
            result
        };
        if result.is_err() {
            {
                let mut st = lock();
                st.closed = true;
                st.queue.clear();
                st.queued_bytes = 0;
            }
            inner.space.notify_waiters();
            break;
        }
        lock().half = Some(half);
    }
}
