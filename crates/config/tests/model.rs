//! Property tests: the store against a plain JSON model, and the log against the live tree.

use lichen_config::{Change, ConfigStore};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const KEYS: [&str; 4] = ["a", "b", "c", "_r"];

fn key(runtime: bool) -> impl Strategy<Value = String> {
    let n = if runtime { KEYS.len() } else { KEYS.len() - 1 };
    (0..n, any::<bool>()).prop_map(|(i, upper)| {
        if upper {
            KEYS[i].to_uppercase()
        } else {
            KEYS[i].to_owned()
        }
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i8>().prop_map(Value::from),
        "[xy]{0,2}".prop_map(Value::from),
        prop::collection::vec(any::<i8>(), 0..3).prop_map(|v| json!(v)),
    ]
}

/// Objects never hold two keys that differ only in case (the store would fold them into one).
fn value(runtime: bool) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 12, 3, move |inner| {
        prop::collection::vec((key(runtime), inner), 0..3).prop_map(|pairs| {
            let mut map = Map::new();
            for (k, v) in pairs {
                if !map.keys().any(|e: &String| e.eq_ignore_ascii_case(&k)) {
                    map.insert(k, v);
                }
            }
            Value::Object(map)
        })
    })
}

fn path(runtime: bool, min: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(key(runtime), min..3)
}

#[derive(Debug, Clone)]
enum Op {
    Set(Vec<String>, Value),
    Merge(Vec<String>, Value),
    Remove(Vec<String>),
}

fn op(runtime: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        (path(runtime, 1), value(runtime)).prop_map(|(p, v)| Op::Set(p, v)),
        (path(runtime, 0), value(runtime)).prop_map(|(p, v)| {
            // Only an object can be merged at the root.
            let v = if p.is_empty() && !v.is_object() {
                json!({"b": v})
            } else {
                v
            };
            Op::Merge(p, v)
        }),
        path(runtime, 1).prop_map(Op::Remove),
    ]
}

fn find_key(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
}

/// Walks to the parent of `path`'s last key, turning non-objects into objects and creating
/// missing keys with the given spelling.
fn parent_mut<'a>(model: &'a mut Value, path: &[String]) -> &'a mut Map<String, Value> {
    let mut node = model;
    for segment in path {
        if !node.is_object() {
            *node = json!({});
        }
        let map = node.as_object_mut().unwrap();
        let k = find_key(map, segment).unwrap_or_else(|| {
            map.insert(segment.clone(), json!({}));
            segment.clone()
        });
        node = map.get_mut(&k).unwrap();
    }
    if !node.is_object() {
        *node = json!({});
    }
    node.as_object_mut().unwrap()
}

/// A replaced object keeps the spelling of keys that already existed (first spelling wins).
fn respell(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => Value::Object(
            new.iter()
                .map(|(k, v)| match find_key(old, k) {
                    Some(existing) => (existing.clone(), respell(&old[&existing], v)),
                    None => (k.clone(), v.clone()),
                })
                .collect(),
        ),
        (_, new) => new.clone(),
    }
}

fn merge_into(target: &mut Value, update: &Value) {
    match update {
        Value::Object(update) => {
            if !target.is_object() {
                *target = json!({});
            }
            let map = target.as_object_mut().unwrap();
            for (k, v) in update {
                let existing = find_key(map, k).unwrap_or_else(|| {
                    map.insert(k.clone(), Value::Null);
                    k.clone()
                });
                let slot = map.get_mut(&existing).unwrap();
                if v.is_object() && !slot.is_object() {
                    *slot = json!({});
                }
                merge_into(slot, v);
            }
        }
        other => *target = other.clone(),
    }
}

/// The model: what the store must hold when every write is newer than all before it.
fn model_apply(model: &mut Value, op: &Op) {
    match op {
        Op::Set(path, value) => {
            let (last, parents) = path.split_last().unwrap();
            let map = parent_mut(model, parents);
            match find_key(map, last) {
                Some(k) => {
                    let replaced = respell(&map[&k], value);
                    map.insert(k, replaced);
                }
                None => {
                    map.insert(last.clone(), value.clone());
                }
            }
        }
        Op::Merge(path, value) => match path.split_last() {
            None => merge_into(model, value),
            Some((last, parents)) => {
                let map = parent_mut(model, parents);
                let k = find_key(map, last).unwrap_or_else(|| {
                    map.insert(last.clone(), Value::Null);
                    last.clone()
                });
                let slot = map.get_mut(&k).unwrap();
                if value.is_object() && !slot.is_object() {
                    *slot = json!({});
                }
                merge_into(slot, value);
            }
        },
        Op::Remove(path) => {
            let (last, parents) = path.split_last().unwrap();
            let mut node = &mut *model;
            for segment in parents {
                let Some(k) = node.as_object().and_then(|m| find_key(m, segment)) else {
                    return;
                };
                node = node.as_object_mut().unwrap().get_mut(&k).unwrap();
            }
            if let Some(map) = node.as_object_mut()
                && let Some(k) = find_key(map, last)
            {
                map.shift_remove(&k);
            }
        }
    }
}

fn to_change(op: &Op, ts: i64) -> Change {
    match op.clone() {
        Op::Set(path, value) => Change::Set { path, value, ts },
        Op::Merge(path, value) => Change::Merge { path, value, ts },
        Op::Remove(path) => Change::Remove { path, ts },
    }
}

fn run(store: &ConfigStore, change: Change) {
    fn refs(p: &[String]) -> Vec<&str> {
        p.iter().map(String::as_str).collect()
    }
    match change {
        Change::Set { path, value, ts } => {
            store.set(&refs(&path), value, ts).unwrap();
        }
        Change::Merge { path, value, ts } => {
            store.merge(&refs(&path), value, ts).unwrap();
        }
        Change::Remove { path, ts } => {
            store.remove(&refs(&path), ts).unwrap();
        }
    }
}

/// The persisted part with every node's timestamp, in a comparable form.
fn persisted_with_timestamps(store: &ConfigStore) -> Vec<(Vec<String>, Value, i64)> {
    fn walk(store: &ConfigStore, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value, i64)>) {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        let value = store.get(&refs).unwrap();
        let ts = store.timestamp(&refs).unwrap();
        match &value {
            Value::Object(map) => {
                out.push((path.clone(), json!({}), ts));
                for k in map.keys().filter(|k| !k.starts_with('_')) {
                    path.push(k.clone());
                    walk(store, path, out);
                    path.pop();
                }
            }
            leaf => out.push((path.clone(), leaf.clone(), ts)),
        }
    }
    let mut out = Vec::new();
    walk(store, &mut Vec::new(), &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// With increasing timestamps every change applies: the store equals the JSON model,
    /// live and after reopening.
    #[test]
    fn store_matches_model_with_increasing_timestamps(
        ops in prop::collection::vec(op(false), 1..25),
        batch_size in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::open(dir.path()).unwrap();
        let mut model = json!({});
        let mut ts = 1;
        for chunk in ops.chunks(batch_size) {
            let mut changes = Vec::new();
            for op in chunk {
                model_apply(&mut model, op);
                changes.push(to_change(op, ts));
                ts += 1;
            }
            if changes.len() == 1 {
                run(&store, changes.pop().unwrap());
            } else {
                store.apply(changes).unwrap();
            }
            prop_assert_eq!(&store.snapshot(), &model);
        }
        drop(store);
        let reopened = ConfigStore::open(dir.path()).unwrap();
        prop_assert_eq!(&reopened.snapshot(), &model);
    }

    /// With arbitrary (colliding, decreasing) timestamps and runtime keys: reopening, and
    /// compacting then reopening, rebuild exactly the persisted part and every timestamp.
    #[test]
    fn log_replay_rebuilds_the_persisted_tree(
        ops in prop::collection::vec((op(true), 0i64..12), 1..30),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::open(dir.path()).unwrap();
        for (op, ts) in &ops {
            run(&store, to_change(op, *ts));
        }
        let live = persisted_with_timestamps(&store);
        drop(store);
        let reopened = ConfigStore::open(dir.path()).unwrap();
        prop_assert_eq!(&persisted_with_timestamps(&reopened), &live);
        reopened.compact().unwrap();
        drop(reopened);
        let compacted = ConfigStore::open(dir.path()).unwrap();
        prop_assert_eq!(&persisted_with_timestamps(&compacted), &live);
    }

    /// Guards: a leaf that survives a change never ends with an older timestamp or, when the
    /// change was older than the leaf, a different value.
    #[test]
    fn guarded_writes_never_clobber_newer_leaves(
        ops in prop::collection::vec((op(false), 0i64..12), 1..30),
    ) {
        let store = ConfigStore::in_memory();
        let leaves = |store: &ConfigStore| -> std::collections::HashMap<Vec<String>, (Value, i64)> {
            persisted_with_timestamps(store)
                .into_iter()
                .filter(|(_, value, _)| !value.is_object())
                .map(|(path, value, ts)| (path.iter().map(|s| s.to_lowercase()).collect(), (value, ts)))
                .collect()
        };
        let mut before = leaves(&store);
        for (op, ts) in &ops {
            run(&store, to_change(op, *ts));
            let after = leaves(&store);
            for (path, (value, old_ts)) in &before {
                if *old_ts > *ts {
                    prop_assert_eq!(after.get(path), Some(&(value.clone(), *old_ts)), "{:?} clobbered by {:?}@{}", path, op, ts);
                } else if let Some((_, new_ts)) = after.get(path) {
                    prop_assert!(new_ts >= old_ts);
                }
            }
            before = after;
        }
    }
}
