//! `lichen core …`: run the device core.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum CoreCommand {
    /// Run the core in the foreground.
    Run,
}

pub fn run(_c: CoreCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
