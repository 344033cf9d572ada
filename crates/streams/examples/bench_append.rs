//! Append throughput of the stream store: 1 KiB records, flushOnWrite off and on, 1 and 8
//! writer threads, each configuration for a fixed wall-clock window; read throughput; and, in
//! the same run on the same directory, the disk's own limits with ratios: a raw 1 KiB
//! write+fsync loop, group-commit loops (N records written, then one fsync) and sequential
//! 1 MiB writes.
//!
//! `cargo run --release -p lichen-streams --example bench_append [-- DIR [SECONDS]]`
//! DIR defaults to a temporary directory (put it on the disk you want to measure).

use lichen_streams::{Store, StrategyOnFull, StreamDefinition};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2.0);
    let store = Store::open(dir.join(format!("bench-{}", std::process::id())))?;
    let payload = vec![0x5au8; 1024];
    let limits = disk_limits(&dir, secs)?;
    let mut results = Vec::new();
    println!(
        "{:<12} {:>8} {:>14} {:>10}",
        "flushOnWrite", "writers", "records/s", "MiB/s"
    );
    for flush in [false, true] {
        for writers in [1usize, 8] {
            let name = format!("bench-{flush}-{writers}");
            let mut d = StreamDefinition::new(&name, StrategyOnFull::OverwriteOldestData);
            d.flush_on_write = flush;
            d.max_size = 512 << 20;
            let stream = store.create(d)?;
            let count = AtomicU64::new(0);
            let stop = AtomicBool::new(false);
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..writers {
                    s.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            let a = stream.append(&payload).expect("append");
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
            let elapsed = start.elapsed().as_secs_f64();
            let n = count.load(Ordering::Relaxed) as f64;
            results.push((flush, writers, n / elapsed));
            if !flush && writers == 1 {
                // Read back everything just written, in 500-record reads.
                let t = Instant::now();
                let mut next = 0u64;
                let mut read = 0u64;
                loop {
                    let got = stream.read(next, 500, u64::MAX)?;
                    let Some(last) = got.last() else { break };
                    next = last.sequence_number + 1;
                    read += got.len() as u64;
                }
                let e = t.elapsed().as_secs_f64();
                println!(
                    "(read back {read} records: {:.0} records/s, {:.1} MiB/s)",
                    read as f64 / e,
                    read as f64 * 1024.0 / e / (1 << 20) as f64
                );
            }
            println!(
                "{:<12} {:>8} {:>14.0} {:>10.1}",
                flush,
                writers,
                n / elapsed,
                n * 1024.0 / elapsed / (1 << 20) as f64
            );
            store.delete(&name)?;
        }
    }
    println!("\ndisk limits, same directory, same run (1 KiB records):");
    for (label, rate) in &limits {
        println!("{label:<42} {rate:>12.0} records/s");
    }
    let limit = |key: &str| {
        limits
            .iter()
            .find(|(l, _)| l.starts_with(key))
            .map(|(_, r)| *r)
            .unwrap_or(f64::NAN)
    };
    println!("\nratios:");
    for (flush, writers, rate) in results {
        let (key, what) = if !flush {
            ("sequential", "sequential-write limit")
        } else if writers == 1 {
            ("write+fsync", "write+fsync-per-record limit")
        } else {
            ("group commit N=8", "group-commit (N=8) limit")
        };
        println!(
            "flushOnWrite={flush:<5} writers={writers}: {:>6.1}% of the {what}",
            100.0 * rate / limit(key)
        );
    }
    Ok(())
}

/// The disk's own figures for 1 KiB records, each loop for `secs`.
fn disk_limits(dir: &std::path::Path, secs: f64) -> anyhow::Result<Vec<(String, f64)>> {
    use std::io::Write;
    let path = dir.join(format!("disk-limit-{}", std::process::id()));
    let rec = vec![0xa5u8; 1024];
    let mut out = Vec::new();
    let timed = |mut step: Box<dyn FnMut() -> std::io::Result<u64> + '_>| -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            n += step()?;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    {
        let mut f = std::fs::File::create(&path)?;
        let r = timed(Box::new(|| {
            f.write_all(&rec)?;
            f.sync_data()?;
            Ok(1)
        }))?;
        out.push(("write+fsync per record".to_string(), r));
    }
    for n in [8u64, 64] {
        let mut f = std::fs::File::create(&path)?;
        let r = timed(Box::new(|| {
            for _ in 0..n {
                f.write_all(&rec)?;
            }
            f.sync_data()?;
            Ok(n)
        }))?;
        out.push((format!("group commit N={n} (N writes, one fsync)"), r));
    }
    {
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0xa5u8; 1 << 20];
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed().as_secs_f64() < secs && bytes < (4u64 << 30) {
            f.write_all(&chunk)?;
            bytes += chunk.len() as u64;
        }
        f.sync_data()?;
        let r = bytes as f64 / 1024.0 / start.elapsed().as_secs_f64();
        out.push(("sequential 1 MiB writes + final fsync".to_string(), r));
    }
    std::fs::remove_file(&path)?;
    Ok(out)
}
