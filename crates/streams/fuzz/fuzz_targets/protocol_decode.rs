//! Arbitrary bytes as Stream Manager SDK frames and request payloads: decoding must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lichen_streams::fuzz_decode(data);
});
