//! `lichen fleet`: the self-hosted cloud side (registry, certificates, control-plane API).

mod serve;

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Run the fleet service: registry, CA and the AWS IoT-compatible control-plane API.
    Serve(serve::ServeArgs),
}

pub fn run(c: FleetCommand) -> anyhow::Result<ExitCode> {
    match c {
        FleetCommand::Serve(a) => serve::run(a),
    }
}
