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
    parked: Mutex<HashMap<u64, Arc<Parked>>>,
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
            parked: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            runtime: Handle::current(),
        }))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Parked>>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries().len()
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
                    let entry = self.entries().get(&token).cloned();
                    if let Some(entry) = entry {
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

    /// Takes every parked connection out of the pool.
    fn take_all(&self) -> Vec<Conn<std::net::TcpStream>> {
        let entries: Vec<Arc<Parked>> = self.entries().drain().map(|(_, p)| p).collect();
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
        pool.entries().remove(&self.token);
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
        let (socket, conn) = conn.with_stream(());
        let _runtime = self.runtime.enter();
        match TcpStream::from_std(socket) {
            Ok(stream) => {
                let (_, conn) = conn.with_stream(stream);
                self.runtime.spawn(connection::resume(conn));
            }
            Err(e) => {
                tracing::warn!(
                    client_id = conn.client_id(),
                    "cannot take a parked connection back into service: {e}"
                );
                self.runtime.spawn(async move { conn.abandon() });
            }
        }
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
    // Registered under the entry's lock: whoever takes it out (readiness or the outbox)
    // waits until it is fully in place.
    let mut slot = entry.conn.lock().unwrap_or_else(|e| e.into_inner());
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
        drop(slot);
        pool.resume(conn);
        return;
    }
    pool.entries().insert(token, entry.clone());
    *slot = Some(conn);
    let parked = outbox.park_with(Waker::from(entry.clone()));
    drop(slot);
    if !parked {
        // Something arrived meanwhile: straight back into service.
        entry.take_out();
    }
}

fn conn_pool(conn: &Conn<TcpStream>) -> Option<Arc<IdlePool>> {
    conn.core().idle_pool()
}
