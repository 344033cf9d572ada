//! `lichen recipe …`: validate and show recipes.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum RecipeCommand {
    /// Check recipe files and report every problem with its field path.
    Validate { files: Vec<std::path::PathBuf> },
}

pub fn run(_c: RecipeCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
