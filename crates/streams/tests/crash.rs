//! A real crash: a child process appends with flushOnWrite from several threads and prints each
//! sequence number once it is acknowledged; the parent kills it with SIGKILL mid-run, reopens
//! the store and checks every acknowledged record is there, intact.

use lichen_streams::{Store, StrategyOnFull, StreamDefinition};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "LICHEN_STREAMS_CRASH_CHILD_DIR";

/// Every record carries the same checksummed 300-byte body, so any torn or mixed-up record
/// shows as a payload mismatch.
fn payload() -> Vec<u8> {
    let mut p = b"crash-record-".to_vec();
    p.resize(300, b'p');
    p
}

/// In the child: append forever. In the parent (normal test run): nothing.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(&dir).unwrap();
    let mut d = StreamDefinition::new("crash", StrategyOnFull::RejectNewData);
    d.flush_on_write = true;
    d.segment_size = 16 * 1024; // roll segments often while being killed
    let stream = store.create(d).unwrap();
    let out = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let a = stream.append(&payload()).unwrap();
                    stream.wait_durable(a.sequence_number).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "{}", a.sequence_number).unwrap();
                    o.flush().unwrap();
                }
            });
        }
    });
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Ok(seq) = line.trim().parse::<u64>() {
            acked.push(seq);
        }
        if acked.len() >= 2000 {
            break;
        }
    }
    // SIGKILL: no destructors, no flushes.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        acked.len() >= 2000,
        "child stopped early after {} appends",
        acked.len()
    );

    let store = Store::open(dir.path()).unwrap();
    let stream = store.get("crash").unwrap();
    let all = stream.read(0, usize::MAX, u64::MAX).unwrap();
    let max_acked = *acked.iter().max().unwrap();
    assert!(
        all.len() as u64 > max_acked,
        "only {} records after reopen, acked up to {max_acked}",
        all.len()
    );
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.sequence_number, i as u64);
        assert_eq!(m.payload, payload());
    }
    // The stream keeps working after recovery.
    let next = stream.append(b"after").unwrap().sequence_number;
    assert_eq!(next, all.len() as u64);
}
