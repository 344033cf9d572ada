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
        let resource = if shadow.is_empty() {
            format!("{thing}/shadow")
        } else {
            format!("{thing}/shadow/{shadow}")
        };
        self.run(true, |tx| {
            let current = read_row(tx, thing, shadow)?;
            let (write, value) = match f(current) {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let (document, version) = match &write {
                ShadowWrite::Nothing => return Ok(Ok(value)),
                ShadowWrite::Document { document, version } => (Some(document.as_str()), *version),
                ShadowWrite::Deleted { version } => (None, *version),
            };
            tx.execute(
                "INSERT INTO shadows (thing_name, shadow_name, document, version, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (thing_name, shadow_name)
                 DO UPDATE SET document = excluded.document, version = excluded.version,
                               updated_at = excluded.updated_at",
                params![thing, shadow, document, version, now_ms()],
            )?;
            crate::audit::record(tx, who, operation, &resource)?;
            Ok(Ok(value))
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
