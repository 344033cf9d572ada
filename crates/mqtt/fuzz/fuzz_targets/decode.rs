#![no_main]
//! Feeds arbitrary bytes to the decoder under every connection state; whatever decodes must
//! re-encode to bytes that decode to the same packet.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use lichen_mqtt::{Version, decode, encode};

fuzz_target!(|data: &[u8]| {
    for version in [None, Some(Version::V311), Some(Version::V5)] {
        if let Ok(Some((packet, _))) = decode(data, version, 1 << 20) {
            let wire = match &packet {
                lichen_mqtt::Packet::Connect(c) => c.version,
                _ => version.unwrap_or(Version::V311),
            };
            let mut out = BytesMut::new();
            encode(&packet, wire, &mut out);
            let again = decode(&out, Some(wire), 1 << 20).expect("re-encoded packet decodes").expect("complete");
            assert_eq!(again.0, packet);
        }
    }
});
