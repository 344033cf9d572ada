//! The `lichen` binary: command-line parsing and the wiring of the kernel crates and services.
//! Architecture invariant: no domain logic lives here; every verb turns its arguments into calls on
//! the library crates (in-process for `core run`, over Greengrass IPC for the CLI verbs).

mod cli_client;
mod cmd;
mod logfile;
mod output;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lichen",
    version,
    about = "Lichen: an edge runtime compatible with AWS IoT Greengrass V2"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run or inspect the device core (the nucleus).
    #[command(subcommand)]
    Core(cmd::core::CoreCommand),
    /// Validate and inspect component recipes.
    #[command(subcommand)]
    Recipe(cmd::recipe::RecipeCommand),
    /// Create and inspect deployments on a running core.
    #[command(subcommand)]
    Deployment(cmd::deployment::DeploymentCommand),
    /// List, inspect, restart and stop components on a running core.
    #[command(subcommand)]
    Component(cmd::component::ComponentCommand),
    /// Print component logs (or the core's own log).
    Logs(cmd::logs::LogsArgs),
    /// Run a standalone MQTT broker.
    Broker(cmd::broker::BrokerArgs),
    /// Run a standalone stream manager server.
    StreamManager(cmd::streams::StreamManagerArgs),
    /// Lambda functions as components (`launch` is a Lambda component's lifecycle step).
    #[command(subcommand)]
    Lambda(cmd::lambda::LambdaCommand),
    /// Run the self-hosted fleet service (the cloud side): `lichen fleet serve|audit …`.
    #[cfg(feature = "fleet")]
    #[command(disable_help_flag = true)]
    Fleet(FleetArgs),
}

/// Everything after `lichen fleet`, handed to the `lichen-fleet` executable.
#[cfg(feature = "fleet")]
#[derive(clap::Args)]
struct FleetArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

/// Replaces this process with `lichen-fleet` from the same directory (the fleet is kept out of
/// the core's executable; see Cargo.toml).
#[cfg(feature = "fleet")]
fn run_fleet(a: FleetArgs) -> anyhow::Result<std::process::ExitCode> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe()?;
    let fleet = me.with_file_name("lichen-fleet");
    let err = std::process::Command::new(&fleet).args(&a.args).exec();
    anyhow::bail!(
        "cannot run {} ({err}): `lichen fleet` needs the lichen-fleet executable beside lichen \
         (built with the `fleet` feature)",
        fleet.display()
    )
}

fn main() -> std::process::ExitCode {
    // Every command may start and wait for processes (components, a re-exec, the CLI's pager-free
    // children): an inherited ignored SIGCHLD would make their exit statuses vanish.
    lichen_supervisor::restore_child_exit_signal();
    // Likewise a blocked mask: the core would never hear SIGTERM, nor would its components.
    lichen_supervisor::unblock_inherited_signals();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Core(c) => cmd::core::run(c),
        Command::Recipe(c) => cmd::recipe::run(c),
        Command::Deployment(c) => cmd::deployment::run(c),
        Command::Component(c) => cmd::component::run(c),
        Command::Logs(a) => cmd::logs::run(a),
        Command::Broker(a) => cmd::broker::run(a),
        Command::StreamManager(a) => cmd::streams::run(a),
        Command::Lambda(c) => cmd::lambda::run(c),
        #[cfg(feature = "fleet")]
        Command::Fleet(a) => run_fleet(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
