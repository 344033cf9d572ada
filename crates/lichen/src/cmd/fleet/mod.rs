//! `lichen fleet`: the self-hosted cloud side (registry, certificates, control-plane API).

mod component;
mod defender;
mod deployment;
mod devices;
mod enroll;
mod greengrass;
mod lambda;
mod metrics;
mod presence;
mod provisioning;
mod role;
mod serve;
mod template;
mod users;

use anyhow::Context;
use clap::{Args, Subcommand};
use lichen_fleet_registry::Registry;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Run the fleet service: registry, CA, the AWS IoT-compatible control-plane API and the
    /// device MQTT endpoint.
    Serve(serve::ServeArgs),
    /// Enroll a device: its thing, certificate, key and policy, and a config.yaml with which
    /// `lichen core run --config` connects to this fleet.
    Enroll(enroll::EnrollArgs),
    /// Print the audit log (who changed what, when) as JSON lines, oldest first.
    Audit(AuditArgs),
    /// The permissions policies of the roles that role aliases name (what temporary
    /// credentials from the credentials provider may do).
    #[command(subcommand)]
    Role(role::RoleCommand),
    /// Greengrass deployments through the running fleet: create, preview, status, cancel, list.
    #[command(subcommand)]
    Deployment(deployment::DeploymentCommand),
    /// Greengrass components in the fleet's registry: publish a recipe folder with its
    /// artifacts, list, describe, delete; keygen makes a signing key.
    #[command(subcommand)]
    Component(component::ComponentCommand),
    /// Lambda functions for Greengrass: publish a deployment package (zip) that
    /// CreateComponentVersion's `lambdaFunction` turns into a component version.
    #[command(subcommand)]
    Lambda(lambda::LambdaCommand),
    /// The fleet's users (console logins and owners of access keys) and their roles:
    /// viewer, operator, admin; their access keys for the control API.
    #[command(subcommand)]
    User(users::UserCommand),
}

#[derive(Args)]
pub struct AuditArgs {
    /// Fleet root directory.
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
    /// The PostgreSQL registry the fleet serves with `--database` (instead of `<root>/fleet.db`).
    #[arg(long, env = "LICHEN_FLEET_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// Only entries after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many entries.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Only entries about this resource (a thing name, certificate id, `policy|target`…).
    #[arg(long)]
    pub resource: Option<String>,
}

pub fn run(c: FleetCommand) -> anyhow::Result<ExitCode> {
    match c {
        FleetCommand::Serve(a) => serve::run(a),
        FleetCommand::Enroll(a) => enroll::run(a),
        FleetCommand::Audit(a) => audit(a),
        FleetCommand::Role(c) => role::run(c),
        FleetCommand::Deployment(c) => deployment::run(c),
        FleetCommand::Component(c) => component::run(c),
        FleetCommand::Lambda(c) => lambda::run(c),
        FleetCommand::User(c) => users::run(c),
    }
}

/// Opens the fleet's registry: in PostgreSQL when `database` is given, else `<root>/fleet.db`
/// (which must exist unless `create`). Blocks: call it off async threads.
pub(crate) fn open_registry(
    root: &Path,
    database: Option<&str>,
    region: &str,
    create: bool,
) -> anyhow::Result<Registry> {
    match database {
        None => {
            let db = root.join("fleet.db");
            if !create && !db.exists() {
                anyhow::bail!(
                    "no fleet registry at {}: give the --root that `lichen fleet serve` uses \
                     (or its --database)",
                    db.display()
                );
            }
            Registry::open(&db, region).with_context(|| format!("opening {}", db.display()))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Registry::open_postgres(url, region).context("opening the fleet registry in PostgreSQL")
        }
        Some(other) => anyhow::bail!(
            "--database {other:?} is not a PostgreSQL URL: give postgres://user@host:port/db, \
             or leave --database out to keep the registry in {}",
            root.join("fleet.db").display()
        ),
    }
}

/// Reads the registry directly (SQLite in WAL mode serves readers beside a running fleet).
fn audit(a: AuditArgs) -> anyhow::Result<ExitCode> {
    let registry = open_registry(&a.root, a.database.as_deref(), "us-east-1", false)?;
    let mut out = std::io::stdout().lock();
    for e in registry.audit_log(a.after, a.limit, a.resource.as_deref())? {
        use std::io::Write;
        writeln!(out, "{}", serde_json::to_string(&e)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
