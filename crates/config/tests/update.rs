//! Deployment configuration updates (RESET then recipe defaults then MERGE) and JSON pointers.

use lichen_config::{ConfigError, ConfigStore, apply_configuration_update, pointer_to_path};
use serde_json::{Value, json};

fn update(current: Value, defaults: Value, reset: &[&str], merge: Option<Value>) -> Value {
    let reset: Vec<String> = reset.iter().map(|s| s.to_string()).collect();
    apply_configuration_update(&current, &defaults, &reset, merge.as_ref())
}

#[test]
fn pointers_follow_rfc_6901() {
    assert_eq!(pointer_to_path("").unwrap(), Vec::<String>::new());
    assert_eq!(pointer_to_path("/").unwrap(), vec![""]);
    assert_eq!(pointer_to_path("/a~1b/c~0").unwrap(), vec!["a/b", "c~"]);
    assert_eq!(pointer_to_path("/~01").unwrap(), vec!["~1"]);
    assert_eq!(pointer_to_path("/a//b").unwrap(), vec!["a", "", "b"]);
    for bad in ["a", "a/b", "/a~", "/a~2"] {
        let err = pointer_to_path(bad).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidPointer { .. }), "{bad}");
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn no_update_fills_missing_defaults_only() {
    let out = update(
        json!({"a": 5, "nested": {"x": 1}}),
        json!({"a": 1, "b": 2, "nested": {"x": 0, "y": 0}}),
        &[],
        None,
    );
    assert_eq!(out, json!({"a": 5, "nested": {"x": 1, "y": 0}, "b": 2}));
}

#[test]
fn reset_everything_returns_to_defaults_and_ignores_other_pointers() {
    let out = update(
        json!({"a": 5, "extra": true}),
        json!({"a": 1, "n": {"k": "v"}}),
        &["/a", ""],
        None,
    );
    assert_eq!(out, json!({"a": 1, "n": {"k": "v"}}));
}

#[test]
fn reset_pointer_with_default_restores_it() {
    let out = update(
        json!({"a": 5, "obj": {"x": 9, "added": 1}, "keep": 3}),
        json!({"a": 1, "obj": {"x": 0, "y": 0}}),
        &["/a", "/obj"],
        None,
    );
    assert_eq!(out, json!({"keep": 3, "a": 1, "obj": {"x": 0, "y": 0}}));
    // A nested pointer restores just that key.
    let out = update(
        json!({"obj": {"x": 9, "added": 1}}),
        json!({"obj": {"x": 0}}),
        &["/obj/x"],
        None,
    );
    assert_eq!(out, json!({"obj": {"added": 1, "x": 0}}));
}

#[test]
fn reset_pointer_without_default_removes_it() {
    let out = update(
        json!({"a": 5, "b": {"c": 1, "d": 2}, "e~/f": 1}),
        json!({}),
        &["/a", "/b/c", "/e~0~1f", "/missing/deeper"],
        None,
    );
    assert_eq!(out, json!({"b": {"d": 2}}));
}

#[test]
fn reset_pointers_into_arrays_and_malformed_pointers_are_ignored() {
    let current = json!({"list": [1, 2, 3], "a": 1});
    let out = update(
        current.clone(),
        json!({}),
        &["/list/0", "not-a-pointer"],
        None,
    );
    assert_eq!(out, current);
}

#[test]
fn merge_is_recursive_replaces_scalars_lists_and_types_and_allows_null() {
    let out = update(
        json!({"a": {"x": 1, "y": 2}, "list": [1, 2], "s": "v", "obj": {"k": 1}, "leaf": 3}),
        json!({}),
        &[],
        Some(
            json!({"a": {"y": 20, "z": 30}, "list": [9], "s": null, "obj": "now scalar", "leaf": {"now": "object"}}),
        ),
    );
    assert_eq!(
        out,
        json!({"a": {"x": 1, "y": 20, "z": 30}, "list": [9], "s": null, "obj": "now scalar", "leaf": {"now": "object"}})
    );
}

#[test]
fn reset_runs_before_merge_and_defaults_sit_under_the_merge() {
    let out = update(
        json!({"a": 5, "b": 6}),
        json!({"a": 1, "b": 2, "c": 3}),
        &["/a", "/b"],
        Some(json!({"b": 7})),
    );
    assert_eq!(out, json!({"a": 1, "b": 7, "c": 3}));
}

#[test]
fn keys_match_case_insensitively_and_keep_the_existing_spelling() {
    let out = update(
        json!({"MqttPort": 8883, "Nested": {"Key": 1}}),
        json!({"mqttport": 1, "nested": {"key": 0, "other": 2}}),
        &["/NESTED/KEY"],
        Some(json!({"MQTTPORT": 443})),
    );
    // The reset key was removed and restored from the defaults, in their spelling.
    assert_eq!(
        out,
        json!({"MqttPort": 443, "Nested": {"key": 0, "other": 2}})
    );
}

#[test]
fn non_object_inputs_are_tolerated() {
    assert_eq!(
        update(Value::Null, json!({"a": 1}), &[], None),
        json!({"a": 1})
    );
    assert_eq!(
        update(json!({"a": 2}), Value::Null, &[], Some(json!([1]))),
        json!({"a": 2}),
        "a MERGE that is not an object is ignored"
    );
}

/// The intended use with the store: compute the result, then replace the subtree with the
/// deployment timestamp; subscribers see only what actually changed.
#[test]
fn result_applies_to_the_store_with_precise_events() {
    let store = ConfigStore::in_memory();
    let path = ["services", "c", "configuration"];
    store.merge(&path, json!({"a": 1, "b": 2}), 1).unwrap();
    store.merge(&path, json!({"b": 5}), 100).unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    store.subscribe(
        &path,
        Box::new(move |e: &lichen_config::ConfigEvent| sink.lock().unwrap().push(e.path.clone())),
    );
    let current = store.get(&path).unwrap();
    let next = apply_configuration_update(
        &current,
        &json!({"a": 1, "b": 2}),
        &["/b".into()],
        Some(&json!({"c": 3})),
    );
    assert!(store.set(&path, next, 200).unwrap());
    assert_eq!(store.get(&path), Some(json!({"a": 1, "b": 2, "c": 3})));
    let events = events.lock().unwrap();
    let changed: Vec<&str> = events.iter().map(|p| p[3].as_str()).collect();
    assert_eq!(changed, vec!["b", "c"]);
}
