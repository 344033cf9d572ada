//! AWS IoT Device Shadow document semantics, shared by the core's shadow manager and the
//! fleet's shadow service so that both apply exactly the same rules.
//!
//! # Documents
//! A shadow is identified by a thing name (1–128 of `[a-zA-Z0-9:_-]`) and, for a named shadow,
//! a shadow name (1–64 of the same); the classic shadow has no name. Its [`Document`] holds the
//! `desired` and `reported` sections, their metadata (a `{"timestamp": epoch-seconds}` per leaf,
//! the time that leaf was last written) and a version.
//!
//! # Update
//! [`UpdateRequest::parse`] validates `{"state": {"desired"?, "reported"?}, "clientToken"?,
//! "version"?}` with the service's messages (`Invalid JSON`, `Missing required node: state`,
//! `Desired node must be an object`, `JSON contains too many levels of nesting; maximum is 6`,
//! …); a client-sent `state.delta` and `metadata` are discarded. [`apply_update`] then:
//! - checks `version`, when given, against the current version ([`Stored::version`]) → 409;
//! - merges: objects recursively, a `null` value deletes its key, `"desired": null` clears the
//!   section, `"state": null` clears both, arrays replace whole, and a section left empty is
//!   removed;
//! - stamps every leaf the request wrote with `now` in the metadata;
//! - sets the version to the stored version + 1 (1 for a new shadow);
//! - refuses a result whose `desired` plus `reported` compact JSON exceeds
//!   [`Limits::max_state_bytes`] → 413.
//!
//! It returns the new document and the `/update/accepted`, `/update/delta` (only when desired
//! and reported differ) and `/update/documents` payloads.
//!
//! # Delete and versions
//! [`delete`] leaves [`Stored::Deleted`] with the deleted document's version: AWS IoT does not
//! reset a shadow's version on delete, so the next update creates `version + 1`, and a request
//! carrying `version` after a delete must name the deleted version. A never-written shadow has
//! version 0.
//!
//! # Delta
//! [`delta`]: every desired key missing from reported or whose value differs (numbers by value,
//! arrays and scalars whole, objects recursively leaf by leaf); reported-only keys never appear.
//!
//! Architecture invariant: pure — no I/O and no clock; the caller passes `now` (epoch seconds)
//! and stores what comes back, so that one store write per accepted request is the only effect.
//!
//! ```
//! use lichen_shadow::{Limits, Stored, UpdateRequest, apply_update};
//! let limits = Limits::default();
//! let req = UpdateRequest::parse(br#"{"state":{"desired":{"color":"red"}}}"#, &limits).unwrap();
//! let out = apply_update(&Stored::Missing, &req, &limits, 1_700_000_000).unwrap();
//! assert_eq!(out.document.version, 1);
//! assert_eq!(out.delta.unwrap()["state"]["color"], "red");
//! let req = UpdateRequest::parse(br#"{"state":{"reported":{"color":"red"}},"version":1}"#, &limits).unwrap();
//! let out = apply_update(&Stored::Present(out.document), &req, &limits, 1_700_000_001).unwrap();
//! assert_eq!(out.document.version, 2);
//! assert!(out.delta.is_none());
//! ```

mod document;
mod error;
mod names;
mod update;

pub use document::{Document, Object, Stored, delta, depth, json_eq};
pub use error::{ErrorCode, ShadowError};
pub use names::{
    DEPLOYMENT_SHADOW, MAX_SHADOW_NAME, MAX_THING_NAME, Operation, ShadowTopic, TopicKind,
    shadow_topic, shadow_topic_prefix, validate_shadow_name, validate_thing_name,
};
pub use update::{
    MAX_CLIENT_TOKEN_BYTES, UpdateOutcome, UpdateRequest, apply_update, delete, fresh_metadata,
    get, parse_token_request, peek_client_token,
};

/// The default size limit on a shadow's state (desired + reported), in bytes.
pub const DEFAULT_STATE_BYTES: usize = 8192;
/// The largest size limit the shadow manager may be configured with.
pub const MAX_STATE_BYTES: usize = 30720;
/// How deep `desired` and `reported` may nest (the section object itself is level 1).
pub const MAX_DEPTH: usize = 6;

/// Limits applied to updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of compact JSON `desired` + `reported` after an update.
    pub max_state_bytes: usize,
    /// Deepest nesting of a section in a request.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_state_bytes: DEFAULT_STATE_BYTES,
            max_depth: MAX_DEPTH,
        }
    }
}

impl Limits {
    /// Limits with a configured size (`shadowDocumentSizeLimitBytes`), which must be
    /// 1..=30720; the error says so.
    pub fn with_state_bytes(bytes: u64) -> Result<Limits, String> {
        if bytes == 0 || bytes > MAX_STATE_BYTES as u64 {
            return Err(format!(
                "shadowDocumentSizeLimitBytes is {bytes}: use a value from 1 to {MAX_STATE_BYTES}"
            ));
        }
        Ok(Limits {
            max_state_bytes: bytes as usize,
            ..Limits::default()
        })
    }
}

#[cfg(test)]
mod tests;
