//! The component store on disk: recipes, artifacts, unarchived artifacts, garbage collection.
//!
//! Layout (flat recipe naming, not the classic hashed one):
//! `packages/recipes/<name>@<version>.recipe.json`, `packages/artifacts/<name>/<version>/<file>`,
//! `packages/artifacts-unarchived/<name>/<version>/<zip-stem>/…`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use lichen_recipe::{Format, Recipe};
use semver::Version;

use crate::error::DeployError;
use crate::fsutil;

const RECIPE_SUFFIX: &str = ".recipe.json";
const METADATA_SUFFIX: &str = ".metadata.json";

#[derive(Debug, Clone)]
pub(crate) struct Store {
    packages: PathBuf,
}

impl Store {
    pub(crate) fn new(root: &Path) -> Result<Self, DeployError> {
        let packages = root.join("packages");
        for dir in ["recipes", "artifacts", "artifacts-unarchived"] {
            let path = packages.join(dir);
            fs::create_dir_all(&path)
                .map_err(|e| DeployError::io("cannot create store directory", &path, e))?;
        }
        Ok(Store { packages })
    }

    pub(crate) fn recipe_path(
        &self,
        name: &str,
        version: &Version,
    ) -> Result<PathBuf, DeployError> {
        checked_name(name)?;
        Ok(self
            .packages
            .join("recipes")
            .join(format!("{name}@{version}{RECIPE_SUFFIX}")))
    }

    pub(crate) fn artifacts_dir(
        &self,
        name: &str,
        version: &Version,
    ) -> Result<PathBuf, DeployError> {
        checked_name(name)?;
        Ok(self
            .packages
            .join("artifacts")
            .join(name)
            .join(version.to_string()))
    }

    pub(crate) fn unarchived_dir(
        &self,
        name: &str,
        version: &Version,
    ) -> Result<PathBuf, DeployError> {
        checked_name(name)?;
        Ok(self
            .packages
            .join("artifacts-unarchived")
            .join(name)
            .join(version.to_string()))
    }

    /// Writes the recipe durably as canonical JSON.
    pub(crate) fn save_recipe(&self, recipe: &Recipe) -> Result<(), DeployError> {
        let path = self.recipe_path(&recipe.name, &recipe.version)?;
        let text = serde_json::to_vec_pretty(&recipe.to_json())
            .map_err(|e| DeployError::Config(format!("cannot serialise recipe: {e}")))?;
        fsutil::write_atomic(&path, &text)
            .map_err(|e| DeployError::io("cannot write recipe", &path, e))
    }

    /// `packages/recipes/<name>@<version>.metadata.json`: where a cloud-resolved recipe came
    /// from (its component version ARN), which artifact downloads need.
    fn metadata_path(&self, name: &str, version: &Version) -> Result<PathBuf, DeployError> {
        checked_name(name)?;
        Ok(self
            .packages
            .join("recipes")
            .join(format!("{name}@{version}{METADATA_SUFFIX}")))
    }

    pub(crate) fn save_arn(
        &self,
        name: &str,
        version: &Version,
        arn: &str,
    ) -> Result<(), DeployError> {
        let path = self.metadata_path(name, version)?;
        let text = serde_json::to_vec(&serde_json::json!({ "componentVersionArn": arn }))
            .map_err(|e| DeployError::Config(format!("cannot serialise recipe metadata: {e}")))?;
        fsutil::write_atomic(&path, &text)
            .map_err(|e| DeployError::io("cannot write recipe metadata", &path, e))
    }

    /// The component version ARN of a cloud-resolved recipe.
    pub(crate) fn arn(&self, name: &str, version: &Version) -> Option<String> {
        let path = self.metadata_path(name, version).ok()?;
        let text = fs::read(path).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
        value
            .get("componentVersionArn")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    pub(crate) fn load_recipe(&self, name: &str, version: &Version) -> Result<Recipe, DeployError> {
        let path = self.recipe_path(name, version)?;
        let text = fs::read_to_string(&path)
            .map_err(|e| DeployError::io("cannot read stored recipe", &path, e))?;
        lichen_recipe::parse_str(&text, Format::Json, &path.display().to_string()).map_err(|e| {
            DeployError::BadRecipe {
                file: path.clone(),
                message: e.to_string(),
            }
        })
    }

    /// Every stored version of `name`.
    pub(crate) fn versions(&self, name: &str) -> Result<Vec<Version>, DeployError> {
        Ok(self
            .stored_recipes()?
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect())
    }

    /// (name, version) of every recipe in the store.
    pub(crate) fn stored_recipes(&self) -> Result<Vec<(String, Version)>, DeployError> {
        let dir = self.packages.join("recipes");
        let entries =
            fs::read_dir(&dir).map_err(|e| DeployError::io("cannot list recipes", &dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DeployError::io("cannot list recipes", &dir, e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = file.strip_suffix(RECIPE_SUFFIX) else {
                continue;
            };
            let Some((name, version)) = stem.split_once('@') else {
                continue;
            };
            // Names the core never writes (a planted `..@1.0.0…`) are not components.
            if lichen_recipe::validate_component_name(name).is_err() {
                continue;
            }
            if let Ok(version) = Version::parse(version) {
                out.push((name.to_string(), version));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes every stored version not in `keep` (name → versions): recipe, artifacts and
    /// unarchived artifacts. Returns what was removed as `name@version`.
    /// `packages/artifacts`.
    pub(crate) fn artifacts_root(&self) -> PathBuf {
        self.packages.join("artifacts")
    }

    pub(crate) fn collect_garbage(
        &self,
        keep: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<Vec<String>, DeployError> {
        let kept = |name: &str, version: &str| keep.get(name).is_some_and(|s| s.contains(version));
        let mut removed = BTreeSet::new();
        for (name, version) in self.stored_recipes()? {
            let v = version.to_string();
            if !kept(&name, &v) {
                let path = self.recipe_path(&name, &version)?;
                fs::remove_file(&path)
                    .map_err(|e| DeployError::io("cannot remove recipe", &path, e))?;
                let _ = fs::remove_file(self.metadata_path(&name, &version)?);
                removed.insert(format!("{name}@{v}"));
            }
        }
        for kind in ["artifacts", "artifacts-unarchived"] {
            let base = self.packages.join(kind);
            let Ok(names) = fs::read_dir(&base) else {
                continue;
            };
            for name_entry in names.flatten() {
                let name = name_entry.file_name().to_string_lossy().into_owned();
                let name_dir = name_entry.path();
                let Ok(versions) = fs::read_dir(&name_dir) else {
                    continue;
                };
                for version_entry in versions.flatten() {
                    let v = version_entry.file_name().to_string_lossy().into_owned();
                    if !kept(&name, &v) {
                        let path = version_entry.path();
                        fsutil::remove_tree(&path)
                            .map_err(|e| DeployError::io("cannot remove artifacts", &path, e))?;
                        removed.insert(format!("{name}@{v}"));
                    }
                }
                // An emptied component directory goes too; failure just means it is not empty.
                let _ = fs::remove_dir(&name_dir);
            }
        }
        Ok(removed.into_iter().collect())
    }
}

/// Defence in depth behind recipe validation: a component name becomes one path segment under
/// the store (and the work and log folders), so `..`, `/` and friends must never reach here.
fn checked_name(name: &str) -> Result<(), DeployError> {
    lichen_recipe::validate_component_name(name)
        .map_err(|e| DeployError::BadRequest(format!("{e}; no store path is made for it")))
}

/// Parses every `.yaml`/`.yml`/`.json` file under `dir` (recursively). Nothing is written: a bad
/// file fails the whole set, naming the file and the field path. Two files defining the same
/// name@version with different content is an error naming both.
pub(crate) fn read_recipe_dir(dir: &Path) -> Result<Vec<(PathBuf, Recipe)>, DeployError> {
    let files = fsutil::walk_files(dir)
        .map_err(|e| DeployError::io("cannot read recipe directory", dir, e))?;
    let mut by_id: BTreeMap<String, (PathBuf, serde_json::Value)> = BTreeMap::new();
    let mut out = Vec::new();
    for rel in files {
        let ext = rel
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !matches!(ext.as_str(), "yaml" | "yml" | "json") {
            continue;
        }
        let path = dir.join(&rel);
        let recipe = lichen_recipe::parse_file(&path).map_err(|e| DeployError::BadRecipe {
            file: path.clone(),
            message: e.to_string(),
        })?;
        let id = format!("{}@{}", recipe.name, recipe.version);
        let canonical = recipe.to_json();
        if let Some((first, existing)) = by_id.get(&id) {
            if *existing != canonical {
                return Err(DeployError::DuplicateRecipe {
                    component: id,
                    first: first.clone(),
                    second: path,
                });
            }
            continue;
        }
        by_id.insert(id, (path.clone(), canonical));
        out.push((path, recipe));
    }
    Ok(out)
}
