//! Append throughput of the stream store beside the disk's own limits, measured interleaved in
//! one run on the same directory so that a shared machine's changing load hits both alike.
//!
//! Store: 1 KiB records, flushOnWrite off and on, 1 and 8 writer threads; with flushOnWrite the
//! group commits per second and records per group commit. Disk: a raw 1 KiB write+fsync loop,
//! group-commit loops (N records written, then one fdatasync) on a growing file and on a
//! preallocated one (overwriting zeros: data only, no size change), and sequential 1 MiB writes.
//! Every measurement is split into ROUNDS slices and the slices of all of them alternate.
//!
//! `cargo run --release -p lichen-streams --example bench_append [-- DIR [SECONDS [ROUNDS]]]`
//! DIR defaults to a temporary directory (put it on the disk you want to measure); SECONDS
//! (default 2) is each measurement's total time; ROUNDS defaults to 4.

use lichen_streams::{Store, StrategyOnFull, Stream, StreamDefinition};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const REC: usize = 1024;

/// One measured thing: accumulated count and time over its slices.
struct Tally {
    label: String,
    count: f64,
    secs: f64,
    commits: f64,
}

impl Tally {
    fn rate(&self) -> f64 {
        self.count / self.secs
    }
}

enum Job {
    Store { stream: Arc<Stream>, writers: usize },
    WriteFsync(File),
    GroupCommit { file: File, n: u64 },
    GroupCommitPrealloc { file: File, n: u64, at: u64 },
    HandOff { file: File, writers: usize },
    Sequential(File),
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2.0);
    let rounds: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4);
    let slice = secs / rounds as f64;
    let root = dir.join(format!("bench-{}", std::process::id()));
    let store = Store::open(&root)?;
    // BENCH_FLUSH_WAIT_YIELD=false: durable waiters sleep at once (the store's setting).
    if std::env::var("BENCH_FLUSH_WAIT_YIELD").is_ok_and(|v| v == "false") {
        store.set_yield_while_waiting(false);
    }
    let payload = vec![0x5au8; REC];
    let raw = |name: &str| File::create(root.join(name));

    let mut jobs = Vec::new();
    let mut tallies = Vec::new();
    for flush in [false, true] {
        for writers in [1usize, 8] {
            let mut d = StreamDefinition::new(
                format!("bench-{flush}-{writers}"),
                StrategyOnFull::OverwriteOldestData,
            );
            d.flush_on_write = flush;
            d.max_size = 512 << 20;
            jobs.push(Job::Store {
                stream: store.create(d)?,
                writers,
            });
            tallies.push(format!("store flushOnWrite={flush:<5} writers={writers}"));
        }
    }
    jobs.push(Job::WriteFsync(raw("disk-wf")?));
    tallies.push("disk: write+fsync per record".into());
    for n in [8u64, 64] {
        jobs.push(Job::GroupCommit {
            file: raw(&format!("disk-gc{n}"))?,
            n,
        });
        tallies.push(format!("disk: group commit N={n}, growing file"));
    }
    {
        // 64 MiB of real zeros, synced, then overwritten in place round after round.
        let file = raw("disk-gc8-pre")?;
        let zeros = vec![0u8; 1 << 20];
        for i in 0..64u64 {
            file.write_all_at(&zeros, i << 20)?;
        }
        file.sync_all()?;
        jobs.push(Job::GroupCommitPrealloc { file, n: 8, at: 0 });
        tallies.push("disk: group commit N=8, preallocated file".into());
    }
    {
        let file = raw("disk-handoff")?;
        let zeros = vec![0u8; 1 << 20];
        for i in 0..64u64 {
            file.write_all_at(&zeros, i << 20)?;
        }
        file.sync_all()?;
        jobs.push(Job::HandOff { file, writers: 8 });
        tallies.push("threads: 8 writers, bare leader/follower".into());
    }
    jobs.push(Job::Sequential(raw("disk-seq")?));
    tallies.push("disk: sequential 1 MiB writes + fsync".into());
    // BENCH_ONLY=a|b keeps the measurements whose label contains a or b (to profile one).
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let wanted = |t: &String| only.split('|').any(|o| t.contains(o));
        let keep: Vec<bool> = tallies.iter().map(wanted).collect();
        let mut k = keep.iter();
        jobs.retain(|_| *k.next().expect("one flag per job"));
        tallies.retain(wanted);
    }
    let mut tallies: Vec<Tally> = tallies
        .into_iter()
        .map(|label| Tally {
            label,
            count: 0.0,
            secs: 0.0,
            commits: 0.0,
        })
        .collect();

    for _ in 0..rounds {
        for (job, tally) in jobs.iter_mut().zip(tallies.iter_mut()) {
            let (count, secs, commits) = run_slice(job, slice, &payload)?;
            tally.count += count;
            tally.secs += secs;
            tally.commits += commits;
        }
    }

    // Read back what the first store job wrote, in 500-record reads.
    if let Job::Store { stream, .. } = &jobs[0] {
        let t = Instant::now();
        let (mut next, mut read) = (0u64, 0u64);
        loop {
            let got = stream.read(next, 500, u64::MAX)?;
            let Some(last) = got.last() else { break };
            next = last.sequence_number + 1;
            read += got.len() as u64;
        }
        let e = t.elapsed().as_secs_f64();
        println!(
            "read back {read} records: {:.0} records/s, {:.1} MiB/s\n",
            read as f64 / e,
            read as f64 * REC as f64 / e / (1 << 20) as f64
        );
    }
    println!(
        "{:<44} {:>12} {:>9} {:>12} {:>12}",
        "", "records/s", "MiB/s", "fsyncs/s", "records/sync"
    );
    for t in &tallies {
        let (fs, per) = if t.commits > 0.0 {
            (
                format!("{:.0}", t.commits / t.secs),
                format!("{:.1}", t.count / t.commits),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{:<44} {:>12.0} {:>9.1} {:>12} {:>12}",
            t.label,
            t.rate(),
            t.rate() * REC as f64 / (1 << 20) as f64,
            fs,
            per
        );
    }
    let rate = |prefix: &str| {
        tallies
            .iter()
            .find(|t| t.label.starts_with(prefix))
            .map(Tally::rate)
            .unwrap_or(f64::NAN)
    };
    println!("\nratios:");
    let pairs = [
        (
            "store flushOnWrite=true  writers=8",
            "threads: 8 writers, bare",
        ),
        ("store flushOnWrite=false writers=1", "disk: sequential"),
        ("store flushOnWrite=false writers=8", "disk: sequential"),
        ("store flushOnWrite=true  writers=1", "disk: write+fsync"),
        (
            "store flushOnWrite=true  writers=8",
            "disk: group commit N=8, growing",
        ),
        (
            "store flushOnWrite=true  writers=8",
            "disk: group commit N=8, prealloc",
        ),
    ];
    for (ours, limit) in pairs {
        println!(
            "{ours}: {:>6.1}% of {}",
            100.0 * rate(ours) / rate(limit),
            tallies
                .iter()
                .find(|t| t.label.starts_with(limit))
                .map(|t| t
                    .label
                    .trim_start_matches("disk: ")
                    .trim_start_matches("threads: "))
                .unwrap_or(limit)
        );
    }
    drop(jobs);
    for name in store.list() {
        store.delete(&name)?;
    }
    drop(store);
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// Runs one job for `secs`; returns (records, elapsed seconds, fsyncs).
fn run_slice(job: &mut Job, secs: f64, payload: &[u8]) -> anyhow::Result<(f64, f64, f64)> {
    let start = Instant::now();
    let done = |start: &Instant| start.elapsed().as_secs_f64() >= secs;
    let (count, commits) = match job {
        Job::Store { stream, writers } => {
            let count = AtomicU64::new(0);
            let stop = AtomicBool::new(false);
            let commits_before = stream.group_commits();
            std::thread::scope(|s| {
                for _ in 0..*writers {
                    s.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            let a = stream.append(payload).expect("append");
                            if a.needs_sync {
                                stream.wait_durable(a.sequence_number).expect("fsync");
                            }
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                std::thread::sleep(Duration::from_secs_f64(secs));
                stop.store(true, Ordering::Relaxed);
            });
            (
                count.load(Ordering::Relaxed),
                stream.group_commits() - commits_before,
            )
        }
        Job::WriteFsync(f) => {
            let mut n = 0;
            while !done(&start) {
                f.write_all(payload)?;
                f.sync_data()?;
                n += 1;
            }
            (n, n)
        }
        Job::GroupCommit { file, n } => {
            let (mut recs, mut syncs) = (0, 0);
            while !done(&start) {
                for _ in 0..*n {
                    file.write_all(payload)?;
                }
                file.sync_data()?;
                recs += *n;
                syncs += 1;
            }
            (recs, syncs)
        }
        Job::GroupCommitPrealloc { file, n, at } => {
            let (mut recs, mut syncs) = (0, 0);
            while !done(&start) {
                for _ in 0..*n {
                    if *at + REC as u64 > 64 << 20 {
                        *at = 0;
                    }
                    file.write_all_at(payload, *at)?;
                    *at += REC as u64;
                }
                file.sync_data()?;
                recs += *n;
                syncs += 1;
            }
            (recs, syncs)
        }
        Job::HandOff { file, writers } => hand_off(file, *writers, secs, payload),
        Job::Sequential(f) => {
            let chunk = vec![0xa5u8; 1 << 20];
            let mut bytes = 0u64;
            while !done(&start) && bytes < (1u64 << 30) {
                f.write_all(&chunk)?;
                bytes += chunk.len() as u64;
            }
            f.sync_data()?;
            f.set_len(0)?;
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(0))?;
            ((bytes / REC as u64), 0)
        }
    };
    Ok((count as f64, start.elapsed().as_secs_f64(), commits as f64))
}

/// The least a group commit of blocking writer threads can cost, without any store: each of
/// `writers` threads writes one record into a preallocated file and sleeps on a futex until an
/// fsync covers it; the thread whose record completes a batch of `writers` runs the fdatasync
/// itself and wakes the others with one system call. The gap between this and the single-thread
/// loop is the price of putting threads to sleep and waking them; the store's waiters yield the
/// CPU instead while syncs are fast, and beat this loop. Returns (records synced, fsyncs).
fn hand_off(file: &File, writers: usize, secs: f64, payload: &[u8]) -> (u64, u64) {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;
    let batch = writers as u32;
    let at = AtomicU64::new(0);
    let pending = Mutex::new(0u32);
    let epoch = AtomicU32::new(0);
    let stop = AtomicBool::new(false);
    let synced = AtomicU64::new(0);
    let syncs = AtomicU64::new(0);
    let wake_all = |word: &AtomicU32| {
        // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not access memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    };
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for _ in 0..writers {
            handles.push(s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let offset = at.fetch_add(REC as u64, Ordering::Relaxed) % (64 << 20);
                    file.write_all_at(payload, offset).expect("write");
                    let mut p = pending.lock().unwrap();
                    *p += 1;
                    let seen = epoch.load(Ordering::Acquire);
                    if *p == batch {
                        *p = 0;
                        drop(p);
                        file.sync_data().expect("fdatasync");
                        synced.fetch_add(batch as u64, Ordering::Relaxed);
                        syncs.fetch_add(1, Ordering::Relaxed);
                        epoch.fetch_add(1, Ordering::Release);
                        wake_all(&epoch);
                        continue;
                    }
                    drop(p);
                    while epoch.load(Ordering::Acquire) == seen && !stop.load(Ordering::Relaxed) {
                        // SAFETY: `epoch` is a live, aligned u32 and the timeout pointer is
                        // null; FUTEX_WAIT only reads the word.
                        unsafe {
                            libc::syscall(
                                libc::SYS_futex,
                                epoch.as_ptr(),
                                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                                seen,
                                std::ptr::null::<libc::timespec>(),
                            );
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        // Release writers waiting for a batch that will not fill any more.
        while handles.iter().any(|h| !h.is_finished()) {
            epoch.fetch_add(1, Ordering::Release);
            wake_all(&epoch);
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (synced.into_inner(), syncs.into_inner())
}
