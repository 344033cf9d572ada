//! IoT policies (versioned documents) and their attachments to certificates and thing groups.

use crate::db::{OptionalExtension, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Change, Registry, RegistryError, Result, now_ms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub arn: String,
    /// The default version's document (JSON text as given).
    pub document: String,
    pub default_version: i64,
    pub generation: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Checks the shape AWS IoT accepts: a JSON object with `Statement` (one or a list), each with
/// `Effect` Allow|Deny, `Action` and `Resource`.
pub(crate) fn validate_document(doc: &str) -> Result<()> {
    let bad = |why: &str| RegistryError::MalformedPolicy(format!("policy document: {why}"));
    let v: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let statements = match v.get("Statement") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(o @ serde_json::Value::Object(_)) => vec![o.clone()],
        _ => return Err(bad("needs a Statement (an object or a list of objects)")),
    };
    if statements.is_empty() {
        return Err(bad("Statement is empty"));
    }
    for (i, s) in statements.iter().enumerate() {
        match s.get("Effect").and_then(|e| e.as_str()) {
            Some("Allow" | "Deny") => {}
            _ => return Err(bad(&format!("Statement[{i}].Effect must be Allow or Deny"))),
        }
        for field in ["Action", "Resource"] {
            match s.get(field) {
                Some(serde_json::Value::String(_)) => {}
                Some(serde_json::Value::Array(a)) if a.iter().all(|x| x.is_string()) => {}
                _ => {
                    return Err(bad(&format!(
                        "Statement[{i}].{field} must be a string or a list of strings"
                    )));
                }
            }
        }
    }
    Ok(())
}

impl Registry {
    fn policy_row(&self, tx: &Transaction<'_>, name: &str) -> Result<Option<Policy>> {
        Ok(tx
            .query_row(
                "SELECT p.name, v.document, p.default_version, p.generation, p.created_at,
                 p.updated_at FROM policies p JOIN policy_versions v
                 ON v.policy_name = p.name AND v.version = p.default_version WHERE p.name = ?1",
                [name],
                |r| {
                    Ok(Policy {
                        name: r.get(0)?,
                        arn: String::new(),
                        document: r.get(1)?,
                        default_version: r.get(2)?,
                        generation: r.get(3)?,
                        created_ms: r.get(4)?,
                        updated_ms: r.get(5)?,
                    })
                },
            )
            .optional()?
            .map(|mut p| {
                p.arn = self.arn(&format!("policy/{}", p.name));
                p
            }))
    }

    fn policy_exists(&self, tx: &Transaction<'_>, name: &str) -> Result<Policy> {
        self.policy_row(tx, name)?.ok_or(RegistryError::NotFound {
            kind: "policy",
            name: name.into(),
        })
    }

    /// CreatePolicy (version 1, the default).
    pub fn create_policy(&self, who: &str, name: &str, document: &str) -> Result<Policy> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'+' | b'=' | b',' | b'.' | b'@' | b'_' | b'-')
            });
        if !ok {
            return Err(RegistryError::Invalid(format!(
                "policy name {name:?} is invalid: use 1 to 128 of [a-zA-Z0-9+=,.@_-]"
            )));
        }
        validate_document(document)?;
        self.write(who, "CreatePolicy", name, |tx| {
            if let Some(p) = self.policy_row(tx, name)? {
                return Err(RegistryError::AlreadyExists {
                    kind: "policy",
                    name: name.into(),
                    arn: p.arn,
                });
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO policies (name, default_version, generation, created_at, updated_at)
                 VALUES (?1, 1, 1, ?2, ?2)",
                params![name, now],
            )?;
            tx.execute(
                "INSERT INTO policy_versions (policy_name, version, document, created_at)
                 VALUES (?1, 1, ?2, ?3)",
                params![name, document, now],
            )?;
            Ok((self.policy_exists(tx, name)?, vec![]))
        })
    }

    /// CreatePolicyVersion; `set_as_default` makes it the document in force.
    pub fn create_policy_version(
        &self,
        who: &str,
        name: &str,
        document: &str,
        set_as_default: bool,
    ) -> Result<(i64, bool)> {
        validate_document(document)?;
        self.write(who, "CreatePolicyVersion", name, |tx| {
            self.policy_exists(tx, name)?;
            let (count, max): (i64, i64) = tx.query_row(
                "SELECT COUNT(*), COALESCE(MAX(version), 0) FROM policy_versions
                 WHERE policy_name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if count >= 5 {
                return Err(RegistryError::Invalid(format!(
                    "policy {name:?} already has 5 versions; delete one (DeletePolicyVersion)"
                )));
            }
            let version = max + 1;
            let now = now_ms();
            tx.execute(
                "INSERT INTO policy_versions (policy_name, version, document, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![name, version, document, now],
            )?;
            let mut changes = vec![];
            if set_as_default {
                tx.execute(
                    "UPDATE policies SET default_version = ?2, generation = generation + 1,
                     updated_at = ?3 WHERE name = ?1",
                    params![name, version, now],
                )?;
                changes.push(Change::Policy {
                    policy_name: name.into(),
                });
            }
            Ok(((version, set_as_default), changes))
        })
    }

    pub fn get_policy(&self, name: &str) -> Result<Policy> {
        self.read(|tx| self.policy_exists(tx, name))
    }

    /// ListPolicies: (name, arn) in name order.
    pub fn list_policies(&self, page: &PageRequest) -> Result<Page<(String, String)>> {
        let after = page.after()?;
        let limit = page.limit(25, 250)?;
        self.read(|tx| {
            let out: Vec<(String, String)> = tx
                .prepare("SELECT name FROM policies WHERE name > ?1 ORDER BY name")?
                .query_map([&after], |r| r.get::<_, String>(0))?
                .take(limit + 1)
                .map(|n| n.map(|n| (n.clone(), self.arn(&format!("policy/{n}")))))
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(out, limit, |(n, _)| n.clone()))
        })
    }

    /// DeletePolicy: refused while attached or while it has versions besides the default.
    pub fn delete_policy(&self, who: &str, name: &str) -> Result<()> {
        self.write(who, "DeletePolicy", name, |tx| {
            self.policy_exists(tx, name)?;
            let targets: i64 = tx.query_row(
                "SELECT COUNT(*) FROM policy_targets WHERE policy_name = ?1",
                [name],
                |r| r.get(0),
            )?;
            if targets > 0 {
                return Err(RegistryError::DeleteConflict(format!(
                    "policy {name:?} is attached to {targets} target(s); detach it \
                     (DetachPolicy) first"
                )));
            }
            let versions: i64 = tx.query_row(
                "SELECT COUNT(*) FROM policy_versions WHERE policy_name = ?1",
                [name],
                |r| r.get(0),
            )?;
            if versions > 1 {
                return Err(RegistryError::DeleteConflict(format!(
                    "policy {name:?} has {} non-default version(s); delete them first",
                    versions - 1
                )));
            }
            tx.execute("DELETE FROM policy_versions WHERE policy_name = ?1", [name])?;
            tx.execute("DELETE FROM policies WHERE name = ?1", [name])?;
            Ok((
                (),
                vec![Change::Policy {
                    policy_name: name.into(),
                }],
            ))
        })
    }

    /// Checks that `target` is a registered certificate ARN or thing-group ARN.
    fn target_exists(&self, tx: &Transaction<'_>, target: &str) -> Result<()> {
        if self.certificate_id_of(target).is_some() {
            self.principal_cert(tx, target)?;
            return Ok(());
        }
        if let Some(g) = target.strip_prefix(&self.arn("thinggroup/")) {
            self.describe_group_in(tx, g)?;
            return Ok(());
        }
        Err(RegistryError::Invalid(format!(
            "target {target:?} is neither a certificate ARN nor a thing-group ARN of this fleet"
        )))
    }

    fn describe_group_in(&self, tx: &Transaction<'_>, name: &str) -> Result<()> {
        let n: i64 = tx.query_row(
            "SELECT COUNT(*) FROM thing_groups WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        if n == 0 {
            return Err(RegistryError::NotFound {
                kind: "thing group",
                name: name.into(),
            });
        }
        Ok(())
    }

    /// AttachPolicy (idempotent).
    pub fn attach_policy(&self, who: &str, policy: &str, target: &str) -> Result<()> {
        self.write(who, "AttachPolicy", &format!("{policy}|{target}"), |tx| {
            self.policy_exists(tx, policy)?;
            self.target_exists(tx, target)?;
            let n = tx.execute(
                "INSERT INTO policy_targets (policy_name, target) SELECT ?1, ?2
                 WHERE NOT EXISTS (SELECT 1 FROM policy_targets
                   WHERE policy_name = ?1 AND target = ?2)",
                params![policy, target],
            )?;
            let changes = if n > 0 {
                vec![Change::PolicyAttachment {
                    policy_name: policy.into(),
                    target: target.into(),
                    attached: true,
                }]
            } else {
                vec![]
            };
            Ok(((), changes))
        })
    }

    /// DetachPolicy (idempotent for an existing policy).
    pub fn detach_policy(&self, who: &str, policy: &str, target: &str) -> Result<()> {
        self.write(who, "DetachPolicy", &format!("{policy}|{target}"), |tx| {
            self.policy_exists(tx, policy)?;
            let n = tx.execute(
                "DELETE FROM policy_targets WHERE policy_name = ?1 AND target = ?2",
                params![policy, target],
            )?;
            let changes = if n > 0 {
                vec![Change::PolicyAttachment {
                    policy_name: policy.into(),
                    target: target.into(),
                    attached: false,
                }]
            } else {
                vec![]
            };
            Ok(((), changes))
        })
    }

    /// ListAttachedPolicies: (name, arn) attached to `target`; with `recursive` and a
    /// thing-group target, also those of its ancestors.
    pub fn list_attached_policies(
        &self,
        target: &str,
        recursive: bool,
        page: &PageRequest,
    ) -> Result<Page<(String, String)>> {
        let after = page.after()?;
        let limit = page.limit(25, 250)?;
        self.read(|tx| {
            self.target_exists(tx, target)?;
            let mut targets = vec![target.to_string()];
            if recursive && let Some(g) = target.strip_prefix(&self.arn("thinggroup/")) {
                let mut up: Option<String> = Some(g.to_string());
                while let Some(name) = up {
                    up = tx
                        .query_row(
                            "SELECT parent FROM thing_groups WHERE name = ?1",
                            [&name],
                            |r| r.get::<_, Option<String>>(0),
                        )
                        .optional()?
                        .flatten();
                    if let Some(p) = &up {
                        targets.push(self.arn(&format!("thinggroup/{p}")));
                    }
                    if targets.len() > 8 {
                        break;
                    }
                }
            }
            let mut names = std::collections::BTreeSet::new();
            let mut stmt = tx.prepare(
                "SELECT policy_name FROM policy_targets WHERE target = ?1 AND policy_name > ?2",
            )?;
            for t in &targets {
                for n in stmt.query_map(params![t, after], |r| r.get::<_, String>(0))? {
                    names.insert(n?);
                }
            }
            let out: Vec<(String, String)> = names
                .into_iter()
                .take(limit + 1)
                .map(|n| {
                    let arn = self.arn(&format!("policy/{n}"));
                    (n, arn)
                })
                .collect();
            Ok(page::finish(out, limit, |(n, _)| n.clone()))
        })
    }

    /// ListTargetsForPolicy: target ARNs in order.
    pub fn list_targets_for_policy(
        &self,
        policy: &str,
        page: &PageRequest,
    ) -> Result<Page<String>> {
        let after = page.after()?;
        let limit = page.limit(25, 250)?;
        self.read(|tx| {
            self.policy_exists(tx, policy)?;
            let out: Vec<String> = tx
                .prepare(
                    "SELECT target FROM policy_targets WHERE policy_name = ?1 AND target > ?2
                     ORDER BY target",
                )?
                .query_map(params![policy, after], |r| r.get(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(out, limit, Clone::clone))
        })
    }
}
