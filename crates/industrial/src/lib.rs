//! Industrial data collection: the work of a SiteWise Edge gateway.
//!
//! Duty: collect property values from Modbus TCP devices ([`modbus`]) and OPC UA servers
//! (`opcua`), compute asset-model transforms and metrics over them on the device
//! ([`process`], [`expr`]), and append every value, collected or computed, to a stream of the
//! in-process stream store as the SiteWise `PutAssetPropertyValueEntry` JSON that the stream
//! manager's IoT SiteWise exporter sends ([`writer`]). [`IndustrialCollector`] is the
//! `lichen.IndustrialCollector` built-in service.
//!
//! Architecture invariant: a source never goes silent: while its device is unreachable or a
//! read fails it emits `Quality::Bad` samples (value `None`) for its aliases.
//! Architecture invariant: samples reach the store only through [`writer::Writer`], which
//! holds the store slot's read lock for each append, so the stream manager is never stopped
//! under an append; a batch that cannot be written yet is kept and retried, never dropped,
//! unless the stream itself refuses it (full with RejectNewData), which is logged.
//! Architecture invariant: expressions are parsed once and evaluated without I/O, loops or
//! panics.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<lichen_streams::Store>) {
//! use lichen_industrial::{IndustrialCollector, StoreSlot};
//! let slot: StoreSlot = std::sync::Arc::new(tokio::sync::RwLock::new(Some(store)));
//! let collector = IndustrialCollector::new(slot, "/var/lib/lichen/work/lichen.IndustrialCollector".into());
//! let config = serde_json::json!({"sources": [{"name": "plc", "type": "ModbusTcp",
//!     "endpoint": {"host": "127.0.0.1", "port": 502},
//!     "points": [{"alias": "/line1/temp", "kind": "holding", "address": 0, "scale": 0.1}]}]});
//! collector.apply(Some(&config)).await.unwrap();
//! # }
//! ```

mod collector;
pub mod config;
pub mod expr;
pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;
pub mod opcua_worker;
pub mod process;
pub mod sample;
pub mod units;
pub mod writer;

pub use collector::{IndustrialCollector, SecretLookup};
pub use config::{CollectorConfig, ConfigError};
pub use opcua_worker::{OpcUaRunner, OpcUaWorker, WorkerIdentity};
pub use sample::{Quality, Sample, SampleSender, Value};
pub use tokio_util::sync::CancellationToken;
pub use writer::StoreSlot;

/// The built-in component's name.
pub const SERVICE_NAME: &str = "lichen.IndustrialCollector";
