//! The `lichen` binary: command-line parsing and wiring of the kernel crates and services.
//! It holds no logic of its own beyond turning arguments into calls.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lichen", version, about = "Lichen: an edge runtime compatible with AWS IoT Greengrass V2")]
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
    /// Run a standalone MQTT broker.
    Broker(cmd::broker::BrokerArgs),
    /// Run a standalone stream manager server.
    StreamManager(cmd::streams::StreamManagerArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Core(c) => cmd::core::run(c),
        Command::Recipe(c) => cmd::recipe::run(c),
        Command::Broker(a) => cmd::broker::run(a),
        Command::StreamManager(a) => cmd::streams::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
