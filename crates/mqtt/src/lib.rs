//! MQTT 3.1.1 and 5 packets: parse and serialize, with strict validation. Shared by the broker
//! (client devices, the fleet) and the cloud link's client.
//!
//! Architecture invariant: this crate does no I/O and keeps no state between calls. `decode` takes
//! bytes and returns at most one packet plus how many bytes it used; `encode` appends one packet.

use bytes::{BufMut, Bytes, BytesMut};

/// The largest remaining length a 4-byte variable byte integer can carry.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Protocol level announced in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Why a byte sequence is not a valid MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("malformed {packet} packet: {what}")]
    Malformed { packet: &'static str, what: String },
    #[error("protocol error in {packet} packet: {what}")]
    Protocol { packet: &'static str, what: String },
    #[error("packet of {size} bytes exceeds the maximum packet size {max}; send smaller packets")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol {name:?} level {level}; use MQTT 3.1.1 (level 4) or 5")]
    UnsupportedVersion { name: String, level: u8 },
}

impl CodecError {
    /// The MQTT 5 reason code a server sends for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            CodecError::Malformed { .. } => 0x81,
            CodecError::Protocol { .. } => 0x82,
            CodecError::TooLarge { .. } => 0x95,
            CodecError::UnsupportedVersion { .. } => 0x84,
        }
    }
}

fn malformed(packet: &'static str, what: impl Into<String>) -> CodecError {
    CodecError::Malformed {
        packet,
        what: what.into(),
    }
}

fn protocol(packet: &'static str, what: impl Into<String>) -> CodecError {
    CodecError::Protocol {
        packet,
        what: what.into(),
    }
}

/// MQTT 5 properties; every field is optional, absent ones are not encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub properties: Properties,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// MQTT 5 reason code; for 3.1.1 the return code (0..=5).
    pub reason_code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    /// Present exactly when `qos` is not `AtMostOnce`.
    pub packet_id: Option<u16>,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    pub reason_code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained on subscribe, 1: only if the subscription is new, 2: never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<(String, SubscriptionOptions)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub reason_codes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// Empty for MQTT 3.1.1, which has no per-filter result.
    pub reason_codes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason_code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason_code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "CONNECT is decoded once per connection; boxing it buys nothing"
)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

fn type_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved",
    }
}

// ---------------------------------------------------------------------------------------------
// Primitive readers over a slice cursor.

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    packet: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], packet: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            packet,
        }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(malformed(
                self.packet,
                format!("{what} needs {n} bytes, only {} left", self.remaining()),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, CodecError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn varint(&mut self, what: &str) -> Result<u32, CodecError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8(what)?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(malformed(
                        self.packet,
                        format!("{what}: non-minimal variable byte integer"),
                    ));
                }
                return Ok(value);
            }
        }
        Err(malformed(
            self.packet,
            format!("{what}: variable byte integer longer than 4 bytes"),
        ))
    }
    fn binary(&mut self, what: &str) -> Result<Bytes, CodecError> {
        let len = self.u16(what)? as usize;
        Ok(Bytes::copy_from_slice(self.take(len, what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, CodecError> {
        let len = self.u16(what)? as usize;
        let raw = self.take(len, what)?;
        utf8(raw, self.packet, what)
    }
}

/// MQTT strings are UTF-8 without U+0000 (surrogates are already rejected by Rust's decoder).
fn utf8(raw: &[u8], packet: &'static str, what: &str) -> Result<String, CodecError> {
    let s = std::str::from_utf8(raw)
        .map_err(|e| malformed(packet, format!("{what} is not valid UTF-8: {e}")))?;
    if s.contains('\0') {
        return Err(malformed(packet, format!("{what} contains U+0000")));
    }
    Ok(s.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// Packet kinds a property may appear in, as bits of the packet type (bit 0 = will properties).
const WILL: u16 = 1;
const fn bit(t: u8) -> u16 {
    1 << t
}

fn property_allowed(id: u8) -> Option<u16> {
    Some(match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => bit(3) | WILL,
        0x0B => bit(3) | bit(8),
        0x11 => bit(1) | bit(2) | bit(14),
        0x12 | 0x13 | 0x1A => bit(2),
        0x15 | 0x16 => bit(1) | bit(2) | bit(15),
        0x17 | 0x19 => bit(1),
        0x18 => WILL,
        0x1C => bit(2) | bit(14),
        0x1F => bit(2) | bit(4) | bit(5) | bit(6) | bit(7) | bit(9) | bit(11) | bit(14) | bit(15),
        0x21 | 0x22 | 0x27 => bit(1) | bit(2),
        0x23 => bit(3),
        0x24 | 0x25 | 0x28 | 0x29 | 0x2A => bit(2),
        0x26 => 0xffff,
        _ => return None,
    })
}

fn set_once<T>(slot: &mut Option<T>, v: T, r: &Reader, name: &str) -> Result<(), CodecError> {
    if slot.is_some() {
        return Err(protocol(
            r.packet,
            format!("property {name} appears more than once"),
        ));
    }
    *slot = Some(v);
    Ok(())
}

fn flag_byte(r: &mut Reader, name: &str) -> Result<u8, CodecError> {
    let v = r.u8(name)?;
    if v > 1 {
        return Err(protocol(
            r.packet,
            format!("property {name} must be 0 or 1, got {v}"),
        ));
    }
    Ok(v)
}

/// `kind`: the packet type (1..=15), or 0 for will properties.
fn read_properties(r: &mut Reader, kind: u8) -> Result<Properties, CodecError> {
    let len = r.varint("property length")? as usize;
    let body = r.take(len, "properties")?;
    let mut pr = Reader::new(body, r.packet);
    let mask = if kind == 0 { WILL } else { bit(kind) };
    let mut p = Properties::default();
    while pr.remaining() > 0 {
        let id = pr.varint("property identifier")?;
        let id8 = u8::try_from(id)
            .map_err(|_| malformed(r.packet, format!("unknown property identifier {id:#x}")))?;
        let allowed = property_allowed(id8)
            .ok_or_else(|| malformed(r.packet, format!("unknown property identifier {id:#04x}")))?;
        if allowed & mask == 0 {
            return Err(protocol(
                r.packet,
                format!("property {id8:#04x} is not allowed in this packet"),
            ));
        }
        match id8 {
            0x01 => {
                let v = flag_byte(&mut pr, "payload format indicator")?;
                set_once(
                    &mut p.payload_format_indicator,
                    v,
                    &pr,
                    "payload format indicator",
                )?
            }
            0x02 => {
                let v = pr.u32("message expiry interval")?;
                set_once(
                    &mut p.message_expiry_interval,
                    v,
                    &pr,
                    "message expiry interval",
                )?
            }
            0x03 => {
                let v = pr.string("content type")?;
                set_once(&mut p.content_type, v, &pr, "content type")?
            }
            0x08 => {
                let v = pr.string("response topic")?;
                if v.contains(['+', '#']) {
                    return Err(protocol(r.packet, "response topic contains a wildcard"));
                }
                set_once(&mut p.response_topic, v, &pr, "response topic")?
            }
            0x09 => {
                let v = pr.binary("correlation data")?;
                set_once(&mut p.correlation_data, v, &pr, "correlation data")?
            }
            0x0B => {
                let v = pr.varint("subscription identifier")?;
                if v == 0 {
                    return Err(protocol(
                        r.packet,
                        "subscription identifier 0 is not allowed",
                    ));
                }
                if kind == 8 && !p.subscription_identifiers.is_empty() {
                    return Err(protocol(
                        r.packet,
                        "property subscription identifier appears more than once",
                    ));
                }
                p.subscription_identifiers.push(v)
            }
            0x11 => {
                let v = pr.u32("session expiry interval")?;
                set_once(
                    &mut p.session_expiry_interval,
                    v,
                    &pr,
                    "session expiry interval",
                )?
            }
            0x12 => {
                let v = pr.string("assigned client identifier")?;
                set_once(
                    &mut p.assigned_client_identifier,
                    v,
                    &pr,
                    "assigned client identifier",
                )?
            }
            0x13 => {
                let v = pr.u16("server keep alive")?;
                set_once(&mut p.server_keep_alive, v, &pr, "server keep alive")?
            }
            0x15 => {
                let v = pr.string("authentication method")?;
                set_once(
                    &mut p.authentication_method,
                    v,
                    &pr,
                    "authentication method",
                )?
            }
            0x16 => {
                let v = pr.binary("authentication data")?;
                set_once(&mut p.authentication_data, v, &pr, "authentication data")?
            }
            0x17 => {
                let v = flag_byte(&mut pr, "request problem information")?;
                set_once(
                    &mut p.request_problem_information,
                    v,
                    &pr,
                    "request problem information",
                )?
            }
            0x18 => {
                let v = pr.u32("will delay interval")?;
                set_once(&mut p.will_delay_interval, v, &pr, "will delay interval")?
            }
            0x19 => {
                let v = flag_byte(&mut pr, "request response information")?;
                set_once(
                    &mut p.request_response_information,
                    v,
                    &pr,
                    "request response information",
                )?
            }
            0x1A => {
                let v = pr.string("response information")?;
                set_once(&mut p.response_information, v, &pr, "response information")?
            }
            0x1C => {
                let v = pr.string("server reference")?;
                set_once(&mut p.server_reference, v, &pr, "server reference")?
            }
            0x1F => {
                let v = pr.string("reason string")?;
                set_once(&mut p.reason_string, v, &pr, "reason string")?
            }
            0x21 => {
                let v = pr.u16("receive maximum")?;
                if v == 0 {
                    return Err(protocol(r.packet, "receive maximum 0 is not allowed"));
                }
                set_once(&mut p.receive_maximum, v, &pr, "receive maximum")?
            }
            0x22 => {
                let v = pr.u16("topic alias maximum")?;
                set_once(&mut p.topic_alias_maximum, v, &pr, "topic alias maximum")?
            }
            0x23 => {
                let v = pr.u16("topic alias")?;
                if v == 0 {
                    return Err(protocol(r.packet, "topic alias 0 is not allowed"));
                }
                set_once(&mut p.topic_alias, v, &pr, "topic alias")?
            }
            0x24 => {
                let v = flag_byte(&mut pr, "maximum QoS")?;
                set_once(&mut p.maximum_qos, v, &pr, "maximum QoS")?
            }
            0x25 => {
                let v = flag_byte(&mut pr, "retain available")?;
                set_once(&mut p.retain_available, v, &pr, "retain available")?
            }
            0x26 => {
                let k = pr.string("user property name")?;
                let v = pr.string("user property value")?;
                p.user_properties.push((k, v))
            }
            0x27 => {
                let v = pr.u32("maximum packet size")?;
                if v == 0 {
                    return Err(protocol(r.packet, "maximum packet size 0 is not allowed"));
                }
                set_once(&mut p.maximum_packet_size, v, &pr, "maximum packet size")?
            }
            0x28 => {
                let v = flag_byte(&mut pr, "wildcard subscription available")?;
                set_once(
                    &mut p.wildcard_subscription_available,
                    v,
                    &pr,
                    "wildcard subscription available",
                )?
            }
            0x29 => {
                let v = flag_byte(&mut pr, "subscription identifier available")?;
                set_once(
                    &mut p.subscription_identifier_available,
                    v,
                    &pr,
                    "subscription identifier available",
                )?
            }
            0x2A => {
                let v = flag_byte(&mut pr, "shared subscription available")?;
                set_once(
                    &mut p.shared_subscription_available,
                    v,
                    &pr,
                    "shared subscription available",
                )?
            }
            _ => unreachable!("property_allowed covers exactly these identifiers"),
        }
    }
    Ok(p)
}

fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

fn put_string(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_binary(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn write_properties(out: &mut BytesMut, p: &Properties) {
    let mut b = BytesMut::new();
    let b = &mut b;
    if let Some(v) = p.payload_format_indicator {
        b.put_u8(0x01);
        b.put_u8(v);
    }
    if let Some(v) = p.message_expiry_interval {
        b.put_u8(0x02);
        b.put_u32(v);
    }
    if let Some(v) = &p.content_type {
        b.put_u8(0x03);
        put_string(b, v);
    }
    if let Some(v) = &p.response_topic {
        b.put_u8(0x08);
        put_string(b, v);
    }
    if let Some(v) = &p.correlation_data {
        b.put_u8(0x09);
        put_binary(b, v);
    }
    for v in &p.subscription_identifiers {
        b.put_u8(0x0B);
        put_varint(b, *v as usize);
    }
    if let Some(v) = p.session_expiry_interval {
        b.put_u8(0x11);
        b.put_u32(v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        b.put_u8(0x12);
        put_string(b, v);
    }
    if let Some(v) = p.server_keep_alive {
        b.put_u8(0x13);
        b.put_u16(v);
    }
    if let Some(v) = &p.authentication_method {
        b.put_u8(0x15);
        put_string(b, v);
    }
    if let Some(v) = &p.authentication_data {
        b.put_u8(0x16);
        put_binary(b, v);
    }
    if let Some(v) = p.request_problem_information {
        b.put_u8(0x17);
        b.put_u8(v);
    }
    if let Some(v) = p.will_delay_interval {
        b.put_u8(0x18);
        b.put_u32(v);
    }
    if let Some(v) = p.request_response_information {
        b.put_u8(0x19);
        b.put_u8(v);
    }
    if let Some(v) = &p.response_information {
        b.put_u8(0x1A);
        put_string(b, v);
    }
    if let Some(v) = &p.server_reference {
        b.put_u8(0x1C);
        put_string(b, v);
    }
    if let Some(v) = &p.reason_string {
        b.put_u8(0x1F);
        put_string(b, v);
    }
    if let Some(v) = p.receive_maximum {
        b.put_u8(0x21);
        b.put_u16(v);
    }
    if let Some(v) = p.topic_alias_maximum {
        b.put_u8(0x22);
        b.put_u16(v);
    }
    if let Some(v) = p.topic_alias {
        b.put_u8(0x23);
        b.put_u16(v);
    }
    if let Some(v) = p.maximum_qos {
        b.put_u8(0x24);
        b.put_u8(v);
    }
    if let Some(v) = p.retain_available {
        b.put_u8(0x25);
        b.put_u8(v);
    }
    for (k, v) in &p.user_properties {
        b.put_u8(0x26);
        put_string(b, k);
        put_string(b, v);
    }
    if let Some(v) = p.maximum_packet_size {
        b.put_u8(0x27);
        b.put_u32(v);
    }
    if let Some(v) = p.wildcard_subscription_available {
        b.put_u8(0x28);
        b.put_u8(v);
    }
    if let Some(v) = p.subscription_identifier_available {
        b.put_u8(0x29);
        b.put_u8(v);
    }
    if let Some(v) = p.shared_subscription_available {
        b.put_u8(0x2A);
        b.put_u8(v);
    }
    put_varint(out, b.len());
    out.put_slice(b);
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// Decodes one packet from the front of `buf`.
///
/// `version` is `None` until CONNECT has been seen (then only CONNECT is accepted, and its level
/// decides). Returns `Ok(None)` when more bytes are needed, `Ok(Some((packet, used)))` otherwise.
/// `max_packet_size` bounds the whole packet (fixed header included).
pub fn decode(
    buf: &[u8],
    version: Option<Version>,
    max_packet_size: usize,
) -> Result<Option<(Packet, usize)>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0f;
    let name = type_name(packet_type);
    // Remaining length: up to 4 bytes.
    let mut remaining: usize = 0;
    let mut header_len = 1;
    loop {
        let Some(&b) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header_len == 5 {
            return Err(malformed(name, "remaining length longer than 4 bytes"));
        }
    }
    let total = header_len + remaining;
    if total > max_packet_size {
        return Err(CodecError::TooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[header_len..total];
    let packet = decode_body(packet_type, flags, body, version)?;
    Ok(Some((packet, total)))
}

fn expect_flags(name: &'static str, flags: u8, want: u8) -> Result<(), CodecError> {
    if flags != want {
        return Err(malformed(
            name,
            format!("reserved fixed-header flags are {flags:#06b}, must be {want:#06b}"),
        ));
    }
    Ok(())
}

fn decode_body(
    packet_type: u8,
    flags: u8,
    body: &[u8],
    version: Option<Version>,
) -> Result<Packet, CodecError> {
    let name = type_name(packet_type);
    if packet_type == 0 {
        return Err(malformed(name, "packet type 0 is reserved"));
    }
    let version = match (packet_type, version) {
        (1, _) => None,
        (_, Some(v)) => Some(v),
        (_, None) => {
            return Err(protocol(
                name,
                "the first packet on a connection must be CONNECT",
            ));
        }
    };
    let mut r = Reader::new(body, name);
    let packet = match packet_type {
        1 => {
            expect_flags(name, flags, 0)?;
            Packet::Connect(decode_connect(&mut r)?)
        }
        2 => {
            expect_flags(name, flags, 0)?;
            let v = version.unwrap_or(Version::V311);
            let ack_flags = r.u8("acknowledge flags")?;
            if ack_flags & 0xfe != 0 {
                return Err(malformed(name, "reserved acknowledge flag bits set"));
            }
            let reason_code = r.u8("reason code")?;
            let properties = if v == Version::V5 {
                read_properties(&mut r, 2)?
            } else {
                Properties::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                reason_code,
                properties,
            })
        }
        3 => Packet::Publish(decode_publish(
            &mut r,
            flags,
            version.unwrap_or(Version::V311),
        )?),
        4..=7 => {
            expect_flags(name, flags, if packet_type == 6 { 0b0010 } else { 0 })?;
            let packet_id = r.u16("packet identifier")?;
            if packet_id == 0 {
                return Err(malformed(name, "packet identifier 0 is not allowed"));
            }
            let (mut reason_code, mut properties) = (0, Properties::default());
            if version == Some(Version::V5) && r.remaining() > 0 {
                reason_code = r.u8("reason code")?;
                if r.remaining() > 0 {
                    properties = read_properties(&mut r, packet_type)?;
                }
            }
            let ack = Ack {
                packet_id,
                reason_code,
                properties,
            };
            match packet_type {
                4 => Packet::PubAck(ack),
                5 => Packet::PubRec(ack),
                6 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        8 => {
            expect_flags(name, flags, 0b0010)?;
            let v5 = version == Some(Version::V5);
            let packet_id = r.u16("packet identifier")?;
            if packet_id == 0 {
                return Err(malformed(name, "packet identifier 0 is not allowed"));
            }
            let properties = if v5 {
                read_properties(&mut r, 8)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while r.remaining() > 0 {
                let filter = r.string("topic filter")?;
                let o = r.u8("subscription options")?;
                let reserved = if v5 { 0xc0 } else { 0xfc };
                if o & reserved != 0 {
                    return Err(malformed(
                        name,
                        format!("reserved subscription option bits set for {filter:?}"),
                    ));
                }
                let qos = QoS::from_u8(o & 3)
                    .ok_or_else(|| malformed(name, format!("QoS 3 requested for {filter:?}")))?;
                let retain_handling = (o >> 4) & 3;
                if retain_handling == 3 {
                    return Err(malformed(name, format!("retain handling 3 for {filter:?}")));
                }
                filters.push((
                    filter,
                    SubscriptionOptions {
                        qos,
                        no_local: o & 0x04 != 0,
                        retain_as_published: o & 0x08 != 0,
                        retain_handling,
                    },
                ));
            }
            if filters.is_empty() {
                return Err(protocol(name, "SUBSCRIBE carries no topic filter"));
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        }
        9 | 11 => {
            expect_flags(name, flags, 0)?;
            let v5 = version == Some(Version::V5);
            let packet_id = r.u16("packet identifier")?;
            let properties = if v5 {
                read_properties(&mut r, packet_type)?
            } else {
                Properties::default()
            };
            // A 3.1.1 UNSUBACK has no payload; anything after the packet id is trailing garbage.
            let reason_codes = if packet_type == 9 || v5 {
                r.take(r.remaining(), "reason codes")?.to_vec()
            } else {
                Vec::new()
            };
            if packet_type == 9 {
                Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    reason_codes,
                })
            } else {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    reason_codes,
                })
            }
        }
        10 => {
            expect_flags(name, flags, 0b0010)?;
            let packet_id = r.u16("packet identifier")?;
            if packet_id == 0 {
                return Err(malformed(name, "packet identifier 0 is not allowed"));
            }
            let properties = if version == Some(Version::V5) {
                read_properties(&mut r, 10)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while r.remaining() > 0 {
                filters.push(r.string("topic filter")?);
            }
            if filters.is_empty() {
                return Err(protocol(name, "UNSUBSCRIBE carries no topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        }
        12 | 13 => {
            expect_flags(name, flags, 0)?;
            if packet_type == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 | 15 => {
            expect_flags(name, flags, 0)?;
            let v5 = version == Some(Version::V5);
            if packet_type == 15 && !v5 {
                return Err(protocol(name, "AUTH exists only in MQTT 5"));
            }
            let (mut reason_code, mut properties) = (0, Properties::default());
            if v5 && r.remaining() > 0 {
                reason_code = r.u8("reason code")?;
                if r.remaining() > 0 {
                    properties = read_properties(&mut r, packet_type)?;
                }
            }
            if packet_type == 14 {
                Packet::Disconnect(Disconnect {
                    reason_code,
                    properties,
                })
            } else {
                Packet::Auth(Auth {
                    reason_code,
                    properties,
                })
            }
        }
        _ => unreachable!("packet types are four bits"),
    };
    if r.remaining() > 0 {
        return Err(malformed(
            name,
            format!("{} unexpected trailing bytes", r.remaining()),
        ));
    }
    Ok(packet)
}

fn decode_connect(r: &mut Reader) -> Result<Connect, CodecError> {
    let name = "CONNECT";
    let protocol_name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let version = match (protocol_name.as_str(), level) {
        ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        _ => {
            return Err(CodecError::UnsupportedVersion {
                name: protocol_name,
                level,
            });
        }
    };
    let flags = r.u8("connect flags")?;
    if flags & 1 != 0 {
        return Err(malformed(name, "reserved connect flag bit 0 is set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 3;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(malformed(
            name,
            "will QoS or will retain set without the will flag",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or_else(|| malformed(name, "will QoS 3"))?;
    if version == Version::V311 && has_password && !has_username {
        return Err(malformed(
            name,
            "password flag set without the user name flag",
        ));
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if version == Version::V5 {
        read_properties(r, 1)?
    } else {
        Properties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if version == Version::V5 {
            read_properties(r, 0)?
        } else {
            Properties::default()
        };
        let topic = r.string("will topic")?;
        validate_topic_name(&topic)
            .map_err(|what| malformed(name, format!("will topic {topic:?}: {what}")))?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_publish(r: &mut Reader, flags: u8, version: Version) -> Result<Publish, CodecError> {
    let name = "PUBLISH";
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    let qos = QoS::from_u8((flags >> 1) & 3).ok_or_else(|| malformed(name, "QoS 3"))?;
    if qos == QoS::AtMostOnce && dup {
        return Err(malformed(name, "DUP set on a QoS 0 message"));
    }
    let topic = r.string("topic name")?;
    if !(topic.is_empty() && version == Version::V5) {
        validate_topic_name(&topic)
            .map_err(|what| malformed(name, format!("topic {topic:?}: {what}")))?;
    }
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        let id = r.u16("packet identifier")?;
        if id == 0 {
            return Err(malformed(name, "packet identifier 0 is not allowed"));
        }
        Some(id)
    };
    let properties = if version == Version::V5 {
        read_properties(r, 3)?
    } else {
        Properties::default()
    };
    let payload = Bytes::copy_from_slice(r.take(r.remaining(), "payload")?);
    if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
        return Err(CodecError::Protocol {
            packet: name,
            what: "payload format indicator says UTF-8 but the payload is not".into(),
        });
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// Checks a topic name used in PUBLISH: non-empty, no wildcards.
pub fn validate_topic_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("a topic name must not be empty");
    }
    if topic.contains(['+', '#']) {
        return Err("a topic name must not contain + or #");
    }
    Ok(())
}

/// Checks a topic filter: `#` only last and alone in its level, `+` alone in its level.
pub fn validate_topic_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err("# must be the last level and alone in it");
        }
        if level.contains('+') && *level != "+" {
            return Err("+ must be alone in its level");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// Appends `packet` in the wire format of `version`.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) {
    let v5 = version == Version::V5;
    let mut body = BytesMut::new();
    let b = &mut body;
    let first: u8 = match packet {
        Packet::Connect(c) => {
            put_string(b, "MQTT");
            b.put_u8(if c.version == Version::V5 { 5 } else { 4 });
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            b.put_u8(flags);
            b.put_u16(c.keep_alive);
            let cv5 = c.version == Version::V5;
            if cv5 {
                write_properties(b, &c.properties);
            }
            put_string(b, &c.client_id);
            if let Some(w) = &c.will {
                if cv5 {
                    write_properties(b, &w.properties);
                }
                put_string(b, &w.topic);
                put_binary(b, &w.payload);
            }
            if let Some(u) = &c.username {
                put_string(b, u);
            }
            if let Some(p) = &c.password {
                put_binary(b, p);
            }
            0x10
        }
        Packet::ConnAck(c) => {
            b.put_u8(u8::from(c.session_present));
            b.put_u8(c.reason_code);
            if v5 {
                write_properties(b, &c.properties);
            }
            0x20
        }
        Packet::Publish(p) => {
            put_string(b, &p.topic);
            if let Some(id) = p.packet_id {
                b.put_u16(id);
            }
            if v5 {
                write_properties(b, &p.properties);
            }
            b.put_slice(&p.payload);
            0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            b.put_u16(a.packet_id);
            let has_props = a.properties != Properties::default();
            if v5 && (a.reason_code != 0 || has_props) {
                b.put_u8(a.reason_code);
                if has_props {
                    write_properties(b, &a.properties);
                }
            }
            match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            }
        }
        Packet::Subscribe(s) => {
            b.put_u16(s.packet_id);
            if v5 {
                write_properties(b, &s.properties);
            }
            for (f, o) in &s.filters {
                put_string(b, f);
                let mut opts = o.qos as u8;
                if v5 {
                    opts |= (u8::from(o.no_local) << 2)
                        | (u8::from(o.retain_as_published) << 3)
                        | (o.retain_handling << 4);
                }
                b.put_u8(opts);
            }
            0x82
        }
        Packet::SubAck(s) => {
            b.put_u16(s.packet_id);
            if v5 {
                write_properties(b, &s.properties);
            }
            b.put_slice(&s.reason_codes);
            0x90
        }
        Packet::Unsubscribe(u) => {
            b.put_u16(u.packet_id);
            if v5 {
                write_properties(b, &u.properties);
            }
            for f in &u.filters {
                put_string(b, f);
            }
            0xa2
        }
        Packet::UnsubAck(u) => {
            b.put_u16(u.packet_id);
            if v5 {
                write_properties(b, &u.properties);
                b.put_slice(&u.reason_codes);
            }
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect(d) => {
            let has_props = d.properties != Properties::default();
            if v5 && (d.reason_code != 0 || has_props) {
                b.put_u8(d.reason_code);
                if has_props {
                    write_properties(b, &d.properties);
                }
            }
            0xe0
        }
        Packet::Auth(a) => {
            let has_props = a.properties != Properties::default();
            if a.reason_code != 0 || has_props {
                b.put_u8(a.reason_code);
                if has_props {
                    write_properties(b, &a.properties);
                }
            }
            0xf0
        }
    };
    out.put_u8(first);
    put_varint(out, body.len());
    out.put_slice(&body);
}

#[cfg(test)]
mod tests;
