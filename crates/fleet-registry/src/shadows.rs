//! Device shadows as the fleet stores them: one row per (thing, shadow) with the document JSON
//! (NULL once deleted) and the version, which a delete keeps. What a document means is the
//! shadow service's business; here a change is one read-modify-write transaction, so two
//! updates of one shadow (from two fleet processes, too) never both pass a version check.

use crate::db::{OptionalExtension, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Registry, Result, now_ms};

/// A stored shadow. `shadow` is `""` for the classic shadow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRecord {
    /// The document as JSON text; `None` when the shadow was deleted (the version stays).
    pub document: Option<String>,
    pub version: i64,
    pub updated_ms: i64,
}

/// One request in [`Registry::change_shadows`]: who (audited), the operation's name, and the
/// shadow (`shadow` is `""` for the classic one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowKey {
    pub who: String,
    pub operation: String,
    pub thing: String,
    pub shadow: String,
}

/// What a shadow change writes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowWrite {
    /// Nothing (a refused request).
    Nothing,
    /// This document and version.
    Document { document: String, version: i64 },
    /// Deleted, keeping this version.
    Deleted { version: i64 },
}

fn read_row(tx: &Transaction<'_>, thing: &str, shadow: &str) -> Result<Option<ShadowRecord>> {
    Ok(tx
        .query_row(
            "SELECT document, version, updated_at FROM shadows
             WHERE thing_name = ?1 AND shadow_name = ?2",
            params![thing, shadow],
            |r| {
                Ok(ShadowRecord {
                    document: r.get(0)?,
                    version: r.get(1)?,
                    updated_ms: r.get(2)?,
                })
            },
        )
        .optional()?)
}

impl Registry {
    /// The stored shadow, if it was ever written.
    pub fn shadow(&self, thing: &str, shadow: &str) -> Result<Option<ShadowRecord>> {
        self.read(|tx| read_row(tx, thing, shadow))
    }

    /// Reads the shadow, lets `f` decide what to write, and writes it with an audit entry,
    /// all in one transaction. `f` may run more than once (a PostgreSQL transaction that lost a
    /// race is retried), so it must only compute. An `Err` from `f` writes nothing and is
    /// returned inside the `Ok`.
    pub fn change_shadow<T: Send, E: Send>(
        &self,
        who: &str,
        operation: &str,
        thing: &str,
        shadow: &str,
        mut f: impl FnMut(Option<ShadowRecord>) -> std::result::Result<(ShadowWrite, T), E> + Send,
    ) -> Result<std::result::Result<T, E>> {
        let key = ShadowKey {
            who: who.into(),
            operation: operation.into(),
            thing: thing.into(),
            shadow: shadow.into(),
        };
        let mut out = self.change_shadows(std::slice::from_ref(&key), |_, record| f(record))?;
        Ok(out.pop().expect("one result per key"))
    }

    /// [`Registry::change_shadow`] for several requests in one transaction (one commit, so one
    /// fsync for all): `f(i, record)` decides request `i`'s write, in order, and sees what the
    /// requests before it in the batch wrote. Each `Err` writes nothing for its request only.
    pub fn change_shadows<T: Send, E: Send>(
        &self,
        keys: &[ShadowKey],
        mut f: impl FnMut(usize, Option<ShadowRecord>) -> std::result::Result<(ShadowWrite, T), E>
        + Send,
    ) -> Result<Vec<std::result::Result<T, E>>> {
        self.run(true, |tx| {
            let mut out = Vec::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                let current = read_row(tx, &key.thing, &key.shadow)?;
                let (write, value) = match f(i, current) {
                    Ok(v) => v,
                    Err(e) => {
                        out.push(Err(e));
                        continue;
                    }
                };
                let (document, version) = match &write {
                    ShadowWrite::Nothing => {
                        out.push(Ok(value));
                        continue;
                    }
                    ShadowWrite::Document { document, version } => {
                        (Some(document.as_str()), *version)
                    }
                    ShadowWrite::Deleted { version } => (None, *version),
                };
                tx.execute(
                    "INSERT INTO shadows (thing_name, shadow_name, document, version, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (thing_name, shadow_name)
                     DO UPDATE SET document = excluded.document, version = excluded.version,
                                   updated_at = excluded.updated_at",
                    params![key.thing, key.shadow, document, version, now_ms()],
                )?;
                let resource = if key.shadow.is_empty() {
                    format!("{}/shadow", key.thing)
                } else {
                    format!("{}/shadow/{}", key.thing, key.shadow)
                };
                crate::audit::record(tx, &key.who, &key.operation, &resource)?;
                out.push(Ok(value));
            }
            Ok(out)
        })
    }

    /// The names of a thing's live named shadows, in name order, a page at a time
    /// (ListNamedShadowsForThing: page size 1–100, 25 by default).
    pub fn list_named_shadows(&self, thing: &str, page: &PageRequest) -> Result<Page<String>> {
        let after = page.after()?;
        let limit = page.limit(25, 100)?;
        self.read(|tx| {
            let names: Vec<String> = tx
                .prepare(
                    "SELECT shadow_name FROM shadows
                     WHERE thing_name = ?1 AND shadow_name > ?2 AND shadow_name <> ''
                       AND document IS NOT NULL
                     ORDER BY shadow_name",
                )?
                .query_map(params![thing, after], |r| r.get(0))?
                .take(limit + 1)
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(names, limit, Clone::clone))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(doc: &str, version: i64) -> ShadowWrite {
        ShadowWrite::Document {
            document: doc.into(),
            version,
        }
    }

    pub(crate) fn exercise(r: &Registry) {
        // A batch: the second request sees the first one's write; a refusal writes nothing.
        let keys: Vec<ShadowKey> = ["b1", "b1", "b2"]
            .iter()
            .map(|s| ShadowKey {
                who: "admin".into(),
                operation: "UpdateThingShadow".into(),
                thing: "batch".into(),
                shadow: (*s).into(),
            })
            .collect();
        let out = r
            .change_shadows(&keys, |i, cur| {
                let v = cur.map_or(0, |c| c.version) + 1;
                if i == 2 {
                    return Err("refused");
                }
                Ok((put("{}", v), v))
            })
            .unwrap();
        assert_eq!(out, vec![Ok(1), Ok(2), Err("refused")]);
        assert_eq!(r.shadow("batch", "b1").unwrap().unwrap().version, 2);
        assert_eq!(r.shadow("batch", "b2").unwrap(), None);

        assert_eq!(r.shadow("t", "").unwrap(), None);
        let seen = r
            .change_shadow("admin", "UpdateThingShadow", "t", "", |cur| {
                Ok::<_, ()>((put("{\"a\":1}", 1), cur))
            })
            .unwrap()
            .unwrap();
        assert_eq!(seen, None);
        let rec = r.shadow("t", "").unwrap().unwrap();
        assert_eq!(
            (rec.document.as_deref(), rec.version),
            (Some("{\"a\":1}"), 1)
        );
        // A refusal writes nothing.
        let refused = r
            .change_shadow("admin", "UpdateThingShadow", "t", "", |_| {
                Err::<(ShadowWrite, ()), _>("conflict")
            })
            .unwrap();
        assert_eq!(refused, Err("conflict"));
        assert_eq!(r.shadow("t", "").unwrap().unwrap().version, 1);
        for name in ["b", "a", "c", "d"] {
            r.change_shadow("admin", "UpdateThingShadow", "t", name, |_| {
                Ok::<_, ()>((put("{}", 1), ()))
            })
            .unwrap()
            .unwrap();
        }
        r.change_shadow("admin", "DeleteThingShadow", "t", "c", |_| {
            Ok::<_, ()>((ShadowWrite::Deleted { version: 1 }, ()))
        })
        .unwrap()
        .unwrap();
        let deleted = r.shadow("t", "c").unwrap().unwrap();
        assert_eq!((deleted.document, deleted.version), (None, 1));
        let first = r
            .list_named_shadows(
                "t",
                &PageRequest {
                    token: None,
                    size: Some(2),
                },
            )
            .unwrap();
        assert_eq!(first.items, vec!["a", "b"]);
        let rest = r
            .list_named_shadows(
                "t",
                &PageRequest {
                    token: first.next_token,
                    size: Some(2),
                },
            )
            .unwrap();
        assert_eq!((rest.items, rest.next_token), (vec!["d".to_string()], None));
        let audit = r.audit_log(0, 100, Some("t/shadow/c")).unwrap();
        assert_eq!(audit.len(), 2);
    }

    #[test]
    fn shadows_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap();
        exercise(&r);
    }

    #[test]
    fn shadows_on_postgres() {
        let Some(url) = crate::pg_tests::pg_support::fresh_database() else {
            return;
        };
        exercise(&Registry::open_postgres(&url, "us-east-1").unwrap());
    }

    /// Read-modify-write from two registries on one database loses no update.
    #[test]
    fn racing_shadow_updates_on_postgres_all_count() {
        let Some(url) = crate::pg_tests::pg_support::fresh_database() else {
            return;
        };
        let regs: Vec<_> = (0..2)
            .map(|_| std::sync::Arc::new(Registry::open_postgres(&url, "us-east-1").unwrap()))
            .collect();
        let handles: Vec<_> = regs
            .iter()
            .map(|r| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..30 {
                        r.change_shadow("admin", "UpdateThingShadow", "t", "", |cur| {
                            let v = cur.map_or(0, |c| c.version) + 1;
                            Ok::<_, ()>((put("{}", v), ()))
                        })
                        .unwrap()
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(regs[0].shadow("t", "").unwrap().unwrap().version, 60);
    }
}
