//! Quick, criterion-free figures for the configuration store:
//! `cargo run --release -p lichen-config --example config_bench [dir]`.
//! Without `dir`, a temporary directory is used (its file system decides the fsync cost).

use std::time::Instant;

use lichen_config::{ConfigStore, StoreOptions};
use serde_json::json;

fn main() {
    let arg = std::env::args().nth(1);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = arg.map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    let options = StoreOptions {
        compact_after_entries: u64::MAX,
    };

    let memory = ConfigStore::in_memory();
    let n = 200_000;
    let start = Instant::now();
    for i in 0..n {
        memory
            .set(
                &["services", &format!("c{}", i % 500), "configuration", "v"],
                json!(i),
                i,
            )
            .unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "in-memory set: {n} ops in {:.2?} ({:.0} ops/s)",
        elapsed,
        n as f64 / elapsed.as_secs_f64()
    );

    let store = ConfigStore::open_with(&dir, options.clone()).unwrap();
    let n = 2_000;
    let start = Instant::now();
    for i in 0..n {
        store
            .set(
                &["services", &format!("c{}", i % 500), "configuration", "v"],
                json!(i),
                i,
            )
            .unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "durable set (fsync each): {n} ops in {:.2?} ({:.1} µs/op)",
        elapsed,
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    drop(store);

    let start = Instant::now();
    let store = ConfigStore::open_with(&dir, options).unwrap();
    println!("replay of {n} records: {:.2?}", start.elapsed());
    let start = Instant::now();
    store.compact().unwrap();
    println!("compaction of a 500-service tree: {:.2?}", start.elapsed());
}
