//! History: trimming of finished deployment records and garbage collection of the component store.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::error::DeployError;
use crate::fsutil;

use super::{Inner, lock};

impl Inner {
    /// Keeps each deployed component's `version` and `previousVersion`; removes the rest.
    pub(super) fn collect_garbage(&self) -> Result<(), DeployError> {
        let mut keep: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, entry) in self.managed_services() {
            let versions = keep.entry(name).or_default();
            for key in ["version", "previousVersion"] {
                if let Some(v) = entry.get(key).and_then(Value::as_str) {
                    versions.insert(v.to_string());
                }
            }
        }
        let artifacts_root = self.store.artifacts_root();
        let images_before = crate::docker::recorded_images(&artifacts_root);
        let removed = self.store.collect_garbage(&keep)?;
        // Images that only removed versions recorded leave the engine too.
        let images_after = crate::docker::recorded_images(&artifacts_root);
        if let Some(docker) = lock(&self.fetchers).get("docker") {
            for image in images_before.keys() {
                if !images_after.contains_key(image) {
                    docker.release(image);
                }
            }
        }
        if !removed.is_empty() {
            tracing::info!(removed = ?removed, "component store garbage collected");
        }
        Ok(())
    }

    /// Keeps the newest `history_limit` finished records.
    pub(super) fn trim_history(&self) {
        let mut state = lock(&self.state);
        let mut done: Vec<(u64, String)> = state
            .records
            .values()
            .filter(|p| p.record.status.is_terminal())
            .map(|p| (p.seq, p.record.id.clone()))
            .collect();
        if done.len() <= self.cfg.history_limit {
            return;
        }
        done.sort();
        let excess = done.len() - self.cfg.history_limit;
        for (_, id) in done.into_iter().take(excess) {
            state.records.remove(&id);
            let dir = self.deployments_dir.join(&id);
            if let Err(e) = fsutil::remove_tree(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove old deployment record");
            }
        }
    }
}
