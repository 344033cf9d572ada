//! The Modbus TCP source: polls registers and coils with tokio-modbus, decodes and scales them,
//! applies deadbands, and reconnects with backoff. While the device is unreachable or a read
//! fails, each failed poll yields a `Quality::Bad` sample (value `None`) per point.

pub mod decode;

use crate::sample::{Quality, Sample, SampleSender, Value};
use decode::{DataType, Deadband, DeadbandState, WordOrder};
use serde::Deserialize;
use std::time::Duration;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModbusSourceConfig {
    pub name: String,
    pub endpoint: ModbusEndpoint,
    /// Prepended to every point's alias (SiteWise Edge's `measurementDataStreamPrefix`).
    #[serde(default)]
    pub measurement_data_stream_prefix: String,
    /// Default poll interval of the points.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    #[serde(default)]
    pub reconnect: Reconnect,
    #[serde(alias = "registers")]
    pub points: Vec<PointConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModbusEndpoint {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_unit")]
    pub unit_id: u8,
    /// Connect and per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reconnect {
    #[serde(default = "default_initial_delay")]
    pub initial_delay_ms: u64,
    #[serde(default = "default_max_delay")]
    pub max_delay_ms: u64,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay_ms: default_initial_delay(),
            max_delay_ms: default_max_delay(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    Holding,
    Input,
    Coil,
    Discrete,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PointConfig {
    pub alias: String,
    pub kind: RegisterKind,
    /// Zero-based register or coil address.
    pub address: u16,
    /// Registers to read; defaults to the data type's width (strings must give it).
    #[serde(default)]
    pub count: Option<u16>,
    #[serde(default)]
    pub data_type: Option<DataType>,
    #[serde(default)]
    pub word_order: WordOrder,
    /// A boolean from one bit (0-15) of a register.
    #[serde(default)]
    pub bit: Option<u8>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// A bare number is an ABSOLUTE band.
    #[serde(default, deserialize_with = "deadband")]
    pub deadband: Option<Deadband>,
}

fn deadband<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Deadband>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Num(f64),
        Full(Deadband),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::Num(value)) => Some(Deadband {
            kind: decode::DeadbandKind::Absolute,
            value,
            egu_min: None,
            egu_max: None,
            timeout_milliseconds: None,
        }),
        Some(Either::Full(db)) => Some(db),
    })
}

fn default_poll() -> u64 {
    1000
}
fn default_port() -> u16 {
    502
}
fn default_unit() -> u8 {
    1
}
fn default_timeout() -> u64 {
    3000
}
fn default_initial_delay() -> u64 {
    500
}
fn default_max_delay() -> u64 {
    30_000
}

impl PointConfig {
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(match self.kind {
            RegisterKind::Coil | RegisterKind::Discrete => DataType::Boolean,
            _ => DataType::Uint16,
        })
    }

    fn count(&self) -> u16 {
        self.count.or(self.data_type().registers()).unwrap_or(1)
    }
}

impl ModbusSourceConfig {
    /// Checks what serde cannot; the error is (field path, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.name.is_empty() {
            return Err(("name".into(), "must not be empty".into()));
        }
        if self.poll_interval_ms == 0 {
            return Err(("pollIntervalMs".into(), "must be at least 1".into()));
        }
        for (i, p) in self.points.iter().enumerate() {
            let f = |k: &str| format!("points[{i}].{k}");
            if p.alias.is_empty() {
                return Err((f("alias"), "must not be empty".into()));
            }
            let dt = p.data_type();
            let is_bit = matches!(p.kind, RegisterKind::Coil | RegisterKind::Discrete);
            if is_bit && dt != DataType::Boolean {
                return Err((
                    f("dataType"),
                    "coils and discrete inputs are boolean".into(),
                ));
            }
            match (dt.registers(), p.count) {
                (None, None) => {
                    return Err((f("count"), "a string needs its register count".into()));
                }
                (Some(n), Some(c)) if c != n && !is_bit => {
                    return Err((f("count"), format!("{dt:?} spans {n} registers, not {c}")));
                }
                _ => {}
            }
            if p.count == Some(0) || p.count.is_some_and(|c| c > 125) {
                return Err((f("count"), "must be 1-125".into()));
            }
            if p.bit.is_some_and(|b| b > 15) {
                return Err((f("bit"), "must be 0-15".into()));
            }
            if p.poll_interval_ms == Some(0) {
                return Err((f("pollIntervalMs"), "must be at least 1".into()));
            }
            if let Some(db) = &p.deadband {
                db.width().map_err(|r| (f("deadband"), r))?;
            }
        }
        Ok(())
    }

    /// The alias a point's samples carry.
    pub fn alias(&self, p: &PointConfig) -> String {
        format!("{}{}", self.measurement_data_stream_prefix, p.alias)
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Why one read produced no value.
enum ReadError {
    /// The connection is unusable (I/O, timeout, protocol): reconnect.
    Link(String),
    /// The device answered with a Modbus exception: this point only.
    Exception(String),
}

/// Reads `count` registers (or bits, as 0/1 words) of `kind` from `start`.
async fn read_block(
    ctx: &mut Context,
    kind: RegisterKind,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<Vec<u16>, ReadError> {
    let words = async {
        Ok::<_, tokio_modbus::Error>(match kind {
            RegisterKind::Holding => ctx.read_holding_registers(start, count).await?,
            RegisterKind::Input => ctx.read_input_registers(start, count).await?,
            RegisterKind::Coil => ctx
                .read_coils(start, count)
                .await?
                .map(|b| b.into_iter().map(u16::from).collect()),
            RegisterKind::Discrete => ctx
                .read_discrete_inputs(start, count)
                .await?
                .map(|b| b.into_iter().map(u16::from).collect()),
        })
    };
    match tokio::time::timeout(timeout, words).await {
        Err(_) => Err(ReadError::Link(format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => Err(ReadError::Link(e.to_string())),
        Ok(Ok(Err(code))) => Err(ReadError::Exception(format!("exception {code}"))),
        Ok(Ok(Ok(w))) => Ok(w),
    }
}

/// Decodes and scales one point from the words of the block that holds it.
fn point_value(p: &PointConfig, block_start: u16, words: &[u16]) -> Result<Value, ReadError> {
    let from = (p.address - block_start) as usize;
    let slice = words.get(from..from + p.count() as usize).ok_or_else(|| {
        ReadError::Exception("the device returned fewer values than asked".into())
    })?;
    let raw = decode::decode_registers(slice, p.data_type(), p.word_order, p.bit)
        .map_err(ReadError::Exception)?;
    Ok(decode::scale(raw, p.scale, p.offset))
}

/// Most registers (and bits) one Modbus read may ask for.
const MAX_REGISTERS: u32 = 125;
const MAX_BITS: u32 = 2000;

/// One request serving several points: same kind and poll interval, contiguous or
/// overlapping addresses (gaps are never read: devices may refuse unmapped addresses).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadBlock {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    pub interval_ms: u64,
    /// Indices into the source's points.
    pub members: Vec<usize>,
}

/// Groups points into as few reads as the protocol's limits allow.
pub fn plan_reads(points: &[PointConfig], default_interval_ms: u64) -> Vec<ReadBlock> {
    let interval = |p: &PointConfig| p.poll_interval_ms.unwrap_or(default_interval_ms);
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| {
        let p = &points[i];
        (p.kind as u8, interval(p), p.address)
    });
    let mut blocks: Vec<ReadBlock> = vec![];
    for i in order {
        let p = &points[i];
        let (start, end) = (p.address as u32, p.address as u32 + p.count() as u32);
        let limit = match p.kind {
            RegisterKind::Coil | RegisterKind::Discrete => MAX_BITS,
            _ => MAX_REGISTERS,
        };
        if let Some(b) = blocks.last_mut()
            && b.kind == p.kind
            && b.interval_ms == interval(p)
            && start <= b.start as u32 + b.count as u32
            && end.max(b.start as u32 + b.count as u32) - b.start as u32 <= limit
        {
            b.count = (end.max(b.start as u32 + b.count as u32) - b.start as u32) as u16;
            b.members.push(i);
            continue;
        }
        blocks.push(ReadBlock {
            kind: p.kind,
            start: p.address,
            count: p.count(),
            interval_ms: interval(p),
            members: vec![i],
        });
    }
    blocks
}

struct Point {
    config: PointConfig,
    alias: String,
    band: Option<(Deadband, f64)>,
    state: DeadbandState,
}

struct Block {
    plan: ReadBlock,
    interval: Duration,
    due: Instant,
}

/// Runs one Modbus TCP source until `shutdown`. Samples go to `out`; the source returns when
/// `out` is closed.
pub async fn run_modbus_source(
    config: ModbusSourceConfig,
    out: SampleSender,
    shutdown: CancellationToken,
) {
    let source = config.name.clone();
    let ep = config.endpoint.clone();
    let timeout = Duration::from_millis(ep.timeout_ms.max(1));
    let start = Instant::now();
    let mut points: Vec<Point> = config
        .points
        .iter()
        .map(|p| Point {
            alias: config.alias(p),
            band: p.deadband.clone().map(|d| {
                let w = d.width().unwrap_or(0.0);
                (d, w)
            }),
            state: DeadbandState::default(),
            config: p.clone(),
        })
        .collect();
    let mut blocks: Vec<Block> = plan_reads(&config.points, config.poll_interval_ms)
        .into_iter()
        .map(|plan| Block {
            interval: Duration::from_millis(plan.interval_ms.max(1)),
            due: start,
            plan,
        })
        .collect();
    if points.is_empty() {
        tracing::warn!(source, "Modbus source has no points; nothing to poll");
        shutdown.cancelled().await;
        return;
    }
    let mut ctx: Option<Context> = None;
    let mut backoff = Duration::from_millis(config.reconnect.initial_delay_ms.max(1));
    let max_backoff = Duration::from_millis(config.reconnect.max_delay_ms.max(1));
    let mut next_connect = start;
    let mut reported_down = false;
    loop {
        let next_due = blocks.iter().map(|b| b.due).min().expect("points");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next_due) => {}
        }
        let now = Instant::now();
        if ctx.is_none() && now >= next_connect {
            let addr = format!("{}:{}", ep.host, ep.port);
            let attempt = async {
                let sa = tokio::net::lookup_host(&addr)
                    .await?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))?;
                tokio_modbus::client::tcp::connect_slave(sa, tokio_modbus::Slave(ep.unit_id)).await
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(c)) => {
                    tracing::info!(source, endpoint = %addr, "Modbus device connected");
                    ctx = Some(c);
                    backoff = Duration::from_millis(config.reconnect.initial_delay_ms.max(1));
                    reported_down = false;
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no connection within {timeout:?}"),
                    };
                    if !reported_down {
                        tracing::warn!(source, endpoint = %addr, error = %why, "Modbus device unreachable; reporting Bad quality until it is back");
                        reported_down = true;
                    }
                    next_connect = Instant::now() + backoff;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
        for b in blocks.iter_mut().filter(|b| b.due <= now) {
            // Next poll on the grid; a late loop skips missed slots rather than bursting.
            while b.due <= now {
                b.due += b.interval;
            }
            let ts = now_ns();
            let plan = &b.plan;
            let words = match ctx.as_mut() {
                Some(c) => read_block(c, plan.kind, plan.start, plan.count, timeout).await,
                None => Err(ReadError::Link("not connected".into())),
            };
            if let Err(ReadError::Link(why)) = &words
                && ctx.take().is_some()
            {
                tracing::warn!(source, error = %why, "Modbus connection lost; reconnecting");
                next_connect = Instant::now() + backoff;
                reported_down = true;
            }
            for &i in &plan.members {
                let p = &mut points[i];
                let value = match &words {
                    Ok(w) => point_value(&p.config, plan.start, w),
                    Err(ReadError::Link(why)) => Err(ReadError::Link(why.clone())),
                    Err(ReadError::Exception(why)) => Err(ReadError::Exception(why.clone())),
                };
                let sample = match value {
                    Ok(v) => {
                        if !p.state.admit(p.band.as_ref().map(|(d, w)| (d, *w)), &v, ts) {
                            continue;
                        }
                        Sample {
                            alias: p.alias.clone(),
                            value: Some(v),
                            quality: Quality::Good,
                            timestamp_ns: ts,
                        }
                    }
                    Err(e) => {
                        if let ReadError::Exception(why) = e {
                            tracing::debug!(source, alias = p.alias, error = %why, "Modbus read failed");
                        }
                        p.state.reset();
                        Sample {
                            alias: p.alias.clone(),
                            value: None,
                            quality: Quality::Bad,
                            timestamp_ns: ts,
                        }
                    }
                };
                if out.send(sample).await.is_err() {
                    return;
                }
            }
        }
    }
    if let Some(mut c) = ctx {
        let _ = tokio_modbus::client::Client::disconnect(&mut c).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_points_of_one_kind_and_interval_share_a_read() {
        let points: Vec<PointConfig> = serde_json::from_value(serde_json::json!([
            {"alias": "a", "kind": "holding", "address": 0, "dataType": "float32"},
            {"alias": "b", "kind": "holding", "address": 2},
            {"alias": "c", "kind": "holding", "address": 4, "pollIntervalMs": 50},
            {"alias": "d", "kind": "holding", "address": 10},
            {"alias": "e", "kind": "input", "address": 3},
            {"alias": "f", "kind": "holding", "address": 1},
            {"alias": "g", "kind": "holding", "address": 100, "dataType": "float64"},
            {"alias": "h", "kind": "holding", "address": 104, "count": 30, "dataType": "string"},
            {"alias": "i", "kind": "coil", "address": 7}
        ]))
        .unwrap();
        let plan = plan_reads(&points, 1000);
        let summary: Vec<(RegisterKind, u16, u16, u64, Vec<usize>)> = plan
            .into_iter()
            .map(|b| (b.kind, b.start, b.count, b.interval_ms, b.members))
            .collect();
        use RegisterKind::*;
        assert_eq!(
            summary,
            [
                (Holding, 4, 1, 50, vec![2]),
                // a (0-1), f (1, overlapping), b (2): one read of three registers.
                (Holding, 0, 3, 1000, vec![0, 5, 1]),
                (Holding, 10, 1, 1000, vec![3]),
                // 100..134 is 34 registers: within the 125 limit.
                (Holding, 100, 34, 1000, vec![6, 7]),
                (Input, 3, 1, 1000, vec![4]),
                (Coil, 7, 1, 1000, vec![8]),
            ]
        );
        let words = [0x41ac, 0x0000, 7];
        assert!(matches!(point_value(&points[0], 0, &words), Ok(Value::Double(v)) if v == 21.5));
        assert!(matches!(
            point_value(&points[1], 0, &words),
            Ok(Value::Integer(7))
        ));
        assert!(point_value(&points[1], 0, &words[..2]).is_err());
    }

    #[test]
    fn configuration_checks_name_the_field() {
        let parse = |v: serde_json::Value| -> Result<(), (String, String)> {
            serde_json::from_value::<ModbusSourceConfig>(v)
                .unwrap()
                .validate()
        };
        let ok = serde_json::json!({"name": "plc", "endpoint": {"host": "h"}, "registers": [
            {"alias": "/a", "kind": "holding", "address": 0, "dataType": "float32", "deadband": 0.5},
            {"alias": "/b", "kind": "coil", "address": 3}]});
        assert!(parse(ok).is_ok());
        let bad = serde_json::json!({"name": "plc", "endpoint": {"host": "h"}, "points": [
            {"alias": "/a", "kind": "holding", "address": 0, "dataType": "float32", "count": 1}]});
        assert_eq!(parse(bad).unwrap_err().0, "points[0].count");
        let s = serde_json::json!({"name": "plc", "endpoint": {"host": "h"}, "points": [
            {"alias": "/s", "kind": "input", "address": 0, "dataType": "string"}]});
        assert!(parse(s).unwrap_err().1.contains("register count"));
        let coil = serde_json::json!({"name": "plc", "endpoint": {"host": "h"}, "points": [
            {"alias": "/c", "kind": "coil", "address": 0, "dataType": "int16"}]});
        assert_eq!(parse(coil).unwrap_err().0, "points[0].dataType");
    }
}
