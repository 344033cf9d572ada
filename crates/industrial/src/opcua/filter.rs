//! Node filter rules: browse paths from the Objects folder matched against `OpcUaRootPath`
//! patterns. A pattern names a root: it takes the node it matches and everything below it.
//! `*` inside a segment matches any characters within one level (`Line*`, `*`); a `**`
//! segment matches any number of levels, none included.

use super::config::{FilterAction, NodeFilterRule};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A browse name, possibly with `*` wildcards inside it.
    Glob(String),
    /// `**`: zero or more levels.
    AnyDepth,
}

/// One parsed root path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

impl PathPattern {
    /// `/A/B*/**/C`; `/` alone is the Objects folder itself (everything).
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} must start with '/' (a browse path from the Objects folder)"
            ));
        };
        let mut segments = Vec::new();
        for part in rest.split('/') {
            if part.is_empty() {
                // A trailing slash is harmless; an empty level in the middle is a typo.
                continue;
            }
            if part == "**" {
                segments.push(Segment::AnyDepth);
            } else if part.contains("**") {
                return Err(format!(
                    "{text:?}: '**' must be a whole level, not part of {part:?}"
                ));
            } else {
                segments.push(Segment::Glob(part.to_string()));
            }
        }
        if text.contains("//") {
            return Err(format!("{text:?} has an empty level ('//')"));
        }
        Ok(Self { segments })
    }

    /// Whether the node at `path` (browse names from the Objects folder) is this root or lies
    /// below it.
    pub fn matches(&self, path: &[&str]) -> bool {
        match_from(&self.segments, path)
    }

    /// Whether some node at or below `path` could match, so browsing below it is worthwhile.
    pub fn may_match_below(&self, path: &[&str]) -> bool {
        prefix_compatible(&self.segments, path)
    }
}

fn match_from(pattern: &[Segment], path: &[&str]) -> bool {
    match pattern.split_first() {
        // The root is matched: it and everything below it are taken.
        None => true,
        Some((Segment::AnyDepth, rest)) => {
            (0..=path.len()).any(|skip| match_from(rest, &path[skip..]))
        }
        Some((Segment::Glob(glob), rest)) => match path.split_first() {
            Some((name, below)) => glob_matches(glob, name) && match_from(rest, below),
            None => false,
        },
    }
}

fn prefix_compatible(pattern: &[Segment], path: &[&str]) -> bool {
    match (pattern.split_first(), path.split_first()) {
        (None, _) | (_, None) => true,
        (Some((Segment::AnyDepth, _)), _) => true,
        (Some((Segment::Glob(glob), rest)), Some((name, below))) => {
            glob_matches(glob, name) && prefix_compatible(rest, below)
        }
    }
}

/// `*` matches any run of characters (within one level); everything else is literal.
fn glob_matches(glob: &str, name: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut middle = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part) {
            Some(at) => middle = &middle[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The source's node filter: INCLUDE rules (none = everything) minus EXCLUDE rules.
#[derive(Debug, Clone)]
pub struct NodeFilter {
    include: Vec<PathPattern>,
    exclude: Vec<PathPattern>,
}

impl NodeFilter {
    /// Rules are validated with the configuration; a bad one here is skipped.
    pub fn new(rules: &[NodeFilterRule]) -> Self {
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        for rule in rules {
            if let Ok(p) = PathPattern::parse(rule.definition.root_path()) {
                match rule.action {
                    FilterAction::Include => include.push(p),
                    FilterAction::Exclude => exclude.push(p),
                }
            }
        }
        if include.is_empty() {
            include.push(PathPattern {
                segments: Vec::new(),
            });
        }
        Self { include, exclude }
    }

    pub fn takes(&self, path: &[&str]) -> bool {
        self.include.iter().any(|p| p.matches(path))
            && !self.exclude.iter().any(|p| p.matches(path))
    }

    /// Whether browsing below `path` can find anything this filter takes.
    pub fn worth_browsing(&self, path: &[&str]) -> bool {
        // An EXCLUDE root covers everything below it, so nothing there can be taken.
        !self.exclude.iter().any(|p| p.matches(path))
            && self.include.iter().any(|p| p.may_match_below(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opcua::config::NodeFilterDefinition;

    fn m(pattern: &str, path: &str) -> bool {
        let p = PathPattern::parse(pattern).unwrap();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        p.matches(&segs)
    }

    #[test]
    fn literal_root_paths_take_the_node_and_everything_below() {
        assert!(m("/Plant/Line1/Temperature", "/Plant/Line1/Temperature"));
        assert!(m("/Plant/Line1", "/Plant/Line1/Temperature"));
        assert!(m("/", "/Plant/Line1/Temperature"));
        assert!(!m("/Plant/Line1", "/Plant/Line2/Temperature"));
        assert!(!m("/Plant/Line1/Temperature", "/Plant/Line1"));
        assert!(!m("/Plant/Line", "/Plant/Line1/Temperature"));
    }

    #[test]
    fn star_matches_within_one_level() {
        assert!(m("/Plant/*/Temperature", "/Plant/Line1/Temperature"));
        assert!(m("/Plant/*/Temperature", "/Plant/Line2/Temperature"));
        assert!(!m("/Plant/*/Temperature", "/Plant/Line1/Count"));
        assert!(!m("/Plant/*/Temperature", "/Plant/A/B/Temperature"));
        assert!(m("/Plant/Line*/Temp*", "/Plant/Line12/Temperature"));
        assert!(!m("/Plant/Line*", "/Plant/Other/Temperature"));
        assert!(m("/Plant/*Line*", "/Plant/MainLine2/X"));
        assert!(m("/P*a*t", "/Plant"));
        assert!(!m("/P*a*t", "/Plan"));
    }

    #[test]
    fn double_star_matches_any_depth() {
        assert!(m("/Plant/**/Temperature", "/Plant/Line1/Temperature"));
        assert!(m("/Plant/**/Temperature", "/Plant/Temperature"));
        assert!(m("/Plant/**/Temperature", "/Plant/A/B/C/Temperature"));
        assert!(!m("/Plant/**/Temperature", "/Plant/A/B/C/Pressure"));
        assert!(m("/**/Pressure", "/Plant/Line2/Pressure"));
        assert!(!m("/Other/**", "/Plant/Line2/Pressure"));
        assert!(m("/Plant/**", "/Plant/Line2/Pressure"));
    }

    #[test]
    fn browsing_is_pruned_to_what_can_match() {
        let p = PathPattern::parse("/Plant/Line*/Temperature").unwrap();
        assert!(p.may_match_below(&[]));
        assert!(p.may_match_below(&["Plant"]));
        assert!(p.may_match_below(&["Plant", "Line1"]));
        assert!(!p.may_match_below(&["Other"]));
        assert!(!p.may_match_below(&["Plant", "Office"]));
        let any = PathPattern::parse("/**/Temperature").unwrap();
        assert!(any.may_match_below(&["Anything", "Deep"]));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        assert!(
            PathPattern::parse("Plant/Line1")
                .unwrap_err()
                .contains("must start with '/'")
        );
        assert!(
            PathPattern::parse("/Plant/a**")
                .unwrap_err()
                .contains("whole level")
        );
        assert!(
            PathPattern::parse("/Plant//Line1")
                .unwrap_err()
                .contains("empty level")
        );
    }

    fn rule(action: FilterAction, root_path: &str) -> NodeFilterRule {
        NodeFilterRule {
            action,
            definition: NodeFilterDefinition::OpcUaRootPath {
                root_path: root_path.into(),
            },
        }
    }

    #[test]
    fn filter_combines_includes_and_excludes() {
        let f = NodeFilter::new(&[
            rule(FilterAction::Include, "/Plant/**"),
            rule(FilterAction::Exclude, "/Plant/Line2/Mode"),
        ]);
        assert!(f.takes(&["Plant", "Line2", "Pressure"]));
        assert!(!f.takes(&["Plant", "Line2", "Mode"]));
        assert!(!f.takes(&["Other", "Ignored"]));
        assert!(!f.worth_browsing(&["Other"]));
        assert!(f.worth_browsing(&["Plant", "Line2"]));
        let all = NodeFilter::new(&[]);
        assert!(all.takes(&["Other", "Ignored"]));
    }
}
