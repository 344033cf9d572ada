//! The three-way merge a full sync makes (§2.6): the last synced document is the common
//! ancestor; `local` and `cloud` are what each side holds now. Per leaf:
//! * the same on both sides: kept;
//! * changed on one side only (a removal is a change): that side's value;
//! * changed on both sides to different values: both objects ⇒ merged key by key below; else
//!   the section's owner wins — **`reported`: the device (local) wins; `desired`: the cloud
//!   wins** (Greengrass' rule: the device owns what it reports, the cloud what is asked of it).

use serde_json::{Map, Value};

/// Who wins a leaf both sides changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Local,
    Cloud,
}

/// Merges one value. `None` = absent.
pub fn merge3(
    base: Option<&Value>,
    local: Option<&Value>,
    cloud: Option<&Value>,
    winner: Winner,
) -> Option<Value> {
    if local == cloud {
        return local.cloned();
    }
    if local == base {
        return cloud.cloned();
    }
    if cloud == base {
        return local.cloned();
    }
    match (local, cloud) {
        (Some(Value::Object(l)), Some(Value::Object(c))) => {
            let empty = Map::new();
            let b = match base {
                Some(Value::Object(b)) => b,
                _ => &empty,
            };
            let mut out = Map::new();
            let keys = l.keys().chain(c.keys().filter(|k| !l.contains_key(*k)));
            for k in keys {
                if let Some(v) = merge3(b.get(k), l.get(k), c.get(k), winner) {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        _ => match winner {
            Winner::Local => local.cloned(),
            Winner::Cloud => cloud.cloned(),
        },
    }
}

/// Merges two states (`{"desired"?, "reported"?}`) against their ancestor: `reported` with the
/// device winning, `desired` with the cloud winning. An emptied section disappears.
pub fn merge_states(base: Option<&Value>, local: &Value, cloud: &Value) -> Value {
    let mut out = Map::new();
    for (section, winner) in [("desired", Winner::Cloud), ("reported", Winner::Local)] {
        let m = merge3(
            base.and_then(|b| b.get(section)),
            local.get(section),
            cloud.get(section),
            winner,
        );
        if let Some(v) = m
            && !v.as_object().is_some_and(Map::is_empty)
        {
            out.insert(section.to_string(), v);
        }
    }
    Value::Object(out)
}

/// The update patch that turns state `from` into state `to`: changed leaves, `null` for removed
/// keys, `null` for a removed section.
pub fn patch(from: &Value, to: &Value) -> Value {
    let mut out = Map::new();
    for section in ["desired", "reported"] {
        match (from.get(section), to.get(section)) {
            (Some(_), None) => {
                out.insert(section.to_string(), Value::Null);
            }
            (f, Some(t)) => {
                let empty = Value::Object(Map::new());
                if let Some(p) = diff(f.unwrap_or(&empty), t) {
                    out.insert(section.to_string(), p);
                }
            }
            (None, None) => {}
        }
    }
    Value::Object(out)
}

fn diff(from: &Value, to: &Value) -> Option<Value> {
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            let mut out = Map::new();
            for (k, tv) in t {
                match f.get(k) {
                    Some(fv) => {
                        if let Some(d) = diff(fv, tv) {
                            out.insert(k.clone(), d);
                        }
                    }
                    None => {
                        out.insert(k.clone(), tv.clone());
                    }
                }
            }
            for k in f.keys().filter(|k| !t.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        // An object replaced by a scalar (or the reverse) must first be cleared: a patch
        // cannot do both, so send the new value whole (objects merge into nothing).
        _ if from == to => None,
        _ => Some(to.clone()),
    }
}

/// The state part (`{"desired"?, "reported"?}`) of a document.
pub fn state_of(doc: &Value) -> Value {
    let mut out = Map::new();
    if let Some(s) = doc.get("state").and_then(Value::as_object) {
        for k in ["desired", "reported"] {
            if let Some(v) = s.get(k) {
                out.insert(k.to_string(), v.clone());
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (base, local, cloud) → merged, for each section's owner.
    #[test]
    fn three_way_merge_table() {
        let cases = [
            // Different fields changed on each side: both kept.
            (
                json!({"reported": {"a": 1, "b": 1}}),
                json!({"reported": {"a": 2, "b": 1}}),
                json!({"reported": {"a": 1, "b": 3}}),
                json!({"reported": {"a": 2, "b": 3}}),
            ),
            // Same reported field changed on both: the device wins.
            (
                json!({"reported": {"a": 1}}),
                json!({"reported": {"a": 2}}),
                json!({"reported": {"a": 3}}),
                json!({"reported": {"a": 2}}),
            ),
            // Same desired field changed on both: the cloud wins.
            (
                json!({"desired": {"a": 1}}),
                json!({"desired": {"a": 2}}),
                json!({"desired": {"a": 3}}),
                json!({"desired": {"a": 3}}),
            ),
            // A removal on one side, untouched on the other: removed.
            (
                json!({"desired": {"a": 1, "b": 1}}),
                json!({"desired": {"a": 1}}),
                json!({"desired": {"a": 1, "b": 1}}),
                json!({"desired": {"a": 1}}),
            ),
            // Removed locally, changed in the cloud (desired): the cloud's change wins.
            (
                json!({"desired": {"a": 1}}),
                json!({}),
                json!({"desired": {"a": 5}}),
                json!({"desired": {"a": 5}}),
            ),
            // Nested objects merge key by key.
            (
                json!({"reported": {"o": {"x": 1, "y": 1}}}),
                json!({"reported": {"o": {"x": 2, "y": 1}}}),
                json!({"reported": {"o": {"x": 1, "y": 2, "z": 3}}}),
                json!({"reported": {"o": {"x": 2, "y": 2, "z": 3}}}),
            ),
            // Arrays are leaves.
            (
                json!({"reported": {"l": [1]}}),
                json!({"reported": {"l": [1, 2]}}),
                json!({"reported": {"l": [3]}}),
                json!({"reported": {"l": [1, 2]}}),
            ),
            // No common ancestor: both sides' keys; conflicts by owner.
            (
                Value::Null,
                json!({"reported": {"a": 1}, "desired": {"d": 1}}),
                json!({"reported": {"a": 2, "b": 2}, "desired": {"d": 2}}),
                json!({"desired": {"d": 2}, "reported": {"a": 1, "b": 2}}),
            ),
        ];
        for (base, local, cloud, want) in cases {
            let b = (!base.is_null()).then_some(&base);
            assert_eq!(
                merge_states(b, &local, &cloud),
                want,
                "{base} {local} {cloud}"
            );
        }
    }

    #[test]
    fn patch_turns_one_state_into_another() {
        let from = json!({"desired": {"a": 1, "b": {"c": 1, "d": 1}}, "reported": {"x": 1}});
        let to = json!({"desired": {"a": 1, "b": {"c": 2}, "e": [1]}});
        let p = patch(&from, &to);
        assert_eq!(
            p,
            json!({"desired": {"b": {"c": 2, "d": null}, "e": [1]}, "reported": null})
        );
    }
}
