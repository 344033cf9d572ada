//! The embeddable service: `StreamManager::start(config)` / `stop()`, and the parse of the
//! `aws.greengrass.StreamManager` component configuration (spec §1.2).

use crate::exporter::{self, ExporterSettings};
use crate::file_access::FileAccessResolver;
use crate::server::{self, Context, TokenValidator};
use crate::store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::level_filters::LevelFilter;

/// How often TTLs are applied to all streams.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// Configuration of one stream manager instance.
#[derive(Clone)]
pub struct StreamManagerConfig {
    /// `STREAM_MANAGER_STORE_ROOT_DIR`.
    pub store_root: PathBuf,
    /// `STREAM_MANAGER_SERVER_PORT` on 127.0.0.1; 0 picks a free port (see
    /// [`StreamManager::local_addr`]).
    pub port: u16,
    /// `STREAM_MANAGER_AUTHENTICATE_CLIENT`: when true, Connect must carry a token that
    /// `token_validator` accepts; without a validator every token is refused.
    pub authenticate_client: bool,
    pub token_validator: Option<TokenValidator>,
    /// Exporter limits, endpoints and credentials (spec §1.2 plus Lichen's extensions).
    pub exporters: ExporterSettings,
    /// `LOG_LEVEL`: how much the stream manager logs (the events of this crate's targets). The
    /// host applies it; the core writes them to `logs/aws.greengrass.StreamManager.log`.
    /// `JVM_ARGS` is accepted and has no effect: there is no JVM.
    pub log_level: LevelFilter,
    /// `STREAM_MANAGER_FLUSH_WAIT_YIELD` (Lichen's, default true): whether an append to a
    /// flushOnWrite stream, waiting for its group commit, yields the CPU for a moment before it
    /// sleeps (see [`Store::set_yield_while_waiting`]); false for devices where CPU time costs
    /// more than durable-append throughput.
    pub flush_wait_yield: bool,
    /// Whose privileges open the `inputUrl` file of an S3 export task, from the token of the
    /// connection that appended it (`None` for a task whose appender is unknown: appended
    /// before a restart, or without authentication). Without a resolver every file is opened
    /// with the stream manager's own privileges.
    pub task_file_access: Option<FileAccessResolver>,
}

impl std::fmt::Debug for StreamManagerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamManagerConfig")
            .field("store_root", &self.store_root)
            .field("port", &self.port)
            .field("authenticate_client", &self.authenticate_client)
            .field("token_validator", &self.token_validator.is_some())
            .field("exporters", &self.exporters)
            .field("log_level", &self.log_level)
            .field("flush_wait_yield", &self.flush_wait_yield)
            .field("task_file_access", &self.task_file_access.is_some())
            .finish()
    }
}

/// A component configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("aws.greengrass.StreamManager configuration {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl StreamManagerConfig {
    /// Reads the component's `configuration` namespace. Values may be strings (`"18088"`,
    /// `"false"`) or JSON scalars; absent keys take the documented defaults.
    pub fn from_component_config(
        config: &serde_json::Value,
        default_store_root: PathBuf,
    ) -> Result<Self, ConfigError> {
        let get = |key: &str| config.get(key).filter(|v| !v.is_null());
        let bad = |key: &str, reason: &str| ConfigError {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let store_root = match get("STREAM_MANAGER_STORE_ROOT_DIR") {
            None => default_store_root,
            Some(serde_json::Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(_) => {
                return Err(bad(
                    "STREAM_MANAGER_STORE_ROOT_DIR",
                    "must be a directory path",
                ));
            }
        };
        let port = match get("STREAM_MANAGER_SERVER_PORT") {
            None => 8088,
            Some(v) => scalar_text(v).parse::<u16>().map_err(|_| {
                bad(
                    "STREAM_MANAGER_SERVER_PORT",
                    "must be a port number 0-65535",
                )
            })?,
        };
        let flag = |key: &str, default: bool| match get(key) {
            None => Ok(default),
            Some(v) => match scalar_text(v).to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad(key, "must be true or false")),
            },
        };
        let authenticate_client = flag("STREAM_MANAGER_AUTHENTICATE_CLIENT", true)?;
        let flush_wait_yield = flag("STREAM_MANAGER_FLUSH_WAIT_YIELD", true)?;
        let log_level = match get("LOG_LEVEL") {
            None => LevelFilter::INFO,
            Some(v) => parse_log_level(&scalar_text(v))?,
        };
        Ok(StreamManagerConfig {
            store_root,
            port,
            authenticate_client,
            token_validator: None,
            exporters: exporter_settings(config)?,
            log_level,
            flush_wait_yield,
            task_file_access: None,
        })
    }
}

/// Reads a `LOG_LEVEL` value: TRACE, DEBUG, INFO, WARN or ERROR (any case; the Java stream
/// manager's WARNING and OFF are accepted too).
pub fn parse_log_level(text: &str) -> Result<LevelFilter, ConfigError> {
    match text.trim().to_ascii_uppercase().as_str() {
        "TRACE" | "ALL" => Ok(LevelFilter::TRACE),
        "DEBUG" => Ok(LevelFilter::DEBUG),
        "INFO" => Ok(LevelFilter::INFO),
        "WARN" | "WARNING" => Ok(LevelFilter::WARN),
        "ERROR" => Ok(LevelFilter::ERROR),
        "OFF" => Ok(LevelFilter::OFF),
        _ => Err(ConfigError {
            key: "LOG_LEVEL".into(),
            reason: format!("must be one of TRACE, DEBUG, INFO, WARN, ERROR, not {text:?}"),
        }),
    }
}

/// The exporter keys of the component configuration (also read from the environment by the
/// standalone server, as the Greengrass stream manager reads them).
fn exporter_settings(config: &serde_json::Value) -> Result<ExporterSettings, ConfigError> {
    let get = |key: &str| {
        config
            .get(key)
            .filter(|v| !v.is_null())
            .map(scalar_text)
            .filter(|s| !s.is_empty())
    };
    let number = |key: &str, min: u64| -> Result<Option<u64>, ConfigError> {
        match get(key) {
            None => Ok(None),
            Some(t) => match t.parse::<u64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(ConfigError {
                    key: key.to_string(),
                    reason: format!("must be a whole number of at least {min}, not {t:?}"),
                }),
            },
        }
    };
    let mut s = ExporterSettings::default();
    if let Some(n) = number("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", 1)?
        .or(number("STREAM_MANAGER_THREAD_POOL_SIZE", 1)?)
    {
        s.thread_pool_size = n as usize;
    }
    s.max_bandwidth_kbps = number("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH", 1)?;
    s.stream_max_bandwidth_kbps = number("STREAM_MANAGER_EXPORTER_STREAM_MAX_BANDWIDTH", 1)?;
    if let Some(n) = number(
        "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
        exporter::MIN_PART_SIZE,
    )? {
        s.s3_min_part_size = n;
    }
    if let Some(n) = number("STREAM_MANAGER_EXPORTER_MAX_RETRY_INTERVAL_MILLIS", 1)? {
        s.max_retry_interval = Duration::from_millis(n);
    }
    if let Some(r) = get("STREAM_MANAGER_EXPORTER_AWS_REGION") {
        s.region = r;
    }
    s.kinesis_endpoint = get("STREAM_MANAGER_EXPORTER_KINESIS_ENDPOINT");
    s.s3_endpoint = get("STREAM_MANAGER_EXPORTER_S3_ENDPOINT");
    s.iot_analytics_endpoint = get("STREAM_MANAGER_EXPORTER_IOT_ANALYTICS_ENDPOINT");
    s.iot_sitewise_endpoint = get("STREAM_MANAGER_EXPORTER_IOT_SITEWISE_ENDPOINT");
    match (
        get("STREAM_MANAGER_EXPORTER_AWS_ACCESS_KEY_ID"),
        get("STREAM_MANAGER_EXPORTER_AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(a), Some(k)) => {
            s.static_credentials = Some((a, k, get("STREAM_MANAGER_EXPORTER_AWS_SESSION_TOKEN")))
        }
        (None, None) => {}
        _ => {
            return Err(ConfigError {
                key: "STREAM_MANAGER_EXPORTER_AWS_SECRET_ACCESS_KEY".into(),
                reason: "set both STREAM_MANAGER_EXPORTER_AWS_ACCESS_KEY_ID and \
                         STREAM_MANAGER_EXPORTER_AWS_SECRET_ACCESS_KEY, or neither"
                    .into(),
            });
        }
    }
    Ok(s)
}

fn scalar_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

/// A running stream manager: the store, the TCP server and the TTL sweeper.
pub struct StreamManager {
    store: Arc<Store>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl StreamManager {
    /// Opens the store (recovering File streams) and starts serving on 127.0.0.1.
    pub async fn start(config: StreamManagerConfig) -> anyhow::Result<StreamManager> {
        let root = config.store_root.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(root)).await??;
        store.set_yield_while_waiting(config.flush_wait_yield);
        let store = Arc::new(store);
        let (listener, local_addr) = server::bind(config.port).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on 127.0.0.1:{}: {e}; pick another STREAM_MANAGER_SERVER_PORT",
                config.port
            )
        })?;
        let validator = if config.authenticate_client {
            Some(
                config
                    .token_validator
                    .clone()
                    .unwrap_or_else(|| Arc::new(|_: &str| false)),
            )
        } else {
            None
        };
        let ctx = Arc::new(Context {
            store: store.clone(),
            validator,
            file_access: config.task_file_access.clone(),
        });
        let (shutdown, rx) = watch::channel(false);
        let accept = tokio::spawn(server::accept_loop(listener, ctx, rx.clone()));
        let exporters = exporter::start(
            store.clone(),
            config.exporters.clone(),
            config.task_file_access.clone(),
            rx.clone(),
        );
        let sweeper_store = store.clone();
        let mut sweeper_rx = rx;
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let s = sweeper_store.clone();
                        let _ = tokio::task::spawn_blocking(move || s.expire_all()).await;
                    }
                    _ = sweeper_rx.changed() => break,
                }
            }
        });
        tracing::info!(addr = %local_addr, root = %store.root().display(), "stream manager started");
        Ok(StreamManager {
            store,
            local_addr,
            shutdown,
            tasks: vec![accept, sweeper, exporters],
        })
    }

    /// The address actually bound; the core records its port in the component's `port` key.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops accepting, closes every connection and flushes File streams to disk.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.sync_all()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_config_coerces_strings() {
        let c = StreamManagerConfig::from_component_config(
            &serde_json::json!({
                "STREAM_MANAGER_SERVER_PORT": "18088",
                "STREAM_MANAGER_AUTHENTICATE_CLIENT": "false",
                "STREAM_MANAGER_STORE_ROOT_DIR": "/data/sm",
                "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE": "5"
            }),
            PathBuf::from("/default"),
        )
        .unwrap();
        assert_eq!(c.port, 18088);
        assert!(!c.authenticate_client);
        assert_eq!(c.store_root, PathBuf::from("/data/sm"));
        let d = StreamManagerConfig::from_component_config(
            &serde_json::json!({}),
            PathBuf::from("/default"),
        )
        .unwrap();
        assert_eq!((d.port, d.authenticate_client), (8088, true));
        assert_eq!(d.store_root, PathBuf::from("/default"));
        let e = StreamManagerConfig::from_component_config(
            &serde_json::json!({"STREAM_MANAGER_SERVER_PORT": "x"}),
            PathBuf::new(),
        )
        .unwrap_err();
        assert_eq!(e.key, "STREAM_MANAGER_SERVER_PORT");
    }

    #[test]
    fn log_level_takes_the_documented_levels_in_any_case_and_names_the_key_otherwise() {
        let level = |v: serde_json::Value| {
            StreamManagerConfig::from_component_config(
                &serde_json::json!({ "LOG_LEVEL": v, "JVM_ARGS": "-Xmx64m" }),
                PathBuf::new(),
            )
            .map(|c| c.log_level)
        };
        assert_eq!(level("DEBUG".into()).unwrap(), LevelFilter::DEBUG);
        assert_eq!(level("warn".into()).unwrap(), LevelFilter::WARN);
        assert_eq!(level(" Trace ".into()).unwrap(), LevelFilter::TRACE);
        assert_eq!(level("ERROR".into()).unwrap(), LevelFilter::ERROR);
        assert_eq!(level(serde_json::Value::Null).unwrap(), LevelFilter::INFO);
        let e = level("LOUD".into()).unwrap_err();
        assert_eq!(e.key, "LOG_LEVEL");
        assert!(e.to_string().contains("LOUD"), "{e}");
        let defaults =
            StreamManagerConfig::from_component_config(&serde_json::json!({}), PathBuf::new())
                .unwrap();
        assert_eq!(defaults.log_level, LevelFilter::INFO);
    }

    #[test]
    fn flush_wait_yield_is_a_flag_on_by_default() {
        let parse = |v: serde_json::Value| {
            StreamManagerConfig::from_component_config(
                &serde_json::json!({ "STREAM_MANAGER_FLUSH_WAIT_YIELD": v }),
                PathBuf::new(),
            )
        };
        assert!(parse(serde_json::Value::Null).unwrap().flush_wait_yield);
        assert!(!parse("false".into()).unwrap().flush_wait_yield);
        assert!(!parse(false.into()).unwrap().flush_wait_yield);
        assert!(parse("TRUE".into()).unwrap().flush_wait_yield);
        let e = parse("sometimes".into()).unwrap_err();
        assert_eq!(e.key, "STREAM_MANAGER_FLUSH_WAIT_YIELD");
    }
}
