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

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let decoder = Decoder::new(64 * 1024);
    let step = (data[0] as usize % 17) + 1;
    let input = &data[1..];
    let whole = decode_all(&decoder, &[input]);
    let chunks: Vec<&[u8]> = input.chunks(step).collect();
    let chunked = decode_all(&decoder, &chunks);
    assert_eq!(whole, chunked);
});
