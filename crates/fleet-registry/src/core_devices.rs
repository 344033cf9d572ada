//! Greengrass core devices as their fleet status messages describe them (ListCoreDevices,
//! GetCoreDevice, ListInstalledComponents).
//!
//! A message older than the newest one applied (a lower sequence number) is dropped. A COMPLETE
//! message's first chunk replaces the installed set; its other chunks and PARTIAL messages
//! update the components they name (a component reported UNINSTALLED is removed). For each
//! component the fleet keeps since when it has been RUNNING at its current version, by the
//! fleet's clock, which is what a bake time waits on.
//!
//! Device reports are observations, not administrative changes: they are not audited.

use crate::db::{OptionalExtension, Row, Transaction, params};
use crate::page::{self, Page, PageRequest};
use crate::{Registry, RegistryError, Result, now_ms};

#[derive(Debug, Clone, PartialEq)]
pub struct CoreDevice {
    pub thing_name: String,
    /// HEALTHY or UNHEALTHY.
    pub status: String,
    pub platform: Option<String>,
    pub architecture: Option<String>,
    pub core_version: Option<String>,
    pub runtime: Option<String>,
    pub last_status_update_ms: i64,
    /// What the device last reported (`status` also counts connection and freshness).
    pub reported_status: String,
    /// Why `status` is UNHEALTHY: `REPORTED_UNHEALTHY` (a component is BROKEN),
    /// `DISCONNECTED`, or `STATUS_STALE` (no fleet status within the bound).
    pub status_reason: Option<String>,
    /// Whether a connection of its thing is open; `None`: never seen connecting here.
    pub connected: Option<bool>,
    pub last_connected_ms: Option<i64>,
    pub last_disconnected_ms: Option<i64>,
    pub disconnect_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstalledComponent {
    pub name: String,
    pub version: String,
    pub lifecycle_state: String,
    pub state_details: Option<String>,
    pub status_codes: Vec<String>,
    pub is_root: bool,
    pub last_status_change_ms: i64,
    pub last_reported_ms: i64,
    /// Since when (fleet clock) it has been RUNNING at this version; None when not RUNNING.
    pub running_since_ms: Option<i64>,
}

/// One fleet status message (or chunk), already parsed by the caller.
#[derive(Debug, Clone, Default)]
pub struct FleetStatusReport {
    pub sequence_number: i64,
    /// COMPLETE or PARTIAL.
    pub complete: bool,
    /// 1-based chunk number (1 when not chunked).
    pub chunk_id: i64,
    pub overall_status: String,
    pub platform: Option<String>,
    pub architecture: Option<String>,
    pub core_version: Option<String>,
    pub runtime: Option<String>,
    pub components: Vec<ReportedComponent>,
}

#[derive(Debug, Clone, Default)]
pub struct ReportedComponent {
    pub name: String,
    pub version: String,
    pub status: String,
    pub is_root: bool,
    pub status_codes: Vec<String>,
    pub status_reason: Option<String>,
    pub config_arns: Vec<String>,
}

/// The core devices with their effective status: HEALTHY only when the device reports HEALTHY,
/// is connected (or was never seen connecting, for reports that came another way) and its
/// last fleet status is within the stale bound. `now` and `stale` are integers we computed.
fn device_select(now: i64, stale: i64) -> String {
    format!(
        "SELECT * FROM (SELECT thing_name,
           CASE WHEN reported_status <> 'HEALTHY' THEN reported_status
                WHEN connected = 0 THEN 'UNHEALTHY'
                WHEN {stale} > 0 AND last_status_update < {now} - {stale} THEN 'UNHEALTHY'
                ELSE 'HEALTHY' END AS status,
           platform, architecture, core_version, runtime, last_status_update, reported_status,
           CASE WHEN reported_status <> 'HEALTHY' THEN 'REPORTED_UNHEALTHY'
                WHEN connected = 0 THEN 'DISCONNECTED'
                WHEN {stale} > 0 AND last_status_update < {now} - {stale} THEN 'STATUS_STALE'
                ELSE NULL END AS status_reason,
           connected, last_connected, last_disconnected,
           (SELECT p.disconnect_reason FROM device_presence p WHERE p.thing_name = v.thing_name
            ORDER BY p.last_disconnected DESC LIMIT 1) AS disconnect_reason
         FROM (SELECT d.thing_name, d.status AS reported_status, d.platform, d.architecture,
                 d.core_version, d.runtime, d.last_status_update,
                 (SELECT MAX(p.connected) FROM device_presence p
                  WHERE p.thing_name = d.thing_name) AS connected,
                 (SELECT MAX(p.last_connected) FROM device_presence p
                  WHERE p.thing_name = d.thing_name) AS last_connected,
                 (SELECT MAX(p.last_disconnected) FROM device_presence p
                  WHERE p.thing_name = d.thing_name) AS last_disconnected
               FROM gg_core_devices d) AS v) AS w"
    )
}

fn core_device(r: &Row) -> crate::db::DbResult<CoreDevice> {
    Ok(CoreDevice {
        thing_name: r.get(0)?,
        status: r.get(1)?,
        platform: r.get(2)?,
        architecture: r.get(3)?,
        core_version: r.get(4)?,
        runtime: r.get(5)?,
        last_status_update_ms: r.get(6)?,
        reported_status: r.get(7)?,
        status_reason: r.get(8)?,
        connected: r.get::<_, Option<i64>>(9)?.map(|c| c != 0),
        last_connected_ms: r.get(10)?,
        last_disconnected_ms: r.get(11)?,
        disconnect_reason: r.get(12)?,
    })
}

const COMPONENT: &str = "SELECT component_name, version, lifecycle_state, state_details, \
     status_codes, is_root, last_status_change, last_reported, running_since \
     FROM gg_installed_components";

fn component(r: &Row) -> crate::db::DbResult<InstalledComponent> {
    Ok(InstalledComponent {
        name: r.get(0)?,
        version: r.get(1)?,
        lifecycle_state: r.get(2)?,
        state_details: r.get(3)?,
        status_codes: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        is_root: r.get(5)?,
        last_status_change_ms: r.get(6)?,
        last_reported_ms: r.get(7)?,
        running_since_ms: r.get(8)?,
    })
}

fn no_device(thing: &str) -> RegistryError {
    RegistryError::NotFound {
        kind: "core device",
        name: thing.into(),
    }
}

impl Registry {
    fn core_device_row(&self, tx: &Transaction<'_>, thing: &str) -> Result<Option<CoreDevice>> {
        Ok(tx
            .query_row(
                &format!(
                    "{} WHERE thing_name = ?1",
                    device_select(now_ms(), self.device_stale_after_ms())
                ),
                [thing],
                core_device,
            )
            .optional()?)
    }

    /// Applies a fleet status message from `thing`; `Ok(false)` when it was older than the
    /// newest one applied and so dropped.
    pub fn record_fleet_status(&self, thing: &str, report: &FleetStatusReport) -> Result<bool> {
        self.run(true, |tx| {
            let now = now_ms();
            let seq: Option<i64> = tx
                .query_row(
                    "SELECT sequence_number FROM gg_core_devices WHERE thing_name = ?1",
                    [thing],
                    |r| r.get(0),
                )
                .optional()?;
            match seq {
                Some(s) if report.sequence_number < s => return Ok(false),
                Some(_) => {
                    tx.execute(
                        "UPDATE gg_core_devices SET status = ?2,
                         platform = COALESCE(?3, platform), architecture = COALESCE(?4, architecture),
                         core_version = COALESCE(?5, core_version), runtime = COALESCE(?6, runtime),
                         sequence_number = ?7, last_status_update = ?8 WHERE thing_name = ?1",
                        params![
                            thing,
                            report.overall_status,
                            report.platform,
                            report.architecture,
                            report.core_version,
                            report.runtime,
                            report.sequence_number,
                            now
                        ],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO gg_core_devices (thing_name, status, platform, architecture,
                         core_version, runtime, sequence_number, last_status_update, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                        params![
                            thing,
                            report.overall_status,
                            report.platform,
                            report.architecture,
                            report.core_version,
                            report.runtime,
                            report.sequence_number,
                            now
                        ],
                    )?;
                }
            }
            let previous: Vec<InstalledComponent> = tx
                .prepare(&format!("{COMPONENT} WHERE thing_name = ?1"))?
                .query_map([thing], component)?
                .collect::<crate::db::DbResult<_>>()?;
            if report.complete && report.chunk_id <= 1 {
                tx.execute(
                    "DELETE FROM gg_installed_components WHERE thing_name = ?1",
                    [thing],
                )?;
            }
            for c in &report.components {
                tx.execute(
                    "DELETE FROM gg_installed_components WHERE thing_name = ?1
                     AND component_name = ?2",
                    params![thing, c.name],
                )?;
                if c.status == "UNINSTALLED" {
                    continue;
                }
                let old = previous.iter().find(|p| p.name == c.name);
                let same = old.is_some_and(|o| o.version == c.version);
                let changed_at = match old {
                    Some(o) if same && o.lifecycle_state == c.status => o.last_status_change_ms,
                    _ => now,
                };
                let running_since = match old {
                    _ if c.status != "RUNNING" => None,
                    Some(o) if same && o.lifecycle_state == "RUNNING" => o.running_since_ms,
                    _ => Some(now),
                };
                tx.execute(
                    "INSERT INTO gg_installed_components (thing_name, component_name, version,
                     lifecycle_state, state_details, status_codes, is_root, config_arns,
                     last_status_change, last_reported, running_since)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        thing,
                        c.name,
                        c.version,
                        c.status,
                        c.status_reason,
                        serde_json::to_string(&c.status_codes).unwrap_or_else(|_| "[]".into()),
                        c.is_root,
                        serde_json::to_string(&c.config_arns).unwrap_or_else(|_| "[]".into()),
                        changed_at,
                        now,
                        running_since
                    ],
                )?;
            }
            Ok(true)
        })
    }

    pub fn get_core_device(&self, thing: &str) -> Result<CoreDevice> {
        self.read(|tx| {
            self.core_device_row(tx, thing)?
                .ok_or_else(|| no_device(thing))
        })
    }

    /// ListCoreDevices: by thing name; `group` keeps the group's direct members, `status`
    /// HEALTHY or UNHEALTHY, `runtime` the runtime the device reports.
    pub fn list_core_devices(
        &self,
        group: Option<&str>,
        status: Option<&str>,
        runtime: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<CoreDevice>> {
        let after = page.after()?;
        let limit = page.limit(50, 100)?;
        self.read(|tx| {
            let rows: Vec<CoreDevice> = tx
                .prepare(&format!(
                    "{} WHERE thing_name > ?1 AND (?2 = '' OR status = ?2)
                     AND (?3 = '' OR thing_name IN (SELECT thing_name FROM thing_group_members
                                                   WHERE group_name = ?3))
                     AND (?5 = '' OR runtime = ?5)
                     ORDER BY thing_name LIMIT ?4",
                    device_select(now_ms(), self.device_stale_after_ms())
                ))?
                .query_map(
                    params![
                        after,
                        status.unwrap_or(""),
                        group.unwrap_or(""),
                        (limit + 1) as i64,
                        runtime.unwrap_or("")
                    ],
                    core_device,
                )?
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(rows, limit, |d| d.thing_name.clone()))
        })
    }

    /// ListInstalledComponents: by name; `root_only` for `topologyFilter=ROOT`.
    pub fn list_installed_components(
        &self,
        thing: &str,
        root_only: bool,
        page: &PageRequest,
    ) -> Result<Page<InstalledComponent>> {
        let after = page.after()?;
        let limit = page.limit(50, 100)?;
        self.read(|tx| {
            self.core_device_row(tx, thing)?
                .ok_or_else(|| no_device(thing))?;
            let rows: Vec<InstalledComponent> = tx
                .prepare(&format!(
                    "{COMPONENT} WHERE thing_name = ?1 AND component_name > ?2
                     AND (?3 = 0 OR is_root = 1) ORDER BY component_name LIMIT ?4"
                ))?
                .query_map(
                    params![thing, after, root_only, (limit + 1) as i64],
                    component,
                )?
                .collect::<crate::db::DbResult<_>>()?;
            Ok(page::finish(rows, limit, |c| c.name.clone()))
        })
    }

    /// Every installed component of a thing (no paging; for bake checks and previews).
    pub fn installed_components(&self, thing: &str) -> Result<Vec<InstalledComponent>> {
        self.read(|tx| {
            Ok(tx
                .prepare(&format!(
                    "{COMPONENT} WHERE thing_name = ?1 ORDER BY component_name"
                ))?
                .query_map([thing], component)?
                .collect::<crate::db::DbResult<_>>()?)
        })
    }
}
