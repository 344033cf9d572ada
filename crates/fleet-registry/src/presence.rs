//! Device connection state as the device endpoint reports it (connect, disconnect), which
//! decides with the age of a core's fleet status whether it is HEALTHY.
//!
//! A row per MQTT client id; a disconnect applies only to the session that is recorded, so a
//! connection that lost its client id to a newer one never marks the newer one disconnected.
//! Like fleet status, these are observations: not audited.

use crate::db::{OptionalExtension, params};
use crate::{Registry, Result};

/// One client id's connection state.
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    pub client_id: String,
    pub thing_name: Option<String>,
    pub certificate_id: String,
    pub session_id: String,
    pub connected: bool,
    pub last_connected_ms: i64,
    pub last_disconnected_ms: Option<i64>,
    pub disconnect_reason: Option<String>,
}

impl Registry {
    /// Records that `client_id` connected (a new session).
    pub fn record_connected(
        &self,
        client_id: &str,
        thing_name: Option<&str>,
        certificate_id: &str,
        session_id: &str,
        at_ms: i64,
    ) -> Result<()> {
        self.run(true, |tx| {
            tx.execute(
                "INSERT INTO device_presence (client_id, thing_name, certificate_id, session_id,
                 connected, last_connected) VALUES (?1, ?2, ?3, ?4, 1, ?5)
                 ON CONFLICT (client_id) DO UPDATE SET thing_name = ?2, certificate_id = ?3,
                 session_id = ?4, connected = 1, last_connected = ?5",
                params![client_id, thing_name, certificate_id, session_id, at_ms],
            )?;
            Ok(())
        })
    }

    /// Records that session `session_id` of `client_id` ended; `Ok(false)` when a newer
    /// session holds the client id (nothing changes).
    pub fn record_disconnected(
        &self,
        client_id: &str,
        session_id: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<bool> {
        self.run(true, |tx| {
            let n = tx.execute(
                "UPDATE device_presence SET connected = 0, last_disconnected = ?3,
                 disconnect_reason = ?4 WHERE client_id = ?1 AND session_id = ?2",
                params![client_id, session_id, at_ms, reason],
            )?;
            Ok(n > 0)
        })
    }

    /// Marks every device disconnected with `reason`, except the sessions in `live`: at start
    /// (no connection outlives the process that served it) and after missed events.
    pub fn reset_presence(&self, live: &[(String, String)], reason: &str) -> Result<usize> {
        let at = crate::now_ms();
        self.run(true, |tx| {
            let rows: Vec<(String, String)> = tx
                .prepare("SELECT client_id, session_id FROM device_presence WHERE connected = 1")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<crate::db::DbResult<_>>()?;
            let mut n = 0;
            for (c, s) in rows {
                if live.iter().any(|(lc, ls)| *lc == c && *ls == s) {
                    continue;
                }
                n += tx.execute(
                    "UPDATE device_presence SET connected = 0, last_disconnected = ?3,
                     disconnect_reason = ?4 WHERE client_id = ?1 AND session_id = ?2",
                    params![c, s, at, reason],
                )?;
            }
            Ok(n)
        })
    }

    /// The connection state of `client_id`, if it ever connected.
    pub fn presence(&self, client_id: &str) -> Result<Option<Presence>> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    "SELECT client_id, thing_name, certificate_id, session_id, connected,
                     last_connected, last_disconnected, disconnect_reason
                     FROM device_presence WHERE client_id = ?1",
                    [client_id],
                    |r| {
                        Ok(Presence {
                            client_id: r.get(0)?,
                            thing_name: r.get(1)?,
                            certificate_id: r.get(2)?,
                            session_id: r.get(3)?,
                            connected: r.get::<_, i64>(4)? != 0,
                            last_connected_ms: r.get(5)?,
                            last_disconnected_ms: r.get(6)?,
                            disconnect_reason: r.get(7)?,
                        })
                    },
                )
                .optional()?)
        })
    }

    /// How old a core's fleet status may be before the core counts as UNHEALTHY; zero: no
    /// bound.
    pub fn set_device_stale_after(&self, after: std::time::Duration) {
        self.stale_after_ms.store(
            after.as_millis().min(i64::MAX as u128) as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(crate) fn device_stale_after_ms(&self) -> i64 {
        self.stale_after_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One Device Defender metrics report as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DefenderReport {
    pub thing_name: String,
    pub report_id: i64,
    pub received_ms: i64,
    /// The document as the device sent it (JSON).
    pub document: String,
    /// JSON list of `{"metric", "value", "bound", "group"}` the report exceeded.
    pub violations: String,
}

impl Registry {
    /// Stores a Device Defender report; a repeated report id replaces the earlier one.
    pub fn record_defender_report(&self, r: &DefenderReport) -> Result<()> {
        self.run(true, |tx| {
            tx.execute(
                "INSERT INTO defender_reports (thing_name, report_id, received_at, document,
                 violations) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (thing_name, report_id) DO UPDATE SET received_at = ?3,
                 document = ?4, violations = ?5",
                params![
                    r.thing_name,
                    r.report_id,
                    r.received_ms,
                    r.document,
                    r.violations
                ],
            )?;
            Ok(())
        })
    }

    /// The newest report of `thing`, if any.
    pub fn latest_defender_report(&self, thing: &str) -> Result<Option<DefenderReport>> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    "SELECT thing_name, report_id, received_at, document, violations
                     FROM defender_reports WHERE thing_name = ?1
                     ORDER BY report_id DESC LIMIT 1",
                    [thing],
                    |r| {
                        Ok(DefenderReport {
                            thing_name: r.get(0)?,
                            report_id: r.get(1)?,
                            received_ms: r.get(2)?,
                            document: r.get(3)?,
                            violations: r.get(4)?,
                        })
                    },
                )
                .optional()?)
        })
    }
}
