//! Requests: parsing and validating update/get/delete payloads, and applying them to a stored
//! shadow.

use crate::document::{Document, Object, Stored, depth};
use crate::{Limits, ShadowError};
use serde_json::{Value, json};

/// Longest `clientToken`, in bytes.
pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;

/// A validated update request.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// The request's `state` as sent, less any `delta` (client-sent delta is discarded):
    /// `None` for `"state": null`, which clears both sections.
    pub state: Option<Object>,
    pub client_token: Option<String>,
    /// The optimistic lock: when present it must equal the shadow's current version.
    pub version: Option<u64>,
}

fn parse_object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, ShadowError> {
    let text = std::str::from_utf8(payload).map_err(|_| ShadowError::unsupported_encoding())?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(ShadowError::invalid_json()),
    }
}

fn client_token_field(obj: &Object) -> Result<Option<String>, ShadowError> {
    match obj.get("clientToken") {
        None => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_CLIENT_TOKEN_BYTES => Ok(Some(s.clone())),
        Some(_) => Err(ShadowError::invalid_client_token()),
    }
}

/// The `clientToken` of a request payload if it has a valid one, for echoing in a
/// `/rejected` response of a request that fails for another reason.
pub fn peek_client_token(payload: &[u8]) -> Option<String> {
    parse_object(payload)
        .ok()
        .and_then(|o| client_token_field(&o).ok().flatten())
}

/// Parses a get or delete request payload: empty, or an object whose only meaningful field
/// is `clientToken`; returns that token.
pub fn parse_token_request(payload: &[u8]) -> Result<Option<String>, ShadowError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    client_token_field(&parse_object(payload)?)
}

impl UpdateRequest {
    /// Parses and validates an update payload (`{"state":{...},"clientToken"?,"version"?}`)
    /// against the rules and messages of the Device Shadow service.
    pub fn parse(payload: &[u8], limits: &Limits) -> Result<UpdateRequest, ShadowError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err(ShadowError::invalid_json());
        }
        Self::from_object(parse_object(payload)?, limits)
    }

    /// As [`UpdateRequest::parse`], for a payload already decoded.
    pub fn from_value(value: Value, limits: &Limits) -> Result<UpdateRequest, ShadowError> {
        match value {
            Value::Object(o) => Self::from_object(o, limits),
            _ => Err(ShadowError::invalid_json()),
        }
    }

    fn from_object(mut obj: Object, limits: &Limits) -> Result<UpdateRequest, ShadowError> {
        let client_token = client_token_field(&obj)?;
        let version = match obj.get("version") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(ShadowError::invalid_version)?),
        };
        let state = match obj.remove("state") {
            None => return Err(ShadowError::missing_state()),
            Some(Value::Null) => None,
            Some(Value::Object(mut state)) => {
                state.remove("delta");
                for (key, value) in &state {
                    let (not_object, _) = match key.as_str() {
                        "desired" => (ShadowError::desired_not_object as fn() -> _, ()),
                        "reported" => (ShadowError::reported_not_object as fn() -> _, ()),
                        _ => return Err(ShadowError::invalid_node()),
                    };
                    match value {
                        Value::Null => {}
                        Value::Object(_) => {
                            if depth(value) > limits.max_depth {
                                return Err(ShadowError::too_deep(limits.max_depth));
                            }
                            if has_null_in_array(value) {
                                return Err(ShadowError::invalid_node());
                            }
                        }
                        _ => return Err(not_object()),
                    }
                }
                Some(state)
            }
            Some(_) => return Err(ShadowError::state_not_object()),
        };
        Ok(UpdateRequest {
            state,
            client_token,
            version,
        })
    }
}

fn has_null_in_array(value: &Value) -> bool {
    match value {
        Value::Object(o) => o.values().any(has_null_in_array),
        Value::Array(a) => a.iter().any(|v| v.is_null() || has_null_in_array(v)),
        _ => false,
    }
}

/// The result of an accepted update: the document to store and the three messages to send.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    /// The new document (store it as `Stored::Present`).
    pub document: Document,
    /// `/update/accepted` (and the REST UpdateThingShadow body).
    pub accepted: Value,
    /// `/update/delta`, when desired and reported differ after the update.
    pub delta: Option<Value>,
    /// `/update/documents`: `{previous?, current, timestamp, clientToken?}`; `previous` is
    /// omitted when the update created the document (also after a delete).
    pub documents: Value,
}

/// Applies an update to a stored shadow.
///
/// Checks the version lock (409), merges each section (objects recursively, a `null` value
/// deletes its key, `"desired": null` clears the section, arrays replace whole; a section left
/// empty is removed), stamps the metadata of every leaf the request wrote with `now`, bumps the
/// version, and checks the size limit (413) on the result.
pub fn apply_update(
    stored: &Stored,
    request: &UpdateRequest,
    limits: &Limits,
    now: u64,
) -> Result<UpdateOutcome, ShadowError> {
    if let Some(v) = request.version
        && v != stored.version()
    {
        return Err(ShadowError::version_conflict());
    }
    let previous = stored.document();
    let mut doc = previous.cloned().unwrap_or_default();
    match &request.state {
        None => {
            doc.desired = None;
            doc.reported = None;
            doc.metadata_desired = None;
            doc.metadata_reported = None;
        }
        Some(state) => {
            if let Some(patch) = state.get("desired") {
                apply_section(&mut doc.desired, &mut doc.metadata_desired, patch, now);
            }
            if let Some(patch) = state.get("reported") {
                apply_section(&mut doc.reported, &mut doc.metadata_reported, patch, now);
            }
        }
    }
    doc.version = stored.version() + 1;
    if doc.state_size() > limits.max_state_bytes {
        return Err(ShadowError::too_large());
    }
    let token = request.client_token.as_deref();

    let state_echo = request.state.clone().map_or(Value::Null, Value::Object);
    let mut accepted = Object::new();
    accepted.insert("state".into(), state_echo.clone());
    accepted.insert("metadata".into(), fresh_metadata(&state_echo, now));
    accepted.insert("version".into(), json!(doc.version));
    accepted.insert("timestamp".into(), json!(now));
    let mut documents = Object::new();
    if let Some(prev) = previous {
        documents.insert("previous".into(), prev.to_value());
    }
    documents.insert("current".into(), doc.to_value());
    documents.insert("timestamp".into(), json!(now));
    if let Some(t) = token {
        accepted.insert("clientToken".into(), json!(t));
        documents.insert("clientToken".into(), json!(t));
    }
    Ok(UpdateOutcome {
        delta: doc.delta_message(token, now),
        accepted: Value::Object(accepted),
        documents: Value::Object(documents),
        document: doc,
    })
}

fn apply_section(section: &mut Option<Object>, meta: &mut Option<Object>, patch: &Value, now: u64) {
    let Value::Object(patch) = patch else {
        // `null` (the only other value validation lets through) clears the section.
        *section = None;
        *meta = None;
        return;
    };
    let old_state = section.take().unwrap_or_default();
    let old_meta = meta.take().unwrap_or_default();
    let mut new_state = old_state.clone();
    merge_object(&mut new_state, patch);
    if new_state.is_empty() {
        return;
    }
    let new_meta = object_metadata(&new_state, Some(&old_state), Some(&old_meta), patch, now);
    *section = Some(new_state);
    *meta = Some(new_meta);
}

/// Merges `patch` into `target`: objects recursively, `null` deletes, anything else replaces.
fn merge_object(target: &mut Object, patch: &Object) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(sub) => match target.get_mut(key) {
                Some(Value::Object(existing)) => merge_object(existing, sub),
                _ => {
                    // A new object (or one replacing a scalar) is the patch less its nulls; an
                    // object made only of nulls adds nothing.
                    let mut fresh = Object::new();
                    merge_object(&mut fresh, sub);
                    if fresh.is_empty() && !sub.is_empty() && !target.contains_key(key) {
                        continue;
                    } else {
                        target.insert(key.clone(), Value::Object(fresh));
                    }
                }
            },
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// Metadata for the merged object `new`: leaves the patch wrote get `now`; untouched leaves
/// keep their old metadata. `old`/`old_meta` are the object's previous state and metadata, if
/// it was an object before.
fn object_metadata(
    new: &Object,
    old: Option<&Object>,
    old_meta: Option<&Object>,
    patch: &Object,
    now: u64,
) -> Object {
    let mut out = Object::new();
    for (key, value) in new {
        let old_child = old.and_then(|o| o.get(key));
        let old_meta_child = old_meta.and_then(|m| m.get(key));
        let meta = match (patch.get(key), value) {
            // Written by this patch and merged into an object that existed: recurse.
            (Some(Value::Object(p)), Value::Object(v)) => match old_child {
                Some(Value::Object(o)) => Value::Object(object_metadata(
                    v,
                    Some(o),
                    old_meta_child.and_then(Value::as_object),
                    p,
                    now,
                )),
                _ => fresh_metadata(value, now),
            },
            (Some(_), _) => fresh_metadata(value, now),
            // Untouched: keep what was there (rebuilt if the stored metadata lacks it).
            (None, _) => match old_meta_child {
                Some(m) => m.clone(),
                None => fresh_metadata(value, now),
            },
        };
        out.insert(key.clone(), meta);
    }
    out
}

/// Metadata of a value written at `now`: objects map their keys, arrays their elements, and
/// every other value (null included) becomes `{"timestamp": now}`.
pub fn fresh_metadata(value: &Value, now: u64) -> Value {
    match value {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), fresh_metadata(v, now)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| fresh_metadata(v, now)).collect()),
        _ => json!({ "timestamp": now }),
    }
}

/// A get: the `/get/accepted` payload, or 404 when the shadow does not exist.
pub fn get(
    stored: &Stored,
    thing: &str,
    shadow: Option<&str>,
    client_token: Option<&str>,
    now: u64,
) -> Result<Value, ShadowError> {
    match stored {
        Stored::Present(doc) => Ok(doc.get_response(client_token, now)),
        _ => Err(ShadowError::no_shadow(thing, shadow)),
    }
}

/// A delete: what to store next (`Stored::Deleted` keeping the version) and the
/// `/delete/accepted` payload `{"version","timestamp","clientToken"?}`; 404 when the shadow
/// does not exist.
pub fn delete(
    stored: &Stored,
    thing: &str,
    shadow: Option<&str>,
    client_token: Option<&str>,
    now: u64,
) -> Result<(Stored, Value), ShadowError> {
    let Stored::Present(doc) = stored else {
        return Err(ShadowError::no_shadow(thing, shadow));
    };
    let mut out = Object::new();
    out.insert("version".into(), json!(doc.version));
    out.insert("timestamp".into(), json!(now));
    if let Some(t) = client_token {
        out.insert("clientToken".into(), json!(t));
    }
    Ok((
        Stored::Deleted {
            version: doc.version,
        },
        Value::Object(out),
    ))
}
