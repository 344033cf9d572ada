//! `lichen recipe …`: validate and show recipes without a running core.

use clap::Subcommand;
use lichen_recipe::{InterpolationContext, Platform};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum RecipeCommand {
    /// Check recipe files; every problem is reported with its file and field path.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the manifest selected for a platform, with variables resolved as far as possible.
    Show {
        file: PathBuf,
        /// Platform attributes, e.g. `os=linux,architecture=amd64` (default: this machine).
        #[arg(long)]
        platform: Option<String>,
        /// Core root used for path variables.
        #[arg(long, env = "LICHEN_ROOT", default_value = "./lichen-root")]
        root: PathBuf,
        /// Thing name used for `{iot:thingName}`.
        #[arg(long, default_value = "")]
        thing_name: String,
    },
}

pub fn run(c: RecipeCommand) -> anyhow::Result<ExitCode> {
    match c {
        RecipeCommand::Validate { files } => {
            let mut bad = 0;
            for f in &files {
                match lichen_recipe::parse_file(f) {
                    Ok(r) => println!("{}: ok ({} {})", f.display(), r.name, r.version),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            if bad > 0 {
                eprintln!("{bad} of {} recipe(s) invalid", files.len());
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        RecipeCommand::Show {
            file,
            platform,
            root,
            thing_name,
        } => {
            let recipe = lichen_recipe::parse_file(&file)?;
            let platform = match platform {
                Some(p) => Platform::parse(&p).map_err(|e| anyhow::anyhow!("--platform: {e}"))?,
                None => Platform::detect(),
            };
            let selected = recipe.select(&platform)?;
            let root = std::path::absolute(&root)?;
            let ctx = InterpolationContext {
                root,
                thing_name,
                component: lichen_recipe::ComponentVars {
                    name: selected.name.clone(),
                    version: selected.version.to_string(),
                    configuration: selected.default_configuration.clone(),
                },
                dependencies: Default::default(),
            };
            let lifecycle = selected.lifecycle.interpolate(&ctx);
            let artifacts: Vec<serde_json::Value> = selected
                .artifacts
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "Uri": a.uri,
                        "Digest": a.digest,
                        "Algorithm": a.algorithm,
                        "Unarchive": format!("{:?}", a.unarchive).to_uppercase(),
                    })
                })
                .collect();
            let dependencies: serde_json::Map<String, serde_json::Value> = selected
                .dependencies
                .iter()
                .map(|(n, d)| {
                    (
                        n.clone(),
                        serde_json::json!({
                            "VersionRequirement": d.requirement.as_str(),
                            "DependencyType": d.dependency_type.as_str(),
                        }),
                    )
                })
                .collect();
            let out = serde_json::json!({
                "ComponentName": selected.name,
                "ComponentVersion": selected.version.to_string(),
                "ComponentType": selected.component_type.as_config_str(),
                "Platform": platform.attributes,
                "SelectedManifest": selected.manifest_index,
                "ComponentDependencies": dependencies,
                "DefaultConfiguration": selected.default_configuration,
                "Lifecycle": lifecycle.to_value(),
                "Artifacts": artifacts,
            });
            print!("{}", serde_yaml_ng::to_string(&out)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
