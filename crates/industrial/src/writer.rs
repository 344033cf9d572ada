//! Samples into a stream: each record is one SiteWise `PutAssetPropertyValueEntry` in the JSON
//! the stream manager's IoT SiteWise exporter sends (values of one alias grouped, at most 10 per
//! entry), appended in batches to the in-process stream store. With flushOnWrite a batch is on
//! disk before the next one is taken.

use crate::config::DestinationConfig;
use crate::modbus::decode::DataType;
use crate::sample::{Quality, Sample, Value};
use lichen_streams::export::{ExportConfig, ExportKind};
use lichen_streams::{Persistence, Store, StoreError, Stream, StreamDefinition};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The core's stream store while the stream manager runs (None otherwise). Writers hold the
/// read lock for the length of one append, so the stream manager is never stopped (and its
/// store never reopened) under an append.
pub type StoreSlot = Arc<tokio::sync::RwLock<Option<Arc<Store>>>>;

/// SiteWise's limit of values per entry.
const VALUES_PER_ENTRY: usize = 10;
/// SiteWise refuses doubles outside ±10^10.
const DOUBLE_LIMIT: f64 = 1e10;

/// Counters of what the writer did, for logs and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub samples: AtomicU64,
    pub records: AtomicU64,
    pub rejected: AtomicU64,
}

/// Encodes a batch into entries: the samples of each alias, in arrival order, grouped by up
/// to ten. `null_types` gives the SiteWise null-value type of an alias whose Bad samples have
/// no value (`D` when unknown).
pub fn encode_entries(
    batch: &[Sample],
    null_types: &HashMap<String, &'static str>,
    next_id: &mut dyn FnMut() -> String,
) -> Vec<Vec<u8>> {
    let mut order: Vec<&str> = vec![];
    let mut groups: HashMap<&str, Vec<&Sample>> = HashMap::new();
    for s in batch {
        let g = groups.entry(s.alias.as_str()).or_insert_with(|| {
            order.push(s.alias.as_str());
            vec![]
        });
        g.push(s);
    }
    let mut out = vec![];
    for alias in order {
        for chunk in groups[alias].chunks(VALUES_PER_ENTRY) {
            let values: Vec<serde_json::Value> = chunk
                .iter()
                .map(|s| property_value(s, null_types.get(alias).copied().unwrap_or("D")))
                .collect();
            let entry = json!({
                "entryId": next_id(),
                "propertyAlias": alias,
                "propertyValues": values,
            });
            out.push(serde_json::to_vec(&entry).expect("JSON of plain values"));
        }
    }
    out
}

fn property_value(s: &Sample, null_type: &str) -> serde_json::Value {
    let ts = s.timestamp_ns.max(0);
    let variant = match &s.value {
        Some(Value::Double(d)) if d.is_finite() && d.abs() <= DOUBLE_LIMIT => {
            Some(json!({"doubleValue": d}))
        }
        Some(Value::Integer(i)) if i32::try_from(*i).is_ok() => Some(json!({"integerValue": i})),
        // SiteWise integers are 32-bit: wider ones go as doubles.
        Some(Value::Integer(i)) if (*i as f64).abs() <= DOUBLE_LIMIT => {
            Some(json!({"doubleValue": *i as f64}))
        }
        Some(Value::String(t)) => {
            Some(json!({"stringValue": t.chars().take(1024).collect::<String>()}))
        }
        Some(Value::Boolean(b)) => Some(json!({"booleanValue": b})),
        _ => None,
    };
    // A value SiteWise cannot take (NaN, out of range) goes as a BAD null rather than
    // blocking the export with a request it would refuse.
    let (value, quality) = match variant {
        Some(v) => (v, s.quality),
        None => {
            let t = match &s.value {
                Some(Value::Integer(_) | Value::Double(_)) => "D",
                _ => null_type,
            };
            let q = if s.quality == Quality::Good {
                Quality::Bad
            } else {
                s.quality
            };
            (json!({"nullValue": {"valueType": t}}), q)
        }
    };
    json!({
        "value": value,
        "timestamp": {"timeInSeconds": ts / 1_000_000_000, "offsetInNanos": ts % 1_000_000_000},
        "quality": match quality {
            Quality::Good => "GOOD",
            Quality::Bad => "BAD",
            Quality::Uncertain => "UNCERTAIN",
        },
    })
}

/// The definition of the stream the collector creates when it is missing.
pub fn stream_definition(d: &DestinationConfig) -> StreamDefinition {
    let mut def = StreamDefinition::new(d.stream_name.clone(), d.strategy_on_full);
    def.persistence = Persistence::File;
    def.flush_on_write = d.flush_on_write;
    if let Some(m) = d.max_size {
        def.max_size = m;
    }
    if d.export_to_sitewise {
        def.exports.push(ExportConfig {
            kind: ExportKind::IotSitewise,
            identifier: d.export_identifier.clone(),
            priority: None,
            disabled: false,
            batch_size: d.export_batch_size,
            batch_interval_millis: d.export_batch_interval_millis,
            start_sequence_number: None,
            settings: Default::default(),
        });
    }
    def
}

/// Appends entries to the destination stream through the store in `slot`.
pub struct Writer {
    pub slot: StoreSlot,
    pub destination: DestinationConfig,
    pub null_types: HashMap<String, &'static str>,
    pub stats: Arc<WriterStats>,
    id_prefix: String,
    counter: u64,
    /// The stream and the store it belongs to (a restarted stream manager has a new store).
    stream: Option<(Arc<Store>, Arc<Stream>)>,
    waiting_logged: bool,
    /// The stream's oldest sequence number after the last batch, and when overwriting was last
    /// logged: a full OverwriteOldestData stream is reported, at most once a minute.
    oldest: u64,
    overwrite_logged: Option<std::time::Instant>,
}

/// What became of one batch.
#[derive(Debug)]
pub enum Outcome {
    /// Appended (and durable with flushOnWrite).
    Written,
    /// The stream manager is not running, or the stream is missing: try again later.
    NotReady(String),
    /// Refused for good (stream full with RejectNewData, …): the samples are dropped.
    Dropped(String),
}

impl Writer {
    pub fn new(
        slot: StoreSlot,
        destination: DestinationConfig,
        null_types: HashMap<String, DataType>,
    ) -> Writer {
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let start = crate::modbus::now_ns() / 1_000_000;
        Writer {
            slot,
            destination,
            null_types: null_types
                .into_iter()
                .map(|(a, t)| (a, t.null_type()))
                .collect(),
            stats: Arc::default(),
            id_prefix: format!("{start:x}-{}", INSTANCE.fetch_add(1, Ordering::Relaxed)),
            counter: 0,
            stream: None,
            waiting_logged: false,
            oldest: 0,
            overwrite_logged: None,
        }
    }

    /// Appends one batch. On `NotReady` the caller keeps the batch and retries.
    pub async fn write(&mut self, batch: &[Sample]) -> Outcome {
        if batch.is_empty() {
            return Outcome::Written;
        }
        // Aliases found at run time (OPC UA) take the type of their last GOOD value for BAD nulls.
        for smp in batch {
            let t = match &smp.value {
                Some(Value::String(_)) => "S",
                Some(Value::Boolean(_)) => "B",
                Some(_) => "D",
                None => continue,
            };
            if self.null_types.get(smp.alias.as_str()) != Some(&t) {
                self.null_types.insert(smp.alias.clone(), t);
            }
        }
        let (prefix, counter) = (&self.id_prefix, &mut self.counter);
        let records = encode_entries(batch, &self.null_types, &mut || {
            *counter += 1;
            format!("{prefix}-{counter:x}")
        });
        let guard = self.slot.clone().read_owned().await;
        let Some(store) = guard.as_ref().cloned() else {
            if !self.waiting_logged {
                tracing::warn!(
                    stream = self.destination.stream_name,
                    "the stream manager (aws.greengrass.StreamManager) is not running; samples wait for it"
                );
                self.waiting_logged = true;
            }
            return Outcome::NotReady("the stream manager is not running".into());
        };
        let stream = match &self.stream {
            Some((s, st)) if Arc::ptr_eq(s, &store) => st.clone(),
            _ => match self.open(&store) {
                Ok(st) => {
                    self.stream = Some((store.clone(), st.clone()));
                    st
                }
                Err(why) => {
                    if !self.waiting_logged {
                        tracing::warn!(
                            stream = self.destination.stream_name,
                            reason = why,
                            "destination stream unavailable; samples wait for it"
                        );
                        self.waiting_logged = true;
                    }
                    return Outcome::NotReady(why);
                }
            },
        };
        self.waiting_logged = false;
        let name = self.destination.stream_name.clone();
        let n = batch.len() as u64;
        let result = tokio::task::spawn_blocking(move || {
            let _held = guard;
            let mut last = None;
            let mut written = 0u64;
            let mut error = None;
            for r in &records {
                match stream.append(r) {
                    Ok(a) => {
                        written += 1;
                        if a.needs_sync {
                            last = Some(a.sequence_number);
                        }
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            let synced = match last {
                Some(seq) => stream.wait_durable(seq),
                None => Ok(()),
            };
            let info = stream.info();
            (written, records.len() as u64, error, synced, info)
        })
        .await;
        let Ok((written, total, error, synced, info)) = result else {
            return Outcome::Dropped("the append task failed".into());
        };
        let def = &info.definition;
        let overwrote = info.oldest_sequence_number > self.oldest
            && def.strategy_on_full == lichen_streams::StrategyOnFull::OverwriteOldestData
            // With a TTL, expiry also drops old records: not a sign of a full stream.
            && def.time_to_live_millis.is_none();
        if overwrote
            && self
                .overwrite_logged
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60))
        {
            tracing::warn!(
                stream = name,
                max_size = def.max_size,
                oldest = info.oldest_sequence_number,
                "stream full: its oldest records are overwritten (OverwriteOldestData); export them faster or raise maxSize"
            );
            self.overwrite_logged = Some(std::time::Instant::now());
        }
        self.oldest = info.oldest_sequence_number;
        self.stats.records.fetch_add(written, Ordering::Relaxed);
        if let Err(e) = synced {
            tracing::error!(stream = name, error = %e, "appended samples could not be made durable");
        }
        match error {
            None => {
                self.stats.samples.fetch_add(n, Ordering::Relaxed);
                Outcome::Written
            }
            Some(e @ StoreError::NotFound(_)) => {
                self.stream = None;
                Outcome::NotReady(e.to_string())
            }
            Some(e) => {
                let dropped = total - written;
                self.stats.rejected.fetch_add(dropped, Ordering::Relaxed);
                tracing::warn!(stream = name, error = %e, entries = dropped, "samples dropped by the stream");
                Outcome::Dropped(e.to_string())
            }
        }
    }

    fn open(&self, store: &Store) -> Result<Arc<Stream>, String> {
        match store.get(&self.destination.stream_name) {
            Ok(s) => Ok(s),
            Err(StoreError::NotFound(_)) if self.destination.create_stream => {
                match store.create(stream_definition(&self.destination)) {
                    Ok(s) => {
                        tracing::info!(
                            stream = self.destination.stream_name,
                            "destination stream created"
                        );
                        Ok(s)
                    }
                    Err(StoreError::AlreadyExists(_)) => store
                        .get(&self.destination.stream_name)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(alias: &str, value: Option<Value>, q: Quality, ts: i64) -> Sample {
        Sample {
            alias: alias.into(),
            value,
            quality: q,
            timestamp_ns: ts,
        }
    }

    #[test]
    fn entries_group_an_alias_by_ten_in_the_exporter_json() {
        let mut batch: Vec<Sample> = (0..12)
            .map(|i| {
                s(
                    "/a",
                    Some(Value::Double(i as f64)),
                    Quality::Good,
                    1_700_000_000_000_000_005 + i,
                )
            })
            .collect();
        batch.insert(3, s("/b", None, Quality::Bad, 2_000_000_000));
        let types = HashMap::from([("/b".to_string(), "B")]);
        let mut n = 0;
        let out = encode_entries(&batch, &types, &mut || {
            n += 1;
            format!("e{n}")
        });
        let v: Vec<serde_json::Value> = out
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap())
            .collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0]["propertyValues"].as_array().unwrap().len(), 10);
        assert_eq!(v[1]["propertyValues"].as_array().unwrap().len(), 2);
        assert_eq!(
            v[0]["propertyValues"][0],
            json!({"value": {"doubleValue": 0.0}, "timestamp": {"timeInSeconds": 1_700_000_000, "offsetInNanos": 5}, "quality": "GOOD"})
        );
        assert_eq!(
            String::from_utf8(out[2].clone()).unwrap(),
            r#"{"entryId":"e3","propertyAlias":"/b","propertyValues":[{"value":{"nullValue":{"valueType":"B"}},"timestamp":{"timeInSeconds":2,"offsetInNanos":0},"quality":"BAD"}]}"#
        );
    }

    #[test]
    fn values_sitewise_refuses_become_bad_nulls() {
        let none = HashMap::new();
        let mut id = || "x".to_string();
        let batch = [
            s("/n", Some(Value::Double(f64::NAN)), Quality::Good, 0),
            s("/i", Some(Value::Integer(1 << 40)), Quality::Good, 0),
            s(
                "/t",
                Some(Value::String("ok".into())),
                Quality::Uncertain,
                0,
            ),
        ];
        let v: Vec<serde_json::Value> = encode_entries(&batch, &none, &mut id)
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap())
            .collect();
        assert_eq!(v[0]["propertyValues"][0]["quality"], "BAD");
        assert_eq!(
            v[0]["propertyValues"][0]["value"],
            json!({"nullValue": {"valueType": "D"}})
        );
        // Wider than 32 bits and beyond SiteWise's double range.
        assert_eq!(
            v[1]["propertyValues"][0]["value"],
            json!({"nullValue": {"valueType": "D"}})
        );
        assert_eq!(
            v[2]["propertyValues"][0]["value"],
            json!({"stringValue": "ok"})
        );
        assert_eq!(v[2]["propertyValues"][0]["quality"], "UNCERTAIN");
    }

    #[tokio::test]
    async fn batches_are_appended_and_the_stream_created_with_its_export() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let slot: StoreSlot = Arc::new(tokio::sync::RwLock::new(None));
        let dest = crate::config::DestinationConfig::default();
        let mut w = Writer::new(slot.clone(), dest, HashMap::new());
        let batch = vec![s("/a", Some(Value::Integer(7)), Quality::Good, 1)];
        assert!(matches!(w.write(&batch).await, Outcome::NotReady(_)));
        *slot.write().await = Some(store.clone());
        assert!(matches!(w.write(&batch).await, Outcome::Written));
        let st = store.get("SiteWise_Edge_Stream").unwrap();
        let info = st.info();
        assert!(info.definition.flush_on_write);
        assert_eq!(info.definition.exports[0].kind, ExportKind::IotSitewise);
        let msgs = st.read(0, 10, 1 << 20).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&msgs[0].payload).unwrap();
        assert_eq!(v["propertyAlias"], "/a");
        assert_eq!(v["propertyValues"][0]["value"], json!({"integerValue": 7}));
    }

    #[tokio::test]
    async fn a_full_reject_stream_drops_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let slot: StoreSlot = Arc::new(tokio::sync::RwLock::new(Some(store.clone())));
        let dest = crate::config::DestinationConfig {
            max_size: Some(1024),
            strategy_on_full: lichen_streams::StrategyOnFull::RejectNewData,
            ..Default::default()
        };
        let mut w = Writer::new(slot, dest, HashMap::new());
        let batch: Vec<Sample> = (0..200)
            .map(|i| s(&format!("/a{i}"), Some(Value::Integer(i)), Quality::Good, 1))
            .collect();
        assert!(matches!(w.write(&batch).await, Outcome::Dropped(e) if e.contains("full")));
        assert!(w.stats.rejected.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn a_full_overwrite_stream_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let slot: StoreSlot = Arc::new(tokio::sync::RwLock::new(Some(store.clone())));
        let dest = crate::config::DestinationConfig {
            max_size: Some(4096),
            ..Default::default()
        };
        let mut w = Writer::new(slot, dest, HashMap::new());
        for round in 0..20 {
            let batch: Vec<Sample> = (0..10)
                .map(|i| {
                    s(
                        &format!("/a{i}"),
                        Some(Value::Integer(round)),
                        Quality::Good,
                        1,
                    )
                })
                .collect();
            assert!(matches!(w.write(&batch).await, Outcome::Written));
        }
        let info = store.get("SiteWise_Edge_Stream").unwrap().info();
        assert!(info.oldest_sequence_number > 0);
        assert!(info.total_bytes <= 4096);
        assert!(w.overwrite_logged.is_some());
    }
}
