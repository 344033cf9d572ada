//! `application/vnd.amazon.eventstream` frames: encode and incremental decode.
//!
//! Architecture invariant: pure — no I/O, no async; every length read from the wire is checked
//! against the buffer and the limits before it is used, so no input can panic or allocate more
//! than the frame limit.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Prelude (total length, headers length, prelude CRC) plus the trailing message CRC.
pub const FRAME_OVERHEAD: usize = 16;
const PRELUDE_LEN: usize = 12;
/// aws-c-event-stream's hard ceiling for a frame.
pub const MAX_FRAME_LIMIT: usize = 24 * 1024 * 1024;
/// What the server accepts by default.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
pub const MAX_HEADER_NAME_LEN: usize = 255;
pub const MAX_HEADER_VALUE_LEN: usize = 32767;
pub const MAX_HEADERS: usize = 1024;

/// A header value; the discriminant is the wire type byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    ByteBuf(Bytes),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: HeaderValue,
}

/// One eventstream message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub headers: Vec<Header>,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("prelude CRC mismatch (computed {computed:#010x}, frame says {expected:#010x})")]
    PreludeCrc { expected: u32, computed: u32 },
    #[error("message CRC mismatch (computed {computed:#010x}, frame says {expected:#010x})")]
    MessageCrc { expected: u32, computed: u32 },
    #[error("frame length {len} is outside 16..={max} bytes")]
    FrameLength { len: usize, max: usize },
    #[error("headers length {headers} does not fit in a frame of {total} bytes")]
    HeadersLength { headers: usize, total: usize },
    #[error("malformed header block at byte {offset}: {reason}")]
    BadHeader { offset: usize, reason: &'static str },
    #[error("header {name:?} is too large to encode: {reason}")]
    Encode { name: String, reason: &'static str },
}

impl Frame {
    /// The first header with this name (eventstream RPC matches names case-insensitively).
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| &h.value)
    }

    pub fn header_i32(&self, name: &str) -> Option<i32> {
        match self.header(name) {
            Some(HeaderValue::Int32(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        match self.header(name) {
            Some(HeaderValue::String(v)) => Some(v),
            _ => None,
        }
    }
}

/// A header value borrowed for encoding (no `String` built per header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderRef<'a> {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    ByteBuf(&'a [u8]),
    String(&'a str),
    Timestamp(i64),
    Uuid(&'a [u8; 16]),
}

impl HeaderValue {
    fn as_ref(&self) -> HeaderRef<'_> {
        match self {
            HeaderValue::Bool(v) => HeaderRef::Bool(*v),
            HeaderValue::Byte(v) => HeaderRef::Byte(*v),
            HeaderValue::Int16(v) => HeaderRef::Int16(*v),
            HeaderValue::Int32(v) => HeaderRef::Int32(*v),
            HeaderValue::Int64(v) => HeaderRef::Int64(*v),
            HeaderValue::ByteBuf(b) => HeaderRef::ByteBuf(b),
            HeaderValue::String(s) => HeaderRef::String(s),
            HeaderValue::Timestamp(v) => HeaderRef::Timestamp(*v),
            HeaderValue::Uuid(u) => HeaderRef::Uuid(u),
        }
    }
}

fn encoded_value_len(v: HeaderRef<'_>) -> usize {
    match v {
        HeaderRef::Bool(_) => 0,
        HeaderRef::Byte(_) => 1,
        HeaderRef::Int16(_) => 2,
        HeaderRef::Int32(_) => 4,
        HeaderRef::Int64(_) | HeaderRef::Timestamp(_) => 8,
        HeaderRef::ByteBuf(b) => 2 + b.len(),
        HeaderRef::String(s) => 2 + s.len(),
        HeaderRef::Uuid(_) => 16,
    }
}

/// Encodes a frame; fails only for headers beyond the eventstream limits or a frame above
/// [`MAX_FRAME_LIMIT`].
pub fn encode(frame: &Frame) -> Result<Bytes, CodecError> {
    encode_parts(
        frame
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_ref())),
        &frame.payload,
    )
}

/// Encodes the frame made of `headers` (in order) and `payload`, straight into one buffer.
pub(crate) fn encode_parts<'a, I>(headers: I, payload: &[u8]) -> Result<Bytes, CodecError>
where
    I: Iterator<Item = (&'a str, HeaderRef<'a>)> + Clone,
{
    encode_parts_with(headers, payload.len(), |out| out.put_slice(payload))
}

/// As [`encode_parts`], with the payload written by `write_payload` straight into the frame's
/// buffer (no payload buffer of its own); `size_hint` is the payload's expected length.
pub(crate) fn encode_parts_with<'a, I>(
    headers: I,
    size_hint: usize,
    write_payload: impl FnOnce(&mut BytesMut),
) -> Result<Bytes, CodecError>
where
    I: Iterator<Item = (&'a str, HeaderRef<'a>)> + Clone,
{
    let mut count = 0usize;
    let mut headers_len = 0usize;
    for (name, value) in headers.clone() {
        count += 1;
        if count > MAX_HEADERS {
            return Err(CodecError::Encode {
                name: String::new(),
                reason: "more than 1024 headers",
            });
        }
        if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN {
            return Err(CodecError::Encode {
                name: name.to_string(),
                reason: "name must be 1..=255 bytes",
            });
        }
        let value_len = match value {
            HeaderRef::ByteBuf(b) => b.len(),
            HeaderRef::String(s) => s.len(),
            _ => 0,
        };
        if value_len > MAX_HEADER_VALUE_LEN {
            return Err(CodecError::Encode {
                name: name.to_string(),
                reason: "value longer than 32767 bytes",
            });
        }
        headers_len += 1 + name.len() + 1 + encoded_value_len(value);
    }
    let mut out = BytesMut::with_capacity(FRAME_OVERHEAD + headers_len + size_hint);
    // The prelude is written once the payload's length is known.
    out.put_bytes(0, PRELUDE_LEN);
    for (name, value) in headers {
        out.put_u8(name.len() as u8);
        out.put_slice(name.as_bytes());
        match value {
            HeaderRef::Bool(true) => out.put_u8(0),
            HeaderRef::Bool(false) => out.put_u8(1),
            HeaderRef::Byte(v) => {
                out.put_u8(2);
                out.put_i8(v);
            }
            HeaderRef::Int16(v) => {
                out.put_u8(3);
                out.put_i16(v);
            }
            HeaderRef::Int32(v) => {
                out.put_u8(4);
                out.put_i32(v);
            }
            HeaderRef::Int64(v) => {
                out.put_u8(5);
                out.put_i64(v);
            }
            HeaderRef::ByteBuf(b) => {
                out.put_u8(6);
                out.put_u16(b.len() as u16);
                out.put_slice(b);
            }
            HeaderRef::String(s) => {
                out.put_u8(7);
                out.put_u16(s.len() as u16);
                out.put_slice(s.as_bytes());
            }
            HeaderRef::Timestamp(v) => {
                out.put_u8(8);
                out.put_i64(v);
            }
            HeaderRef::Uuid(u) => {
                out.put_u8(9);
                out.put_slice(u);
            }
        }
    }
    write_payload(&mut out);
    let total = out.len() + 4;
    if total > MAX_FRAME_LIMIT {
        return Err(CodecError::FrameLength {
            len: total,
            max: MAX_FRAME_LIMIT,
        });
    }
    out[..4].copy_from_slice(&(total as u32).to_be_bytes());
    out[4..8].copy_from_slice(&(headers_len as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out[..8]);
    out[8..12].copy_from_slice(&prelude_crc.to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.put_u32(crc);
    Ok(out.freeze())
}

/// Incremental decoder: feed it a growing buffer, take whole frames out.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder {
    /// `max_frame` is clamped to [`MAX_FRAME_LIMIT`].
    pub fn new(max_frame: usize) -> Decoder {
        Decoder {
            max_frame: max_frame.clamp(FRAME_OVERHEAD, MAX_FRAME_LIMIT),
        }
    }

    /// Takes one frame off the front of `buf` when it is complete. `Ok(None)` = need more bytes.
    /// The prelude is checked (CRC, lengths) as soon as its 12 bytes are in, so a hostile length
    /// is refused before anything is buffered for it. After an error the stream is unusable.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decode_raw(buf)?.map(|raw| raw.to_frame()))
    }

    /// As [`Decoder::decode`], but the headers stay encoded (checked, not copied): reading
    /// one allocates nothing.
    pub(crate) fn decode_raw(&self, buf: &mut BytesMut) -> Result<Option<RawFrame>, CodecError> {
        if buf.len() < PRELUDE_LEN {
            return Ok(None);
        }
        let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let headers_len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        let expected = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let computed = crc32fast::hash(&buf[..8]);
        if expected != computed {
            return Err(CodecError::PreludeCrc { expected, computed });
        }
        if total < FRAME_OVERHEAD || total > self.max_frame {
            return Err(CodecError::FrameLength {
                len: total,
                max: self.max_frame,
            });
        }
        if headers_len > total - FRAME_OVERHEAD {
            return Err(CodecError::HeadersLength {
                headers: headers_len,
                total,
            });
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let expected = u32::from_be_bytes([
            buf[total - 4],
            buf[total - 3],
            buf[total - 2],
            buf[total - 1],
        ]);
        let computed = crc32fast::hash(&buf[..total - 4]);
        if expected != computed {
            return Err(CodecError::MessageCrc { expected, computed });
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(PRELUDE_LEN);
        walk_headers(&frame[..headers_len], |_, _| true)?;
        Ok(Some(RawFrame {
            headers: frame.slice(..headers_len),
            payload: frame.slice(headers_len..total - FRAME_OVERHEAD),
        }))
    }
}

/// A decoded frame whose header block was checked but is kept encoded; looking a header up
/// walks the block (a handful of headers) instead of building a `Vec` of `String`s.
#[derive(Debug, Clone)]
pub(crate) struct RawFrame {
    /// A header block [`walk_headers`] accepted.
    headers: Bytes,
    pub(crate) payload: Bytes,
}

impl RawFrame {
    /// The first header with this name, compared case-insensitively like [`Frame::header`].
    fn header(&self, name: &str) -> Option<HeaderRef<'_>> {
        let mut found = None;
        // Names are compared as bytes: the block's UTF-8 was checked when it was decoded.
        let _ = walk_raw(&self.headers, |_, n, kind, value| {
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                found = header_value(kind, value).ok();
                return false;
            }
            true
        });
        found
    }

    pub(crate) fn header_i32(&self, name: &str) -> Option<i32> {
        match self.header(name) {
            Some(HeaderRef::Int32(v)) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn header_str(&self, name: &str) -> Option<&str> {
        match self.header(name) {
            Some(HeaderRef::String(v)) => Some(v),
            _ => None,
        }
    }

    /// The frame with its headers decoded.
    pub(crate) fn to_frame(&self) -> Frame {
        let mut headers = Vec::new();
        let _ = walk_headers(&self.headers, |name, value| {
            headers.push(Header {
                name: name.to_string(),
                value: value.to_owned(),
            });
            true
        });
        Frame {
            headers,
            payload: self.payload.clone(),
        }
    }
}

impl HeaderRef<'_> {
    fn to_owned(self) -> HeaderValue {
        match self {
            HeaderRef::Bool(v) => HeaderValue::Bool(v),
            HeaderRef::Byte(v) => HeaderValue::Byte(v),
            HeaderRef::Int16(v) => HeaderValue::Int16(v),
            HeaderRef::Int32(v) => HeaderValue::Int32(v),
            HeaderRef::Int64(v) => HeaderValue::Int64(v),
            HeaderRef::ByteBuf(b) => HeaderValue::ByteBuf(Bytes::copy_from_slice(b)),
            HeaderRef::String(s) => HeaderValue::String(s.to_string()),
            HeaderRef::Timestamp(v) => HeaderValue::Timestamp(v),
            HeaderRef::Uuid(u) => HeaderValue::Uuid(*u),
        }
    }
}

/// Checks a header block and hands each header to `visit` in order, until `visit` returns
/// `false`. An error names the first malformed header.
fn walk_headers<'a>(
    block: &'a [u8],
    mut visit: impl FnMut(&'a str, HeaderRef<'a>) -> bool,
) -> Result<(), CodecError> {
    let mut failed = None;
    walk_raw(block, |offset, name, kind, value| {
        let bad = |reason| CodecError::BadHeader { offset, reason };
        let decoded = std::str::from_utf8(name)
            .map_err(|_| bad("header name is not UTF-8"))
            .and_then(|name| Ok((name, header_value(kind, value).map_err(bad)?)));
        match decoded {
            Ok((name, value)) => visit(name, value),
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    failed.map_or(Ok(()), Err)
}

/// A header value from its wire type and bytes ([`walk_raw`] checked their length).
fn header_value(kind: u8, v: &[u8]) -> Result<HeaderRef<'_>, &'static str> {
    let short = "header value runs past the header block";
    Ok(match kind {
        0 => HeaderRef::Bool(true),
        1 => HeaderRef::Bool(false),
        2 => HeaderRef::Byte(*v.first().ok_or(short)? as i8),
        3 => HeaderRef::Int16(i16::from_be_bytes(v.try_into().map_err(|_| short)?)),
        4 => HeaderRef::Int32(i32::from_be_bytes(v.try_into().map_err(|_| short)?)),
        5 => HeaderRef::Int64(i64::from_be_bytes(v.try_into().map_err(|_| short)?)),
        6 => HeaderRef::ByteBuf(v),
        7 => HeaderRef::String(
            std::str::from_utf8(v).map_err(|_| "string header value is not UTF-8")?,
        ),
        8 => HeaderRef::Timestamp(i64::from_be_bytes(v.try_into().map_err(|_| short)?)),
        9 => HeaderRef::Uuid(v.try_into().map_err(|_| short)?),
        _ => return Err("unknown header value type"),
    })
}

/// Splits a header block into `(offset, name, type, value bytes)` without interpreting names
/// or values, checking only that every length stays inside the block.
fn walk_raw<'a>(
    mut block: &'a [u8],
    mut visit: impl FnMut(usize, &'a [u8], u8, &'a [u8]) -> bool,
) -> Result<(), CodecError> {
    let start_len = block.len();
    let mut count = 0usize;
    while !block.is_empty() {
        let offset = start_len - block.len();
        let bad = |reason| CodecError::BadHeader { offset, reason };
        if count == MAX_HEADERS {
            return Err(bad("more than 1024 headers"));
        }
        count += 1;
        let name_len = block[0] as usize;
        if name_len == 0 {
            return Err(bad("empty header name"));
        }
        if block.len() < 2 + name_len {
            return Err(bad("header name runs past the header block"));
        }
        let name = &block[1..1 + name_len];
        let kind = block[1 + name_len];
        block = &block[2 + name_len..];
        let value_len = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let Some(len) = block.get(..2) else {
                    return Err(bad("header value runs past the header block"));
                };
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                if len > MAX_HEADER_VALUE_LEN {
                    return Err(bad("header value longer than 32767 bytes"));
                }
                block = &block[2..];
                len
            }
            _ => return Err(bad("unknown header value type")),
        };
        if block.len() < value_len {
            return Err(bad("header value runs past the header block"));
        }
        let (value, rest) = block.split_at(value_len);
        block = rest;
        if !visit(offset, name, kind, value) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
