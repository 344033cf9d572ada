//! The durable shadow store: one SQLite database (`shadow.db`, WAL, `synchronous=FULL`) with the
//! tables Greengrass' shadow manager keeps (`documents`, `sync`) plus `sync_queue`, the local
//! changes not yet in the cloud. A local change and its queue entry commit in one transaction,
//! so after a crash either both are there or neither is.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shadow store {path}: {source}; the file may be damaged: move it away to start empty")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("shadow store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("shadow store: a stored document is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A stored shadow row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `None` when deleted.
    pub document: Option<Value>,
    /// The last version (kept after a delete).
    pub version: u64,
    pub update_time: u64,
}

/// The sync state of one shadow: the document both sides last agreed on and each side's
/// version at that moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncRow {
    /// `{"desired"?, "reported"?}` as last synced; `None` when the last sync saw no shadow.
    pub last_synced: Option<Value>,
    pub local_version: u64,
    pub cloud_version: u64,
    pub cloud_deleted: bool,
    pub last_sync_time: u64,
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    thing_name TEXT NOT NULL,
    shadow_name TEXT NOT NULL,
    document TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    deleted INTEGER NOT NULL DEFAULT 0,
    update_time INTEGER NOT NULL,
    PRIMARY KEY (thing_name, shadow_name)
);
CREATE TABLE IF NOT EXISTS sync (
    thing_name TEXT NOT NULL,
    shadow_name TEXT NOT NULL,
    last_synced_document TEXT,
    local_version INTEGER NOT NULL DEFAULT 0,
    cloud_version INTEGER NOT NULL DEFAULT 0,
    cloud_deleted INTEGER NOT NULL DEFAULT 0,
    last_sync_time INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (thing_name, shadow_name)
);
CREATE TABLE IF NOT EXISTS sync_queue (
    thing_name TEXT NOT NULL,
    shadow_name TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    PRIMARY KEY (thing_name, shadow_name)
);
";

impl Store {
    /// Opens (creating) `<dir>/shadow.db`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("shadow.db");
        let open = || -> Result<Connection, rusqlite::Error> {
            std::fs::create_dir_all(dir).map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(e.to_string()),
                )
            })?;
            let c = Connection::open(&path)?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            // FULL: a commit is on disk before it returns, so `Ok` survives power loss.
            c.pragma_update(None, "synchronous", "FULL")?;
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            c.execute_batch(SCHEMA)?;
            // Fails on a damaged file instead of later, mid-request.
            c.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
                .and_then(|s| {
                    if s == "ok" {
                        Ok(())
                    } else {
                        Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                            Some(s),
                        ))
                    }
                })?;
            Ok(c)
        };
        let conn = open().map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection (callers run this off the async threads).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }
}

pub fn read_row(c: &Connection, thing: &str, shadow: &str) -> Result<Option<Row>, StoreError> {
    let r = c
        .query_row(
            "SELECT document, version, deleted, update_time FROM documents WHERE thing_name = ?1 AND shadow_name = ?2",
            params![thing, shadow],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((doc, version, deleted, update_time)) = r else {
        return Ok(None);
    };
    let document = match (deleted, doc) {
        (false, Some(d)) => Some(serde_json::from_str(&d)?),
        _ => None,
    };
    Ok(Some(Row {
        document,
        version: version as u64,
        update_time: update_time as u64,
    }))
}

pub fn write_document(
    c: &Connection,
    thing: &str,
    shadow: &str,
    doc: &Value,
    now: u64,
) -> Result<(), StoreError> {
    let version = doc.get("version").and_then(Value::as_u64).unwrap_or(1) as i64;
    c.execute(
        "INSERT INTO documents (thing_name, shadow_name, document, version, deleted, update_time)
         VALUES (?1, ?2, ?3, ?4, 0, ?5)
         ON CONFLICT (thing_name, shadow_name) DO UPDATE SET
           document = excluded.document, version = excluded.version, deleted = 0,
           update_time = excluded.update_time",
        params![
            thing,
            shadow,
            serde_json::to_string(doc)?,
            version,
            now as i64
        ],
    )?;
    Ok(())
}

/// Flags the shadow deleted; its version stays.
pub fn mark_deleted(c: &Connection, thing: &str, shadow: &str, now: u64) -> Result<(), StoreError> {
    c.execute(
        "UPDATE documents SET deleted = 1, document = NULL, update_time = ?3
         WHERE thing_name = ?1 AND shadow_name = ?2",
        params![thing, shadow, now as i64],
    )?;
    Ok(())
}

/// Named (non-classic, not deleted) shadows of a thing, by name, from `offset`.
pub fn list_named(
    c: &Connection,
    thing: &str,
    offset: usize,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut s = c.prepare(
        "SELECT shadow_name FROM documents WHERE thing_name = ?1 AND shadow_name != '' AND deleted = 0
         ORDER BY shadow_name LIMIT ?2 OFFSET ?3",
    )?;
    let names = s
        .query_map(params![thing, limit as i64, offset as i64], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

pub fn enqueue(c: &Connection, thing: &str, shadow: &str, now: u64) -> Result<(), StoreError> {
    c.execute(
        "INSERT OR IGNORE INTO sync_queue (thing_name, shadow_name, queued_at) VALUES (?1, ?2, ?3)",
        params![thing, shadow, now as i64],
    )?;
    Ok(())
}

pub fn dequeue(c: &Connection, thing: &str, shadow: &str) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM sync_queue WHERE thing_name = ?1 AND shadow_name = ?2",
        params![thing, shadow],
    )?;
    Ok(())
}

/// The queued shadows, oldest first.
pub fn queued(c: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut s =
        c.prepare("SELECT thing_name, shadow_name FROM sync_queue ORDER BY queued_at, rowid")?;
    let q = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(q)
}

pub fn read_sync(c: &Connection, thing: &str, shadow: &str) -> Result<Option<SyncRow>, StoreError> {
    let r = c
        .query_row(
            "SELECT last_synced_document, local_version, cloud_version, cloud_deleted, last_sync_time
             FROM sync WHERE thing_name = ?1 AND shadow_name = ?2",
            params![thing, shadow],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((doc, lv, cv, cd, t)) = r else {
        return Ok(None);
    };
    Ok(Some(SyncRow {
        last_synced: doc.map(|d| serde_json::from_str(&d)).transpose()?,
        local_version: lv as u64,
        cloud_version: cv as u64,
        cloud_deleted: cd,
        last_sync_time: t as u64,
    }))
}

pub fn write_sync(
    c: &Connection,
    thing: &str,
    shadow: &str,
    s: &SyncRow,
) -> Result<(), StoreError> {
    let doc = s
        .last_synced
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    c.execute(
        "INSERT INTO sync (thing_name, shadow_name, last_synced_document, local_version, cloud_version, cloud_deleted, last_sync_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (thing_name, shadow_name) DO UPDATE SET
           last_synced_document = excluded.last_synced_document, local_version = excluded.local_version,
           cloud_version = excluded.cloud_version, cloud_deleted = excluded.cloud_deleted,
           last_sync_time = excluded.last_sync_time",
        params![
            thing,
            shadow,
            doc,
            s.local_version as i64,
            s.cloud_version as i64,
            s.cloud_deleted,
            s.last_sync_time as i64
        ],
    )?;
    Ok(())
}
