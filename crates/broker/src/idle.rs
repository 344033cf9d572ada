//! The idle pool: plain-TCP connections with nothing to do wait here without a task.
//!
//! A parked connection is its connection state and its socket, taken off the runtime's reactor
//! and registered (one-shot) in the pool's own epoll set; no task, no reactor registration.
//! It goes back into service, as a new task, when its socket becomes readable (data, end of
//! stream, error) or when its session's outbox wakes it (a delivery, a keep-alive expiry or a
//! shutdown: all of them come through the outbox).
//!
//! Architecture invariant: a parked connection is taken out exactly once, by whoever takes its
//! state out of its entry first (the pool on readiness, or the outbox's waker); that one removes
//! it from the epoll set before its socket goes back to the reactor.
//! Architecture invariant: no readiness is lost. An entry is in the pool's map before its socket
//! enters the epoll set (level-triggered, so what happened before, such as the client's close
//! right after its CONNACK, is reported at once) and stays there until taken out; the one-shot
//! event is thus always matched to its entry. Once the pool stops (shutdown, after every session
//! was told to go), nothing parks any more.

use crate::connection::{self, Conn};
use rustix::event::epoll;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Wake, Waker};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;

/// Readiness events taken from the epoll set per system call.
const EVENTS_PER_WAIT: usize = 256;

pub(crate) struct IdlePool {
    epoll: AsyncFd<OwnedFd>,
    /// The parked connections by epoll token; `None` once the pool stopped taking any.
    parked: Mutex<Option<HashMap<u64, Arc<Parked>>>>,
    next_token: AtomicU64,
    runtime: Handle,
}

/// One parked connection; also the waker its outbox holds.
struct Parked {
    pool: Weak<IdlePool>,
    token: u64,
    conn: Mutex<Option<Conn<std::net::TcpStream>>>,
}

impl IdlePool {
    /// Creates the pool on the current runtime.
    pub fn new() -> std::io::Result<Arc<IdlePool>> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(Arc::new(IdlePool {
            // SAFETY: the pool owns the epoll descriptor and neither closes nor replaces it
            // while the `AsyncFd` holds it.
            epoll: unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? },
            parked: Mutex::new(Some(HashMap::new())),
            next_token: AtomicU64::new(1),
            runtime: Handle::current(),
        }))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, Arc<Parked>>>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry parked under `token`, if it is still there.
    fn entry(&self, token: u64) -> Option<Arc<Parked>> {
        self.entries().as_ref()?.get(&token).cloned()
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries().as_ref().map_or(0, HashMap::len)
    }

    /// Takes connections whose sockets became readable back into service, until `stop`; then
    /// ends the sessions of connections still parked.
    pub async fn run(self: Arc<IdlePool>, mut stop: watch::Receiver<bool>) {
        let mut tokens = Vec::new();
        loop {
            let mut ready = tokio::select! {
                r = self.epoll.readable() => match r {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!("idle pool: waiting on its epoll set failed: {e}");
                        break;
                    }
                },
                _ = stop.changed() => break,
            };
            // Cleared first: readiness that comes while draining is seen on the next turn.
            ready.clear_ready();
            while self.ready_tokens(&mut tokens) {
                for token in tokens.drain(..) {
                    // Always found: an entry is in the map before its socket is in the epoll
                    // set, and leaves the map only when taken out (which also disarms it).
                    if let Some(entry) = self.entry(token) {
                        entry.take_out();
                    }
                }
            }
        }
        for conn in self.take_all() {
            conn.shut_down();
        }
    }

    /// Collects the tokens of parked sockets that became ready; returns whether there were any.
    fn ready_tokens(&self, tokens: &mut Vec<u64>) -> bool {
        let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            match epoll::wait(
                self.epoll.get_ref(),
                rustix::buffer::spare_capacity(&mut events),
                Some(&zero),
            ) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!("idle pool: epoll_wait failed: {e}");
                    return false;
                }
            }
        }
        tokens.extend(events.iter().map(|e| e.data.u64()));
        !tokens.is_empty()
    }

    /// Takes every parked connection out of the pool; none parks from then on.
    fn take_all(&self) -> Vec<Conn<std::net::TcpStream>> {
        let entries: Vec<Arc<Parked>> = self
            .entries()
            .take()
            .into_iter()
            .flatten()
            .map(|(_, p)| p)
            .collect();
        entries
            .iter()
            .filter_map(|e| e.conn.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect()
    }
}

impl Drop for IdlePool {
    /// A parked connection and its outbox refer to each other (the outbox holds the entry as
    /// its waker): take them apart so that sockets close even if `run` never finished (its
    /// runtime was dropped). Their sessions are not touched here, as this may run anywhere.
    fn drop(&mut self) {
        drop(self.take_all());
    }
}

impl Parked {
    /// Puts the connection back into service, unless someone else already did.
    fn take_out(self: &Arc<Parked>) {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(conn) = conn else { return };
        let Some(pool) = self.pool.upgrade() else {
            // The pool is going away; so is the server.
            conn.shut_down();
            return;
        };
        if let Some(entries) = pool.entries().as_mut() {
            entries.remove(&self.token);
        }
        pool.resume(conn);
    }
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.take_out();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.take_out();
    }
}

impl IdlePool {
    /// Leaves the epoll set, goes back to the reactor and gets a task again. May run on any
    /// thread, and under the broker's state lock (an outbox's waker): nothing here takes it,
    /// except on failure, which is therefore finished on a task of its own.
    fn resume(&self, conn: Conn<std::net::TcpStream>) {
        let _ = epoll::delete(self.epoll.get_ref(), conn_socket(&conn));
        resume_on_task(conn, self.runtime.clone());
    }
}

fn conn_socket(conn: &Conn<std::net::TcpStream>) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd;
    conn.stream().as_fd()
}

/// Parks an idle connection: off the reactor, into the pool's epoll set, its task ends.
pub(crate) fn park(conn: Conn<TcpStream>) {
    let Some(pool) = conn_pool(&conn) else {
        // No pool (the server is stopping): keep serving it as a task.
        tokio::spawn(connection::resume(conn));
        return;
    };
    let (stream, conn) = conn.with_stream(());
    let socket = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                client_id = conn.client_id(),
                "cannot park a connection: {e}"
            );
            conn.abandon();
            return;
        }
    };
    let (_, conn) = conn.with_stream(socket);
    let outbox = conn.outbox().clone();
    let token = pool.next_token.fetch_add(1, Ordering::Relaxed);
    let entry = Arc::new(Parked {
        pool: Arc::downgrade(&pool),
        token,
        conn: Mutex::new(None),
    });
    // The entry is locked until the connection is fully in place: whoever takes it out
    // (readiness or the outbox) waits for that.
    let mut slot = entry.conn.lock().unwrap_or_else(|e| e.into_inner());
    // Into the map before the epoll set: a socket that is already readable (the client sent
    // something or went away right after its last packet) is reported at once, maybe on another
    // thread, and a one-shot event whose token is not found yet would be lost for good.
    match pool.entries().as_mut() {
        Some(entries) => entries.insert(token, entry.clone()),
        None => {
            // The pool stopped (the broker is shutting down): the connection keeps a task and
            // learns of the shutdown through its outbox.
            drop(slot);
            resume_on_task(conn, pool.runtime.clone());
            return;
        }
    };
    // Level-triggered (one-shot): readiness that came before this call is reported too.
    let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
    if let Err(e) = epoll::add(
        pool.epoll.get_ref(),
        conn_socket(&conn),
        epoll::EventData::new_u64(token),
        flags,
    ) {
        tracing::warn!(
            client_id = conn.client_id(),
            "cannot park a connection: {e}"
        );
        if let Some(entries) = pool.entries().as_mut() {
            entries.remove(&token);
        }
        drop(slot);
        pool.resume(conn);
        return;
    }
    *slot = Some(conn);
    let parked = outbox.park_with(Waker::from(entry.clone()));
    drop(slot);
    if !parked {
        // Something arrived meanwhile: straight back into service.
        entry.take_out();
    }
}

/// Gives a connection that was about to park its task back, on the broker's runtime.
fn resume_on_task(conn: Conn<std::net::TcpStream>, runtime: Handle) {
    let (socket, conn) = conn.with_stream(());
    let _runtime = runtime.enter();
    match TcpStream::from_std(socket) {
        Ok(stream) => {
            let (_, conn) = conn.with_stream(stream);
            runtime.spawn(connection::resume(conn));
        }
        Err(e) => {
            tracing::warn!(
                client_id = conn.client_id(),
                "cannot take a connection back into service: {e}"
            );
            runtime.spawn(async move { conn.abandon() });
        }
    }
}

fn conn_pool(conn: &Conn<TcpStream>) -> Option<Arc<IdlePool>> {
    conn.core().idle_pool()
}
