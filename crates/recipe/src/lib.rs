//! Greengrass V2 component recipes: parse, validate, select a manifest, interpolate.
//!
//! This crate is the recipe model of Lichen. It reads YAML and JSON recipes the way the Greengrass
//! Java nucleus accepts them (field names and enum values case-insensitive, unknown fields ignored),
//! validates them with field paths, picks the manifest for a device [`Platform`], selects the
//! [`Lifecycle`] (manifest lifecycle, or the global one filtered by `Selections`), interpolates
//! `{namespace:key}` recipe variables and evaluates npm-style [`VersionRequirement`]s.
//!
//! ```
//! use lichen_recipe::{parse_str, Format, Platform};
//! let recipe = parse_str(
//!     "RecipeFormatVersion: '2020-01-25'\nComponentName: com.example.Hello\nComponentVersion: 1.0.0\n\
//!      Manifests:\n  - Platform: {os: linux}\n    Lifecycle: {Run: echo hello}\n",
//!     Format::Yaml,
//!     "hello.yaml",
//! )
//! .unwrap();
//! let selected = recipe.select(&Platform::parse("os=linux,architecture=amd64").unwrap()).unwrap();
//! assert_eq!(selected.lifecycle.run.unwrap().script, "echo hello");
//! ```
//!
//! Architecture invariant: this crate is pure. It does no I/O except reading one recipe file in
//! [`parse_file`], detecting the host in [`Platform::detect`] and checking the file system and
//! `PATH` in [`SkipIf::evaluate`]. It knows no other Lichen crate.
//!
//! Architecture invariant: every [`RecipeError`] names the origin (file path or label), the field
//! path inside the recipe (as spelled in the file, e.g. `Manifests[1].Lifecycle.install.Timeout`)
//! and what was expected, so a user can fix the recipe without reading our code.
//!
//! Architecture invariant: [`Lifecycle::to_value`] and [`Recipe::to_json`] write the canonical
//! Greengrass spelling, and reading that output back yields the same value.

mod interpolate;
mod lifecycle;
mod platform;
mod recipe;
mod value;
mod version;

pub use semver::Version;

pub use interpolate::{ComponentVars, InterpolationContext, interpolate};
pub use lifecycle::{Lifecycle, SkipCheck, SkipIf, Step};
pub use platform::Platform;
pub use recipe::{
    Access, Artifact, ComponentType, Dependency, DependencyType, Format, Manifest, Permission,
    RECIPE_FORMAT_VERSION, Recipe, SelectedRecipe, Unarchive, parse_file, parse_str,
};
pub use version::{
    VersionRequirement, check_file_name, parse_component_version, validate_component_name,
};

/// A recipe that cannot be read, or cannot be used on this device.
///
/// `field` is the path of the offending field as spelled in the recipe
/// (`Manifests[1].Lifecycle.install.Timeout`), or `""` when the whole file is at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}: {field}: {message}")]
pub struct RecipeError {
    pub origin: String,
    pub field: String,
    pub message: String,
}

impl RecipeError {
    pub(crate) fn new(origin: &str, field: &str, message: impl Into<String>) -> Self {
        RecipeError {
            origin: origin.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}
