//! Group commit for durable appends: many callers waiting for their records to reach the disk
//! share each fsync.
//!
//! Leader/follower: a caller that finds no sync under way and enough records asked for leads the
//! next sync itself (no hand-off to another thread), without holding any lock during the fsync;
//! the others sleep until the leader decides their fate. The sync covers every record appended
//! before it started, so a leader acknowledges every waiter below the sync's target.
//!
//! Gathering: after an fsync, the writers it acknowledged append again. On few CPUs the first of
//! them would otherwise lead the next sync before the others get to run, and each sync would
//! cover about half of them. So the next sync waits until as many callers are waiting as were
//! inside when the previous sync ended (the caller that completes the batch leads at once), or
//! until a bound has passed since the first of them arrived: twice the last fsync's duration, at
//! most [`MAX_GATHER`]. The bound outlasts a normal gathering plus the sync it leads to, so the
//! waiter holding the timer is woken by that sync's end rather than by its timeout in the middle
//! of the fsync (a bound of half the fsync cost one more wake-up per commit, ~15% of the
//! throughput). The target learns from every commit, so writers that go away cost one bounded
//! wait; one writer has a target of one and never waits.
//!
//! Wake-ups: every waiter has its own verdict, decided under the lock by the leader whose sync
//! covered it, and watches one futex word that each commit end bumps; a waiter that sees it move
//! reads its verdict without taking the lock again (no herd on the mutex). Waking sleeping
//! threads is the costly part of a commit on few, virtual CPUs: waking 7 took ~27 µs of a
//! ~140 µs cycle on the leader's path here, and the 8-writer commit reached 70-80% of one thread
//! writing 8 records per fdatasync. So, while syncs are fast (at most [`MAX_SPIN_SYNC`]), a
//! waiter first yields the CPU for up to twice the last fsync, checking the word between yields
//! (at most [`MAX_SPINNERS`] at once), and only then sleeps on it; the leader makes its one
//! wake-up call only when someone sleeps. A yielding waiter runs only where the CPU would
//! otherwise idle (it lets every runnable thread go first), but it does show as CPU time:
//! ~1.7 CPUs instead of ~0.6 for 8 durable writers on 2 vCPUs, for 88-99% of that loop.
//! The same approach as RocksDB's write thread and the kernel's optimistic spinning; slower
//! disks (SD cards, eMMC: milliseconds per fsync) never spin.
//!
//! Architecture invariant (no lost wake-up): every decision is taken under the one state mutex,
//! and whenever no sync is under way and callers are waiting, exactly one of them is the timer:
//! it waits no later than its deadline and leads when the deadline passes. A sync's leader,
//! when it ends, decides every waiter its sync covered and names the first remaining waiter the
//! timer. A waiter reads the futex word under the lock before it waits and the word changes
//! under the lock, so a change between the two ends the wait at once. A waiter counts itself
//! parked before it reads the word a last time and sleeps; the leader bumps the word before it
//! reads that count (both sequentially consistent), so either the waiter sees the new word or
//! the leader sees the waiter and wakes it. Every wait re-checks the state in a loop.

use super::StoreError;
use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a gathering commit waits for writers before it syncs what it has.
pub(super) const MAX_GATHER: Duration = Duration::from_millis(1);

/// Waiters yield the CPU before sleeping only while syncs take at most this long; on slower
/// disks a wake-up is a negligible part of each commit.
const MAX_SPIN_SYNC: Duration = Duration::from_micros(250);

/// Waiters yielding at once; the others sleep at once (a server may have hundreds waiting).
const MAX_SPINNERS: usize = 8;

/// Failed ranges remembered per stream (consecutive failures merge into one); the oldest are
/// forgotten first.
const MAX_FAILED_RANGES: usize = 1024;

const UNDECIDED: u8 = 0;
const DURABLE: u8 = 1;
const FAILED: u8 = 2;

/// What one sync attempt did: the next sequence number it was to cover (every record below it
/// was written before the sync started) and whether it succeeded.
pub(super) struct SyncOutcome {
    pub covers: u64,
    pub result: Result<(), StoreError>,
}

/// One parked caller.
struct Waiter {
    seq: u64,
    /// Set once, under the state lock, by the leader whose sync covered `seq`.
    verdict: AtomicU8,
    /// The failure of the sync that covered `seq`, when `verdict` is [`FAILED`].
    error: Mutex<Option<StoreError>>,
}

struct State {
    /// Next sequence number known to be on disk.
    durable_next: u64,
    syncing: bool,
    /// Callers inside [`GroupCommit::wait`] that have not been decided yet (leader included).
    inside: usize,
    /// Callers the next sync waits for: `inside` when the last sync ended.
    target: usize,
    last_sync: Duration,
    /// Parked callers whose verdict is not decided yet, in arrival order.
    waiters: Vec<Arc<Waiter>>,
    /// The waiter that leads when the gathering deadline passes, and that deadline.
    timer: Option<(Arc<Waiter>, Instant)>,
    /// The records of failed syncs (sorted, disjoint) and the last error: they are never
    /// acknowledged, even when their callers arrive after the failure and a later sync
    /// succeeds (a failed fsync may have dropped their pages). At most [`MAX_FAILED_RANGES`].
    failed: VecDeque<Range<u64>>,
    last_failure: Option<StoreError>,
}

impl State {
    /// The failure of a sync that covered `seq`, if one did and `seq` was not durable before.
    fn failed_error(&self, seq: u64) -> Option<StoreError> {
        let last = self.failed.back()?;
        if seq >= last.end {
            return None;
        }
        let i = self.failed.partition_point(|r| r.end <= seq);
        let hit = self.failed.get(i).is_some_and(|r| r.contains(&seq));
        hit.then(|| self.last_failure.as_ref().map(duplicate))?
    }

    fn remember_failure(&mut self, lost: Range<u64>, error: StoreError) {
        if lost.is_empty() {
            return;
        }
        // Failures without a success between them cover nested ranges from the same start.
        while self.failed.back().is_some_and(|r| r.end >= lost.start) {
            let r = self.failed.pop_back().expect("checked");
            if r.start < lost.start {
                self.failed.push_back(r.start..lost.end.max(r.end));
                self.last_failure = Some(error);
                return;
            }
        }
        self.failed.push_back(lost);
        if self.failed.len() > MAX_FAILED_RANGES {
            self.failed.pop_front();
        }
        self.last_failure = Some(error);
    }

    fn gather_bound(&self) -> Duration {
        self.last_sync.saturating_mul(2).min(MAX_GATHER)
    }

    /// How long a waiter yields the CPU before it sleeps: about one gathering and one sync,
    /// when syncs are fast enough for a wake-up to be a noticeable part of them.
    fn spin_bound(&self) -> Duration {
        if self.last_sync <= MAX_SPIN_SYNC {
            self.last_sync.saturating_mul(2)
        } else {
            Duration::ZERO
        }
    }

    fn is_timer(&self, me: &Arc<Waiter>) -> Option<Instant> {
        match &self.timer {
            Some((t, deadline)) if Arc::ptr_eq(t, me) => Some(*deadline),
            _ => None,
        }
    }
}

pub(super) struct GroupCommit {
    state: Mutex<State>,
    commits: AtomicU64,
    /// Futex word: bumped under the state lock whenever verdicts or the timer change; parked
    /// callers sleep on it and are all woken by one system call.
    epoch: AtomicU32,
    /// Callers asleep on `epoch` (or about to be): a commit end wakes them only when there are.
    parked: AtomicUsize,
    /// Callers yielding the CPU while they wait (at most [`MAX_SPINNERS`]).
    spinners: AtomicUsize,
    /// Times a caller went to sleep on `epoch` (tests check both ways of waiting are taken).
    sleeps: AtomicU64,
    /// Off: callers sleep at once (the store's setting, shared by all its streams).
    yielding: Arc<AtomicBool>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update of the state is complete before anything that can panic; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupCommit {
    /// `durable_next`: the next sequence number, everything below it being on disk already;
    /// `yielding`: whether waiters may yield the CPU before they sleep.
    pub(super) fn new(durable_next: u64, yielding: Arc<AtomicBool>) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State {
                durable_next,
                syncing: false,
                inside: 0,
                target: 1,
                last_sync: Duration::ZERO,
                waiters: Vec::new(),
                timer: None,
                failed: VecDeque::new(),
                last_failure: None,
            }),
            commits: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
            parked: AtomicUsize::new(0),
            spinners: AtomicUsize::new(0),
            sleeps: AtomicU64::new(0),
            yielding,
        }
    }

    /// Waits until the epoch word moves from `seen`, `deadline` passes or a spurious wake-up
    /// (callers re-check their state): first yields the CPU for up to `spin`, then sleeps on
    /// the word.
    fn park(&self, seen: u32, deadline: Option<Instant>, spin: Duration) {
        if !spin.is_zero() && self.yielding.load(Ordering::Relaxed) {
            if self.spinners.fetch_add(1, Ordering::Relaxed) < MAX_SPINNERS {
                let start = Instant::now();
                let until = deadline.map_or(start + spin, |d| d.min(start + spin));
                while self.epoch.load(Ordering::Acquire) == seen && Instant::now() < until {
                    // Runs whatever else wants this CPU first (other writers, the leader
                    // back from its fsync); spins only where the CPU would idle.
                    std::thread::yield_now();
                }
            }
            self.spinners.fetch_sub(1, Ordering::Relaxed);
            if self.epoch.load(Ordering::Acquire) != seen {
                return;
            }
        }
        let now = Instant::now();
        let timeout = match deadline {
            Some(d) if d <= now => return,
            Some(d) => Some(d - now),
            None => None,
        };
        // Counted before the word is read again (both sequentially consistent), so a commit
        // end that bumps the word either is seen here or sees this caller and wakes it.
        self.parked.fetch_add(1, Ordering::SeqCst);
        if self.epoch.load(Ordering::SeqCst) == seen {
            self.sleeps.fetch_add(1, Ordering::Relaxed);
            futex_wait(&self.epoch, seen, timeout);
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the callers asleep on the epoch word, after it was bumped; none asleep, no call
    /// (waking threads is the costly part of a commit on few, virtual CPUs).
    fn wake_parked(&self) {
        if self.parked.load(Ordering::SeqCst) > 0 {
            futex_wake_all(&self.epoch);
        }
    }

    /// Times a caller slept on the futex word instead of only yielding.
    #[cfg(test)]
    pub(super) fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::Relaxed)
    }

    /// Successful syncs so far.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Blocks until record `seq` (already written) is covered by a successful `sync`, or fails
    /// with the error of the sync attempt that covered it. `sync` flushes everything written so
    /// far; it runs in the calling thread when this caller leads, never under the state lock.
    pub(super) fn wait(&self, seq: u64, sync: &dyn Fn() -> SyncOutcome) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        if let Some(e) = s.failed_error(seq) {
            return Err(e);
        }
        if s.durable_next > seq {
            return Ok(());
        }
        s.inside += 1;
        let mut me: Option<Arc<Waiter>> = None;
        loop {
            if let Some(verdict) = me.as_ref().and_then(|w| w.verdict()) {
                return verdict;
            }
            if s.syncing {
                // The leader decides this record when its sync ends.
                let w = me.get_or_insert_with(|| register(&mut s, seq)).clone();
                if s.is_timer(&w).is_some() {
                    s.timer = None;
                }
                let epoch = self.epoch.load(Ordering::Acquire);
                let spin = s.spin_bound();
                drop(s);
                self.park(epoch, None, spin);
                if let Some(verdict) = w.verdict() {
                    return verdict;
                }
                s = lock(&self.state);
                continue;
            }
            let now = Instant::now();
            let pending = s.waiters.len() + usize::from(me.is_none());
            let my_deadline = me.as_ref().and_then(|w| s.is_timer(w));
            if pending >= s.target || my_deadline.is_some_and(|d| now >= d) {
                if let Some(w) = me.take() {
                    s.waiters.retain(|o| !Arc::ptr_eq(o, &w));
                    if my_deadline.is_some() {
                        s.timer = None;
                    }
                }
                break;
            }
            let w = me.get_or_insert_with(|| register(&mut s, seq)).clone();
            if s.timer.is_none() {
                let deadline = now + s.gather_bound();
                s.timer = Some((w.clone(), deadline));
            }
            let deadline = s.is_timer(&w);
            let epoch = self.epoch.load(Ordering::Acquire);
            let spin = s.spin_bound();
            drop(s);
            self.park(epoch, deadline, spin);
            if let Some(verdict) = w.verdict() {
                return verdict;
            }
            s = lock(&self.state);
        }

        s.syncing = true;
        drop(s);
        let started = Instant::now();
        let unwinding = LeaderGone(self);
        let outcome = sync();
        std::mem::forget(unwinding);
        let took = started.elapsed();
        let mut s = lock(&self.state);
        s.syncing = false;
        s.last_sync = took;
        // Everyone inside now (the leader, the waiters it is about to acknowledge, those that
        // arrived during the sync) is a writer the next sync should gather.
        s.target = s.inside.max(1);
        s.inside -= 1;
        match &outcome.result {
            Ok(()) => {
                s.durable_next = s.durable_next.max(outcome.covers);
                self.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let lost = s.durable_next..outcome.covers;
                s.remember_failure(lost, duplicate(e));
            }
        }
        let mut wake = false;
        let mut i = 0;
        while i < s.waiters.len() {
            if s.waiters[i].seq < outcome.covers {
                let w = s.waiters.remove(i);
                match &outcome.result {
                    Ok(()) => w.verdict.store(DURABLE, Ordering::Release),
                    Err(e) => {
                        *w.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(duplicate(e));
                        w.verdict.store(FAILED, Ordering::Release);
                    }
                }
                s.inside -= 1;
                wake = true;
            } else {
                i += 1;
            }
        }
        // Callers that arrived during the sync gather for the next one, with a timer.
        s.timer = None;
        if let Some(first) = s.waiters.first().cloned() {
            let deadline = Instant::now() + s.gather_bound();
            s.timer = Some((first, deadline));
            wake = true;
        }
        if wake {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        drop(s);
        if wake {
            self.wake_parked();
        }
        if seq >= outcome.covers && outcome.result.is_ok() {
            // Cannot happen with a sync that covers what was written before it (the leader's
            // record was); refuse to acknowledge rather than lie.
            return Err(StoreError::Internal(format!(
                "a group commit covered records below {} but not record {seq}",
                outcome.covers
            )));
        }
        outcome.result
    }
}

impl Waiter {
    /// The verdict, once a leader decided it (the leader removed the waiter and counted it out).
    fn verdict(&self) -> Option<Result<(), StoreError>> {
        match self.verdict.load(Ordering::Acquire) {
            DURABLE => Some(Ok(())),
            FAILED => {
                let e = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
                Some(Err(e.unwrap_or_else(|| {
                    StoreError::Internal("a group commit failed".into())
                })))
            }
            _ => None,
        }
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout`; returns early on a wake-up, a
/// changed word or a signal (callers re-check their state in a loop).
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the whole call and `ts_ptr` is null or points
    // to a timespec that outlives it; FUTEX_WAIT only reads both.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes every thread sleeping on `word`.
fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not access memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// Armed while a leader runs its sync: if the sync panics, the commit must not stay "syncing"
/// with nobody to end it. Every waiter is woken to re-decide (one of them leads or times).
struct LeaderGone<'a>(&'a GroupCommit);

impl Drop for LeaderGone<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.0.state);
        s.syncing = false;
        s.inside -= 1;
        s.timer = None;
        self.0.epoch.fetch_add(1, Ordering::SeqCst);
        drop(s);
        self.0.wake_parked();
    }
}

fn register(s: &mut State, seq: u64) -> Arc<Waiter> {
    let w = Arc::new(Waiter {
        seq,
        verdict: AtomicU8::new(UNDECIDED),
        error: Mutex::new(None),
    });
    s.waiters.push(w.clone());
    w
}

/// The same failure for every caller a failed sync covered (`io::Error` cannot be cloned; the
/// OS error code, which callers match on, is kept).
fn duplicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io { op, path, source } => StoreError::Io {
            op,
            path: path.clone(),
            source: match source.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(source.kind(), source.to_string()),
            },
        },
        StoreError::NotFound(name) => StoreError::NotFound(name.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}
