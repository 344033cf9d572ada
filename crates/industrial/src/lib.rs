//! Industrial data collection: the work of a SiteWise Edge gateway.
//!
//! Duty: collect property values from Modbus TCP devices and OPC UA servers (`sources`),
//! compute asset-model transforms and metrics over them on the device, and hand every value,
//! collected or computed, to the stream store as SiteWise `PutAssetPropertyValueEntry` JSON.
//!
//! Architecture invariant: a source never goes silent: while its device is unreachable or a
//! read fails it emits `Quality::Bad` samples (value `None`) for its aliases.

pub mod sample;

pub use sample::{Quality, Sample, SampleSender, Value};
