//! The Stream Manager SDK wire format (spec §1.4/§1.5): frames `i32 length | u8 op | CBOR map`
//! and the request/response messages inside them. Pure: no sockets, no store.

use crate::export::{ExportCheckpoint, ExportConfig, ExportKind};
use crate::model::{
    DEFAULT_MAX_SIZE, DEFAULT_SEGMENT_SIZE, Persistence, StrategyOnFull, StreamDefinition,
};
use bytes::{Buf, BytesMut};
use ciborium::value::{Integer, Value};
use std::collections::BTreeMap;

/// The client refuses frames above 2^30 bytes; so do we.
pub(crate) const MAX_FRAME_LEN: usize = 1 << 30;
pub(crate) const CONNECT_VERSION: u8 = 1;
const READ_CHUNK: usize = 1 << 20;
pub(crate) const PROTOCOL_VERSION: &str = "1.1.0";
pub(crate) const SUPPORTED_PROTOCOL_VERSIONS: [&str; 2] = ["1.1.0", "1.0.0"];

/// Operation codes.
pub(crate) mod op {
    pub const CONNECT: u8 = 1;
    pub const CREATE: u8 = 2;
    pub const DELETE: u8 = 3;
    pub const APPEND: u8 = 4;
    pub const READ: u8 = 5;
    pub const CONNECT_RESPONSE: u8 = 6;
    pub const CREATE_RESPONSE: u8 = 7;
    pub const DELETE_RESPONSE: u8 = 8;
    pub const APPEND_RESPONSE: u8 = 9;
    pub const READ_RESPONSE: u8 = 10;
    pub const LIST: u8 = 11;
    pub const LIST_RESPONSE: u8 = 12;
    pub const DESCRIBE: u8 = 13;
    pub const DESCRIBE_RESPONSE: u8 = 14;
    pub const UPDATE: u8 = 15;
    pub const UPDATE_RESPONSE: u8 = 16;
    pub const UNKNOWN_OPERATION_ERROR: u8 = 17;
}

/// ResponseStatusCode values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Success = 0,
    UnknownFailure = 1,
    Unauthorized = 2,
    InvalidRequest = 3,
    RequestPayloadTooLarge = 4,
    ResourceNotFound = 5,
    ResponsePayloadTooLarge = 7,
    UnsupportedConnectVersion = 8,
    UnsupportedProtocolVersion = 10,
    InvalidProtocolVersion = 11,
    NotEnoughMessages = 13,
    MessageStoreReadError = 14,
    UpdateFailed = 16,
    UpdateNotAllowed = 17,
    UnknownOperation = 18,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub op: u8,
    pub payload: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame length {0} is outside 1..=2^30; closing the connection")]
pub(crate) struct FrameLengthError(pub i64);

/// Takes one complete frame off the front of `buf`, or None if more bytes are needed.
pub(crate) fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameLengthError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes(buf[..4].try_into().unwrap());
    if len < 1 || len as usize > MAX_FRAME_LEN {
        return Err(FrameLengthError(len as i64));
    }
    let len = len as usize;
    if buf.len() < 4 + len {
        // Grow toward the announced length in steps: a length alone does not buy memory.
        buf.reserve((4 + len - buf.len()).min(READ_CHUNK));
        return Ok(None);
    }
    buf.advance(4);
    let op = buf[0];
    buf.advance(1);
    let payload = buf.split_to(len - 1).to_vec();
    Ok(Some(Frame { op, payload }))
}

/// One frame as a single buffer, so it goes out in one write.
pub(crate) fn encode_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&((payload.len() + 1) as i32).to_be_bytes());
    out.push(op);
    out.extend_from_slice(payload);
    out
}

/// Why a request could not be understood. With a request id the client gets status 3; without
/// one the connection is closed (there is nobody to answer).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct DecodeError {
    pub request_id: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ReadOptions {
    pub desired_start: u64,
    pub min_count: u64,
    pub max_count: u64,
    pub timeout_millis: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request {
    Connect {
        request_id: String,
        protocol_version: Option<String>,
        auth_token: Option<String>,
    },
    Create {
        request_id: String,
        definition: StreamDefinition,
    },
    Update {
        request_id: String,
        definition: StreamDefinition,
    },
    Delete {
        request_id: String,
        name: String,
    },
    Describe {
        request_id: String,
        name: String,
    },
    List {
        request_id: String,
    },
    Append {
        request_id: String,
        name: String,
        payload: Vec<u8>,
    },
    Read {
        request_id: String,
        stream_name: String,
        options: ReadOptions,
    },
}

type Map = Vec<(Value, Value)>;

fn get<'a>(m: &'a Map, key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

struct Fields<'a> {
    map: &'a Map,
    path: String,
    request_id: Option<String>,
}

impl<'a> Fields<'a> {
    fn err(&self, key: &str, what: &str) -> DecodeError {
        DecodeError {
            request_id: self.request_id.clone(),
            message: format!("{}{key} {what}", self.path),
        }
    }
    fn nested(&self, key: &str, map: &'a Map) -> Fields<'a> {
        Fields {
            map,
            path: format!("{}{key}.", self.path),
            request_id: self.request_id.clone(),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<String>, DecodeError> {
        match get(self.map, key) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(key, "must be a string")),
        }
    }
    fn str_req(&self, key: &str) -> Result<String, DecodeError> {
        self.str_opt(key)?
            .ok_or_else(|| self.err(key, "is required"))
    }
    fn u64_opt(&self, key: &str) -> Result<Option<u64>, DecodeError> {
        match get(self.map, key) {
            None => Ok(None),
            Some(Value::Integer(i)) => u64::try_from(i128::from(*i))
                .map(Some)
                .map_err(|_| self.err(key, "must not be negative")),
            Some(_) => Err(self.err(key, "must be an integer")),
        }
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>, DecodeError> {
        match get(self.map, key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(key, "must be a boolean")),
        }
    }
    fn map_opt(&self, key: &str) -> Result<Option<&'a Map>, DecodeError> {
        match get(self.map, key) {
            None => Ok(None),
            Some(Value::Map(m)) => Ok(Some(m)),
            Some(_) => Err(self.err(key, "must be a map")),
        }
    }
}

/// Decodes the CBOR payload of a request frame with operation `op`. Unknown operations are the
/// caller's concern.
pub(crate) fn decode_request(op: u8, payload: &[u8]) -> Result<Request, DecodeError> {
    let value: Value = ciborium::from_reader(payload).map_err(|e| DecodeError {
        request_id: None,
        message: format!("payload is not valid CBOR: {e}"),
    })?;
    let Value::Map(map) = value else {
        return Err(DecodeError {
            request_id: None,
            message: "payload is not a CBOR map".into(),
        });
    };
    let request_id = match get(&map, "requestId") {
        Some(Value::Text(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(DecodeError {
                request_id: None,
                message: "requestId is missing".into(),
            });
        }
    };
    let f = Fields {
        map: &map,
        path: String::new(),
        request_id: Some(request_id.clone()),
    };
    Ok(match op {
        op::CONNECT => Request::Connect {
            request_id,
            protocol_version: f.str_opt("protocolVersion")?,
            auth_token: f.str_opt("authToken")?,
        },
        op::CREATE | op::UPDATE => {
            let def_map = f
                .map_opt("definition")?
                .ok_or_else(|| f.err("definition", "is required"))?;
            let definition = decode_definition(&f.nested("definition", def_map))?;
            if op == op::CREATE {
                Request::Create {
                    request_id,
                    definition,
                }
            } else {
                Request::Update {
                    request_id,
                    definition,
                }
            }
        }
        op::DELETE => Request::Delete {
            name: f.str_req("name")?,
            request_id,
        },
        op::DESCRIBE => Request::Describe {
            name: f.str_req("name")?,
            request_id,
        },
        op::LIST => Request::List { request_id },
        op::APPEND => {
            let payload = match get(&map, "payload") {
                Some(Value::Bytes(b)) => b.clone(),
                Some(_) => return Err(f.err("payload", "must be a byte string")),
                None => return Err(f.err("payload", "is required")),
            };
            Request::Append {
                name: f.str_req("name")?,
                payload,
                request_id,
            }
        }
        op::READ => {
            let mut options = ReadOptions {
                desired_start: 0,
                min_count: 1,
                max_count: 1,
                timeout_millis: 0,
            };
            if let Some(o) = f.map_opt("readMessagesOptions")? {
                let o = f.nested("readMessagesOptions", o);
                options.desired_start = o.u64_opt("desiredStartSequenceNumber")?.unwrap_or(0);
                options.min_count = o.u64_opt("minMessageCount")?.unwrap_or(1);
                options.max_count = o.u64_opt("maxMessageCount")?.unwrap_or(options.min_count);
                options.timeout_millis = o.u64_opt("readTimeoutMillis")?.unwrap_or(0);
            }
            Request::Read {
                stream_name: f.str_req("streamName")?,
                options,
                request_id,
            }
        }
        other => {
            return Err(DecodeError {
                request_id: Some(request_id),
                message: format!("operation {other} is not a request"),
            });
        }
    })
}

fn decode_definition(f: &Fields<'_>) -> Result<StreamDefinition, DecodeError> {
    let strategy_on_full = match f.u64_opt("strategyOnFull")? {
        Some(0) => StrategyOnFull::RejectNewData,
        Some(1) => StrategyOnFull::OverwriteOldestData,
        Some(_) => {
            return Err(f.err(
                "strategyOnFull",
                "must be 0 (RejectNewData) or 1 (OverwriteOldestData)",
            ));
        }
        None => return Err(f.err("strategyOnFull", "is required")),
    };
    let persistence = match f.u64_opt("persistence")? {
        None | Some(0) => Persistence::File,
        Some(1) => Persistence::Memory,
        Some(_) => return Err(f.err("persistence", "must be 0 (File) or 1 (Memory)")),
    };
    let mut exports = Vec::new();
    if let Some(e) = f.map_opt("exportDefinition")? {
        let ef = f.nested("exportDefinition", e);
        for (k, v) in e {
            let Some(key) = k.as_text() else { continue };
            let Some(kind) = ExportKind::from_wire_key(key) else {
                return Err(ef.err(key, "is not a known export destination"));
            };
            let list = match v {
                Value::Null => continue,
                Value::Array(a) => a,
                _ => return Err(ef.err(key, "must be a list")),
            };
            for (i, item) in list.iter().enumerate() {
                let Value::Map(m) = item else {
                    return Err(ef.err(&format!("{key}[{i}]"), "must be a map"));
                };
                exports.push(decode_export(kind, &ef.nested(&format!("{key}[{i}]"), m))?);
            }
        }
    }
    Ok(StreamDefinition {
        name: f.str_req("name")?,
        max_size: f.u64_opt("maxSize")?.unwrap_or(DEFAULT_MAX_SIZE),
        segment_size: f
            .u64_opt("streamSegmentSize")?
            .unwrap_or(DEFAULT_SEGMENT_SIZE),
        time_to_live_millis: f.u64_opt("timeToLiveMillis")?,
        strategy_on_full,
        persistence,
        flush_on_write: f.bool_opt("flushOnWrite")?.unwrap_or(false),
        exports,
    })
}

const COMMON_EXPORT_KEYS: [&str; 6] = [
    "identifier",
    "priority",
    "disabled",
    "batchSize",
    "batchIntervalMillis",
    "startSequenceNumber",
];

fn decode_export(kind: ExportKind, f: &Fields<'_>) -> Result<ExportConfig, DecodeError> {
    let mut settings = BTreeMap::new();
    for (k, v) in f.map {
        if let Some(key) = k.as_text()
            && !COMMON_EXPORT_KEYS.contains(&key)
            && !v.is_null()
        {
            settings.insert(
                key.to_string(),
                cbor_to_json(v).map_err(|m| f.err(key, &m))?,
            );
        }
    }
    Ok(ExportConfig {
        kind,
        identifier: f.str_req("identifier")?,
        priority: f.u64_opt("priority")?,
        disabled: f.bool_opt("disabled")?.unwrap_or(false),
        batch_size: f.u64_opt("batchSize")?,
        batch_interval_millis: f.u64_opt("batchIntervalMillis")?,
        start_sequence_number: f.u64_opt("startSequenceNumber")?,
        settings,
    })
}

fn cbor_to_json(v: &Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Integer(i) => {
            let i = i128::from(*i);
            if let Ok(u) = u64::try_from(i) {
                J::from(u)
            } else {
                J::from(i64::try_from(i).map_err(|_| "integer out of range".to_string())?)
            }
        }
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Text(s) => J::String(s.clone()),
        Value::Array(a) => J::Array(a.iter().map(cbor_to_json).collect::<Result<_, _>>()?),
        Value::Map(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                let k = k.as_text().ok_or("map keys must be strings")?;
                o.insert(k.to_string(), cbor_to_json(v)?);
            }
            J::Object(o)
        }
        _ => return Err("has an unsupported CBOR type".into()),
    })
}

fn json_to_cbor(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::Integer(u.into()),
            (None, Some(i)) => Value::Integer(i.into()),
            _ => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::Text(s.clone()),
        J::Array(a) => Value::Array(a.iter().map(json_to_cbor).collect()),
        J::Object(o) => Value::Map(o.iter().map(|(k, v)| (text(k), json_to_cbor(v))).collect()),
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn int(i: impl Into<Integer>) -> Value {
    Value::Integer(i.into())
}

/// Builds response maps: `requestId`, `status`, optional `errorMessage`, then extra fields.
pub(crate) struct Response {
    map: Map,
}

impl Response {
    pub fn new(request_id: &str, status: Status, error: Option<String>) -> Self {
        let mut map = vec![
            (text("requestId"), text(request_id)),
            (text("status"), int(status as u8)),
        ];
        if let Some(e) = error {
            map.push((text("errorMessage"), Value::Text(e)));
        }
        Response { map }
    }
    pub fn field(mut self, key: &str, value: Value) -> Self {
        self.map.push((text(key), value));
        self
    }
    pub fn encode(self, op: u8) -> Vec<u8> {
        let mut payload = Vec::new();
        ciborium::into_writer(&Value::Map(self.map), &mut payload)
            .expect("writing to a Vec cannot fail");
        encode_frame(op, &payload)
    }
}

pub(crate) fn connect_response_fields(r: Response) -> Response {
    r.field("protocolVersion", text(PROTOCOL_VERSION))
        .field(
            "supportedProtocolVersions",
            Value::Array(
                SUPPORTED_PROTOCOL_VERSIONS
                    .iter()
                    .map(|v| text(v))
                    .collect(),
            ),
        )
        .field("serverVersion", text(env!("CARGO_PKG_VERSION")))
}

pub(crate) fn messages_value(stream: &str, messages: Vec<crate::store::Message>) -> Value {
    Value::Array(
        messages
            .into_iter()
            .map(|m| {
                Value::Map(vec![
                    (text("streamName"), text(stream)),
                    (text("sequenceNumber"), int(m.sequence_number)),
                    (text("ingestTime"), int(m.ingest_time_ms)),
                    (text("payload"), Value::Bytes(m.payload)),
                ])
            })
            .collect(),
    )
}

pub(crate) fn definition_value(d: &StreamDefinition) -> Value {
    let mut m = vec![
        (text("name"), text(&d.name)),
        (text("maxSize"), int(d.max_size)),
        (text("streamSegmentSize"), int(d.segment_size)),
    ];
    if let Some(ttl) = d.time_to_live_millis {
        m.push((text("timeToLiveMillis"), int(ttl)));
    }
    m.push((text("strategyOnFull"), int(d.strategy_on_full as u8)));
    m.push((text("persistence"), int(d.persistence as u8)));
    m.push((text("flushOnWrite"), Value::Bool(d.flush_on_write)));
    if !d.exports.is_empty() {
        let mut kinds = Vec::new();
        for (kind, key) in ExportKind::ALL {
            let configs: Vec<Value> = d
                .exports
                .iter()
                .filter(|c| c.kind == kind)
                .map(export_value)
                .collect();
            if !configs.is_empty() {
                kinds.push((text(key), Value::Array(configs)));
            }
        }
        m.push((text("exportDefinition"), Value::Map(kinds)));
    }
    Value::Map(m)
}

fn export_value(c: &ExportConfig) -> Value {
    let mut m = vec![(text("identifier"), text(&c.identifier))];
    let opt = |m: &mut Map, k: &str, v: Option<u64>| {
        if let Some(v) = v {
            m.push((text(k), int(v)));
        }
    };
    opt(&mut m, "priority", c.priority);
    opt(&mut m, "batchSize", c.batch_size);
    opt(&mut m, "batchIntervalMillis", c.batch_interval_millis);
    opt(&mut m, "startSequenceNumber", c.start_sequence_number);
    m.push((text("disabled"), Value::Bool(c.disabled)));
    for (k, v) in &c.settings {
        m.push((text(k), json_to_cbor(v)));
    }
    Value::Map(m)
}

pub(crate) fn stream_info_value(info: &crate::store::StreamInfo) -> Value {
    let statuses = info
        .export_checkpoints
        .iter()
        .map(|c: &ExportCheckpoint| {
            let mut m = vec![
                (text("exportConfigIdentifier"), text(&c.identifier)),
                (
                    text("lastExportedSequenceNumber"),
                    int(c.last_exported_sequence_number),
                ),
                (text("lastExportTime"), int(c.last_export_time)),
            ];
            if let Some(e) = &c.error_message {
                m.push((text("errorMessage"), text(e)));
            }
            m.push((
                text("exportedBytesFromStream"),
                int(c.exported_bytes_from_stream),
            ));
            m.push((
                text("exportedMessagesCount"),
                int(c.exported_messages_count),
            ));
            Value::Map(m)
        })
        .collect();
    Value::Map(vec![
        (text("definition"), definition_value(&info.definition)),
        (
            text("storageStatus"),
            Value::Map(vec![
                (
                    text("oldestSequenceNumber"),
                    int(info.oldest_sequence_number),
                ),
                (
                    text("newestSequenceNumber"),
                    int(info.newest_sequence_number),
                ),
                (text("totalBytes"), int(info.total_bytes)),
            ]),
        ),
        (text("exportStatuses"), Value::Array(statuses)),
    ])
}

pub(crate) fn string_list(items: Vec<String>) -> Value {
    Value::Array(items.into_iter().map(Value::Text).collect())
}

/// Best effort: the request id of a payload that is otherwise not understood.
pub(crate) fn peek_request_id(payload: &[u8]) -> Option<String> {
    match ciborium::from_reader::<Value, _>(payload).ok()? {
        Value::Map(m) => get(&m, "requestId")
            .and_then(|v| v.as_text())
            .map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cbor(v: Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let a = encode_frame(op::APPEND, b"hello");
        let b = encode_frame(op::LIST, b"");
        let all = [a.clone(), b.clone()].concat();
        for cut in 0..=all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(f) = decode_frame(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(f) = decode_frame(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(
                got,
                vec![
                    Frame {
                        op: op::APPEND,
                        payload: b"hello".to_vec()
                    },
                    Frame {
                        op: op::LIST,
                        payload: vec![]
                    }
                ]
            );
        }
    }

    #[test]
    fn bad_lengths_are_refused() {
        for len in [0i32, -1, (MAX_FRAME_LEN as i32) + 1, i32::MIN] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            assert!(decode_frame(&mut buf).is_err());
        }
    }

    #[test]
    fn decodes_a_definition_as_the_sdk_sends_it() {
        let payload = cbor(Value::Map(vec![
            (text("requestId"), text("r1")),
            (
                text("definition"),
                Value::Map(vec![
                    (text("name"), text("s")),
                    (text("maxSize"), int(2048u64)),
                    (text("streamSegmentSize"), int(1024u64)),
                    (text("strategyOnFull"), int(1u8)),
                    (text("persistence"), int(1u8)),
                    (text("flushOnWrite"), Value::Bool(true)),
                    (
                        text("exportDefinition"),
                        Value::Map(vec![(
                            text("kinesis"),
                            Value::Array(vec![Value::Map(vec![
                                (text("identifier"), text("k1")),
                                (text("kinesisStreamName"), text("ks")),
                                (text("batchSize"), int(10u8)),
                            ])]),
                        )]),
                    ),
                ]),
            ),
        ]));
        let Request::Create {
            request_id,
            definition,
        } = decode_request(op::CREATE, &payload).unwrap()
        else {
            panic!("not a create")
        };
        assert_eq!(request_id, "r1");
        assert_eq!(definition.max_size, 2048);
        assert_eq!(
            definition.strategy_on_full,
            StrategyOnFull::OverwriteOldestData
        );
        assert_eq!(definition.persistence, Persistence::Memory);
        assert!(definition.flush_on_write);
        assert_eq!(definition.exports[0].settings["kinesisStreamName"], "ks");
        assert_eq!(definition.exports[0].batch_size, Some(10));
        // And back: the describe form decodes to the same definition.
        let back = cbor(Value::Map(vec![
            (text("requestId"), text("r2")),
            (text("definition"), definition_value(&definition)),
        ]));
        let Request::Update {
            definition: again, ..
        } = decode_request(op::UPDATE, &back).unwrap()
        else {
            panic!("not an update")
        };
        assert_eq!(again, definition);
    }

    #[test]
    fn read_defaults() {
        let p = cbor(Value::Map(vec![
            (text("requestId"), text("r")),
            (text("streamName"), text("s")),
        ]));
        let Request::Read { options, .. } = decode_request(op::READ, &p).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                options.desired_start,
                options.min_count,
                options.max_count,
                options.timeout_millis
            ),
            (0, 1, 1, 0)
        );
        let p = cbor(Value::Map(vec![
            (text("requestId"), text("r")),
            (text("streamName"), text("s")),
            (
                text("readMessagesOptions"),
                Value::Map(vec![(text("minMessageCount"), int(5u8))]),
            ),
        ]));
        let Request::Read { options, .. } = decode_request(op::READ, &p).unwrap() else {
            panic!()
        };
        assert_eq!((options.min_count, options.max_count), (5, 5));
    }

    #[test]
    fn errors_keep_the_request_id_when_there_is_one() {
        let p = cbor(Value::Map(vec![
            (text("requestId"), text("r9")),
            (text("name"), int(3u8)),
        ]));
        let e = decode_request(op::DELETE, &p).unwrap_err();
        assert_eq!(e.request_id.as_deref(), Some("r9"));
        assert!(e.message.contains("name"), "{e}");
        let e = decode_request(op::DELETE, &cbor(Value::Map(vec![]))).unwrap_err();
        assert_eq!(e.request_id, None);
        assert!(decode_request(op::DELETE, b"\xff\x00").is_err());
    }

    #[test]
    fn indefinite_length_maps_and_strings_are_accepted() {
        // {_ "requestId": "r", "name": (_ "a", "b"), "payload": (_ h'01', h'02')} as Jackson emits.
        let mut p = vec![0xbf, 0x69];
        p.extend_from_slice(b"requestId");
        p.extend_from_slice(&[0x61, b'r', 0x64]);
        p.extend_from_slice(b"name");
        p.extend_from_slice(&[0x7f, 0x61, b'a', 0x61, b'b', 0xff, 0x67]);
        p.extend_from_slice(b"payload");
        p.extend_from_slice(&[0x5f, 0x41, 0x01, 0x41, 0x02, 0xff, 0xff]);
        assert_eq!(
            decode_request(op::APPEND, &p).unwrap(),
            Request::Append {
                request_id: "r".into(),
                name: "ab".into(),
                payload: vec![1, 2]
            }
        );
    }

    #[test]
    fn huge_announced_lengths_do_not_allocate() {
        // A byte string, an array and a map each claiming 2^62 items, with nothing after.
        for head in [&[0x5b][..], &[0x9b], &[0xbb]] {
            let mut p = vec![0xa2, 0x69];
            p.extend_from_slice(b"requestId");
            p.extend_from_slice(&[0x61, b'r', 0x67]);
            p.extend_from_slice(b"payload");
            p.extend_from_slice(head);
            p.extend_from_slice(&(1u64 << 62).to_be_bytes());
            assert!(decode_request(op::APPEND, &p).is_err());
        }
        let mut buf = BytesMut::from(&((MAX_FRAME_LEN as i32).to_be_bytes())[..]);
        assert_eq!(decode_frame(&mut buf), Ok(None));
        assert!(buf.capacity() <= 2 * READ_CHUNK);
    }

    proptest! {
        #[test]
        fn frame_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut consumed = 0;
            while let Ok(Some(f)) = decode_frame(&mut buf) {
                consumed += 5 + f.payload.len();
            }
            prop_assert!(consumed <= bytes.len());
        }

        #[test]
        fn request_decoder_never_panics(op in 0u8..20, bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(op, &bytes);
            let _ = peek_request_id(&bytes);
        }

        #[test]
        fn append_round_trips(id in "[a-z0-9-]{1,36}", name in "[A-Za-z0-9 ,._-]{1,40}", payload in prop::collection::vec(any::<u8>(), 1..300)) {
            let p = cbor(Value::Map(vec![
                (text("requestId"), text(&id)),
                (text("name"), text(&name)),
                (text("payload"), Value::Bytes(payload.clone())),
            ]));
            let frame = encode_frame(op::APPEND, &p);
            let mut buf = BytesMut::from(&frame[..]);
            let f = decode_frame(&mut buf).unwrap().unwrap();
            prop_assert_eq!(f.op, op::APPEND);
            prop_assert_eq!(
                decode_request(f.op, &f.payload).unwrap(),
                Request::Append { request_id: id, name, payload }
            );
        }
    }
}
