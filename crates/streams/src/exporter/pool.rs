//! Shared limits across exporters: a worker pool handed out by priority, and average-bandwidth
//! caps (kbit/s).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// At most `size` exports upload at once (`STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE`); when
/// all are busy, the next free slot goes to the most urgent waiter (lowest priority number),
/// first come first served within a priority.
pub(crate) struct PriorityPool {
    state: Mutex<PoolState>,
}

struct PoolState {
    available: usize,
    next_ticket: u64,
    waiters: BTreeMap<(u64, u64), oneshot::Sender<Permit>>,
}

/// A slot of the pool; returning it (drop) hands it to the next waiter.
pub(crate) struct Permit {
    pool: Option<Arc<PriorityPool>>,
}

impl PriorityPool {
    pub(crate) fn new(size: usize) -> Arc<PriorityPool> {
        Arc::new(PriorityPool {
            state: Mutex::new(PoolState {
                available: size.max(1),
                next_ticket: 0,
                waiters: BTreeMap::new(),
            }),
        })
    }

    pub(crate) async fn acquire(self: &Arc<Self>, priority: u64) -> Permit {
        let rx = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.available > 0 && s.waiters.is_empty() {
                s.available -= 1;
                return Permit {
                    pool: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.waiters.insert((priority, ticket), tx);
            rx
        };
        // The sender is only dropped after sending, so this always yields a permit; a dropped
        // waiter drops the permit in the channel, which returns it to the pool.
        match rx.await {
            Ok(p) => p,
            Err(_) => Permit {
                pool: Some(self.clone()),
            },
        }
    }

    fn release(self: &Arc<Self>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((_, tx)) = s.waiters.pop_first() {
            let permit = Permit {
                pool: Some(self.clone()),
            };
            match tx.send(permit) {
                Ok(()) => return,
                // That waiter is gone: the permit comes back without being released twice.
                Err(mut p) => p.pool = None,
            }
        }
        s.available += 1;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release();
        }
    }
}

/// An average rate cap: each transfer reserves its bytes on a timeline that advances at the
/// configured rate, and waits until its reservation starts.
pub(crate) struct Bandwidth {
    bytes_per_sec: f64,
    next_free: Mutex<Option<Instant>>,
}

impl Bandwidth {
    pub(crate) fn from_kbit_per_sec(kbps: u64) -> Bandwidth {
        Bandwidth {
            bytes_per_sec: (kbps.max(1) as f64) * 1000.0 / 8.0,
            next_free: Mutex::new(None),
        }
    }

    /// Waits until `bytes` may be sent under the cap.
    pub(crate) async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = next.filter(|t| *t > now).unwrap_or(now);
            *next = Some(start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec));
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn freed_slots_go_to_the_most_urgent_waiter() {
        let pool = PriorityPool::new(1);
        let held = pool.acquire(5).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, prio) in [(0, 9u64), (1, 1), (2, 5)] {
            let waiter_pool = pool.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _p = waiter_pool.acquire(prio).await;
                order.lock().unwrap().push(i);
            }));
            // Let each waiter register before the next.
            while pool.state.lock().unwrap().waiters.len() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![1, 2, 0]);
        assert_eq!(pool.state.lock().unwrap().available, 1);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_leak_its_slot() {
        let pool = PriorityPool::new(1);
        let held = pool.acquire(1).await;
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.acquire(1).await });
        while pool.state.lock().unwrap().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        let _again = pool.acquire(3).await;
        assert_eq!(pool.state.lock().unwrap().available, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_spaces_transfers_by_size() {
        // 80 kbit/s = 10 000 bytes/s: three 10 kB transfers need two seconds of reservations.
        let bw = Bandwidth::from_kbit_per_sec(80);
        let t0 = Instant::now();
        for _ in 0..3 {
            bw.take(10_000).await;
        }
        assert_eq!(t0.elapsed().as_secs(), 2);
    }
}
