//! `lichen fleet role put|get`: the permissions policy of a role that role aliases name. The
//! fleet has no IAM: temporary credentials from the credentials provider may do exactly what
//! this IAM-style policy allows (nothing, when a role has none).

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum RoleCommand {
    /// Store (replace) a role's permissions policy: an IAM-style JSON document whose actions
    /// name control-plane operations (`iot:DescribeThing`, `iot:*`, `iot:Publish` for
    /// iot-data Publish) and whose resources are ARNs or `*`.
    Put(PutArgs),
    /// Print a role's permissions policy.
    Get(GetArgs),
}

#[derive(Args)]
pub struct PutArgs {
    /// Fleet root directory.
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
    /// The role ARN a role alias names (`arn:aws:iam::<account>:role/<name>`).
    #[arg(long)]
    pub role_arn: String,
    /// The policy document (JSON).
    #[arg(long)]
    pub policy_file: PathBuf,
}

#[derive(Args)]
pub struct GetArgs {
    /// Fleet root directory.
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
    #[arg(long)]
    pub role_arn: String,
}

pub fn run(c: RoleCommand) -> anyhow::Result<ExitCode> {
    match c {
        RoleCommand::Put(a) => {
            check_role_arn(&a.role_arn)?;
            let doc = std::fs::read_to_string(&a.policy_file)
                .with_context(|| format!("reading {}", a.policy_file.display()))?;
            lichen_fleet_policy::Policy::parse(&a.role_arn, &doc).with_context(|| {
                format!(
                    "{} is not a usable policy document",
                    a.policy_file.display()
                )
            })?;
            open(&a.root)?.put_role_policy("operator", &a.role_arn, &doc)?;
            Ok(ExitCode::SUCCESS)
        }
        RoleCommand::Get(a) => match open(&a.root)?.role_policy(&a.role_arn)? {
            Some(doc) => {
                println!("{doc}");
                Ok(ExitCode::SUCCESS)
            }
            None => anyhow::bail!(
                "role {} has no permissions policy; store one with `lichen fleet role put`",
                a.role_arn
            ),
        },
    }
}

fn check_role_arn(arn: &str) -> anyhow::Result<()> {
    let ok = arn
        .strip_prefix("arn:aws:iam::")
        .and_then(|r| r.split_once(":role/"))
        .is_some_and(|(account, name)| !account.is_empty() && !name.is_empty());
    if !ok {
        anyhow::bail!(
            "--role-arn {arn:?} is not a role ARN; it looks like arn:aws:iam::123456789012:role/NAME \
             (the roleArn of the role alias)"
        );
    }
    Ok(())
}

/// The registry, read and written directly (SQLite in WAL mode beside a running fleet).
fn open(root: &Path) -> anyhow::Result<lichen_fleet_registry::Registry> {
    let db = root.join("fleet.db");
    if !db.exists() {
        anyhow::bail!(
            "no fleet registry at {}: give the --root that `lichen fleet serve` uses",
            db.display()
        );
    }
    lichen_fleet_registry::Registry::open(&db, "us-east-1")
        .with_context(|| format!("opening {}", db.display()))
}
