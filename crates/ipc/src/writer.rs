//! A connection's write side, shared by everything that sends on it (the reader answering calls,
//! event sinks, the client's callers).
//!
//! When nothing is queued and no write is under way, a sender writes its frame to the socket
//! itself (a non-blocking `try_write`): no task wake-up and no thread hop between a publish and
//! the subscriber's socket. Otherwise the frame is queued and the writer task sends everything
//! queued in one write. Order is the order frames were handed over: a direct write happens only
//! while the queue is empty, the writer idle and the writer not corked, all checked under the
//! same lock.
//!
//! Corking ([`FrameWriter::cork`]) gathers the frames of a burst (the answers to every frame of
//! one read, a subscription's queued events) into one write: while a [`Cork`] lives, frames are
//! queued, and dropping the last cork writes everything queued in one direct write (a remainder
//! goes to the writer task). Nothing queued is ever left without a wake-up: a frame queued while
//! corked is written by the uncork, or by the writer task when the queue passes
//! [`CORK_FLUSH_BYTES`] or the writer task is mid-write (it looks at the queue again after every
//! write).

use std::collections::VecDeque;
use std::io::IoSlice;
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
/// Bytes queued while corked before the writer task starts writing them anyway (bounds the
/// memory and the delay a long burst can build up).
pub(crate) const CORK_FLUSH_BYTES: usize = 64 * 1024;
/// Frames handed to one `writev` at most by an uncork (well under the kernel's IOV_MAX).
const UNCORK_IOVECS: usize = 64;

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
    /// Live [`Cork`]s: while above zero, senders queue instead of writing directly.
    corks: usize,
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
                corks: 0,
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

    /// Waits until the queue is below its bound (then [`FrameWriter::try_send`] does not
    /// overfill it by more than one frame per sender).
    pub(crate) async fn ready(&self) -> Result<(), WriterClosed> {
        loop {
            let space = self.inner.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let st = self.lock();
                if st.closing || st.closed {
                    return Err(WriterClosed);
                }
                if st.queue.is_empty() || st.queued_bytes < MAX_QUEUED_BYTES {
                    return Ok(());
                }
            }
            space.await;
        }
    }

    /// Hands over one frame without waiting (beyond the queue bound if need be): for `Drop`,
    /// and for senders that waited for [`FrameWriter::ready`].
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), WriterClosed> {
        let mut st = self.lock();
        if st.closing || st.closed {
            return Err(WriterClosed);
        }
        self.enqueue_or_write(&mut st, frame);
        Ok(())
    }

    /// Queues frames instead of writing them until the returned cork (and every other live cork
    /// of this writer) is dropped; the last drop writes them all in one direct write. A cork may
    /// be held across awaits: past [`CORK_FLUSH_BYTES`] queued the writer task writes anyway,
    /// so a sender waiting for queue space is never stuck behind a cork.
    pub(crate) fn cork(&self) -> Cork {
        self.lock().corks += 1;
        Cork {
            inner: self.inner.clone(),
        }
    }

    fn enqueue_or_write(&self, st: &mut State, frame: Bytes) {
        let mut frame = frame;
        if st.corks > 0 {
            st.queued_bytes += frame.len();
            st.queue.push_back(frame);
            if st.queued_bytes >= CORK_FLUSH_BYTES {
                self.inner.wake.notify_one();
            }
            return;
        }
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

/// Holds a [`FrameWriter`] corked; see [`FrameWriter::cork`].
pub(crate) struct Cork {
    inner: Arc<Inner>,
}

impl Drop for Cork {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        st.corks -= 1;
        if st.corks > 0 || st.queue.is_empty() {
            return;
        }
        let was_full = st.queued_bytes >= MAX_QUEUED_BYTES;
        // Writer task idle (it holds the half while writing; then it looks at the queue again
        // by itself): write what is queued here, in order.
        let State {
            half,
            queue,
            queued_bytes,
            ..
        } = &mut *st;
        if let Some(half) = half.as_ref() {
            write_queued(half.as_ref(), queue, queued_bytes);
        }
        let left = !st.queue.is_empty();
        drop(st);
        if left {
            self.inner.wake.notify_one();
        }
        if was_full {
            self.inner.space.notify_waiters();
        }
    }
}

/// Writes as much of the queue as the socket takes now (`writev`, no waiting); what was
/// written leaves the queue, a partly written frame stays as its unwritten rest.
fn write_queued(
    stream: &tokio::net::UnixStream,
    queue: &mut VecDeque<Bytes>,
    queued_bytes: &mut usize,
) {
    while !queue.is_empty() {
        let result = if queue.len() == 1 {
            stream.try_write(&queue[0])
        } else {
            let mut slices = [IoSlice::new(&[]); UNCORK_IOVECS];
            let mut n = 0;
            for (slot, frame) in slices.iter_mut().zip(queue.iter()) {
                *slot = IoSlice::new(frame);
                n += 1;
            }
            stream.try_write_vectored(&slices[..n])
        };
        // WouldBlock, or an error the writer task will meet and report.
        let Ok(mut written) = result else {
            return;
        };
        if written == 0 {
            return;
        }
        *queued_bytes -= written;
        while written > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                queue.pop_front();
            } else {
                *front = front.slice(written..);
                written = 0;
            }
        }
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
            // Corked frames wait for the uncork, unless they pile up or the writer is closing.
            let held = st.corks > 0 && st.queued_bytes < CORK_FLUSH_BYTES && !st.closing;
            if st.queue.is_empty() || held {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    fn frame(tag: u8, len: usize) -> Bytes {
        Bytes::from(vec![tag; len])
    }

    /// Reads exactly `len` bytes from `peer`.
    async fn read_exact(peer: &mut UnixStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got))
            .await
            .expect("bytes arrive")
            .expect("read");
        got
    }

    /// Whether the peer has nothing to read right now.
    fn nothing_readable(peer: &UnixStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(peer.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corked_frames_from_another_task_are_written_at_uncork_in_order() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (writer, task) = FrameWriter::spawn(write);
        let cork = writer.cork();
        writer.send(frame(1, 10)).await.unwrap();
        let other = writer.clone();
        tokio::spawn(async move { other.send(frame(2, 20)).await.unwrap() })
            .await
            .unwrap();
        writer.try_send(frame(3, 30)).unwrap();
        // Corked: nothing reached the socket, and nothing will until the cork goes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(nothing_readable(&peer), "a corked frame was written early");
        drop(cork);
        let got = read_exact(&mut peer, 60).await;
        let mut want = vec![1u8; 10];
        want.extend([2u8; 20]);
        want.extend([3u8; 30]);
        assert_eq!(got, want);
        // Uncorked: a frame goes straight out again.
        writer.send(frame(4, 5)).await.unwrap();
        assert_eq!(read_exact(&mut peer, 5).await, vec![4u8; 5]);
        writer.close();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cork_held_across_awaits_by_one_task_while_another_sends() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (writer, task) = FrameWriter::spawn(write);
        let corked = writer.clone();
        let (queued_tx, queued_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn(async move {
            let cork = corked.cork();
            corked.send(frame(1, 100)).await.unwrap();
            queued_tx.send(()).unwrap();
            // Held across an await while another task sends.
            release_rx.await.unwrap();
            corked.send(frame(3, 100)).await.unwrap();
            drop(cork);
        });
        queued_rx.await.unwrap();
        writer.send(frame(2, 100)).await.unwrap();
        // A second cork nests: the frames wait for the last one.
        let nested = writer.cork();
        release_tx.send(()).unwrap();
        holder.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            nothing_readable(&peer),
            "written while a cork was still held"
        );
        drop(nested);
        let got = read_exact(&mut peer, 300).await;
        let mut want = vec![1u8; 100];
        want.extend([2u8; 100]);
        want.extend([3u8; 100]);
        assert_eq!(got, want);
        writer.close();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_corked_burst_is_written_by_the_writer_task_and_never_stalls() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (writer, task) = FrameWriter::spawn(write);
        // Far beyond the queue bound: senders would wait forever if a cork held the bytes back.
        const FRAMES: usize = 3000;
        const LEN: usize = 3001;
        let reader = tokio::spawn(async move { read_exact(&mut peer, FRAMES * LEN).await });
        let cork = writer.cork();
        for i in 0..FRAMES {
            writer.send(frame((i % 251) as u8, LEN)).await.unwrap();
        }
        drop(cork);
        let got = reader.await.unwrap();
        for (i, chunk) in got.chunks(LEN).enumerate() {
            assert!(
                chunk.iter().all(|b| *b == (i % 251) as u8),
                "frame {i} is out of order or torn"
            );
        }
        writer.close();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn order_holds_when_corks_and_direct_writes_interleave_from_many_tasks() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (writer, task) = FrameWriter::spawn(write);
        const TASKS: usize = 4;
        const PER_TASK: usize = 500;
        let mut senders = Vec::new();
        for t in 0..TASKS {
            let writer = writer.clone();
            senders.push(tokio::spawn(async move {
                let mut cork = None;
                for i in 0..PER_TASK {
                    if i % 7 == 0 {
                        cork = Some(writer.cork());
                    }
                    // Frame: task id, then its sequence number.
                    let mut f = vec![t as u8];
                    f.extend((i as u32).to_be_bytes());
                    writer.send(Bytes::from(f)).await.unwrap();
                    if i % 7 == 3 {
                        cork = None;
                        tokio::task::yield_now().await;
                    }
                }
                drop(cork);
            }));
        }
        let got = read_exact(&mut peer, TASKS * PER_TASK * 5).await;
        for s in senders {
            s.await.unwrap();
        }
        let mut next = [0u32; TASKS];
        for f in got.chunks(5) {
            let t = f[0] as usize;
            let seq = u32::from_be_bytes(f[1..5].try_into().unwrap());
            assert_eq!(seq, next[t], "task {t}'s frames out of order");
            next[t] += 1;
        }
        writer.close();
        task.await.unwrap();
    }
}
