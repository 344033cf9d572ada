//! Deployment preview (our extension: `POST /greengrass/v2/deployments/preview`, and
//! CreateDeployment with `dryRun`): for each device the target reaches, the component versions
//! it would run — the union over the thing's own deployment and each of its groups' latest
//! deployment, with the proposed one in place of the target's — and the components whose
//! requirements no single version satisfies. Nothing is recorded or sent.
//!
//! Requirements are the deployments' exact versions and the dependency ranges in the resolved
//! versions' recipes (from the component registry), checked with the recipe crate's ranges; a
//! dependency resolves to the newest published version that satisfies all its requirements.

use super::service::blocking;
use crate::ApiState;
use crate::error::ApiResult;
use lichen_fleet_registry::PageRequest;
use lichen_fleet_registry::deployments::{ACTIVE, COMPLETED};
use lichen_recipe::{Version, VersionRequirement};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One requirement on a component: which deployment target asks for which version range.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub target_arn: String,
    pub range: String,
}

/// The outcome for one component on one device: the newest version among `published` (and the
/// versions the requirements name) that satisfies every requirement, or None (a conflict).
pub fn resolve(reqs: &[Requirement], published: &[Version]) -> Option<Version> {
    let parsed: Vec<VersionRequirement> = reqs
        .iter()
        .filter_map(|r| VersionRequirement::parse(&r.range).ok())
        .collect();
    let mut candidates: Vec<Version> = reqs
        .iter()
        .filter_map(|r| Version::parse(r.range.trim_start_matches('=')).ok())
        .chain(published.iter().cloned())
        .collect();
    candidates.sort();
    candidates.dedup();
    candidates
        .into_iter()
        .rev()
        .find(|v| parsed.iter().all(|p| p.matches(v)))
}

/// A published version and its recipe's dependencies (name, range).
type Published = (Version, Vec<(String, String)>);

/// The published versions of a component and, per version, its recipe's dependencies
/// (name → range), from the component registry.
fn published(
    registry: &lichen_fleet_registry::Registry,
    name: &str,
) -> lichen_fleet_registry::Result<Vec<Published>> {
    let mut out = Vec::new();
    for c in registry.component_versions(name)? {
        let Ok(version) = Version::parse(&c.version) else {
            continue;
        };
        let format = if c.recipe_format == "JSON" {
            lichen_recipe::Format::Json
        } else {
            lichen_recipe::Format::Yaml
        };
        let deps = lichen_recipe::parse_str(&c.recipe, format, &format!("{name}@{}", c.version))
            .map(|r| {
                r.dependencies
                    .into_iter()
                    .map(|(d, dep)| (d, dep.requirement.as_str().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        out.push((version, deps));
    }
    Ok(out)
}

/// Builds the preview (see the module doc). `proposed` is a validated spec for `target_arn`
/// (None: preview what is deployed now).
pub async fn preview(
    state: &Arc<ApiState>,
    target_arn: &str,
    proposed: Option<&Value>,
) -> ApiResult<Value> {
    preview_in(state.registry.clone(), target_arn, proposed).await
}

/// [`preview`] over the registry alone (the console's preview).
pub async fn preview_in(
    registry: Arc<lichen_fleet_registry::Registry>,
    target_arn: &str,
    proposed: Option<&Value>,
) -> ApiResult<Value> {
    let (kind, name) = super::document::parse_target(target_arn)?;
    let proposed = proposed.cloned();
    let target_arn = target_arn.to_string();
    blocking(move || {
        let things: Vec<String> = if kind == "thing" {
            registry.describe_thing(&name)?;
            vec![name.clone()]
        } else {
            let mut all = Vec::new();
            let mut page = PageRequest::default();
            loop {
                let p = registry.list_things_in_group(&name, true, &page)?;
                all.extend(p.items);
                match p.next_token {
                    Some(t) => page.token = Some(t),
                    None => break,
                }
            }
            all
        };
        let mut devices = Vec::new();
        for thing in &things {
            let mut sources: Vec<String> = vec![registry.arn(&format!("thing/{thing}"))];
            for g in registry.deployment_groups_for_thing(thing)? {
                sources.push(registry.arn(&format!("thinggroup/{g}")));
            }
            let mut reqs: BTreeMap<String, Vec<Requirement>> = BTreeMap::new();
            for source in &sources {
                let spec: Option<Value> = if *source == target_arn && proposed.is_some() {
                    proposed.clone()
                } else {
                    registry
                        .latest_deployment(source)?
                        .filter(|d| d.status == ACTIVE || d.status == COMPLETED)
                        .and_then(|d| serde_json::from_str(&d.spec).ok())
                };
                let Some(spec) = spec else { continue };
                for (component, c) in spec["components"].as_object().into_iter().flatten() {
                    let version = c["componentVersion"].as_str().unwrap_or_default();
                    reqs.entry(component.clone())
                        .or_default()
                        .push(Requirement {
                            target_arn: source.clone(),
                            range: format!("={version}"),
                        });
                }
            }
            // Roots, then the dependencies their resolved versions' recipes declare, until
            // the resolution stops changing.
            let roots = reqs.clone();
            let mut cache: BTreeMap<String, Vec<Published>> = BTreeMap::new();
            let mut resolved: BTreeMap<String, Option<Version>> = BTreeMap::new();
            for _ in 0..10 {
                let mut next: BTreeMap<String, Option<Version>> = BTreeMap::new();
                for (component, rs) in &reqs {
                    if !cache.contains_key(component) {
                        cache.insert(component.clone(), published(&registry, component)?);
                    }
                    let versions: Vec<Version> =
                        cache[component].iter().map(|(v, _)| v.clone()).collect();
                    next.insert(component.clone(), resolve(rs, &versions));
                }
                if next == resolved {
                    break;
                }
                resolved = next;
                reqs = roots.clone();
                for (component, version) in &resolved {
                    let Some(version) = version else { continue };
                    let deps = cache[component]
                        .iter()
                        .find(|(v, _)| v == version)
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default();
                    for (dep, range) in deps {
                        reqs.entry(dep).or_default().push(Requirement {
                            target_arn: format!("{component}@{version}"),
                            range,
                        });
                    }
                }
            }
            let mut components = Vec::new();
            let mut conflicts = Vec::new();
            for (component, rs) in &reqs {
                let by: Map<String, Value> = rs
                    .iter()
                    .map(|r| (r.target_arn.clone(), json!(r.range)))
                    .collect();
                match resolved.get(component).cloned().flatten() {
                    Some(v) => components.push(json!({
                        "componentName": component,
                        "componentVersion": v.to_string(),
                        "isRoot": roots.contains_key(component),
                        "requiredBy": by,
                    })),
                    None => conflicts.push(json!({
                        "componentName": component,
                        "requirements": by,
                        "message": format!(
                            "no version of {component} satisfies every requirement: {}",
                            rs.iter()
                                .map(|r| format!("{} requires {}", r.target_arn, r.range))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })),
                }
            }
            devices.push(json!({
                "thingName": thing,
                "components": components,
                "conflicts": conflicts,
            }));
        }
        Ok(json!({"targetArn": target_arn, "dryRun": true, "devices": devices}))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: &str, range: &str) -> Requirement {
        Requirement {
            target_arn: t.into(),
            range: range.into(),
        }
    }

    #[test]
    fn equal_requirements_resolve_and_different_ones_conflict() {
        let published: Vec<Version> = ["1.0.0", "1.5.0", "2.0.0"]
            .iter()
            .map(|v| Version::parse(v).unwrap())
            .collect();
        let one = resolve(&[r("a", "=1.0.0"), r("b", "=1.0.0")], &[]);
        assert_eq!(one.unwrap().to_string(), "1.0.0");
        assert!(resolve(&[r("a", "=1.0.0"), r("b", "=2.0.0")], &published).is_none());
        let caret = resolve(&[r("a", "=1.2.0"), r("b", "^1.0.0")], &[]);
        assert_eq!(caret.unwrap().to_string(), "1.2.0");
        // A dependency range picks the newest published version inside it.
        let dep = resolve(&[r("x@1.0.0", "^1.0.0")], &published);
        assert_eq!(dep.unwrap().to_string(), "1.5.0");
        assert!(resolve(&[r("x@1.0.0", ">=3.0.0")], &published).is_none());
    }
}
