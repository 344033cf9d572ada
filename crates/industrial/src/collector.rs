//! The running collector: its sources, the processing of their samples and the writer, all
//! in one pipeline task per configuration. A new configuration replaces the old pipeline only
//! once it has been checked; a refused one leaves the running one in force.

use crate::config::{CollectorConfig, ConfigError, SourceConfig};
use crate::modbus::{now_ns, run_modbus_source};
use crate::process::Processor;
use crate::sample::Sample;
use crate::writer::{Outcome, StoreSlot, Writer, WriterStats};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Samples in flight between the sources and the pipeline; a stalled store backs sources up.
const CHANNEL: usize = 10_000;
/// How often a batch that cannot be written yet is retried.
const RETRY: Duration = Duration::from_millis(500);

/// Reads the current string value of a secret (an ARN, or a stored secret's name) from the
/// device's secret manager; `Err` says why it cannot.
pub type SecretLookup = Arc<
    dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

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
    secrets: Option<SecretLookup>,
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
            secrets: None,
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

    /// Where an OPC UA source's `usernameSecretArn` is read (the core's secret manager). The
    /// secret is a JSON object with `username` and `password`, as SiteWise Edge expects it.
    pub fn with_secrets(mut self, lookup: SecretLookup) -> IndustrialCollector {
        self.secrets = Some(lookup);
        self
    }

    /// Starts, reconfigures (`Some`) or stops (`None`) the collector. A configuration that is
    /// refused leaves the running one as it was.
    pub async fn apply(
        &self,
        configuration: Option<&serde_json::Value>,
    ) -> Result<(), ConfigError> {
        let config = match configuration {
            Some(c) => {
                // Credentials are filled in a copy that lives in memory only: the configuration
                // store keeps the ARN, never the password.
                let c = self.with_user_credentials(c).await?;
                let config = CollectorConfig::from_component_config(&c)?;
                check_sources(&config)?;
                Some(config)
            }
            None => None,
        };
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

    /// `configuration` with the user name and password of each OPC UA source whose identity
    /// names a secret (`identityProvider.usernameSecretArn`) and does not give them itself.
    async fn with_user_credentials(
        &self,
        configuration: &serde_json::Value,
    ) -> Result<serde_json::Value, ConfigError> {
        let mut c = configuration.clone();
        let Some(sources) = c.get_mut("sources").and_then(|s| s.as_array_mut()) else {
            return Ok(c);
        };
        for (i, source) in sources.iter_mut().enumerate() {
            // `get_mut`, not indexing: indexing would insert the keys it looks for.
            let Some(identity) = source
                .get_mut("endpoint")
                .and_then(|e| e.get_mut("identityProvider"))
            else {
                continue;
            };
            let Some(arn) = identity
                .get("usernameSecretArn")
                .and_then(|a| a.as_str())
                .map(str::to_string)
            else {
                continue;
            };
            let given = |k: &str| identity.get(k).is_some_and(|v| v.is_string());
            if identity["type"] != "Username" || (given("username") && given("password")) {
                continue;
            }
            let field = format!("sources[{i}].endpoint.identityProvider.usernameSecretArn");
            let Some(lookup) = &self.secrets else {
                return Err(ConfigError::new(
                    field,
                    "this collector cannot read secrets; give username and password",
                ));
            };
            let text = lookup(arn.clone())
                .await
                .map_err(|e| ConfigError::new(field.clone(), e))?;
            let (username, password) = user_and_password(&text).ok_or_else(|| {
                ConfigError::new(
                    field.clone(),
                    format!(
                        "secret {arn} is not a JSON object with string fields username and password"
                    ),
                )
            })?;
            identity["username"] = username.into();
            identity["password"] = password.into();
        }
        Ok(c)
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

/// The `username` and `password` of a secret's JSON text (keys matched without regard to case).
fn user_and_password(text: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let field = |name: &str| {
        v.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_string)
    };
    Some((field("username")?, field("password")?))
}

/// Everything [`IndustrialCollector::start`] could refuse, checked before the running
/// configuration is stopped.
fn check_sources(config: &CollectorConfig) -> Result<(), ConfigError> {
    for (i, source) in config.sources.iter().enumerate() {
        if let SourceConfig::OpcUa(_v) = source {
            #[cfg(feature = "opcua")]
            opcua_config(i, _v)?;
            #[cfg(not(feature = "opcua"))]
            return Err(ConfigError::new(
                format!("sources[{i}].type"),
                "this build has no OPC UA support (cargo feature opcua of lichen-industrial)",
            ));
        }
    }
    config
        .processing
        .compile()
        .map(|_| ())
        .map_err(|(f, r)| ConfigError::new(format!("processing.{f}"), r))
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

    fn opcua_source(identity: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"sources": [{"name": "plant", "type": "OpcUa",
            "endpoint": {"endpointUri": "opc.tcp://127.0.0.1:4840/", "identityProvider": identity,
                "nodeFilterRules": [{"action": "INCLUDE",
                    "definition": {"type": "OpcUaRootPath", "rootPath": "/Plant/*"}}]}}]})
    }

    fn secrets(known: &'static str, text: &'static str) -> SecretLookup {
        Arc::new(move |id: String| {
            Box::pin(async move {
                if id == known {
                    Ok(text.to_string())
                } else {
                    Err(format!("secret {id:?} is not among the cloudSecrets"))
                }
            })
        })
    }

    #[tokio::test]
    async fn a_user_name_secret_fills_in_the_identity_of_the_running_copy_only() {
        let dir = tempfile::tempdir().unwrap();
        let slot: StoreSlot = Arc::new(tokio::sync::RwLock::new(None));
        let arn = "arn:aws:secretsmanager:us-east-1:111111111111:secret:opc-user";
        let collector = IndustrialCollector::new(slot, dir.path().to_path_buf()).with_secrets(
            secrets(arn, r#"{"Username": "operator", "password": "pw"}"#),
        );
        let config =
            opcua_source(serde_json::json!({"type": "Username", "usernameSecretArn": arn}));
        let filled = collector.with_user_credentials(&config).await.unwrap();
        let identity = &filled["sources"][0]["endpoint"]["identityProvider"];
        assert_eq!(identity["username"], "operator");
        assert_eq!(identity["password"], "pw");
        assert_eq!(identity["usernameSecretArn"], arn);
        assert!(config["sources"][0]["endpoint"]["identityProvider"]["password"].is_null());

        // Given credentials win; anonymous identities are left alone.
        let given = opcua_source(
            serde_json::json!({"type": "Username", "usernameSecretArn": "other",
            "username": "u", "password": "p"}),
        );
        assert_eq!(
            collector.with_user_credentials(&given).await.unwrap(),
            given
        );
        let anonymous = opcua_source(serde_json::json!({"type": "Anonymous"}));
        assert_eq!(
            collector.with_user_credentials(&anonymous).await.unwrap(),
            anonymous
        );
    }

    #[tokio::test]
    async fn an_unreadable_user_name_secret_refuses_the_configuration_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let slot: StoreSlot = Arc::new(tokio::sync::RwLock::new(None));
        let field = "sources[0].endpoint.identityProvider.usernameSecretArn";
        let unknown =
            opcua_source(serde_json::json!({"type": "Username", "usernameSecretArn": "nope"}));

        let without = IndustrialCollector::new(slot.clone(), dir.path().to_path_buf());
        let e = without.apply(Some(&unknown)).await.unwrap_err();
        assert_eq!(e.field, field);

        let collector = IndustrialCollector::new(slot, dir.path().to_path_buf())
            .with_secrets(secrets("plain", "just a password"));
        let e = collector.apply(Some(&unknown)).await.unwrap_err();
        assert_eq!(e.field, field);
        assert!(e.reason.contains("cloudSecrets"), "{e}");
        let plain =
            opcua_source(serde_json::json!({"type": "Username", "usernameSecretArn": "plain"}));
        let e = collector.apply(Some(&plain)).await.unwrap_err();
        assert!(e.reason.contains("username and password"), "{e}");
        assert!(collector.running.lock().await.is_none());
    }

    /// A collector running a configuration without sources (its work folder kept alive).
    async fn running_empty() -> (tempfile::TempDir, IndustrialCollector) {
        let dir = tempfile::tempdir().unwrap();
        let slot: StoreSlot = Arc::new(tokio::sync::RwLock::new(None));
        let collector = IndustrialCollector::new(slot, dir.path().to_path_buf());
        collector
            .apply(Some(&serde_json::json!({"sources": []})))
            .await
            .unwrap();
        (dir, collector)
    }

    #[tokio::test]
    async fn a_bad_opc_ua_source_leaves_the_running_configuration() {
        let (_dir, collector) = running_empty().await;
        let bad = opcua_source(serde_json::json!({"type": "Username", "username": "only"}));
        collector.apply(Some(&bad)).await.unwrap_err();
        assert!(collector.running.lock().await.is_some());
        collector.apply(None).await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_configuration_leaves_the_running_one() {
        let (_dir, collector) = running_empty().await;
        let bad = serde_json::json!({"sources": [{"name": "x", "type": "Profibus"}]});
        let e = collector.apply(Some(&bad)).await.unwrap_err().to_string();
        assert!(e.contains("Profibus"), "{e}");
        assert!(collector.running.lock().await.is_some());
        collector.apply(None).await.unwrap();
        assert!(collector.running.lock().await.is_none());
    }
}
