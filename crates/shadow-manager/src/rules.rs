//! The document rules the manager applies: names, the update patch (merge, `null` deletes,
//! version check, metadata, size and nesting limits, clientToken), delta, and the response
//! shapes of the shadow topics and IPC.
//!
//! A stored document is `{"state": {"desired"?, "reported"?}, "metadata": {"desired"?,
//! "reported"?}, "version": N, "timestamp": T}`.

use serde_json::{Map, Value, json};

/// Nesting allowed under `state` (AWS: "maximum is 6").
pub const MAX_DEPTH: usize = 6;
pub const MAX_CLIENT_TOKEN: usize = 64;

fn name_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

pub fn valid_thing_name(s: &str) -> bool {
    (1..=128).contains(&s.len()) && name_chars(s)
}

/// A named shadow's name ("" is the classic shadow and is checked by the caller).
pub fn valid_shadow_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && name_chars(s)
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

pub fn not_found(shadow: &str) -> ShadowError {
    let name = if shadow.is_empty() { "Classic" } else { shadow };
    ShadowError::new(404, format!("No shadow exists with name: '{name}'"))
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
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

/// Reads and checks an update request body.
pub fn parse_update(body: &[u8]) -> Result<(Value, Option<String>, Option<u64>), ShadowError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| ShadowError::new(400, "Invalid JSON"))?;
    let Value::Object(req) = v else {
        return Err(ShadowError::new(400, "Invalid JSON"));
    };
    let token = match req.get("clientToken") {
        None => None,
        Some(Value::String(t)) if t.len() <= MAX_CLIENT_TOKEN => Some(t.clone()),
        Some(_) => return Err(ShadowError::new(400, "Invalid clientToken")),
    };
    let fail = |code, msg: &str| ShadowError::new(code, msg).with_token(token.as_deref());
    let version = match req.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| fail(400, "Invalid version"))?),
    };
    let state = match req.get("state") {
        None => return Err(fail(400, "Missing required node: state")),
        Some(s @ Value::Object(_)) | Some(s @ Value::Null) => s.clone(),
        Some(_) => return Err(fail(400, "State node must be an object")),
    };
    let mut kept = Map::new();
    if let Value::Object(m) = &state {
        for (k, v) in m {
            match k.as_str() {
                "desired" | "reported" => {
                    if !(v.is_object() || v.is_null()) {
                        let which = if k == "desired" {
                            "Desired"
                        } else {
                            "Reported"
                        };
                        return Err(fail(400, &format!("{which} node must be an object")));
                    }
                    if has_null_in_array(v) {
                        return Err(fail(400, "State contains an invalid node"));
                    }
                    kept.insert(k.clone(), v.clone());
                }
                // A client's delta and metadata are discarded.
                "delta" => {}
                _ => return Err(fail(400, "State contains an invalid node")),
            }
        }
    }
    let state = Value::Object(kept);
    if depth(&state) > MAX_DEPTH + 1 {
        return Err(fail(
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ));
    }
    Ok((state, token, version))
}

fn has_null_in_array(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().any(|e| e.is_null() || has_null_in_array(e)),
        Value::Object(m) => m.values().any(has_null_in_array),
        _ => false,
    }
}

/// Merges `patch` into `target`: objects merge, `null` deletes, the rest replaces.
pub fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let slot = target.entry(k.clone()).or_insert_with(|| json!({}));
                if !slot.is_object() {
                    *slot = json!({});
                }
                if let Value::Object(t) = slot {
                    merge(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// The metadata of a patch: every leaf replaced by `{timestamp}`; `null` leaves stay `null`.
fn metadata_of(patch: &Value, now: u64) -> Value {
    match patch {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), metadata_of(v, now)))
                .collect(),
        ),
        Value::Null => Value::Null,
        _ => json!({"timestamp": now}),
    }
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The desired leaves that differ from reported, recursively.
pub fn delta(desired: Option<&Value>, reported: Option<&Value>) -> Option<Map<String, Value>> {
    let Some(Value::Object(d)) = desired else {
        return None;
    };
    let empty = Map::new();
    let r = match reported {
        Some(Value::Object(r)) => r,
        _ => &empty,
    };
    let mut out = Map::new();
    for (k, dv) in d {
        match (dv, r.get(k)) {
            (Value::Object(_), rv @ Some(Value::Object(_))) => {
                if let Some(sub) = delta(Some(dv), rv) {
                    out.insert(k.clone(), Value::Object(sub));
                }
            }
            (dv, Some(rv)) if numbers_equal(dv, rv) => {}
            (dv, _) => {
                out.insert(k.clone(), dv.clone());
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Metadata restricted to the keys of `shape`.
fn metadata_for(shape: &Map<String, Value>, metadata: Option<&Value>) -> Value {
    let md = metadata.and_then(Value::as_object);
    Value::Object(
        shape
            .iter()
            .map(|(k, v)| {
                let m = md.and_then(|m| m.get(k));
                let out = match v {
                    Value::Object(sub) => metadata_for(sub, m),
                    _ => m.cloned().unwrap_or(Value::Null),
                };
                (k.clone(), out)
            })
            .collect(),
    )
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
    let (patch, token, version) = parse_update(body)?;
    let fail = |code, msg: &str| ShadowError::new(code, msg).with_token(token.as_deref());
    let current_version = current
        .and_then(|d| d.get("version"))
        .and_then(Value::as_u64);
    if let Some(v) = version
        && v != current_version.unwrap_or(last_version)
    {
        return Err(fail(409, "Version conflict"));
    }
    let mut doc = current
        .cloned()
        .unwrap_or_else(|| json!({"state": {}, "metadata": {}}));
    let previous = current.cloned();
    for section in ["desired", "reported"] {
        let Some(p) = patch.get(section) else {
            continue;
        };
        let Value::Object(d) = &mut doc else {
            unreachable!("a document is an object")
        };
        let mut state = d.remove("state").unwrap_or_else(|| json!({}));
        let mut meta = d.remove("metadata").unwrap_or_else(|| json!({}));
        let (Some(state_m), Some(meta_root)) = (state.as_object_mut(), meta.as_object_mut()) else {
            return Err(fail(500, "Internal service failure"));
        };
        let state = state_m;
        match p {
            Value::Null => {
                state.remove(section);
                meta_root.remove(section);
            }
            Value::Object(pm) => {
                let s = state.entry(section).or_insert_with(|| json!({}));
                if let Value::Object(s) = s {
                    merge(s, pm);
                }
                let m = meta_root.entry(section).or_insert_with(|| json!({}));
                if let (Value::Object(m), Value::Object(pmeta)) = (m, metadata_of(p, now)) {
                    merge_metadata(m, &pmeta);
                }
            }
            _ => {}
        }
        let (state, meta) = (
            Value::Object(state.clone()),
            Value::Object(meta_root.clone()),
        );
        doc["state"] = state;
        doc["metadata"] = meta;
    }
    // Metadata only mirrors what the state still holds.
    let state = doc["state"].clone();
    for section in ["desired", "reported"] {
        match state.get(section).and_then(Value::as_object) {
            Some(s) => {
                let pruned = metadata_for(s, doc["metadata"].get(section));
                doc["metadata"][section] = pruned;
            }
            None => {
                if let Some(m) = doc["metadata"].as_object_mut() {
                    m.remove(section);
                }
            }
        }
    }
    let size = ["desired", "reported"]
        .iter()
        .filter_map(|s| state.get(*s))
        .map(|v| serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0))
        .sum::<usize>();
    if size > size_limit {
        return Err(fail(413, "The payload exceeds the maximum size allowed"));
    }
    let new_version = current_version.unwrap_or(last_version) + 1;
    doc["version"] = json!(new_version);
    doc["timestamp"] = json!(now);
    let mut accepted = json!({
        "state": patch,
        "metadata": metadata_of(&patch, now),
        "version": new_version,
        "timestamp": now,
    });
    if let Some(t) = &token {
        accepted["clientToken"] = json!(t);
    }
    let delta = delta(state.get("desired"), state.get("reported")).map(|d| {
        let d = Value::Object(d);
        let mut v = json!({
            "version": new_version,
            "timestamp": now,
            "state": d.clone(),
            "metadata": metadata_for(d.as_object().expect("object"), doc["metadata"].get("desired")),
        });
        if let Some(t) = &token {
            v["clientToken"] = json!(t);
        }
        v
    });
    let mut documents = json!({"current": doc.clone(), "timestamp": now});
    if let Some(p) = previous {
        documents["previous"] = p;
    }
    if let Some(t) = &token {
        documents["clientToken"] = json!(t);
    }
    // The stored copies carry no timestamp inside documents/current: AWS shows state, metadata, version.
    for k in ["previous", "current"] {
        if let Some(d) = documents.get_mut(k).and_then(Value::as_object_mut) {
            d.remove("timestamp");
        }
    }
    Ok(Updated {
        document: doc,
        accepted,
        delta,
        documents,
    })
}

fn merge_metadata(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) if !p.contains_key("timestamp") || p.len() > 1 => {
                let slot = target.entry(k.clone()).or_insert_with(|| json!({}));
                if slot.get("timestamp").is_some() && slot.as_object().is_some_and(|o| o.len() == 1)
                {
                    *slot = json!({});
                }
                if let Value::Object(t) = slot {
                    merge_metadata(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// The `/get/accepted` (and IPC GetThingShadow) payload of a stored document.
pub fn get_response(doc: &Value, client_token: Option<&str>) -> Value {
    let state = &doc["state"];
    let mut s = Map::new();
    for k in ["desired", "reported"] {
        if let Some(v) = state.get(k) {
            s.insert(k.to_string(), v.clone());
        }
    }
    if let Some(d) = delta(state.get("desired"), state.get("reported")) {
        s.insert("delta".into(), Value::Object(d));
    }
    let mut v = json!({
        "state": s,
        "metadata": doc.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "version": doc["version"],
        "timestamp": doc["timestamp"],
    });
    if let Some(t) = client_token {
        v["clientToken"] = json!(t);
    }
    v
}

/// The clientToken of a get/delete body (which may be empty).
pub fn token_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("clientToken")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(cur: Option<&Value>, body: Value) -> Result<Updated, ShadowError> {
        apply_update(cur, 0, body.to_string().as_bytes(), 100, 8192)
    }

    #[test]
    fn merge_null_delete_delta_and_version() {
        let u = upd(None, json!({"state": {"desired": {"a": 1, "b": {"c": 2}}}})).unwrap();
        assert_eq!(u.document["version"], 1);
        assert_eq!(
            u.delta.as_ref().unwrap()["state"],
            json!({"a": 1, "b": {"c": 2}})
        );
        let u2 = upd(
            Some(&u.document),
            json!({"state": {"reported": {"a": 1.0, "b": {"c": 2}}, "desired": {"b": null}}, "version": 1}),
        )
        .unwrap();
        assert_eq!(
            u2.document["state"],
            json!({"desired": {"a": 1}, "reported": {"a": 1.0, "b": {"c": 2}}})
        );
        assert!(u2.delta.is_none());
        assert_eq!(
            u2.document["metadata"]["desired"],
            json!({"a": {"timestamp": 100}})
        );
        let e = upd(Some(&u2.document), json!({"state": {}, "version": 1})).unwrap_err();
        assert_eq!(e.code, 409);
        let e = upd(
            None,
            json!({"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}),
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        let big = "x".repeat(9000);
        assert_eq!(
            upd(None, json!({"state": {"reported": {"a": big}}}))
                .unwrap_err()
                .code,
            413
        );
        assert_eq!(upd(None, json!({"nostate": 1})).unwrap_err().code, 400);
    }
}
