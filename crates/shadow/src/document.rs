//! The stored shadow document: state sections, their metadata, version; delta and comparisons.

use crate::ShadowError;
use serde_json::{Map, Number, Value, json};

/// A JSON object, the shape of the `desired` and `reported` sections.
pub type Object = Map<String, Value>;

/// One live shadow document.
///
/// A section is `None` when it is absent (never written, cleared with `null`, or every key in
/// it deleted). Metadata mirrors each section: every leaf becomes `{"timestamp": <epoch s>}`
/// holding when that leaf was last written, and an array becomes an array of its elements'
/// metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    pub desired: Option<Object>,
    pub reported: Option<Object>,
    pub metadata_desired: Option<Object>,
    pub metadata_reported: Option<Object>,
    /// 1 for a new document; +1 for each accepted update.
    pub version: u64,
}

/// What the store holds for one (thing, shadow) pair.
// One value lives per request, briefly: boxing the document would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Stored {
    /// Never written.
    #[default]
    Missing,
    /// Deleted; the version it had is kept, and the next update creates `version + 1`
    /// (AWS IoT does not reset a shadow's version on delete).
    Deleted {
        version: u64,
    },
    Present(Document),
}

impl Stored {
    /// The version a request's `version` is checked against: the live document's, the one a
    /// delete left, or 0 for a shadow never written.
    pub fn version(&self) -> u64 {
        match self {
            Stored::Missing => 0,
            Stored::Deleted { version } => *version,
            Stored::Present(doc) => doc.version,
        }
    }

    pub fn document(&self) -> Option<&Document> {
        match self {
            Stored::Present(doc) => Some(doc),
            _ => None,
        }
    }
}

impl Document {
    /// The desired leaves that differ from reported (see [`delta`]); `None` when they agree.
    pub fn delta(&self) -> Option<Object> {
        let desired = self.desired.as_ref()?;
        let delta = delta(desired, self.reported.as_ref());
        (!delta.is_empty()).then_some(delta)
    }

    /// The metadata of the delta's leaves, taken from the desired section's metadata.
    pub fn delta_metadata(&self, delta: &Object) -> Object {
        let empty = Object::new();
        select_metadata(delta, self.metadata_desired.as_ref().unwrap_or(&empty))
    }

    /// Bytes counted against the size limit: the compact JSON of `desired` plus that of
    /// `reported` (metadata is not counted).
    pub fn state_size(&self) -> usize {
        let len = |s: &Option<Object>| {
            s.as_ref()
                .map(|o| serde_json::to_string(o).map(|t| t.len()).unwrap_or(0))
                .unwrap_or(0)
        };
        len(&self.desired) + len(&self.reported)
    }

    /// `{"state":{desired?,reported?},"metadata":{desired?,reported?},"version":N}`: the form
    /// to store, and the `previous`/`current` of an `/update/documents` message.
    pub fn to_value(&self) -> Value {
        json!({
            "state": sections(&self.desired, &self.reported),
            "metadata": sections(&self.metadata_desired, &self.metadata_reported),
            "version": self.version,
        })
    }

    /// Reads back what [`Document::to_value`] wrote.
    pub fn from_value(value: &Value) -> Result<Document, ShadowError> {
        let bad = ShadowError::internal;
        let obj = value.as_object().ok_or_else(bad)?;
        let section = |parent: &str, key: &str| -> Result<Option<Object>, ShadowError> {
            match obj.get(parent).and_then(|p| p.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(o)) => Ok(Some(o.clone())),
                Some(_) => Err(bad()),
            }
        };
        Ok(Document {
            desired: section("state", "desired")?,
            reported: section("state", "reported")?,
            metadata_desired: section("metadata", "desired")?,
            metadata_reported: section("metadata", "reported")?,
            version: obj.get("version").and_then(Value::as_u64).ok_or_else(bad)?,
        })
    }

    /// The `/get/accepted` payload (and the REST GetThingShadow body): `{"state":{desired?,
    /// reported?, delta?},"metadata":{desired?,reported?},"version","timestamp","clientToken"?}`.
    pub fn get_response(&self, client_token: Option<&str>, now: u64) -> Value {
        let mut state = sections(&self.desired, &self.reported);
        if let Some(delta) = self.delta() {
            state.insert("delta".into(), Value::Object(delta));
        }
        let mut out = Object::new();
        out.insert("state".into(), Value::Object(state));
        out.insert(
            "metadata".into(),
            Value::Object(sections(&self.metadata_desired, &self.metadata_reported)),
        );
        out.insert("version".into(), json!(self.version));
        out.insert("timestamp".into(), json!(now));
        if let Some(token) = client_token {
            out.insert("clientToken".into(), json!(token));
        }
        Value::Object(out)
    }

    /// The `/update/delta` payload, when desired differs from reported:
    /// `{"state":<delta>,"metadata":<delta's metadata>,"version","timestamp","clientToken"?}`.
    pub fn delta_message(&self, client_token: Option<&str>, now: u64) -> Option<Value> {
        let delta = self.delta()?;
        let mut out = Object::new();
        out.insert(
            "metadata".into(),
            Value::Object(self.delta_metadata(&delta)),
        );
        out.insert("state".into(), Value::Object(delta));
        out.insert("version".into(), json!(self.version));
        out.insert("timestamp".into(), json!(now));
        if let Some(token) = client_token {
            out.insert("clientToken".into(), json!(token));
        }
        Some(Value::Object(out))
    }
}

fn sections(desired: &Option<Object>, reported: &Option<Object>) -> Object {
    let mut out = Object::new();
    if let Some(d) = desired {
        out.insert("desired".into(), Value::Object(d.clone()));
    }
    if let Some(r) = reported {
        out.insert("reported".into(), Value::Object(r.clone()));
    }
    out
}

/// The delta of `desired` against `reported`: every desired key missing from reported or
/// whose value differs, recursing into objects on both sides so that only differing leaves
/// remain; an object that ends up empty is left out. Arrays and scalars are compared whole
/// ([`json_eq`]: numbers by value, so `1` equals `1.0`). Reported-only keys never appear.
pub fn delta(desired: &Object, reported: Option<&Object>) -> Object {
    let mut out = Object::new();
    for (key, want) in desired {
        let have = reported.and_then(|r| r.get(key));
        match (want, have) {
            (Value::Object(w), Some(Value::Object(h))) => {
                let sub = delta(w, Some(h));
                if !sub.is_empty() {
                    out.insert(key.clone(), Value::Object(sub));
                }
            }
            (_, Some(h)) if json_eq(want, h) => {}
            _ => {
                out.insert(key.clone(), want.clone());
            }
        }
    }
    out
}

fn select_metadata(delta: &Object, meta: &Object) -> Object {
    let mut out = Object::new();
    for (key, value) in delta {
        let m = meta.get(key);
        let picked = match (value, m) {
            (Value::Object(sub), Some(Value::Object(msub))) => {
                Value::Object(select_metadata(sub, msub))
            }
            (_, Some(m)) => m.clone(),
            (_, None) => Value::Object(Object::new()),
        };
        out.insert(key.clone(), picked);
    }
    out
}

/// JSON equality with numbers compared by value (`1 == 1.0`), as the shadow service compares
/// desired and reported leaves.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_eq(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn number_eq(x: &Number, y: &Number) -> bool {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return a == b;
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Nesting depth: 0 for a scalar, 1 + the deepest child for an object or array.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
