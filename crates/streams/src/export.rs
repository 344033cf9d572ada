//! Export definitions (spec §1.5/§1.7): parsed, validated and stored with the stream, each with
//! its own checkpoint. The exporters that upload data are not part of this crate yet; the
//! checkpoint is the contract they will advance (at-least-once: upload first, then checkpoint).

use crate::model::DefinitionError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The destination family of an export configuration, named by its wire key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportKind {
    Kinesis,
    IotAnalytics,
    IotSitewise,
    S3TaskExecutor,
    Http,
}

impl ExportKind {
    /// Every kind with the key the SDK emits for it (`IotSitewise` keeps the SDK's capital I).
    pub const ALL: [(ExportKind, &'static str); 5] = [
        (ExportKind::Http, "http"),
        (ExportKind::IotAnalytics, "iotAnalytics"),
        (ExportKind::Kinesis, "kinesis"),
        (ExportKind::IotSitewise, "IotSitewise"),
        (ExportKind::S3TaskExecutor, "s3TaskExecutor"),
    ];

    /// Maps a wire key to a kind, accepting both spellings of the SiteWise key.
    pub fn from_wire_key(key: &str) -> Option<ExportKind> {
        if key == "iotSitewise" {
            return Some(ExportKind::IotSitewise);
        }
        Self::ALL
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(kind, _)| *kind)
    }

    pub fn wire_key(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, key)| *key)
            .unwrap_or("http")
    }

    /// Allowed `batchSize` range, or None where the field does not exist (S3).
    fn batch_size_range(self) -> Option<(u64, u64)> {
        match self {
            ExportKind::Kinesis | ExportKind::Http => Some((1, 500)),
            ExportKind::IotAnalytics => Some((1, 100)),
            ExportKind::IotSitewise => Some((1, 10)),
            ExportKind::S3TaskExecutor => None,
        }
    }

    fn required_fields(self) -> &'static [&'static str] {
        match self {
            ExportKind::Kinesis => &["kinesisStreamName"],
            ExportKind::IotAnalytics => &["iotChannel"],
            ExportKind::Http => &["uri"],
            ExportKind::IotSitewise | ExportKind::S3TaskExecutor => &[],
        }
    }
}

/// One export configuration. The common fields are typed; destination-specific fields are kept
/// under their wire keys so that Describe returns exactly what the client sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportConfig {
    pub kind: ExportKind,
    pub identifier: String,
    pub priority: Option<u64>,
    pub disabled: bool,
    pub batch_size: Option<u64>,
    pub batch_interval_millis: Option<u64>,
    pub start_sequence_number: Option<u64>,
    /// Destination-specific fields (`kinesisStreamName`, `uri`, `statusConfig`, …) by wire key.
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// Progress of one export, persisted with File streams (spec §1.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportCheckpoint {
    pub identifier: String,
    /// Sequence number of the last record the destination acknowledged; -1 before any.
    pub last_exported_sequence_number: i64,
    /// Epoch milliseconds of the last successful export; 0 before any.
    pub last_export_time: i64,
    pub exported_bytes_from_stream: u64,
    pub exported_messages_count: u64,
    pub error_message: Option<String>,
}

impl ExportCheckpoint {
    pub(crate) fn fresh(config: &ExportConfig) -> Self {
        ExportCheckpoint {
            identifier: config.identifier.clone(),
            last_exported_sequence_number: config
                .start_sequence_number
                .map(|s| s as i64 - 1)
                .unwrap_or(-1),
            last_export_time: 0,
            exported_bytes_from_stream: 0,
            exported_messages_count: 0,
            error_message: None,
        }
    }
}

/// Checks every configuration of a stream: identifiers unique and well-formed, ranges as the SDK
/// documents, required destination fields present.
pub(crate) fn validate_exports(configs: &[ExportConfig]) -> Result<(), DefinitionError> {
    let mut seen = std::collections::BTreeSet::new();
    for c in configs {
        let path = format!(
            "definition.exportDefinition.{}[{}]",
            c.kind.wire_key(),
            c.identifier
        );
        crate::model::validate_name(&format!("{path}.identifier"), &c.identifier)?;
        if !seen.insert(c.identifier.as_str()) {
            return Err(DefinitionError::new(
                format!("{path}.identifier"),
                "export identifiers must be unique within a stream",
            ));
        }
        if let Some(p) = c.priority
            && !(1..=10).contains(&p)
        {
            return Err(DefinitionError::new(
                format!("{path}.priority"),
                "must be between 1 and 10",
            ));
        }
        match (c.kind.batch_size_range(), c.batch_size) {
            (Some((lo, hi)), Some(b)) if !(lo..=hi).contains(&b) => {
                return Err(DefinitionError::new(
                    format!("{path}.batchSize"),
                    format!("must be between {lo} and {hi}"),
                ));
            }
            _ => {}
        }
        if let Some(i) = c.batch_interval_millis
            && !(60_000..=9_223_372_036_854).contains(&i)
        {
            return Err(DefinitionError::new(
                format!("{path}.batchIntervalMillis"),
                "must be between 60000 and 9223372036854",
            ));
        }
        for field in c.kind.required_fields() {
            if !c.settings.contains_key(*field) {
                return Err(DefinitionError::new(
                    format!("{path}.{field}"),
                    "is required",
                ));
            }
        }
        if let Some(serde_json::Value::String(prefix)) = c.settings.get("iotMsgIdPrefix")
            && prefix.chars().count() > 32
        {
            return Err(DefinitionError::new(
                format!("{path}.iotMsgIdPrefix"),
                "must be at most 32 characters",
            ));
        }
        if let Some(size) = c.settings.get("sizeThresholdForMultipartUploadBytes")
            && size.as_u64().is_none_or(|s| s < 5_242_880)
        {
            return Err(DefinitionError::new(
                format!("{path}.sizeThresholdForMultipartUploadBytes"),
                "must be at least 5242880",
            ));
        }
    }
    Ok(())
}

/// Carries checkpoints across a definition update: the export list is replaced wholesale, a kept
/// identifier keeps its progress, a new one starts fresh, an omitted one is dropped (spec §1.6).
pub(crate) fn carry_checkpoints(
    configs: &[ExportConfig],
    old: &[ExportCheckpoint],
) -> Vec<ExportCheckpoint> {
    configs
        .iter()
        .map(|c| {
            old.iter()
                .find(|cp| cp.identifier == c.identifier)
                .cloned()
                .unwrap_or_else(|| ExportCheckpoint::fresh(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinesis(id: &str) -> ExportConfig {
        let mut settings = BTreeMap::new();
        settings.insert("kinesisStreamName".into(), serde_json::json!("ks"));
        ExportConfig {
            kind: ExportKind::Kinesis,
            identifier: id.into(),
            priority: None,
            disabled: false,
            batch_size: Some(500),
            batch_interval_millis: None,
            start_sequence_number: None,
            settings,
        }
    }

    #[test]
    fn validation_names_the_field() {
        validate_exports(&[kinesis("a"), kinesis("b")]).unwrap();
        let e = validate_exports(&[kinesis("a"), kinesis("a")]).unwrap_err();
        assert!(e.field.ends_with(".identifier"), "{e}");
        let mut k = kinesis("a");
        k.batch_size = Some(501);
        assert!(
            validate_exports(&[k])
                .unwrap_err()
                .field
                .ends_with("batchSize")
        );
        let mut k = kinesis("a");
        k.settings.clear();
        assert!(
            validate_exports(&[k])
                .unwrap_err()
                .field
                .ends_with("kinesisStreamName")
        );
        let mut k = kinesis("a");
        k.priority = Some(11);
        assert!(
            validate_exports(&[k])
                .unwrap_err()
                .field
                .ends_with("priority")
        );
    }

    #[test]
    fn checkpoints_survive_update_by_identifier() {
        let mut kept = ExportCheckpoint::fresh(&kinesis("a"));
        kept.last_exported_sequence_number = 41;
        let dropped = ExportCheckpoint::fresh(&kinesis("gone"));
        let out = carry_checkpoints(&[kinesis("a"), kinesis("new")], &[kept.clone(), dropped]);
        assert_eq!(out, vec![kept, ExportCheckpoint::fresh(&kinesis("new"))]);
    }

    #[test]
    fn sitewise_accepts_both_spellings() {
        assert_eq!(
            ExportKind::from_wire_key("iotSitewise"),
            Some(ExportKind::IotSitewise)
        );
        assert_eq!(
            ExportKind::from_wire_key("IotSitewise"),
            Some(ExportKind::IotSitewise)
        );
        assert_eq!(ExportKind::IotSitewise.wire_key(), "IotSitewise");
        assert_eq!(ExportKind::from_wire_key("nope"), None);
    }
}
