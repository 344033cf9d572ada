//! Planning: version resolution against the store and what a deployment will commit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lichen_recipe::{
    ComponentVars, DependencyType, InterpolationContext, Lifecycle, Platform, Recipe,
    SelectedRecipe,
};
use lichen_supervisor::{ComponentSpec, ResourceLimits};
use semver::Version;
use serde_json::{Map, Value, json};

use crate::LocalDeploymentRequest;
use crate::artifacts::{self, Fetchers};
use crate::error::DeployError;
use crate::fsutil;
use crate::resolve::{self, Catalog};
use crate::store::Store;

use super::{
    DEPLOYMENT_SERVICE, GROUP_ROOTS, Inner, MAIN, NUCLEUS, Persisted, Plan, SERVICES, lock,
};

impl Inner {
    /// Group → component → version requirement, as committed.
    pub(super) fn group_roots(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let Some(Value::Object(groups)) =
            self.config
                .get(&[SERVICES, DEPLOYMENT_SERVICE, GROUP_ROOTS])
        else {
            return out;
        };
        for (group, components) in groups {
            let Value::Object(components) = components else {
                continue;
            };
            let mut map = BTreeMap::new();
            for (name, info) in components {
                let requirement = match &info {
                    Value::Object(o) => {
                        o.get("version").and_then(Value::as_str).map(str::to_string)
                    }
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                };
                if let Some(r) = requirement {
                    map.insert(name, r);
                }
            }
            if !map.is_empty() {
                out.insert(group, map);
            }
        }
        out
    }

    /// `services.<name>` entries of components this engine deployed (not built-ins).
    pub(super) fn managed_services(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let Some(Value::Object(services)) = self.config.get(&[SERVICES]) else {
            return out;
        };
        for (name, entry) in services {
            if self.cfg.builtins.contains_key(&name) || name == MAIN {
                continue;
            }
            if entry.get("version").is_some() && entry.get("componentType").is_some() {
                out.insert(name, entry);
            }
        }
        out
    }

    pub(super) fn current_specs(&self) -> Result<Vec<ComponentSpec>, DeployError> {
        let defaults = self.default_limits();
        self.managed_services()
            .into_iter()
            .map(|(name, entry)| {
                let mut spec = spec_from_entry(&name, &entry)?;
                if entry
                    .get("runWith")
                    .and_then(|r| r.get("systemResourceLimits"))
                    .is_none()
                {
                    spec.resource_limits = defaults;
                }
                Ok(spec)
            })
            .collect()
    }

    /// The nucleus's `runWithDefault.systemResourceLimits`; a bad value is logged and ignored so
    /// that it cannot stop every component.
    fn default_limits(&self) -> ResourceLimits {
        let field = "runWithDefault.systemResourceLimits";
        match self.config.get(&[
            SERVICES,
            NUCLEUS,
            "configuration",
            "runWithDefault",
            "systemResourceLimits",
        ]) {
            None | Some(Value::Null) => ResourceLimits::default(),
            Some(value) => ResourceLimits::from_json(&value, field).unwrap_or_else(|reason| {
                tracing::warn!("{reason}: components run without default limits");
                ResourceLimits::default()
            }),
        }
    }

    pub(super) async fn plan(&self, persisted: &Persisted) -> Result<Plan, DeployError> {
        let services = match self.config.get(&[SERVICES]) {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let (resolver, signing) = {
            let cloud = lock(&self.cloud);
            (cloud.resolver.clone(), cloud.signing.clone())
        };
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
        let input = PlanInput {
            request: persisted.record.request.clone(),
            group: persisted.record.group.clone(),
            roots: self.group_roots(),
            services,
            store: self.store.clone(),
            fetchers: lock(&self.fetchers).clone(),
            resolver,
            signing,
            builtins: self.cfg.builtins.clone(),
            platform: self.cfg.platform.clone(),
            root: self.cfg.root.clone(),
            thing_name: self.cfg.thing_name.clone(),
            staged_recipes: self
                .deployments_dir
                .join(&persisted.record.id)
                .join("recipes"),
            progress: progress_tx,
        };
        let work = tokio::task::spawn_blocking(move || build_plan(input));
        tokio::pin!(work);
        // Downloads report their progress while planning runs; the record keeps the latest.
        let id = &persisted.record.id;
        let planned = loop {
            tokio::select! {
                planned = &mut work => break planned,
                Some(p) = progress_rx.recv() => self.record_progress(id, p),
            }
        };
        while let Ok(p) = progress_rx.try_recv() {
            self.record_progress(id, p);
        }
        planned.map_err(|e| DeployError::Config(format!("deployment planning panicked: {e}")))?
    }

    fn record_progress(&self, id: &str, progress: crate::ArtifactProgress) {
        if let Err(e) = self.update(id, |p| p.record.progress = Some(progress)) {
            tracing::warn!(deployment = id, error = %e, "cannot record download progress");
        }
    }
}

/// Everything planning needs, owned, so it can run on a blocking thread.
struct PlanInput {
    request: LocalDeploymentRequest,
    group: String,
    roots: BTreeMap<String, BTreeMap<String, String>>,
    services: Map<String, Value>,
    store: Store,
    fetchers: Fetchers,
    resolver: Option<std::sync::Arc<dyn crate::CloudResolver>>,
    signing: crate::SigningPolicy,
    builtins: BTreeMap<String, String>,
    platform: Platform,
    root: PathBuf,
    thing_name: String,
    staged_recipes: PathBuf,
    /// Artifact download progress, for the deployment's record.
    progress: tokio::sync::mpsc::UnboundedSender<crate::ArtifactProgress>,
}

/// The supervisor's view of a committed `services.<name>` entry.
pub(super) fn spec_from_entry(name: &str, entry: &Value) -> Result<ComponentSpec, DeployError> {
    let bad = |field: &str, message: String| {
        DeployError::Config(format!(
            "services.{name}.{field}: {message}; redeploy the component"
        ))
    };
    let version = entry
        .get("version")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("version", "missing".into()))?;
    Version::parse(version).map_err(|e| bad("version", e.to_string()))?;
    let lifecycle_value = entry
        .get("lifecycle")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    let lifecycle = Lifecycle::from_value(
        &lifecycle_value,
        "configuration",
        &format!("services.{name}.lifecycle"),
    )
    .map_err(|e| bad("lifecycle", e.to_string()))?;
    let mut dependencies = Vec::new();
    if let Some(Value::Array(list)) = entry.get("dependencies") {
        for item in list {
            let Some(text) = item.as_str() else { continue };
            let (dep, kind) = text.split_once(':').unwrap_or((text, "HARD"));
            let kind = if kind.eq_ignore_ascii_case("SOFT") {
                DependencyType::Soft
            } else {
                DependencyType::Hard
            };
            dependencies.push((dep.to_string(), kind));
        }
    }
    let setenv = match entry.get("setenv") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let posix_user = entry
        .get("runWith")
        .and_then(|r| r.get("posixUser"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let resource_limits = match entry
        .get("runWith")
        .and_then(|r| r.get("systemResourceLimits"))
    {
        Some(limits) => ResourceLimits::from_json(limits, "runWith.systemResourceLimits")
            .map_err(|e| bad("runWith.systemResourceLimits", e))?,
        None => ResourceLimits::default(),
    };
    let error_reset_time = lifecycle_value
        .get("errorResetTime")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(3600));
    Ok(ComponentSpec {
        name: name.to_string(),
        version: version.to_string(),
        lifecycle,
        setenv,
        dependencies,
        posix_user,
        error_reset_time,
        resource_limits,
    })
}

/// Candidates from the store (only versions whose recipe has a manifest for this platform)
/// plus the built-ins.
pub(super) struct StoreCatalog<'a> {
    pub(super) store: &'a Store,
    pub(super) builtins: &'a BTreeMap<String, String>,
    pub(super) platform: &'a Platform,
    pub(super) selected: std::cell::RefCell<BTreeMap<(String, Version), SelectedRecipe>>,
}

impl StoreCatalog<'_> {
    fn select(&self, name: &str, version: &Version) -> Result<SelectedRecipe, DeployError> {
        let key = (name.to_string(), version.clone());
        if let Some(s) = self.selected.borrow().get(&key) {
            return Ok(s.clone());
        }
        let recipe: Recipe = self.store.load_recipe(name, version)?;
        let selected = recipe
            .select(self.platform)
            .map_err(|e| DeployError::Platform {
                component: format!("{name}@{version}"),
                message: format!("{e}; the recipe has no manifest for this device's platform"),
            })?;
        self.selected.borrow_mut().insert(key, selected.clone());
        Ok(selected)
    }
}

impl StoreCatalog<'_> {
    /// Whether `name@version` is the built-in itself (a nucleus of another version is an update).
    pub(super) fn is_builtin_version(&self, name: &str, version: &Version) -> bool {
        self.builtins
            .get(name)
            .is_some_and(|v| name != NUCLEUS || *v == version.to_string())
    }
}

impl Catalog for StoreCatalog<'_> {
    fn candidates(&self, name: &str) -> Result<Vec<Version>, DeployError> {
        if let Some(v) = self.builtins.get(name) {
            let version = Version::parse(v).map_err(|e| {
                DeployError::Config(format!("built-in {name} has an invalid version {v:?}: {e}"))
            })?;
            // Other versions of the nucleus are core updates, staged like any component.
            let mut out = if name == NUCLEUS {
                self.store.versions(name)?
            } else {
                Vec::new()
            };
            if !out.contains(&version) {
                out.push(version);
            }
            return Ok(out);
        }
        let stored = self.store.versions(name)?;
        let mut usable = Vec::new();
        let mut last_error = None;
        for version in stored.iter() {
            match self.select(name, version) {
                Ok(_) => usable.push(version.clone()),
                Err(e) => last_error = Some(e),
            }
        }
        if usable.is_empty()
            && let Some(e) = last_error
        {
            return Err(e);
        }
        Ok(usable)
    }

    fn dependencies(
        &self,
        name: &str,
        version: &Version,
    ) -> Result<Vec<(String, lichen_recipe::VersionRequirement, DependencyType)>, DeployError> {
        if self.is_builtin_version(name, version) {
            return Ok(Vec::new());
        }
        let selected = self.select(name, version)?;
        Ok(selected
            .dependencies
            .iter()
            .map(|(dep, d)| (dep.clone(), d.requirement.clone(), d.dependency_type))
            .collect())
    }
}

/// The keys of a service entry this engine owns (others, like runtime state, are ignored
/// when deciding whether an entry changed).
const OWNED_KEYS: [&str; 6] = [
    "componentType",
    "version",
    "dependencies",
    "lifecycle",
    "configuration",
    "runWith",
];

fn owned_view(entry: Option<&Value>) -> Value {
    let mut out = Map::new();
    if let Some(Value::Object(map)) = entry {
        for key in OWNED_KEYS {
            if let Some(v) = map.get(key) {
                out.insert(key.to_string(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn build_plan(input: PlanInput) -> Result<Plan, DeployError> {
    // 1. Staged recipes into the store.
    if input.staged_recipes.is_dir() {
        let files = fsutil::walk_files(&input.staged_recipes)
            .map_err(|e| DeployError::io("cannot read staged recipes", &input.staged_recipes, e))?;
        for rel in files {
            let file = input.staged_recipes.join(rel);
            let recipe = lichen_recipe::parse_file(&file).map_err(|e| DeployError::BadRecipe {
                file: file.clone(),
                message: e.to_string(),
            })?;
            input.store.save_recipe(&recipe)?;
        }
    }
    // 2. The group's new roots.
    let mut roots = input.roots.clone();
    let cloud = input.request.cloud.as_ref();
    if let Some(info) = cloud {
        // The document is the group's whole root set.
        roots.remove(&input.group);
        // Thing groups the device left take their components with them.
        if let Some(members) = &info.member_groups {
            roots.retain(|g, _| {
                !g.starts_with("thinggroup/") || *g == input.group || members.contains(g)
            });
        }
    }
    {
        let entry = roots.entry(input.group.clone()).or_default();
        for name in &input.request.root_components_to_remove {
            entry.remove(name);
        }
        for (name, version) in &input.request.root_components_to_add {
            entry.insert(name.clone(), version.clone());
        }
        if entry.is_empty() {
            roots.remove(&input.group);
        }
    }
    // 3. Versions.
    let catalog = StoreCatalog {
        store: &input.store,
        builtins: &input.builtins,
        platform: &input.platform,
        selected: Default::default(),
    };
    if cloud.is_some()
        && let Some(resolver) = &input.resolver
    {
        super::cloud_plan::prefetch(
            &roots,
            &catalog,
            &input.store,
            resolver.as_ref(),
            &input.signing,
        )?;
    }
    let resolution = resolve::resolve(&roots, &catalog)?;
    // 4. The selected recipes, dependencies first.
    let mut selected: BTreeMap<String, SelectedRecipe> = BTreeMap::new();
    for name in &resolution.order {
        if catalog.is_builtin_version(name, &resolution.versions[name]) {
            continue;
        }
        let version = &resolution.versions[name];
        selected.insert(name.clone(), catalog.select(name, version)?);
    }
    // 5. Configurations: RESET, then recipe defaults under, then MERGE.
    let mut configurations: BTreeMap<String, Value> = BTreeMap::new();
    for name in resolution.versions.keys() {
        let old = input
            .services
            .get(name)
            .and_then(|e| e.get("configuration"))
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        let defaults = selected
            .get(name)
            .map(|s| s.default_configuration.clone())
            .unwrap_or(Value::Object(Map::new()));
        let update = input.request.configuration_updates.get(name);
        let reset: &[String] = update.map(|u| u.reset.as_slice()).unwrap_or(&[]);
        let merge = update.and_then(|u| u.merge.as_ref());
        let configuration =
            lichen_config::apply_configuration_update(&old, &defaults, reset, merge);
        configurations.insert(name.clone(), configuration);
    }
    // Artifacts, dependencies first; a fetcher may need the component's new configuration
    // (a private registry's login).
    let progress = input.progress.clone();
    let report = move |p: crate::ArtifactProgress| {
        // The receiver goes only once planning is over.
        let _ = progress.send(p);
    };
    for name in &resolution.order {
        let Some(recipe) = selected.get(name) else {
            continue;
        };
        artifacts::prepare(
            &input.store,
            &input.fetchers,
            name,
            &resolution.versions[name],
            &recipe.artifacts,
            artifacts::PrepareSource {
                local_dir: input.request.artifacts_directory_path.as_deref(),
                cloud_deployment: cloud.is_some(),
                configuration: configurations.get(name),
                progress: Some(&report),
            },
        )?;
    }
    // 6. Service entries with interpolated lifecycles.
    let vars = |name: &str| ComponentVars {
        name: name.to_string(),
        version: resolution.versions[name].to_string(),
        configuration: configurations[name].clone(),
    };
    let mut plan = Plan {
        roots,
        entries: BTreeMap::new(),
        builtin_updates: BTreeMap::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        config_changed: Vec::new(),
        bootstrap: Vec::new(),
        core_update: None,
        builtins: Vec::new(),
        versions: resolution
            .versions
            .iter()
            .map(|(n, v)| (n.clone(), v.to_string()))
            .collect(),
    };
    for name in &resolution.order {
        let version = &resolution.versions[name];
        let old_entry = input.services.get(name);
        let old_configuration = old_entry.and_then(|e| e.get("configuration"));
        let configuration = &configurations[name];
        if name == NUCLEUS && !catalog.is_builtin_version(name, version) {
            let old = old_entry
                .and_then(|e| e.get("version"))
                .and_then(Value::as_str);
            let target = version.to_string();
            if old != Some(target.as_str()) {
                plan.core_update = Some(target.clone());
            }
            if old != Some(target.as_str()) || old_configuration != Some(configuration) {
                plan.builtin_updates
                    .insert(name.clone(), (target, configuration.clone()));
            }
            continue;
        }
        if let Some(builtin_version) = input.builtins.get(name) {
            plan.builtins.push((name.clone(), configuration.clone()));
            let version_changed = old_entry
                .and_then(|e| e.get("version"))
                .and_then(Value::as_str)
                != Some(builtin_version.as_str());
            if version_changed || old_configuration != Some(configuration) {
                plan.builtin_updates.insert(
                    name.clone(),
                    (builtin_version.clone(), configuration.clone()),
                );
                if old_configuration.is_some() && old_configuration != Some(configuration) {
                    plan.config_changed
                        .push((name.clone(), configuration.clone()));
                }
            }
            continue;
        }
        let recipe = &selected[name];
        let context = InterpolationContext {
            root: input.root.clone(),
            thing_name: input.thing_name.clone(),
            component: vars(name),
            dependencies: recipe
                .dependencies
                .keys()
                .filter(|d| resolution.versions.contains_key(*d))
                .map(|d| (d.clone(), vars(d)))
                .collect(),
        };
        let lifecycle = recipe.lifecycle.interpolate(&context).to_value();
        let dependencies: Vec<Value> = recipe
            .dependencies
            .iter()
            .map(|(dep, d)| Value::String(format!("{dep}:{}", d.dependency_type.as_str())))
            .collect();
        let mut entry = Map::new();
        entry.insert(
            "componentType".into(),
            Value::String(recipe.component_type.as_config_str().to_string()),
        );
        entry.insert("version".into(), Value::String(version.to_string()));
        let old_version = old_entry
            .and_then(|e| e.get("version"))
            .and_then(Value::as_str)
            .map(str::to_string);
        match &old_version {
            Some(old) if *old != version.to_string() => {
                entry.insert("previousVersion".into(), Value::String(old.clone()));
            }
            _ => {
                if let Some(prev) = old_entry.and_then(|e| e.get("previousVersion")) {
                    entry.insert("previousVersion".into(), prev.clone());
                }
            }
        }
        entry.insert("dependencies".into(), Value::Array(dependencies));
        entry.insert("lifecycle".into(), lifecycle.clone());
        entry.insert("configuration".into(), configuration.clone());
        // Local deployments touch runWith only for the components they name (spec §6.3).
        // Cloud deployments rebuild it for each of their roots (an omitted field reverts to
        // the default).
        let run_with = match input.request.run_with.get(name) {
            Some(info) => {
                let mut run_with = Map::new();
                if let Some(user) = &info.posix_user {
                    run_with.insert("posixUser".into(), json!(user));
                }
                if let Some(limits) = &info.system_resource_limits {
                    ResourceLimits::from_json(
                        limits,
                        &format!("componentToRunWithInfo.{name}.systemResourceLimits"),
                    )
                    .map_err(DeployError::BadRequest)?;
                    run_with.insert("systemResourceLimits".into(), limits.clone());
                }
                (!run_with.is_empty()).then_some(Value::Object(run_with))
            }
            None => old_entry.and_then(|e| e.get("runWith")).cloned(),
        };
        if let Some(run_with) = run_with {
            entry.insert("runWith".into(), run_with);
        }
        let entry = Value::Object(entry);
        let is_new = old_entry.is_none();
        if owned_view(old_entry) != owned_view(Some(&entry)) {
            plan.changed.push(name.clone());
            if !is_new && old_configuration != Some(configuration) {
                plan.config_changed
                    .push((name.clone(), configuration.clone()));
            }
            let old_bootstrap = old_entry
                .and_then(|e| e.get("lifecycle"))
                .and_then(|l| bootstrap_of(l).cloned());
            let new_bootstrap = bootstrap_of(&lifecycle).cloned();
            let version_changed = old_version.as_deref() != Some(version.to_string().as_str());
            if new_bootstrap.is_some()
                && (is_new || version_changed || old_bootstrap != new_bootstrap)
            {
                plan.bootstrap.push(name.clone());
            }
        }
        plan.entries.insert(name.clone(), entry);
    }
    for (name, entry) in &input.services {
        if name == MAIN || name == NUCLEUS {
            continue;
        }
        // A built-in is deployed while its entry has a version; removing it stops its service.
        let managed = entry.get("version").is_some()
            && (input.builtins.contains_key(name) || entry.get("componentType").is_some());
        if managed && !resolution.versions.contains_key(name) {
            plan.removed.push(name.clone());
        }
    }
    Ok(plan)
}

/// The Bootstrap step of a lifecycle map, whatever its key's case.
fn bootstrap_of(lifecycle: &Value) -> Option<&Value> {
    lifecycle
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("bootstrap"))
        .map(|(_, v)| v)
}
