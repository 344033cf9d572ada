//! Secrets Manager secrets (CreateSecret, PutSecretValue, GetSecretValue, DescribeSecret,
//! ListSecrets, DeleteSecret): each secret has versions, and staging labels that point at one
//! version each. A new version takes `AWSCURRENT` (unless other labels are given); the version
//! that held it gets `AWSPREVIOUS`. Values are kept as given (the fleet's database is the
//! secret store; protect it as such).

use crate::db::{OptionalExtension, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Registry, RegistryError, Result, now_ms};
use base64::Engine;
use rand::Rng;

pub const CURRENT: &str = "AWSCURRENT";
pub const PREVIOUS: &str = "AWSPREVIOUS";
const MAX_VALUE: usize = 65536;

/// A secret's value: text or bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    String(String),
    Binary(Vec<u8>),
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a value.
        match self {
            SecretValue::String(s) => write!(f, "String({} bytes)", s.len()),
            SecretValue::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Secret {
    pub name: String,
    pub arn: String,
    pub description: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// When DeleteSecret scheduled it (it is then refused to GetSecretValue and hidden from lists).
    pub deleted_ms: Option<i64>,
    /// version id → its staging labels (versions without labels included).
    pub versions: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecretVersion {
    pub version_id: String,
    pub value: SecretValue,
    pub stages: Vec<String>,
    pub created_ms: i64,
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b));
    if !ok {
        return Err(RegistryError::Invalid(format!(
            "Name {name:?} is invalid: use 1 to 512 of [A-Za-z0-9/_+=.@-]"
        )));
    }
    Ok(())
}

fn validate_value(v: &SecretValue) -> Result<()> {
    let len = match v {
        SecretValue::String(s) => s.len(),
        SecretValue::Binary(b) => b.len(),
    };
    if len > MAX_VALUE {
        return Err(RegistryError::Invalid(format!(
            "the secret value is {len} bytes; the limit is {MAX_VALUE}"
        )));
    }
    Ok(())
}

fn validate_version_id(id: &str) -> Result<()> {
    if !(32..=64).contains(&id.len()) {
        return Err(RegistryError::Invalid(format!(
            "ClientRequestToken/VersionId {id:?} must be 32 to 64 characters"
        )));
    }
    Ok(())
}

fn not_found(id: &str) -> RegistryError {
    RegistryError::NotFound {
        kind: "secret",
        name: id.to_string(),
    }
}

impl Registry {
    /// `arn:aws:secretsmanager:<region>:<account>:secret:<name>-<6 random characters>`.
    fn new_secret_arn(&self, name: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut rng = rand::rng();
        let suffix: String = (0..6)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        format!(
            "arn:aws:secretsmanager:{}:{}:secret:{name}-{suffix}",
            self.region(),
            self.account()
        )
    }

    /// The secret named by `id` (its name or its ARN).
    fn secret_row(&self, tx: &Transaction<'_>, id: &str) -> Result<Option<Secret>> {
        let column = if id.starts_with("arn:") {
            "arn"
        } else {
            "name"
        };
        let row = tx
            .query_row(
                &format!(
                    "SELECT name, arn, description, created_at, updated_at, deleted_at
                     FROM secrets WHERE {column} = ?1"
                ),
                [id],
                |r| {
                    Ok(Secret {
                        name: r.get(0)?,
                        arn: r.get(1)?,
                        description: r.get(2)?,
                        created_ms: r.get(3)?,
                        updated_ms: r.get(4)?,
                        deleted_ms: r.get(5)?,
                        versions: vec![],
                    })
                },
            )
            .optional()?;
        let Some(mut s) = row else { return Ok(None) };
        let versions: Vec<(String, String)> = tx
            .prepare(
                "SELECT version_id, stages FROM secret_versions WHERE secret_name = ?1
                 ORDER BY created_at, version_id",
            )?
            .query_map([&s.name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<crate::db::DbResult<_>>()?;
        s.versions = versions
            .into_iter()
            .map(|(v, stages)| (v, serde_json::from_str(&stages).unwrap_or_default()))
            .collect();
        Ok(Some(s))
    }

    fn secret_exists(&self, tx: &Transaction<'_>, id: &str) -> Result<Secret> {
        self.secret_row(tx, id)?.ok_or_else(|| not_found(id))
    }

    /// Adds a version (or finds the same one again: a retried request with the same token and
    /// value), moving `stages` onto it; `AWSCURRENT` moving leaves `AWSPREVIOUS` on the old one.
    fn add_version(
        &self,
        tx: &Transaction<'_>,
        s: &Secret,
        version_id: &str,
        value: &SecretValue,
        stages: &[String],
    ) -> Result<()> {
        let (string, binary) = match value {
            SecretValue::String(v) => (Some(v.clone()), None),
            SecretValue::Binary(b) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
        };
        let existing: Option<(Option<String>, Option<String>)> = tx
            .query_row(
                "SELECT secret_string, secret_binary FROM secret_versions
                 WHERE secret_name = ?1 AND version_id = ?2",
                params![s.name, version_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some(old) = existing {
            if old == (string, binary) {
                return Ok(());
            }
            return Err(RegistryError::AlreadyExists {
                kind: "secret version",
                name: version_id.to_string(),
                arn: s.arn.clone(),
            });
        }
        let now = now_ms();
        let current_holder = s
            .versions
            .iter()
            .find(|(_, st)| st.iter().any(|x| x == CURRENT))
            .map(|(v, _)| v.clone());
        for (v, old_stages) in &s.versions {
            let mut kept: Vec<String> = old_stages
                .iter()
                .filter(|x| !stages.contains(x))
                .filter(|x| {
                    // AWSPREVIOUS moves to the version losing AWSCURRENT.
                    !(x.as_str() == PREVIOUS && stages.iter().any(|n| n == CURRENT))
                })
                .cloned()
                .collect();
            if stages.iter().any(|n| n == CURRENT) && current_holder.as_deref() == Some(v) {
                kept.push(PREVIOUS.to_string());
            }
            if &kept != old_stages {
                tx.execute(
                    "UPDATE secret_versions SET stages = ?3 WHERE secret_name = ?1 AND version_id = ?2",
                    params![s.name, v, serde_json::to_string(&kept).unwrap_or_default()],
                )?;
            }
        }
        tx.execute(
            "INSERT INTO secret_versions (secret_name, version_id, secret_string, secret_binary,
             stages, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                s.name,
                version_id,
                string,
                binary,
                serde_json::to_string(stages).unwrap_or_default(),
                now
            ],
        )?;
        tx.execute(
            "UPDATE secrets SET updated_at = ?2 WHERE name = ?1",
            params![s.name, now],
        )?;
        Ok(())
    }

    /// CreateSecret; with a value, its first version (`version_id`) is `AWSCURRENT`.
    pub fn create_secret(
        &self,
        who: &str,
        name: &str,
        description: Option<&str>,
        value: Option<&SecretValue>,
        version_id: &str,
    ) -> Result<Secret> {
        validate_name(name)?;
        if let Some(v) = value {
            validate_value(v)?;
            validate_version_id(version_id)?;
        }
        self.write(who, "CreateSecret", name, |tx| {
            if let Some(old) = self.secret_row(tx, name)? {
                return Err(RegistryError::AlreadyExists {
                    kind: "secret",
                    name: name.to_string(),
                    arn: old.arn,
                });
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO secrets (name, arn, description, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![name, self.new_secret_arn(name), description, now],
            )?;
            let s = self.secret_exists(tx, name)?;
            if let Some(v) = value {
                self.add_version(tx, &s, version_id, v, &[CURRENT.to_string()])?;
            }
            Ok((self.secret_exists(tx, name)?, vec![]))
        })
    }

    /// PutSecretValue: a new version with `stages` (default `AWSCURRENT`); returns the secret
    /// and the new version's labels.
    pub fn put_secret_value(
        &self,
        who: &str,
        id: &str,
        value: &SecretValue,
        version_id: &str,
        stages: Option<&[String]>,
    ) -> Result<(Secret, Vec<String>)> {
        validate_value(value)?;
        validate_version_id(version_id)?;
        let stages: Vec<String> = stages
            .map(<[String]>::to_vec)
            .unwrap_or_else(|| vec![CURRENT.to_string()]);
        self.write(who, "PutSecretValue", id, |tx| {
            let s = self.secret_exists(tx, id)?;
            if s.deleted_ms.is_some() {
                return Err(marked_for_deletion());
            }
            self.add_version(tx, &s, version_id, value, &stages)?;
            let s = self.secret_exists(tx, id)?;
            let labels = s
                .versions
                .iter()
                .find(|(v, _)| v == version_id)
                .map(|(_, l)| l.clone())
                .unwrap_or_default();
            Ok(((s, labels), vec![]))
        })
    }

    /// GetSecretValue by version id or label (neither: `AWSCURRENT`).
    pub fn get_secret_value(
        &self,
        id: &str,
        version_id: Option<&str>,
        stage: Option<&str>,
    ) -> Result<(Secret, SecretVersion)> {
        self.read(|tx| {
            let s = self.secret_exists(tx, id)?;
            if s.deleted_ms.is_some() {
                return Err(marked_for_deletion());
            }
            let want = stage.unwrap_or(CURRENT);
            let found = s.versions.iter().find(|(v, st)| match version_id {
                Some(id) => v == id && (stage.is_none() || st.iter().any(|x| x == want)),
                None => st.iter().any(|x| x == want),
            });
            let Some((v, stages)) = found else {
                return Err(RegistryError::NotFound {
                    kind: "secret version",
                    name: format!(
                        "{} (VersionId {:?}, VersionStage {want:?})",
                        s.name,
                        version_id.unwrap_or("")
                    ),
                });
            };
            let (string, binary, created): (Option<String>, Option<String>, i64) = tx.query_row(
                "SELECT secret_string, secret_binary, created_at FROM secret_versions
                 WHERE secret_name = ?1 AND version_id = ?2",
                params![s.name, v],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let value = match (string, binary) {
                (Some(s), _) => SecretValue::String(s),
                (None, Some(b)) => SecretValue::Binary(
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .unwrap_or_default(),
                ),
                (None, None) => SecretValue::String(String::new()),
            };
            let version = SecretVersion {
                version_id: v.clone(),
                value,
                stages: stages.clone(),
                created_ms: created,
            };
            Ok((s.clone(), version))
        })
    }

    pub fn describe_secret(&self, id: &str) -> Result<Secret> {
        self.read(|tx| self.secret_exists(tx, id))
    }

    /// ListSecrets in name order, without those scheduled for deletion.
    pub fn list_secrets(&self, page: &PageRequest) -> Result<Page<Secret>> {
        let after = page.after()?;
        let limit = page.limit(100, 100)?;
        self.read(|tx| {
            let names: Vec<String> = tx
                .prepare(
                    "SELECT name FROM secrets WHERE name > ?1 AND deleted_at IS NULL ORDER BY name",
                )?
                .query_map([&after], |r| r.get(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                out.push(self.secret_exists(tx, &n)?);
            }
            Ok(page::finish(out, limit, |s| s.name.clone()))
        })
    }

    /// DeleteSecret: `force` removes it now; otherwise it is scheduled (`deleted_ms`) and
    /// refused from then on. Returns the secret as it was.
    pub fn delete_secret(&self, who: &str, id: &str, force: bool) -> Result<Secret> {
        self.write(who, "DeleteSecret", id, |tx| {
            let mut s = self.secret_exists(tx, id)?;
            if force {
                tx.execute(
                    "DELETE FROM secret_versions WHERE secret_name = ?1",
                    [&s.name],
                )?;
                tx.execute("DELETE FROM secrets WHERE name = ?1", [&s.name])?;
            } else if s.deleted_ms.is_none() {
                let now = now_ms();
                tx.execute(
                    "UPDATE secrets SET deleted_at = ?2 WHERE name = ?1",
                    params![s.name, now],
                )?;
                s.deleted_ms = Some(now);
            }
            Ok((s, vec![]))
        })
    }
}

fn marked_for_deletion() -> RegistryError {
    RegistryError::Invalid(
        "You can't perform this operation on the secret because it was marked for deletion.".into(),
    )
}
