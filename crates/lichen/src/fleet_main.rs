//! The `lichen-fleet` executable behind `lichen fleet …`: the self-hosted cloud side (registry,
//! CA, control-plane API). Kept apart from `lichen` so the core's executable carries none of it.

#[path = "cmd/fleet/mod.rs"]
mod fleet;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "lichen fleet",
    bin_name = "lichen fleet",
    version,
    about = "The self-hosted fleet service: an AWS IoT-compatible registry, CA and control-plane API"
)]
struct Cli {
    #[command(subcommand)]
    command: fleet::FleetCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match fleet::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
