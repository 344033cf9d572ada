//! The document rules, from `lichen_shadow` (the same crate the fleet's shadow service applies),
//! adapted to how this manager stores a document: the JSON of [`Document::to_value`] plus the
//! `timestamp` of its last write. A refused request keeps the request's `clientToken` so that
//! `/rejected` can echo it.

use lichen_shadow::{Document, Limits, Stored, UpdateRequest};
use serde_json::{Value, json};

pub fn valid_thing_name(s: &str) -> bool {
    lichen_shadow::validate_thing_name(s).is_ok()
}

/// A named shadow's name ("" is the classic shadow and is checked by the caller).
pub fn valid_shadow_name(s: &str) -> bool {
    lichen_shadow::validate_shadow_name(s).is_ok()
}

/// A refused request, as the shadow service reports it (`code` is an HTTP status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ShadowError {
    pub code: u16,
    pub message: String,
    pub client_token: Option<String>,
}

impl ShadowError {
    pub fn new(code: u16, message: impl Into<String>) -> ShadowError {
        ShadowError {
            code,
            message: message.into(),
            client_token: None,
        }
    }

    pub fn with_token(mut self, token: Option<&str>) -> ShadowError {
        self.client_token = token.map(str::to_string);
        self
    }

    /// The `/rejected` payload.
    pub fn to_payload(&self, now: u64) -> Value {
        let mut v = json!({"code": self.code, "message": self.message, "timestamp": now});
        if let Some(t) = &self.client_token {
            v["clientToken"] = json!(t);
        }
        v
    }
}

impl From<lichen_shadow::ShadowError> for ShadowError {
    fn from(e: lichen_shadow::ShadowError) -> ShadowError {
        ShadowError::new(e.code.status(), e.message)
    }
}

pub fn not_found(thing: &str, shadow: &str) -> ShadowError {
    lichen_shadow::ShadowError::no_shadow(thing, (!shadow.is_empty()).then_some(shadow)).into()
}

/// What an accepted update produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    /// The new stored document.
    pub document: Value,
    /// The `/update/accepted` payload (the request's state and its metadata only).
    pub accepted: Value,
    /// The `/update/delta` payload, when desired differs from reported.
    pub delta: Option<Value>,
    /// The `/update/documents` payload.
    pub documents: Value,
}

fn stored(current: Option<&Value>, last_version: u64) -> Result<Stored, ShadowError> {
    Ok(match current {
        Some(v) => Stored::Present(Document::from_value(v)?),
        None if last_version > 0 => Stored::Deleted {
            version: last_version,
        },
        None => Stored::Missing,
    })
}

/// Applies an update to the current document (`None`: none, or deleted) whose last version is
/// `last_version` (kept across deletes). `size_limit` bounds desired + reported in bytes.
pub fn apply_update(
    current: Option<&Value>,
    last_version: u64,
    body: &[u8],
    now: u64,
    size_limit: usize,
) -> Result<Updated, ShadowError> {
    let token = lichen_shadow::peek_client_token(body);
    let run = || -> Result<Updated, ShadowError> {
        let limits = Limits {
            max_state_bytes: size_limit,
            ..Limits::default()
        };
        let request = UpdateRequest::parse(body, &limits)?;
        let out =
            lichen_shadow::apply_update(&stored(current, last_version)?, &request, &limits, now)?;
        let mut document = out.document.to_value();
        document["timestamp"] = json!(now);
        Ok(Updated {
            document,
            accepted: out.accepted,
            delta: out.delta,
            documents: out.documents,
        })
    };
    run().map_err(|e| e.with_token(token.as_deref()))
}

/// The `/get/accepted` (and IPC GetThingShadow) payload of a stored document.
pub fn get_response(doc: &Value, client_token: Option<&str>) -> Value {
    match Document::from_value(doc) {
        Ok(d) => d.get_response(client_token, crate::manager::now_secs()),
        Err(_) => doc.clone(),
    }
}

/// The clientToken of a request body (which may be empty or not JSON).
pub fn token_of(body: &[u8]) -> Option<String> {
    lichen_shadow::peek_client_token(body)
}
