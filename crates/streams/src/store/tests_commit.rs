//! Group commit and durable appends: shared fsyncs, wake-ups, stress and failure of a leader.

use super::tests::{def, durable_writers, payload, read_all};
use super::{Store, StoreError};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn concurrent_durable_appends_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut d = def("gc");
    d.flush_on_write = true;
    let s = store.create(d).unwrap();
    durable_writers(&s, 8, 50);
    // Every record was synced by some group commit, and each commit synced at least one.
    let commits = s.group_commits();
    assert!((1..=400).contains(&commits), "{commits} group commits");
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(read_all(&store.get("gc").unwrap()).len(), 400);
}

/// Runs `f` in a thread and fails the test with `what` if it has not finished within `secs`: a
/// lost wake-up shows as a failure instead of a stalled test run.
fn with_watchdog<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let out = f();
        let _ = tx.send(());
        out
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(()) => worker.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked: report its panic.
            match worker.join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not finished within {secs} s; a waiter was never woken (hang)")
        }
    }
}

/// A tiny deterministic generator per thread, so the stress tests need no extra crate.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
    fn pause(&mut self, max_us: u64) {
        let us = self.below(max_us + 1);
        if us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
    }
}

#[test]
fn waiters_that_stop_yielding_or_never_yield_are_woken_by_the_commit_that_covers_them() {
    // Yielding allowed, then turned off (the store's setting): every waiter sleeps at once.
    for yielding in [true, false] {
        waiters_are_woken_by_the_commit_that_covers_them(yielding);
    }
}

fn waiters_are_woken_by_the_commit_that_covers_them(yielding: bool) {
    use super::commit::{GroupCommit, SyncOutcome};
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    // Syncs alternate between fast (busy for 20 µs: waiters yield for twice that, then sleep
    // when the next sync is slow) and slow (3 ms, beyond the spinning limit: waiters sleep at
    // once). A leader that skipped a sleeping waiter's wake-up would hang it.
    let written = Arc::new(AtomicU64::new(0));
    let syncs = Arc::new(AtomicU64::new(0));
    let commit = Arc::new(GroupCommit::new(0, Arc::new(AtomicBool::new(yielding))));
    let results = with_watchdog(60, "waiters woken after yielding", {
        let (written, syncs, commit) = (written.clone(), syncs.clone(), commit.clone());
        move || {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let (written, syncs, commit) = (&written, &syncs, &commit);
                        scope.spawn(move || {
                            let sync = || {
                                let covers = written.load(Ordering::SeqCst);
                                if syncs.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                                    let t = std::time::Instant::now();
                                    while t.elapsed() < std::time::Duration::from_micros(20) {
                                        std::hint::spin_loop();
                                    }
                                } else {
                                    std::thread::sleep(std::time::Duration::from_millis(3));
                                }
                                SyncOutcome {
                                    covers,
                                    result: Ok(()),
                                }
                            };
                            (0..150)
                                .map(|_| {
                                    let seq = written.fetch_add(1, Ordering::SeqCst);
                                    commit.wait(seq, &sync)
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        }
    });
    assert_eq!(results.len(), 8 * 150, "every wait returned");
    assert!(
        results.iter().all(|r| r.is_ok()),
        "no sync failed, so none may"
    );
    assert!(
        commit.sleeps() > 0,
        "3 ms syncs are beyond the spinning limit: their waiters must have slept"
    );
    assert!(commit.commits() < 8 * 150, "waiters shared syncs");
}

#[test]
fn group_commit_protocol_under_stress_acknowledges_only_covered_records_and_never_hangs() {
    use super::commit::{GroupCommit, SyncOutcome};
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Mutex};

    // A fake log: appending takes the next number; a sync snapshots the numbers written, takes
    // a random while and fails one time in eight. Every sync is logged in completion order.
    struct Fake {
        written: AtomicU64,
        syncs: Mutex<Vec<(u64, bool)>>,
        rng: Mutex<Rng>,
    }
    let fake = Arc::new(Fake {
        written: AtomicU64::new(0),
        syncs: Mutex::new(Vec::new()),
        rng: Mutex::new(Rng(0x9e37_79b9_7f4a_7c15)),
    });
    let commit = Arc::new(GroupCommit::new(0, Arc::new(AtomicBool::new(true))));
    let results = with_watchdog(60, "group commit stress", {
        let fake = fake.clone();
        let commit = commit.clone();
        move || {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..16u64)
                    .map(|t| {
                        let fake = &fake;
                        let commit = &commit;
                        scope.spawn(move || {
                            let mut rng = Rng(t * 7919 + 1);
                            // Writers join late and leave early, at different times.
                            std::thread::sleep(std::time::Duration::from_millis(rng.below(30)));
                            let count = 50 + rng.below(250);
                            let mut out = Vec::new();
                            for _ in 0..count {
                                let seq = fake.written.fetch_add(1, Ordering::SeqCst);
                                rng.pause(if t % 4 == 0 { 200 } else { 20 });
                                let sync = || {
                                    let covers = fake.written.load(Ordering::SeqCst);
                                    let (pause, fail) = {
                                        let mut r = fake.rng.lock().unwrap();
                                        (r.below(300), r.below(8) == 0)
                                    };
                                    std::thread::sleep(std::time::Duration::from_micros(pause));
                                    fake.syncs.lock().unwrap().push((covers, !fail));
                                    SyncOutcome {
                                        covers,
                                        result: if fail {
                                            Err(StoreError::Io {
                                                op: "fsync",
                                                path: "fake".into(),
                                                source: io::Error::from_raw_os_error(libc::EIO),
                                            })
                                        } else {
                                            Ok(())
                                        },
                                    }
                                };
                                out.push((seq, commit.wait(seq, &sync)));
                            }
                            out
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        }
    });
    // Replay the syncs in completion order: what each acknowledged, which ranges failed.
    let syncs = fake.syncs.lock().unwrap().clone();
    let mut durable = 0u64;
    let mut failed_ranges = Vec::new();
    for &(covers, ok) in &syncs {
        if ok {
            durable = durable.max(covers);
        } else {
            failed_ranges.push(durable..covers);
        }
    }
    let in_failed = |seq: u64| failed_ranges.iter().any(|r| r.contains(&seq));
    let written = fake.written.load(Ordering::SeqCst);
    assert_eq!(results.len() as u64, written, "every append got an answer");
    let (mut oks, mut errs) = (0, 0);
    for (seq, result) in &results {
        match result {
            Ok(()) => {
                oks += 1;
                assert!(
                    syncs.iter().any(|&(covers, ok)| ok && covers > *seq),
                    "record {seq} acknowledged without a successful sync covering it"
                );
                assert!(
                    !in_failed(*seq),
                    "record {seq} acknowledged although a sync covering it failed"
                );
            }
            Err(StoreError::Io { source, .. }) => {
                errs += 1;
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
                assert!(in_failed(*seq), "record {seq} failed without a failed sync");
            }
            Err(other) => panic!("record {seq}: unexpected error {other}"),
        }
    }
    assert!(oks > 0 && errs > 0, "{oks} acknowledged, {errs} failed");
    // Shared syncs: far fewer than one per record.
    assert!(
        syncs.len() < results.len(),
        "{} syncs for {} records",
        syncs.len(),
        results.len()
    );
}

#[test]
fn durable_appends_under_stress_with_joining_leaving_writers_and_a_deleted_stream() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let acked = with_watchdog(60, "durable append stress", move || {
        let store = Store::open(&root).unwrap();
        let mut d = def("stress");
        d.flush_on_write = true;
        d.segment_size = 32 * 1024; // roll often: sealed segments join the commits
        let stream = store.create(d).unwrap();
        let mut d = def("doomed");
        d.flush_on_write = true;
        let doomed = store.create(d).unwrap();
        let acked = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..16u64)
                .map(|t| {
                    let stream = &stream;
                    scope.spawn(move || {
                        let mut rng = Rng(t * 104_729 + 3);
                        std::thread::sleep(std::time::Duration::from_millis(rng.below(40)));
                        let mut acked = Vec::new();
                        for i in 0..(20 + rng.below(120)) {
                            let body = payload(t * 100_000 + i, 100 + rng.below(400) as usize);
                            let a = stream.append(&body).unwrap();
                            rng.pause(if t % 3 == 0 { 300 } else { 10 });
                            stream.wait_durable(a.sequence_number).unwrap();
                            acked.push((a.sequence_number, body));
                        }
                        acked
                    })
                })
                .collect();
            // Writers on a stream that is deleted under them: each gets an answer, Ok for
            // records synced before the deletion and NotFound after.
            let doomed_writers: Vec<_> = (0..4u64)
                .map(|t| {
                    let doomed = &doomed;
                    scope.spawn(move || {
                        let mut rng = Rng(t + 77);
                        loop {
                            let a = match doomed.append(&payload(t, 200)) {
                                Ok(a) => a,
                                Err(StoreError::NotFound(_)) => return,
                                Err(e) => panic!("append to a deleted stream: {e}"),
                            };
                            match doomed.wait_durable(a.sequence_number) {
                                Ok(()) | Err(StoreError::NotFound(_)) => {}
                                Err(e) => panic!("waiting on a deleted stream: {e}"),
                            }
                            rng.pause(50);
                        }
                    })
                })
                .collect();
            // Delete once the doomed writers are well under way (some are waiting right now).
            while doomed.group_commits() < 20 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            store.delete("doomed").unwrap();
            for w in doomed_writers {
                w.join().unwrap();
            }
            writers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert!(
            doomed.group_commits() > 0,
            "the doomed stream took durable appends"
        );
        acked
    });
    // Every acknowledged record is there after a reopen, intact.
    let store = Store::open(dir.path()).unwrap();
    assert!(store.get("doomed").is_err());
    let all = read_all(&store.get("stress").unwrap());
    assert_eq!(all.len(), acked.len());
    for (seq, body) in &acked {
        assert_eq!(&all[*seq as usize].payload, body, "record {seq}");
    }
}

#[test]
fn a_commit_waiting_for_writers_that_went_away_still_ends() {
    // Eight writers make the next commit wait for eight records; then all but one stop, and
    // that one must still get every record synced (the gathering wait is bounded), and from
    // then on each of its durable appends is a commit of its own.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut d = def("gone");
    d.flush_on_write = true;
    let s = store.create(d).unwrap();
    let s = with_watchdog(60, "writers that went away", move || {
        durable_writers(&s, 8, 30);
        let before = s.group_commits();
        for i in 0..20 {
            let a = s.append(&payload(9000 + i, 64)).unwrap();
            s.wait_durable(a.sequence_number).unwrap();
        }
        assert_eq!(s.group_commits() - before, 20);
        s
    });
    drop(s);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let got = read_all(&store.get("gone").unwrap());
    assert_eq!(got.len(), 260);
    assert_eq!(got[259].payload, payload(9019, 64));
}

#[test]
fn a_leader_whose_sync_panics_does_not_strand_the_waiters() {
    use super::commit::{GroupCommit, SyncOutcome};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    let commit = Arc::new(GroupCommit::new(0, Arc::new(AtomicBool::new(true))));
    let written = Arc::new(AtomicU64::new(0));
    let panicked_once = Arc::new(AtomicBool::new(false));
    let outcomes = with_watchdog(60, "panicking leader", move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let (commit, written, panicked_once) = (&commit, &written, &panicked_once);
                    scope.spawn(move || {
                        let mut out = Vec::new();
                        for _ in 0..20 {
                            let seq = written.fetch_add(1, Ordering::SeqCst);
                            let sync = || {
                                let covers = written.load(Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                if !panicked_once.swap(true, Ordering::SeqCst) {
                                    panic!("injected sync panic");
                                }
                                SyncOutcome {
                                    covers,
                                    result: Ok(()),
                                }
                            };
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                commit.wait(seq, &sync)
                            }));
                            out.push(r.map(|r| r.is_ok()));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(outcomes.len(), 120);
    let panics = outcomes.iter().filter(|o| o.is_err()).count();
    assert_eq!(panics, 1, "exactly the leader that panicked saw the panic");
    assert!(outcomes.iter().flatten().all(|&ok| ok));
}
