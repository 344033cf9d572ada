//! Apply with rollback: snapshot, bootstrap, the atomic commit, its read-back check, restore.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use lichen_config::Change;
use lichen_supervisor::State;
use serde_json::{Map, Value, json};

use crate::error::DeployError;
use crate::fsutil;
use crate::{DeploymentStatus, DetailedStatus, FailureHandlingPolicy};

use super::plan::spec_from_entry;
use super::{
    COMMITTED_ID, DEPLOYMENT_SERVICE, GROUP_LAST, GROUP_ROOTS, Inner, MAIN, NUCLEUS, Persisted,
    Phase, Plan, SERVICES, Snapshot, VALIDATION_TIMEOUT, lock,
};

impl Inner {
    /// Everything up to and including the wait after the commit. On failure after the commit,
    /// the policy decides about rollback.
    pub(super) async fn execute(&self, persisted: &Persisted) -> Outcome {
        let id = persisted.record.id.as_str();
        let plan = match self.plan(persisted).await {
            Ok(plan) => plan,
            Err(e) => return Outcome::failed(DetailedStatus::FailedNoStateChange, e),
        };
        if lock(&self.state).cancel_requested.contains(id) {
            return Outcome::canceled(id);
        }
        // NOTIFY_COMPONENTS: subscribed components hear of the update first and may defer it.
        let notified = match &persisted.record.request.component_update_policy {
            Some(policy) if policy.notify_components => {
                self.hooks.pre_update(id, policy.timeout).await;
                true
            }
            _ => false,
        };
        // Configuration validation by the components whose configuration changes.
        let validation_timeout = persisted
            .record
            .request
            .cloud
            .as_ref()
            .and_then(|c| c.validation_timeout_s)
            .map_or(VALIDATION_TIMEOUT, std::time::Duration::from_secs);
        for (component, configuration) in &plan.config_changed {
            if let Err(message) = self
                .hooks
                .validate_configuration(id, component, configuration, validation_timeout)
                .await
            {
                return Outcome::failed(
                    DetailedStatus::FailedNoStateChange,
                    DeployError::ConfigurationRejected {
                        component: component.clone(),
                        message,
                    },
                );
            }
        }
        // Built-ins check what they will be given (a model that does not load, say).
        for (component, configuration) in &plan.builtins {
            if let Err(message) = self
                .hooks
                .check_builtin(component, configuration, &plan.versions)
                .await
            {
                return Outcome::failed(
                    DetailedStatus::FailedNoStateChange,
                    DeployError::ConfigurationRejected {
                        component: component.clone(),
                        message,
                    },
                );
            }
        }
        if lock(&self.state).cancel_requested.contains(id) {
            return Outcome::canceled(id);
        }
        let mut outcome = self.commit_and_apply(id, persisted, &plan).await;
        outcome.notified = notified;
        outcome
    }

    /// Snapshot, bootstrap, the atomic commit, then reconcile and wait.
    async fn commit_and_apply(&self, id: &str, persisted: &Persisted, plan: &Plan) -> Outcome {
        let snapshot = self.snapshot(plan);
        if let Err(e) = self.write_snapshot(id, &snapshot) {
            return Outcome::failed(DetailedStatus::FailedNoStateChange, e);
        }
        let affected: Vec<String> = plan.changed.clone();
        if let Err(e) = self.update(id, |p| {
            p.phase = Phase::Committing;
            p.affected = affected;
        }) {
            return Outcome::failed(DetailedStatus::FailedNoStateChange, e);
        }
        if let Some(version) = &plan.core_update {
            let marker = format!("{NUCLEUS}@{version}");
            let fail = |message: String| {
                Outcome::failed(
                    DetailedStatus::FailedNoStateChange,
                    DeployError::BootstrapRun {
                        component: marker.clone(),
                        message,
                    },
                )
            };
            let staged = self
                .get(id)
                .is_some_and(|p| p.bootstrapped.contains(&marker));
            if staged {
                // Resumed after the restart: are we the new core, or did the loader go back?
                if let Err(cause) = self.hooks.core_update_outcome(version) {
                    return fail(cause);
                }
            } else {
                let artifacts = match semver::Version::parse(version)
                    .map_err(|e| DeployError::Config(e.to_string()))
                    .and_then(|v| self.store.artifacts_dir(NUCLEUS, &v))
                {
                    Ok(a) => a,
                    Err(e) => return Outcome::failed(DetailedStatus::FailedNoStateChange, e),
                };
                if let Err(cause) = self.hooks.stage_core_update(version, &artifacts) {
                    return fail(cause);
                }
                let m = marker.clone();
                if let Err(e) = self.update(id, move |p| p.bootstrapped.push(m)) {
                    return Outcome::failed(DetailedStatus::FailedNoStateChange, e);
                }
                if self.hooks.restart_requested(false) {
                    tracing::warn!(
                        deployment = id,
                        "restarting into aws.greengrass.Nucleus {version}; the deployment resumes there"
                    );
                    std::future::pending::<()>().await;
                }
                return fail("the core could not restart into the staged update".into());
            }
        }
        match self.run_bootstraps(id, plan).await {
            Err(e) => return Outcome::failed(DetailedStatus::FailedNoStateChange, e),
            Ok(Some(reboot)) => {
                if self.hooks.restart_requested(reboot) {
                    tracing::warn!(
                        deployment = id,
                        "bootstrap asked for a restart; the deployment resumes after it"
                    );
                    // The core stops and starts again; the deployment resumes from its record.
                    std::future::pending::<()>().await;
                }
                tracing::warn!(
                    deployment = id,
                    "bootstrap asked for a restart, which this core cannot do; continuing without it"
                );
            }
            Ok(None) => {}
        }
        if let Err(e) = self.commit(id, plan) {
            return Outcome::failed(DetailedStatus::FailedNoStateChange, e);
        }
        if let Err(e) = self.update(id, |p| p.phase = Phase::Committed) {
            tracing::error!(deployment = id, error = %e, "cannot record commit phase");
        }
        self.apply_and_wait(
            id,
            &plan.changed,
            persisted.record.request.failure_handling_policy,
        )
        .await
    }

    /// After a commit: reconcile, wait, and on failure roll back per policy.
    async fn apply_and_wait(
        &self,
        id: &str,
        affected: &[String],
        policy: FailureHandlingPolicy,
    ) -> Outcome {
        match self.reconcile_and_wait(affected).await {
            Ok(()) => {
                let mut outcome = Outcome::succeeded();
                outcome.warnings = affected
                    .iter()
                    .filter_map(|name| self.supervisor.limits_not_enforced(name))
                    .collect();
                outcome
            }
            Err(e) => match policy {
                FailureHandlingPolicy::DoNothing => {
                    Outcome::failed(DetailedStatus::FailedRollbackNotRequested, e)
                }
                FailureHandlingPolicy::Rollback => self.rollback(id, e).await,
            },
        }
    }

    async fn reconcile_and_wait(&self, affected: &[String]) -> Result<(), DeployError> {
        let specs = self.current_specs()?;
        self.hooks.services_committed().await;
        let names: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
        // BROKEN components that are (re)deployed are reinstalled (spec §6.6).
        let reinstall: BTreeSet<String> = names
            .iter()
            .filter(|n| {
                self.supervisor
                    .status(n)
                    .is_some_and(|s| s.state == State::Broken)
            })
            .cloned()
            .collect();
        self.supervisor
            .reconcile(specs, &reinstall)
            .await
            .map_err(|e| DeployError::Settle(e.to_string()))?;
        let mut wait: BTreeSet<String> = affected
            .iter()
            .filter(|n| names.contains(*n))
            .cloned()
            .collect();
        wait.extend(reinstall);
        if wait.is_empty() {
            return Ok(());
        }
        let wait: Vec<String> = wait.into_iter().collect();
        self.supervisor
            .wait_settled(&wait, self.cfg.settle_timeout)
            .await
            .map_err(|e| DeployError::Settle(e.to_string()))
    }

    async fn rollback(&self, id: &str, cause: DeployError) -> Outcome {
        tracing::warn!(deployment = id, error = %cause, "deployment failed after commit; rolling back");
        if let Err(e) = self.update(id, |p| p.phase = Phase::RollingBack) {
            tracing::error!(deployment = id, error = %e, "cannot record rollback phase");
        }
        let result = async {
            let snapshot = self.read_snapshot(id)?;
            self.restore(id, &snapshot)?;
            let affected: Vec<String> = snapshot
                .services
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(n, _)| n.clone())
                .collect();
            self.reconcile_and_wait(&affected).await
        }
        .await;
        match result {
            Ok(()) => Outcome::failed(DetailedStatus::FailedRollbackComplete, cause),
            Err(e) => {
                tracing::error!(deployment = id, error = %e, "rollback failed");
                let mut outcome = Outcome::failed(DetailedStatus::FailedUnableToRollback, cause);
                outcome.failure_cause = format!("{}; rollback failed: {e}", outcome.failure_cause);
                outcome
            }
        }
    }

    /// Records the terminal status, then collects garbage and trims history.
    pub(super) async fn finish(&self, id: &str, mut outcome: Outcome) {
        let succeeded = outcome.status == DeploymentStatus::Succeeded;
        // A core update whose components were rolled back after the commit: the binary goes
        // back too, at a restart once the result is recorded (Greengrass's KERNEL_ROLLBACK).
        let core_rollback = (outcome.detailed == DetailedStatus::FailedRollbackComplete)
            .then(|| self.get(id))
            .flatten()
            .and_then(|p| {
                let prefix = format!("{NUCLEUS}@");
                p.bootstrapped
                    .iter()
                    .find_map(|m| m.strip_prefix(&prefix).map(str::to_string))
            })
            .and_then(|version| {
                self.hooks
                    .core_update_rolled_back(&version, &outcome.failure_cause)
            });
        if let Some(note) = &core_rollback {
            outcome.failure_cause = format!("{}; {note}", outcome.failure_cause);
        }
        tracing::info!(
            deployment = id,
            status = outcome.status.as_str(),
            detailed = outcome.detailed.as_str(),
            cause = %outcome.failure_cause,
            "deployment finished"
        );
        if let Err(e) = self.update(id, |p| {
            p.phase = Phase::Done;
            p.record.status = outcome.status;
            p.record.detailed_status = Some(outcome.detailed);
            p.record.failure_cause = outcome.failure_cause.clone();
            p.record.error_stack = outcome.error_stack.clone();
            p.record.error_types = outcome.error_types.clone();
            p.record.warnings = outcome.warnings.clone();
        }) {
            tracing::error!(deployment = id, error = %e, "cannot record deployment result");
        }
        if outcome.status != DeploymentStatus::Canceled
            && let Some(p) = self.get(id)
            && let Some(cloud) = &p.record.request.cloud
        {
            let last = json!({
                "configArn": cloud.configuration_arn,
                "timestamp": cloud.creation_timestamp,
            });
            if let Err(e) = self.config.set(
                &[SERVICES, DEPLOYMENT_SERVICE, GROUP_LAST, &p.record.group],
                last,
                lichen_config::now_ms(),
            ) {
                tracing::error!(deployment = id, error = %e, "cannot record the group's last deployment");
            }
        }
        if succeeded && let Err(e) = self.collect_garbage() {
            tracing::warn!(error = %e, "component store garbage collection failed");
        }
        // Staged recipes are in the store now (or no longer needed).
        let staged = self.deployments_dir.join(id).join("recipes");
        let _ = fsutil::remove_tree(&staged);
        self.trim_history();
        if outcome.notified {
            self.hooks.post_update(id);
        }
        if core_rollback.is_some() {
            self.hooks.restart_requested(false);
        }
    }

    /// Continues a deployment the core died in the middle of.
    pub(super) async fn resume(&self, id: &str) {
        let Some(persisted) = self.get(id) else {
            return;
        };
        let committed = self
            .config
            .get(&[SERVICES, DEPLOYMENT_SERVICE, COMMITTED_ID])
            .and_then(|v| v.as_str().map(str::to_string))
            .is_some_and(|c| c == id);
        let policy = persisted.record.request.failure_handling_policy;
        match persisted.phase {
            Phase::RollingBack => {
                tracing::info!(deployment = id, "resuming interrupted rollback");
                let cause = DeployError::Settle(
                    "the core stopped while the deployment was rolling back".to_string(),
                );
                let outcome = self.rollback(id, cause).await;
                self.finish(id, outcome).await;
            }
            Phase::Committing | Phase::Committed if committed => {
                tracing::info!(
                    deployment = id,
                    "resuming committed deployment: waiting for components"
                );
                let outcome = self.apply_and_wait(id, &persisted.affected, policy).await;
                self.finish(id, outcome).await;
            }
            _ => {
                // Not committed: the device is in the old state; run it again from the start.
                tracing::info!(
                    deployment = id,
                    "re-running interrupted deployment from the start"
                );
                self.run(id).await;
            }
        }
    }
}

/// Whether the tree's `stored` value is `planned`, with keys compared as the tree compares them
/// and runtime (`_`) keys, which the tree keeps beside a written value, left aside.
/// Every committed service entry and built-in configuration reads back as planned; a deployment
/// never reports success for a change the tree did not take. `read_back` holds what the commit's
/// changes left at their paths, in the order the commit made them: removals, entries, then a version
/// and a configuration per built-in update. It was read under the commit's lock, so a service
/// that writes back into its configuration as soon as it sees the commit cannot fail the check.
fn check_took_effect(
    id: &str,
    plan: &Plan,
    read_back: &[Option<Value>],
) -> Result<(), DeployError> {
    let mismatch = |name: &str| {
        DeployError::Config(format!(
            "deployment {id}: the configuration of component {name} did not take effect in the configuration tree; inspect services.{name} in effectiveConfig.yaml and deploy again"
        ))
    };
    let mut stored = read_back.iter().skip(plan.removed.len());
    for (name, entry) in &plan.entries {
        let value = stored.next().cloned().flatten().unwrap_or(Value::Null);
        if !same_value(&value, entry) {
            return Err(mismatch(name));
        }
    }
    for (name, (_, configuration)) in &plan.builtin_updates {
        let _version = stored.next();
        let value = stored.next().cloned().flatten().unwrap_or(Value::Null);
        if !same_value(&value, configuration) {
            return Err(mismatch(name));
        }
    }
    Ok(())
}

fn same_value(stored: &Value, planned: &Value) -> bool {
    match (stored, planned) {
        (Value::Object(stored), Value::Object(planned)) => {
            let stored: Vec<_> = stored.iter().filter(|(k, _)| !k.starts_with('_')).collect();
            // Keys that differ only in case name one node; the last one written is kept.
            let planned: Vec<_> = planned
                .iter()
                .enumerate()
                .filter(|(i, (k, _))| {
                    !k.starts_with('_')
                        && !planned
                            .keys()
                            .skip(i + 1)
                            .any(|later| lichen_config::same_key(later, k))
                })
                .map(|(_, kv)| kv)
                .collect();
            stored.len() == planned.len()
                && planned.iter().all(|(key, value)| {
                    stored
                        .iter()
                        .any(|(k, v)| lichen_config::same_key(k, key) && same_value(v, value))
                })
        }
        _ => stored == planned,
    }
}

/// How a deployment ended.
pub(super) struct Outcome {
    status: DeploymentStatus,
    detailed: DetailedStatus,
    failure_cause: String,
    error_stack: Vec<String>,
    error_types: Vec<String>,
    notified: bool,
    warnings: Vec<String>,
}

impl Outcome {
    fn succeeded() -> Self {
        Outcome {
            status: DeploymentStatus::Succeeded,
            detailed: DetailedStatus::Successful,
            failure_cause: String::new(),
            error_stack: Vec::new(),
            error_types: Vec::new(),
            notified: false,
            warnings: Vec::new(),
        }
    }

    fn failed(detailed: DetailedStatus, error: DeployError) -> Self {
        Outcome {
            status: DeploymentStatus::Failed,
            detailed,
            failure_cause: error.to_string(),
            error_stack: error.error_stack(),
            error_types: vec![error.error_type().to_string()],
            notified: false,
            warnings: Vec::new(),
        }
    }

    fn canceled(id: &str) -> Self {
        let error = DeployError::Canceled(id.to_string());
        Outcome {
            status: DeploymentStatus::Canceled,
            detailed: DetailedStatus::Rejected,
            failure_cause: error.to_string(),
            error_stack: Vec::new(),
            error_types: Vec::new(),
            notified: false,
            warnings: Vec::new(),
        }
    }
}

impl Inner {
    fn snapshot(&self, plan: &Plan) -> Snapshot {
        let mut names: BTreeSet<String> = self.managed_services().into_keys().collect();
        names.extend(plan.entries.keys().cloned());
        names.extend(plan.builtin_updates.keys().cloned());
        names.extend(plan.removed.iter().cloned());
        let services = names
            .into_iter()
            .map(|name| {
                let old = self.config.get(&[SERVICES, &name]);
                (name, old)
            })
            .collect();
        Snapshot {
            services,
            main: self.config.get(&[SERVICES, MAIN, "dependencies"]),
            roots: self
                .config
                .get(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS]),
        }
    }

    fn write_snapshot(&self, id: &str, snapshot: &Snapshot) -> Result<(), DeployError> {
        let path = self.deployments_dir.join(id).join("rollback.json");
        let text = serde_json::to_vec_pretty(snapshot)
            .map_err(|e| DeployError::Config(format!("cannot serialise rollback snapshot: {e}")))?;
        fsutil::write_atomic(&path, &text)
            .map_err(|e| DeployError::io("cannot write rollback snapshot", &path, e))
    }

    fn read_snapshot(&self, id: &str) -> Result<Snapshot, DeployError> {
        let path = self.deployments_dir.join(id).join("rollback.json");
        let text = fs::read(&path)
            .map_err(|e| DeployError::io("cannot read rollback snapshot", &path, e))?;
        serde_json::from_slice(&text).map_err(|e| DeployError::BadRecord {
            path,
            message: e.to_string(),
        })
    }

    /// The commit: new services, `main`, group roots and the committing id in ONE batch.
    fn commit(&self, id: &str, plan: &Plan) -> Result<(), DeployError> {
        let ts = lichen_config::now_ms();
        let mut changes = Vec::new();
        for name in &plan.removed {
            changes.push(Change::Remove {
                path: path(&[SERVICES, name]),
                ts,
            });
        }
        for (name, entry) in &plan.entries {
            changes.push(Change::Set {
                path: path(&[SERVICES, name]),
                value: entry.clone(),
                ts,
            });
        }
        for (name, (version, configuration)) in &plan.builtin_updates {
            changes.push(Change::Set {
                path: path(&[SERVICES, name, "version"]),
                value: Value::String(version.clone()),
                ts,
            });
            changes.push(Change::Set {
                path: path(&[SERVICES, name, "configuration"]),
                value: configuration.clone(),
                ts,
            });
        }
        let main: Vec<Value> = plan
            .roots
            .values()
            .flat_map(|m| m.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|n| Value::String(n.clone()))
            .collect();
        changes.push(Change::Set {
            path: path(&[SERVICES, MAIN, "dependencies"]),
            value: Value::Array(main),
            ts,
        });
        changes.push(Change::Set {
            path: path(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS]),
            value: roots_to_value(&plan.roots),
            ts,
        });
        changes.push(Change::Set {
            path: path(&[SERVICES, DEPLOYMENT_SERVICE, COMMITTED_ID]),
            value: Value::String(id.to_string()),
            ts,
        });
        // Overriding: the deployment's decision takes effect whatever timestamps the tree holds
        // (a node stamped in the future would otherwise make the commit a silent no-op).
        let read_back = self
            .config
            .apply_overriding(changes)
            .map_err(|e| DeployError::Config(format!("cannot commit deployment {id}: {e}")))?;
        check_took_effect(id, plan, &read_back)
    }

    /// Puts the snapshot back exactly, in ONE batch.
    fn restore(&self, id: &str, snapshot: &Snapshot) -> Result<(), DeployError> {
        let ts = lichen_config::now_ms();
        let mut changes = Vec::new();
        for (name, old) in &snapshot.services {
            changes.push(Change::Remove {
                path: path(&[SERVICES, name]),
                ts,
            });
            if let Some(old) = old {
                changes.push(Change::Set {
                    path: path(&[SERVICES, name]),
                    value: old.clone(),
                    ts,
                });
            }
        }
        changes.push(Change::Remove {
            path: path(&[SERVICES, MAIN, "dependencies"]),
            ts,
        });
        if let Some(main) = &snapshot.main {
            changes.push(Change::Set {
                path: path(&[SERVICES, MAIN, "dependencies"]),
                value: main.clone(),
                ts,
            });
        }
        changes.push(Change::Remove {
            path: path(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS]),
            ts,
        });
        if let Some(roots) = &snapshot.roots {
            changes.push(Change::Set {
                path: path(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS]),
                value: roots.clone(),
                ts,
            });
        }
        changes.push(Change::Set {
            path: path(&[SERVICES, DEPLOYMENT_SERVICE, COMMITTED_ID]),
            value: Value::String(format!("{id}:rolled-back")),
            ts,
        });
        self.config
            .apply_overriding(changes)
            .map(drop)
            .map_err(|e| DeployError::Config(format!("cannot restore snapshot of {id}: {e}")))
    }

    /// Bootstrap steps of new/changed components, dependencies first. Exit 100/101 (restart
    /// core / reboot device) are logged and the deployment continues: the core does not
    /// restart itself mid-deployment.
    /// Runs the bootstrap steps the plan needs, skipping those already run for this deployment.
    /// `Ok(Some(reboot))` when a step asked for a restart (exit 100) or a reboot (exit 101).
    async fn run_bootstraps(&self, id: &str, plan: &Plan) -> Result<Option<bool>, DeployError> {
        let done = self.get(id).map(|p| p.bootstrapped).unwrap_or_default();
        let mut restart: Option<bool> = None;
        for name in &plan.bootstrap {
            let entry = &plan.entries[name];
            let spec = spec_from_entry(name, entry)?;
            let version = entry
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let component = format!("{name}@{version}");
            if done.contains(&component) {
                continue;
            }
            let code = self.supervisor.run_bootstrap(&spec).await.map_err(|e| {
                DeployError::BootstrapRun {
                    component: component.clone(),
                    message: e.to_string(),
                }
            })?;
            match code {
                0 => {}
                100 | 101 => {
                    tracing::warn!(component = %component, code, "bootstrap step requested a {}", if code == 100 { "core restart" } else { "device reboot" });
                    restart = Some(restart.unwrap_or(false) || code == 101);
                }
                code => return Err(DeployError::Bootstrap { component, code }),
            }
            let c = component.clone();
            self.update(id, move |p| p.bootstrapped.push(c))?;
        }
        Ok(restart)
    }
}

fn path(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn roots_to_value(roots: &BTreeMap<String, BTreeMap<String, String>>) -> Value {
    let mut groups = Map::new();
    for (group, components) in roots {
        let mut map = Map::new();
        for (name, requirement) in components {
            map.insert(name.clone(), json!({ "version": requirement }));
        }
        groups.insert(group.clone(), Value::Object(map));
    }
    Value::Object(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan() -> Plan {
        Plan {
            removed: vec!["gone".into()],
            entries: [("com.example.A".into(), json!({"version": "1.0.0"}))].into(),
            builtin_updates: [(
                "aws.greengrass.StreamManager".into(),
                ("2.2.1".into(), json!({"STREAM_MANAGER_SERVER_PORT": "0"})),
            )]
            .into(),
            ..Plan::default()
        }
    }

    #[test]
    fn a_commit_read_back_as_planned_took_effect() {
        let read_back = [
            None,
            Some(json!({"version": "1.0.0", "_runtime": 1})),
            Some(json!("2.2.1")),
            Some(json!({"stream_manager_server_port": "0"})),
        ];
        check_took_effect("d1", &plan(), &read_back).unwrap();
    }

    #[test]
    fn a_key_the_commit_did_not_plan_fails_the_check_naming_the_component() {
        let read_back = [
            None,
            Some(json!({"version": "1.0.0"})),
            Some(json!("2.2.1")),
            Some(json!({"STREAM_MANAGER_SERVER_PORT": "0", "left": "over"})),
        ];
        let e = check_took_effect("d1", &plan(), &read_back).unwrap_err();
        assert!(
            e.to_string()
                .contains("component aws.greengrass.StreamManager did not take effect"),
            "{e}"
        );
        let read_back = [None, None, Some(json!("2.2.1")), Some(json!({}))];
        let e = check_took_effect("d1", &plan(), &read_back).unwrap_err();
        assert!(e.to_string().contains("component com.example.A"), "{e}");
    }
}
