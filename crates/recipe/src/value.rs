//! Helpers over `serde_json::Value` trees: case-insensitive field lookup, scalar coercion, YAML
//! conversion, canonical (key-sorted) JSON.

use serde_json::{Map, Value};

use crate::RecipeError;

/// Joins a field path and a key: `join("Manifests[0]", "Lifecycle")` = `Manifests[0].Lifecycle`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Finds `key` in `obj` ignoring ASCII case (the Java nucleus reads recipes with Jackson's
/// case-insensitive properties). Returns the key as spelled in the file, for error paths.
pub(crate) fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<(&'a str, &'a Value)> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(k, v)| (k.as_str(), v))
}

/// Like [`get_ci`] but treats an explicit `null` as absent.
pub(crate) fn get_ci_present<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Option<(&'a str, &'a Value)> {
    get_ci(obj, key).filter(|(_, v)| !v.is_null())
}

/// Short description of a JSON value's type, for "expected X, found Y" messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Text of a scalar the way Jackson coerces it into a `String` field (numbers and booleans
/// become their text); `None` for null, lists and maps.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string field: scalars are coerced to text, anything else is an error naming the field.
pub(crate) fn expect_string(v: &Value, origin: &str, field: &str) -> Result<String, RecipeError> {
    scalar_text(v).ok_or_else(|| {
        RecipeError::new(
            origin,
            field,
            format!("expected a string, found {}", type_name(v)),
        )
    })
}

/// A map field; `what` describes the expected content for the error message.
pub(crate) fn expect_object<'a>(
    v: &'a Value,
    origin: &str,
    field: &str,
    what: &str,
) -> Result<&'a Map<String, Value>, RecipeError> {
    v.as_object().ok_or_else(|| {
        RecipeError::new(
            origin,
            field,
            format!("expected {what}, found {}", type_name(v)),
        )
    })
}

/// Converts a parsed YAML document into a JSON tree. Mapping keys that are scalars become their
/// text (Jackson reads YAML keys as strings); YAML merge keys (`<<`) are applied first.
pub(crate) fn yaml_to_json(
    mut v: serde_yaml_ng::Value,
    origin: &str,
) -> Result<Value, RecipeError> {
    v.apply_merge().map_err(|e| {
        RecipeError::new(
            origin,
            "",
            format!("invalid YAML merge key (<<): {e}; a merge key must name a mapping"),
        )
    })?;
    convert_yaml(v, origin, "")
}

fn convert_yaml(v: serde_yaml_ng::Value, origin: &str, path: &str) -> Result<Value, RecipeError> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    // .inf and .nan have no JSON number; keep their YAML text.
                    .unwrap_or_else(|| Value::String(n.to_string()))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| convert_yaml(item, origin, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".to_string(),
                    other => {
                        return Err(RecipeError::new(
                            origin,
                            path,
                            format!(
                                "a mapping key must be a string, found {}",
                                yaml_type_name(&other)
                            ),
                        ));
                    }
                };
                let child = join(path, &key);
                out.insert(key, convert_yaml(val, origin, &child)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => convert_yaml(t.value, origin, path)?,
    })
}

fn yaml_type_name(v: &serde_yaml_ng::Value) -> &'static str {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::Sequence(_) => "a list",
        Y::Mapping(_) => "a mapping",
        Y::Tagged(_) => "a tagged value",
        _ => "a scalar",
    }
}

/// Copy of `v` with every map's keys in sorted order (the map type keeps insertion order).
pub(crate) fn sorted_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), sorted_keys(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}
