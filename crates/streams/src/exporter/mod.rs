//! Exporters (spec §1.7): one task per (stream, enabled export configuration), each advancing
//! its export's checkpoint.
//!
//! Invariant: a checkpoint moves only after the destination acknowledged the records up to it
//! (at-least-once; a crash between upload and checkpoint re-sends that batch). Records are sent
//! in sequence order within an export. Failures are retried with doubling delays up to
//! `max_retry_interval`; only per-record errors the destination calls permanent are skipped.

#[cfg(feature = "exporters-aws")]
mod aws;
mod http;
mod pool;
#[cfg(feature = "exporters-aws")]
mod s3;
#[cfg(feature = "exporters-aws")]
use lichen_sigv4 as sigv4;

use crate::export::{ExportCheckpoint, ExportConfig, ExportKind};
use crate::file_access::FileAccessResolver;
use crate::store::{Message, Store, Stream};
use pool::{Bandwidth, PriorityPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the set of running exporters is matched to the stream definitions.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(200);
/// First retry delay; doubles per failure up to the configured maximum.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Upper bound on the payload bytes of one batch read.
const MAX_BATCH_BYTES: u64 = 5 << 20;

/// Exporter settings from the component configuration (spec §1.2) and Lichen's extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterSettings {
    /// `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE` (alias `STREAM_MANAGER_THREAD_POOL_SIZE`).
    pub thread_pool_size: usize,
    /// `STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`, kbit/s across all exporters.
    pub max_bandwidth_kbps: Option<u64>,
    /// `STREAM_MANAGER_EXPORTER_STREAM_MAX_BANDWIDTH` (extension), kbit/s per stream.
    pub stream_max_bandwidth_kbps: Option<u64>,
    /// `STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES`.
    pub s3_min_part_size: u64,
    /// `STREAM_MANAGER_EXPORTER_MAX_RETRY_INTERVAL_MILLIS` (extension; default 5 minutes).
    pub max_retry_interval: Duration,
    /// `STREAM_MANAGER_EXPORTER_AWS_REGION`, else `AWS_REGION`/`AWS_DEFAULT_REGION`, else us-east-1.
    pub region: String,
    /// `STREAM_MANAGER_EXPORTER_{KINESIS,S3,IOT_ANALYTICS,IOT_SITEWISE}_ENDPOINT` (extension):
    /// a base URL such as `http://127.0.0.1:5000` instead of the AWS regional endpoint.
    pub kinesis_endpoint: Option<String>,
    pub s3_endpoint: Option<String>,
    pub iot_analytics_endpoint: Option<String>,
    pub iot_sitewise_endpoint: Option<String>,
    /// `STREAM_MANAGER_EXPORTER_AWS_ACCESS_KEY_ID` / `_SECRET_ACCESS_KEY` / `_SESSION_TOKEN`
    /// (extension); when absent, the default chain: environment, container credentials
    /// (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, as the Token Exchange Service provides), then
    /// `~/.aws/credentials`.
    pub static_credentials: Option<(String, String, Option<String>)>,
}

pub(crate) const MIN_PART_SIZE: u64 = 5_242_880;

impl Default for ExporterSettings {
    fn default() -> Self {
        ExporterSettings {
            thread_pool_size: 5,
            max_bandwidth_kbps: None,
            stream_max_bandwidth_kbps: None,
            s3_min_part_size: MIN_PART_SIZE,
            max_retry_interval: Duration::from_secs(300),
            region: std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| "us-east-1".into()),
            kinesis_endpoint: None,
            s3_endpoint: None,
            iot_analytics_endpoint: None,
            iot_sitewise_endpoint: None,
            static_credentials: None,
        }
    }
}

/// A failed upload attempt.
#[derive(Debug)]
pub(crate) struct Failure {
    pub message: String,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
        }
    }
}

/// What the destination took: the records it acknowledged and their payload bytes (records it
/// rejected for good are acknowledged too, so the checkpoint passes them, but not counted).
pub(crate) struct Delivered {
    pub messages: u64,
    pub bytes: u64,
}

pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub settings: ExporterSettings,
    /// Whose privileges S3 export tasks read their files with (see [`crate::file_access`]).
    #[cfg_attr(not(feature = "exporters-aws"), allow(dead_code))]
    pub file_access: Option<FileAccessResolver>,
    pool: Arc<PriorityPool>,
    global_bandwidth: Option<Bandwidth>,
    stream_bandwidth: Mutex<HashMap<String, Arc<Bandwidth>>>,
    #[cfg(feature = "exporters-aws")]
    pub credentials: aws::CredentialProvider,
}

impl Shared {
    async fn throttle(&self, stream: &str, bytes: u64) {
        if let Some(kbps) = self.settings.stream_max_bandwidth_kbps {
            let bw = self
                .stream_bandwidth
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(stream.to_string())
                .or_insert_with(|| Arc::new(Bandwidth::from_kbit_per_sec(kbps)))
                .clone();
            bw.take(bytes).await;
        }
        if let Some(bw) = &self.global_bandwidth {
            bw.take(bytes).await;
        }
    }
}

enum Destination {
    Http(HttpDestination),
    #[cfg(feature = "exporters-aws")]
    Aws(aws::AwsDestination),
    #[cfg(feature = "exporters-aws")]
    S3(s3::S3Executor),
}

impl Destination {
    fn new(config: &ExportConfig) -> Result<Destination, String> {
        match config.kind {
            ExportKind::Http => HttpDestination::new(config).map(Destination::Http),
            #[cfg(feature = "exporters-aws")]
            ExportKind::S3TaskExecutor => Ok(Destination::S3(s3::S3Executor::new(config))),
            #[cfg(feature = "exporters-aws")]
            _ => aws::AwsDestination::new(config).map(Destination::Aws),
            #[cfg(not(feature = "exporters-aws"))]
            _ => Err(format!(
                "{} exports need the exporters-aws feature of lichen-streams",
                config.kind.wire_key()
            )),
        }
    }

    async fn send(
        &mut self,
        shared: &Shared,
        stream: &str,
        batch: &[Message],
    ) -> Result<Delivered, Failure> {
        #[cfg(not(feature = "exporters-aws"))]
        let _ = shared;
        match self {
            Destination::Http(d) => d.send(stream, batch).await,
            #[cfg(feature = "exporters-aws")]
            Destination::Aws(d) => d.send(shared, batch).await,
            #[cfg(feature = "exporters-aws")]
            Destination::S3(d) => d.send(shared, stream, batch).await,
        }
    }
}

fn default_batch_size(kind: ExportKind) -> u64 {
    match kind {
        ExportKind::Kinesis | ExportKind::Http => 500,
        ExportKind::IotAnalytics => 100,
        ExportKind::IotSitewise => 10,
        // S3 tasks run one at a time, in append order.
        ExportKind::S3TaskExecutor => 1,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs the exporters of every stream until `shutdown` turns true.
pub(crate) fn start(
    store: Arc<Store>,
    settings: ExporterSettings,
    file_access: Option<FileAccessResolver>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let shared = Arc::new(Shared {
        store,
        file_access,
        pool: PriorityPool::new(settings.thread_pool_size),
        global_bandwidth: settings
            .max_bandwidth_kbps
            .map(Bandwidth::from_kbit_per_sec),
        stream_bandwidth: Mutex::new(HashMap::new()),
        #[cfg(feature = "exporters-aws")]
        credentials: aws::CredentialProvider::new(settings.static_credentials.clone()),
        settings,
    });
    tokio::spawn(supervise(shared, shutdown))
}

struct Running {
    stream: Arc<Stream>,
    config: ExportConfig,
    task: JoinHandle<()>,
}

async fn supervise(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    loop {
        let mut seen = std::collections::HashSet::new();
        for name in shared.store.list() {
            let Ok(stream) = shared.store.get(&name) else {
                continue;
            };
            let definition = stream.info().definition;
            for config in definition.exports.iter().filter(|c| !c.disabled) {
                let key = (name.clone(), config.identifier.clone());
                seen.insert(key.clone());
                if let Some(r) = running.get(&key)
                    && Arc::ptr_eq(&r.stream, &stream)
                    && r.config == *config
                    && !r.task.is_finished()
                {
                    continue;
                }
                if let Some(old) = running.remove(&key) {
                    old.task.abort();
                }
                let task = tokio::spawn(run_export(shared.clone(), stream.clone(), config.clone()));
                running.insert(
                    key,
                    Running {
                        stream: stream.clone(),
                        config: config.clone(),
                        task,
                    },
                );
            }
        }
        running.retain(|key, r| {
            let keep = seen.contains(key);
            if !keep {
                r.task.abort();
            }
            keep
        });
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, r) in running {
        r.task.abort();
        let _ = r.task.await;
    }
}

fn checkpoint_of(stream: &Stream, identifier: &str) -> Option<(ExportCheckpoint, u64, i64)> {
    let info = stream.info();
    let cp = info
        .export_checkpoints
        .into_iter()
        .find(|c| c.identifier == identifier)?;
    Some((cp, info.oldest_sequence_number, info.newest_sequence_number))
}

async fn save_checkpoint(stream: &Arc<Stream>, cp: ExportCheckpoint) {
    let s = stream.clone();
    let id = cp.identifier.clone();
    match tokio::task::spawn_blocking(move || s.set_checkpoint(cp)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(stream = stream.name(), export = %id, error = %e, "cannot record export progress")
        }
        Err(_) => {}
    }
}

/// One export's loop: wait for an eligible batch, upload it (retrying), then checkpoint.
async fn run_export(shared: Arc<Shared>, stream: Arc<Stream>, config: ExportConfig) {
    let name = stream.name().to_string();
    let id = config.identifier.clone();
    let mut destination = match Destination::new(&config) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(stream = %name, export = %id, error = %e, "export not started");
            if let Some((mut cp, _, _)) = checkpoint_of(&stream, &id) {
                cp.error_message = Some(e);
                save_checkpoint(&stream, cp).await;
            }
            return;
        }
    };
    let batch_size = config
        .batch_size
        .unwrap_or_else(|| default_batch_size(config.kind))
        .max(1);
    let interval = config.batch_interval_millis.map(Duration::from_millis);
    let priority = config.priority.unwrap_or(u64::MAX);
    let mut appended = stream.subscribe();
    tracing::info!(stream = %name, export = %id, kind = config.kind.wire_key(), "exporter started");
    loop {
        appended.borrow_and_update();
        let Some((cp, oldest, newest)) = checkpoint_of(&stream, &id) else {
            return;
        };
        let next = ((cp.last_exported_sequence_number + 1).max(0) as u64).max(oldest);
        let pending = newest + 1 - next as i64;
        if pending <= 0 {
            if appended.changed().await.is_err() {
                return;
            }
            continue;
        }
        let read_stream = stream.clone();
        let batch = match tokio::task::spawn_blocking(move || {
            read_stream.read(next, batch_size as usize, MAX_BATCH_BYTES)
        })
        .await
        {
            Ok(Ok(b)) if !b.is_empty() => b,
            Ok(Ok(_)) => continue,
            Ok(Err(crate::StoreError::NotFound(_))) => return,
            Ok(Err(e)) => {
                tracing::warn!(stream = %name, export = %id, error = %e, "cannot read records to export");
                tokio::time::sleep(
                    shared
                        .settings
                        .max_retry_interval
                        .min(Duration::from_secs(5)),
                )
                .await;
                continue;
            }
            Err(_) => return,
        };
        // A partial batch waits for more records until its oldest is batchIntervalMillis old.
        if let Some(iv) = interval
            && (batch.len() as u64) < batch_size
        {
            let age = (now_ms() - batch[0].ingest_time_ms).max(0) as u64;
            if age < iv.as_millis() as u64 {
                let wait = Duration::from_millis(iv.as_millis() as u64 - age);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    r = appended.changed() => if r.is_err() { return },
                }
                if (now_ms() - batch[0].ingest_time_ms).max(0) < iv.as_millis() as i64 {
                    continue;
                }
            }
        }
        let bytes: u64 = batch.iter().map(|m| m.payload.len() as u64).sum();
        let mut delay = FIRST_RETRY_DELAY;
        let delivered = loop {
            let permit = shared.pool.acquire(priority).await;
            shared.throttle(&name, bytes).await;
            // Boxed so a large destination future never sits on a small worker stack.
            let result = Box::pin(destination.send(&shared, &name, &batch)).await;
            drop(permit);
            match result {
                Ok(d) => break d,
                Err(f) => {
                    tracing::warn!(stream = %name, export = %id, error = %f.message, retry_in_ms = delay.as_millis() as u64, "export failed; will retry");
                    if let Some((mut cp, _, _)) = checkpoint_of(&stream, &id)
                        && cp.error_message.as_deref() != Some(f.message.as_str())
                    {
                        cp.error_message = Some(f.message);
                        save_checkpoint(&stream, cp).await;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(shared.settings.max_retry_interval);
                }
            }
        };
        let Some((mut cp, _, _)) = checkpoint_of(&stream, &id) else {
            return;
        };
        let last = batch.last().map(|m| m.sequence_number).unwrap_or(next);
        cp.last_exported_sequence_number = cp.last_exported_sequence_number.max(last as i64);
        cp.last_export_time = now_ms();
        cp.exported_bytes_from_stream += delivered.bytes;
        cp.exported_messages_count += delivered.messages;
        cp.error_message = None;
        save_checkpoint(&stream, cp).await;
    }
}

/// The HTTP destination (the SDK's HTTPConfig, documented as for testing): `exportFormat` 0
/// `RAW_NOT_BATCHED` posts each payload as the body of its own request; 1 `JSON_BATCHED` posts a
/// JSON array of `{streamName, sequenceNumber, ingestTime, payload (base64)}`.
struct HttpDestination {
    url: http::Url,
    target: String,
    batched: bool,
}

impl HttpDestination {
    fn new(config: &ExportConfig) -> Result<HttpDestination, String> {
        let uri = config
            .settings
            .get("uri")
            .and_then(|v| v.as_str())
            .ok_or("http export without a uri")?;
        let url = http::Url::parse(uri)?;
        let target = match uri.find("://").and_then(|i| uri[i + 3..].find('/')) {
            Some(j) => uri[uri.find("://").unwrap_or(0) + 3 + j..].to_string(),
            None => "/".into(),
        };
        let batched = config
            .settings
            .get("exportFormat")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().map(|s| u64::from(s == "JSON_BATCHED")))
            })
            .unwrap_or(0)
            == 1;
        Ok(HttpDestination {
            url,
            target,
            batched,
        })
    }

    async fn post(&self, content_type: &str, body: &[u8]) -> Result<(), Failure> {
        let resp = http::send(http::Request {
            method: "POST",
            url: &self.url,
            target: self.target.clone(),
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        })
        .await
        .map_err(Failure::new)?;
        if !(200..300).contains(&resp.status) {
            return Err(Failure::new(format!(
                "POST {}: HTTP {}: {}",
                self.target,
                resp.status,
                resp.body_text()
            )));
        }
        Ok(())
    }

    async fn send(&mut self, stream: &str, batch: &[Message]) -> Result<Delivered, Failure> {
        use base64::Engine;
        let bytes = batch.iter().map(|m| m.payload.len() as u64).sum();
        if self.batched {
            let body: Vec<serde_json::Value> = batch
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "streamName": stream,
                        "sequenceNumber": m.sequence_number,
                        "ingestTime": m.ingest_time_ms,
                        "payload": base64::engine::general_purpose::STANDARD.encode(&m.payload),
                    })
                })
                .collect();
            let body = serde_json::to_vec(&body).map_err(|e| Failure::new(e.to_string()))?;
            self.post("application/json", &body).await?;
        } else {
            // One request per record; a failure part way re-sends the batch from its start.
            for m in batch {
                self.post("application/octet-stream", &m.payload).await?;
            }
        }
        Ok(Delivered {
            messages: batch.len() as u64,
            bytes,
        })
    }
}
