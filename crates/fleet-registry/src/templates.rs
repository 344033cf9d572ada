//! Fleet provisioning templates (CreateProvisioningTemplate …): stored here, applied by the
//! device endpoint's RegisterThing.

use crate::db::{OptionalExtension, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Registry, RegistryError, Result, now_ms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningTemplate {
    pub name: String,
    pub arn: String,
    pub description: Option<String>,
    /// The template document (JSON text as given): Parameters, Resources, DeviceConfiguration.
    pub body: String,
    pub enabled: bool,
    pub provisioning_role_arn: String,
    /// `preProvisioningHook` as JSON text (`{"targetArn": …, "payloadVersion": …}`).
    pub pre_provisioning_hook: Option<String>,
    /// FLEET_PROVISIONING or JITP.
    pub kind: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn validate(name: &str, body: &str, kind: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 36
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(RegistryError::Invalid(format!(
            "templateName {name:?} is invalid: use 1 to 36 of [0-9A-Za-z_-]"
        )));
    }
    if body.len() > 10240 {
        return Err(RegistryError::Invalid(format!(
            "templateBody is {} bytes; the limit is 10240",
            body.len()
        )));
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        RegistryError::Invalid(format!(
            "templateBody is not JSON ({e}); give the template as a JSON string"
        ))
    })?;
    if !v.get("Resources").is_some_and(|r| r.is_object()) {
        return Err(RegistryError::Invalid(
            "templateBody needs a Resources object (AWS::IoT::Thing, ::Certificate, ::Policy)"
                .into(),
        ));
    }
    if let Some(p) = v.get("Parameters")
        && !p.is_object()
    {
        return Err(RegistryError::Invalid(
            "templateBody Parameters must be an object".into(),
        ));
    }
    if !matches!(kind, "FLEET_PROVISIONING" | "JITP") {
        return Err(RegistryError::Invalid(format!(
            "type {kind:?} is not FLEET_PROVISIONING or JITP"
        )));
    }
    Ok(())
}

const COLUMNS: &str =
    "name, description, body, enabled, role_arn, hook, kind, created_at, updated_at";

impl Registry {
    fn template_row(
        &self,
        tx: &Transaction<'_>,
        name: &str,
    ) -> Result<Option<ProvisioningTemplate>> {
        Ok(tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM provisioning_templates WHERE name = ?1"),
                [name],
                |r| {
                    Ok(ProvisioningTemplate {
                        name: r.get(0)?,
                        arn: String::new(),
                        description: r.get(1)?,
                        body: r.get(2)?,
                        enabled: r.get::<_, i64>(3)? != 0,
                        provisioning_role_arn: r.get(4)?,
                        pre_provisioning_hook: r.get(5)?,
                        kind: r.get(6)?,
                        created_ms: r.get(7)?,
                        updated_ms: r.get(8)?,
                    })
                },
            )
            .optional()?
            .map(|mut t| {
                t.arn = self.arn(&format!("provisioningtemplate/{}", t.name));
                t
            }))
    }

    fn template_exists(&self, tx: &Transaction<'_>, name: &str) -> Result<ProvisioningTemplate> {
        self.template_row(tx, name)?.ok_or(RegistryError::NotFound {
            kind: "provisioning template",
            name: name.into(),
        })
    }

    /// CreateProvisioningTemplate (`t.arn`, `created_ms`, `updated_ms` are ignored).
    pub fn create_provisioning_template(
        &self,
        who: &str,
        t: &ProvisioningTemplate,
    ) -> Result<ProvisioningTemplate> {
        validate(&t.name, &t.body, &t.kind)?;
        self.write(who, "CreateProvisioningTemplate", &t.name, |tx| {
            if let Some(old) = self.template_row(tx, &t.name)? {
                return Err(RegistryError::AlreadyExists {
                    kind: "provisioning template",
                    name: t.name.clone(),
                    arn: old.arn,
                });
            }
            let now = now_ms();
            tx.execute(
                &format!(
                    "INSERT INTO provisioning_templates ({COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)"
                ),
                params![
                    t.name,
                    t.description,
                    t.body,
                    t.enabled as i64,
                    t.provisioning_role_arn,
                    t.pre_provisioning_hook,
                    t.kind,
                    now
                ],
            )?;
            Ok((self.template_exists(tx, &t.name)?, vec![]))
        })
    }

    pub fn describe_provisioning_template(&self, name: &str) -> Result<ProvisioningTemplate> {
        self.read(|tx| self.template_exists(tx, name))
    }

    /// ListProvisioningTemplates in name order.
    pub fn list_provisioning_templates(
        &self,
        page: &PageRequest,
    ) -> Result<Page<ProvisioningTemplate>> {
        let after = page.after()?;
        let limit = page.limit(25, 250)?;
        self.read(|tx| {
            let names: Vec<String> = tx
                .prepare("SELECT name FROM provisioning_templates WHERE name > ?1 ORDER BY name")?
                .query_map([&after], |r| r.get(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                out.push(self.template_exists(tx, &n)?);
            }
            Ok(page::finish(out, limit, |t| t.name.clone()))
        })
    }

    /// UpdateProvisioningTemplate: the fields given replace the stored ones.
    pub fn update_provisioning_template(
        &self,
        who: &str,
        name: &str,
        description: Option<&str>,
        enabled: Option<bool>,
        provisioning_role_arn: Option<&str>,
        pre_provisioning_hook: Option<Option<&str>>,
    ) -> Result<()> {
        self.write(who, "UpdateProvisioningTemplate", name, |tx| {
            let mut t = self.template_exists(tx, name)?;
            if let Some(d) = description {
                t.description = Some(d.into());
            }
            if let Some(e) = enabled {
                t.enabled = e;
            }
            if let Some(r) = provisioning_role_arn {
                t.provisioning_role_arn = r.into();
            }
            if let Some(h) = pre_provisioning_hook {
                t.pre_provisioning_hook = h.map(str::to_string);
            }
            tx.execute(
                "UPDATE provisioning_templates SET description = ?2, enabled = ?3, role_arn = ?4,
                 hook = ?5, updated_at = ?6 WHERE name = ?1",
                params![
                    name,
                    t.description,
                    t.enabled as i64,
                    t.provisioning_role_arn,
                    t.pre_provisioning_hook,
                    now_ms()
                ],
            )?;
            Ok(((), vec![]))
        })
    }

    pub fn delete_provisioning_template(&self, who: &str, name: &str) -> Result<()> {
        self.write(who, "DeleteProvisioningTemplate", name, |tx| {
            self.template_exists(tx, name)?;
            tx.execute("DELETE FROM provisioning_templates WHERE name = ?1", [name])?;
            Ok(((), vec![]))
        })
    }
}
