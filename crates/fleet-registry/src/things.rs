//! Things and thing groups (static; a group may have a parent).

use crate::db::{OptionalExtension, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Change, Registry, RegistryError, Result, none_if_no_rows, now_ms};
use std::collections::BTreeMap;

pub type Attributes = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thing {
    pub name: String,
    pub id: String,
    pub arn: String,
    pub thing_type: Option<String>,
    pub attributes: Attributes,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingGroup {
    pub name: String,
    pub id: String,
    pub arn: String,
    pub parent: Option<String>,
    pub description: Option<String>,
    pub attributes: Attributes,
    pub version: i64,
    pub created_ms: i64,
    /// From the root down to the direct parent.
    pub root_to_parent: Vec<(String, String)>,
    /// A dynamic group's query (its members are the things that match, kept current).
    pub query: Option<String>,
}

/// ListThings filters.
#[derive(Debug, Clone, Default)]
pub struct ThingQuery {
    pub attribute_name: Option<String>,
    pub attribute_value: Option<String>,
    pub use_prefix_attribute_value: bool,
    pub thing_type: Option<String>,
}

fn valid_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{kind} name {name:?} is invalid: use 1 to 128 of [a-zA-Z0-9:_-]"
        )))
    }
}

fn static_group(g: ThingGroup) -> Result<ThingGroup> {
    if g.query.is_some() {
        return Err(RegistryError::Invalid(format!(
            "thing group {:?} is dynamic: its members are the things its query matches; \
             change the things or the query (UpdateDynamicThingGroup) instead",
            g.name
        )));
    }
    Ok(g)
}

/// Refuses a write that expected another version of `kind` `name` than the `current` one.
fn expect_version(kind: &str, name: &str, current: i64, expected: Option<i64>) -> Result<()> {
    match expected {
        Some(v) if v != current => Err(RegistryError::VersionConflict(format!(
            "{kind} {name:?} is at version {current}, not the expected {v}"
        ))),
        _ => Ok(()),
    }
}

/// UpdateThing's and UpdateThingGroup's attribute payload: with `merge`, an empty value removes
/// its key and the rest are set; without, the non-empty values replace them all.
fn apply_attributes(current: &mut Attributes, update: Option<(Attributes, bool)>) {
    let Some((attrs, merge)) = update else {
        return;
    };
    if merge {
        for (k, v) in attrs {
            if v.is_empty() {
                current.remove(&k);
            } else {
                current.insert(k, v);
            }
        }
    } else {
        *current = attrs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    }
}

fn attrs_json(a: &Attributes) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| "{}".into())
}

fn attrs_parse(s: &str) -> Attributes {
    serde_json::from_str(s).unwrap_or_default()
}

impl Registry {
    fn thing_row(&self, tx: &Transaction<'_>, name: &str) -> Result<Option<Thing>> {
        Ok(tx
            .query_row(
                "SELECT name, id, thing_type, attributes, version FROM things WHERE name = ?1",
                [name],
                |r| {
                    Ok(Thing {
                        name: r.get(0)?,
                        id: r.get(1)?,
                        arn: String::new(),
                        thing_type: r.get(2)?,
                        attributes: attrs_parse(&r.get::<_, String>(3)?),
                        version: r.get(4)?,
                    })
                },
            )
            .optional()?
            .map(|mut t| {
                t.arn = self.arn(&format!("thing/{}", t.name));
                t
            }))
    }

    pub(crate) fn thing_record(&self, tx: &Transaction<'_>, name: &str) -> Result<Option<Thing>> {
        self.thing_row(tx, name)
    }

    /// CreateThing: idempotent when the thing exists with the same type and attributes.
    pub fn create_thing(
        &self,
        who: &str,
        name: &str,
        thing_type: Option<&str>,
        attributes: Attributes,
    ) -> Result<Thing> {
        valid_name("thing", name)?;
        self.write(who, "CreateThing", name, |tx| {
            if let Some(tt) = thing_type {
                self.usable_thing_type(tx, tt)?;
            }
            if let Some(t) = self.thing_row(tx, name)? {
                if t.thing_type.as_deref() == thing_type && t.attributes == attributes {
                    return Ok((t, vec![]));
                }
                return Err(RegistryError::AlreadyExists {
                    kind: "thing",
                    name: name.into(),
                    arn: t.arn,
                });
            }
            let id = uuid::Uuid::new_v4().to_string();
            tx.execute(
                "INSERT INTO things (name, id, thing_type, attributes, version, created_at)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                params![name, id, thing_type, attrs_json(&attributes), now_ms()],
            )?;
            let changes = self.refresh_dynamic_groups(tx, name)?;
            Ok((self.thing_row(tx, name)?.expect("inserted"), changes))
        })
    }

    pub fn describe_thing(&self, name: &str) -> Result<Thing> {
        self.read(|tx| {
            self.thing_row(tx, name)?.ok_or(RegistryError::NotFound {
                kind: "thing",
                name: name.into(),
            })
        })
    }

    /// ListThings in name order, filtered; filters are applied while scanning so pages stay full.
    pub fn list_things(&self, q: &ThingQuery, page: &PageRequest) -> Result<Page<Thing>> {
        let after = page.after()?;
        let limit = page.limit(50, 250)?;
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT name, id, thing_type, attributes, version FROM things
                 WHERE name > ?1 ORDER BY name",
            )?;
            let mut rows = stmt.query([&after])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let t = Thing {
                    name: r.get(0)?,
                    id: r.get(1)?,
                    arn: String::new(),
                    thing_type: r.get(2)?,
                    attributes: attrs_parse(&r.get::<_, String>(3)?),
                    version: r.get(4)?,
                };
                if let Some(tt) = &q.thing_type
                    && t.thing_type.as_ref() != Some(tt)
                {
                    continue;
                }
                if let Some(n) = &q.attribute_name {
                    let Some(v) = t.attributes.get(n) else {
                        continue;
                    };
                    if let Some(want) = &q.attribute_value {
                        let hit = if q.use_prefix_attribute_value {
                            v.starts_with(want.as_str())
                        } else {
                            v == want
                        };
                        if !hit {
                            continue;
                        }
                    }
                }
                out.push(t);
                if out.len() > limit {
                    break;
                }
            }
            for t in &mut out {
                t.arn = self.arn(&format!("thing/{}", t.name));
            }
            Ok(page::finish(out, limit, |t| t.name.clone()))
        })
    }

    /// UpdateThing. `attributes` with `merge` adds/overwrites and removes keys whose value is
    /// empty; without `merge` replaces the whole set.
    pub fn update_thing(
        &self,
        who: &str,
        name: &str,
        thing_type: Option<&str>,
        remove_thing_type: bool,
        attributes: Option<(Attributes, bool)>,
        expected_version: Option<i64>,
    ) -> Result<()> {
        self.write(who, "UpdateThing", name, |tx| {
            let mut t = self.thing_row(tx, name)?.ok_or(RegistryError::NotFound {
                kind: "thing",
                name: name.into(),
            })?;
            if let Some(v) = expected_version
                && v != t.version
            {
                return Err(RegistryError::VersionConflict(format!(
                    "thing {name:?} is at version {}, not the expected {v}; describe it and retry",
                    t.version
                )));
            }
            if remove_thing_type && thing_type.is_some() {
                return Err(RegistryError::Invalid(
                    "give thingTypeName or removeThingType, not both".into(),
                ));
            }
            if remove_thing_type {
                t.thing_type = None;
            } else if let Some(tt) = thing_type {
                self.usable_thing_type(tx, tt)?;
                t.thing_type = Some(tt.into());
            }
            // Cloned: a PostgreSQL write may run again after losing a race.
            apply_attributes(&mut t.attributes, attributes.clone());
            tx.execute(
                "UPDATE things SET thing_type = ?2, attributes = ?3, version = version + 1
                 WHERE name = ?1",
                params![name, t.thing_type, attrs_json(&t.attributes)],
            )?;
            self.refresh_dynamic_groups(tx, name)?;
            Ok((
                (),
                vec![Change::Thing {
                    thing_name: name.into(),
                }],
            ))
        })
    }

    /// DeleteThing: succeeds when absent; refused while principals are attached.
    pub fn delete_thing(&self, who: &str, name: &str, expected_version: Option<i64>) -> Result<()> {
        self.write(who, "DeleteThing", name, |tx| {
            let Some(t) = self.thing_row(tx, name)? else {
                return Ok(((), vec![]));
            };
            expect_version("thing", name, t.version, expected_version)?;
            let principals: i64 = tx.query_row(
                "SELECT COUNT(*) FROM thing_principals WHERE thing_name = ?1",
                [name],
                |r| r.get(0),
            )?;
            if principals > 0 {
                return Err(RegistryError::Invalid(format!(
                    "thing {name:?} has {principals} principal(s) attached; detach them \
                     (DetachThingPrincipal) before deleting it"
                )));
            }
            tx.execute(
                "DELETE FROM thing_group_members WHERE thing_name = ?1",
                [name],
            )?;
            tx.execute("DELETE FROM things WHERE name = ?1", [name])?;
            Ok((
                (),
                vec![Change::Thing {
                    thing_name: name.into(),
                }],
            ))
        })
    }

    fn group_row(&self, tx: &Transaction<'_>, name: &str) -> Result<Option<ThingGroup>> {
        let g = tx
            .query_row(
                "SELECT name, id, parent, description, attributes, version, created_at, query
                 FROM thing_groups WHERE name = ?1",
                [name],
                |r| {
                    Ok(ThingGroup {
                        name: r.get(0)?,
                        id: r.get(1)?,
                        arn: String::new(),
                        parent: r.get(2)?,
                        description: r.get(3)?,
                        attributes: attrs_parse(&r.get::<_, String>(4)?),
                        version: r.get(5)?,
                        created_ms: r.get(6)?,
                        root_to_parent: vec![],
                        query: r.get(7)?,
                    })
                },
            )
            .optional()?;
        let Some(mut g) = g else { return Ok(None) };
        g.arn = self.arn(&format!("thinggroup/{}", g.name));
        let mut up = g.parent.clone();
        while let Some(p) = up {
            if g.root_to_parent.len() > 7 {
                break; // AWS allows 7 levels; a cycle cannot be created, this is belt and braces
            }
            up = tx
                .query_row(
                    "SELECT parent FROM thing_groups WHERE name = ?1",
                    [&p],
                    |r| r.get(0),
                )
                .or_else(none_if_no_rows)?
                .flatten();
            let arn = self.arn(&format!("thinggroup/{p}"));
            g.root_to_parent.insert(0, (p, arn));
        }
        Ok(Some(g))
    }

    fn group_exists(&self, tx: &Transaction<'_>, name: &str) -> Result<ThingGroup> {
        self.group_row(tx, name)?.ok_or(RegistryError::NotFound {
            kind: "thing group",
            name: name.into(),
        })
    }

    /// CreateThingGroup: idempotent for the same parent, description and attributes.
    pub fn create_thing_group(
        &self,
        who: &str,
        name: &str,
        parent: Option<&str>,
        description: Option<&str>,
        attributes: Attributes,
    ) -> Result<ThingGroup> {
        valid_name("thing group", name)?;
        self.write(who, "CreateThingGroup", name, |tx| {
            if let Some(g) = self.group_row(tx, name)? {
                if g.parent.as_deref() == parent
                    && g.description.as_deref() == description
                    && g.attributes == attributes
                {
                    return Ok((g, vec![]));
                }
                return Err(RegistryError::AlreadyExists {
                    kind: "thing group",
                    name: name.into(),
                    arn: g.arn,
                });
            }
            if let Some(p) = parent {
                let pg = self.group_exists(tx, p)?;
                if pg.root_to_parent.len() >= 6 {
                    return Err(RegistryError::Invalid(format!(
                        "thing group {p:?} is already 7 levels deep; a hierarchy has at most 7"
                    )));
                }
            }
            tx.execute(
                "INSERT INTO thing_groups (name, id, parent, description, attributes, query,
                 version, created_at) VALUES (?1, ?2, ?3, ?4, ?5, NULL, 1, ?6)",
                params![
                    name,
                    uuid::Uuid::new_v4().to_string(),
                    parent,
                    description,
                    attrs_json(&attributes),
                    now_ms()
                ],
            )?;
            Ok((self.group_row(tx, name)?.expect("inserted"), vec![]))
        })
    }

    pub fn describe_thing_group(&self, name: &str) -> Result<ThingGroup> {
        self.read(|tx| self.group_exists(tx, name))
    }

    /// ListThingGroups in name order: all, or the children of `parent` (recursively: all
    /// descendants); `name_prefix` filters.
    pub fn list_thing_groups(
        &self,
        parent: Option<&str>,
        name_prefix: Option<&str>,
        recursive: bool,
        page: &PageRequest,
    ) -> Result<Page<(String, String)>> {
        let after = page.after()?;
        let limit = page.limit(50, 250)?;
        self.read(|tx| {
            let mut stmt =
                tx.prepare("SELECT name, parent FROM thing_groups WHERE name > ?1 ORDER BY name")?;
            let all: Vec<(String, Option<String>)> = stmt
                .query_map([&after], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<crate::db::DbResult<_>>()?;
            let mut out = Vec::new();
            for (name, p) in all {
                if let Some(want) = parent {
                    let under = if recursive {
                        let g = self.group_exists(tx, &name)?;
                        g.root_to_parent.iter().any(|(n, _)| n == want)
                    } else {
                        p.as_deref() == Some(want)
                    };
                    if !under {
                        continue;
                    }
                }
                if let Some(pre) = name_prefix
                    && !name.starts_with(pre)
                {
                    continue;
                }
                let arn = self.arn(&format!("thinggroup/{name}"));
                out.push((name, arn));
                if out.len() > limit {
                    break;
                }
            }
            Ok(page::finish(out, limit, |(n, _)| n.clone()))
        })
    }

    /// DeleteThingGroup: succeeds when absent; refused while it has child groups.
    pub fn delete_thing_group(
        &self,
        who: &str,
        name: &str,
        expected_version: Option<i64>,
    ) -> Result<()> {
        self.write(who, "DeleteThingGroup", name, |tx| {
            let Some(g) = self.group_row(tx, name)? else {
                return Ok(((), vec![]));
            };
            expect_version("thing group", name, g.version, expected_version)?;
            let children: i64 = tx.query_row(
                "SELECT COUNT(*) FROM thing_groups WHERE parent = ?1",
                [name],
                |r| r.get(0),
            )?;
            if children > 0 {
                return Err(RegistryError::Invalid(format!(
                    "thing group {name:?} has {children} child group(s); delete them first"
                )));
            }
            let members: Vec<String> = tx
                .prepare("SELECT thing_name FROM thing_group_members WHERE group_name = ?1")?
                .query_map([name], |r| r.get(0))?
                .collect::<crate::db::DbResult<_>>()?;
            tx.execute(
                "DELETE FROM thing_group_members WHERE group_name = ?1",
                [name],
            )?;
            tx.execute("DELETE FROM policy_targets WHERE target = ?1", [&g.arn])?;
            tx.execute("DELETE FROM thing_groups WHERE name = ?1", [name])?;
            let changes = members
                .into_iter()
                .map(|thing_name| Change::Thing { thing_name })
                .collect();
            Ok(((), changes))
        })
    }

    /// AddThingToThingGroup (idempotent).
    pub fn add_thing_to_group(&self, who: &str, group: &str, thing: &str) -> Result<()> {
        self.write(
            who,
            "AddThingToThingGroup",
            &format!("{group}/{thing}"),
            |tx| {
                static_group(self.group_exists(tx, group)?)?;
                self.thing_row(tx, thing)?.ok_or(RegistryError::NotFound {
                    kind: "thing",
                    name: thing.into(),
                })?;
                let n = tx.execute(
                    "INSERT INTO thing_group_members (group_name, thing_name)
                 SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM thing_group_members
                   WHERE group_name = ?1 AND thing_name = ?2)",
                    params![group, thing],
                )?;
                let mut changes = self.refresh_dynamic_groups(tx, thing)?;
                if n > 0 && changes.is_empty() {
                    changes.push(Change::Thing {
                        thing_name: thing.into(),
                    });
                }
                Ok(((), changes))
            },
        )
    }

    /// RemoveThingFromThingGroup (idempotent).
    pub fn remove_thing_from_group(&self, who: &str, group: &str, thing: &str) -> Result<()> {
        self.write(
            who,
            "RemoveThingFromThingGroup",
            &format!("{group}/{thing}"),
            |tx| {
                static_group(self.group_exists(tx, group)?)?;
                let n = tx.execute(
                    "DELETE FROM thing_group_members WHERE group_name = ?1 AND thing_name = ?2",
                    params![group, thing],
                )?;
                let mut changes = self.refresh_dynamic_groups(tx, thing)?;
                if n > 0 && changes.is_empty() {
                    changes.push(Change::Thing {
                        thing_name: thing.into(),
                    });
                }
                Ok(((), changes))
            },
        )
    }

    /// ListThingsInThingGroup: names, in order; `recursive` includes the child groups' things.
    pub fn list_things_in_group(
        &self,
        group: &str,
        recursive: bool,
        page: &PageRequest,
    ) -> Result<Page<String>> {
        let after = page.after()?;
        let limit = page.limit(50, 250)?;
        self.read(|tx| {
            self.group_exists(tx, group)?;
            let mut groups = vec![group.to_string()];
            if recursive {
                let mut i = 0;
                while i < groups.len() {
                    let kids: Vec<String> = tx
                        .prepare("SELECT name FROM thing_groups WHERE parent = ?1")?
                        .query_map([&groups[i]], |r| r.get(0))?
                        .collect::<crate::db::DbResult<_>>()?;
                    groups.extend(kids);
                    i += 1;
                }
            }
            let mut names = std::collections::BTreeSet::new();
            for g in &groups {
                let mut stmt = tx.prepare(
                    "SELECT thing_name FROM thing_group_members
                     WHERE group_name = ?1 AND thing_name > ?2",
                )?;
                for n in stmt.query_map(params![g, after], |r| r.get::<_, String>(0))? {
                    names.insert(n?);
                }
            }
            let out: Vec<String> = names.into_iter().take(limit + 1).collect();
            Ok(page::finish(out, limit, Clone::clone))
        })
    }

    /// ListThingGroupsForThing: (name, arn) of the groups the thing is directly in.
    pub fn list_groups_for_thing(
        &self,
        thing: &str,
        page: &PageRequest,
    ) -> Result<Page<(String, String)>> {
        let after = page.after()?;
        let limit = page.limit(50, 250)?;
        self.read(|tx| {
            self.thing_row(tx, thing)?.ok_or(RegistryError::NotFound {
                kind: "thing",
                name: thing.into(),
            })?;
            let mut stmt = tx.prepare(
                "SELECT group_name FROM thing_group_members WHERE thing_name = ?1
                 AND group_name > ?2 ORDER BY group_name",
            )?;
            let out: Vec<(String, String)> = stmt
                .query_map(params![thing, after], |r| r.get::<_, String>(0))?
                .take(limit + 1)
                .map(|n| n.map(|n| (n.clone(), self.arn(&format!("thinggroup/{n}")))))
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(out, limit, |(n, _)| n.clone()))
        })
    }

    /// The thing's groups with all their ancestors (for policies attached to groups).
    pub(crate) fn groups_with_ancestors(
        &self,
        tx: &Transaction<'_>,
        thing: &str,
    ) -> Result<Vec<String>> {
        let direct: Vec<String> = tx
            .prepare("SELECT group_name FROM thing_group_members WHERE thing_name = ?1")?
            .query_map([thing], |r| r.get(0))?
            .collect::<crate::db::DbResult<_>>()?;
        let mut all = std::collections::BTreeSet::new();
        for g in direct {
            if let Some(row) = self.group_row(tx, &g)? {
                all.extend(row.root_to_parent.into_iter().map(|(n, _)| n));
            }
            all.insert(g);
        }
        Ok(all.into_iter().collect())
    }
}

impl Registry {
    /// Brings `thing`'s membership of every dynamic group in line with the groups' queries
    /// (inside the caller's transaction). A change of membership is announced for the thing.
    pub(crate) fn refresh_dynamic_groups(
        &self,
        tx: &Transaction<'_>,
        thing: &str,
    ) -> Result<Vec<Change>> {
        let dynamic: Vec<(String, String)> = tx
            .prepare("SELECT name, query FROM thing_groups WHERE query IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<crate::db::DbResult<_>>()?;
        if dynamic.is_empty() {
            return Ok(vec![]);
        }
        let mut changed = false;
        for (group, q) in dynamic {
            changed |= self.sync_member(tx, &group, &crate::query::parse(&q)?, thing)?;
        }
        Ok(if changed {
            vec![Change::Thing {
                thing_name: thing.into(),
            }]
        } else {
            vec![]
        })
    }

    /// Adds or removes `thing` in dynamic `group` per `query`; true when membership changed.
    fn sync_member(
        &self,
        tx: &Transaction<'_>,
        group: &str,
        query: &crate::query::Query,
        thing: &str,
    ) -> Result<bool> {
        let Some(t) = self.thing_row(tx, thing)? else {
            return Ok(false);
        };
        let static_groups: Vec<String> = tx
            .prepare(
                "SELECT m.group_name FROM thing_group_members m
                 JOIN thing_groups g ON g.name = m.group_name
                 WHERE m.thing_name = ?1 AND g.query IS NULL",
            )?
            .query_map([thing], |r| r.get(0))?
            .collect::<crate::db::DbResult<_>>()?;
        let want = query.matches(&crate::query::Subject {
            name: &t.name,
            thing_type: t.thing_type.as_deref(),
            attributes: &t.attributes,
            groups: &static_groups,
        });
        let have: i64 = tx.query_row(
            "SELECT COUNT(*) FROM thing_group_members WHERE group_name = ?1 AND thing_name = ?2",
            params![group, thing],
            |r| r.get(0),
        )?;
        match (want, have > 0) {
            (true, false) => {
                tx.execute(
                    "INSERT INTO thing_group_members (group_name, thing_name) VALUES (?1, ?2)",
                    params![group, thing],
                )?;
                Ok(true)
            }
            (false, true) => {
                tx.execute(
                    "DELETE FROM thing_group_members WHERE group_name = ?1 AND thing_name = ?2",
                    params![group, thing],
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Re-evaluates dynamic `group` over every thing.
    fn populate_dynamic(&self, tx: &Transaction<'_>, group: &str, q: &str) -> Result<Vec<Change>> {
        let query = crate::query::parse(q)?;
        let things: Vec<String> = tx
            .prepare("SELECT name FROM things ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<crate::db::DbResult<_>>()?;
        let mut changes = vec![];
        for t in things {
            if self.sync_member(tx, group, &query, &t)? {
                changes.push(Change::Thing { thing_name: t });
            }
        }
        Ok(changes)
    }

    /// CreateDynamicThingGroup: a group whose members are the things `query` matches, kept
    /// current as things change. Idempotent for the same query and properties.
    pub fn create_dynamic_thing_group(
        &self,
        who: &str,
        name: &str,
        description: Option<&str>,
        attributes: Attributes,
        query: &str,
    ) -> Result<ThingGroup> {
        valid_name("thing group", name)?;
        crate::query::parse(query)?;
        self.write(who, "CreateDynamicThingGroup", name, |tx| {
            if let Some(g) = self.group_row(tx, name)? {
                if g.query.as_deref() == Some(query)
                    && g.description.as_deref() == description
                    && g.attributes == attributes
                {
                    return Ok((g, vec![]));
                }
                return Err(RegistryError::AlreadyExists {
                    kind: "thing group",
                    name: name.into(),
                    arn: g.arn,
                });
            }
            tx.execute(
                "INSERT INTO thing_groups (name, id, parent, description, attributes, query,
                 version, created_at) VALUES (?1, ?2, NULL, ?3, ?4, ?5, 1, ?6)",
                params![
                    name,
                    uuid::Uuid::new_v4().to_string(),
                    description,
                    attrs_json(&attributes),
                    query,
                    now_ms()
                ],
            )?;
            let changes = self.populate_dynamic(tx, name, query)?;
            Ok((self.group_row(tx, name)?.expect("inserted"), changes))
        })
    }

    /// UpdateDynamicThingGroup: a new query (membership re-evaluated) and/or description.
    pub fn update_dynamic_thing_group(
        &self,
        who: &str,
        name: &str,
        query: Option<&str>,
        description: Option<&str>,
        expected_version: Option<i64>,
    ) -> Result<i64> {
        if let Some(q) = query {
            crate::query::parse(q)?;
        }
        self.write(who, "UpdateDynamicThingGroup", name, |tx| {
            let g = self.group_exists(tx, name)?;
            let Some(old) = g.query.clone() else {
                return Err(RegistryError::Invalid(format!(
                    "thing group {name:?} is static; UpdateDynamicThingGroup applies to \
                     dynamic groups"
                )));
            };
            expect_version("thing group", name, g.version, expected_version)?;
            let q = query.unwrap_or(&old);
            tx.execute(
                "UPDATE thing_groups SET query = ?2, description = COALESCE(?3, description),
                 version = version + 1 WHERE name = ?1",
                params![name, q, description],
            )?;
            let changes = self.populate_dynamic(tx, name, q)?;
            Ok((g.version + 1, changes))
        })
    }
}

impl Registry {
    /// UpdateThingGroup: a new description and/or attributes (`merge` as in UpdateThing);
    /// returns the new version.
    pub fn update_thing_group(
        &self,
        who: &str,
        name: &str,
        description: Option<&str>,
        attributes: Option<(Attributes, bool)>,
        expected_version: Option<i64>,
    ) -> Result<i64> {
        self.write(who, "UpdateThingGroup", name, |tx| {
            let mut g = self.group_exists(tx, name)?;
            expect_version("thing group", name, g.version, expected_version)?;
            // Cloned: a PostgreSQL write may run again after losing a race.
            apply_attributes(&mut g.attributes, attributes.clone());
            tx.execute(
                "UPDATE thing_groups SET description = COALESCE(?2, description),
                 attributes = ?3, version = version + 1 WHERE name = ?1",
                params![name, description, attrs_json(&g.attributes)],
            )?;
            Ok((g.version + 1, vec![]))
        })
    }
}
