//! The selected lifecycle: steps, `Setenv`, `Skipif`, timeouts (spec §1.5, §1.6).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;
use serde_json::{Map, Value};

use crate::RecipeError;
use crate::interpolate::{InterpolationContext, interpolate};
use crate::value::{expect_object, get_ci, join, scalar_text, type_name};

/// The lifecycle a component runs with, after manifest and selection filtering.
///
/// Step names are read case-insensitively; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Lifecycle {
    pub setenv: BTreeMap<String, String>,
    pub bootstrap: Option<Step>,
    pub install: Option<Step>,
    pub startup: Option<Step>,
    pub run: Option<Step>,
    pub shutdown: Option<Step>,
    pub recover: Option<Step>,
    pub uninstall: Option<Step>,
}

/// One lifecycle step. A step written as a plain string is its `Script`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub script: String,
    pub requires_privilege: bool,
    pub skip_if: Option<SkipIf>,
    /// Whole seconds; `None` means the step's default (spec §1.6).
    pub timeout: Option<Duration>,
    pub setenv: BTreeMap<String, String>,
}

/// A parsed `Skipif`: `[!]onpath <exe>` or `[!]exists <file>`.
#[derive(Debug, Clone, PartialEq)]
pub struct SkipIf {
    pub negate: bool,
    pub check: SkipCheck,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SkipCheck {
    OnPath(String),
    Exists(String),
}

/// Canonical step names in the order they are written by [`Lifecycle::to_value`].
const STEP_NAMES: [&str; 7] = [
    "Bootstrap",
    "Install",
    "Startup",
    "Run",
    "Shutdown",
    "Recover",
    "Uninstall",
];

impl Lifecycle {
    fn step_slot(&mut self, lowercase_name: &str) -> Option<&mut Option<Step>> {
        Some(match lowercase_name {
            "bootstrap" => &mut self.bootstrap,
            "install" => &mut self.install,
            "startup" => &mut self.startup,
            "run" => &mut self.run,
            "shutdown" => &mut self.shutdown,
            "recover" => &mut self.recover,
            "uninstall" => &mut self.uninstall,
            _ => return None,
        })
    }

    fn steps(&self) -> [(&'static str, &Option<Step>); 7] {
        [
            (STEP_NAMES[0], &self.bootstrap),
            (STEP_NAMES[1], &self.install),
            (STEP_NAMES[2], &self.startup),
            (STEP_NAMES[3], &self.run),
            (STEP_NAMES[4], &self.shutdown),
            (STEP_NAMES[5], &self.recover),
            (STEP_NAMES[6], &self.uninstall),
        ]
    }

    /// Reads a lifecycle map (`null` is the empty lifecycle). `field_path` prefixes error paths,
    /// e.g. `Manifests[0].Lifecycle` or `services.x.lifecycle`.
    pub fn from_value(v: &Value, origin: &str, field_path: &str) -> Result<Self, RecipeError> {
        let mut lifecycle = Lifecycle::default();
        if v.is_null() {
            return Ok(lifecycle);
        }
        let obj = expect_object(
            v,
            origin,
            field_path,
            "a map of lifecycle steps (Setenv, Bootstrap, Install, Startup, Run, Shutdown, Recover, Uninstall)",
        )?;
        for (key, value) in obj {
            let path = join(field_path, key);
            let lower = key.to_ascii_lowercase();
            if lower == "setenv" {
                lifecycle.setenv = parse_env(value, origin, &path)?;
            } else if let Some(slot) = lifecycle.step_slot(&lower) {
                *slot = parse_step(value, origin, &path)?;
            }
        }
        Ok(lifecycle)
    }

    /// The canonical config-tree form: `{"Setenv":{..},"Install":{"Script":..,"Timeout":..},..}`.
    /// Optional step fields are written only when set; absent steps are left out.
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("Setenv".into(), env_value(&self.setenv));
        for (name, step) in self.steps() {
            if let Some(step) = step {
                out.insert(name.into(), step.to_value());
            }
        }
        Value::Object(out)
    }

    /// This lifecycle with recipe variables replaced in scripts, `Setenv` values and `Skipif`
    /// arguments (spec §1.8).
    pub fn interpolate(&self, ctx: &InterpolationContext) -> Lifecycle {
        let step = |s: &Option<Step>| s.as_ref().map(|s| s.interpolate(ctx));
        Lifecycle {
            setenv: interpolate_env(&self.setenv, ctx),
            bootstrap: step(&self.bootstrap),
            install: step(&self.install),
            startup: step(&self.startup),
            run: step(&self.run),
            shutdown: step(&self.shutdown),
            recover: step(&self.recover),
            uninstall: step(&self.uninstall),
        }
    }

    /// Whether no step and no `Setenv` is defined.
    pub fn is_empty(&self) -> bool {
        self == &Lifecycle::default()
    }
}

impl Step {
    fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("Script".into(), Value::String(self.script.clone()));
        if self.requires_privilege {
            out.insert("RequiresPrivilege".into(), Value::Bool(true));
        }
        if let Some(skip) = &self.skip_if {
            out.insert("Skipif".into(), Value::String(skip.to_string()));
        }
        if let Some(timeout) = self.timeout {
            out.insert("Timeout".into(), Value::from(timeout.as_secs()));
        }
        if !self.setenv.is_empty() {
            out.insert("Setenv".into(), env_value(&self.setenv));
        }
        Value::Object(out)
    }

    fn interpolate(&self, ctx: &InterpolationContext) -> Step {
        Step {
            script: interpolate(&self.script, ctx),
            requires_privilege: self.requires_privilege,
            skip_if: self.skip_if.as_ref().map(|s| SkipIf {
                negate: s.negate,
                check: match &s.check {
                    SkipCheck::OnPath(p) => SkipCheck::OnPath(interpolate(p, ctx)),
                    SkipCheck::Exists(p) => SkipCheck::Exists(interpolate(p, ctx)),
                },
            }),
            timeout: self.timeout,
            setenv: interpolate_env(&self.setenv, ctx),
        }
    }
}

fn interpolate_env(
    env: &BTreeMap<String, String>,
    ctx: &InterpolationContext,
) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.clone(), interpolate(v, ctx)))
        .collect()
}

fn env_value(env: &BTreeMap<String, String>) -> Value {
    Value::Object(
        env.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn parse_env(v: &Value, origin: &str, path: &str) -> Result<BTreeMap<String, String>, RecipeError> {
    if v.is_null() {
        return Ok(BTreeMap::new());
    }
    let obj = expect_object(
        v,
        origin,
        path,
        "a map of environment variable names to values",
    )?;
    let mut env = BTreeMap::new();
    for (name, value) in obj {
        let text = match value {
            Value::Null => String::new(),
            other => scalar_text(other).ok_or_else(|| {
                RecipeError::new(
                    origin,
                    &join(path, name),
                    format!(
                        "environment value must be a string, found {}",
                        type_name(other)
                    ),
                )
            })?,
        };
        env.insert(name.clone(), text);
    }
    Ok(env)
}

fn parse_step(v: &Value, origin: &str, path: &str) -> Result<Option<Step>, RecipeError> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::String(script) => {
            return Ok(Some(Step {
                script: script.clone(),
                ..Step::default()
            }));
        }
        Value::Object(obj) => obj,
        other => {
            return Err(RecipeError::new(
                origin,
                path,
                format!(
                    "expected a script string or a map with Script, RequiresPrivilege, Skipif, Timeout, Setenv; found {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut step = Step::default();
    if let Some((key, value)) = get_ci(obj, "Script")
        && !value.is_null()
    {
        step.script = scalar_text(value).ok_or_else(|| {
            RecipeError::new(
                origin,
                &join(path, key),
                format!(
                    "expected the script as a string, found {}",
                    type_name(value)
                ),
            )
        })?;
    }
    if let Some((key, value)) = get_ci(obj, "RequiresPrivilege") {
        step.requires_privilege = parse_bool(value).ok_or_else(|| {
            RecipeError::new(
                origin,
                &join(path, key),
                format!("expected true or false, found {value}"),
            )
        })?;
    }
    if let Some((key, value)) = get_ci(obj, "Skipif")
        && !value.is_null()
    {
        let text = scalar_text(value).unwrap_or_default();
        step.skip_if =
            Some(SkipIf::parse(&text).map_err(|e| RecipeError::new(origin, &join(path, key), e))?);
    }
    if let Some((key, value)) = get_ci(obj, "Timeout")
        && !value.is_null()
    {
        step.timeout =
            Some(parse_timeout(value).map_err(|e| RecipeError::new(origin, &join(path, key), e))?);
    }
    if let Some((key, value)) = get_ci(obj, "Setenv") {
        step.setenv = parse_env(value, origin, &join(path, key))?;
    }
    Ok(Some(step))
}

fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Null => Some(false),
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Seconds as an integer, a number (fraction dropped, like the Java nucleus' integer coercion)
/// or a numeric string.
fn parse_timeout(v: &Value) -> Result<Duration, String> {
    let expected = "expected a whole number of seconds such as 60";
    let seconds = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match seconds {
        Some(s) if s.is_finite() && s >= 0.0 => {
            if let Some(whole) = v.as_u64() {
                Ok(Duration::from_secs(whole))
            } else if let Some(whole) = v.as_str().and_then(|t| t.trim().parse::<u64>().ok()) {
                Ok(Duration::from_secs(whole))
            } else {
                Ok(Duration::from_secs(s.trunc() as u64))
            }
        }
        Some(s) if s.is_finite() => Err(format!("timeout {s} is negative; {expected}")),
        _ => Err(format!("timeout {v} is not a number; {expected}")),
    }
}

fn skip_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // The Java nucleus' pattern, anchored because it uses Matcher.matches().
    RE.get_or_init(|| Regex::new(r"^(exists|onpath) +(.+)$").expect("static regex"))
}

impl SkipIf {
    /// Parses `onpath <exe>`, `exists <file>`, optionally preceded by `!`. Operators are
    /// case-sensitive, as in the Java nucleus.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut expr = s.trim();
        let mut negate = false;
        if let Some(rest) = expr.strip_prefix('!') {
            expr = rest.trim();
            negate = true;
        }
        let caps = skip_regex().captures(expr).ok_or_else(|| {
            format!(
                "invalid Skipif '{s}'; expected 'onpath <executable>' or 'exists <file>', optionally preceded by '!'"
            )
        })?;
        let arg = caps[2].to_string();
        let check = if &caps[1] == "onpath" {
            SkipCheck::OnPath(arg)
        } else {
            SkipCheck::Exists(arg)
        };
        Ok(SkipIf { negate, check })
    }

    /// True when the step should be skipped. `onpath` looks for an executable file in the
    /// directories of `path_env` (the step's `PATH`); `exists` checks the path, `~` expanded to
    /// `$HOME` and relative paths resolved against `cwd`.
    pub fn evaluate(&self, path_env: Option<&str>, cwd: &Path) -> bool {
        let found = match &self.check {
            SkipCheck::OnPath(exe) => on_path(exe, path_env, cwd),
            SkipCheck::Exists(file) => cwd.join(de_tilde(file)).exists(),
        };
        found ^ self.negate
    }
}

impl std::fmt::Display for SkipIf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.negate {
            f.write_str("!")?;
        }
        match &self.check {
            SkipCheck::OnPath(p) => write!(f, "onpath {p}"),
            SkipCheck::Exists(p) => write!(f, "exists {p}"),
        }
    }
}

fn de_tilde(p: &str) -> PathBuf {
    let home = std::env::var_os("HOME");
    match (p.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(home).join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(p),
    }
}

fn on_path(exe: &str, path_env: Option<&str>, cwd: &Path) -> bool {
    if exe.contains('/') {
        return is_executable(&cwd.join(exe));
    }
    path_env
        .unwrap_or_default()
        .split(':')
        .filter(|dir| !dir.is_empty())
        .any(|dir| is_executable(&cwd.join(dir).join(exe)))
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Filters the global lifecycle with the manifest's selections (spec §1.5, the Java nucleus'
/// `PlatformResolver.filterPlatform`). `keywords` is the union of all manifests' selections plus
/// `all`. Nulls count as missing. Returns an empty map when nothing survives.
pub(crate) fn filter_selections(
    source: &Map<String, Value>,
    keywords: &BTreeSet<String>,
    selections: &[String],
) -> Value {
    match filter_map(source, keywords, selections) {
        Some(Value::Object(m)) => Value::Object(m),
        _ => Value::Object(Map::new()),
    }
}

fn filter_map(
    source: &Map<String, Value>,
    keywords: &BTreeSet<String>,
    selections: &[String],
) -> Option<Value> {
    if source.keys().any(|k| keywords.contains(k)) {
        // A selector level: the first selection present wins, then `all`; other keys are dropped.
        let chosen = selections
            .iter()
            .find_map(|s| source.get(s).filter(|v| !v.is_null()))
            .or_else(|| source.get("all").filter(|v| !v.is_null()))?;
        return filter_any(chosen, keywords, selections);
    }
    let mut out = Map::new();
    for (k, v) in source {
        if let Some(filtered) = filter_any(v, keywords, selections) {
            out.insert(k.clone(), filtered);
        }
    }
    Some(Value::Object(out))
}

fn filter_any(v: &Value, keywords: &BTreeSet<String>, selections: &[String]) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => filter_map(m, keywords, selections),
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn skipif_parse_and_display() {
        let s = SkipIf::parse("onpath git").unwrap();
        assert_eq!(
            s,
            SkipIf {
                negate: false,
                check: SkipCheck::OnPath("git".into())
            }
        );
        let s = SkipIf::parse("  ! exists  /tmp/some file ").unwrap();
        assert!(s.negate);
        assert_eq!(s.check, SkipCheck::Exists("/tmp/some file".into()));
        assert_eq!(s.to_string(), "!exists /tmp/some file");
        for bad in [
            "",
            "exists",
            "onpath",
            "Exists /x",
            "which git",
            "exists\t/x",
        ] {
            assert!(SkipIf::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn skipif_evaluate_on_real_files() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("mytool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let plain = bin.join("notexec");
        std::fs::write(&plain, "data").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let path_env = format!("/nonexistent:{}", bin.display());
        let cwd = dir.path();
        assert!(
            SkipIf::parse("onpath mytool")
                .unwrap()
                .evaluate(Some(&path_env), cwd)
        );
        assert!(
            !SkipIf::parse("!onpath mytool")
                .unwrap()
                .evaluate(Some(&path_env), cwd)
        );
        assert!(!SkipIf::parse("onpath mytool").unwrap().evaluate(None, cwd));
        #[cfg(unix)]
        assert!(
            !SkipIf::parse("onpath notexec")
                .unwrap()
                .evaluate(Some(&path_env), cwd)
        );
        assert!(
            SkipIf::parse("onpath bin/mytool")
                .unwrap()
                .evaluate(None, cwd)
        );
        assert!(
            SkipIf::parse("exists bin/notexec")
                .unwrap()
                .evaluate(None, cwd)
        );
        assert!(
            SkipIf::parse(&format!("exists {}", plain.display()))
                .unwrap()
                .evaluate(None, Path::new("/"))
        );
        assert!(!SkipIf::parse("exists missing").unwrap().evaluate(None, cwd));
        assert!(
            SkipIf::parse("!exists missing")
                .unwrap()
                .evaluate(None, cwd)
        );
    }

    #[test]
    fn steps_in_every_form() {
        let v = json!({
            "setenv": {"A": "1", "N": 2, "B": true, "E": null},
            "install": "echo install",
            "Run": {
                "script": "echo run",
                "REQUIRESPRIVILEGE": "True",
                "Skipif": "onpath docker",
                "timeout": "30",
                "Setenv": {"X": "y"},
                "unknownField": 1
            },
            "Startup": {"Script": "s", "Timeout": 12.9, "RequiresPrivilege": false},
            "shutdown": null,
            "recover": {"Script": "r", "Timeout": 5},
            "Bootstrap": {"Script": "b"},
            "Uninstall": {"Script": "u"},
            "SomethingElse": "ignored"
        });
        let l = Lifecycle::from_value(&v, "t", "Lifecycle").unwrap();
        assert_eq!(l.setenv["A"], "1");
        assert_eq!(l.setenv["N"], "2");
        assert_eq!(l.setenv["B"], "true");
        assert_eq!(l.setenv["E"], "");
        assert_eq!(l.install.as_ref().unwrap().script, "echo install");
        let run = l.run.as_ref().unwrap();
        assert_eq!(run.script, "echo run");
        assert!(run.requires_privilege);
        assert_eq!(
            run.skip_if.as_ref().unwrap().check,
            SkipCheck::OnPath("docker".into())
        );
        assert_eq!(run.timeout, Some(Duration::from_secs(30)));
        assert_eq!(run.setenv["X"], "y");
        assert_eq!(
            l.startup.as_ref().unwrap().timeout,
            Some(Duration::from_secs(12))
        );
        assert!(!l.startup.as_ref().unwrap().requires_privilege);
        assert_eq!(l.shutdown, None);
        assert_eq!(
            l.recover.as_ref().unwrap().timeout,
            Some(Duration::from_secs(5))
        );
        assert_eq!(l.bootstrap.as_ref().unwrap().script, "b");
        assert_eq!(l.uninstall.as_ref().unwrap().script, "u");

        let canonical = l.to_value();
        assert_eq!(canonical["Run"]["Timeout"], json!(30));
        assert_eq!(canonical["Run"]["Skipif"], json!("onpath docker"));
        assert_eq!(canonical["Install"], json!({"Script": "echo install"}));
        assert_eq!(Lifecycle::from_value(&canonical, "t", "").unwrap(), l);
    }

    #[test]
    fn step_errors_name_the_field() {
        let cases = [
            (
                json!({"install": {"Timeout": "abc"}}),
                "L.install.Timeout",
                "not a number",
            ),
            (json!({"Run": {"Timeout": -1}}), "L.Run.Timeout", "negative"),
            (
                json!({"Run": {"RequiresPrivilege": "maybe"}}),
                "L.Run.RequiresPrivilege",
                "true or false",
            ),
            (
                json!({"Run": {"Skipif": "sometimes"}}),
                "L.Run.Skipif",
                "onpath",
            ),
            (json!({"Run": 5}), "L.Run", "script string"),
            (json!({"Run": {"Script": ["a"]}}), "L.Run.Script", "string"),
            (json!({"Setenv": ["a"]}), "L.Setenv", "environment"),
            (
                json!({"Run": {"Setenv": {"A": {"b": 1}}}}),
                "L.Run.Setenv.A",
                "string",
            ),
            (json!("echo"), "L", "lifecycle steps"),
        ];
        for (v, field, text) in cases {
            let e = Lifecycle::from_value(&v, "r.yaml", "L").unwrap_err();
            assert_eq!(e.field, field, "{v}");
            assert_eq!(e.origin, "r.yaml");
            assert!(e.message.contains(text), "{v}: {}", e.message);
        }
    }

    #[test]
    fn selection_filter() {
        let keywords: BTreeSet<String> = ["linux", "windows", "all"].map(String::from).into();
        let global = json!({
            "linux": {"Run": "sh run.sh"},
            "windows": {"Run": "run.cmd"},
        });
        let obj = global.as_object().unwrap();
        assert_eq!(
            filter_selections(obj, &keywords, &["linux".into()]),
            json!({"Run": "sh run.sh"})
        );
        assert_eq!(filter_selections(obj, &keywords, &[]), json!({}));

        let nested = json!({
            "Install": {"all": "echo any", "linux": "echo linux"},
            "Run": {"Script": {"windows": "w", "all": "a"}, "Timeout": 5},
            "Shutdown": {"windows": "only windows"},
            "Setenv": {"K": null}
        });
        let obj = nested.as_object().unwrap();
        assert_eq!(
            filter_selections(obj, &keywords, &["linux".into()]),
            json!({"Install": "echo linux", "Run": {"Script": "a", "Timeout": 5}, "Setenv": {}})
        );
        assert_eq!(
            filter_selections(obj, &keywords, &["windows".into(), "linux".into()]),
            json!({"Install": "echo linux", "Run": {"Script": "w", "Timeout": 5}, "Shutdown": "only windows", "Setenv": {}})
        );
    }
}
