//! The stream data model: definitions and their validation (spec §1.5), shared by the store and the
//! protocol server. Pure: no I/O.

use serde::{Deserialize, Serialize};

/// Default `maxSize`: 256 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 268_435_456;
/// Default `streamSegmentSize`: 16 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16_777_216;
pub(crate) const MIN_MAX_SIZE: u64 = 1024;
pub(crate) const MIN_SEGMENT_SIZE: u64 = 1024;
pub(crate) const MAX_SEGMENT_SIZE: u64 = 2_147_483_647;
pub(crate) const MIN_TTL_MILLIS: u64 = 60_000;
pub(crate) const MAX_TTL_MILLIS: u64 = 9_223_372_036_854;

/// What an append does when the stream has reached `maxSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrategyOnFull {
    /// The append is refused.
    RejectNewData,
    /// The oldest segments are deleted until the new record fits.
    OverwriteOldestData,
}

/// Where a stream keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persistence {
    /// Segment files under the store root; survives restarts.
    File,
    /// Process memory only; gone on restart.
    Memory,
}

/// A stream's definition, as created or last updated by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamDefinition {
    pub name: String,
    pub max_size: u64,
    pub segment_size: u64,
    pub time_to_live_millis: Option<u64>,
    pub strategy_on_full: StrategyOnFull,
    pub persistence: Persistence,
    pub flush_on_write: bool,
    /// The export configurations; exporters themselves are not part of this crate yet.
    #[serde(default)]
    pub exports: Vec<crate::export::ExportConfig>,
}

impl StreamDefinition {
    /// A definition with the SDK defaults for everything but the name and the strategy.
    pub fn new(name: impl Into<String>, strategy_on_full: StrategyOnFull) -> Self {
        StreamDefinition {
            name: name.into(),
            max_size: DEFAULT_MAX_SIZE,
            segment_size: DEFAULT_SEGMENT_SIZE,
            time_to_live_millis: None,
            strategy_on_full,
            persistence: Persistence::File,
            flush_on_write: false,
            exports: Vec::new(),
        }
    }

    /// Checks the ranges the SDK documents; the error names the offending field.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        validate_name("definition.name", &self.name)?;
        if self.max_size < MIN_MAX_SIZE || self.max_size > i64::MAX as u64 {
            return Err(DefinitionError::new(
                "definition.maxSize",
                format!("must be between {MIN_MAX_SIZE} and {}", i64::MAX),
            ));
        }
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(DefinitionError::new(
                "definition.streamSegmentSize",
                format!("must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE}"),
            ));
        }
        if let Some(ttl) = self.time_to_live_millis
            && !(MIN_TTL_MILLIS..=MAX_TTL_MILLIS).contains(&ttl)
        {
            return Err(DefinitionError::new(
                "definition.timeToLiveMillis",
                format!("must be between {MIN_TTL_MILLIS} and {MAX_TTL_MILLIS}"),
            ));
        }
        crate::export::validate_exports(&self.exports)?;
        Ok(())
    }

    /// The segment size actually used: a segment never needs to be larger than the whole stream.
    pub(crate) fn effective_segment_size(&self) -> u64 {
        self.segment_size.min(self.max_size)
    }
}

/// A definition field that is out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct DefinitionError {
    /// Wire path of the field, e.g. `definition.maxSize`.
    pub field: String,
    pub reason: String,
}

impl DefinitionError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DefinitionError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The SDK's identifier pattern `^[\w ,.\-_]*$` with a length of 1..=255 characters.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), DefinitionError> {
    let len = name.chars().count();
    if !(1..=255).contains(&len) {
        return Err(DefinitionError::new(
            field,
            "must be 1 to 255 characters long",
        ));
    }
    if !name.chars().all(is_name_char) {
        return Err(DefinitionError::new(
            field,
            "may contain only letters, digits, spaces, commas, periods, hyphens and underscores",
        ));
    }
    Ok(())
}

pub(crate) fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | ' ' | ',' | '.' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ranges_are_enforced() {
        let mut d = StreamDefinition::new("s1", StrategyOnFull::RejectNewData);
        d.validate().unwrap();
        d.max_size = 1023;
        assert_eq!(d.validate().unwrap_err().field, "definition.maxSize");
        d.max_size = 1024;
        d.time_to_live_millis = Some(59_999);
        assert_eq!(
            d.validate().unwrap_err().field,
            "definition.timeToLiveMillis"
        );
        d.time_to_live_millis = Some(60_000);
        d.segment_size = 2_147_483_648;
        assert_eq!(
            d.validate().unwrap_err().field,
            "definition.streamSegmentSize"
        );
    }

    #[test]
    fn names_follow_the_sdk_pattern() {
        assert!(validate_name("n", "a b,c.d-e_f").is_ok());
        assert!(validate_name("n", "ünïcode").is_ok());
        assert!(validate_name("n", "").is_err());
        assert!(validate_name("n", "a/b").is_err());
        assert!(validate_name("n", &"x".repeat(256)).is_err());
    }
}
