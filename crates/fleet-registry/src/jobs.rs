//! Storage for AWS IoT Jobs: jobs and their executions, one row each. The jobs service
//! (`lichen-fleet-jobs`) owns the semantics; here are only typed reads and writes that it runs
//! inside one transaction ([`Registry::jobs_write`]), so that a transition — an execution's new
//! status, the job's counts, an abort that cancels the rest — commits whole or not at all.
//!
//! A job's configuration (document, targets, rollout, abort and timeout settings, reason) is kept
//! as one JSON text the service reads; the columns are what queries select on.

use crate::db::{OptionalExtension, Row, Transaction, params};
use crate::{Registry, RegistryError, Result};

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: String,
    pub namespace: Option<String>,
    /// IN_PROGRESS, CANCELED, DELETION_IN_PROGRESS or COMPLETED.
    pub status: String,
    /// targetSelection CONTINUOUS.
    pub continuous: bool,
    /// The rest of the job, JSON (the service's own shape).
    pub body: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One thing's execution of a job as stored (times in epoch milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRow {
    pub job_id: String,
    pub thing_name: String,
    pub status: String,
    /// statusDetails, a JSON object of strings.
    pub status_details: String,
    pub version: i64,
    pub execution_number: i64,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub updated_at: i64,
    /// Whether the rollout has let the device see it yet.
    pub released: bool,
    /// When an IN_PROGRESS execution times out.
    pub timeout_at: Option<i64>,
    pub force_canceled: bool,
}

const JOB_COLUMNS: &str = "id, namespace, status, continuous, body, created_at, updated_at";
const EXEC_COLUMNS: &str = "job_id, thing_name, status, status_details, version, \
    execution_number, queued_at, started_at, updated_at, released, timeout_at, force_canceled";

fn job_row(r: &Row) -> crate::db::DbResult<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        namespace: r.get(1)?,
        status: r.get(2)?,
        continuous: r.get(3)?,
        body: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

fn exec_row(r: &Row) -> crate::db::DbResult<ExecutionRow> {
    Ok(ExecutionRow {
        job_id: r.get(0)?,
        thing_name: r.get(1)?,
        status: r.get(2)?,
        status_details: r.get(3)?,
        version: r.get(4)?,
        execution_number: r.get(5)?,
        queued_at: r.get(6)?,
        started_at: r.get(7)?,
        updated_at: r.get(8)?,
        released: r.get(9)?,
        timeout_at: r.get(10)?,
        force_canceled: r.get(11)?,
    })
}

/// Jobs reads and writes inside one registry transaction.
pub struct JobsTx<'r, 't, 'a> {
    registry: &'r Registry,
    tx: &'t Transaction<'a>,
}

impl JobsTx<'_, '_, '_> {
    pub fn job(&self, id: &str) -> Result<Option<JobRow>> {
        Ok(self
            .tx
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_row,
            )
            .optional()?)
    }

    /// Inserts or replaces the job.
    pub fn put_job(&self, j: &JobRow) -> Result<()> {
        self.tx.execute(
            "INSERT INTO jobs (id, namespace, status, continuous, body, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET namespace = ?2, status = ?3, continuous = ?4,
               body = ?5, created_at = ?6, updated_at = ?7",
            params![
                j.id,
                j.namespace,
                j.status,
                j.continuous,
                j.body,
                j.created_at,
                j.updated_at
            ],
        )?;
        Ok(())
    }

    /// Deletes the job and its executions.
    pub fn delete_job(&self, id: &str) -> Result<()> {
        self.tx
            .execute("DELETE FROM job_executions WHERE job_id = ?1", [id])?;
        self.tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Jobs after `after` (by id), at most `limit`; `status` filters.
    pub fn jobs(&self, status: Option<&str>, after: &str, limit: usize) -> Result<Vec<JobRow>> {
        let limit = limit.min(i64::MAX as usize);
        let mut stmt = self.tx.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id > ?1 AND (?2 = '' OR status = ?2)
             ORDER BY id LIMIT {limit}"
        ))?;
        let rows = stmt
            .query_map(params![after, status.unwrap_or("")], job_row)?
            .collect::<crate::db::DbResult<_>>()?;
        Ok(rows)
    }

    /// Jobs still IN_PROGRESS (rollouts, timeouts and group changes act on these).
    pub fn active_jobs(&self) -> Result<Vec<JobRow>> {
        self.jobs(Some("IN_PROGRESS"), "", i64::MAX as usize)
    }

    pub fn execution(&self, job_id: &str, thing: &str) -> Result<Option<ExecutionRow>> {
        Ok(self
            .tx
            .query_row(
                &format!(
                    "SELECT {EXEC_COLUMNS} FROM job_executions WHERE job_id = ?1 AND thing_name = ?2"
                ),
                params![job_id, thing],
                exec_row,
            )
            .optional()?)
    }

    /// Inserts or replaces the execution.
    pub fn put_execution(&self, e: &ExecutionRow) -> Result<()> {
        self.tx.execute(
            "INSERT INTO job_executions (job_id, thing_name, status, status_details, version,
               execution_number, queued_at, started_at, updated_at, released, timeout_at,
               force_canceled)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (job_id, thing_name) DO UPDATE SET status = ?3, status_details = ?4,
               version = ?5, execution_number = ?6, queued_at = ?7, started_at = ?8,
               updated_at = ?9, released = ?10, timeout_at = ?11, force_canceled = ?12",
            params![
                e.job_id,
                e.thing_name,
                e.status,
                e.status_details,
                e.version,
                e.execution_number,
                e.queued_at,
                e.started_at,
                e.updated_at,
                e.released,
                e.timeout_at,
                e.force_canceled
            ],
        )?;
        Ok(())
    }

    /// The job's executions, by thing name.
    pub fn executions_for_job(&self, job_id: &str) -> Result<Vec<ExecutionRow>> {
        let mut stmt = self.tx.prepare(&format!(
            "SELECT {EXEC_COLUMNS} FROM job_executions WHERE job_id = ?1 ORDER BY thing_name"
        ))?;
        Ok(stmt
            .query_map([job_id], exec_row)?
            .collect::<crate::db::DbResult<_>>()?)
    }

    /// The thing's executions, oldest first.
    pub fn executions_for_thing(&self, thing: &str) -> Result<Vec<ExecutionRow>> {
        let mut stmt = self.tx.prepare(&format!(
            "SELECT {EXEC_COLUMNS} FROM job_executions WHERE thing_name = ?1
             ORDER BY queued_at, job_id"
        ))?;
        Ok(stmt
            .query_map([thing], exec_row)?
            .collect::<crate::db::DbResult<_>>()?)
    }

    /// IN_PROGRESS executions whose timeout is at or before `now`.
    pub fn timed_out_executions(&self, now: i64) -> Result<Vec<ExecutionRow>> {
        let mut stmt = self.tx.prepare(&format!(
            "SELECT {EXEC_COLUMNS} FROM job_executions WHERE timeout_at IS NOT NULL
             AND timeout_at <= ?1 AND status = 'IN_PROGRESS' ORDER BY timeout_at"
        ))?;
        Ok(stmt
            .query_map([now], exec_row)?
            .collect::<crate::db::DbResult<_>>()?)
    }

    pub fn thing_exists(&self, thing: &str) -> Result<bool> {
        let n: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM things WHERE name = ?1",
            [thing],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    pub fn group_exists(&self, group: &str) -> Result<bool> {
        let n: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM thing_groups WHERE name = ?1",
            [group],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// The things in `group` and in its descendant groups (a job on a group targets them all).
    pub fn things_in_group(&self, group: &str) -> Result<Vec<String>> {
        let mut groups = vec![group.to_string()];
        let mut i = 0;
        while i < groups.len() {
            let kids: Vec<String> = self
                .tx
                .prepare("SELECT name FROM thing_groups WHERE parent = ?1")?
                .query_map([&groups[i]], |r| r.get(0))?
                .collect::<crate::db::DbResult<_>>()?;
            groups.extend(kids);
            i += 1;
        }
        let mut names = std::collections::BTreeSet::new();
        for g in &groups {
            let mut stmt = self
                .tx
                .prepare("SELECT thing_name FROM thing_group_members WHERE group_name = ?1")?;
            for n in stmt.query_map([g], |r| r.get::<_, String>(0))? {
                names.insert(n?);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The groups `thing` is in, directly or through a descendant group.
    pub fn groups_of_thing(&self, thing: &str) -> Result<Vec<String>> {
        self.registry.groups_with_ancestors(self.tx, thing)
    }
}

impl Registry {
    /// Runs `f` over the jobs tables in one write transaction, audited as `operation` on
    /// `resource` by `who`. On PostgreSQL `f` may run more than once (a lost race is retried).
    pub fn jobs_write<T: Send>(
        &self,
        who: &str,
        operation: &str,
        resource: &str,
        mut f: impl FnMut(&JobsTx<'_, '_, '_>) -> Result<T> + Send,
    ) -> Result<T> {
        self.write(who, operation, resource, |tx| {
            let j = JobsTx { registry: self, tx };
            Ok((f(&j)?, vec![]))
        })
    }

    /// Runs `f` over the jobs tables in one read transaction (one consistent snapshot).
    pub fn jobs_read<T: Send>(
        &self,
        mut f: impl FnMut(&JobsTx<'_, '_, '_>) -> Result<T> + Send,
    ) -> Result<T> {
        self.read(|tx| f(&JobsTx { registry: self, tx }))
    }
}

/// `RegistryError::NotFound` for a job.
pub fn job_not_found(id: &str) -> RegistryError {
    RegistryError::NotFound {
        kind: "job",
        name: id.into(),
    }
}
