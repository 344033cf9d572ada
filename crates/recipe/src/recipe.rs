//! The recipe document: parsing, validation, manifest selection and canonical output.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use semver::Version;
use serde_json::{Map, Value, json};

use crate::RecipeError;
use crate::lifecycle::{Lifecycle, filter_selections};
use crate::platform::Platform;
use crate::value::{
    expect_object, expect_string, get_ci_present, join, scalar_text, type_name, yaml_to_json,
};
use crate::version::{
    VersionRequirement, check_file_name, parse_component_version, validate_component_name,
};

/// The only `RecipeFormatVersion` Greengrass defines.
pub const RECIPE_FORMAT_VERSION: &str = "2020-01-25";

/// Recipe file syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// A parsed, validated recipe (all manifests; see [`Recipe::select`] for one platform).
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub version: Version,
    pub component_type: ComponentType,
    pub description: Option<String>,
    pub publisher: Option<String>,
    pub source: Option<String>,
    /// Always a map (`{}` when the recipe has none).
    pub default_configuration: Value,
    pub dependencies: BTreeMap<String, Dependency>,
    pub manifests: Vec<Manifest>,
    pub global_lifecycle: Option<Value>,
    /// File path or label, used in error messages.
    pub origin: String,
}

/// A recipe resolved for one platform: the chosen manifest's artifacts and lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedRecipe {
    pub name: String,
    pub version: Version,
    pub component_type: ComponentType,
    pub dependencies: BTreeMap<String, Dependency>,
    pub default_configuration: Value,
    pub lifecycle: Lifecycle,
    pub artifacts: Vec<Artifact>,
    pub manifest_index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentType {
    Generic,
    Lambda,
    Plugin,
    Nucleus,
}

impl ComponentType {
    /// The value stored in the service config (`componentType`): `GENERIC`, `LAMBDA`, …
    pub fn as_config_str(&self) -> &'static str {
        match self {
            ComponentType::Generic => "GENERIC",
            ComponentType::Lambda => "LAMBDA",
            ComponentType::Plugin => "PLUGIN",
            ComponentType::Nucleus => "NUCLEUS",
        }
    }

    /// Reads the config form (`GENERIC`, …), ignoring case.
    pub fn from_config_str(s: &str) -> Option<Self> {
        [
            ComponentType::Generic,
            ComponentType::Lambda,
            ComponentType::Plugin,
            ComponentType::Nucleus,
        ]
        .into_iter()
        .find(|t| t.as_config_str().eq_ignore_ascii_case(s))
    }

    /// The recipe form: `aws.greengrass.generic`, …
    pub fn as_recipe_str(&self) -> &'static str {
        match self {
            ComponentType::Generic => "aws.greengrass.generic",
            ComponentType::Lambda => "aws.greengrass.lambda",
            ComponentType::Plugin => "aws.greengrass.plugin",
            ComponentType::Nucleus => "aws.greengrass.nucleus",
        }
    }

    /// Reads the recipe form (`aws.greengrass.generic`, …), ignoring case.
    pub fn from_recipe_str(s: &str) -> Option<Self> {
        [
            ComponentType::Generic,
            ComponentType::Lambda,
            ComponentType::Plugin,
            ComponentType::Nucleus,
        ]
        .into_iter()
        .find(|t| t.as_recipe_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dependency {
    pub requirement: VersionRequirement,
    pub dependency_type: DependencyType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DependencyType {
    Hard,
    Soft,
}

impl DependencyType {
    /// `HARD` or `SOFT`, as in recipes and the service config (`"<name>:HARD"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            DependencyType::Hard => "HARD",
            DependencyType::Soft => "SOFT",
        }
    }
}

/// One platform-specific manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: Option<String>,
    /// Key → template; `None` is a YAML/JSON null (matches anything).
    pub platform: BTreeMap<String, Option<String>>,
    pub lifecycle: Option<Value>,
    pub selections: Vec<String>,
    pub artifacts: Vec<Artifact>,
}

impl Manifest {
    /// Whether this manifest's `Platform` is satisfied by the device (spec §1.4).
    pub fn matches(&self, platform: &Platform) -> bool {
        platform.satisfies(&self.platform)
    }

    fn has_lifecycle(&self) -> bool {
        self.lifecycle
            .as_ref()
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub uri: String,
    /// Base64 of the file's hash, as set by the cloud.
    pub digest: Option<String>,
    /// Java `MessageDigest` name, in practice `SHA-256`.
    pub algorithm: Option<String>,
    pub unarchive: Unarchive,
    pub permission: Permission,
}

impl Artifact {
    /// The scheme, lowercase: `s3`, `greengrass`, `docker`, `file`, `https`, … (`""` if none).
    pub fn scheme(&self) -> String {
        match self.uri.split_once(':') {
            Some((scheme, _)) => scheme.to_ascii_lowercase(),
            None => String::new(),
        }
    }

    /// The file name the artifact is stored under: the last path segment of the URI
    /// (`s3://b/dir/app.zip` → `app.zip`, `greengrass:app.zip` → `app.zip`).
    pub fn file_name(&self) -> &str {
        let rest = self
            .uri
            .split_once(':')
            .map_or(self.uri.as_str(), |(_, r)| r);
        let rest = match self.scheme().as_str() {
            // A query or fragment is not part of an HTTP path.
            "http" | "https" => rest.split(['?', '#']).next().unwrap_or(rest),
            _ => rest,
        };
        rest.rsplit('/').next().unwrap_or(rest)
    }

    /// The folder a ZIP artifact is unpacked to under `{artifacts:decompressedPath}`: its file
    /// name without the last extension (`model.zip` → `model`).
    pub fn unarchive_dir_name(&self) -> &str {
        let name = self.file_name();
        Path::new(name)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unarchive {
    #[default]
    None,
    Zip,
}

/// File permissions for an artifact; default read by the owner, no execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub read: Access,
    pub execute: Access,
}

impl Default for Permission {
    fn default() -> Self {
        Permission {
            read: Access::Owner,
            execute: Access::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    None,
    Owner,
    All,
}

impl Access {
    fn as_str(&self) -> &'static str {
        match self {
            Access::None => "NONE",
            Access::Owner => "OWNER",
            Access::All => "ALL",
        }
    }
}

/// Reads and parses a recipe file; `.yaml`/`.yml` are YAML, `.json` is JSON.
pub fn parse_file(path: &Path) -> Result<Recipe, RecipeError> {
    let origin = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let format = match ext.as_deref() {
        Some("yaml" | "yml") => Format::Yaml,
        Some("json") => Format::Json,
        _ => {
            return Err(RecipeError::new(
                &origin,
                "",
                "unknown recipe file extension; name the file *.yaml, *.yml or *.json",
            ));
        }
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| RecipeError::new(&origin, "", format!("cannot read recipe file: {e}")))?;
    parse_str(&text, format, &origin)
}

/// Parses and validates recipe text. `origin` names the source in errors.
pub fn parse_str(text: &str, format: Format, origin: &str) -> Result<Recipe, RecipeError> {
    // Editors on some systems write a byte-order mark; it is not part of the document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = match format {
        Format::Json => serde_json::from_str::<Value>(text).map_err(|e| {
            RecipeError::new(
                origin,
                "",
                format!(
                    "invalid JSON at line {}, column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?,
        Format::Yaml => {
            let yaml = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).map_err(|e| {
                let at = e.location().map_or(String::new(), |l| {
                    format!(" at line {}, column {}", l.line(), l.column())
                });
                RecipeError::new(origin, "", format!("invalid YAML{at}: {e}"))
            })?;
            yaml_to_json(yaml, origin)?
        }
    };
    Recipe::from_value(&root, origin)
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    origin: &str,
    what: &str,
) -> Result<(&'a str, &'a Value), RecipeError> {
    get_ci_present(obj, key)
        .ok_or_else(|| RecipeError::new(origin, key, format!("missing; expected {what}")))
}

fn optional_string(
    obj: &Map<String, Value>,
    key: &str,
    origin: &str,
) -> Result<Option<String>, RecipeError> {
    get_ci_present(obj, key)
        .map(|(k, v)| expect_string(v, origin, k))
        .transpose()
}

fn parse_enum<T: Copy>(
    v: &Value,
    origin: &str,
    field: &str,
    choices: &[(&str, T)],
) -> Result<T, RecipeError> {
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    let text = scalar_text(v).ok_or_else(|| {
        RecipeError::new(
            origin,
            field,
            format!(
                "expected one of {}, found {}",
                names.join(", "),
                type_name(v)
            ),
        )
    })?;
    choices
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(text.trim()))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            RecipeError::new(
                origin,
                field,
                format!(
                    "unknown value '{text}'; expected one of {}",
                    names.join(", ")
                ),
            )
        })
}

impl Recipe {
    fn from_value(root: &Value, origin: &str) -> Result<Self, RecipeError> {
        let obj = expect_object(
            root,
            origin,
            "",
            "a recipe map with RecipeFormatVersion, ComponentName, ComponentVersion and Manifests",
        )?;

        let (key, v) = required(obj, "RecipeFormatVersion", origin, RECIPE_FORMAT_VERSION)?;
        let format_version = expect_string(v, origin, key)?;
        if format_version.trim() != RECIPE_FORMAT_VERSION {
            return Err(RecipeError::new(
                origin,
                key,
                format!(
                    "unsupported format version '{format_version}'; expected {RECIPE_FORMAT_VERSION}"
                ),
            ));
        }

        let (key, v) = required(
            obj,
            "ComponentName",
            origin,
            "a component name such as com.example.Hello",
        )?;
        let name = expect_string(v, origin, key)?;
        validate_component_name(&name).map_err(|e| RecipeError::new(origin, key, e))?;

        let (key, v) = required(
            obj,
            "ComponentVersion",
            origin,
            "a semantic version such as 1.0.0",
        )?;
        let version_text = expect_string(v, origin, key)?;
        let version =
            parse_component_version(&version_text).map_err(|e| RecipeError::new(origin, key, e))?;

        let component_type = match get_ci_present(obj, "ComponentType") {
            None => ComponentType::Generic,
            Some((key, v)) => {
                let text = expect_string(v, origin, key)?;
                ComponentType::from_recipe_str(text.trim()).ok_or_else(|| {
                    RecipeError::new(
                        origin,
                        key,
                        format!(
                            "unknown component type '{text}'; expected aws.greengrass.generic, aws.greengrass.lambda, aws.greengrass.plugin or aws.greengrass.nucleus"
                        ),
                    )
                })?
            }
        };

        let default_configuration = parse_default_configuration(obj, origin)?;
        let dependencies = parse_dependencies(obj, origin)?;

        let global_lifecycle = match get_ci_present(obj, "Lifecycle") {
            None => None,
            Some((key, v)) => {
                expect_object(v, origin, key, "a map of lifecycle steps or selections")?;
                Some(v.clone())
            }
        };

        let manifests = parse_manifests(obj, origin)?;

        let recipe = Recipe {
            name,
            version,
            component_type,
            description: optional_string(obj, "ComponentDescription", origin)?,
            publisher: optional_string(obj, "ComponentPublisher", origin)?,
            source: optional_string(obj, "ComponentSource", origin)?,
            default_configuration,
            dependencies,
            manifests,
            global_lifecycle,
            origin: origin.to_string(),
        };
        // Check every manifest's lifecycle now, so select() fails only for a platform mismatch.
        for index in 0..recipe.manifests.len() {
            recipe.lifecycle_for(index)?;
        }
        Ok(recipe)
    }

    /// All selection keywords: the union of every manifest's `Selections`, plus `all`.
    fn selection_keywords(&self) -> BTreeSet<String> {
        let mut keywords: BTreeSet<String> = self
            .manifests
            .iter()
            .flat_map(|m| m.selections.iter().cloned())
            .collect();
        keywords.insert("all".to_string());
        keywords
    }

    /// The lifecycle of manifest `index` (spec §1.5).
    fn lifecycle_for(&self, index: usize) -> Result<Lifecycle, RecipeError> {
        let manifest = &self.manifests[index];
        if manifest.has_lifecycle() {
            let value = manifest.lifecycle.as_ref().unwrap_or(&Value::Null);
            return Lifecycle::from_value(
                value,
                &self.origin,
                &format!("Manifests[{index}].Lifecycle"),
            );
        }
        let Some(global) = self.global_lifecycle.as_ref().and_then(Value::as_object) else {
            return Ok(Lifecycle::default());
        };
        let filtered = filter_selections(global, &self.selection_keywords(), &manifest.selections);
        Lifecycle::from_value(&filtered, &self.origin, "Lifecycle").map_err(|mut e| {
            e.message = format!(
                "{} (in the global lifecycle as selected for Manifests[{index}])",
                e.message
            );
            e
        })
    }

    /// Picks the first manifest matching `platform`, then its lifecycle (spec §1.4, §1.5).
    pub fn select(&self, platform: &Platform) -> Result<SelectedRecipe, RecipeError> {
        let index = self
            .manifests
            .iter()
            .position(|m| m.matches(platform))
            .ok_or_else(|| {
                let wanted: Vec<String> = self
                    .manifests
                    .iter()
                    .map(|m| {
                        let entries: Vec<String> = m
                            .platform
                            .iter()
                            .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("*")))
                            .collect();
                        format!("{{{}}}", entries.join(","))
                    })
                    .collect();
                RecipeError::new(
                    &self.origin,
                    "Manifests",
                    format!(
                        "no manifest matches this device's platform {{{platform}}}; manifest platforms are {}; add a matching manifest or set platformOverride",
                        wanted.join(", ")
                    ),
                )
            })?;
        Ok(SelectedRecipe {
            name: self.name.clone(),
            version: self.version.clone(),
            component_type: self.component_type,
            dependencies: self.dependencies.clone(),
            default_configuration: self.default_configuration.clone(),
            lifecycle: self.lifecycle_for(index)?,
            artifacts: self.manifests[index].artifacts.clone(),
            manifest_index: index,
        })
    }

    /// The recipe in canonical Greengrass spelling; [`parse_str`] of it gives back this recipe.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("RecipeFormatVersion".into(), json!(RECIPE_FORMAT_VERSION));
        out.insert("ComponentName".into(), json!(self.name));
        out.insert("ComponentVersion".into(), json!(self.version.to_string()));
        out.insert(
            "ComponentType".into(),
            json!(self.component_type.as_recipe_str()),
        );
        for (key, value) in [
            ("ComponentDescription", &self.description),
            ("ComponentPublisher", &self.publisher),
            ("ComponentSource", &self.source),
        ] {
            if let Some(v) = value {
                out.insert(key.into(), json!(v));
            }
        }
        out.insert(
            "ComponentConfiguration".into(),
            json!({"DefaultConfiguration": self.default_configuration}),
        );
        if !self.dependencies.is_empty() {
            let deps: Map<String, Value> = self
                .dependencies
                .iter()
                .map(|(name, d)| {
                    (
                        name.clone(),
                        json!({
                            "VersionRequirement": d.requirement.as_str(),
                            "DependencyType": d.dependency_type.as_str(),
                        }),
                    )
                })
                .collect();
            out.insert("ComponentDependencies".into(), Value::Object(deps));
        }
        out.insert(
            "Manifests".into(),
            Value::Array(self.manifests.iter().map(manifest_json).collect()),
        );
        if let Some(global) = &self.global_lifecycle {
            out.insert("Lifecycle".into(), global.clone());
        }
        Value::Object(out)
    }
}

fn manifest_json(m: &Manifest) -> Value {
    let mut out = Map::new();
    if let Some(name) = &m.name {
        out.insert("Name".into(), json!(name));
    }
    if !m.platform.is_empty() {
        out.insert("Platform".into(), json!(m.platform));
    }
    if let Some(lifecycle) = &m.lifecycle {
        out.insert("Lifecycle".into(), lifecycle.clone());
    }
    if !m.selections.is_empty() {
        out.insert("Selections".into(), json!(m.selections));
    }
    if !m.artifacts.is_empty() {
        let artifacts: Vec<Value> = m
            .artifacts
            .iter()
            .map(|a| {
                let mut o = Map::new();
                o.insert("Uri".into(), json!(a.uri));
                if let Some(d) = &a.digest {
                    o.insert("Digest".into(), json!(d));
                }
                if let Some(alg) = &a.algorithm {
                    o.insert("Algorithm".into(), json!(alg));
                }
                let unarchive = match a.unarchive {
                    Unarchive::None => "NONE",
                    Unarchive::Zip => "ZIP",
                };
                o.insert("Unarchive".into(), json!(unarchive));
                o.insert(
                    "Permission".into(),
                    json!({"Read": a.permission.read.as_str(), "Execute": a.permission.execute.as_str()}),
                );
                Value::Object(o)
            })
            .collect();
        out.insert("Artifacts".into(), Value::Array(artifacts));
    }
    Value::Object(out)
}

fn parse_default_configuration(
    obj: &Map<String, Value>,
    origin: &str,
) -> Result<Value, RecipeError> {
    let Some((cc_key, cc)) = get_ci_present(obj, "ComponentConfiguration") else {
        return Ok(Value::Object(Map::new()));
    };
    let cc = expect_object(cc, origin, cc_key, "a map with DefaultConfiguration")?;
    match get_ci_present(cc, "DefaultConfiguration") {
        None => Ok(Value::Object(Map::new())),
        Some((key, v)) => {
            let path = join(cc_key, key);
            expect_object(v, origin, &path, "a map of configuration keys")?;
            Ok(v.clone())
        }
    }
}

fn parse_dependencies(
    obj: &Map<String, Value>,
    origin: &str,
) -> Result<BTreeMap<String, Dependency>, RecipeError> {
    let mut dependencies = BTreeMap::new();
    let Some((deps_key, deps)) = get_ci_present(obj, "ComponentDependencies") else {
        return Ok(dependencies);
    };
    let deps = expect_object(
        deps,
        origin,
        deps_key,
        "a map of component names to dependency settings",
    )?;
    for (dep_name, props) in deps {
        let path = join(deps_key, dep_name);
        validate_component_name(dep_name).map_err(|e| RecipeError::new(origin, &path, e))?;
        let mut dependency = Dependency {
            requirement: VersionRequirement::any(),
            dependency_type: DependencyType::Hard,
        };
        if !props.is_null() {
            let props = expect_object(
                props,
                origin,
                &path,
                "a map with VersionRequirement and DependencyType",
            )?;
            if let Some((key, v)) = get_ci_present(props, "VersionRequirement") {
                let field = join(&path, key);
                let text = expect_string(v, origin, &field)?;
                dependency.requirement = VersionRequirement::parse(&text).map_err(|e| {
                    RecipeError::new(
                        origin,
                        &field,
                        format!(
                            "{e}; expected an npm-style range such as >=1.0.0 <2.0.0 or ^1.2.0"
                        ),
                    )
                })?;
            }
            if let Some((key, v)) = get_ci_present(props, "DependencyType") {
                dependency.dependency_type = parse_enum(
                    v,
                    origin,
                    &join(&path, key),
                    &[
                        ("HARD", DependencyType::Hard),
                        ("SOFT", DependencyType::Soft),
                    ],
                )?;
            }
        }
        dependencies.insert(dep_name.clone(), dependency);
    }
    Ok(dependencies)
}

fn parse_manifests(obj: &Map<String, Value>, origin: &str) -> Result<Vec<Manifest>, RecipeError> {
    let (key, list) = match get_ci_present(obj, "Manifests") {
        Some(found) => found,
        None => {
            return Err(RecipeError::new(
                origin,
                "Manifests",
                "recipe has no manifests; expected a list with at least one manifest (e.g. - Platform: {os: linux})",
            ));
        }
    };
    let items = list.as_array().ok_or_else(|| {
        RecipeError::new(
            origin,
            key,
            format!("expected a list of manifests, found {}", type_name(list)),
        )
    })?;
    if items.is_empty() {
        return Err(RecipeError::new(
            origin,
            key,
            "recipe has no manifests; expected a list with at least one manifest",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_manifest(item, origin, &format!("{key}[{i}]")))
        .collect()
}

fn parse_manifest(v: &Value, origin: &str, path: &str) -> Result<Manifest, RecipeError> {
    if v.is_null() {
        return Err(RecipeError::new(
            origin,
            path,
            "manifest is null; remove the empty list entry",
        ));
    }
    let obj = expect_object(
        v,
        origin,
        path,
        "a manifest map with Platform, Lifecycle, Selections, Artifacts",
    )?;

    let name = get_ci_present(obj, "Name")
        .map(|(k, v)| expect_string(v, origin, &join(path, k)))
        .transpose()?;

    let mut platform = BTreeMap::new();
    if let Some((key, v)) = get_ci_present(obj, "Platform") {
        let ppath = join(path, key);
        let map = expect_object(
            v,
            origin,
            &ppath,
            "a map of platform attributes such as os: linux",
        )?;
        for (attr, template) in map {
            let template = match template {
                Value::Null => None,
                other => Some(scalar_text(other).ok_or_else(|| {
                    RecipeError::new(
                        origin,
                        &join(&ppath, attr),
                        format!("expected a string template, found {}", type_name(other)),
                    )
                })?),
            };
            platform.insert(attr.clone(), template);
        }
    }

    let lifecycle = match get_ci_present(obj, "Lifecycle") {
        None => None,
        Some((key, v)) => {
            expect_object(v, origin, &join(path, key), "a map of lifecycle steps")?;
            Some(v.clone())
        }
    };

    let mut selections = Vec::new();
    if let Some((key, v)) = get_ci_present(obj, "Selections") {
        let spath = join(path, key);
        let items = v.as_array().ok_or_else(|| {
            RecipeError::new(
                origin,
                &spath,
                format!("expected a list of selection keys, found {}", type_name(v)),
            )
        })?;
        for (i, item) in items.iter().enumerate() {
            selections.push(expect_string(item, origin, &format!("{spath}[{i}]"))?);
        }
    }

    let mut artifacts = Vec::new();
    if let Some((key, v)) = get_ci_present(obj, "Artifacts") {
        let apath = join(path, key);
        let items = v.as_array().ok_or_else(|| {
            RecipeError::new(
                origin,
                &apath,
                format!("expected a list of artifacts, found {}", type_name(v)),
            )
        })?;
        let mut file_names = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{apath}[{i}]");
            let artifact = parse_artifact(item, origin, &item_path)?;
            // Artifacts share one directory per component version; docker images are not files.
            if artifact.scheme() != "docker" && !file_names.insert(artifact.file_name().to_string())
            {
                return Err(RecipeError::new(
                    origin,
                    &item_path,
                    format!(
                        "artifact file name '{}' is used twice in this manifest; each artifact needs a distinct file name",
                        artifact.file_name()
                    ),
                ));
            }
            artifacts.push(artifact);
        }
    }

    Ok(Manifest {
        name,
        platform,
        lifecycle,
        selections,
        artifacts,
    })
}

fn parse_artifact(v: &Value, origin: &str, path: &str) -> Result<Artifact, RecipeError> {
    let obj = expect_object(v, origin, path, "an artifact map with Uri")?;
    let (key, uri) = get_ci_present(obj, "Uri").ok_or_else(|| {
        RecipeError::new(
            origin,
            &join(path, "Uri"),
            "missing; expected an artifact URI such as s3://bucket/key or greengrass:name",
        )
    })?;
    let uri_path = join(path, key);
    let uri = expect_string(uri, origin, &uri_path)?;
    if uri.trim().is_empty() {
        return Err(RecipeError::new(
            origin,
            &uri_path,
            "empty URI; expected an artifact URI such as s3://bucket/key",
        ));
    }
    let digest = get_ci_present(obj, "Digest")
        .map(|(k, v)| expect_string(v, origin, &join(path, k)))
        .transpose()?;
    let algorithm = get_ci_present(obj, "Algorithm")
        .map(|(k, v)| expect_string(v, origin, &join(path, k)))
        .transpose()?;
    let unarchive = match get_ci_present(obj, "Unarchive") {
        None => Unarchive::None,
        Some((k, v)) => parse_enum(
            v,
            origin,
            &join(path, k),
            &[("NONE", Unarchive::None), ("ZIP", Unarchive::Zip)],
        )?,
    };
    let mut permission = Permission::default();
    if let Some((k, v)) = get_ci_present(obj, "Permission") {
        let ppath = join(path, k);
        let p = expect_object(v, origin, &ppath, "a map with Read and Execute")?;
        let access = [
            ("NONE", Access::None),
            ("OWNER", Access::Owner),
            ("ALL", Access::All),
        ];
        if let Some((k, v)) = get_ci_present(p, "Read") {
            permission.read = parse_enum(v, origin, &join(&ppath, k), &access)?;
        }
        if let Some((k, v)) = get_ci_present(p, "Execute") {
            permission.execute = parse_enum(v, origin, &join(&ppath, k), &access)?;
        }
    }
    let artifact = Artifact {
        uri,
        digest,
        algorithm,
        unarchive,
        permission,
    };
    // Docker images are not files; everything else lands in the store under its file name.
    if artifact.scheme() != "docker" {
        check_file_name(artifact.file_name())
            .map_err(|e| RecipeError::new(origin, &uri_path, e))?;
        if artifact.unarchive == Unarchive::Zip {
            check_file_name(artifact.unarchive_dir_name()).map_err(|e| {
                RecipeError::new(
                    origin,
                    &uri_path,
                    format!("{e} (without its extension it names the folder the ZIP unpacks to)"),
                )
            })?;
        }
    }
    Ok(artifact)
}
