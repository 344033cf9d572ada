//! Greengrass deployments: one latest revision per target (a thing or thing group ARN); a new
//! deployment for a target supersedes the latest one in the same transaction (its revision is
//! one more, the old one becomes INACTIVE unless it already ended). The request itself is kept
//! as JSON text (`spec`): the API owns its shape.
//!
//! Each device's view of the deployments that reach it (ListEffectiveDeployments) is in
//! `gg_effective_deployments`: what the device last reported (`device_status`) and what the
//! fleet shows (`execution_status`), which differ while a reported success waits out a bake
//! time.

use crate::db::{OptionalExtension, Row, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Registry, RegistryError, Result, now_ms};

/// Deployment states as GetDeployment names them.
pub const ACTIVE: &str = "ACTIVE";
pub const COMPLETED: &str = "COMPLETED";
pub const CANCELED: &str = "CANCELED";
pub const FAILED: &str = "FAILED";
pub const INACTIVE: &str = "INACTIVE";

#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: String,
    pub target_arn: String,
    pub revision: i64,
    pub name: Option<String>,
    pub status: String,
    /// The CreateDeployment request (components, policies, job configuration, tags) as JSON.
    pub spec: String,
    /// The job that delivers it (thing-group targets).
    pub job_id: Option<String>,
    pub is_latest: bool,
    pub parent_target_arn: Option<String>,
    /// Set on a deployment the fleet made to undo an aborted one: that one's id.
    pub rollback_of: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What CreateDeployment records.
#[derive(Debug, Clone, Default)]
pub struct NewDeployment {
    pub id: String,
    pub target_arn: String,
    pub name: Option<String>,
    pub spec: String,
    /// Whether a job delivers it (its id is then the deployment's id).
    pub with_job: bool,
    pub parent_target_arn: Option<String>,
    pub rollback_of: Option<String>,
    pub client_token: Option<String>,
}

/// The outcome of [`Registry::create_deployment`].
#[derive(Debug, Clone)]
pub struct CreatedDeployment {
    pub deployment: Deployment,
    /// The target's previous latest deployment, if it was still ACTIVE (its delivery must stop).
    pub superseded: Option<Deployment>,
    /// The client token was seen before: nothing new was recorded.
    pub replayed: bool,
}

/// One row of ListEffectiveDeployments, joined with its deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveDeployment {
    pub thing_name: String,
    pub deployment_id: String,
    pub deployment_name: Option<String>,
    pub target_arn: String,
    pub job_id: Option<String>,
    /// What the fleet shows (`coreDeviceExecutionStatus`).
    pub execution_status: String,
    /// What the device last reported.
    pub device_status: String,
    pub reason: Option<String>,
    /// The device's `statusDetails` as JSON text.
    pub status_details: String,
    pub created_ms: i64,
    pub modified_ms: i64,
    /// When the device reported SUCCEEDED.
    pub device_succeeded_ms: Option<i64>,
}

const COLUMNS: &str = "id, target_arn, revision, name, status, spec, job_id, is_latest, \
                       parent_target_arn, rollback_of, created_at, updated_at";

fn deployment(r: &Row) -> crate::db::DbResult<Deployment> {
    Ok(Deployment {
        id: r.get(0)?,
        target_arn: r.get(1)?,
        revision: r.get(2)?,
        name: r.get(3)?,
        status: r.get(4)?,
        spec: r.get(5)?,
        job_id: r.get(6)?,
        is_latest: r.get(7)?,
        parent_target_arn: r.get(8)?,
        rollback_of: r.get(9)?,
        created_ms: r.get(10)?,
        updated_ms: r.get(11)?,
    })
}

const EFFECTIVE: &str = "SELECT e.thing_name, e.deployment_id, d.name, d.target_arn, d.job_id, \
     e.execution_status, e.device_status, e.reason, e.status_details, e.created_at, \
     e.modified_at, e.device_succeeded_at \
     FROM gg_effective_deployments e JOIN gg_deployments d ON d.id = e.deployment_id";

fn effective(r: &Row) -> crate::db::DbResult<EffectiveDeployment> {
    Ok(EffectiveDeployment {
        thing_name: r.get(0)?,
        deployment_id: r.get(1)?,
        deployment_name: r.get(2)?,
        target_arn: r.get(3)?,
        job_id: r.get(4)?,
        execution_status: r.get(5)?,
        device_status: r.get(6)?,
        reason: r.get(7)?,
        status_details: r.get(8)?,
        created_ms: r.get(9)?,
        modified_ms: r.get(10)?,
        device_succeeded_ms: r.get(11)?,
    })
}

fn not_found(id: &str) -> RegistryError {
    RegistryError::NotFound {
        kind: "deployment",
        name: id.into(),
    }
}

impl Registry {
    fn deployment_row(&self, tx: &Transaction<'_>, id: &str) -> Result<Option<Deployment>> {
        Ok(tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM gg_deployments WHERE id = ?1"),
                [id],
                deployment,
            )
            .optional()?)
    }

    /// CreateDeployment: records `new` as the target's latest revision. A client token seen
    /// before returns that deployment unchanged.
    pub fn create_deployment(&self, who: &str, new: &NewDeployment) -> Result<CreatedDeployment> {
        self.write(who, "CreateDeployment", &new.target_arn, |tx| {
            if let Some(token) = &new.client_token {
                let seen = tx
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM gg_deployments WHERE client_token = ?1"),
                        [token],
                        deployment,
                    )
                    .optional()?;
                if let Some(d) = seen {
                    return Ok((
                        CreatedDeployment {
                            deployment: d,
                            superseded: None,
                            replayed: true,
                        },
                        vec![],
                    ));
                }
            }
            let latest = tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM gg_deployments WHERE target_arn = ?1 \
                         ORDER BY revision DESC LIMIT 1"
                    ),
                    [&new.target_arn],
                    deployment,
                )
                .optional()?;
            let now = now_ms();
            let revision = latest.as_ref().map_or(1, |d| d.revision + 1);
            tx.execute(
                "UPDATE gg_deployments SET is_latest = 0, updated_at = ?2,
                 status = CASE WHEN status = 'ACTIVE' THEN 'INACTIVE' ELSE status END
                 WHERE target_arn = ?1 AND is_latest = 1",
                params![new.target_arn, now],
            )?;
            tx.execute(
                "INSERT INTO gg_deployments (id, target_arn, revision, name, status, spec, job_id,
                 is_latest, parent_target_arn, rollback_of, client_token, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'ACTIVE', ?5, ?6, 1, ?7, ?8, ?9, ?10, ?10)",
                params![
                    new.id,
                    new.target_arn,
                    revision,
                    new.name,
                    new.spec,
                    new.with_job.then(|| new.id.clone()),
                    new.parent_target_arn,
                    new.rollback_of,
                    new.client_token,
                    now
                ],
            )?;
            let deployment = self
                .deployment_row(tx, &new.id)?
                .ok_or_else(|| not_found(&new.id))?;
            Ok((
                CreatedDeployment {
                    deployment,
                    superseded: latest.filter(|d| d.status == ACTIVE),
                    replayed: false,
                },
                vec![],
            ))
        })
    }

    pub fn get_deployment(&self, id: &str) -> Result<Deployment> {
        self.read(|tx| self.deployment_row(tx, id)?.ok_or_else(|| not_found(id)))
    }

    /// The deployment a job delivers.
    pub fn deployment_for_job(&self, job_id: &str) -> Result<Option<Deployment>> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM gg_deployments WHERE job_id = ?1"),
                    [job_id],
                    deployment,
                )
                .optional()?)
        })
    }

    /// ListDeployments: by id; `latest_only` keeps each target's latest revision.
    pub fn list_deployments(
        &self,
        target_arn: Option<&str>,
        parent_target_arn: Option<&str>,
        latest_only: bool,
        page: &PageRequest,
    ) -> Result<Page<Deployment>> {
        let after = page.after()?;
        let limit = page.limit(50, 100)?;
        self.read(|tx| {
            let rows: Vec<Deployment> = tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM gg_deployments WHERE id > ?1
                     AND (?2 = '' OR target_arn = ?2) AND (?3 = '' OR parent_target_arn = ?3)
                     AND (?4 = 0 OR is_latest = 1) ORDER BY id LIMIT ?5"
                ))?
                .query_map(
                    params![
                        after,
                        target_arn.unwrap_or(""),
                        parent_target_arn.unwrap_or(""),
                        latest_only,
                        (limit + 1) as i64
                    ],
                    deployment,
                )?
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(rows, limit, |d| d.id.clone()))
        })
    }

    /// Moves a deployment to `status` (CancelDeployment, a job's end). Returns it as it was.
    pub fn set_deployment_status(&self, who: &str, id: &str, status: &str) -> Result<Deployment> {
        let op = if status == CANCELED {
            "CancelDeployment"
        } else {
            "UpdateDeploymentStatus"
        };
        self.write(who, op, id, |tx| {
            let d = self.deployment_row(tx, id)?.ok_or_else(|| not_found(id))?;
            tx.execute(
                "UPDATE gg_deployments SET status = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, status, now_ms()],
            )?;
            Ok((d, vec![]))
        })
    }

    /// DeleteDeployment: an ACTIVE deployment must be cancelled first.
    pub fn delete_deployment(&self, who: &str, id: &str) -> Result<()> {
        self.write(who, "DeleteDeployment", id, |tx| {
            let d = self.deployment_row(tx, id)?.ok_or_else(|| not_found(id))?;
            if d.status == ACTIVE {
                return Err(RegistryError::DeleteConflict(format!(
                    "deployment {id} is ACTIVE; cancel it (CancelDeployment) before deleting it"
                )));
            }
            tx.execute(
                "DELETE FROM gg_effective_deployments WHERE deployment_id = ?1",
                [id],
            )?;
            tx.execute("DELETE FROM gg_deployments WHERE id = ?1", [id])?;
            Ok(((), vec![]))
        })
    }

    /// The target's latest revision, if any.
    pub fn latest_deployment(&self, target_arn: &str) -> Result<Option<Deployment>> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM gg_deployments WHERE target_arn = ?1 \
                         AND is_latest = 1"
                    ),
                    [target_arn],
                    deployment,
                )
                .optional()?)
        })
    }

    /// One revision of a target.
    pub fn deployment_revision(
        &self,
        target_arn: &str,
        revision: i64,
    ) -> Result<Option<Deployment>> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM gg_deployments WHERE target_arn = ?1 \
                         AND revision = ?2"
                    ),
                    params![target_arn, revision],
                    deployment,
                )
                .optional()?)
        })
    }

    /// The newest revision of `target_arn` before `revision` that did not fail: what a fleet
    /// rollback returns the target to.
    pub fn previous_good_deployment(
        &self,
        target_arn: &str,
        revision: i64,
    ) -> Result<Option<Deployment>> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM gg_deployments WHERE target_arn = ?1 \
                         AND revision < ?2 AND status <> 'FAILED' ORDER BY revision DESC LIMIT 1"
                    ),
                    params![target_arn, revision],
                    deployment,
                )
                .optional()?)
        })
    }

    /// The thing's groups, each with its ancestors (the groups whose deployments reach it).
    pub fn deployment_groups_for_thing(&self, thing: &str) -> Result<Vec<String>> {
        self.read(|tx| self.groups_with_ancestors(tx, thing))
    }

    /// Records what a device reported for a deployment. `hold_success`: a SUCCEEDED report is
    /// shown as IN_PROGRESS until [`Registry::finish_effective_deployment`] (bake time).
    /// A report about a deployment the fleet does not know is ignored (`Ok(false)`).
    pub fn record_device_report(
        &self,
        thing: &str,
        deployment_id: &str,
        device_status: &str,
        reason: Option<&str>,
        status_details: &str,
        hold_success: bool,
    ) -> Result<bool> {
        self.run(true, |tx| {
            if self.deployment_row(tx, deployment_id)?.is_none() {
                return Ok(false);
            }
            let now = now_ms();
            let shown = if device_status == "SUCCEEDED" && hold_success {
                "IN_PROGRESS"
            } else {
                device_status
            };
            let succeeded_at = (device_status == "SUCCEEDED").then_some(now);
            let n = tx.execute(
                "UPDATE gg_effective_deployments SET execution_status = ?3, device_status = ?4,
                 reason = ?5, status_details = ?6, modified_at = ?7,
                 device_succeeded_at = COALESCE(device_succeeded_at, ?8)
                 WHERE thing_name = ?1 AND deployment_id = ?2",
                params![
                    thing,
                    deployment_id,
                    shown,
                    device_status,
                    reason,
                    status_details,
                    now,
                    succeeded_at
                ],
            )?;
            if n == 0 {
                tx.execute(
                    "INSERT INTO gg_effective_deployments (thing_name, deployment_id,
                     execution_status, device_status, reason, status_details, created_at,
                     modified_at, device_succeeded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                    params![
                        thing,
                        deployment_id,
                        shown,
                        device_status,
                        reason,
                        status_details,
                        now,
                        succeeded_at
                    ],
                )?;
            }
            Ok(true)
        })
    }

    /// Ends a held success: the fleet now shows `status` (SUCCEEDED after the bake time, or
    /// FAILED when the components did not stay healthy), with `reason`.
    pub fn finish_effective_deployment(
        &self,
        thing: &str,
        deployment_id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        self.run(true, |tx| {
            tx.execute(
                "UPDATE gg_effective_deployments SET execution_status = ?3, reason = ?4,
                 modified_at = ?5 WHERE thing_name = ?1 AND deployment_id = ?2",
                params![thing, deployment_id, status, reason, now_ms()],
            )?;
            Ok(())
        })
    }

    /// ListEffectiveDeployments for a thing, by deployment id.
    pub fn list_effective_deployments(
        &self,
        thing: &str,
        page: &PageRequest,
    ) -> Result<Page<EffectiveDeployment>> {
        let after = page.after()?;
        let limit = page.limit(50, 100)?;
        self.read(|tx| {
            let rows: Vec<EffectiveDeployment> = tx
                .prepare(&format!(
                    "{EFFECTIVE} WHERE e.thing_name = ?1 AND e.deployment_id > ?2
                     ORDER BY e.deployment_id LIMIT ?3"
                ))?
                .query_map(params![thing, after, (limit + 1) as i64], effective)?
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(rows, limit, |e| e.deployment_id.clone()))
        })
    }

    /// Every device's row for one deployment.
    pub fn effective_deployments_of(
        &self,
        deployment_id: &str,
    ) -> Result<Vec<EffectiveDeployment>> {
        self.read(|tx| {
            Ok(tx
                .prepare(&format!(
                    "{EFFECTIVE} WHERE e.deployment_id = ?1 ORDER BY e.thing_name"
                ))?
                .query_map([deployment_id], effective)?
                .collect::<crate::db::DbResult<_>>()?)
        })
    }

    /// Successes the device reported that the fleet still holds (bake time running).
    pub fn held_successes(&self) -> Result<Vec<EffectiveDeployment>> {
        self.read(|tx| {
            Ok(tx
                .prepare(&format!(
                    "{EFFECTIVE} WHERE e.device_status = 'SUCCEEDED'
                     AND e.execution_status = 'IN_PROGRESS' ORDER BY e.thing_name"
                ))?
                .query_map([], effective)?
                .collect::<crate::db::DbResult<_>>()?)
        })
    }
}
