//! The view of the configuration tree that IPC needs; implemented for `lichen_config::ConfigStore`.

use serde_json::Value;

/// A change callback: receives the full path of a changed node.
pub type ChangeCallback = Box<dyn Fn(&[String]) + Send + Sync>;

/// What the kernel operations and the authorizer read and write. Paths are absolute from the
/// config root (`["services", "<component>", "configuration", …]`); timestamps are milliseconds.
pub trait ConfigSource: Send + Sync + 'static {
    /// The value at `path` (a container comes back as an object).
    fn get(&self, path: &[&str]) -> Option<Value>;
    /// Modification time of the node at `path`.
    fn timestamp(&self, path: &[&str]) -> Option<i64>;
    /// Merges `value` into the node at `path` (creating it) with modification time `timestamp_ms`.
    fn merge(&self, path: &[&str], value: Value, timestamp_ms: i64) -> Result<(), String>;
    /// Calls `callback` for every changed node at or under `prefix`, returns a handle.
    fn subscribe(&self, prefix: &[&str], callback: ChangeCallback) -> u64;
    fn unsubscribe(&self, handle: u64);
}

impl ConfigSource for lichen_config::ConfigStore {
    fn get(&self, path: &[&str]) -> Option<Value> {
        lichen_config::ConfigStore::get(self, path)
    }

    fn timestamp(&self, path: &[&str]) -> Option<i64> {
        lichen_config::ConfigStore::timestamp(self, path)
    }

    fn merge(&self, path: &[&str], value: Value, timestamp_ms: i64) -> Result<(), String> {
        lichen_config::ConfigStore::merge(self, path, value, timestamp_ms)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn subscribe(&self, prefix: &[&str], callback: ChangeCallback) -> u64 {
        lichen_config::ConfigStore::subscribe(
            self,
            prefix,
            Box::new(move |event: &lichen_config::ConfigEvent| callback(&event.path)),
        )
        .0
    }

    fn unsubscribe(&self, handle: u64) {
        lichen_config::ConfigStore::unsubscribe(self, lichen_config::SubscriptionId(handle))
    }
}
