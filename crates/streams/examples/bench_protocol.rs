//! Append throughput through the protocol server: an in-process [`StreamManager`] on a free
//! port and raw clients that pipeline 1 KiB AppendMessage frames (up to 64 in flight each),
//! flushOnWrite off and on, 1 and 8 connections.
//!
//! `cargo run --release -p lichen-streams --example bench_protocol [-- DIR [SECONDS]]`

use ciborium::value::Value;
use lichen_streams::{StreamManager, StreamManagerConfig};
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WINDOW: u64 = 64;

fn frame(op: u8, pairs: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    );
    let mut body = Vec::new();
    ciborium::into_writer(&map, &mut body).unwrap();
    let mut out = ((body.len() + 1) as i32).to_be_bytes().to_vec();
    out.push(op);
    out.extend(body);
    out
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut hello = vec![1u8];
    hello.extend(frame(
        1,
        vec![
            ("requestId", Value::Text("c".into())),
            ("protocolVersion", Value::Text("1.1.0".into())),
        ],
    ));
    s.write_all(&hello).unwrap();
    let mut head = [0u8; 6];
    s.read_exact(&mut head).unwrap();
    let mut rest = vec![0u8; i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 1];
    s.read_exact(&mut rest).unwrap();
    s
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2.0);
    let rt = tokio::runtime::Runtime::new()?;
    let store_root = dir.join(format!("bench-protocol-{}", std::process::id()));
    let sm = rt.block_on(StreamManager::start(StreamManagerConfig {
        store_root: store_root.clone(),
        port: 0,
        authenticate_client: false,
        token_validator: None,
        exporters: Default::default(),
        log_level: tracing::level_filters::LevelFilter::INFO,
        flush_wait_yield: true,
        task_file_access: None,
    }))?;
    let addr = sm.local_addr();
    println!(
        "{:<12} {:>12} {:>14} {:>10}",
        "flushOnWrite", "connections", "appends/s", "MiB/s"
    );
    for flush in [false, true] {
        for conns in [1usize, 8] {
            let name = format!("bench-{flush}-{conns}");
            let mut s = connect(addr);
            let def = Value::Map(vec![
                (Value::Text("name".into()), Value::Text(name.clone())),
                (
                    Value::Text("strategyOnFull".into()),
                    Value::Integer(1.into()),
                ),
                (
                    Value::Text("maxSize".into()),
                    Value::Integer((512u64 << 20).into()),
                ),
                (Value::Text("flushOnWrite".into()), Value::Bool(flush)),
            ]);
            s.write_all(&frame(
                2,
                vec![
                    ("requestId", Value::Text("create".into())),
                    ("definition", def),
                ],
            ))?;
            let mut resp = [0u8; 64];
            let _ = s.read(&mut resp)?;
            let append = frame(
                4,
                vec![
                    ("requestId", Value::Text("a".into())),
                    ("name", Value::Text(name.clone())),
                    ("payload", Value::Bytes(vec![0x5a; 1024])),
                ],
            );
            let done = AtomicU64::new(0);
            let stop = AtomicBool::new(false);
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..conns {
                    let sock = connect(addr);
                    let (append, done, stop) = (&append, &done, &stop);
                    let sent = std::sync::Arc::new(AtomicU64::new(0));
                    let acked = std::sync::Arc::new(AtomicU64::new(0));
                    let reader = BufReader::new(sock.try_clone().unwrap());
                    let acked_r = acked.clone();
                    let sent_r = sent.clone();
                    let mut w = sock;
                    // The writer sleeps while its window is full and the reader wakes it: a
                    // client that spun would take the CPU the server needs.
                    let writer = scope.spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            if sent.load(Ordering::Acquire) - acked.load(Ordering::Acquire)
                                >= WINDOW
                            {
                                std::thread::park_timeout(Duration::from_millis(5));
                                continue;
                            }
                            sent.fetch_add(1, Ordering::Release);
                            w.write_all(append).unwrap();
                        }
                        // One last request, so a reader that has caught up is not left waiting.
                        sent.fetch_add(1, Ordering::Release);
                        w.write_all(&frame(11, vec![("requestId", Value::Text("end".into()))]))
                            .unwrap();
                    });
                    let writer = writer.thread().clone();
                    scope.spawn(move || {
                        let mut reader = reader;
                        let mut head = [0u8; 5];
                        let mut body = Vec::new();
                        loop {
                            if stop.load(Ordering::Relaxed)
                                && acked_r.load(Ordering::Acquire) == sent_r.load(Ordering::Acquire)
                            {
                                break;
                            }
                            if reader.read_exact(&mut head).is_err() {
                                break;
                            }
                            body.resize(
                                i32::from_be_bytes(head[..4].try_into().unwrap()) as usize - 1,
                                0,
                            );
                            reader.read_exact(&mut body).unwrap();
                            acked_r.fetch_add(1, Ordering::Release);
                            done.fetch_add(1, Ordering::Relaxed);
                            writer.unpark();
                        }
                    });
                }
                std::thread::sleep(Duration::from_secs_f64(secs));
                stop.store(true, Ordering::Relaxed);
            });
            let elapsed = start.elapsed().as_secs_f64();
            let n = done.load(Ordering::Relaxed) as f64;
            println!(
                "{:<12} {:>12} {:>14.0} {:>10.1}",
                flush,
                conns,
                n / elapsed,
                n * 1024.0 / elapsed / (1 << 20) as f64
            );
        }
    }
    rt.block_on(sm.stop());
    // Gigabytes per run: leave nothing behind on the measured disk.
    std::fs::remove_dir_all(&store_root)?;
    Ok(())
}
