//! Deployment preview (our extension: `POST /greengrass/v2/deployments/preview`, and
//! CreateDeployment with `dryRun`): for each device the target reaches, the component versions
//! it would run — the union over the thing's own deployment and each of its groups' latest
//! deployment, with the proposed one in place of the target's — and the components whose
//! requirements no single version satisfies. Nothing is recorded or sent.
//!
//! Requirements are the deployments' exact versions, checked with the recipe crate's ranges;
//! dependencies declared in recipes are not followed (the component registry's recipes are not
//! read here).

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

/// The outcome for one component on one device: the version that satisfies every
/// requirement, or None (a conflict).
pub fn resolve(reqs: &[Requirement]) -> Option<Version> {
    let parsed: Vec<VersionRequirement> = reqs
        .iter()
        .filter_map(|r| VersionRequirement::parse(&r.range).ok())
        .collect();
    let mut candidates: Vec<Version> = reqs
        .iter()
        .filter_map(|r| Version::parse(r.range.trim_start_matches('=')).ok())
        .collect();
    candidates.sort();
    candidates.dedup();
    candidates
        .into_iter()
        .rev()
        .find(|v| parsed.iter().all(|p| p.matches(v)))
}

/// Builds the preview (see the module doc). `proposed` is a validated spec for `target_arn`
/// (None: preview what is deployed now).
pub async fn preview(
    state: &Arc<ApiState>,
    target_arn: &str,
    proposed: Option<&Value>,
) -> ApiResult<Value> {
    let (kind, name) = super::document::parse_target(target_arn)?;
    let registry = state.registry.clone();
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
            let mut components = Vec::new();
            let mut conflicts = Vec::new();
            for (component, rs) in &reqs {
                let by: Map<String, Value> = rs
                    .iter()
                    .map(|r| (r.target_arn.clone(), json!(r.range)))
                    .collect();
                match resolve(rs) {
                    Some(v) => components.push(json!({
                        "componentName": component,
                        "componentVersion": v.to_string(),
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
        assert_eq!(
            resolve(&[r("a", "=1.0.0"), r("b", "=1.0.0")])
                .unwrap()
                .to_string(),
            "1.0.0"
        );
        assert!(resolve(&[r("a", "=1.0.0"), r("b", "=2.0.0")]).is_none());
        assert_eq!(
            resolve(&[r("a", "=1.2.0"), r("b", "^1.0.0")])
                .unwrap()
                .to_string(),
            "1.2.0"
        );
    }
}
