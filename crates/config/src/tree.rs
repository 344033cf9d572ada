//! The in-memory tree and the physical log entries that mutate it.
//!
//! Every mutation of the tree, live or during replay, goes through [`apply_entry`], so a replayed
//! log rebuilds exactly the persisted part of the live tree. Guards (timestamps) are decided by the
//! store before entries are produced; entries themselves are applied unconditionally.

use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::{ChangeKind, Timestamp};

/// Children keyed by their case-folded name; the value keeps the stored spelling.
pub(crate) type Children = IndexMap<String, (String, Node)>;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// Any JSON value that is not an object (arrays and null included).
    Leaf { value: Value, ts: Timestamp },
    /// A map of named children; `ts` is when the container was created or last replaced.
    Container { children: Children, ts: Timestamp },
}

/// Case folding used for every key comparison.
pub(crate) fn fold(key: &str) -> String {
    key.to_lowercase()
}

/// A key starting with `_` marks its subtree runtime-only: kept in memory, never persisted.
pub(crate) fn is_runtime_key(key: &str) -> bool {
    key.starts_with('_')
}

pub(crate) fn is_runtime_path<S: AsRef<str>>(path: &[S]) -> bool {
    path.iter().any(|s| is_runtime_key(s.as_ref()))
}

impl Node {
    pub(crate) fn empty(ts: Timestamp) -> Node {
        Node::Container {
            children: Children::new(),
            ts,
        }
    }

    pub(crate) fn ts(&self) -> Timestamp {
        match self {
            Node::Leaf { ts, .. } | Node::Container { ts, .. } => *ts,
        }
    }

    pub(crate) fn children(&self) -> Option<&Children> {
        match self {
            Node::Container { children, .. } => Some(children),
            Node::Leaf { .. } => None,
        }
    }

    fn children_mut(&mut self) -> Option<&mut Children> {
        match self {
            Node::Container { children, .. } => Some(children),
            Node::Leaf { .. } => None,
        }
    }

    /// The child named `key` (case-insensitive) with its stored spelling.
    pub(crate) fn child(&self, key: &str) -> Option<(&str, &Node)> {
        self.children()?
            .get(&fold(key))
            .map(|(stored, node)| (stored.as_str(), node))
    }

    pub(crate) fn find<S: AsRef<str>>(&self, path: &[S]) -> Option<&Node> {
        let mut node = self;
        for segment in path {
            node = node.child(segment.as_ref())?.1;
        }
        Some(node)
    }

    fn find_mut<S: AsRef<str>>(&mut self, path: &[S]) -> Option<&mut Node> {
        let mut node = self;
        for segment in path {
            node = &mut node.children_mut()?.get_mut(&fold(segment.as_ref()))?.1;
        }
        Some(node)
    }

    /// The subtree as JSON; containers become objects keyed by their stored spelling.
    pub(crate) fn to_json(&self, include_runtime: bool) -> Value {
        match self {
            Node::Leaf { value, .. } => value.clone(),
            Node::Container { children, .. } => {
                let mut map = Map::new();
                for (stored, child) in children.values() {
                    if include_runtime || !is_runtime_key(stored) {
                        map.insert(stored.clone(), child.to_json(include_runtime));
                    }
                }
                Value::Object(map)
            }
        }
    }

    /// The newest timestamp in this subtree; runtime children are skipped when asked, so that
    /// runtime bookkeeping never blocks configuration writes.
    pub(crate) fn newest_ts(&self, skip_runtime_children: bool) -> Timestamp {
        match self {
            Node::Leaf { ts, .. } => *ts,
            Node::Container { children, ts } => children
                .values()
                .filter(|(stored, _)| !(skip_runtime_children && is_runtime_key(stored)))
                .map(|(_, child)| child.newest_ts(skip_runtime_children))
                .fold(*ts, Timestamp::max),
        }
    }

    /// Number of entries a compaction writes for this subtree (persisted part, root excluded).
    pub(crate) fn persisted_entry_count(&self) -> u64 {
        match self {
            Node::Leaf { .. } => 0,
            Node::Container { children, .. } => children
                .values()
                .filter(|(stored, _)| !is_runtime_key(stored))
                .map(|(_, child)| 1 + child.persisted_entry_count())
                .sum(),
        }
    }

    /// Entries that rebuild the persisted part of this tree from an empty root, in pre-order.
    pub(crate) fn dump_entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        if self.ts() != 0 {
            out.push(Entry {
                path: Vec::new(),
                ts: self.ts(),
                op: Op::InteriorAdded,
            });
        }
        let mut path = Vec::new();
        dump_children(self, &mut path, &mut out);
        out
    }
}

fn dump_children(node: &Node, path: &mut Vec<String>, out: &mut Vec<Entry>) {
    let Some(children) = node.children() else {
        return;
    };
    for (stored, child) in children.values() {
        if is_runtime_key(stored) {
            continue;
        }
        path.push(stored.clone());
        match child {
            Node::Leaf { value, ts } => out.push(Entry {
                path: path.clone(),
                ts: *ts,
                op: Op::Changed(value.clone()),
            }),
            Node::Container { ts, .. } => {
                out.push(Entry {
                    path: path.clone(),
                    ts: *ts,
                    op: Op::InteriorAdded,
                });
                dump_children(child, path, out);
            }
        }
        path.pop();
    }
}

/// Builds a fresh subtree from JSON with one timestamp everywhere.
#[cfg(test)]
pub(crate) fn node_from_json(value: &Value, ts: Timestamp) -> Node {
    match value {
        Value::Object(map) => {
            let mut children = Children::new();
            for (k, v) in map {
                children.insert(fold(k), (k.clone(), node_from_json(v, ts)));
            }
            Node::Container { children, ts }
        }
        other => Node::Leaf {
            value: other.clone(),
            ts,
        },
    }
}

/// What a physical entry does at its path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// The node becomes a leaf holding this (non-object) value.
    Changed(Value),
    /// The node and its subtree are deleted.
    Removed,
    /// The node becomes a container: created empty if absent or a leaf, else its timestamp is set.
    InteriorAdded,
}

/// One physical change, in the Greengrass tlog vocabulary (`TS`, `TP`, `W`, `V`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub path: Vec<String>,
    pub ts: Timestamp,
    pub op: Op,
}

impl Entry {
    pub(crate) fn is_runtime(&self) -> bool {
        is_runtime_path(&self.path)
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("TS".into(), Value::from(self.ts));
        map.insert(
            "TP".into(),
            Value::Array(self.path.iter().cloned().map(Value::String).collect()),
        );
        let what = match &self.op {
            Op::Changed(_) => "changed",
            Op::Removed => "removed",
            Op::InteriorAdded => "interiorAdded",
        };
        map.insert("W".into(), Value::from(what));
        if let Op::Changed(v) = &self.op {
            map.insert("V".into(), v.clone());
        }
        Value::Object(map)
    }

    pub(crate) fn from_json(value: &Value) -> Result<Entry, &'static str> {
        let map = value.as_object().ok_or("entry is not an object")?;
        let ts = map
            .get("TS")
            .and_then(Value::as_i64)
            .ok_or("entry has no integer TS")?;
        let path = map
            .get("TP")
            .and_then(Value::as_array)
            .ok_or("entry has no TP array")?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or("entry TP holds a non-string")?;
        let op = match map.get("W").and_then(Value::as_str) {
            Some("changed") => {
                let v = map.get("V").ok_or("changed entry has no V")?;
                if v.is_object() {
                    return Err("changed entry holds an object");
                }
                Op::Changed(v.clone())
            }
            Some("removed") => Op::Removed,
            Some("interiorAdded") => Op::InteriorAdded,
            _ => return Err("entry has an unknown W"),
        };
        if path.is_empty() && op != Op::InteriorAdded {
            return Err("entry changes the root into a leaf or removes it");
        }
        Ok(Entry { path, ts, op })
    }
}

/// How to take back one step of [`apply_entry`], if the log write that follows it fails.
#[derive(Debug)]
pub(crate) enum UndoStep {
    /// Restore the slot `key` (folded) under the container at `parent` to `previous`
    /// (`None`: the key did not exist).
    Slot {
        parent: Vec<String>,
        key: String,
        previous: Option<(usize, String, Node)>,
    },
    /// Restore a container's timestamp.
    Ts { path: Vec<String>, ts: Timestamp },
}

/// Result of applying one entry.
pub(crate) struct Applied {
    /// Whether anything (value, shape or timestamp) changed.
    pub mutated: bool,
    /// The visible change, if any: a value or shape change, or a removal.
    pub event: Option<ChangeKind>,
}

/// Applies one entry unconditionally. Missing or leaf ancestors become containers stamped with the
/// entry's timestamp. Every step is recorded in `undo`.
pub(crate) fn apply_entry(root: &mut Node, entry: &Entry, undo: &mut Vec<UndoStep>) -> Applied {
    let mut mutated = false;
    let Some((key, parents)) = entry.path.split_last() else {
        // Only `InteriorAdded` reaches here (see `Entry::from_json`); the root is always a container.
        if let Node::Container { ts, .. } = root
            && *ts != entry.ts
            && entry.op == Op::InteriorAdded
        {
            undo.push(UndoStep::Ts {
                path: Vec::new(),
                ts: *ts,
            });
            *ts = entry.ts;
            mutated = true;
        }
        return Applied {
            mutated,
            event: None,
        };
    };

    let mut node = root;
    let mut resolved: Vec<String> = Vec::with_capacity(entry.path.len());
    for segment in parents {
        let children = node
            .children_mut()
            .expect("ancestors are made containers before descending");
        let folded = fold(segment);
        let stored = match children.get_index_of(&folded) {
            Some(i) => {
                let (_, (stored, child)) = children.get_index_mut(i).expect("index just found");
                if matches!(child, Node::Leaf { .. }) {
                    let old = std::mem::replace(child, Node::empty(entry.ts));
                    undo.push(UndoStep::Slot {
                        parent: resolved.clone(),
                        key: folded.clone(),
                        previous: Some((i, stored.clone(), old)),
                    });
                    mutated = true;
                }
                stored.clone()
            }
            None => {
                children.insert(folded.clone(), (segment.clone(), Node::empty(entry.ts)));
                undo.push(UndoStep::Slot {
                    parent: resolved.clone(),
                    key: folded.clone(),
                    previous: None,
                });
                mutated = true;
                segment.clone()
            }
        };
        resolved.push(stored);
        node = &mut node
            .children_mut()
            .expect("checked above")
            .get_mut(&folded)
            .expect("inserted or found above")
            .1;
    }

    let children = node.children_mut().expect("parent is a container");
    let folded = fold(key);
    let index = children.get_index_of(&folded);
    let event = match (&entry.op, index) {
        (Op::Changed(value), Some(i)) => {
            let (_, (stored, child)) = children.get_index_mut(i).expect("index just found");
            let event = match child {
                Node::Leaf { value: old, .. } if old == value => None,
                _ => Some(ChangeKind::Changed),
            };
            let new = Node::Leaf {
                value: value.clone(),
                ts: entry.ts,
            };
            if *child != new {
                let old = std::mem::replace(child, new);
                undo.push(UndoStep::Slot {
                    parent: resolved,
                    key: folded,
                    previous: Some((i, stored.clone(), old)),
                });
                mutated = true;
            }
            event
        }
        (Op::Changed(value), None) => {
            let leaf = Node::Leaf {
                value: value.clone(),
                ts: entry.ts,
            };
            children.insert(folded.clone(), (key.clone(), leaf));
            undo.push(UndoStep::Slot {
                parent: resolved,
                key: folded,
                previous: None,
            });
            mutated = true;
            Some(ChangeKind::Changed)
        }
        (Op::Removed, Some(i)) => {
            let (_, (stored, old)) = children.shift_remove_index(i).expect("index just found");
            undo.push(UndoStep::Slot {
                parent: resolved,
                key: folded,
                previous: Some((i, stored, old)),
            });
            mutated = true;
            Some(ChangeKind::Removed)
        }
        (Op::Removed, None) => None,
        (Op::InteriorAdded, Some(i)) => {
            let (_, (stored, child)) = children.get_index_mut(i).expect("index just found");
            match child {
                Node::Container { ts, .. } => {
                    if *ts != entry.ts {
                        let mut path = resolved;
                        path.push(stored.clone());
                        undo.push(UndoStep::Ts { path, ts: *ts });
                        *ts = entry.ts;
                        mutated = true;
                    }
                    None
                }
                Node::Leaf { .. } => {
                    let old = std::mem::replace(child, Node::empty(entry.ts));
                    undo.push(UndoStep::Slot {
                        parent: resolved,
                        key: folded,
                        previous: Some((i, stored.clone(), old)),
                    });
                    mutated = true;
                    Some(ChangeKind::Changed)
                }
            }
        }
        (Op::InteriorAdded, None) => {
            children.insert(folded.clone(), (key.clone(), Node::empty(entry.ts)));
            undo.push(UndoStep::Slot {
                parent: resolved,
                key: folded,
                previous: None,
            });
            mutated = true;
            Some(ChangeKind::Changed)
        }
    };
    Applied { mutated, event }
}

/// Takes back steps recorded by [`apply_entry`], newest first.
pub(crate) fn undo_all(root: &mut Node, steps: Vec<UndoStep>) {
    for step in steps.into_iter().rev() {
        match step {
            UndoStep::Slot {
                parent,
                key,
                previous,
            } => {
                let Some(children) = root.find_mut(&parent).and_then(Node::children_mut) else {
                    continue;
                };
                children.shift_remove(&key);
                if let Some((index, stored, node)) = previous {
                    let index = index.min(children.len());
                    children.shift_insert(index, key, (stored, node));
                }
            }
            UndoStep::Ts { path, ts } => {
                if let Some(Node::Container { ts: current, .. }) = root.find_mut(&path) {
                    *current = ts;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(path: &[&str], ts: Timestamp, op: Op) -> Entry {
        Entry {
            path: path.iter().map(|s| s.to_string()).collect(),
            ts,
            op,
        }
    }

    #[test]
    fn changed_creates_parents_and_keeps_spelling() {
        let mut root = Node::empty(0);
        let mut undo = Vec::new();
        let a = apply_entry(
            &mut root,
            &entry(&["Services", "Foo", "x"], 5, Op::Changed(json!(1))),
            &mut undo,
        );
        assert!(a.mutated);
        assert_eq!(a.event, Some(ChangeKind::Changed));
        assert_eq!(root.to_json(true), json!({"Services": {"Foo": {"x": 1}}}));
        // A second spelling addresses the same nodes and keeps the first spelling.
        apply_entry(
            &mut root,
            &entry(&["services", "FOO", "y"], 6, Op::Changed(json!(2))),
            &mut undo,
        );
        assert_eq!(
            root.to_json(true),
            json!({"Services": {"Foo": {"x": 1, "y": 2}}})
        );
        assert_eq!(root.find(&["SERVICES", "foo"]).unwrap().ts(), 5);
    }

    #[test]
    fn undo_restores_previous_tree_exactly() {
        let mut root = node_from_json(&json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"}), 3);
        let before = root.clone();
        let mut undo = Vec::new();
        for e in [
            entry(&["a", "b"], 9, Op::Removed),
            entry(&["d", "e"], 9, Op::Changed(json!(null))),
            entry(&["a"], 10, Op::InteriorAdded),
            entry(&["a", "c"], 11, Op::Changed(json!("s"))),
            entry(&["z"], 11, Op::InteriorAdded),
            entry(&[], 12, Op::InteriorAdded),
        ] {
            apply_entry(&mut root, &e, &mut undo);
        }
        assert_ne!(root, before);
        undo_all(&mut root, undo);
        assert_eq!(root, before);
    }

    #[test]
    fn same_value_newer_ts_mutates_without_event() {
        let mut root = Node::empty(0);
        let mut undo = Vec::new();
        apply_entry(
            &mut root,
            &entry(&["k"], 1, Op::Changed(json!(7))),
            &mut undo,
        );
        let a = apply_entry(
            &mut root,
            &entry(&["k"], 2, Op::Changed(json!(7))),
            &mut undo,
        );
        assert!(a.mutated);
        assert_eq!(a.event, None);
        let a = apply_entry(
            &mut root,
            &entry(&["k"], 2, Op::Changed(json!(7))),
            &mut undo,
        );
        assert!(!a.mutated);
    }

    #[test]
    fn entry_json_round_trip_and_rejections() {
        for e in [
            entry(
                &["services", "c", "lifecycle", "run"],
                17,
                Op::Changed(json!("echo")),
            ),
            entry(&["a"], 1, Op::Removed),
            entry(&["a", "b"], 2, Op::InteriorAdded),
            entry(&[], 2, Op::InteriorAdded),
        ] {
            assert_eq!(Entry::from_json(&e.to_json()).unwrap(), e);
        }
        assert_eq!(
            entry(&["s", "c"], 17, Op::Changed(json!(1))).to_json(),
            json!({"TS": 17, "TP": ["s", "c"], "W": "changed", "V": 1})
        );
        for bad in [
            json!({"TS": 1, "TP": ["a"], "W": "changed", "V": {"o": 1}}),
            json!({"TS": 1, "TP": [], "W": "removed"}),
            json!({"TS": "1", "TP": ["a"], "W": "removed"}),
            json!({"TS": 1, "TP": [1], "W": "removed"}),
            json!({"TS": 1, "TP": ["a"], "W": "exploded"}),
            json!([1]),
        ] {
            assert!(Entry::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dump_rebuilds_persisted_part_only() {
        let mut root = node_from_json(&json!({"a": {"b": 1, "_rt": 2, "e": {}}, "_x": 1}), 4);
        if let Node::Container { ts, .. } = &mut root {
            *ts = 2;
        }
        let mut rebuilt = Node::empty(0);
        let mut undo = Vec::new();
        for e in root.dump_entries() {
            apply_entry(&mut rebuilt, &e, &mut undo);
        }
        assert_eq!(rebuilt.to_json(true), json!({"a": {"b": 1, "e": {}}}));
        assert_eq!(rebuilt.ts(), 2);
        assert_eq!(rebuilt.find(&["a", "e"]).unwrap().ts(), 4);
        assert_eq!(root.persisted_entry_count(), 3);
    }
}
