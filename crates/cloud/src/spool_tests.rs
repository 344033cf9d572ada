use super::*;
use crate::record::{Decoded, decode, encode_message};
use crate::{CloudMessage, MessageProperties};
use bytes::Bytes;
use proptest::prelude::*;

fn msg(topic: &str, payload: &[u8], qos: QoS) -> CloudMessage {
    CloudMessage {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
        properties: MessageProperties::default(),
    }
}

fn full_msg() -> CloudMessage {
    CloudMessage {
        topic: "a/b".into(),
        payload: Bytes::from_static(b"\x00\x01hello"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: MessageProperties {
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            message_expiry_interval: Some(60),
            correlation_data: Some(Bytes::from_static(b"corr")),
            response_topic: Some("reply/here".into()),
            payload_format: Some(1),
            content_type: Some("text/plain".into()),
        },
    }
}

/// Payloads of the pending messages in queue order.
fn drain_order(s: &Spool) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut cursor = 0;
    while let Some(m) = s.next_after(cursor) {
        cursor = m.id;
        out.push(m.message.payload.clone());
    }
    out
}

#[test]
fn records_round_trip_with_every_property() {
    let m = full_msg();
    let rec = encode_message(42, &m);
    assert_eq!(rec.len(), record::message_len(&m));
    match decode(&rec) {
        Decoded::Record {
            record: Record::Message { id, message },
            len,
        } => {
            assert_eq!(id, 42);
            assert_eq!(message, m);
            assert_eq!(len, rec.len());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_flipped_bit_is_caught_by_the_checksum() {
    let mut rec = encode_message(1, &full_msg());
    let last = rec.len() - 1;
    rec[last] ^= 0x40;
    assert_eq!(decode(&rec), Decoded::Corrupt("checksum mismatch"));
}

#[tokio::test]
async fn memory_spool_keeps_order_and_refuses_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let one = record::message_len(&msg("t", b"0123456789", QoS::AtLeastOnce)) as u64;
    let (s, _) = Spool::open(StorageType::Memory, dir.path(), one * 3).unwrap();
    for p in [b"0123456789", b"abcdefghij", b"ABCDEFGHIJ"] {
        s.enqueue(msg("t", p, QoS::AtLeastOnce))
            .unwrap()
            .durable()
            .await
            .unwrap();
    }
    let err = s
        .enqueue(msg("t", b"zzzzzzzzzz", QoS::AtLeastOnce))
        .err()
        .expect("a full spool refuses");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "spooler full: {} of {} bytes used",
            one * 3,
            one * 3
        )),
        "{text}"
    );
    assert_eq!(drain_order(&s).len(), 3, "nothing stored was dropped");
    let first = s.next_after(0).unwrap();
    s.ack(first.id);
    s.enqueue(msg("t", b"zzzzzzzzzz", QoS::AtLeastOnce))
        .unwrap()
        .durable()
        .await
        .unwrap();
    assert_eq!(
        drain_order(&s),
        vec![
            Bytes::from_static(b"abcdefghij"),
            Bytes::from_static(b"ABCDEFGHIJ"),
            Bytes::from_static(b"zzzzzzzzzz")
        ]
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn disk_spool_survives_reopen_and_forgets_acked_messages() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, rec) = Spool::open(StorageType::Disk, dir.path(), 1 << 20).unwrap();
        assert_eq!(rec, Recovered::default());
        for i in 0..10u8 {
            s.enqueue(msg("t", &[i], QoS::AtLeastOnce))
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        s.enqueue(full_msg()).unwrap().durable().await.unwrap();
        for id in [1, 2, 5] {
            s.ack(id);
        }
        // Acks are written by the writer thread; a later durable append follows them.
        s.enqueue(msg("t", b"last", QoS::AtLeastOnce))
            .unwrap()
            .durable()
            .await
            .unwrap();
    }
    let (s, rec) = Spool::open(StorageType::Disk, dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.messages, 9);
    let order = drain_order(&s);
    let expected: Vec<Bytes> = [2u8, 3, 5, 6, 7, 8, 9]
        .iter()
        .map(|i| Bytes::copy_from_slice(&[*i]))
        .chain([full_msg().payload, Bytes::from_static(b"last")])
        .collect();
    assert_eq!(order, expected);
    let recovered_full = s.get(11).unwrap();
    assert_eq!(recovered_full.message, full_msg());
    // New ids continue after the old ones.
    s.enqueue(msg("t", b"new", QoS::AtLeastOnce))
        .unwrap()
        .durable()
        .await
        .unwrap();
    assert_eq!(s.next_after(12).unwrap().id, 13);
}

#[tokio::test]
async fn recovery_truncates_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = Spool::open(StorageType::Disk, dir.path(), 1 << 20).unwrap();
        for i in 0..3u8 {
            s.enqueue(msg("t", &[i; 100], QoS::AtLeastOnce))
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
    }
    let seg = seg_path(dir.path(), 1);
    let whole = std::fs::metadata(&seg).unwrap().len();
    // Half a record, as a crash in the middle of a write leaves it.
    let torn = encode_message(99, &msg("t", &[9; 100], QoS::AtLeastOnce));
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&torn[..torn.len() / 2]).unwrap();
    drop(f);
    let (s, rec) = Spool::open(StorageType::Disk, dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.messages, 3);
    assert_eq!(rec.truncated_bytes, (torn.len() / 2) as u64);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
    assert_eq!(drain_order(&s).len(), 3);
}

#[tokio::test]
async fn delivered_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB cap ⇒ 64 KiB segments.
    let (s, _) = Spool::open(StorageType::Disk, dir.path(), 256 << 10).unwrap();
    let payload = vec![7u8; 1000];
    for round in 0..8 {
        let mut waits = Vec::new();
        for _ in 0..100 {
            waits.push(
                s.enqueue(msg("t", &payload, QoS::AtLeastOnce))
                    .unwrap()
                    .durable(),
            );
        }
        for w in waits {
            w.await.unwrap();
        }
        let mut cursor = 0;
        while let Some(m) = s.next_after(cursor) {
            cursor = m.id;
            s.ack(m.id);
        }
        assert_eq!(s.usage().0, 0, "round {round}");
    }
    // One more append pushes the acks through the writer and triggers deletion.
    s.enqueue(msg("t", b"x", QoS::AtLeastOnce))
        .unwrap()
        .durable()
        .await
        .unwrap();
    let segs = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(
        segs <= 2,
        "800 KB went through 64 KiB segments; {segs} remain"
    );
    drop(s);
    let (s, rec) = Spool::open(StorageType::Disk, dir.path(), 256 << 10).unwrap();
    assert_eq!(rec.messages, 1);
    assert_eq!(drain_order(&s), vec![Bytes::from_static(b"x")]);
}

#[tokio::test]
async fn qos0_messages_can_be_dropped_and_qos1_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(StorageType::Disk, dir.path(), 1 << 20).unwrap();
    for (p, q) in [
        (b"a", QoS::AtMostOnce),
        (b"b", QoS::AtLeastOnce),
        (b"c", QoS::AtMostOnce),
    ] {
        s.enqueue(msg("t", p, q)).unwrap().durable().await.unwrap();
    }
    assert_eq!(s.drop_qos0(), 2);
    assert_eq!(drain_order(&s), vec![Bytes::from_static(b"b")]);
}

#[derive(Debug, Clone)]
enum Op {
    Publish(Vec<u8>),
    /// Ack the n-th pending message (modulo the count).
    Ack(usize),
    Reopen,
    /// Append junk to the newest segment, as a torn write leaves it.
    Tear(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Publish),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::Reopen),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::Tear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the sequence of publishes, acks, restarts and torn writes, the spool holds exactly
    /// the acknowledged-durable, not-yet-acked messages, in publish order, within its cap.
    #[test]
    fn spool_matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cap = 4000u64;
            let (mut s, _) = Spool::open(StorageType::Disk, dir.path(), cap).unwrap();
            let mut model: Vec<Vec<u8>> = Vec::new();
            for op in ops {
                match op {
                    Op::Publish(p) => {
                        match s.enqueue(msg("t/x", &p, QoS::AtLeastOnce)) {
                            Ok(w) => { w.durable().await.unwrap(); model.push(p); }
                            Err(CloudError::SpoolFull { used, max, .. }) => {
                                prop_assert!(used <= max);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Ack(n) => {
                        if !model.is_empty() {
                            let i = n % model.len();
                            let mut cursor = 0;
                            let mut k = 0;
                            while let Some(m) = s.next_after(cursor) {
                                cursor = m.id;
                                if k == i { s.ack(m.id); break; }
                                k += 1;
                            }
                            model.remove(i);
                        }
                    }
                    Op::Reopen => {
                        drop(s);
                        s = Spool::open(StorageType::Disk, dir.path(), cap).unwrap().0;
                    }
                    Op::Tear(junk) => {
                        drop(s);
                        let newest = std::fs::read_dir(dir.path()).unwrap().flatten()
                            .map(|e| e.path()).max().unwrap();
                        let mut f = OpenOptions::new().append(true).open(newest).unwrap();
                        f.write_all(&junk).unwrap();
                        drop(f);
                        s = Spool::open(StorageType::Disk, dir.path(), cap).unwrap().0;
                    }
                }
                let got: Vec<Vec<u8>> = drain_order(&s).into_iter().map(|b| b.to_vec()).collect();
                prop_assert_eq!(&got, &model);
                prop_assert!(s.usage().1 <= cap);
            }
            Ok(())
        })?;
    }

    #[test]
    fn every_prefix_of_a_record_is_incomplete(payload in proptest::collection::vec(any::<u8>(), 0..200), cut in any::<usize>()) {
        let rec = encode_message(7, &msg("x", &payload, QoS::AtMostOnce));
        let cut = cut % rec.len();
        prop_assert_eq!(decode(&rec[..cut]), Decoded::Incomplete);
    }
}

/// The child side of `acknowledged_messages_survive_kill_9`: publishes until killed, printing the
/// sequence number of each message once it is durable.
#[test]
fn kill9_child_writer() {
    let Ok(dir) = std::env::var("LICHEN_SPOOL_KILL9_DIR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (s, _) = Spool::open(StorageType::Disk, Path::new(&dir), 64 << 20).unwrap();
        let s = Arc::new(s);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        // Several concurrent publishers, so group commit is exercised too.
        for w in 0..4u64 {
            let s = s.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let n = i * 4 + w;
                    let p = s
                        .enqueue(msg(&format!("t/{w}"), &n.to_le_bytes(), QoS::AtLeastOnce))
                        .unwrap();
                    p.durable().await.unwrap();
                    tx.send(n).unwrap();
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(n) = rx.recv().await {
            writeln!(out, "durable {n}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn acknowledged_messages_survive_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["spool::tests::kill9_child_writer", "--exact", "--nocapture"])
        .env("LICHEN_SPOOL_KILL9_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("durable ") {
            acked.push(n.parse::<u64>().unwrap());
            if acked.len() == 3000 {
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(acked.len(), 3000, "the child stopped early");
    let (s, _) = Spool::open(StorageType::Disk, dir.path(), 64 << 20).unwrap();
    let mut per_topic: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut cursor = 0;
    while let Some(m) = s.next_after(cursor) {
        cursor = m.id;
        let n = u64::from_le_bytes(m.message.payload[..].try_into().unwrap());
        per_topic
            .entry(m.message.topic.clone())
            .or_default()
            .push(n);
    }
    let all: std::collections::HashSet<u64> = per_topic.values().flatten().copied().collect();
    let lost: Vec<u64> = acked.iter().filter(|n| !all.contains(n)).copied().collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    for (topic, ns) in &per_topic {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{topic} out of order");
    }
}

/// Writes `n` distinct messages over several 256 KiB segments and returns their payloads and
/// the segment files, oldest first.
async fn spool_over_segments(dir: &Path, n: u32) -> (Vec<Bytes>, Vec<PathBuf>) {
    let (s, _) = Spool::open(StorageType::Disk, dir, 1 << 20).unwrap();
    let mut sent = Vec::new();
    for i in 0..n {
        let mut payload = i.to_le_bytes().to_vec();
        payload.resize(2000, (i % 251) as u8);
        s.enqueue(msg("t", &payload, QoS::AtLeastOnce))
            .unwrap()
            .durable()
            .await
            .unwrap();
        sent.push(Bytes::from(payload));
    }
    drop(s);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segs.sort();
    (sent, segs)
}

/// Offsets of the records of a segment file.
fn record_offsets(buf: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Decoded::Record { len, .. } = decode(&buf[pos..]) {
        out.push(pos);
        pos += len;
    }
    assert_eq!(pos, buf.len());
    out
}

async fn recovery_skips_one_damaged_record(damage: impl Fn(&mut [u8])) {
    let dir = tempfile::tempdir().unwrap();
    let (sent, segs) = spool_over_segments(dir.path(), 400).await;
    assert!(segs.len() >= 3, "{segs:?}");
    let middle = &segs[segs.len() / 2];
    let mut buf = std::fs::read(middle).unwrap();
    let offsets = record_offsets(&buf);
    let victim = offsets[offsets.len() / 2];
    let Decoded::Record {
        record: Record::Message { message, .. },
        ..
    } = decode(&buf[victim..])
    else {
        panic!("a message record");
    };
    damage(&mut buf[victim..]);
    std::fs::write(middle, &buf).unwrap();

    let (s, rec) = Spool::open(StorageType::Disk, dir.path(), 1 << 20).unwrap();
    let expected: Vec<Bytes> = sent
        .iter()
        .filter(|p| **p != message.payload)
        .cloned()
        .collect();
    assert_eq!(expected.len(), 399);
    let got = drain_order(&s);
    assert_eq!(got.len(), 399, "every record but the damaged one survives");
    assert_eq!(got, expected);
    assert_eq!(rec.messages, 399);
    assert!(rec.skipped_bytes > 0, "{rec:?}");
    drop(s);
    // A second recovery finds the same.
    let (s, _) = Spool::open(StorageType::Disk, dir.path(), 1 << 20).unwrap();
    assert_eq!(drain_order(&s), expected);
}

#[tokio::test]
async fn a_corrupt_payload_in_a_middle_segment_loses_only_its_record() {
    recovery_skips_one_damaged_record(|rec| {
        let body = record::HEADER_LEN + 40;
        rec[body] ^= 0x5a;
        rec[body + 1] ^= 0xff;
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_length_in_a_middle_segment_loses_only_its_record() {
    // A length that runs past the end of the segment looks like a torn write.
    recovery_skips_one_damaged_record(|rec| rec[..4].copy_from_slice(&u32::MAX.to_le_bytes()))
        .await;
    recovery_skips_one_damaged_record(|rec| rec[..4].copy_from_slice(&(1u32 << 20).to_le_bytes()))
        .await;
}
