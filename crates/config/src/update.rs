//! Deployment configuration updates (RESET then MERGE) on plain JSON, and JSON pointers.

use serde_json::{Map, Value};

use crate::ConfigError;
use crate::tree::fold;

/// Splits an RFC 6901 JSON pointer into keys: `""` → `[]`, `"/a~1b/c~0"` → `["a/b", "c~"]`.
///
/// ```
/// # use lichen_config::pointer_to_path;
/// assert_eq!(pointer_to_path("/a~1b/c~0").unwrap(), vec!["a/b", "c~"]);
/// assert!(pointer_to_path("a").is_err());
/// ```
pub fn pointer_to_path(pointer: &str) -> Result<Vec<String>, ConfigError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(ConfigError::InvalidPointer {
            pointer: pointer.to_owned(),
            reason: "it does not start with '/'",
        });
    };
    rest.split('/')
        .map(|token| unescape(token).ok_or_else(|| invalid_escape(pointer)))
        .collect()
}

fn invalid_escape(pointer: &str) -> ConfigError {
    ConfigError::InvalidPointer {
        pointer: pointer.to_owned(),
        reason: "'~' is not followed by '0' or '1'",
    }
}

fn unescape(token: &str) -> Option<String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The configuration a component ends up with after a deployment's `configurationUpdate`
/// (Greengrass fleet configuration semantics):
///
/// 1. RESET: if any pointer is `""`, everything is reset (other pointers are ignored); otherwise
///    each pointer's node is removed. Pointers through arrays are not supported and are ignored,
///    as are malformed pointers (logged).
/// 2. Recipe defaults are merged *under* the result: a key missing from it takes the default,
///    nested objects are filled recursively, present values are never clobbered. A reset key
///    that has a default is thereby restored to it.
/// 3. MERGE: a recursive object merge on top; scalars, arrays and `null` replace; a type change
///    between object and non-object replaces the node.
///
/// Keys match case-insensitively and keep the spelling already present.
///
/// ```
/// # use lichen_config::apply_configuration_update;
/// # use serde_json::json;
/// let current = json!({"a": 5, "b": {"c": 1, "d": 2}});
/// let defaults = json!({"a": 1, "b": {"c": 0}});
/// let out = apply_configuration_update(&current, &defaults, &["/a".into()], Some(&json!({"b": {"d": 3}})));
/// assert_eq!(out, json!({"a": 1, "b": {"c": 1, "d": 3}}));
/// ```
pub fn apply_configuration_update(
    current: &Value,
    defaults: &Value,
    reset: &[String],
    merge: Option<&Value>,
) -> Value {
    let mut result = match current {
        Value::Object(_) => current.clone(),
        _ => Value::Object(Map::new()),
    };
    if reset.iter().any(String::is_empty) {
        result = Value::Object(Map::new());
    } else {
        for pointer in reset {
            match pointer_to_path(pointer) {
                Ok(path) => remove_path(&mut result, &path),
                Err(e) => tracing::warn!(error = %e, "ignoring RESET pointer"),
            }
        }
    }
    if let (Value::Object(target), Value::Object(defaults)) = (&mut result, defaults) {
        fill_under(target, defaults);
    }
    match merge {
        Some(merge @ Value::Object(_)) => merge_over(&mut result, merge),
        Some(other) => tracing::warn!(merge = %other, "ignoring a MERGE that is not an object"),
        None => {}
    }
    result
}

fn find_key(map: &Map<String, Value>, key: &str) -> Option<String> {
    if map.contains_key(key) {
        return Some(key.to_owned());
    }
    let folded = fold(key);
    map.keys().find(|k| fold(k) == folded).cloned()
}

fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for segment in parents {
        let Value::Object(map) = node else { return };
        let Some(key) = find_key(map, segment) else {
            return;
        };
        node = map.get_mut(&key).expect("key just found");
    }
    if let Value::Object(map) = node
        && let Some(key) = find_key(map, last)
    {
        map.shift_remove(&key);
    }
}

fn fill_under(target: &mut Map<String, Value>, defaults: &Map<String, Value>) {
    for (key, default) in defaults {
        match find_key(target, key) {
            None => {
                target.insert(key.clone(), default.clone());
            }
            Some(existing) => {
                if let (Some(Value::Object(inner)), Value::Object(default)) =
                    (target.get_mut(&existing), default)
                {
                    fill_under(inner, default);
                }
            }
        }
    }
}

fn merge_over(target: &mut Value, update: &Value) {
    match (target, update) {
        (Value::Object(target), Value::Object(update)) => {
            for (key, value) in update {
                match find_key(target, key) {
                    Some(existing) => {
                        merge_over(target.get_mut(&existing).expect("key just found"), value)
                    }
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, update) => *target = update.clone(),
    }
}
