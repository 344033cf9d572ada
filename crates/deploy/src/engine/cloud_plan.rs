//! Resolution with the cloud for cloud deployments (spec §6.5): before the store-based
//! resolver runs, every component of the new root set (and the dependencies of what gets
//! picked) that the LOCAL group does not pin to a stored version is negotiated with the cloud,
//! one candidate per call; the recipe it answers lands in the store with its ARN.

use std::collections::{BTreeMap, VecDeque};

use lichen_recipe::{Format, VersionRequirement};
use semver::Version;

use crate::LOCAL_GROUP;
use crate::cloud::{CloudResolver, SigningPolicy};
use crate::error::DeployError;
use crate::resolve::Catalog;
use crate::store::Store;

use super::plan::StoreCatalog;

/// Requirement source (group or `dependent@version`) → npm range.
type Requirements = BTreeMap<String, String>;

pub(super) fn prefetch(
    roots: &BTreeMap<String, BTreeMap<String, String>>,
    catalog: &StoreCatalog<'_>,
    store: &Store,
    resolver: &dyn CloudResolver,
    signing: &SigningPolicy,
) -> Result<(), DeployError> {
    let mut answered: BTreeMap<String, (Requirements, Version)> = BTreeMap::new();
    // Each round sees the requirements the previous round's picks added; stop once a round
    // asks the cloud nothing new.
    for _round in 0..16 {
        let mut requirements: BTreeMap<String, Requirements> = BTreeMap::new();
        for (group, components) in roots {
            for (name, range) in components {
                requirements
                    .entry(name.clone())
                    .or_default()
                    .insert(group.clone(), range.clone());
            }
        }
        let mut queue: VecDeque<String> = requirements.keys().cloned().collect();
        let mut chosen: BTreeMap<String, Version> = BTreeMap::new();
        let mut asked = false;
        while let Some(name) = queue.pop_front() {
            if chosen.contains_key(&name) {
                continue;
            }
            let reqs = requirements.get(&name).cloned().unwrap_or_default();
            let parsed = reqs
                .iter()
                .map(|(source, range)| {
                    VersionRequirement::parse(range).map_err(|e| {
                        DeployError::BadRequest(format!(
                            "{source}: version requirement {range:?} of {name} is invalid: {e}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let local_best = catalog
                .candidates(&name)
                .unwrap_or_default()
                .into_iter()
                .filter(|v| parsed.iter().all(|r| r.matches(v)))
                .max();
            // A nucleus version other than the built-in one is an update: asked of the cloud.
            let builtin_runs = local_best.is_some() || name != super::NUCLEUS;
            let version = if catalog.builtins.contains_key(&name) && builtin_runs {
                // Built-ins (the nucleus among them) run as they are: nothing to download.
                match local_best {
                    Some(v) => v,
                    None => continue,
                }
            } else if reqs.contains_key(LOCAL_GROUP)
                && let Some(v) = local_best.clone()
            {
                v
            } else if let Some((r, v)) = answered.get(&name)
                && *r == reqs
            {
                v.clone()
            } else {
                let v = ask(&name, local_best.as_ref(), &reqs, store, resolver, signing)?;
                answered.insert(name.clone(), (reqs.clone(), v.clone()));
                asked = true;
                v
            };
            for (dep, requirement, _) in catalog.dependencies(&name, &version)? {
                requirements.entry(dep.clone()).or_default().insert(
                    format!("{name}@{version}"),
                    requirement.as_str().to_string(),
                );
                queue.push_back(dep);
            }
            chosen.insert(name, version);
        }
        if !asked {
            return Ok(());
        }
    }
    Ok(())
}

/// One resolveComponentCandidates call; the answer is checked and stored.
fn ask(
    name: &str,
    local: Option<&Version>,
    reqs: &Requirements,
    store: &Store,
    resolver: &dyn CloudResolver,
    signing: &SigningPolicy,
) -> Result<Version, DeployError> {
    let resolved = resolver.resolve(name, local, reqs)?;
    let id = format!("{name}@{}", resolved.version);
    if resolved.vendor_guidance.as_deref() == Some("DELETED") {
        tracing::warn!(component = %id, "the cloud marks this component version DELETED");
    }
    signing.check(&id, &resolved.recipe, resolved.signature.as_ref())?;
    let text = String::from_utf8(resolved.recipe.clone()).map_err(|_| DeployError::BadRecipe {
        file: format!("cloud recipe of {id}").into(),
        message: "not UTF-8".into(),
    })?;
    let format = if text.trim_start().starts_with('{') {
        Format::Json
    } else {
        Format::Yaml
    };
    let recipe = lichen_recipe::parse_str(&text, format, &format!("cloud recipe of {id}"))
        .map_err(|e| DeployError::BadRecipe {
            file: format!("cloud recipe of {id}").into(),
            message: e.to_string(),
        })?;
    if recipe.name != name || recipe.version != resolved.version {
        return Err(DeployError::Cloud(format!(
            "resolveComponentCandidates answered {id} with a recipe for {}@{}",
            recipe.name, recipe.version
        )));
    }
    store.save_recipe(&recipe)?;
    store.save_arn(name, &resolved.version, &resolved.arn)?;
    tracing::info!(component = %id, arn = %resolved.arn, "resolved with the cloud");
    Ok(resolved.version)
}
