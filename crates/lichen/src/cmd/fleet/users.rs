//! `lichen fleet user …`: the fleet's users (console logins and owners of access keys) and
//! their roles, managed on the registry directly as `role`, `audit` and `enroll` do (SQLite in
//! WAL mode beside a running fleet, or its PostgreSQL database): whoever can read the fleet
//! root administers the fleet. A change applies to the running fleet on its next request.
//!
//! Also the first start's console password: `lichen fleet serve` gives the user `admin` a
//! random password, kept in `<root>/admin/console-password` (0600, in the 0700 `admin` folder).

use anyhow::Context;
use clap::{Args, Subcommand};
use lichen_fleet_pki::{create_private_dir, sync_dir, write_private};
use lichen_fleet_registry::{Registry, Role};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Who the audit log names for changes made with this command.
const WHO: &str = "cli";

#[derive(Args)]
pub struct Fleet {
    /// Fleet root directory.
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
    /// The PostgreSQL registry the fleet serves with `--database` (instead of `<root>/fleet.db`).
    #[arg(long, env = "LICHEN_FLEET_DATABASE", value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user with a role; prints a generated password unless --password-stdin.
    Create {
        name: String,
        /// viewer (read only), operator (fleet operations) or admin (also users, access keys,
        /// policies, role aliases, provisioning templates, secrets).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Read the password from standard input (its first line) instead of generating one.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        fleet: Fleet,
    },
    /// List users as JSON lines (name, role, createdAt).
    List {
        #[command(flatten)]
        fleet: Fleet,
    },
    /// Change a user's role (effective on its next request and console page).
    SetRole {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        fleet: Fleet,
    },
    /// Replace a user's password; prints a generated one unless --password-stdin.
    SetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        fleet: Fleet,
    },
    /// Delete a user with its console sessions and access keys.
    Delete {
        name: String,
        #[command(flatten)]
        fleet: Fleet,
    },
    /// Create an access key for a user (its requests have the user's role); prints it as a
    /// shared-credentials profile, or writes `credentials` and `config` to --out.
    CreateAccessKey {
        name: String,
        /// A folder (created 0700) to write `credentials` and `config` to, 0600, for
        /// AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Region written to `config`.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        #[command(flatten)]
        fleet: Fleet,
    },
    /// List access keys (of one user, or all) as JSON lines, without secrets.
    ListAccessKeys {
        name: Option<String>,
        #[command(flatten)]
        fleet: Fleet,
    },
    /// Delete a user's access key.
    DeleteAccessKey {
        access_key_id: String,
        #[command(flatten)]
        fleet: Fleet,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: lichen_fleet_registry::RegistryError| e.to_string())
}

fn open(f: &Fleet) -> anyhow::Result<Registry> {
    super::open_registry(&f.root, f.database.as_deref(), "us-east-1", false)
}

/// A new random password: 32 random bytes, base64url.
fn generate_password() -> String {
    lichen_fleet_registry::random_token()
}

/// The password from standard input (first line), or a generated one that is printed.
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((generate_password(), true));
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from standard input")?;
    let line = s.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        anyhow::bail!("--password-stdin: standard input holds no password (its first line)");
    }
    Ok((line, false))
}

pub fn run(c: UserCommand) -> anyhow::Result<ExitCode> {
    match c {
        UserCommand::Create {
            name,
            role,
            password_stdin,
            fleet,
        } => {
            let registry = open(&fleet)?;
            let (pw, generated) = password(password_stdin)?;
            let u = registry
                .create_user(WHO, &name, &pw, role)
                .with_context(|| format!("creating user {name:?}"))?;
            eprintln!("user {} created with the role {}", u.name, u.role);
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::List { fleet } => {
            for u in open(&fleet)?.list_users()? {
                println!(
                    "{}",
                    serde_json::json!({"name": u.name, "role": u.role.as_str(), "createdAt": u.created_at / 1000})
                );
            }
        }
        UserCommand::SetRole { name, role, fleet } => {
            open(&fleet)?
                .set_user_role(WHO, &name, role)
                .with_context(|| format!("setting the role of user {name:?}"))?;
        }
        UserCommand::SetPassword {
            name,
            password_stdin,
            fleet,
        } => {
            let registry = open(&fleet)?;
            let (pw, generated) = password(password_stdin)?;
            registry
                .set_user_password(WHO, &name, &pw)
                .with_context(|| format!("setting the password of user {name:?}"))?;
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::Delete { name, fleet } => {
            open(&fleet)?
                .delete_user(WHO, &name)
                .with_context(|| format!("deleting user {name:?}"))?;
        }
        UserCommand::CreateAccessKey {
            name,
            out,
            region,
            fleet,
        } => {
            let (id, secret) = open(&fleet)?
                .create_access_key(WHO, &name, super::serve::generate_access_key)
                .with_context(|| format!("creating an access key for user {name:?}"))?;
            match out {
                Some(dir) => {
                    write_credentials(&dir, &id, &secret, &region)?;
                    eprintln!(
                        "access key {id} of user {name} written to {}",
                        dir.display()
                    );
                }
                None => print!("{}", credentials_profile(&id, &secret)),
            }
        }
        UserCommand::ListAccessKeys { name, fleet } => {
            for k in open(&fleet)?.list_access_keys(name.as_deref())? {
                println!(
                    "{}",
                    serde_json::json!({
                        "accessKeyId": k.id, "user": k.user, "kind": k.kind,
                        "role": k.role.as_str(), "createdAt": k.created_at / 1000,
                    })
                );
            }
        }
        UserCommand::DeleteAccessKey {
            access_key_id,
            fleet,
        } => {
            open(&fleet)?
                .delete_access_key(WHO, &access_key_id)
                .with_context(|| format!("deleting access key {access_key_id}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn credentials_profile(id: &str, secret: &str) -> String {
    format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n")
}

/// `credentials` and `config` (profile `default`), 0600 in a 0700 folder.
pub(crate) fn write_credentials(
    dir: &Path,
    id: &str,
    secret: &str,
    region: &str,
) -> anyhow::Result<()> {
    create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(
        &dir.join("credentials"),
        credentials_profile(id, secret).as_bytes(),
    )?;
    write_private(
        &dir.join("config"),
        format!("[default]\nregion = {region}\noutput = json\n").as_bytes(),
    )?;
    sync_dir(dir)?;
    Ok(())
}

/// At the fleet's start: the user `admin` gets a random password, written to
/// `<admin_dir>/console-password` before it is set (so a crash between the two leaves the file
/// to be used at the next start). Nothing changes once the user has a password.
pub(crate) fn ensure_console_password(registry: &Registry, admin_dir: &Path) -> anyhow::Result<()> {
    if registry.user_has_password("admin")? {
        return Ok(());
    }
    let path = admin_dir.join("console-password");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            let p = generate_password();
            create_private_dir(admin_dir)?;
            write_private(&path, format!("{p}\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            sync_dir(admin_dir)?;
            p
        }
    };
    registry
        .init_user_password("lichen", "admin", Role::Admin, &password)
        .with_context(|| format!("setting the password of user admin from {}", path.display()))?;
    tracing::info!(file = %path.display(), "the console's user admin has its first password");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_password_is_made_once_and_survives_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        let registry = Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap();
        registry
            .ensure_access_key("admin", || ("AKIAADMIN".into(), "s".into()))
            .unwrap();
        ensure_console_password(&registry, &admin).unwrap();
        let file = admin.join("console-password");
        let pw = std::fs::read_to_string(&file).unwrap();
        let pw = pw.trim();
        assert!(pw.len() >= 40);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&file), mode(&admin)), (0o600, 0o700));
        let u = registry.verify_password("admin", pw).unwrap().unwrap();
        assert_eq!(u.role, Role::Admin);
        // A restart changes nothing.
        ensure_console_password(&registry, &admin).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), pw);
        assert!(registry.verify_password("admin", pw).unwrap().is_some());

        // A file written before a crash (password not yet set) is used, not replaced.
        let dir2 = tempfile::tempdir().unwrap();
        let admin2 = dir2.path().join("admin");
        create_private_dir(&admin2).unwrap();
        write_private(&admin2.join("console-password"), b"written-before-crash\n").unwrap();
        let r2 = Registry::open(&dir2.path().join("fleet.db"), "us-east-1").unwrap();
        ensure_console_password(&r2, &admin2).unwrap();
        assert!(
            r2.verify_password("admin", "written-before-crash")
                .unwrap()
                .is_some()
        );
    }
}
