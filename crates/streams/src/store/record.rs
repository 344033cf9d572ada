//! The on-disk record format of a segment, and the scan that recovers a segment's index.
//!
//! Record: `u32 payload_len | u32 crc | u64 seq | i64 ingest_ms | payload`, little-endian.
//! `crc` is CRC-32 (IEEE) over `payload_len | seq | ingest_ms | payload`, so a torn length, a
//! torn header and a torn payload are all detected. Pure: works on byte slices.

pub(crate) const HEADER_LEN: usize = 24;
/// The protocol's frame limit bounds any payload; larger lengths on disk are damage.
pub(crate) const MAX_PAYLOAD_LEN: usize = 1 << 30;

fn checksum(payload_len: u32, seq: u64, ingest_ms: i64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&payload_len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&ingest_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one encoded record to `out`.
pub(crate) fn encode(seq: u64, ingest_ms: i64, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, seq, ingest_ms, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ingest_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A record decoded in place.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decoded<'a> {
    pub seq: u64,
    pub ingest_ms: i64,
    pub payload: &'a [u8],
    /// Bytes the whole record occupies.
    pub len: usize,
}

/// Decodes the record at the start of `buf`; None when it is torn, damaged or absent.
pub(crate) fn decode(buf: &[u8]) -> Option<Decoded<'_>> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap());
    let payload_len = u32_at(0);
    let len = payload_len as usize;
    if len == 0 || len > MAX_PAYLOAD_LEN || buf.len() - HEADER_LEN < len {
        return None;
    }
    let seq = u64_at(8);
    let ingest_ms = u64_at(16) as i64;
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    if checksum(payload_len, seq, ingest_ms, payload) != u32_at(4) {
        return None;
    }
    Some(Decoded {
        seq,
        ingest_ms,
        payload,
        len: HEADER_LEN + len,
    })
}

/// Whether `header` (at least [`HEADER_LEN`] bytes, `distance` bytes after the start of a
/// damaged record, `remaining` bytes before the end of the segment) may start the record that
/// resumes the log after `expected` was lost: its length fits, and its number is past
/// `expected` by no more records than `distance` could have held. Returns the record's whole
/// length and number; only its checksum can confirm it.
pub(crate) fn plausible_header(
    header: &[u8],
    expected: u64,
    distance: u64,
    remaining: u64,
) -> Option<(usize, u64)> {
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let seq = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let whole = HEADER_LEN + len;
    let most_lost = distance / (HEADER_LEN as u64 + 1);
    (len > 0
        && len <= MAX_PAYLOAD_LEN
        && whole as u64 <= remaining
        && seq > expected
        && seq - expected <= most_lost)
        .then_some((whole, seq))
}

/// The index recovered from a segment's bytes: every record from the start whose checksum holds
/// and whose sequence number continues `first_seq`, stopping at the first that does not.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ScanResult {
    pub offsets: Vec<u32>,
    /// Bytes covered by valid records; anything after is a torn or damaged tail.
    pub valid_len: u64,
    pub last_ingest_ms: i64,
}

/// Scans segment bytes held in memory (tests and small segments).
#[cfg(test)]
pub(crate) fn scan(buf: &[u8], first_seq: u64) -> ScanResult {
    scan_reader(std::io::Cursor::new(buf), buf.len() as u64, first_seq)
        .expect("reading a slice cannot fail")
}

/// Scans a segment of `total_len` bytes from `reader`, one record at a time: memory is one
/// record, whatever the segment size. A length field is trusted only as far as the bytes that
/// remain, so damage cannot cause a huge allocation.
pub(crate) fn scan_reader(
    mut reader: impl std::io::Read,
    total_len: u64,
    first_seq: u64,
) -> std::io::Result<ScanResult> {
    let mut r = ScanResult::default();
    let mut off = 0u64;
    let mut record = Vec::new();
    loop {
        let remaining = total_len - off;
        if remaining < HEADER_LEN as u64 || off > u32::MAX as u64 {
            break;
        }
        let mut header = [0u8; HEADER_LEN];
        if !read_full(&mut reader, &mut header)? {
            break;
        }
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as u64;
        if len == 0 || len > MAX_PAYLOAD_LEN as u64 || len > remaining - HEADER_LEN as u64 {
            break;
        }
        record.clear();
        record.extend_from_slice(&header);
        record.resize(HEADER_LEN + len as usize, 0);
        if !read_full(&mut reader, &mut record[HEADER_LEN..])? {
            break;
        }
        match decode(&record) {
            Some(d) if d.seq == first_seq + r.offsets.len() as u64 => {
                r.offsets.push(off as u32);
                r.last_ingest_ms = d.ingest_ms;
                off += d.len as u64;
            }
            _ => break,
        }
    }
    r.valid_len = off;
    Ok(r)
}

/// Fills `buf` completely; false at end of input.
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_all(first: u64, payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            encode(first + i as u64, 1000 + i as i64, p, &mut out);
        }
        out
    }

    #[test]
    fn round_trip() {
        let buf = encode_all(7, &[b"a".to_vec(), b"bc".to_vec()]);
        let s = scan(&buf, 7);
        assert_eq!(s.offsets, vec![0, 25]);
        assert_eq!(s.valid_len as usize, buf.len());
        let d = decode(&buf[25..]).unwrap();
        assert_eq!((d.seq, d.ingest_ms, d.payload), (8, 1001, &b"bc"[..]));
    }

    #[test]
    fn wrong_sequence_stops_the_scan() {
        let buf = encode_all(7, &[b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(scan(&buf, 6).offsets.len(), 0);
    }

    proptest! {
        #[test]
        fn damage_never_loses_records_before_it(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 1..20),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            do_flip in any::<bool>(),
        ) {
            let mut buf = encode_all(0, &payloads);
            let mut ends = Vec::new();
            let mut off = 0;
            for p in &payloads { off += HEADER_LEN + p.len(); ends.push(off); }
            let damage_at = if do_flip {
                let i = flip.index(buf.len());
                buf[i] ^= 1 << bit;
                i
            } else {
                let c = cut.index(buf.len() + 1);
                buf.truncate(c);
                c
            };
            let s = scan(&buf, 0);
            // Every record that ends before the damage is recovered.
            let intact = ends.iter().filter(|&&e| e <= damage_at).count();
            // and nothing at or after it (CRC-32 detects every single-bit error).
            prop_assert_eq!(s.offsets.len(), intact);
            for (i, &o) in s.offsets.iter().enumerate() {
                let d = decode(&buf[o as usize..]).unwrap();
                prop_assert_eq!(d.payload, &payloads[i][..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..512), first in any::<u64>()) {
            let s = scan(&buf, first >> 1);
            prop_assert!(s.valid_len as usize <= buf.len());
        }
    }
}
