//! The configuration tree of the core: one hierarchical tree (`system`, `services.<name>.…`,
//! `setenv`, …) whose every node carries a modification timestamp (ms since the Unix epoch),
//! with timestamp-guarded set/merge/remove, change subscriptions and a durable transaction log.
//!
//! Model:
//! * Keys are case-insensitive on lookup and stored as first written (`Services` finds
//!   `services`).
//! * A leaf holds any JSON value except an object (arrays and `null` included); objects become
//!   containers. A container's timestamp is when it was created or last replaced.
//! * Guards: a write to a leaf applies when its timestamp is equal to or newer than the leaf's.
//!   Replacing or removing a container applies when the timestamp is equal to or newer than the
//!   newest timestamp anywhere in that container's persisted subtree, so a replace never clobbers
//!   a newer write. Merges are guarded leaf by leaf. Recipe defaults are merged with timestamp 1
//!   so they never clobber anything. A deployment's commit applies unguarded
//!   (`ConfigStore::apply_overriding`): its decision wins even over a node stamped in the future.
//! * A path with a segment starting with `_` is runtime-only: kept in memory, never persisted.
//!
//! Persistence: `<dir>/config.tlog`, an append-only log of checksummed JSON-line records, one per
//! committed transaction, fsynced before the write returns; see the `tlog` module for the format,
//! the recovery rule and the crash-safe compaction.
//!
//! Architecture invariant: every mutation of the tree, live or replayed, goes through one
//! function (`tree::apply_entry`) fed with the physical entries that are logged, so replaying the
//! log rebuilds exactly the persisted part of the live tree.
//! Architecture invariant: a change is visible in memory only if its record was durably appended
//! (a failed append is undone), and subscribers are called after commit, outside the store's
//! locks, in commit order.
//! Architecture invariant: this crate knows no component, service or deployment; it is a leaf.
//!
//! ```
//! use lichen_config::ConfigStore;
//! use serde_json::json;
//!
//! let store = ConfigStore::in_memory();
//! store.merge(&["services", "hello"], json!({"version": "1.0.0"}), 100).unwrap();
//! assert_eq!(store.get(&["Services", "HELLO", "version"]), Some(json!("1.0.0")));
//! // An older write loses against a newer one.
//! assert!(!store.set(&["services", "hello", "version"], json!("0.9.0"), 50).unwrap());
//! ```

mod error;
mod tlog;
mod tree;
mod update;

use std::collections::{HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

pub use error::ConfigError;
pub use update::{apply_configuration_update, pointer_to_path};

use tlog::Tlog;
use tree::{Entry, Node, Op, UndoStep, apply_entry, fold, is_runtime_path, undo_all};

/// Whether two keys name the same node: the tree's own (case-insensitive) key comparison, for
/// callers that must recognise a node by name before writing, e.g. `accessControl` guards.
///
/// ```
/// assert!(lichen_config::same_key("AccessControl", "accessControl"));
/// assert!(!lichen_config::same_key("access", "accessControl"));
/// ```
pub fn same_key(a: &str, b: &str) -> bool {
    a == b || fold(a) == fold(b)
}

/// Milliseconds since the Unix epoch.
pub type Timestamp = i64;

/// The current time as a [`Timestamp`].
pub fn now_ms() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Timestamp)
        .unwrap_or(0)
}

/// One change in a batch given to [`ConfigStore::apply`]; semantics as the methods of the same name.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Set {
        path: Vec<String>,
        value: Value,
        ts: Timestamp,
    },
    Merge {
        path: Vec<String>,
        value: Value,
        ts: Timestamp,
    },
    Remove {
        path: Vec<String>,
        ts: Timestamp,
    },
}

/// A committed change: a leaf's value or a node's shape changed, or a node was removed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEvent {
    /// Full path of the node, in its stored spelling.
    pub path: Vec<String>,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Changed,
    Removed,
}

/// Handle returned by [`ConfigStore::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(pub u64);

/// Tuning of a persistent store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Compact once the log holds this many entries more than a compaction would write
    /// (Greengrass compacts after 15000 entries).
    pub compact_after_entries: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            compact_after_entries: 15_000,
        }
    }
}

type Callback = Arc<dyn Fn(&ConfigEvent) + Send + Sync>;

struct Subscriber {
    id: SubscriptionId,
    /// Case-folded prefix.
    prefix: Vec<String>,
    callback: Callback,
}

struct State {
    root: Node,
    log: Option<Tlog>,
}

#[derive(Default)]
struct Dispatch {
    queue: VecDeque<ConfigEvent>,
    /// Some thread is delivering events; others only enqueue, which keeps commit order and lets
    /// callbacks write to the store without deadlocking.
    running: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Copy-on-write list, so delivery never holds this lock while calling out.
    subscribers: Mutex<Arc<Vec<Subscriber>>>,
    next_subscription: AtomicU64,
    dispatch: Mutex<Dispatch>,
}

/// The configuration tree. Cheap to clone; all clones share one tree.
#[derive(Clone)]
pub struct ConfigStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("persistent", &lock(&self.shared.state).log.is_some())
            .finish_non_exhaustive()
    }
}

/// Locks, recovering from poisoning: every mutation leaves the tree consistent before it can panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn owned(path: &[&str]) -> Vec<String> {
    path.iter().map(|s| (*s).to_owned()).collect()
}

impl ConfigStore {
    /// Opens `<dir>/config.tlog` (creating `dir`) and replays it. A torn or corrupt tail record is
    /// dropped (logged), never fatal.
    pub fn open(dir: &Path) -> Result<Self, ConfigError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// [`ConfigStore::open`] with explicit options.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, ConfigError> {
        let (mut log, root) = Tlog::open(dir, options.compact_after_entries.max(1))?;
        if log.wants_compaction()
            && let Err(e) = log.compact(&root)
        {
            tracing::error!(error = %e, "cannot compact the configuration log at open; continuing with the long log");
        }
        Ok(Self::with_state(State {
            root,
            log: Some(log),
        }))
    }

    /// A store that persists nothing.
    pub fn in_memory() -> Self {
        Self::with_state(State {
            root: Node::empty(0),
            log: None,
        })
    }

    fn with_state(state: State) -> Self {
        ConfigStore {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                subscribers: Mutex::new(Arc::new(Vec::new())),
                next_subscription: AtomicU64::new(1),
                dispatch: Mutex::new(Dispatch::default()),
            }),
        }
    }

    /// The subtree at `path` as JSON (an object for containers); `[]` is the whole tree.
    pub fn get(&self, path: &[&str]) -> Option<Value> {
        lock(&self.shared.state)
            .root
            .find(path)
            .map(|n| n.to_json(true))
    }

    /// The node's timestamp (for a container: when it was created or last replaced).
    pub fn timestamp(&self, path: &[&str]) -> Option<Timestamp> {
        lock(&self.shared.state).root.find(path).map(Node::ts)
    }

    /// Replaces the node at `path` with `value`. Returns false (and changes nothing) when `ts` is
    /// older than the node (for a container: than anything persisted in it) or than a leaf on
    /// the way. The root can only be replaced by an object.
    pub fn set(&self, path: &[&str], value: Value, ts: Timestamp) -> Result<bool, ConfigError> {
        let path = owned(path);
        validate(&path, Some(&value))?;
        self.transact(|txn| Ok(txn.set(&path, &value, ts)))
    }

    /// Recursively merges `value` into the node at `path`, each leaf guarded by its own
    /// timestamp; a non-object value replaces the node like [`ConfigStore::set`]. Returns true if
    /// any value or shape changed.
    pub fn merge(&self, path: &[&str], value: Value, ts: Timestamp) -> Result<bool, ConfigError> {
        let path = owned(path);
        validate(&path, Some(&value))?;
        self.transact(|txn| Ok(txn.merge(&path, &value, ts)))
    }

    /// Removes the node at `path` unless something persisted in it is newer than `ts`.
    /// Returns true if a node was removed.
    pub fn remove(&self, path: &[&str], ts: Timestamp) -> Result<bool, ConfigError> {
        let path = owned(path);
        validate(&path, None)?;
        self.transact(|txn| Ok(txn.remove(&path, ts)))
    }

    /// Applies all changes, in order, as one durable record: after a crash either all are
    /// visible or none. Each change is guarded as its method is; a guarded-out change is skipped.
    pub fn apply(&self, changes: Vec<Change>) -> Result<(), ConfigError> {
        self.apply_batch(changes, true).map(drop)
    }

    /// [`ConfigStore::apply`] without the timestamp guards: every change applies, whatever
    /// timestamps the tree holds. For a deployment's commit, whose decision must take effect
    /// even over a node stamped in the future (last-writer-wins would otherwise skip it
    /// silently); the changed nodes take the given timestamps.
    ///
    /// Returns what each change's path holds once the batch is in (runtime keys included), read
    /// under the same lock: a check of what the batch did is not blurred by a writer that
    /// reacts to it at once (a service writing back its bound port, say).
    pub fn apply_overriding(
        &self,
        changes: Vec<Change>,
    ) -> Result<Vec<Option<Value>>, ConfigError> {
        self.apply_batch(changes, false)
    }

    fn apply_batch(
        &self,
        changes: Vec<Change>,
        guarded: bool,
    ) -> Result<Vec<Option<Value>>, ConfigError> {
        for change in &changes {
            match change {
                Change::Set { path, value, .. } | Change::Merge { path, value, .. } => {
                    validate(path, Some(value))?
                }
                Change::Remove { path, .. } => validate(path, None)?,
            }
        }
        self.transact(|txn| {
            txn.guarded = guarded;
            for change in &changes {
                match change {
                    Change::Set { path, value, ts } => {
                        txn.set(path, value, *ts);
                    }
                    Change::Merge { path, value, ts } => {
                        txn.merge(path, value, *ts);
                    }
                    Change::Remove { path, ts } => {
                        txn.remove(path, *ts);
                    }
                }
            }
            Ok(changes
                .iter()
                .map(|change| {
                    let (Change::Set { path, .. }
                    | Change::Merge { path, .. }
                    | Change::Remove { path, .. }) = change;
                    txn.root.find(path).map(|n| n.to_json(true))
                })
                .collect())
        })
    }

    /// The whole tree, runtime (`_`) keys included.
    pub fn snapshot(&self) -> Value {
        lock(&self.shared.state).root.to_json(true)
    }

    /// The persisted part of the tree as YAML (the `effectiveConfig.yaml` view).
    pub fn to_yaml(&self) -> String {
        let tree = lock(&self.shared.state).root.to_json(false);
        serde_yaml_ng::to_string(&tree).expect("a JSON tree always serialises to YAML")
    }

    /// Writes [`ConfigStore::to_yaml`] to `path` atomically (temp file, fsync, rename, fsync dir).
    pub fn write_effective_config(&self, path: &Path) -> Result<(), ConfigError> {
        let yaml = self.to_yaml();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| ConfigError::io("create directory", &dir, e))?;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = tlog::private_file(&tmp)?;
            file.write_all(yaml.as_bytes())?;
            file.sync_all()
        };
        write().map_err(|e| ConfigError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ConfigError::io("rename", &tmp, e))?;
        tlog::fsync_dir(&dir)
    }

    /// Merges a Greengrass `config.yaml` (or JSON, by `.json` extension) at the root with timestamp `ts`.
    pub fn merge_file(&self, path: &Path, ts: Timestamp) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io("read", path, e))?;
        let format_error = |reason: String| ConfigError::FileFormat {
            path: path.to_path_buf(),
            reason,
        };
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let value = if is_json {
            serde_json::from_str::<Value>(&text).map_err(|e| format_error(e.to_string()))?
        } else {
            let mut yaml: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(&text).map_err(|e| format_error(e.to_string()))?;
            yaml.apply_merge()
                .map_err(|e| format_error(e.to_string()))?;
            yaml_to_json(yaml)
        };
        let value = match value {
            Value::Null => Value::Object(Default::default()),
            v @ Value::Object(_) => v,
            _ => return Err(format_error("the top level is not a mapping".into())),
        };
        self.merge(&[], value, ts).map(|_| ())
    }

    /// Calls `f` after each committed change whose path is under `prefix` (case-insensitive), or
    /// that removes or replaces a node above it. Calls happen outside the store's locks, in commit
    /// order, once per changed leaf or removed node; `f` may read and write the store (events of
    /// such writes are delivered after `f` returns). A panicking `f` is logged and skipped.
    pub fn subscribe(
        &self,
        prefix: &[&str],
        f: Box<dyn Fn(&ConfigEvent) + Send + Sync>,
    ) -> SubscriptionId {
        let id = SubscriptionId(
            self.shared
                .next_subscription
                .fetch_add(1, Ordering::Relaxed),
        );
        let mut subscribers = lock(&self.shared.subscribers);
        let mut list: Vec<Subscriber> = subscribers
            .iter()
            .map(|s| Subscriber {
                id: s.id,
                prefix: s.prefix.clone(),
                callback: s.callback.clone(),
            })
            .collect();
        list.push(Subscriber {
            id,
            prefix: prefix.iter().map(|s| fold(s)).collect(),
            callback: Arc::from(f),
        });
        *subscribers = Arc::new(list);
        id
    }

    /// Stops calls to a subscription; unknown ids are ignored.
    pub fn unsubscribe(&self, id: SubscriptionId) {
        let mut subscribers = lock(&self.shared.subscribers);
        let list: Vec<Subscriber> = subscribers
            .iter()
            .filter(|s| s.id != id)
            .map(|s| Subscriber {
                id: s.id,
                prefix: s.prefix.clone(),
                callback: s.callback.clone(),
            })
            .collect();
        *subscribers = Arc::new(list);
    }

    /// Rewrites the log from the current tree (also done automatically, see [`StoreOptions`]).
    pub fn compact(&self) -> Result<(), ConfigError> {
        let mut state = lock(&self.shared.state);
        let State { root, log } = &mut *state;
        match log {
            Some(log) => log.compact(root),
            None => Ok(()),
        }
    }

    /// Runs one transaction: mutate, append its record durably (or undo), queue its events,
    /// then deliver events outside the state lock.
    fn transact<R>(
        &self,
        body: impl FnOnce(&mut Txn<'_>) -> Result<R, ConfigError>,
    ) -> Result<R, ConfigError> {
        let mut state = lock(&self.shared.state);
        let State { root, log } = &mut *state;
        let mut txn = Txn {
            root,
            entries: Vec::new(),
            undo: Vec::new(),
            events: Vec::new(),
            changed: false,
            guarded: true,
        };
        let result = body(&mut txn);
        let Txn {
            entries,
            undo,
            events,
            ..
        } = txn;
        let value = match result {
            Ok(value) => value,
            Err(e) => {
                undo_all(root, undo);
                return Err(e);
            }
        };
        let persisted: Vec<Entry> = entries.into_iter().filter(|e| !e.is_runtime()).collect();
        if let Some(log) = log
            && !persisted.is_empty()
        {
            if let Err(e) = log.append(&persisted) {
                undo_all(root, undo);
                return Err(e);
            }
            if log.wants_compaction()
                && let Err(e) = log.compact(root)
            {
                // The change itself is durable; compaction is retried on the next write.
                tracing::error!(error = %e, "cannot compact the configuration log");
            }
        }
        if !events.is_empty() {
            lock(&self.shared.dispatch).queue.extend(events);
        }
        drop(state);
        self.deliver_events();
        Ok(value)
    }

    fn deliver_events(&self) {
        {
            let mut dispatch = lock(&self.shared.dispatch);
            if dispatch.running || dispatch.queue.is_empty() {
                return;
            }
            dispatch.running = true;
        }
        loop {
            let batch: Vec<ConfigEvent> = {
                let mut dispatch = lock(&self.shared.dispatch);
                if dispatch.queue.is_empty() {
                    dispatch.running = false;
                    return;
                }
                dispatch.queue.drain(..).collect()
            };
            for event in batch {
                let folded: Vec<String> = event.path.iter().map(|s| fold(s)).collect();
                let subscribers = lock(&self.shared.subscribers).clone();
                for subscriber in subscribers.iter() {
                    let n = subscriber.prefix.len().min(folded.len());
                    if subscriber.prefix[..n] != folded[..n] {
                        continue;
                    }
                    let callback = &subscriber.callback;
                    if catch_unwind(AssertUnwindSafe(|| callback(&event))).is_err() {
                        tracing::error!(path = ?event.path, subscription = subscriber.id.0, "a configuration subscriber panicked; the event was skipped for it");
                    }
                }
            }
        }
    }
}

fn validate(path: &[String], value: Option<&Value>) -> Result<(), ConfigError> {
    if !path.is_empty() {
        return Ok(());
    }
    let reason = match value {
        Some(Value::Object(_)) => return Ok(()),
        Some(_) => "the root can only hold an object",
        None => "the root cannot be removed; remove its children instead",
    };
    Err(ConfigError::InvalidChange {
        path: Vec::new(),
        reason,
    })
}

fn yaml_to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                // NaN and infinities have no JSON form.
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (yaml_key(k), yaml_to_json(v)))
                .collect(),
        ),
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

/// YAML allows non-string keys (`8883: x`, `true: y`); the tree's keys are strings.
fn yaml_key(key: serde_yaml_ng::Value) -> String {
    match yaml_to_json(key) {
        Value::String(s) => s,
        Value::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

/// One transaction under the state lock: turns logical changes into physical entries, applying
/// each at once so later guards see earlier changes.
struct Txn<'a> {
    root: &'a mut Node,
    entries: Vec<Entry>,
    undo: Vec<UndoStep>,
    events: Vec<ConfigEvent>,
    /// Some visible change happened since the flag was last cleared.
    changed: bool,
    /// Timestamps guard the changes (see [`ConfigStore::apply_overriding`] for `false`).
    guarded: bool,
}

impl Txn<'_> {
    fn exec(&mut self, path: Vec<String>, ts: Timestamp, op: Op, notify: bool) {
        let entry = Entry { path, ts, op };
        let applied = apply_entry(self.root, &entry, &mut self.undo);
        if let Some(kind) = applied.event {
            self.changed = true;
            if notify {
                self.events.push(ConfigEvent {
                    path: entry.path.clone(),
                    kind,
                });
            }
        }
        if applied.mutated {
            self.entries.push(entry);
        }
    }

    /// The stored spelling of `path` as far as it exists, then the given spelling.
    fn resolve(&self, path: &[String]) -> Vec<String> {
        let mut node = Some(&*self.root);
        path.iter()
            .map(|segment| match node.and_then(|n| n.child(segment)) {
                Some((stored, child)) => {
                    node = Some(child);
                    stored.to_owned()
                }
                None => {
                    node = None;
                    segment.clone()
                }
            })
            .collect()
    }

    /// Makes every ancestor of `path` a container (creating missing ones, replacing a leaf on
    /// the way) and returns the resolved path; `None` if a leaf on the way is newer than `ts`.
    fn prepare(&mut self, path: &[String], ts: Timestamp) -> Option<Vec<String>> {
        let resolved = self.resolve(path);
        let ancestors = resolved.len().saturating_sub(1);
        let mut node = &*self.root;
        let mut build_from = None;
        for (i, segment) in resolved[..ancestors].iter().enumerate() {
            match node.child(segment) {
                Some((_, child @ Node::Container { .. })) => node = child,
                Some((_, Node::Leaf { ts: leaf_ts, .. })) => {
                    if self.guarded && ts < *leaf_ts {
                        return None;
                    }
                    build_from = Some(i);
                    break;
                }
                None => {
                    build_from = Some(i);
                    break;
                }
            }
        }
        if let Some(from) = build_from {
            for end in from..ancestors {
                self.exec(resolved[..=end].to_vec(), ts, Op::InteriorAdded, false);
            }
        }
        Some(resolved)
    }

    /// The newest timestamp guarding the node at `path`, if it exists.
    fn guard_ts(&self, path: &[String]) -> Option<Timestamp> {
        self.root
            .find(path)
            .map(|n| n.newest_ts(!is_runtime_path(path)))
    }

    fn set(&mut self, path: &[String], value: &Value, ts: Timestamp) -> bool {
        let Some(resolved) = self.prepare(path, ts) else {
            return false;
        };
        if self.guarded && self.guard_ts(&resolved).is_some_and(|newest| ts < newest) {
            return false;
        }
        self.write(resolved, value, ts);
        true
    }

    /// Unguarded replace of the node at `path` (ancestors exist).
    fn write(&mut self, path: Vec<String>, value: &Value, ts: Timestamp) {
        let Value::Object(map) = value else {
            self.exec(path, ts, Op::Changed(value.clone()), true);
            return;
        };
        let stale: Option<Vec<String>> = match self.root.find(&path) {
            Some(Node::Container { children, .. }) => {
                let wanted: HashSet<String> = map.keys().map(|k| fold(k)).collect();
                Some(
                    children
                        .iter()
                        .filter(|(folded, _)| !wanted.contains(*folded))
                        .map(|(_, (stored, _))| stored.clone())
                        .collect(),
                )
            }
            _ => None,
        };
        match stale {
            Some(stale) => {
                self.exec(path.clone(), ts, Op::InteriorAdded, false);
                for key in stale {
                    let mut child = path.clone();
                    child.push(key);
                    self.exec(child, ts, Op::Removed, true);
                }
            }
            None => self.exec(path.clone(), ts, Op::InteriorAdded, map.is_empty()),
        }
        for (key, child_value) in map {
            let child = self.child_path(&path, key);
            self.write(child, child_value, ts);
        }
    }

    fn child_path(&self, path: &[String], key: &str) -> Vec<String> {
        let stored = self
            .root
            .find(path)
            .and_then(|n| n.child(key))
            .map_or_else(|| key.to_owned(), |(stored, _)| stored.to_owned());
        let mut child = path.to_vec();
        child.push(stored);
        child
    }

    fn merge(&mut self, path: &[String], value: &Value, ts: Timestamp) -> bool {
        let outer = std::mem::take(&mut self.changed);
        if let Some(resolved) = self.prepare(path, ts) {
            self.merge_at(resolved, value, ts);
        }
        let changed = self.changed;
        self.changed |= outer;
        changed
    }

    fn merge_at(&mut self, path: Vec<String>, value: &Value, ts: Timestamp) {
        let existing = self.root.find(&path).map(|n| {
            (
                matches!(n, Node::Container { .. }),
                n.newest_ts(!is_runtime_path(&path)),
            )
        });
        let Value::Object(map) = value else {
            if self.guarded && existing.is_some_and(|(_, newest)| ts < newest) {
                return;
            }
            self.exec(path, ts, Op::Changed(value.clone()), true);
            return;
        };
        match existing {
            Some((true, _)) => {}
            Some((false, leaf_ts)) if self.guarded && ts < leaf_ts => return,
            _ => self.exec(path.clone(), ts, Op::InteriorAdded, map.is_empty()),
        }
        for (key, child_value) in map {
            let child = self.child_path(&path, key);
            self.merge_at(child, child_value, ts);
        }
    }

    fn remove(&mut self, path: &[String], ts: Timestamp) -> bool {
        let resolved = self.resolve(path);
        match self.guard_ts(&resolved) {
            Some(newest) if !self.guarded || ts >= newest => {
                self.exec(resolved, ts, Op::Removed, true);
                true
            }
            _ => false,
        }
    }
}
