//! Component names, component versions and npm-style version requirements.
//!
//! Requirements follow semver4j 3.1.0 `Requirement.buildNPM`, which the Java nucleus uses:
//! * `*`, `x`, `X`, `latest` and the empty string match every version (prereleases included);
//! * a bare full version (`1.2.3`, `=1.2.3`, `v1.2.3`) matches exactly that version;
//! * a bare partial version (`1`, `1.x`, `1.2`, `1.2.*`) is a tilde range;
//! * `~1.2.3` → `>=1.2.3 <1.3.0`, `~1` → `>=1.0.0 <2.0.0`;
//! * `^1.2.3` → `>=1.2.3 <2.0.0`, `^0.2.3` → `>=0.2.3 <0.3.0`, `^0.0.3` → `>=0.0.3 <0.0.4`;
//! * `A - B` → `>=A <=B` (a partial `B` becomes `<` its next minor/major);
//! * comparators `<`, `<=`, `>`, `>=`, `=` with partial versions fill missing parts with 0
//!   (semver4j, unlike npm, reads `<=1.2` as `<=1.2.0`);
//! * whitespace joins comparators (AND), `||` joins alternatives (OR).
//!
//! Build metadata never takes part in comparisons. A prerelease version satisfies a set of two or
//! more comparators only when one of them names a prerelease of the same `major.minor.patch`
//! (semver4j's rule); a single comparator compares plainly.

use std::cmp::Ordering;
use std::fmt;

use semver::{Prerelease, Version};

const MAX_VERSION_LEN: usize = 64;
const MAX_VERSION_PART: u64 = 999_999;
const MAX_NAME_LEN: usize = 128;

/// Checks a `ComponentName`: 1–128 characters from `[a-zA-Z0-9-_.]`.
pub fn validate_component_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(
            "component name is empty; expected 1-128 characters from [a-zA-Z0-9-_.]".into(),
        );
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "component name '{name}' is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "component name '{name}' contains {bad:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    // The name is a folder under work/, logs/ and the store: `..` would be the core root, and
    // dot files hide from listings.
    if name.starts_with('.') {
        return Err(format!(
            "component name '{name}' must not start with '.'; use a name such as com.example.Hello"
        ));
    }
    Ok(())
}

/// Checks that `name` (an artifact's file name, or the folder a ZIP artifact unpacks to) is one
/// plain path segment: not empty, not `.` or `..`, without `/` or NUL.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let problem = match name {
        "" => "is empty",
        "." | ".." => "is a relative folder reference",
        _ if name.contains('/') => "contains '/'",
        _ if name.contains('\0') => "contains a NUL character",
        _ => return Ok(()),
    };
    Err(format!(
        "the artifact's file name '{name}' {problem}; the last part of the URI must be a plain file name such as app.zip"
    ))
}

/// Parses a `ComponentVersion`: strict semver, at most 64 characters, major, minor and patch
/// each at most 999999.
pub fn parse_component_version(text: &str) -> Result<Version, String> {
    if text.len() > MAX_VERSION_LEN {
        return Err(format!(
            "version '{text}' is {} characters long; at most {MAX_VERSION_LEN} are allowed",
            text.len()
        ));
    }
    let version = Version::parse(text).map_err(|e| {
        format!(
            "'{text}' is not a semantic version ({e}); expected MAJOR.MINOR.PATCH such as 1.0.0"
        )
    })?;
    for (part, n) in [
        ("major", version.major),
        ("minor", version.minor),
        ("patch", version.patch),
    ] {
        if n > MAX_VERSION_PART {
            return Err(format!(
                "version '{text}': {part} part {n} is larger than {MAX_VERSION_PART}"
            ));
        }
    }
    Ok(version)
}

/// An npm-style version range, as written in `ComponentDependencies.*.VersionRequirement`.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRequirement {
    text: String,
    /// OR of AND-sets. An empty AND-set matches everything.
    alternatives: Vec<Vec<Comparator>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Comparator {
    op: Op,
    version: Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Comparator {
    fn matches(&self, v: &Version) -> bool {
        let ord = v.cmp_precedence(&self.version);
        match self.op {
            Op::Eq => ord == Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
        }
    }
}

/// A version with possibly missing (or wildcard) minor and patch.
#[derive(Debug, Clone)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Prerelease,
}

impl Partial {
    fn is_full(&self) -> bool {
        self.major.is_some() && self.minor.is_some() && self.patch.is_some()
    }

    /// Missing parts filled with 0 (semver4j `extrapolateVersion`).
    fn floor(&self) -> Version {
        let mut v = Version::new(
            self.major.unwrap_or(0),
            self.minor.unwrap_or(0),
            self.patch.unwrap_or(0),
        );
        v.pre = self.pre.clone();
        v
    }
}

fn cmp(op: Op, version: Version) -> Comparator {
    Comparator { op, version }
}

fn tilde(p: &Partial) -> Vec<Comparator> {
    let Some(major) = p.major else {
        return Vec::new();
    };
    let next = match p.minor {
        Some(minor) => Version::new(major, minor + 1, 0),
        None => Version::new(major + 1, 0, 0),
    };
    vec![cmp(Op::Ge, p.floor()), cmp(Op::Lt, next)]
}

fn caret(p: &Partial) -> Vec<Comparator> {
    let Some(major) = p.major else {
        return Vec::new();
    };
    let next = if major != 0 {
        Version::new(major + 1, 0, 0)
    } else {
        match (p.minor, p.patch) {
            (None, _) => Version::new(1, 0, 0),
            (Some(0), None) => Version::new(0, 1, 0),
            (Some(0), Some(patch)) => Version::new(0, 0, patch + 1),
            (Some(minor), _) => Version::new(0, minor + 1, 0),
        }
    };
    vec![cmp(Op::Ge, p.floor()), cmp(Op::Lt, next)]
}

fn hyphen(lower: &Partial, upper: &Partial) -> Vec<Comparator> {
    let mut set = vec![cmp(Op::Ge, lower.floor())];
    match (upper.major, upper.minor, upper.patch) {
        (None, _, _) => {}
        (Some(_), Some(_), Some(_)) => set.push(cmp(Op::Le, upper.floor())),
        (Some(major), None, _) => set.push(cmp(Op::Lt, Version::new(major + 1, 0, 0))),
        (Some(major), Some(minor), None) => {
            set.push(cmp(Op::Lt, Version::new(major, minor + 1, 0)))
        }
    }
    set
}

fn parse_number(s: &str, text: &str) -> Result<Option<u64>, String> {
    if matches!(s, "x" | "X" | "*") {
        return Ok(None);
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{text}' is not a version: '{s}' is not a number or wildcard (x, X, *)"
        ));
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("'{text}': version part '{s}' is too large"))
}

fn parse_partial(text: &str) -> Result<Partial, String> {
    let s = text.strip_prefix(['v', 'V', '=']).unwrap_or(text);
    // Build metadata never matters for matching.
    let s = s.split_once('+').map_or(s, |(core, _build)| core);
    let (core, pre) = match s.split_once('-') {
        Some((core, pre)) => {
            let pre = Prerelease::new(pre)
                .map_err(|e| format!("'{text}': invalid prerelease '{pre}' ({e})"))?;
            (core, pre)
        }
        None => (s, Prerelease::EMPTY),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "'{text}' is not a version; expected MAJOR[.MINOR[.PATCH]] such as 1.2.3 or 1.x"
        ));
    }
    let major = parse_number(parts[0], text)?;
    let minor = match parts.get(1) {
        Some(p) => parse_number(p, text)?,
        None => None,
    };
    let patch = match parts.get(2) {
        Some(p) => parse_number(p, text)?,
        None => None,
    };
    // After a wildcard every further part is a wildcard too: 1.x.x, not 1.x.3.
    let (minor, patch) = match (major, minor) {
        (None, _) => (None, None),
        (Some(_), None) => (None, None),
        _ => (minor, patch),
    };
    Ok(Partial {
        major,
        minor,
        patch,
        pre,
    })
}

const OPERATORS: [&str; 7] = [">=", "<=", ">", "<", "=", "^", "~"];

fn split_operator(token: &str) -> (&str, &str) {
    for op in OPERATORS {
        if let Some(rest) = token.strip_prefix(op) {
            // `~>` is accepted by semver4j's tokenizer as a tilde.
            let rest = if op == "~" {
                rest.strip_prefix('>').unwrap_or(rest)
            } else {
                rest
            };
            return (op, rest);
        }
    }
    ("", token)
}

fn is_any(token: &str) -> bool {
    matches!(token, "*" | "x" | "X" | "latest")
}

fn parse_simple(op: &str, version: &str, text: &str) -> Result<Vec<Comparator>, String> {
    if op.is_empty() && is_any(version) {
        return Ok(Vec::new());
    }
    if version.is_empty() {
        return Err(format!(
            "'{text}': operator '{op}' is not followed by a version"
        ));
    }
    let p = parse_partial(version)?;
    Ok(match op {
        "" | "=" => {
            if p.is_full() {
                vec![cmp(Op::Eq, p.floor())]
            } else {
                tilde(&p)
            }
        }
        "~" => tilde(&p),
        "^" => caret(&p),
        _ => {
            let op = match op {
                ">=" => Op::Ge,
                "<=" => Op::Le,
                ">" => Op::Gt,
                _ => Op::Lt,
            };
            vec![cmp(op, p.floor())]
        }
    })
}

fn parse_and_set(alt: &str, text: &str) -> Result<Vec<Comparator>, String> {
    // Join operators written apart from their version (`>= 1.0.0`).
    let mut tokens: Vec<String> = Vec::new();
    let mut pending_op: Option<String> = None;
    for raw in alt.split_whitespace() {
        let (op, rest) = split_operator(raw);
        if rest.is_empty() && !op.is_empty() {
            if pending_op.is_some() {
                return Err(format!("'{text}': two operators in a row near '{raw}'"));
            }
            pending_op = Some(raw.to_string());
            continue;
        }
        match pending_op.take() {
            Some(op) => tokens.push(format!("{op}{raw}")),
            None => tokens.push(raw.to_string()),
        }
    }
    if let Some(op) = pending_op {
        return Err(format!(
            "'{text}': operator '{op}' is not followed by a version"
        ));
    }
    let mut set = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens.get(i + 1).is_some_and(|t| t == "-") {
            let upper = tokens.get(i + 2).ok_or_else(|| {
                format!(
                    "'{text}': hyphen range '{} -' has no upper version",
                    tokens[i]
                )
            })?;
            set.extend(hyphen(&parse_partial(&tokens[i])?, &parse_partial(upper)?));
            i += 3;
            continue;
        }
        if tokens[i] == "-" {
            return Err(format!("'{text}': hyphen range has no lower version"));
        }
        let (op, version) = split_operator(&tokens[i]);
        set.extend(parse_simple(op, version, text)?);
        i += 1;
    }
    Ok(set)
}

impl VersionRequirement {
    /// Parses an npm-style range. Errors say what part of the text is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        let mut alternatives = Vec::new();
        if trimmed.is_empty() {
            alternatives.push(Vec::new());
        } else {
            for alt in trimmed.split("||") {
                let alt = alt.trim();
                if alt.is_empty() {
                    return Err(format!(
                        "'{s}': empty alternative around '||'; expected a range on each side"
                    ));
                }
                alternatives.push(parse_and_set(alt, s)?);
            }
        }
        Ok(VersionRequirement {
            text: s.to_string(),
            alternatives,
        })
    }

    /// The requirement that every version satisfies (`*`).
    pub fn any() -> Self {
        VersionRequirement {
            text: "*".to_string(),
            alternatives: vec![Vec::new()],
        }
    }

    /// Whether `v` satisfies the requirement (see the module rules on prereleases and build).
    pub fn matches(&self, v: &Version) -> bool {
        self.alternatives.iter().any(|set| {
            if !set.iter().all(|c| c.matches(v)) {
                return false;
            }
            if v.pre.is_empty() || set.len() < 2 {
                return true;
            }
            set.iter().any(|c| {
                !c.version.pre.is_empty()
                    && (c.version.major, c.version.minor, c.version.patch)
                        == (v.major, v.minor, v.patch)
            })
        })
    }

    /// The original text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for VersionRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn req(s: &str) -> VersionRequirement {
        VersionRequirement::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn check(r: &str, yes: &[&str], no: &[&str]) {
        let rq = req(r);
        for y in yes {
            assert!(rq.matches(&v(y)), "{r} should match {y}");
        }
        for n in no {
            assert!(!rq.matches(&v(n)), "{r} should not match {n}");
        }
    }

    #[test]
    fn ranges() {
        check(">=1.0.0 <2.0.0", &["1.0.0", "1.9.9"], &["0.9.9", "2.0.0"]);
        check("^1.2.0", &["1.2.0", "1.99.0"], &["1.1.9", "2.0.0"]);
        check("^0.2.3", &["0.2.3", "0.2.9"], &["0.3.0", "0.2.2"]);
        check("^0.0.3", &["0.0.3"], &["0.0.4", "0.0.2"]);
        check("^0.0", &["0.0.0", "0.0.9"], &["0.1.0"]);
        check("^0", &["0.0.0", "0.9.0"], &["1.0.0"]);
        check("~1.2", &["1.2.0", "1.2.9"], &["1.3.0", "1.1.0"]);
        check("~1.2.3", &["1.2.3", "1.2.9"], &["1.3.0", "1.2.2"]);
        check("~1", &["1.0.0", "1.9.0"], &["2.0.0"]);
        check("1.x", &["1.0.0", "1.5.5"], &["2.0.0", "0.9.0"]);
        check("1.2.*", &["1.2.0", "1.2.7"], &["1.3.0"]);
        check("1", &["1.0.0", "1.4.0"], &["2.0.0"]);
        check("*", &["0.0.0", "99.0.0", "1.0.0-beta"], &[]);
        check("", &["0.0.1"], &[]);
        check("1.0.0 - 1.5.0", &["1.0.0", "1.5.0"], &["1.5.1", "0.9.0"]);
        check("1.0 - 2", &["1.0.0", "2.9.9"], &["3.0.0"]);
        check("1.0.0 - 1.5", &["1.5.9"], &["1.6.0"]);
        check("1.0.0 || >=3.0.0", &["1.0.0", "3.1.0"], &["2.0.0", "1.0.1"]);
        check("1.0.0", &["1.0.0", "1.0.0+build.5"], &["1.0.1"]);
        check("=1.0.0", &["1.0.0"], &["1.0.1"]);
        check("v1.0.0", &["1.0.0"], &["1.0.1"]);
        check("<1.2.0", &["1.1.9"], &["1.2.0"]);
        check("<=1.2.0", &["1.2.0"], &["1.2.1"]);
        check(">1.2.0", &["1.2.1"], &["1.2.0"]);
        check(">= 1.0.0 < 2.0.0", &["1.5.0"], &["2.0.0"]);
        // semver4j fills partial comparator versions with zeros.
        check("<=1.2", &["1.2.0"], &["1.2.1"]);
        check(">1", &["1.0.1"], &["1.0.0"]);
    }

    #[test]
    fn prereleases() {
        check(">=1.0.0 <2.0.0", &[], &["1.5.0-beta"]);
        check(">=1.5.0-alpha <2.0.0", &["1.5.0-beta"], &["1.6.0-beta"]);
        check(
            "^1.2.3-beta.2",
            &["1.2.3-beta.3", "1.2.3"],
            &["1.2.3-beta.1", "1.2.4-rc"],
        );
        // A single comparator compares plainly (semver4j leaf range).
        check(">=1.0.0", &["1.5.0-beta"], &["1.0.0-beta"]);
        check("1.0.0-rc.1", &["1.0.0-rc.1"], &["1.0.0"]);
    }

    #[test]
    fn malformed() {
        for bad in [
            "abc",
            ">=",
            "1.0.0 ||",
            "|| 1.0.0",
            "1.2.3.4",
            ">= >= 1.0.0",
            "1.0.0 -",
            "^x.y",
            "1..2",
        ] {
            let err = VersionRequirement::parse(bad);
            assert!(err.is_err(), "{bad} should be rejected, got {err:?}");
        }
        let msg = VersionRequirement::parse("abc").unwrap_err();
        assert!(msg.contains("abc"), "{msg}");
    }

    #[test]
    fn text_is_kept() {
        let r = req(">=1.0.0  <2.0.0");
        assert_eq!(r.as_str(), ">=1.0.0  <2.0.0");
        assert_eq!(r.to_string(), ">=1.0.0  <2.0.0");
        assert_eq!(VersionRequirement::any().as_str(), "*");
        assert!(VersionRequirement::any().matches(&v("3.2.1")));
    }

    #[test]
    fn component_names_and_versions() {
        assert!(validate_component_name("com.example.Hello_World-2").is_ok());
        assert!(validate_component_name("").is_err());
        assert!(validate_component_name("bad name").is_err());
        assert!(validate_component_name("bad/name").is_err());
        assert!(validate_component_name(&"a".repeat(128)).is_ok());
        assert!(validate_component_name(&"a".repeat(129)).is_err());

        assert_eq!(parse_component_version("1.2.3").unwrap(), v("1.2.3"));
        assert!(parse_component_version("1.0.0-beta+exp.sha.5114f85").is_ok());
        assert!(parse_component_version("999999.999999.999999").is_ok());
        assert!(parse_component_version("1000000.0.0").is_err());
        assert!(parse_component_version("1.0").is_err());
        assert!(parse_component_version(&format!("1.0.0-{}", "a".repeat(60))).is_err());
    }
}
