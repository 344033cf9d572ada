//! Log groups, streams and events as CloudWatch Logs keeps them (CreateLogGroup,
//! CreateLogStream, PutLogEvents, GetLogEvents, FilterLogEvents, Describe…, retention).
//!
//! Each stream numbers its events (`seq`) in the order they were accepted; GetLogEvents pages by
//! that number, FilterLogEvents by (timestamp, stream, number). A PutLogEvents batch is one
//! transaction: `Ok` means every event in it is stored. Events older than a group's retention
//! are deleted by [`Registry::expire_log_events`].

use crate::db::{OptionalExtension, Transaction, params};
use crate::{Registry, RegistryError, Result, now_ms};

#[derive(Debug, Clone, PartialEq)]
pub struct LogGroup {
    pub name: String,
    pub created_ms: i64,
    pub retention_days: Option<i64>,
    pub stored_bytes: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogStream {
    pub group: String,
    pub name: String,
    pub created_ms: i64,
    pub first_event_ms: Option<i64>,
    pub last_event_ms: Option<i64>,
    pub last_ingestion_ms: Option<i64>,
    pub stored_bytes: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    pub stream: String,
    pub seq: i64,
    pub timestamp_ms: i64,
    pub ingestion_ms: i64,
    pub message: String,
}

/// Which events of a group FilterLogEvents scans, and where the previous page stopped.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub streams: Vec<String>,
    pub stream_prefix: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// (timestamp, stream, seq) of the last event returned before.
    pub after: Option<(i64, String, i64)>,
}

fn not_found(kind: &'static str, name: &str) -> RegistryError {
    RegistryError::NotFound {
        kind,
        name: name.into(),
    }
}

fn group_exists(tx: &Transaction<'_>, group: &str) -> Result<bool> {
    Ok(tx
        .query_row("SELECT 1 FROM log_groups WHERE name = ?1", [group], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .is_some())
}

impl Registry {
    fn log_arn(&self, group: &str) -> String {
        format!(
            "arn:aws:logs:{}:{}:log-group:{group}",
            self.region(),
            self.account()
        )
    }

    /// The ARN of a log group (`…:log-group:<name>`).
    pub fn log_group_arn(&self, group: &str) -> String {
        self.log_arn(group)
    }

    pub fn create_log_group(&self, group: &str) -> Result<()> {
        let arn = self.log_arn(group);
        self.run(true, |tx| {
            if group_exists(tx, group)? {
                return Err(RegistryError::AlreadyExists {
                    kind: "log group",
                    name: group.into(),
                    arn: arn.clone(),
                });
            }
            tx.execute(
                "INSERT INTO log_groups (name, created_at) VALUES (?1, ?2)",
                params![group, now_ms()],
            )?;
            Ok(())
        })
    }

    pub fn delete_log_group(&self, group: &str) -> Result<()> {
        self.run(true, |tx| {
            if !group_exists(tx, group)? {
                return Err(not_found("log group", group));
            }
            tx.execute("DELETE FROM log_events WHERE group_name = ?1", [group])?;
            tx.execute("DELETE FROM log_streams WHERE group_name = ?1", [group])?;
            tx.execute("DELETE FROM log_groups WHERE name = ?1", [group])?;
            Ok(())
        })
    }

    /// PutRetentionPolicy (`Some(days)`) / DeleteRetentionPolicy (`None`).
    pub fn set_log_retention(&self, group: &str, days: Option<i64>) -> Result<()> {
        self.run(true, |tx| {
            let n = tx.execute(
                "UPDATE log_groups SET retention_days = ?2 WHERE name = ?1",
                params![group, days],
            )?;
            if n == 0 {
                return Err(not_found("log group", group));
            }
            Ok(())
        })
    }

    pub fn create_log_stream(&self, group: &str, stream: &str) -> Result<()> {
        let arn = format!("{}:log-stream:{stream}", self.log_arn(group));
        self.run(true, |tx| {
            if !group_exists(tx, group)? {
                return Err(not_found("log group", group));
            }
            let n = tx.execute(
                "INSERT INTO log_streams (group_name, name, created_at, next_seq, stored_bytes)
                 VALUES (?1, ?2, ?3, 1, 0) ON CONFLICT (group_name, name) DO NOTHING",
                params![group, stream, now_ms()],
            )?;
            if n == 0 {
                return Err(RegistryError::AlreadyExists {
                    kind: "log stream",
                    name: stream.into(),
                    arn: arn.clone(),
                });
            }
            Ok(())
        })
    }

    /// Stores `events` (timestamp ms, message) in order; returns how many were stored.
    pub fn put_log_events(
        &self,
        group: &str,
        stream: &str,
        events: &[(i64, String)],
    ) -> Result<usize> {
        self.run(true, |tx| {
            let next: Option<i64> = tx
                .query_row(
                    "SELECT next_seq FROM log_streams WHERE group_name = ?1 AND name = ?2",
                    params![group, stream],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(mut seq) = next else {
                return Err(if group_exists(tx, group)? {
                    not_found("log stream", stream)
                } else {
                    not_found("log group", group)
                });
            };
            let now = now_ms();
            let mut bytes = 0i64;
            for (ts, message) in events {
                tx.execute(
                    "INSERT INTO log_events (group_name, stream_name, seq, timestamp,
                     ingestion_time, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![group, stream, seq, ts, now, message],
                )?;
                seq += 1;
                bytes += message.len() as i64;
            }
            let first = events.iter().map(|e| e.0).min();
            let last = events.iter().map(|e| e.0).max();
            tx.execute(
                "UPDATE log_streams SET next_seq = ?3, stored_bytes = stored_bytes + ?4,
                 last_ingestion = ?5,
                 first_event = CASE WHEN first_event IS NULL OR first_event > ?6 THEN ?6
                                    ELSE first_event END,
                 last_event = CASE WHEN last_event IS NULL OR last_event < ?7 THEN ?7
                                   ELSE last_event END
                 WHERE group_name = ?1 AND name = ?2",
                params![group, stream, seq, bytes, now, first, last],
            )?;
            Ok(events.len())
        })
    }

    /// GetLogEvents: up to `limit` events of a stream within [start, end), after `after_seq`
    /// (forward) or before `before_seq` (backward, returned oldest first).
    #[allow(clippy::too_many_arguments)]
    pub fn get_log_events(
        &self,
        group: &str,
        stream: &str,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LogEvent>> {
        self.read(|tx| {
            let known: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM log_streams WHERE group_name = ?1 AND name = ?2",
                    params![group, stream],
                    |r| r.get(0),
                )
                .optional()?;
            if known.is_none() {
                return Err(if group_exists(tx, group)? {
                    not_found("log stream", stream)
                } else {
                    not_found("log group", group)
                });
            }
            let backward = before_seq.is_some();
            let sql = format!(
                "SELECT stream_name, seq, timestamp, ingestion_time, message FROM log_events
                 WHERE group_name = ?1 AND stream_name = ?2 AND timestamp >= ?3 AND timestamp < ?4
                 AND seq > ?5 AND seq < ?6 ORDER BY seq {} LIMIT ?7",
                if backward { "DESC" } else { "ASC" }
            );
            let mut rows: Vec<LogEvent> = tx
                .prepare(&sql)?
                .query_map(
                    params![
                        group,
                        stream,
                        start_ms.unwrap_or(i64::MIN),
                        end_ms.unwrap_or(i64::MAX),
                        after_seq.unwrap_or(0),
                        before_seq.unwrap_or(i64::MAX),
                        limit as i64
                    ],
                    event,
                )?
                .collect::<crate::db::DbResult<_>>()?;
            if backward {
                rows.reverse();
            }
            Ok(rows)
        })
    }

    /// FilterLogEvents' scan: up to `limit` events of a group in (timestamp, stream, seq)
    /// order after `q.after`; the caller filters messages.
    pub fn scan_log_events(
        &self,
        group: &str,
        q: &LogQuery,
        limit: usize,
    ) -> Result<Vec<LogEvent>> {
        self.read(|tx| {
            if !group_exists(tx, group)? {
                return Err(not_found("log group", group));
            }
            let (ats, astream, aseq) = q.after.clone().unwrap_or((i64::MIN, String::new(), 0));
            let rows: Vec<LogEvent> = tx
                .prepare(
                    "SELECT stream_name, seq, timestamp, ingestion_time, message FROM log_events
                     WHERE group_name = ?1 AND timestamp >= ?2 AND timestamp < ?3
                     AND (timestamp > ?4 OR (timestamp = ?4 AND (stream_name > ?5
                          OR (stream_name = ?5 AND seq > ?6))))
                     AND substr(stream_name, 1, length(CAST(?7 AS TEXT))) = CAST(?7 AS TEXT)
                     ORDER BY timestamp, stream_name, seq LIMIT ?8",
                )?
                .query_map(
                    params![
                        group,
                        q.start_ms.unwrap_or(i64::MIN),
                        q.end_ms.unwrap_or(i64::MAX),
                        ats,
                        astream,
                        aseq,
                        q.stream_prefix.clone().unwrap_or_default(),
                        limit as i64
                    ],
                    event,
                )?
                .collect::<crate::db::DbResult<_>>()?;
            Ok(rows
                .into_iter()
                .filter(|e| q.streams.is_empty() || q.streams.contains(&e.stream))
                .collect())
        })
    }

    /// DescribeLogGroups: by name after `after`, names starting with `prefix`.
    pub fn list_log_groups(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<LogGroup>> {
        self.read(|tx| {
            Ok(tx
                .prepare(
                    "SELECT g.name, g.created_at, g.retention_days,
                     CAST(COALESCE((SELECT SUM(s.stored_bytes) FROM log_streams s
                               WHERE s.group_name = g.name), 0) AS BIGINT)
                     FROM log_groups g WHERE g.name > ?1 AND substr(g.name, 1, length(CAST(?2 AS TEXT))) = CAST(?2 AS TEXT)
                     ORDER BY g.name LIMIT ?3",
                )?
                .query_map(params![after, prefix, limit as i64], |r| {
                    Ok(LogGroup {
                        name: r.get(0)?,
                        created_ms: r.get(1)?,
                        retention_days: r.get(2)?,
                        stored_bytes: r.get(3)?,
                    })
                })?
                .collect::<crate::db::DbResult<_>>()?)
        })
    }

    /// DescribeLogStreams: by name after `after`, names starting with `prefix`.
    pub fn list_log_streams(
        &self,
        group: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<LogStream>> {
        self.read(|tx| {
            if !group_exists(tx, group)? {
                return Err(not_found("log group", group));
            }
            Ok(tx
                .prepare(
                    "SELECT group_name, name, created_at, first_event, last_event, last_ingestion,
                     stored_bytes FROM log_streams WHERE group_name = ?1 AND name > ?2
                     AND substr(name, 1, length(CAST(?3 AS TEXT))) = CAST(?3 AS TEXT) ORDER BY name LIMIT ?4",
                )?
                .query_map(params![group, after, prefix, limit as i64], |r| {
                    Ok(LogStream {
                        group: r.get(0)?,
                        name: r.get(1)?,
                        created_ms: r.get(2)?,
                        first_event_ms: r.get(3)?,
                        last_event_ms: r.get(4)?,
                        last_ingestion_ms: r.get(5)?,
                        stored_bytes: r.get(6)?,
                    })
                })?
                .collect::<crate::db::DbResult<_>>()?)
        })
    }

    /// Deletes events older than their group's retention (by event timestamp, as CloudWatch
    /// Logs does); returns how many went.
    pub fn expire_log_events(&self, now_ms: i64) -> Result<usize> {
        self.run(true, |tx| {
            let groups: Vec<(String, i64)> = tx
                .prepare(
                    "SELECT name, retention_days FROM log_groups WHERE retention_days IS NOT NULL",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<crate::db::DbResult<_>>()?;
            let mut n = 0;
            for (g, days) in groups {
                n += tx.execute(
                    "DELETE FROM log_events WHERE group_name = ?1 AND timestamp < ?2",
                    params![g, now_ms - days * 86_400_000],
                )?;
            }
            Ok(n)
        })
    }
}

fn event(r: &crate::db::Row) -> crate::db::DbResult<LogEvent> {
    Ok(LogEvent {
        stream: r.get(0)?,
        seq: r.get(1)?,
        timestamp_ms: r.get(2)?,
        ingestion_ms: r.get(3)?,
        message: r.get(4)?,
    })
}
