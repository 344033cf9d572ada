//! Certificates, thing principals, role aliases, and the device endpoint's one question:
//! [`Registry::principal_authorization`].

use crate::db::{OptionalExtension, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Change, Registry, RegistryError, Result, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateStatus {
    Active,
    Inactive,
    Revoked,
    PendingTransfer,
    RegisterInactive,
    PendingActivation,
}

impl CertificateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
            Self::Revoked => "REVOKED",
            Self::PendingTransfer => "PENDING_TRANSFER",
            Self::RegisterInactive => "REGISTER_INACTIVE",
            Self::PendingActivation => "PENDING_ACTIVATION",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ACTIVE" => Self::Active,
            "INACTIVE" => Self::Inactive,
            "REVOKED" => Self::Revoked,
            "PENDING_TRANSFER" => Self::PendingTransfer,
            "REGISTER_INACTIVE" => Self::RegisterInactive,
            "PENDING_ACTIVATION" => Self::PendingActivation,
            other => {
                return Err(RegistryError::Invalid(format!(
                    "certificate status {other:?} is not one of ACTIVE, INACTIVE, REVOKED, \
                     PENDING_TRANSFER, REGISTER_INACTIVE, PENDING_ACTIVATION"
                )));
            }
        })
    }
}

/// A certificate to record (issued or registered by the PKI).
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// Lower-case hex SHA-256 of the DER.
    pub id: String,
    pub pem: String,
    pub status: CertificateStatus,
    pub ca_id: Option<String>,
    /// Validity, seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub id: String,
    pub arn: String,
    pub pem: String,
    pub status: CertificateStatus,
    pub ca_id: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAlias {
    pub name: String,
    pub arn: String,
    pub role_arn: String,
    pub duration_seconds: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What the device endpoint needs to admit and authorize a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalAuthorization {
    pub certificate_id: String,
    pub certificate_arn: String,
    pub status: CertificateStatus,
    /// Things the certificate is attached to (name, type, attributes: what policy variables
    /// such as `${iot:Connection.Thing.ThingName}` refer to).
    pub things: Vec<crate::Thing>,
    /// (policy name, default version's document) attached to the certificate, or to a group
    /// (or an ancestor group) of one of its things.
    pub policies: Vec<(String, String)>,
}

fn cert_from_row(r: &crate::db::Row) -> crate::db::DbResult<Certificate> {
    let status: String = r.get(2)?;
    Ok(Certificate {
        id: r.get(0)?,
        arn: String::new(),
        pem: r.get(1)?,
        status: CertificateStatus::parse(&status).unwrap_or(CertificateStatus::Inactive),
        ca_id: r.get(3)?,
        not_before: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
        not_after: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
        created_ms: r.get(6)?,
        updated_ms: r.get(7)?,
    })
}

const CERT_COLUMNS: &str = "id, pem, status, ca_id, not_before, not_after, created_at, updated_at";

impl Registry {
    /// The certificate ARN for an id.
    pub fn certificate_arn(&self, id: &str) -> String {
        self.arn(&format!("cert/{id}"))
    }

    /// The certificate id in a certificate ARN of this registry, if it is one.
    pub fn certificate_id_of(&self, arn: &str) -> Option<String> {
        arn.strip_prefix(&self.arn("cert/"))
            .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
    }

    fn cert_row(&self, tx: &Transaction<'_>, id: &str) -> Result<Option<Certificate>> {
        Ok(tx
            .query_row(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE id = ?1"),
                [id],
                cert_from_row,
            )
            .optional()?
            .map(|mut c| {
                c.arn = self.certificate_arn(&c.id);
                c
            }))
    }

    fn cert_exists(&self, tx: &Transaction<'_>, id: &str) -> Result<Certificate> {
        self.cert_row(tx, id)?.ok_or(RegistryError::NotFound {
            kind: "certificate",
            name: id.into(),
        })
    }

    /// Records an issued or registered certificate (`operation` names the API call).
    pub fn insert_certificate(
        &self,
        who: &str,
        operation: &str,
        cert: &NewCertificate,
    ) -> Result<Certificate> {
        self.write(who, operation, &cert.id, |tx| {
            if let Some(c) = self.cert_row(tx, &cert.id)? {
                return Err(RegistryError::AlreadyExists {
                    kind: "certificate",
                    name: cert.id.clone(),
                    arn: c.arn,
                });
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO certificates (id, pem, status, ca_id, not_before, not_after,
                 created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                params![
                    cert.id,
                    cert.pem,
                    cert.status.as_str(),
                    cert.ca_id,
                    cert.not_before,
                    cert.not_after,
                    now
                ],
            )?;
            Ok((self.cert_exists(tx, &cert.id)?, vec![]))
        })
    }

    pub fn describe_certificate(&self, id: &str) -> Result<Certificate> {
        self.read(|tx| self.cert_exists(tx, id))
    }

    /// ListCertificates in id order (marker = the last id).
    pub fn list_certificates(&self, page: &PageRequest) -> Result<Page<Certificate>> {
        let after = page.after()?;
        let limit = page.limit(25, 250)?;
        self.read(|tx| {
            let mut stmt = tx.prepare(&format!(
                "SELECT {CERT_COLUMNS} FROM certificates WHERE id > ?1 ORDER BY id"
            ))?;
            let mut out: Vec<Certificate> = stmt
                .query_map([&after], cert_from_row)?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            for c in &mut out {
                c.arn = self.certificate_arn(&c.id);
            }
            Ok(page::finish(out, limit, |c| c.id.clone()))
        })
    }

    /// UpdateCertificate. A revoked certificate stays revoked.
    pub fn update_certificate(&self, who: &str, id: &str, status: CertificateStatus) -> Result<()> {
        self.write(who, "UpdateCertificate", id, |tx| {
            let c = self.cert_exists(tx, id)?;
            if c.status == CertificateStatus::Revoked && status != CertificateStatus::Revoked {
                return Err(RegistryError::CertificateState(format!(
                    "certificate {id} is REVOKED; a revoked certificate cannot change status"
                )));
            }
            tx.execute(
                "UPDATE certificates SET status = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, status.as_str(), now_ms()],
            )?;
            Ok((
                (),
                vec![Change::CertificateStatus {
                    certificate_id: id.into(),
                    status: Some(status),
                }],
            ))
        })
    }

    /// DeleteCertificate: the certificate must not be ACTIVE nor attached to a thing; attached
    /// policies block it unless `force` (which detaches them).
    pub fn delete_certificate(&self, who: &str, id: &str, force: bool) -> Result<()> {
        self.write(who, "DeleteCertificate", id, |tx| {
            let c = self.cert_exists(tx, id)?;
            if c.status == CertificateStatus::Active {
                return Err(RegistryError::CertificateState(format!(
                    "certificate {id} is ACTIVE; deactivate it (UpdateCertificate INACTIVE) \
                     before deleting it"
                )));
            }
            let things: i64 = tx.query_row(
                "SELECT COUNT(*) FROM thing_principals WHERE principal = ?1",
                [&c.arn],
                |r| r.get(0),
            )?;
            if things > 0 {
                return Err(RegistryError::DeleteConflict(format!(
                    "certificate {id} is attached to {things} thing(s); detach it \
                     (DetachThingPrincipal) first"
                )));
            }
            let policies: Vec<String> = tx
                .prepare("SELECT policy_name FROM policy_targets WHERE target = ?1")?
                .query_map([&c.arn], |r| r.get(0))?
                .collect::<crate::db::DbResult<_>>()?;
            if !policies.is_empty() && !force {
                return Err(RegistryError::DeleteConflict(format!(
                    "certificate {id} has policies attached ({}); detach them or use forceDelete",
                    policies.join(", ")
                )));
            }
            tx.execute("DELETE FROM policy_targets WHERE target = ?1", [&c.arn])?;
            tx.execute("DELETE FROM certificates WHERE id = ?1", [id])?;
            let mut changes: Vec<Change> = policies
                .into_iter()
                .map(|policy_name| Change::PolicyAttachment {
                    policy_name,
                    target: c.arn.clone(),
                    attached: false,
                })
                .collect();
            changes.push(Change::CertificateStatus {
                certificate_id: id.into(),
                status: None,
            });
            Ok(((), changes))
        })
    }

    /// AttachThingPrincipal. `principal` is a certificate ARN of this registry. With
    /// `exclusive`, the certificate may be attached to this thing only.
    pub fn attach_thing_principal(
        &self,
        who: &str,
        thing: &str,
        principal: &str,
        exclusive: bool,
    ) -> Result<()> {
        self.write(
            who,
            "AttachThingPrincipal",
            &format!("{thing}|{principal}"),
            |tx| {
                self.thing_row_exists(tx, thing)?;
                let id = self.principal_cert(tx, principal)?;
                let others: Vec<(String, i64)> = tx
                    .prepare(
                        "SELECT thing_name, exclusive FROM thing_principals WHERE principal = ?1",
                    )?
                    .query_map([principal], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<crate::db::DbResult<_>>()?;
                if others.iter().any(|(t, _)| t == thing) {
                    return Ok(((), vec![]));
                }
                if (exclusive && !others.is_empty()) || others.iter().any(|(_, e)| *e != 0) {
                    return Err(RegistryError::Invalid(format!(
                        "certificate {id} is attached exclusively (or would be) while attached to \
                     other things ({}); detach it first",
                        others
                            .iter()
                            .map(|(t, _)| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                tx.execute(
                    "INSERT INTO thing_principals (thing_name, principal, exclusive, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                    params![thing, principal, exclusive as i64, now_ms()],
                )?;
                Ok((
                    (),
                    vec![Change::ThingPrincipal {
                        thing_name: thing.into(),
                        principal: principal.into(),
                        attached: true,
                    }],
                ))
            },
        )
    }

    /// DetachThingPrincipal (idempotent for an existing thing).
    pub fn detach_thing_principal(&self, who: &str, thing: &str, principal: &str) -> Result<()> {
        self.write(
            who,
            "DetachThingPrincipal",
            &format!("{thing}|{principal}"),
            |tx| {
                self.thing_row_exists(tx, thing)?;
                let n = tx.execute(
                    "DELETE FROM thing_principals WHERE thing_name = ?1 AND principal = ?2",
                    params![thing, principal],
                )?;
                let changes = if n > 0 {
                    vec![Change::ThingPrincipal {
                        thing_name: thing.into(),
                        principal: principal.into(),
                        attached: false,
                    }]
                } else {
                    vec![]
                };
                Ok(((), changes))
            },
        )
    }

    /// ListThingPrincipals: principal ARNs, in order.
    pub fn list_thing_principals(&self, thing: &str, page: &PageRequest) -> Result<Page<String>> {
        let after = page.after()?;
        let limit = page.limit(25, 250)?;
        self.read(|tx| {
            self.thing_row_exists(tx, thing)?;
            let out: Vec<String> = tx
                .prepare(
                    "SELECT principal FROM thing_principals WHERE thing_name = ?1
                     AND principal > ?2 ORDER BY principal",
                )?
                .query_map(params![thing, after], |r| r.get(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(out, limit, Clone::clone))
        })
    }

    /// ListPrincipalThings: thing names, in order.
    pub fn list_principal_things(
        &self,
        principal: &str,
        page: &PageRequest,
    ) -> Result<Page<String>> {
        let after = page.after()?;
        let limit = page.limit(25, 250)?;
        self.read(|tx| {
            self.principal_cert(tx, principal)?;
            let out: Vec<String> = tx
                .prepare(
                    "SELECT thing_name FROM thing_principals WHERE principal = ?1
                     AND thing_name > ?2 ORDER BY thing_name",
                )?
                .query_map(params![principal, after], |r| r.get(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(out, limit, Clone::clone))
        })
    }

    fn thing_row_exists(&self, tx: &Transaction<'_>, thing: &str) -> Result<()> {
        let n: i64 = tx.query_row(
            "SELECT COUNT(*) FROM things WHERE name = ?1",
            [thing],
            |r| r.get(0),
        )?;
        if n == 0 {
            return Err(RegistryError::NotFound {
                kind: "thing",
                name: thing.into(),
            });
        }
        Ok(())
    }

    /// The id of the registered certificate a principal ARN names.
    pub(crate) fn principal_cert(&self, tx: &Transaction<'_>, principal: &str) -> Result<String> {
        let id = self.certificate_id_of(principal).ok_or_else(|| {
            RegistryError::Invalid(format!(
                "principal {principal:?} is not a certificate ARN of this fleet \
                 (expected {})",
                self.arn("cert/<64 hex digits>")
            ))
        })?;
        self.cert_exists(tx, &id)?;
        Ok(id)
    }

    /// Certificate id → status, attached things and the documents of every policy that applies
    /// (attached to the certificate, or to a thing group of one of its things or an ancestor of
    /// that group). `None` when no such certificate is registered.
    pub fn principal_authorization(
        &self,
        certificate_id: &str,
    ) -> Result<Option<PrincipalAuthorization>> {
        self.read(|tx| {
            let Some(c) = self.cert_row(tx, certificate_id)? else {
                return Ok(None);
            };
            let things: Vec<String> = tx
                .prepare(
                    "SELECT thing_name FROM thing_principals WHERE principal = ?1
                     ORDER BY thing_name",
                )?
                .query_map([&c.arn], |r| r.get(0))?
                .collect::<crate::db::DbResult<_>>()?;
            let mut targets = vec![c.arn.clone()];
            let mut thing_rows = Vec::with_capacity(things.len());
            for t in &things {
                if let Some(row) = self.thing_record(tx, t)? {
                    thing_rows.push(row);
                }
                for g in self.groups_with_ancestors(tx, t)? {
                    targets.push(self.arn(&format!("thinggroup/{g}")));
                }
            }
            let mut policies = std::collections::BTreeMap::new();
            let mut stmt = tx.prepare(
                "SELECT p.name, v.document FROM policy_targets t
                 JOIN policies p ON p.name = t.policy_name
                 JOIN policy_versions v ON v.policy_name = p.name AND v.version = p.default_version
                 WHERE t.target = ?1",
            )?;
            for target in &targets {
                for row in stmt.query_map([target], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })? {
                    let (n, d) = row?;
                    policies.insert(n, d);
                }
            }
            Ok(Some(PrincipalAuthorization {
                certificate_id: c.id,
                certificate_arn: c.arn,
                status: c.status,
                things: thing_rows,
                policies: policies.into_iter().collect(),
            }))
        })
    }

    fn alias_row(&self, tx: &Transaction<'_>, name: &str) -> Result<Option<RoleAlias>> {
        Ok(tx
            .query_row(
                "SELECT name, role_arn, duration_seconds, created_at, updated_at
                 FROM role_aliases WHERE name = ?1",
                [name],
                |r| {
                    Ok(RoleAlias {
                        name: r.get(0)?,
                        arn: String::new(),
                        role_arn: r.get(1)?,
                        duration_seconds: r.get(2)?,
                        created_ms: r.get(3)?,
                        updated_ms: r.get(4)?,
                    })
                },
            )
            .optional()?
            .map(|mut a| {
                a.arn = self.arn(&format!("rolealias/{}", a.name));
                a
            }))
    }

    /// CreateRoleAlias (`duration_seconds` 900..=43200).
    pub fn create_role_alias(
        &self,
        who: &str,
        name: &str,
        role_arn: &str,
        duration_seconds: i64,
    ) -> Result<RoleAlias> {
        if !(900..=43200).contains(&duration_seconds) {
            return Err(RegistryError::Invalid(format!(
                "credentialDurationSeconds {duration_seconds} is out of range; use 900 to 43200"
            )));
        }
        self.write(who, "CreateRoleAlias", name, |tx| {
            if let Some(a) = self.alias_row(tx, name)? {
                return Err(RegistryError::AlreadyExists {
                    kind: "role alias",
                    name: name.into(),
                    arn: a.arn,
                });
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO role_aliases (name, role_arn, duration_seconds, created_at,
                 updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![name, role_arn, duration_seconds, now],
            )?;
            Ok((self.alias_row(tx, name)?.expect("inserted"), vec![]))
        })
    }

    pub fn describe_role_alias(&self, name: &str) -> Result<RoleAlias> {
        self.read(|tx| {
            self.alias_row(tx, name)?.ok_or(RegistryError::NotFound {
                kind: "role alias",
                name: name.into(),
            })
        })
    }

    /// ListRoleAliases: names in order.
    pub fn list_role_aliases(&self, page: &PageRequest) -> Result<Page<String>> {
        let after = page.after()?;
        let limit = page.limit(25, 250)?;
        self.read(|tx| {
            let out: Vec<String> = tx
                .prepare("SELECT name FROM role_aliases WHERE name > ?1 ORDER BY name")?
                .query_map([&after], |r| r.get(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(out, limit, Clone::clone))
        })
    }

    /// DeleteRoleAlias.
    pub fn delete_role_alias(&self, who: &str, name: &str) -> Result<()> {
        self.write(who, "DeleteRoleAlias", name, |tx| {
            if tx.execute("DELETE FROM role_aliases WHERE name = ?1", [name])? == 0 {
                return Err(RegistryError::NotFound {
                    kind: "role alias",
                    name: name.into(),
                });
            }
            Ok(((), vec![]))
        })
    }
}

impl Registry {
    /// The certificates whose [`Registry::principal_authorization`] a committed `change` may
    /// have altered: what a device endpoint re-reads (and disconnects, if no longer allowed).
    pub fn certificates_affected_by(&self, change: &Change) -> Result<Vec<String>> {
        self.read(|tx| {
            let mut ids = std::collections::BTreeSet::new();
            let mut things = Vec::new();
            let mut groups = Vec::new();
            match change {
                Change::CertificateStatus { certificate_id, .. } => {
                    ids.insert(certificate_id.clone());
                }
                Change::ThingPrincipal { principal, .. } => {
                    if let Some(id) = self.certificate_id_of(principal) {
                        ids.insert(id);
                    }
                }
                Change::Thing { thing_name } => things.push(thing_name.clone()),
                Change::PolicyAttachment { target, .. } => {
                    self.classify_target(target, &mut ids, &mut groups)
                }
                Change::Policy { policy_name } => {
                    let targets: Vec<String> = tx
                        .prepare("SELECT target FROM policy_targets WHERE policy_name = ?1")?
                        .query_map([policy_name], |r| r.get(0))?
                        .collect::<crate::db::DbResult<_>>()?;
                    for t in targets {
                        self.classify_target(&t, &mut ids, &mut groups);
                    }
                }
            }
            // A group's policies reach the things of its descendant groups too.
            let mut i = 0;
            while i < groups.len() {
                let kids: Vec<String> = tx
                    .prepare("SELECT name FROM thing_groups WHERE parent = ?1")?
                    .query_map([&groups[i]], |r| r.get(0))?
                    .collect::<crate::db::DbResult<_>>()?;
                groups.extend(kids);
                i += 1;
            }
            for g in &groups {
                let members: Vec<String> = tx
                    .prepare("SELECT thing_name FROM thing_group_members WHERE group_name = ?1")?
                    .query_map([g], |r| r.get(0))?
                    .collect::<crate::db::DbResult<_>>()?;
                things.extend(members);
            }
            let mut stmt =
                tx.prepare("SELECT principal FROM thing_principals WHERE thing_name = ?1")?;
            for t in &things {
                for p in stmt.query_map([t], |r| r.get::<_, String>(0))? {
                    if let Some(id) = self.certificate_id_of(&p?) {
                        ids.insert(id);
                    }
                }
            }
            Ok(ids.into_iter().collect())
        })
    }

    fn classify_target(
        &self,
        target: &str,
        ids: &mut std::collections::BTreeSet<String>,
        groups: &mut Vec<String>,
    ) {
        if let Some(id) = self.certificate_id_of(target) {
            ids.insert(id);
        } else if let Some(g) = target.strip_prefix(&self.arn("thinggroup/")) {
            groups.push(g.to_string());
        }
    }
}
