//! The audit log: one row per committed mutation, in commit order.

use crate::db::Transaction;
use crate::{Registry, Result};

/// Who (access key id, or `lichen` for the service itself) did what to which resource, when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub seq: i64,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    pub who: String,
    pub operation: String,
    pub resource: String,
}

pub(crate) fn record(
    tx: &Transaction<'_>,
    who: &str,
    operation: &str,
    resource: &str,
) -> crate::db::DbResult<()> {
    // Sequence assigned inside the writing transaction (writes are serialized), portable SQL.
    tx.execute(
        "INSERT INTO audit_log (seq, at, who, operation, resource)
         SELECT COALESCE(MAX(seq), 0) + 1, ?1, ?2, ?3, ?4 FROM audit_log",
        crate::db::params![crate::now_ms(), who, operation, resource],
    )?;
    Ok(())
}

impl Registry {
    /// Audit entries after `after_seq` (0: from the start), oldest first, at most `limit`;
    /// optionally only those about `resource`.
    pub fn audit_log(
        &self,
        after_seq: i64,
        limit: u32,
        resource: Option<&str>,
    ) -> Result<Vec<AuditEntry>> {
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT seq, at, who, operation, resource FROM audit_log
                 WHERE seq > ?1 AND (CAST(?2 AS TEXT) IS NULL OR resource = ?2) ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(crate::db::params![after_seq, resource, limit], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    who: r.get(2)?,
                    operation: r.get(3)?,
                    resource: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<crate::db::DbResult<Vec<_>>>()?)
        })
    }
}
