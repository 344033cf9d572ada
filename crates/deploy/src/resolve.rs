//! Version resolution across every group's root components.
//!
//! Requirements on a component are the AND of what each group asks for and what each selected
//! dependent asks for; the highest satisfying version wins. Resolution iterates to a fixed point
//! (a dependent's pick can add constraints that change an earlier pick) and does not backtrack
//! into older versions of dependents, like the classic nucleus.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use lichen_recipe::{DependencyType, VersionRequirement};
use semver::Version;

use crate::error::DeployError;

/// Where the resolver gets component versions and their dependencies from.
pub(crate) trait Catalog {
    /// The versions that could be deployed on this device (built-ins: exactly their version).
    fn candidates(&self, name: &str) -> Result<Vec<Version>, DeployError>;
    /// The dependencies declared by `name@version`.
    fn dependencies(
        &self,
        name: &str,
        version: &Version,
    ) -> Result<Vec<DependencyDecl>, DeployError>;
}

/// A declared dependency: name, version requirement, HARD/SOFT.
pub(crate) type DependencyDecl = (String, VersionRequirement, DependencyType);
type DepsCache = BTreeMap<(String, Version), Vec<DependencyDecl>>;

struct Constraint {
    /// A group name (`LOCAL_DEPLOYMENT`, `thinggroup/x`) or a dependent `name@version`.
    source: String,
    requirement: VersionRequirement,
}

/// The outcome: every component to deploy with its version, in an order where dependencies
/// come before their dependents.
#[derive(Debug, Clone)]
pub(crate) struct Resolution {
    pub versions: BTreeMap<String, Version>,
    pub order: Vec<String>,
}

/// Resolves `roots` (group → component → requirement text).
pub(crate) fn resolve(
    roots: &BTreeMap<String, BTreeMap<String, String>>,
    catalog: &dyn Catalog,
) -> Result<Resolution, DeployError> {
    let mut root_constraints: BTreeMap<String, Vec<Constraint>> = BTreeMap::new();
    for (group, components) in roots {
        for (name, requirement) in components {
            let parsed = VersionRequirement::parse(requirement).map_err(|e| {
                DeployError::BadRequest(format!(
                    "group {group}: version requirement {requirement:?} of {name} is invalid: {e}"
                ))
            })?;
            root_constraints
                .entry(name.clone())
                .or_default()
                .push(Constraint {
                    source: group.clone(),
                    requirement: parsed,
                });
        }
    }

    let mut candidates_cache: BTreeMap<String, Vec<Version>> = BTreeMap::new();
    let mut deps_cache: DepsCache = BTreeMap::new();
    let mut previous: BTreeMap<String, Version> = BTreeMap::new();

    // Each round can only raise constraints discovered from new picks; bound the loop so a
    // pathological catalog cannot spin forever.
    for _round in 0..64 {
        let mut constraints: BTreeMap<String, Vec<Constraint>> = BTreeMap::new();
        for (name, list) in &root_constraints {
            let entry = constraints.entry(name.clone()).or_default();
            for c in list {
                entry.push(Constraint {
                    source: c.source.clone(),
                    requirement: c.requirement.clone(),
                });
            }
        }
        let mut selected: BTreeMap<String, Version> = BTreeMap::new();
        let mut queue: VecDeque<String> = root_constraints.keys().cloned().collect();
        while let Some(name) = queue.pop_front() {
            if selected.contains_key(&name) {
                continue;
            }
            let list = constraints.get(&name).map(Vec::as_slice).unwrap_or(&[]);
            let version = match previous.get(&name) {
                Some(v) if satisfies(v, list) => v.clone(),
                _ => pick(&name, list, catalog, &mut candidates_cache)?,
            };
            let deps = dependencies_of(&name, &version, catalog, &mut deps_cache)?;
            for (dep, requirement, _) in deps {
                constraints
                    .entry(dep.clone())
                    .or_default()
                    .push(Constraint {
                        source: format!("{name}@{version}"),
                        requirement,
                    });
                queue.push_back(dep);
            }
            selected.insert(name, version);
        }
        // Constraints found after a component was picked may rule that pick out: re-pick.
        let mut stable = true;
        for (name, list) in &constraints {
            let current = &selected[name];
            if !satisfies(current, list) {
                let repicked = pick(name, list, catalog, &mut candidates_cache)?;
                selected.insert(name.clone(), repicked);
                stable = false;
            }
        }
        if stable && selected == previous {
            let order = dependency_order(&selected, &deps_cache)?;
            return Ok(Resolution {
                versions: selected,
                order,
            });
        }
        previous = selected;
    }
    Err(DeployError::Unsatisfiable(
        "component versions did not converge after 64 rounds; pin the versions of the components involved"
            .to_string(),
    ))
}

fn satisfies(version: &Version, constraints: &[Constraint]) -> bool {
    constraints.iter().all(|c| c.requirement.matches(version))
}

fn pick(
    name: &str,
    constraints: &[Constraint],
    catalog: &dyn Catalog,
    cache: &mut BTreeMap<String, Vec<Version>>,
) -> Result<Version, DeployError> {
    if !cache.contains_key(name) {
        let mut versions = catalog.candidates(name)?;
        versions.sort();
        cache.insert(name.to_string(), versions);
    }
    let versions = &cache[name];
    if versions.is_empty() {
        return Err(DeployError::UnknownComponent {
            component: name.to_string(),
        });
    }
    if let Some(best) = versions.iter().rev().find(|v| satisfies(v, constraints)) {
        return Ok(best.clone());
    }
    Err(DeployError::Unsatisfiable(explain(
        name,
        constraints,
        versions,
    )))
}

/// "A@1.0.0 requires B >=2.0.0, but LOCAL_DEPLOYMENT requires B =1.0.0 (available: …)".
fn explain(name: &str, constraints: &[Constraint], versions: &[Version]) -> String {
    let parts: Vec<String> = constraints
        .iter()
        .map(|c| format!("{} requires {name} {}", c.source, c.requirement.as_str()))
        .collect();
    let available: Vec<String> = versions.iter().map(Version::to_string).collect();
    let conflict = if parts.len() > 1 {
        format!("{}, but {}", parts[0], parts[1..].join(", and "))
    } else {
        parts.join("")
    };
    format!(
        "no version of {name} satisfies every constraint: {conflict} (available: {}); change a version requirement or provide a matching version",
        available.join(", ")
    )
}

fn dependencies_of(
    name: &str,
    version: &Version,
    catalog: &dyn Catalog,
    cache: &mut DepsCache,
) -> Result<Vec<DependencyDecl>, DeployError> {
    let key = (name.to_string(), version.clone());
    if let Some(deps) = cache.get(&key) {
        return Ok(deps.clone());
    }
    let deps = catalog.dependencies(name, version)?;
    cache.insert(key, deps.clone());
    Ok(deps)
}

/// Depth-first topological order (dependencies first); a back edge is a cycle, reported as
/// `A → B → A`.
fn dependency_order(
    selected: &BTreeMap<String, Version>,
    deps: &DepsCache,
) -> Result<Vec<String>, DeployError> {
    let edges = |name: &str| -> Vec<String> {
        selected
            .get(name)
            .and_then(|v| deps.get(&(name.to_string(), v.clone())))
            .map(|list| list.iter().map(|(d, _, _)| d.clone()).collect())
            .unwrap_or_default()
    };
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    for start in selected.keys() {
        if done.contains(start) {
            continue;
        }
        // Explicit stack of (node, next child index) with the current path for cycle reports.
        let mut path: Vec<String> = vec![start.clone()];
        let mut stack: Vec<(String, Vec<String>, usize)> = vec![(start.clone(), edges(start), 0)];
        while let Some((node, children, idx)) = stack.last_mut() {
            if *idx < children.len() {
                let child = children[*idx].clone();
                *idx += 1;
                if done.contains(&child) {
                    continue;
                }
                if let Some(pos) = path.iter().position(|p| *p == child) {
                    let mut cycle: Vec<String> = path[pos..].to_vec();
                    cycle.push(child);
                    return Err(DeployError::Cycle(cycle.join(" → ")));
                }
                path.push(child.clone());
                let grandchildren = edges(&child);
                stack.push((child, grandchildren, 0));
            } else {
                let node = node.clone();
                stack.pop();
                path.pop();
                done.insert(node.clone());
                order.push(node);
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// name → version → dependencies (name, requirement).
    type Versions = BTreeMap<&'static str, Vec<(&'static str, &'static str)>>;
    struct Fake(BTreeMap<&'static str, Versions>);

    impl Catalog for Fake {
        fn candidates(&self, name: &str) -> Result<Vec<Version>, DeployError> {
            Ok(self
                .0
                .get(name)
                .map(|m| m.keys().map(|v| Version::parse(v).unwrap()).collect())
                .unwrap_or_default())
        }
        fn dependencies(
            &self,
            name: &str,
            version: &Version,
        ) -> Result<Vec<DependencyDecl>, DeployError> {
            let v = version.to_string();
            Ok(self.0[name][v.as_str()]
                .iter()
                .map(|(d, r)| {
                    (
                        d.to_string(),
                        VersionRequirement::parse(r).unwrap(),
                        DependencyType::Hard,
                    )
                })
                .collect())
        }
    }

    fn roots(list: &[(&str, &str, &str)]) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (g, n, r) in list {
            out.entry(g.to_string())
                .or_default()
                .insert(n.to_string(), r.to_string());
        }
        out
    }

    #[test]
    fn a_later_constraint_lowers_an_earlier_pick() {
        // A (root) takes C anything; B (root) needs C <2; C 2.0.0 is highest but loses.
        let catalog = Fake(BTreeMap::from([
            ("A", BTreeMap::from([("1.0.0", vec![("C", "*")])])),
            ("B", BTreeMap::from([("1.0.0", vec![("C", "<2.0.0")])])),
            (
                "C",
                BTreeMap::from([("1.0.0", vec![]), ("1.9.0", vec![]), ("2.0.0", vec![])]),
            ),
        ]));
        let r = resolve(
            &roots(&[("g1", "A", "1.0.0"), ("g2", "B", "^1.0.0")]),
            &catalog,
        )
        .unwrap();
        assert_eq!(r.versions["C"].to_string(), "1.9.0");
        let pos = |n: &str| r.order.iter().position(|x| x == n).unwrap();
        assert!(pos("C") < pos("A") && pos("C") < pos("B"));
    }

    #[test]
    fn groups_and_each_other_conflict_is_explained() {
        let catalog = Fake(BTreeMap::from([(
            "X",
            BTreeMap::from([("1.0.0", vec![]), ("2.0.0", vec![])]),
        )]));
        let err = resolve(
            &roots(&[
                ("thinggroup/a", "X", ">=2.0.0"),
                ("thinggroup/b", "X", "<2.0.0"),
            ]),
            &catalog,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("thinggroup/a requires X >=2.0.0, but thinggroup/b requires X <2.0.0"),
            "{err}"
        );
        assert!(err.contains("available: 1.0.0, 2.0.0"), "{err}");
    }

    #[test]
    fn self_and_long_cycles_are_named() {
        let catalog = Fake(BTreeMap::from([
            ("A", BTreeMap::from([("1.0.0", vec![("B", "*")])])),
            ("B", BTreeMap::from([("1.0.0", vec![("C", "*")])])),
            ("C", BTreeMap::from([("1.0.0", vec![("A", "*")])])),
        ]));
        let err = resolve(&roots(&[("g", "A", "1.0.0")]), &catalog)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dependency cycle: A → B → C → A"), "{err}");
    }
}
