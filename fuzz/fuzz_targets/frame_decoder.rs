//! Feeds arbitrary bytes to the eventstream frame decoder, in arbitrary chunk sizes.
//! Properties: no panic; every frame decoded re-encodes to exactly the bytes it consumed;
//! chunked decoding yields the same frames as decoding the whole input at once.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use lichen_ipc::codec::{Decoder, Frame, encode};

fn decode_all(decoder: &Decoder, chunks: &[&[u8]]) -> (Vec<Frame>, bool) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let consumed = before.len() - buf.len();
                    let bytes = encode(&frame).expect("a decoded frame re-encodes");
                    assert_eq!(&bytes[..], &before[..consumed]);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

/// Rewrites the length fields and both CRCs of a single-frame input so that the header and
/// payload parsers see well-framed but otherwise arbitrary bytes (random CRCs almost never pass).
fn fix_up(input: &[u8]) -> Vec<u8> {
    if input.len() < 16 {
        return input.to_vec();
    }
    let mut frame = input.to_vec();
    let total = frame.len() as u32;
    let headers = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) % (total - 15);
    frame[..4].copy_from_slice(&total.to_be_bytes());
    frame[4..8].copy_from_slice(&headers.to_be_bytes());
    let prelude_crc = crc32fast::hash(&frame[..8]);
    frame[8..12].copy_from_slice(&prelude_crc.to_be_bytes());
    let end = frame.len() - 4;
    let message_crc = crc32fast::hash(&frame[..end]);
    frame[end..].copy_from_slice(&message_crc.to_be_bytes());
    frame
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let decoder = Decoder::new(64 * 1024);
    let step = (data[0] as usize % 17) + 1;
    let input = if data[0] & 0x80 != 0 {
        fix_up(&data[1..])
    } else {
        data[1..].to_vec()
    };
    let whole = decode_all(&decoder, &[&input]);
    let chunks: Vec<&[u8]> = input.chunks(step).collect();
    let chunked = decode_all(&decoder, &chunks);
    assert_eq!(whole, chunked);
});
