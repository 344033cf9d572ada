//! The `lichen.IndustrialCollector` component configuration: sources as SiteWise Edge describes
//! them, the destination stream, local processing (asset models) and batching.

use crate::modbus::ModbusSourceConfig;
use crate::process::ProcessingConfig;
use serde::Deserialize;

/// The whole component configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectorConfig {
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub destination: DestinationConfig,
    #[serde(default)]
    pub processing: ProcessingConfig,
    #[serde(default)]
    pub batch: BatchConfig,
}

/// One source; `type` picks the protocol.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    ModbusTcp(ModbusSourceConfig),
    /// Kept as JSON: the OPC UA source parses its own configuration.
    OpcUa(serde_json::Value),
}

impl SourceConfig {
    pub fn name(&self) -> String {
        match self {
            SourceConfig::ModbusTcp(m) => m.name.clone(),
            SourceConfig::OpcUa(v) => v
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or("OpcUa")
                .to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let kind = v
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                D::Error::custom("each source needs \"type\": \"ModbusTcp\" or \"OpcUa\"")
            })?
            .to_string();
        match kind.as_str() {
            "ModbusTcp" | "Modbus" => {
                if let Some(m) = v.as_object_mut() {
                    m.remove("type");
                }
                serde_json::from_value(v)
                    .map(SourceConfig::ModbusTcp)
                    .map_err(|e| D::Error::custom(format!("ModbusTcp source: {e}")))
            }
            "OpcUa" => Ok(SourceConfig::OpcUa(v)),
            other => Err(D::Error::custom(format!(
                "source type {other:?} is not known; use \"ModbusTcp\" or \"OpcUa\""
            ))),
        }
    }
}

/// Where samples go: one stream of SiteWise `PutAssetPropertyValueEntry` JSON records.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationConfig {
    /// SiteWise Edge's default stream name.
    #[serde(default = "default_stream")]
    pub stream_name: String,
    /// Create the stream when it does not exist (else wait for another component to).
    #[serde(default = "yes")]
    pub create_stream: bool,
    /// Definition of a created stream.
    #[serde(default)]
    pub max_size: Option<u64>,
    #[serde(default = "default_strategy")]
    pub strategy_on_full: lichen_streams::StrategyOnFull,
    /// Each batch is on disk before the next is taken (one fsync per batch).
    #[serde(default = "yes")]
    pub flush_on_write: bool,
    /// The created stream exports to IoT SiteWise (`BatchPutAssetPropertyValue`).
    #[serde(default = "yes")]
    pub export_to_sitewise: bool,
    #[serde(default = "default_export_id")]
    pub export_identifier: String,
    /// Entries per SiteWise request (1-10).
    #[serde(default)]
    pub export_batch_size: Option<u64>,
    #[serde(default)]
    pub export_batch_interval_millis: Option<u64>,
}

impl Default for DestinationConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

/// How samples are grouped into appends (bounds the CPU spent per sample).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(default = "default_batch_samples")]
    pub max_samples: usize,
    #[serde(default = "default_batch_delay")]
    pub max_delay_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_samples: default_batch_samples(),
            max_delay_ms: default_batch_delay(),
        }
    }
}

fn default_stream() -> String {
    "SiteWise_Edge_Stream".into()
}
fn default_export_id() -> String {
    "SiteWiseEdgeExport".into()
}
fn default_strategy() -> lichen_streams::StrategyOnFull {
    lichen_streams::StrategyOnFull::OverwriteOldestData
}
fn yes() -> bool {
    true
}
fn default_batch_samples() -> usize {
    1000
}
fn default_batch_delay() -> u64 {
    100
}

/// A configuration that cannot be used, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("lichen.IndustrialCollector configuration {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl CollectorConfig {
    /// Parses and checks the component's `configuration`.
    pub fn from_component_config(value: &serde_json::Value) -> Result<Self, ConfigError> {
        let config: CollectorConfig = serde_json::from_value(value.clone())
            .map_err(|e| ConfigError::new("(document)", e.to_string()))?;
        let mut names = std::collections::HashSet::new();
        for (i, s) in config.sources.iter().enumerate() {
            if !names.insert(s.name()) {
                return Err(ConfigError::new(
                    format!("sources[{i}].name"),
                    format!(
                        "{:?} is used by two sources; names must be unique",
                        s.name()
                    ),
                ));
            }
            match s {
                SourceConfig::ModbusTcp(m) => m
                    .validate()
                    .map_err(|(f, r)| ConfigError::new(format!("sources[{i}].{f}"), r))?,
                #[cfg(feature = "opcua")]
                SourceConfig::OpcUa(v) => {
                    crate::collector::opcua_config(i, v)?;
                }
                #[cfg(not(feature = "opcua"))]
                SourceConfig::OpcUa(_) => {}
            }
        }
        if config.batch.max_samples == 0 {
            return Err(ConfigError::new("batch.maxSamples", "must be at least 1"));
        }
        if let Some(b) = config.destination.export_batch_size
            && !(1..=10).contains(&b)
        {
            return Err(ConfigError::new(
                "destination.exportBatchSize",
                "must be 1-10 (SiteWise takes at most 10 entries per request)",
            ));
        }
        config
            .processing
            .compile()
            .map_err(|(f, r)| ConfigError::new(format!("processing.{f}"), r))?;
        Ok(config)
    }
}
