//! Greengrass component versions: the recipe as published (digests filled in), its status and
//! the publisher's signature. Recipes are validated by the API before they get here; the
//! registry keeps them and answers lookups.

use crate::db::{OptionalExtension, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Registry, RegistryError, Result, now_ms};

/// One stored component version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentVersion {
    pub name: String,
    pub version: String,
    /// The recipe text as it is served (YAML or JSON, see `recipe_format`).
    pub recipe: String,
    /// `JSON` or `YAML`.
    pub recipe_format: String,
    pub description: Option<String>,
    pub publisher: Option<String>,
    /// JSON array of `{"name", "attributes"}` (DescribeComponent's `platforms`).
    pub platforms: String,
    /// `DEPLOYABLE` or `FAILED` (or `DEPRECATED` once discontinued).
    pub status: String,
    pub message: String,
    /// JSON `{"keyId", "signature"}` when the publisher signed the recipe.
    pub signature: Option<String>,
    /// JSON object of tags.
    pub tags: String,
    pub client_token: Option<String>,
    pub created_ms: i64,
}

const COLUMNS: &str = "name, version, recipe, recipe_format, description, publisher, platforms, \
                       status, message, signature, tags, client_token, created_at";

fn row(r: &crate::db::Row) -> crate::db::DbResult<ComponentVersion> {
    Ok(ComponentVersion {
        name: r.get(0)?,
        version: r.get(1)?,
        recipe: r.get(2)?,
        recipe_format: r.get(3)?,
        description: r.get(4)?,
        publisher: r.get(5)?,
        platforms: r.get(6)?,
        status: r.get(7)?,
        message: r.get(8)?,
        signature: r.get(9)?,
        tags: r.get(10)?,
        client_token: r.get(11)?,
        created_ms: r.get(12)?,
    })
}

impl Registry {
    /// `arn:aws:greengrass:<region>:<account>:components:<name>`.
    pub fn component_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:greengrass:{}:{}:components:{name}",
            self.region(),
            self.account()
        )
    }

    /// The component ARN plus `:versions:<version>`.
    pub fn component_version_arn(&self, name: &str, version: &str) -> String {
        format!("{}:versions:{version}", self.component_arn(name))
    }

    fn component_row(
        &self,
        tx: &Transaction<'_>,
        name: &str,
        version: &str,
    ) -> Result<Option<ComponentVersion>> {
        Ok(tx
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM component_versions WHERE name = ?1 AND version = ?2"
                ),
                [name, version],
                row,
            )
            .optional()?)
    }

    /// CreateComponentVersion: a (name, version) is published once. The same `client_token`
    /// again answers the version it created (a retried request).
    pub fn create_component_version(
        &self,
        who: &str,
        v: &ComponentVersion,
    ) -> Result<ComponentVersion> {
        let resource = format!("{}:{}", v.name, v.version);
        self.write(who, "CreateComponentVersion", &resource, |tx| {
            if let Some(existing) = self.component_row(tx, &v.name, &v.version)? {
                if v.client_token.is_some() && existing.client_token == v.client_token {
                    return Ok((existing, vec![]));
                }
                return Err(RegistryError::AlreadyExists {
                    kind: "component version",
                    name: resource.clone(),
                    arn: self.component_version_arn(&v.name, &v.version),
                });
            }
            tx.execute(
                &format!(
                    "INSERT INTO component_versions ({COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    v.name,
                    v.version,
                    v.recipe,
                    v.recipe_format,
                    v.description,
                    v.publisher,
                    v.platforms,
                    v.status,
                    v.message,
                    v.signature,
                    v.tags,
                    v.client_token,
                    now_ms()
                ],
            )?;
            let stored = self
                .component_row(tx, &v.name, &v.version)?
                .ok_or_else(|| {
                    RegistryError::Invalid("the component version vanished while stored".into())
                })?;
            Ok((stored, vec![]))
        })
    }

    pub fn component_version(&self, name: &str, version: &str) -> Result<ComponentVersion> {
        self.read(|tx| {
            self.component_row(tx, name, version)?
                .ok_or_else(|| RegistryError::NotFound {
                    kind: "component version",
                    name: format!("{name}:{version}"),
                })
        })
    }

    /// Every version of `name` (any order; the caller sorts by semver).
    pub fn component_versions(&self, name: &str) -> Result<Vec<ComponentVersion>> {
        self.read(|tx| {
            Ok(tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM component_versions WHERE name = ?1"
                ))?
                .query_map([name], row)?
                .collect::<crate::db::DbResult<Vec<_>>>()?)
        })
    }

    /// Component names in name order, a page at a time.
    pub fn list_component_names(&self, page: &PageRequest) -> Result<Page<String>> {
        let after = page.after()?;
        let limit = page.limit(50, 100)?;
        self.read(|tx| {
            let names: Vec<String> = tx
                .prepare(
                    "SELECT DISTINCT name FROM component_versions WHERE name > ?1 ORDER BY name",
                )?
                .query_map([&after], |r| r.get::<_, String>(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(names, limit, Clone::clone))
        })
    }

    /// DeleteComponent (one version).
    pub fn delete_component_version(&self, who: &str, name: &str, version: &str) -> Result<()> {
        let resource = format!("{name}:{version}");
        self.write(who, "DeleteComponent", &resource, |tx| {
            let n = tx.execute(
                "DELETE FROM component_versions WHERE name = ?1 AND version = ?2",
                [name, version],
            )?;
            if n == 0 {
                return Err(RegistryError::NotFound {
                    kind: "component version",
                    name: resource.clone(),
                });
            }
            Ok(((), vec![]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, version: &str, token: Option<&str>) -> ComponentVersion {
        ComponentVersion {
            name: name.into(),
            version: version.into(),
            recipe: format!("{{\"ComponentName\":\"{name}\"}}"),
            recipe_format: "JSON".into(),
            description: Some("d".into()),
            publisher: None,
            platforms: "[]".into(),
            status: "DEPLOYABLE".into(),
            message: "NONE".into(),
            signature: None,
            tags: "{}".into(),
            client_token: token.map(str::to_owned),
            created_ms: 0,
        }
    }

    fn exercise(r: &Registry) {
        let a = r
            .create_component_version("t", &sample("com.a", "1.0.0", Some("tok")))
            .unwrap();
        assert_eq!(a.recipe, "{\"ComponentName\":\"com.a\"}");
        // A retry with the same token answers the same version; another token conflicts.
        let again = r
            .create_component_version("t", &sample("com.a", "1.0.0", Some("tok")))
            .unwrap();
        assert_eq!(again.created_ms, a.created_ms);
        let e = r
            .create_component_version("t", &sample("com.a", "1.0.0", Some("other")))
            .unwrap_err();
        assert!(matches!(e, RegistryError::AlreadyExists { .. }), "{e}");
        r.create_component_version("t", &sample("com.a", "1.1.0", None))
            .unwrap();
        r.create_component_version("t", &sample("com.b", "2.0.0", None))
            .unwrap();
        assert_eq!(r.component_versions("com.a").unwrap().len(), 2);
        let p1 = r
            .list_component_names(&PageRequest {
                token: None,
                size: Some(1),
            })
            .unwrap();
        assert_eq!(p1.items, vec!["com.a".to_string()]);
        let p2 = r
            .list_component_names(&PageRequest {
                token: p1.next_token,
                size: Some(1),
            })
            .unwrap();
        assert_eq!(p2.items, vec!["com.b".to_string()]);
        assert!(p2.next_token.is_none());
        r.delete_component_version("t", "com.a", "1.0.0").unwrap();
        assert!(matches!(
            r.component_version("com.a", "1.0.0").unwrap_err(),
            RegistryError::NotFound { .. }
        ));
        assert!(matches!(
            r.delete_component_version("t", "com.a", "1.0.0")
                .unwrap_err(),
            RegistryError::NotFound { .. }
        ));
        assert!(
            r.component_version_arn("com.a", "1.1.0")
                .ends_with(":components:com.a:versions:1.1.0")
        );
    }

    #[test]
    fn component_versions_are_stored_listed_and_deleted_on_sqlite() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(&d.path().join("f.db"), "us-east-1").unwrap();
        exercise(&r);
    }

    #[test]
    fn component_versions_are_stored_listed_and_deleted_on_postgres() {
        let Some(url) = crate::pg_tests::pg_support::fresh_database() else {
            return;
        };
        let r = Registry::open_postgres(&url, "us-east-1").unwrap();
        exercise(&r);
    }
}
