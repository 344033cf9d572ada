use super::*;
use proptest::prelude::*;

fn h(name: &str, value: HeaderValue) -> Header {
    Header {
        name: name.to_string(),
        value,
    }
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// CONNECT as sent by awsiotsdk 1.31.0 (spec §2.7).
fn captured_connect() -> Frame {
    Frame {
        headers: vec![
            h(":version", HeaderValue::String("0.1.0".into())),
            h(":message-type", HeaderValue::Int32(4)),
            h(":message-flags", HeaderValue::Int32(0)),
            h(":stream-id", HeaderValue::Int32(0)),
        ],
        payload: Bytes::from_static(br#"{"authToken": "ABCDEF0123456789"}"#),
    }
}

fn rpc_headers(kind: i32, flags: i32, stream: i32) -> Vec<Header> {
    vec![
        h(":message-type", HeaderValue::Int32(kind)),
        h(":message-flags", HeaderValue::Int32(flags)),
        h(":stream-id", HeaderValue::Int32(stream)),
    ]
}

#[test]
fn captured_connect_bytes() {
    let bytes = encode(&captured_connect()).unwrap();
    assert_eq!(bytes.len(), 121);
    assert_eq!(
        &bytes[..12],
        &hex("00 00 00 79 00 00 00 48 e9 e7 94 75")[..]
    );
    assert_eq!(&bytes[117..], &hex("ad 04 c0 40")[..]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        Decoder::default().decode(&mut buf).unwrap(),
        Some(captured_connect())
    );
    assert!(buf.is_empty());
}

#[test]
fn captured_connect_ack_bytes() {
    let wire = hex("00 00 00 47 00 00 00 37 37 4c fe 3f
         0d 3a 6d 65 73 73 61 67 65 2d 74 79 70 65 04 00 00 00 05
         0e 3a 6d 65 73 73 61 67 65 2d 66 6c 61 67 73 04 00 00 00 01
         0a 3a 73 74 72 65 61 6d 2d 69 64 04 00 00 00 00
         e2 37 e2 7d");
    let frame = Frame {
        headers: rpc_headers(5, 1, 0),
        payload: Bytes::new(),
    };
    assert_eq!(&encode(&frame).unwrap()[..], &wire[..]);
    let mut buf = BytesMut::from(&wire[..]);
    let decoded = Decoder::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(decoded, frame);
    assert_eq!(decoded.header_i32(":MESSAGE-TYPE"), Some(5));
}

#[test]
fn captured_stream_close_bytes() {
    let bytes = encode(&Frame {
        headers: rpc_headers(0, 2, 2),
        payload: Bytes::new(),
    })
    .unwrap();
    assert_eq!(bytes.len(), 71);
    assert_eq!(
        &bytes[..12],
        &hex("00 00 00 47 00 00 00 37 37 4c fe 3f")[..]
    );
    assert_eq!(&bytes[67..], &hex("b1 00 99 75")[..]);
}

#[test]
fn captured_publish_request_sizes() {
    let frame = Frame {
        headers: vec![
            h(":content-type", HeaderValue::String("application/json".into())),
            h(
                "service-model-type",
                HeaderValue::String("aws.greengrass#PublishToTopicRequest".into()),
            ),
            h(":message-type", HeaderValue::Int32(0)),
            h(":message-flags", HeaderValue::Int32(0)),
            h(":stream-id", HeaderValue::Int32(1)),
            h(
                "operation",
                HeaderValue::String("aws.greengrass#PublishToTopic".into()),
            ),
        ],
        payload: Bytes::from_static(
            br#"{"topic": "test/topic", "publishMessage": {"jsonMessage": {"message": {"hello": "world"}}}}"#,
        ),
    };
    let bytes = encode(&frame).unwrap();
    assert_eq!(bytes.len(), 295);
    assert_eq!(&bytes[4..8], &188u32.to_be_bytes());
}

#[test]
fn every_header_type_round_trips() {
    let frame = Frame {
        headers: vec![
            h("t", HeaderValue::Bool(true)),
            h("f", HeaderValue::Bool(false)),
            h("b", HeaderValue::Byte(-3)),
            h("s", HeaderValue::Int16(-300)),
            h("i", HeaderValue::Int32(i32::MIN)),
            h("l", HeaderValue::Int64(i64::MAX)),
            h("buf", HeaderValue::ByteBuf(Bytes::from_static(b"\x00\xff"))),
            h("str", HeaderValue::String("héllo".into())),
            h("ts", HeaderValue::Timestamp(1_700_000_000_000)),
            h("u", HeaderValue::Uuid([7; 16])),
        ],
        payload: Bytes::from_static(b"payload"),
    };
    let mut buf = BytesMut::from(&encode(&frame).unwrap()[..]);
    assert_eq!(Decoder::default().decode(&mut buf).unwrap(), Some(frame));
}

#[test]
fn partial_input_waits_and_two_frames_split() {
    let a = encode(&captured_connect()).unwrap();
    let b = encode(&Frame {
        headers: rpc_headers(2, 0, 0),
        payload: Bytes::from_static(b"x"),
    })
    .unwrap();
    let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    let dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for byte in all {
        buf.put_u8(byte);
        if let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
    }
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].payload, Bytes::from_static(b"x"));
}

#[test]
fn bad_crcs_and_lengths_are_rejected() {
    let good = encode(&captured_connect()).unwrap().to_vec();
    let dec = Decoder::default();

    let mut bad_prelude = good.clone();
    bad_prelude[9] ^= 1;
    assert!(matches!(
        dec.decode(&mut BytesMut::from(&bad_prelude[..])),
        Err(CodecError::PreludeCrc { .. })
    ));

    let mut bad_message = good.clone();
    bad_message[50] ^= 1;
    assert!(matches!(
        dec.decode(&mut BytesMut::from(&bad_message[..])),
        Err(CodecError::MessageCrc { .. })
    ));

    // A prelude announcing 24 MiB is refused from its 12 bytes alone.
    let mut huge = BytesMut::new();
    huge.put_u32(24 * 1024 * 1024);
    huge.put_u32(0);
    let crc = crc32fast::hash(&huge);
    huge.put_u32(crc);
    assert!(matches!(
        dec.decode(&mut huge),
        Err(CodecError::FrameLength { .. })
    ));

    // headers_len past the frame.
    let mut past = BytesMut::new();
    past.put_u32(16);
    past.put_u32(1);
    let crc = crc32fast::hash(&past);
    past.put_u32(crc);
    assert!(matches!(
        dec.decode(&mut past),
        Err(CodecError::HeadersLength { .. })
    ));
}

#[test]
fn header_value_past_block_is_rejected() {
    // A string header claiming 100 bytes inside a 6-byte header block.
    let block = [1u8, b'a', 7, 0, 100, b'x'];
    let mut frame = BytesMut::new();
    frame.put_u32((16 + block.len()) as u32);
    frame.put_u32(block.len() as u32);
    let crc = crc32fast::hash(&frame);
    frame.put_u32(crc);
    frame.put_slice(&block);
    let crc = crc32fast::hash(&frame);
    frame.put_u32(crc);
    assert!(matches!(
        Decoder::default().decode(&mut frame),
        Err(CodecError::BadHeader { .. })
    ));
}

#[test]
fn oversized_headers_are_not_encoded() {
    let long = "x".repeat(256);
    assert!(
        encode(&Frame {
            headers: vec![h(&long, HeaderValue::Bool(true))],
            payload: Bytes::new()
        })
        .is_err()
    );
    assert!(
        encode(&Frame {
            headers: vec![h("v", HeaderValue::String("y".repeat(32768)))],
            payload: Bytes::new()
        })
        .is_err()
    );
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        any::<bool>().prop_map(HeaderValue::Bool),
        any::<i8>().prop_map(HeaderValue::Byte),
        any::<i16>().prop_map(HeaderValue::Int16),
        any::<i32>().prop_map(HeaderValue::Int32),
        any::<i64>().prop_map(HeaderValue::Int64),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|v| HeaderValue::ByteBuf(v.into())),
        ".{0,40}".prop_map(HeaderValue::String),
        any::<i64>().prop_map(HeaderValue::Timestamp),
        any::<[u8; 16]>().prop_map(HeaderValue::Uuid),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        prop::collection::vec(
            ("[a-z:-]{1,20}", header_value()).prop_map(|(name, value)| Header { name, value }),
            0..12,
        ),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(headers, payload)| Frame {
            headers,
            payload: payload.into(),
        })
}

proptest! {
    #[test]
    fn round_trip(f in frame()) {
        let bytes = encode(&f).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(Decoder::default().decode(&mut buf).unwrap(), Some(f));
        prop_assert!(buf.is_empty());
    }

    /// Looking headers up in the undecoded block finds what the decoded frame holds.
    #[test]
    fn raw_frame_lookups_match_the_decoded_frame(f in frame()) {
        let bytes = encode(&f).unwrap();
        let raw = Decoder::default().decode_raw(&mut BytesMut::from(&bytes[..])).unwrap().unwrap();
        prop_assert_eq!(&raw.payload, &f.payload);
        for h in &f.headers {
            let upper = h.name.to_ascii_uppercase();
            prop_assert_eq!(raw.header_i32(&upper), f.header_i32(&h.name));
            prop_assert_eq!(raw.header_str(&upper), f.header_str(&h.name));
        }
        prop_assert_eq!(raw.header_i32(":absent"), None);
        prop_assert_eq!(raw.to_frame(), f);
    }

    /// Mutated frames never panic; whatever decodes re-encodes to the exact bytes consumed.
    #[test]
    fn mutations_never_panic(f in frame(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
        let mut bytes = encode(&f).unwrap().to_vec();
        for (at, x) in flips {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(decoded)) = Decoder::new(4096).decode(&mut buf) {
            let consumed = bytes.len() - buf.len();
            prop_assert_eq!(&encode(&decoded).unwrap()[..], &bytes[..consumed]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = Decoder::new(1 << 20).decode(&mut buf);
    }
}
