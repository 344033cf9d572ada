//! Append throughput of the stream store: 1 KiB records, flushOnWrite off and on, 1 and 8
//! writer threads, each configuration for a fixed wall-clock window.
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
    Ok(())
}
