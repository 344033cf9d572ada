//! The spool's on-disk record format (pure, no I/O).
//!
//! A record is `[body length: u32 LE][crc32 of body: u32 LE][body]`. The body starts with a kind
//! byte: [`KIND_MESSAGE`] (a message handed to us for the cloud) or [`KIND_ACK`] (that message id
//! is done: delivered, or given up). Integers are little-endian; strings and byte strings carry a
//! u32 length; optional fields carry a presence byte.

use bytes::Bytes;
use lichen_mqtt::QoS;

use crate::{CloudMessage, MessageProperties};

pub(crate) const HEADER_LEN: usize = 8;
const KIND_MESSAGE: u8 = 1;
const KIND_ACK: u8 = 2;
/// No record body is this large: a longer length field means a torn or corrupt header.
pub(crate) const MAX_BODY_LEN: usize = 1 << 30;

/// Whether `b` is the kind byte of a record (the first byte of a body).
pub(crate) fn is_kind(b: u8) -> bool {
    b == KIND_MESSAGE || b == KIND_ACK
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Message { id: u64, message: CloudMessage },
    Ack { id: u64 },
}

/// What [`decode`] found at the front of a buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    Record {
        record: Record,
        len: usize,
    },
    /// The buffer ends inside a record (a torn write).
    Incomplete,
    /// The checksum or the body does not hold together.
    Corrupt(&'static str),
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

fn put_opt_bytes(b: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            b.push(1);
            put_bytes(b, v);
        }
        None => b.push(0),
    }
}

/// The framed bytes of a message record.
pub(crate) fn encode_message(id: u64, m: &CloudMessage) -> Vec<u8> {
    let p = &m.properties;
    let mut b = Vec::with_capacity(64 + m.topic.len() + m.payload.len());
    b.push(KIND_MESSAGE);
    b.extend_from_slice(&id.to_le_bytes());
    b.push(m.qos as u8);
    b.push(u8::from(m.retain));
    put_bytes(&mut b, m.topic.as_bytes());
    put_bytes(&mut b, &m.payload);
    match p.payload_format {
        Some(v) => b.extend_from_slice(&[1, v]),
        None => b.push(0),
    }
    match p.message_expiry_interval {
        Some(v) => {
            b.push(1);
            b.extend_from_slice(&v.to_le_bytes());
        }
        None => b.push(0),
    }
    put_opt_bytes(&mut b, p.content_type.as_deref().map(str::as_bytes));
    put_opt_bytes(&mut b, p.response_topic.as_deref().map(str::as_bytes));
    put_opt_bytes(&mut b, p.correlation_data.as_deref());
    b.extend_from_slice(&(p.user_properties.len() as u32).to_le_bytes());
    for (k, v) in &p.user_properties {
        put_bytes(&mut b, k.as_bytes());
        put_bytes(&mut b, v.as_bytes());
    }
    frame(b)
}

/// The framed bytes of an ack record.
pub(crate) fn encode_ack(id: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(9);
    b.push(KIND_ACK);
    b.extend_from_slice(&id.to_le_bytes());
    frame(b)
}

/// The size on disk of `m` as a message record, without encoding it.
pub(crate) fn message_len(m: &CloudMessage) -> usize {
    let p = &m.properties;
    let opt = |v: Option<usize>| 1 + v.map_or(0, |l| 4 + l);
    HEADER_LEN
        + 1
        + 8
        + 2
        + 4
        + m.topic.len()
        + 4
        + m.payload.len()
        + 1
        + usize::from(p.payload_format.is_some())
        + 1
        + if p.message_expiry_interval.is_some() {
            4
        } else {
            0
        }
        + opt(p.content_type.as_ref().map(String::len))
        + opt(p.response_topic.as_ref().map(String::len))
        + opt(p.correlation_data.as_ref().map(Bytes::len))
        + 4
        + p.user_properties
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>()
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        Some(if self.flag()? {
            Some(self.string()?)
        } else {
            None
        })
    }
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut c = Cursor { buf: body, pos: 0 };
    let record = match c.u8()? {
        KIND_ACK => Record::Ack { id: c.u64()? },
        KIND_MESSAGE => {
            let id = c.u64()?;
            let qos = QoS::from_u8(c.u8()?)?;
            let retain = c.flag()?;
            let topic = c.string()?;
            let payload = Bytes::copy_from_slice(c.bytes()?);
            let payload_format = if c.flag()? { Some(c.u8()?) } else { None };
            let message_expiry_interval = if c.flag()? { Some(c.u32()?) } else { None };
            let content_type = c.opt_string()?;
            let response_topic = c.opt_string()?;
            let correlation_data = if c.flag()? {
                Some(Bytes::copy_from_slice(c.bytes()?))
            } else {
                None
            };
            let n = c.u32()? as usize;
            let mut user_properties = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                user_properties.push((c.string()?, c.string()?));
            }
            Record::Message {
                id,
                message: CloudMessage {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties: MessageProperties {
                        user_properties,
                        message_expiry_interval,
                        correlation_data,
                        response_topic,
                        payload_format,
                        content_type,
                    },
                },
            }
        }
        _ => return None,
    };
    (c.pos == body.len()).then_some(record)
}

/// Decodes the record at the front of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len > MAX_BODY_LEN {
        return Decoded::Corrupt("record length out of range");
    }
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Decoded::Incomplete;
    };
    if crc32fast::hash(body) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    match decode_body(body) {
        Some(record) => Decoded::Record {
            record,
            len: HEADER_LEN + len,
        },
        None => Decoded::Corrupt("record body does not parse"),
    }
}
