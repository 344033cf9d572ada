use super::*;
use crate::model::{Persistence, StrategyOnFull, StreamDefinition};
use proptest::prelude::*;
use std::sync::atomic::{AtomicI64, Ordering};

pub(super) fn def(name: &str) -> StreamDefinition {
    StreamDefinition::new(name, StrategyOnFull::RejectNewData)
}

pub(super) fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = format!("record-{i}-").into_bytes();
    p.resize(len.max(p.len()), b'x');
    p
}

/// `writers` threads, each appending `each` records and waiting until every one is durable.
pub(super) fn durable_writers(s: &Stream, writers: u64, each: u64) {
    std::thread::scope(|scope| {
        for t in 0..writers {
            scope.spawn(move || {
                for i in 0..each {
                    let a = s.append(&payload(t * 1000 + i, 64)).unwrap();
                    s.wait_durable(a.sequence_number).unwrap();
                }
            });
        }
    });
}

pub(super) fn read_all(s: &Stream) -> Vec<Message> {
    s.read(0, usize::MAX, u64::MAX).unwrap()
}

#[test]
fn append_read_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut d = def("s1");
        d.segment_size = 1024; // several segments
        let s = store.create(d).unwrap();
        for i in 0..100 {
            assert_eq!(s.append(&payload(i, 100)).unwrap().sequence_number, i);
        }
        let got = s.read(10, 5, u64::MAX).unwrap();
        assert_eq!(
            got.iter().map(|m| m.sequence_number).collect::<Vec<_>>(),
            vec![10, 11, 12, 13, 14]
        );
        assert_eq!(got[0].payload, payload(10, 100));
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.list(), vec!["s1".to_string()]);
    let s = store.get("s1").unwrap();
    let all = read_all(&s);
    assert_eq!(all.len(), 100);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.sequence_number, i as u64);
        assert_eq!(m.payload, payload(i as u64, 100));
    }
    assert_eq!(s.append(b"after").unwrap().sequence_number, 100);
    let info = s.info();
    assert_eq!(
        (info.oldest_sequence_number, info.newest_sequence_number),
        (0, 100)
    );
    assert!(fs::read_dir(dir.path().join("s1")).unwrap().count() > 3);
}

#[test]
fn memory_streams_do_not_touch_disk_and_vanish() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut d = def("mem");
        d.persistence = Persistence::Memory;
        let s = store.create(d).unwrap();
        s.append(b"a").unwrap();
        assert_eq!(read_all(&s)[0].payload, b"a");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
    assert!(Store::open(dir.path()).unwrap().list().is_empty());
}

#[test]
fn reject_new_data_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut d = def("full");
    d.max_size = 1024;
    let s = store.create(d).unwrap();
    let rec = HEADER_LEN as u64 + 100;
    let fits = 1024 / rec;
    for i in 0..fits {
        s.append(&payload(i, 100)).unwrap();
    }
    assert!(matches!(
        s.append(&payload(99, 100)),
        Err(StoreError::StreamFull { .. })
    ));
    assert_eq!(read_all(&s).len() as u64, fits);
    assert!(matches!(
        s.append(&[0u8; 2000]),
        Err(StoreError::RecordTooLarge { .. })
    ));
}

#[test]
fn overwrite_oldest_data_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for persistence in [Persistence::File, Persistence::Memory] {
        let name = format!("ow-{persistence:?}");
        let mut d = StreamDefinition::new(&name, StrategyOnFull::OverwriteOldestData);
        d.max_size = 4096;
        d.segment_size = 1024;
        d.persistence = persistence;
        let s = store.create(d).unwrap();
        for i in 0..200 {
            assert_eq!(s.append(&payload(i, 100)).unwrap().sequence_number, i);
        }
        let info = s.info();
        assert!(info.total_bytes <= 4096, "{}", info.total_bytes);
        assert_eq!(info.newest_sequence_number, 199);
        let all = read_all(&s);
        assert!(all.len() >= 20, "kept {}", all.len());
        assert_eq!(all.last().unwrap().sequence_number, 199);
        assert_eq!(all[0].sequence_number, info.oldest_sequence_number);
        // Reads before the oldest start at the oldest.
        assert_eq!(
            s.read(0, 1, u64::MAX).unwrap()[0].sequence_number,
            info.oldest_sequence_number
        );
    }
}

#[test]
fn ttl_deletes_whole_expired_segments() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(1_000_000));
    let clock = now.clone();
    let store =
        Store::open_with_clock(dir.path(), Arc::new(move || clock.load(Ordering::SeqCst))).unwrap();
    let mut d = def("ttl");
    d.time_to_live_millis = Some(60_000);
    d.segment_size = 1024;
    let s = store.create(d).unwrap();
    for i in 0..20 {
        s.append(&payload(i, 100)).unwrap();
    }
    now.fetch_add(30_000, Ordering::SeqCst);
    for i in 20..25 {
        s.append(&payload(i, 100)).unwrap();
    }
    now.fetch_add(40_000, Ordering::SeqCst); // first batch is 70 s old, second 40 s
    store.expire_all();
    let all = read_all(&s);
    assert!(
        all.iter().all(|m| m.sequence_number >= 16),
        "{:?}",
        all.first().map(|m| m.sequence_number)
    );
    assert!(all.iter().any(|m| m.sequence_number == 24));
    now.fetch_add(100_000, Ordering::SeqCst);
    store.expire_all();
    assert!(read_all(&s).is_empty());
    assert_eq!(s.append(b"next").unwrap().sequence_number, 25);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store
            .get("ttl")
            .unwrap()
            .append(b"n")
            .unwrap()
            .sequence_number,
        26
    );
}

#[test]
fn delete_removes_data_and_name_can_be_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = store.create(def("d")).unwrap();
    s.append(b"x").unwrap();
    assert!(matches!(
        store.create(def("d")),
        Err(StoreError::AlreadyExists(_))
    ));
    store.delete("d").unwrap();
    assert!(matches!(s.append(b"y"), Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete("d"), Err(StoreError::NotFound(_))));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    let s = store.create(def("d")).unwrap();
    assert_eq!(s.append(b"z").unwrap().sequence_number, 0);
}

#[test]
fn odd_names_get_safe_directories() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["..", ".", "ünï", "a b,c", &"é".repeat(255)];
    {
        let store = Store::open(dir.path()).unwrap();
        for n in names {
            store.create(def(n)).unwrap().append(n.as_bytes()).unwrap();
        }
    }
    let store = Store::open(dir.path()).unwrap();
    for n in names {
        assert_eq!(read_all(&store.get(n).unwrap())[0].payload, n.as_bytes());
    }
}

#[test]
fn update_rules() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = store.create(def("u")).unwrap();
    for i in 0..20 {
        s.append(&payload(i, 100)).unwrap();
    }
    let mut d = def("u");
    d.persistence = Persistence::Memory;
    assert!(matches!(
        store.update(d),
        Err(StoreError::UpdateNotAllowed { .. })
    ));
    let mut d = def("u");
    d.max_size = 1024;
    assert!(matches!(
        store.update(d),
        Err(StoreError::UpdateNotAllowed { .. })
    ));
    let mut d = def("u");
    d.flush_on_write = true;
    d.time_to_live_millis = Some(3_600_000);
    store.update(d.clone()).unwrap();
    assert_eq!(s.info().definition, d);
    assert!(matches!(
        store.update(def("nope")),
        Err(StoreError::NotFound(_))
    ));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.get("u").unwrap().info().definition, d);
}

#[test]
fn group_commit_from_many_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut d = def("g");
    d.flush_on_write = true;
    d.segment_size = 64 * 1024;
    let s = store.create(d).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..50 {
                    let a = s.append(&payload(t * 1000 + i, 200)).unwrap();
                    assert!(a.needs_sync);
                    s.wait_durable(a.sequence_number).unwrap();
                }
            });
        }
    });
    let all = read_all(&s);
    assert_eq!(all.len(), 400);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, m)| m.sequence_number == i as u64)
    );
}

#[test]
fn reads_respect_count_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut d = def("r");
    d.segment_size = 1024;
    let s = store.create(d).unwrap();
    for i in 0..30 {
        s.append(&payload(i, 100)).unwrap();
    }
    let got = s.read(3, 20, u64::MAX).unwrap();
    assert_eq!(got.len(), 20);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, m)| m.sequence_number == 3 + i as u64)
    );
    let rec = HEADER_LEN as u64 + 100;
    assert_eq!(s.read(0, 100, rec * 3).unwrap().len(), 3);
    // One record is always returned even if it alone passes the byte budget.
    assert_eq!(s.read(0, 100, 1).unwrap().len(), 1);
    assert!(s.read(30, 5, u64::MAX).unwrap().is_empty());
}

fn damage_case(
    dir: &Path,
    seg_lens: &[usize],
    flush_on_write: bool,
) -> (Vec<PathBuf>, Vec<Vec<(u64, u64)>>) {
    // Returns the segment files and, per file, (seq, end offset) of each record. With
    // flushOnWrite the active segment carries a preallocated zero tail.
    let store = Store::open(dir).unwrap();
    let mut d = def("x");
    d.segment_size = 1024;
    d.flush_on_write = flush_on_write;
    let s = store.create(d).unwrap();
    for (i, &len) in seg_lens.iter().enumerate() {
        s.append(&payload(i as u64, len)).unwrap();
    }
    let g = lock(&s.inner);
    let mut files = Vec::new();
    let mut ends = Vec::new();
    for seg in &g.segments {
        if let Storage::File { path, .. } = &seg.storage {
            files.push(path.clone());
            ends.push(
                (0..seg.offsets.len())
                    .map(|i| (seg.first_seq + i as u64, seg.record_end(i)))
                    .collect(),
            );
        }
    }
    (files, ends)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn damaged_segments_recover_every_record_but_the_damaged_ones(
        lens in prop::collection::vec(1usize..300, 1..40),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        flip in any::<bool>(),
        flush_on_write in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (files, ends) = damage_case(dir.path(), &lens, flush_on_write);
        let f = which.index(files.len());
        let mut bytes = fs::read(&files[f]).unwrap();
        let damage_at = if bytes.is_empty() { 0 } else { at.index(bytes.len()) } as u64;
        if flip && !bytes.is_empty() {
            bytes[damage_at as usize] ^= 1 << bit;
        } else {
            bytes.truncate(damage_at as usize);
        }
        fs::write(&files[f], &bytes).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = store.get("x").unwrap();
        let got: Vec<u64> = read_all(&s).iter().map(|m| m.sequence_number).collect();
        // Every record outside the damaged file, every one ending before the damage, and, when
        // a bit flipped (rather than the file being cut), every one starting after it survives.
        let mut expect = Vec::new();
        for (i, e) in ends.iter().enumerate() {
            let mut start = 0;
            for &(seq, end) in e {
                if i != f || end <= damage_at || (flip && start > damage_at) {
                    expect.push(seq);
                }
                start = end;
            }
        }
        prop_assert_eq!(&got, &expect);
        for m in read_all(&s) {
            prop_assert_eq!(m.payload, payload(m.sequence_number, lens[m.sequence_number as usize]));
        }
        // Appends continue after the highest surviving number; only when the active segment
        // itself is damaged can the numbers of its lost tail be assigned again.
        let next = s.append(b"z").unwrap().sequence_number;
        if f + 1 < files.len() {
            prop_assert_eq!(next, lens.len() as u64);
        } else {
            let first_of_last = ends[f].first().map(|e| e.0).unwrap_or(lens.len() as u64);
            prop_assert_eq!(next, expect.last().map(|&q| q + 1).unwrap_or(0).max(first_of_last));
        }
    }
}

#[test]
fn export_checkpoints_persist_and_follow_updates() {
    use crate::export::{ExportConfig, ExportKind};
    let kinesis = |id: &str| ExportConfig {
        kind: ExportKind::Kinesis,
        identifier: id.into(),
        priority: None,
        disabled: false,
        batch_size: None,
        batch_interval_millis: None,
        start_sequence_number: None,
        settings: [("kinesisStreamName".to_string(), serde_json::json!("ks"))].into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut d = def("ex");
    d.exports = vec![kinesis("k1"), kinesis("k2")];
    {
        let store = Store::open(dir.path()).unwrap();
        let s = store.create(d.clone()).unwrap();
        for i in 0..5 {
            s.append(&payload(i, 10)).unwrap();
        }
        let mut cp = s.info().export_checkpoints[0].clone();
        assert_eq!(cp.last_exported_sequence_number, -1);
        cp.last_exported_sequence_number = 3;
        cp.exported_messages_count = 4;
        s.set_checkpoint(cp).unwrap();
        let mut unknown = s.info().export_checkpoints[0].clone();
        unknown.identifier = "nope".into();
        assert!(s.set_checkpoint(unknown).is_err());
    }
    let store = Store::open(dir.path()).unwrap();
    let s = store.get("ex").unwrap();
    let cps = s.info().export_checkpoints;
    assert_eq!(
        (
            cps[0].identifier.as_str(),
            cps[0].last_exported_sequence_number
        ),
        ("k1", 3)
    );
    assert_eq!(cps[0].exported_messages_count, 4);
    // Replacing the export list keeps k1's progress, drops k2, starts k3 fresh.
    d.exports = vec![kinesis("k3"), kinesis("k1")];
    store.update(d).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let cps = store.get("ex").unwrap().info().export_checkpoints;
    let got: Vec<_> = cps
        .iter()
        .map(|c| (c.identifier.as_str(), c.last_exported_sequence_number))
        .collect();
    assert_eq!(got, vec![("k3", -1), ("k1", 3)]);
}

#[test]
fn numbers_of_lost_but_exported_records_are_not_reused() {
    use crate::export::{ExportConfig, ExportKind};
    let dir = tempfile::tempdir().unwrap();
    let mut d = def("lost");
    d.exports = vec![ExportConfig {
        kind: ExportKind::Http,
        identifier: "h".into(),
        priority: None,
        disabled: false,
        batch_size: None,
        batch_interval_millis: None,
        start_sequence_number: None,
        settings: [("uri".to_string(), serde_json::json!("http://127.0.0.1:9/"))].into(),
    }];
    let seg = {
        let store = Store::open(dir.path()).unwrap();
        let s = store.create(d).unwrap();
        for i in 0..10 {
            s.append(&payload(i, 10)).unwrap();
        }
        let mut cp = s.info().export_checkpoints[0].clone();
        cp.last_exported_sequence_number = 9;
        s.set_checkpoint(cp).unwrap();
        let g = lock(&s.inner);
        let Storage::File { path, .. } = &g.segments.back().unwrap().storage else {
            unreachable!()
        };
        path.clone()
    };
    // Lose the last four records (as an unsynced tail would be lost in a power cut).
    let len = fs::metadata(&seg).unwrap().len();
    let rec = (HEADER_LEN + payload(0, 10).len()) as u64;
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 4 * rec)
        .unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = store.get("lost").unwrap();
    assert_eq!(read_all(&s).len(), 6);
    assert_eq!(s.append(b"new").unwrap().sequence_number, 10);
    let all = read_all(&s);
    assert_eq!(all.last().unwrap().sequence_number, 10);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store
            .get("lost")
            .unwrap()
            .append(b"n")
            .unwrap()
            .sequence_number,
        11
    );
}

#[test]
fn readers_race_appends_and_segment_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut d = StreamDefinition::new("race", StrategyOnFull::OverwriteOldestData);
    d.max_size = 8 * 1024;
    d.segment_size = 1024;
    let s = store.create(d).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) || reads == 0 {
                    let got = s.read(0, 50, u64::MAX).unwrap();
                    for w in got.windows(2) {
                        assert_eq!(w[0].sequence_number + 1, w[1].sequence_number);
                    }
                    for m in &got {
                        assert_eq!(m.payload, payload(m.sequence_number, 60));
                    }
                    reads += 1;
                }
            });
        }
        for i in 0..5000 {
            s.append(&payload(i, 60)).unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    assert_eq!(s.info().newest_sequence_number, 4999);
}

#[test]
fn preallocated_segments_keep_their_logical_end_across_reopen_and_are_trimmed_when_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = def("pre");
    d.flush_on_write = true;
    d.segment_size = 64 * 1024;
    let rec = (HEADER_LEN + 100) as u64;
    let seg0 = dir.path().join("pre").join(segment_file_name(0));
    {
        let store = Store::open(dir.path()).unwrap();
        let s = store.create(d).unwrap();
        for i in 0..10 {
            let a = s.append(&payload(i, 100)).unwrap();
            s.wait_durable(a.sequence_number).unwrap();
        }
        // Zero-filled ahead up to the segment size.
        assert_eq!(fs::metadata(&seg0).unwrap().len(), 64 * 1024);
    }
    let store = Store::open(dir.path()).unwrap();
    let s = store.get("pre").unwrap();
    assert_eq!(
        fs::metadata(&seg0).unwrap().len(),
        64 * 1024,
        "zero tail kept"
    );
    assert_eq!(s.append(&payload(10, 100)).unwrap().sequence_number, 10);
    let all = read_all(&s);
    assert_eq!(all.len(), 11);
    for m in &all {
        assert_eq!(m.payload, payload(m.sequence_number, 100));
    }
    // Fill the segment: the sealed one is cut to its records.
    let mut n = 11;
    while s.info().total_bytes + rec <= 64 * 1024 {
        s.append(&payload(n, 100)).unwrap();
        n += 1;
    }
    s.append(&payload(n, 100)).unwrap();
    assert_eq!(fs::metadata(&seg0).unwrap().len(), n * rec);
    assert_eq!(read_all(&s).len() as u64, n + 1);
}

/// Five durable records in the active segment (followed by its preallocated zeros), then the
/// first byte of record `damaged` lost, as if that block never reached the disk.
fn damaged_active_segment(dir: &Path, damaged: u64) -> (PathBuf, u64) {
    let mut d = def("torn");
    d.flush_on_write = true;
    let seg = dir.join("torn").join(segment_file_name(0));
    let rec = (HEADER_LEN + 50) as u64;
    {
        let store = Store::open(dir).unwrap();
        let s = store.create(d).unwrap();
        for i in 0..5 {
            s.append(&payload(i, 50)).unwrap();
        }
        s.wait_durable(4).unwrap();
    }
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0x7f], damaged * rec).unwrap();
    (seg, rec)
}

#[test]
fn a_torn_record_before_a_zero_tail_is_cut_and_never_reappears_behind_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, rec) = damaged_active_segment(dir.path(), 4);
    {
        let store = Store::open(dir.path()).unwrap();
        let s = store.get("torn").unwrap();
        let got: Vec<u64> = read_all(&s).iter().map(|m| m.sequence_number).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            4 * rec,
            "torn tail truncated"
        );
        // A new record of the same size takes number 4 and the same offset.
        assert_eq!(s.append(&payload(20, 50)).unwrap().sequence_number, 4);
    }
    // The old record 4 must not come back behind the new one.
    let store = Store::open(dir.path()).unwrap();
    let s = store.get("torn").unwrap();
    let got = read_all(&s);
    assert_eq!(got.len(), 5);
    assert_eq!(got[4].payload, payload(20, 50));
    assert_eq!(s.append(b"next").unwrap().sequence_number, 5);
}

#[test]
fn whole_records_after_a_damaged_one_in_the_active_segment_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, rec) = damaged_active_segment(dir.path(), 2);
    {
        let store = Store::open(dir.path()).unwrap();
        let s = store.get("torn").unwrap();
        let got: Vec<u64> = read_all(&s).iter().map(|m| m.sequence_number).collect();
        assert_eq!(got, vec![0, 1, 3, 4]);
        assert_eq!(fs::metadata(&seg).unwrap().len(), 2 * rec, "damage cut off");
        // Number 2 is never handed out again: it may have been read already.
        assert_eq!(s.append(&payload(20, 50)).unwrap().sequence_number, 5);
    }
    let store = Store::open(dir.path()).unwrap();
    let s = store.get("torn").unwrap();
    let got = read_all(&s);
    let seqs: Vec<u64> = got.iter().map(|m| m.sequence_number).collect();
    assert_eq!(seqs, vec![0, 1, 3, 4, 5]);
    assert_eq!(got[2].payload, payload(3, 50));
    assert_eq!(got[4].payload, payload(20, 50));
}

#[test]
fn a_damaged_record_in_a_middle_segment_loses_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let lens: Vec<usize> = (0..60).map(|i| 40 + i % 7).collect();
    let (files, ends) = damage_case(dir.path(), &lens, false);
    assert!(files.len() >= 3, "{files:?}");
    let f = files.len() / 2;
    let victim = ends[f].len() / 2;
    let (lost, end) = ends[f][victim];
    let start = ends[f][victim - 1].1;
    let mut bytes = fs::read(&files[f]).unwrap();
    for b in &mut bytes[start as usize + HEADER_LEN..end as usize] {
        *b ^= 0xa5;
    }
    fs::write(&files[f], &bytes).unwrap();
    for _ in 0..2 {
        let store = Store::open(dir.path()).unwrap();
        let s = store.get("x").unwrap();
        let got: Vec<u64> = read_all(&s).iter().map(|m| m.sequence_number).collect();
        let expect: Vec<u64> = (0..lens.len() as u64).filter(|&q| q != lost).collect();
        assert_eq!(got, expect, "every record but {lost} survives, in order");
        // Reads from inside the gap start at the next record.
        assert_eq!(
            s.read(lost, 1, u64::MAX).unwrap()[0].sequence_number,
            lost + 1
        );
    }
    let store = Store::open(dir.path()).unwrap();
    let s = store.get("x").unwrap();
    assert_eq!(s.append(b"z").unwrap().sequence_number, lens.len() as u64);
}
