//! Thing types: a thing may name one that exists and is not deprecated.

use crate::db::{OptionalExtension, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Registry, RegistryError, Result, now_ms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingType {
    pub name: String,
    pub id: String,
    pub arn: String,
    pub description: Option<String>,
    pub searchable_attributes: Vec<String>,
    pub deprecated: bool,
    pub deprecated_ms: Option<i64>,
    pub created_ms: i64,
}

impl Registry {
    fn type_row(&self, tx: &Transaction<'_>, name: &str) -> Result<Option<ThingType>> {
        Ok(tx
            .query_row(
                "SELECT name, id, description, searchable_attributes, deprecated, deprecated_at,
                 created_at FROM thing_types WHERE name = ?1",
                [name],
                |r| {
                    Ok(ThingType {
                        name: r.get(0)?,
                        id: r.get(1)?,
                        arn: String::new(),
                        description: r.get(2)?,
                        searchable_attributes: serde_json::from_str(&r.get::<_, String>(3)?)
                            .unwrap_or_default(),
                        deprecated: r.get::<_, i64>(4)? != 0,
                        deprecated_ms: r.get(5)?,
                        created_ms: r.get(6)?,
                    })
                },
            )
            .optional()?
            .map(|mut t| {
                t.arn = self.arn(&format!("thingtype/{}", t.name));
                t
            }))
    }

    fn type_exists(&self, tx: &Transaction<'_>, name: &str) -> Result<ThingType> {
        self.type_row(tx, name)?.ok_or(RegistryError::NotFound {
            kind: "thing type",
            name: name.into(),
        })
    }

    /// A thing may be given this type: it exists and is not deprecated.
    pub(crate) fn usable_thing_type(&self, tx: &Transaction<'_>, name: &str) -> Result<()> {
        match self.type_row(tx, name)? {
            None => Err(RegistryError::Invalid(format!(
                "thing type {name:?} does not exist; create it (CreateThingType) first"
            ))),
            Some(t) if t.deprecated => Err(RegistryError::Invalid(format!(
                "thing type {name:?} is deprecated; undo that (DeprecateThingType \
                 --undo-deprecate) or use another type"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// CreateThingType: idempotent for the same properties.
    pub fn create_thing_type(
        &self,
        who: &str,
        name: &str,
        description: Option<&str>,
        searchable_attributes: &[String],
    ) -> Result<ThingType> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
        if !ok {
            return Err(RegistryError::Invalid(format!(
                "thing type name {name:?} is invalid: use 1 to 128 of [a-zA-Z0-9:_-]"
            )));
        }
        if searchable_attributes.len() > 3 {
            return Err(RegistryError::Invalid(
                "a thing type has at most 3 searchable attributes".into(),
            ));
        }
        self.write(who, "CreateThingType", name, |tx| {
            if let Some(t) = self.type_row(tx, name)? {
                if t.description.as_deref() == description
                    && t.searchable_attributes == searchable_attributes
                {
                    return Ok((t, vec![]));
                }
                return Err(RegistryError::AlreadyExists {
                    kind: "thing type",
                    name: name.into(),
                    arn: t.arn,
                });
            }
            tx.execute(
                "INSERT INTO thing_types (name, id, description, searchable_attributes,
                 deprecated, deprecated_at, created_at) VALUES (?1, ?2, ?3, ?4, 0, NULL, ?5)",
                params![
                    name,
                    uuid::Uuid::new_v4().to_string(),
                    description,
                    serde_json::to_string(searchable_attributes).unwrap_or_else(|_| "[]".into()),
                    now_ms()
                ],
            )?;
            Ok((self.type_exists(tx, name)?, vec![]))
        })
    }

    pub fn describe_thing_type(&self, name: &str) -> Result<ThingType> {
        self.read(|tx| self.type_exists(tx, name))
    }

    /// ListThingTypes in name order (optionally just the one named).
    pub fn list_thing_types(
        &self,
        only: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<ThingType>> {
        let after = page.after()?;
        let limit = page.limit(50, 250)?;
        self.read(|tx| {
            let names: Vec<String> = tx
                .prepare(
                    "SELECT name FROM thing_types WHERE name > ?1 AND (CAST(?2 AS TEXT) IS NULL OR name = ?2)
                     ORDER BY name",
                )?
                .query_map(params![after, only], |r| r.get(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                out.push(self.type_exists(tx, &n)?);
            }
            Ok(page::finish(out, limit, |t| t.name.clone()))
        })
    }

    /// DeprecateThingType (or undo it).
    pub fn deprecate_thing_type(&self, who: &str, name: &str, undo: bool) -> Result<()> {
        self.write(who, "DeprecateThingType", name, |tx| {
            self.type_exists(tx, name)?;
            tx.execute(
                "UPDATE thing_types SET deprecated = ?2, deprecated_at = ?3 WHERE name = ?1",
                params![name, !undo as i64, (!undo).then(now_ms)],
            )?;
            Ok(((), vec![]))
        })
    }

    /// DeleteThingType: only a deprecated type that no thing uses.
    pub fn delete_thing_type(&self, who: &str, name: &str) -> Result<()> {
        self.write(who, "DeleteThingType", name, |tx| {
            let t = self.type_exists(tx, name)?;
            if !t.deprecated {
                return Err(RegistryError::Invalid(format!(
                    "thing type {name:?} is not deprecated; deprecate it (DeprecateThingType) \
                     before deleting it"
                )));
            }
            let users: i64 = tx.query_row(
                "SELECT COUNT(*) FROM things WHERE thing_type = ?1",
                [name],
                |r| r.get(0),
            )?;
            if users > 0 {
                return Err(RegistryError::Invalid(format!(
                    "thing type {name:?} is used by {users} thing(s); change their type first"
                )));
            }
            tx.execute("DELETE FROM thing_types WHERE name = ?1", [name])?;
            Ok(((), vec![]))
        })
    }
}
