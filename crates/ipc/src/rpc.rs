//! Eventstream RPC message types, flags and frame builders (spec §2.3–2.5).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, CodecError, Frame, Header, HeaderRef, HeaderValue};

pub(crate) const APPLICATION_MESSAGE: i32 = 0;
pub(crate) const APPLICATION_ERROR: i32 = 1;
pub(crate) const PING: i32 = 2;
pub(crate) const PING_RESPONSE: i32 = 3;
pub(crate) const CONNECT: i32 = 4;
pub(crate) const CONNECT_ACK: i32 = 5;
pub(crate) const PROTOCOL_ERROR: i32 = 6;

pub(crate) const FLAG_CONNECTION_ACCEPTED: i32 = 1;
pub(crate) const FLAG_TERMINATE_STREAM: i32 = 2;

pub(crate) const MESSAGE_TYPE: &str = ":message-type";
pub(crate) const MESSAGE_FLAGS: &str = ":message-flags";
pub(crate) const STREAM_ID: &str = ":stream-id";
pub(crate) const VERSION: &str = ":version";
pub(crate) const CONTENT_TYPE: &str = ":content-type";
pub(crate) const SERVICE_MODEL_TYPE: &str = "service-model-type";
pub(crate) const OPERATION: &str = "operation";
pub(crate) const PROTOCOL_VERSION: &str = "0.1.0";
pub(crate) const JSON: &str = "application/json";

pub(crate) fn string_header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_string(),
        value: HeaderValue::String(value.to_string()),
    }
}

pub(crate) fn rpc_headers(kind: i32, flags: i32, stream: i32) -> Vec<Header> {
    let int = |name: &str, v| Header {
        name: name.to_string(),
        value: HeaderValue::Int32(v),
    };
    vec![
        int(MESSAGE_TYPE, kind),
        int(MESSAGE_FLAGS, flags),
        int(STREAM_ID, stream),
    ]
}

/// An application message or error carrying a JSON payload of shape `shape`.
pub(crate) fn json_message(
    kind: i32,
    flags: i32,
    stream: i32,
    shape: Option<&str>,
    extra: &[(&str, &str)],
    payload: Bytes,
) -> Frame {
    let mut headers = vec![string_header(CONTENT_TYPE, JSON)];
    if let Some(shape) = shape {
        headers.push(string_header(SERVICE_MODEL_TYPE, shape));
    }
    headers.extend(rpc_headers(kind, flags, stream));
    for (name, value) in extra {
        headers.push(string_header(name, value));
    }
    Frame { headers, payload }
}

/// The encoded bytes of [`json_message`]`(kind, flags, stream, shape, extra, payload)`, built
/// without an intermediate [`Frame`] (the per-message path: requests, responses, events).
pub(crate) fn encode_json_message(
    kind: i32,
    flags: i32,
    stream: i32,
    shape: Option<&str>,
    extra: &[(&str, &str)],
    payload: &[u8],
) -> Result<Bytes, CodecError> {
    encode_json_message_with(kind, flags, stream, shape, extra, payload.len(), |out| {
        out.put_slice(payload)
    })
}

/// As [`encode_json_message`], with the payload written by `write_payload` straight into the
/// frame's buffer.
pub(crate) fn encode_json_message_with(
    kind: i32,
    flags: i32,
    stream: i32,
    shape: Option<&str>,
    extra: &[(&str, &str)],
    size_hint: usize,
    write_payload: impl FnOnce(&mut BytesMut),
) -> Result<Bytes, CodecError> {
    let fixed = [
        Some((CONTENT_TYPE, HeaderRef::String(JSON))),
        shape.map(|s| (SERVICE_MODEL_TYPE, HeaderRef::String(s))),
        Some((MESSAGE_TYPE, HeaderRef::Int32(kind))),
        Some((MESSAGE_FLAGS, HeaderRef::Int32(flags))),
        Some((STREAM_ID, HeaderRef::Int32(stream))),
    ];
    let headers = fixed
        .into_iter()
        .flatten()
        .chain(extra.iter().map(|(n, v)| (*n, HeaderRef::String(v))));
    codec::encode_parts_with(headers, size_hint, write_payload)
}

/// A frame with only the three RPC headers (CONNECT_ACK, stream close).
pub(crate) fn bare(kind: i32, flags: i32, stream: i32) -> Frame {
    Frame {
        headers: rpc_headers(kind, flags, stream),
        payload: Bytes::new(),
    }
}

/// Connection-level error on stream 0 (PROTOCOL_ERROR / INTERNAL_ERROR), then the peer closes.
pub(crate) fn connection_error(kind: i32, message: &str) -> Frame {
    let payload = serde_json::to_vec(&serde_json::json!({ "message": message }))
        .unwrap_or_default()
        .into();
    json_message(kind, 0, 0, None, &[], payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_encoding_equals_encoding_the_frame() {
        for shape in [None, Some("aws.greengrass#PublishToTopicResponse")] {
            for extra in [&[][..], &[(OPERATION, "aws.greengrass#PublishToTopic")][..]] {
                let payload = br#"{"topic":"a/b"}"#;
                let frame = json_message(
                    APPLICATION_MESSAGE,
                    FLAG_TERMINATE_STREAM,
                    7,
                    shape,
                    extra,
                    Bytes::from_static(payload),
                );
                assert_eq!(
                    encode_json_message(
                        APPLICATION_MESSAGE,
                        FLAG_TERMINATE_STREAM,
                        7,
                        shape,
                        extra,
                        payload
                    )
                    .unwrap(),
                    codec::encode(&frame).unwrap(),
                    "shape {shape:?}, extra {extra:?}"
                );
            }
        }
    }
}
