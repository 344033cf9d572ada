//! The running collector: its sources, the processing of their samples and the writer, all
//! in one pipeline task per configuration. A new configuration replaces the old pipeline only
//! once it has been checked; a refused one leaves the running one in force.

use crate::config::{CollectorConfig, ConfigError, SourceConfig};
use crate::modbus::{now_ns, run_modbus_source};
use crate::process::Processor;
use crate::sample::Sample;
use crate::writer::{Outcome, StoreSlot, Writer, WriterStats};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Samples in flight between the sources and the pipeline; a stalled store backs sources up.
const CHANNEL: usize = 10_000;
/// How often a batch that cannot be written yet is retried.
const RETRY: Duration = Duration::from_millis(500);

struct Running {
    shutdown: CancellationToken,
    sources: Vec<JoinHandle<()>>,
    pipeline: JoinHandle<()>,
    stats: Arc<WriterStats>,
}

/// The `lichen.IndustrialCollector` service.
pub struct IndustrialCollector {
    slot: StoreSlot,
    work_dir: PathBuf,
    opcua: Option<Arc<dyn crate::OpcUaRunner>>,
    running: tokio::sync::Mutex<Option<Running>>,
}

impl IndustrialCollector {
    /// `slot` is the core's stream store (while the stream manager runs); `work_dir` holds the
    /// collector's own files (the OPC UA PKI directory).
    pub fn new(slot: StoreSlot, work_dir: PathBuf) -> IndustrialCollector {
        IndustrialCollector {
            slot,
            work_dir,
            opcua: None,
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// Where OPC UA sources run: [`crate::OpcUaWorker`] (the core's choice: its own process) or,
    /// with the `opcua` feature, [`crate::opcua::InProcess`]. Without one, OPC UA sources are
    /// refused.
    pub fn with_opcua(mut self, runner: Arc<dyn crate::OpcUaRunner>) -> IndustrialCollector {
        self.opcua = Some(runner);
        self
    }

    /// Starts, reconfigures (`Some`) or stops (`None`) the collector. A configuration that is
    /// refused leaves the running one as it was.
    pub async fn apply(
        &self,
        configuration: Option<&serde_json::Value>,
    ) -> Result<(), ConfigError> {
        let config = configuration
            .map(CollectorConfig::from_component_config)
            .transpose()?;
        let mut running = self.running.lock().await;
        if let Some(old) = running.take() {
            stop(old).await;
        }
        if let Some(config) = config {
            *running = Some(self.start(config)?);
        }
        Ok(())
    }

    /// Samples the writer has appended so far (all configurations of this instance's current
    /// run).
    pub async fn appended_samples(&self) -> u64 {
        let running = self.running.lock().await;
        running
            .as_ref()
            .map(|r| r.stats.samples.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn start(&self, config: CollectorConfig) -> Result<Running, ConfigError> {
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::mpsc::channel::<Sample>(CHANNEL);
        let mut null_types = HashMap::new();
        let mut sources = vec![];
        for (i, source) in config.sources.iter().enumerate() {
            match source {
                SourceConfig::ModbusTcp(m) => {
                    for p in &m.points {
                        null_types.insert(m.alias(p), p.data_type());
                    }
                    sources.push(tokio::spawn(run_modbus_source(
                        m.clone(),
                        tx.clone(),
                        shutdown.child_token(),
                    )));
                }
                SourceConfig::OpcUa(v) => {
                    sources.push(self.start_opcua(i, v, tx.clone(), shutdown.child_token())?);
                }
            }
        }
        drop(tx);
        let processor = config
            .processing
            .compile()
            .map_err(|(f, r)| ConfigError::new(format!("processing.{f}"), r))?;
        let writer = Writer::new(self.slot.clone(), config.destination.clone(), null_types);
        let stats = writer.stats.clone();
        let pipeline = tokio::spawn(pipeline(
            rx,
            processor,
            writer,
            config.batch.clone(),
            shutdown.clone(),
        ));
        tracing::info!(
            sources = config.sources.len(),
            stream = config.destination.stream_name,
            "industrial collector started"
        );
        Ok(Running {
            shutdown,
            sources,
            pipeline,
            stats,
        })
    }

    #[cfg(feature = "opcua")]
    fn start_opcua(
        &self,
        i: usize,
        v: &serde_json::Value,
        tx: crate::sample::SampleSender,
        token: CancellationToken,
    ) -> Result<JoinHandle<()>, ConfigError> {
        // Checked here, so a bad source refuses the configuration before anything starts.
        let config = opcua_config(i, v)?;
        let Some(runner) = &self.opcua else {
            return Err(ConfigError::new(
                format!("sources[{i}].type"),
                "this collector has no OPC UA runner",
            ));
        };
        // Each source keeps its own certificates and trust lists.
        let pki = self
            .work_dir
            .join("opcua-pki")
            .join(safe_dir_name(&config.name));
        Ok(runner.spawn(v.clone(), pki, tx, token))
    }

    #[cfg(not(feature = "opcua"))]
    fn start_opcua(
        &self,
        i: usize,
        _v: &serde_json::Value,
        _tx: crate::sample::SampleSender,
        _token: CancellationToken,
    ) -> Result<JoinHandle<()>, ConfigError> {
        let _ = (&self.work_dir, &self.opcua);
        Err(ConfigError::new(
            format!("sources[{i}].type"),
            "this build has no OPC UA support (cargo feature opcua of lichen-industrial)",
        ))
    }
}

/// Parses and checks one `type: "OpcUa"` source.
#[cfg(feature = "opcua")]
pub(crate) fn opcua_config(
    i: usize,
    v: &serde_json::Value,
) -> Result<crate::opcua::OpcUaSourceConfig, ConfigError> {
    crate::opcua::OpcUaSourceConfig::from_json(v)
        .map_err(|e| ConfigError::new(format!("sources[{i}]"), e.to_string()))
}

#[cfg(feature = "opcua")]
fn safe_dir_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

async fn stop(r: Running) {
    r.shutdown.cancel();
    for s in r.sources {
        let _ = s.await;
    }
    // The pipeline writes what the sources had sent, then ends.
    let _ = r.pipeline.await;
    tracing::info!("industrial collector stopped");
}

/// Receives samples, computes asset properties, and writes batches of both.
async fn pipeline(
    mut rx: tokio::sync::mpsc::Receiver<Sample>,
    mut processor: Processor,
    mut writer: Writer,
    batch_cfg: crate::config::BatchConfig,
    shutdown: CancellationToken,
) {
    let max_delay = Duration::from_millis(batch_cfg.max_delay_ms);
    let mut batch: Vec<Sample> = Vec::with_capacity(batch_cfg.max_samples);
    let mut derived = vec![];
    let mut first_at: Option<tokio::time::Instant> = None;
    let mut open = true;
    loop {
        let flush_at = first_at.map(|t| t + max_delay);
        let window_at = processor.next_deadline().map(|ns| {
            let wait = (ns - now_ns()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_nanos(wait)
        });
        let wake = [flush_at, window_at].into_iter().flatten().min();
        tokio::select! {
            biased;
            got = rx.recv(), if open => match got {
                Some(s) => {
                    processor.on_sample(&s, &mut derived);
                    batch.push(s);
                    batch.append(&mut derived);
                    first_at.get_or_insert_with(tokio::time::Instant::now);
                    if batch.len() < batch_cfg.max_samples {
                        continue;
                    }
                }
                // Every source has stopped (shutdown): write what is left and end.
                None => open = false,
            },
            _ = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                processor.tick(now_ns(), &mut derived);
                batch.append(&mut derived);
                if first_at.is_none() && !batch.is_empty() {
                    first_at = Some(tokio::time::Instant::now());
                }
                if first_at.is_none_or(|t| t + max_delay > tokio::time::Instant::now()) && open {
                    continue;
                }
            }
        }
        if !batch.is_empty() {
            loop {
                match writer.write(&batch).await {
                    Outcome::Written | Outcome::Dropped(_) => break,
                    Outcome::NotReady(_) if shutdown.is_cancelled() => {
                        tracing::warn!(
                            samples = batch.len(),
                            "collector stopped before its last samples could be written"
                        );
                        break;
                    }
                    Outcome::NotReady(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
                }
            }
            batch.clear();
        }
        first_at = None;
        if !open {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_device_is_reported_bad_in_the_stream_per_poll() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(lichen_streams::Store::open(dir.path()).unwrap());
        let slot: StoreSlot = Arc::new(tokio::sync::RwLock::new(Some(store.clone())));
        let collector = IndustrialCollector::new(slot, dir.path().join("work"));
        let config = serde_json::json!({
            "sources": [{"name": "plc", "type": "ModbusTcp",
                "endpoint": {"host": "127.0.0.1", "port": port, "timeoutMs": 200},
                "reconnect": {"initialDelayMs": 20, "maxDelayMs": 100},
                "points": [
                    {"alias": "/a", "kind": "holding", "address": 0, "pollIntervalMs": 30},
                    {"alias": "/b", "kind": "coil", "address": 1, "pollIntervalMs": 30}]}],
            "batch": {"maxDelayMs": 10},
            "destination": {"flushOnWrite": false}
        });
        collector.apply(Some(&config)).await.unwrap();
        let mut bad: HashMap<String, (usize, String)> = HashMap::new();
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let Ok(stream) = store.get("SiteWise_Edge_Stream") else {
                continue;
            };
            bad.clear();
            for m in stream.read(0, 10_000, 1 << 24).unwrap() {
                let e: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                let alias = e["propertyAlias"].as_str().unwrap().to_string();
                for v in e["propertyValues"].as_array().unwrap() {
                    assert_eq!(v["quality"], "BAD");
                    let slot = bad.entry(alias.clone()).or_default();
                    slot.0 += 1;
                    slot.1 = v["value"]["nullValue"]["valueType"]
                        .as_str()
                        .unwrap()
                        .into();
                }
            }
            if bad.len() == 2 && bad.values().all(|(n, _)| *n >= 3) {
                break;
            }
        }
        assert!(bad.values().all(|(n, _)| *n >= 3), "{bad:?}");
        assert_eq!(bad["/a"].1, "D");
        assert_eq!(bad["/b"].1, "B");
        collector.apply(None).await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_configuration_leaves_the_running_one() {
        let dir = tempfile::tempdir().unwrap();
        let slot: StoreSlot = Arc::new(tokio::sync::RwLock::new(None));
        let collector = IndustrialCollector::new(slot, dir.path().to_path_buf());
        collector
            .apply(Some(&serde_json::json!({"sources": []})))
            .await
            .unwrap();
        let bad = serde_json::json!({"sources": [{"name": "x", "type": "Profibus"}]});
        let e = collector.apply(Some(&bad)).await.unwrap_err().to_string();
        assert!(e.contains("Profibus"), "{e}");
        assert!(collector.running.lock().await.is_some());
        collector.apply(None).await.unwrap();
        assert!(collector.running.lock().await.is_none());
    }
}
