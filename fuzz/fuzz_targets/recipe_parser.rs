//! Feeds arbitrary text to the recipe parser through `parse_file`, the entry point of
//! `lichen recipe validate`, as YAML or JSON (first byte chooses).
//! Properties: no panic, no hang; an accepted recipe has a path-safe name and artifact file
//! names; its canonical JSON reads back to the same recipe; selecting and interpolating its
//! manifest for a Linux device does not panic.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lichen_recipe::{ComponentVars, Format, InterpolationContext, Platform};

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());

fn recipe_file(ext: &str) -> PathBuf {
    DIR.path().join(format!("recipe.{ext}"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let path = recipe_file(if selector & 1 == 0 { "yaml" } else { "json" });
    std::fs::write(&path, text).unwrap();
    let Ok(recipe) = lichen_recipe::parse_file(&path) else {
        return;
    };
    lichen_recipe::validate_component_name(&recipe.name).expect("accepted name is path-safe");
    for manifest in &recipe.manifests {
        for artifact in &manifest.artifacts {
            if artifact.scheme() != "docker" {
                lichen_recipe::check_file_name(artifact.file_name())
                    .expect("accepted artifact file name is path-safe");
            }
        }
    }
    let canonical = recipe.to_json();
    let again = lichen_recipe::parse_str(&canonical.to_string(), Format::Json, "canonical")
        .expect("the canonical JSON of an accepted recipe is accepted");
    assert_eq!(again.to_json(), canonical, "canonical JSON round-trips");

    let platform = Platform::parse("os=linux,architecture=amd64").unwrap();
    if let Ok(selected) = recipe.select(&platform) {
        let ctx = InterpolationContext {
            root: PathBuf::from("/greengrass/v2"),
            thing_name: "thing".into(),
            component: ComponentVars {
                name: selected.name.clone(),
                version: selected.version.to_string(),
                configuration: selected.default_configuration.clone(),
            },
            dependencies: Default::default(),
        };
        let _ = selected.lifecycle.interpolate(&ctx);
    }
});
