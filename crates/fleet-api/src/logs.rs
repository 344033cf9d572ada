//! CloudWatch Logs (`logs`, JSON 1.1, `X-Amz-Target: Logs_20140328.<Operation>`): log groups,
//! streams and events kept in the registry, for the Greengrass log manager to upload to and
//! boto3 / the `aws logs` CLI to read.
//!
//! Served: CreateLogGroup, DeleteLogGroup, CreateLogStream, PutLogEvents, GetLogEvents,
//! FilterLogEvents, DescribeLogGroups, DescribeLogStreams, PutRetentionPolicy,
//! DeleteRetentionPolicy. PutLogEvents' `sequenceToken` is accepted and ignored (as AWS has since
//! 2023). FilterLogEvents' `filterPattern` takes CloudWatch's term syntax (all terms, a quoted
//! phrase as one term, `-term` excludes, `?term` any of); JSON and space-delimited patterns are
//! refused with a message that says so.

use crate::ServiceHandler;
use crate::call::Call;
use crate::error::ApiError;
use crate::greengrass::service::blocking;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use lichen_fleet_registry::{LogQuery, Registry, RegistryError};
use serde_json::{Map, Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What PutRetentionPolicy accepts, as CloudWatch Logs.
const RETENTION_DAYS: [i64; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];
const MAX_BATCH_BYTES: usize = 1_048_576;
const EVENT_OVERHEAD: usize = 26;
const MAX_EVENTS: usize = 10_000;
/// Events FilterLogEvents reads per request at most before it answers with a token.
const MAX_SCAN: usize = 100_000;

pub struct LogsService {
    registry: Arc<Registry>,
}

/// A JSON 1.1 error: HTTP 400 with `__type` (what botocore reads) and `message`.
struct LogsError {
    code: &'static str,
    message: String,
}

type LResult<T> = Result<T, LogsError>;

fn invalid(message: impl Into<String>) -> LogsError {
    LogsError {
        code: "InvalidParameterException",
        message: message.into(),
    }
}

impl From<ApiError> for LogsError {
    fn from(e: ApiError) -> Self {
        let code = match e.code {
            "ResourceNotFoundException" => "ResourceNotFoundException",
            "ResourceAlreadyExistsException" => "ResourceAlreadyExistsException",
            "InvalidRequestException" => "InvalidParameterException",
            _ => "ServiceUnavailableException",
        };
        LogsError {
            code,
            message: e.message,
        }
    }
}

impl From<RegistryError> for LogsError {
    fn from(e: RegistryError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        let status = if self.code == "ServiceUnavailableException" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        (
            status,
            [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-ErrorType", self.code),
            ],
            Body::from(json!({"__type": self.code, "message": self.message}).to_string()),
        )
            .into_response()
    }
}

fn ok(v: Value) -> Response {
    (
        [("content-type", "application/x-amz-json-1.1")],
        Body::from(v.to_string()),
    )
        .into_response()
}

fn string<'a>(body: &'a Map<String, Value>, name: &str) -> LResult<Option<&'a str>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

fn required<'a>(body: &'a Map<String, Value>, name: &str) -> LResult<&'a str> {
    string(body, name)?.ok_or_else(|| invalid(format!("{name} is required")))
}

fn int(body: &Map<String, Value>, name: &str) -> LResult<Option<i64>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(format!("{name} must be an integer"))),
    }
}

fn group_name(body: &Map<String, Value>) -> LResult<&str> {
    let g = required(body, "logGroupName")?;
    let ok_chars = g
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/#".contains(c));
    if g.is_empty() || g.len() > 512 || !ok_chars {
        return Err(invalid(format!(
            "logGroupName {g:?} must be 1 to 512 of A-Z a-z 0-9 . _ - / #"
        )));
    }
    Ok(g)
}

fn stream_name(body: &Map<String, Value>) -> LResult<&str> {
    let s = required(body, "logStreamName")?;
    if s.is_empty() || s.len() > 512 || s.contains([':', '*']) {
        return Err(invalid(format!(
            "logStreamName {s:?} must be 1 to 512 characters without ':' or '*'"
        )));
    }
    Ok(s)
}

fn token_of(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn untoken(t: &str) -> LResult<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| invalid(format!("nextToken {t:?} is not one this service returned")))
}

/// CloudWatch Logs' term filter: every plain term must occur, no `-term` may, and at least one
/// `?term` when any is given.
struct Pattern {
    all: Vec<String>,
    none: Vec<String>,
    any: Vec<String>,
}

impl Pattern {
    fn parse(p: &str) -> LResult<Pattern> {
        let p = p.trim();
        if p.starts_with('{') || p.starts_with('[') {
            return Err(invalid(format!(
                "filterPattern {p:?}: JSON and space-delimited patterns are not supported; \
                 use terms (\"ERROR\", \"\\\"a phrase\\\"\", -term, ?term)"
            )));
        }
        let (mut all, mut none, mut any) = (vec![], vec![], vec![]);
        let mut rest = p;
        while let Some(c) = rest.chars().next() {
            if c.is_whitespace() {
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let (kind, after) = match c {
                '-' => (1, &rest[1..]),
                '?' => (2, &rest[1..]),
                _ => (0, rest),
            };
            let (term, next) = if let Some(q) = after.strip_prefix('"') {
                match q.find('"') {
                    Some(end) => (&q[..end], &q[end + 1..]),
                    None => return Err(invalid(format!("filterPattern {p:?}: unclosed quote"))),
                }
            } else {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            if !term.is_empty() {
                [&mut all, &mut none, &mut any][kind].push(term.to_string());
            }
            rest = next;
        }
        Ok(Pattern { all, none, any })
    }

    fn matches(&self, m: &str) -> bool {
        self.all.iter().all(|t| m.contains(t.as_str()))
            && !self.none.iter().any(|t| m.contains(t.as_str()))
            && (self.any.is_empty() || self.any.iter().any(|t| m.contains(t.as_str())))
    }
}

impl LogsService {
    pub fn new(registry: Arc<Registry>) -> Self {
        LogsService { registry }
    }

    /// Deletes events past their group's retention every `period`, for as long as the runtime
    /// runs.
    pub fn expire_every(&self, period: Duration) {
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let r = registry.clone();
                let now = now_ms();
                match tokio::task::spawn_blocking(move || r.expire_log_events(now)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!("{n} log events past retention deleted"),
                    Ok(Err(e)) => tracing::warn!("log retention: {e}"),
                    _ => {}
                }
            }
        });
    }

    async fn dispatch(&self, call: &Call) -> LResult<Value> {
        let target = call.header("x-amz-target").unwrap_or("");
        let Some(op) = target.strip_prefix("Logs_20140328.") else {
            return Err(LogsError {
                code: "UnknownOperationException",
                message: format!(
                    "X-Amz-Target {target:?} is not a CloudWatch Logs operation (Logs_20140328.*)"
                ),
            });
        };
        let body: Map<String, Value> = if call.body.is_empty() {
            Map::new()
        } else {
            serde_json::from_slice(&call.body)
                .map_err(|e| invalid(format!("the request body is not a JSON object: {e}")))?
        };
        let r = self.registry.clone();
        match op {
            "CreateLogGroup" => {
                let g = group_name(&body)?.to_string();
                blocking(move || r.create_log_group(&g)).await?;
                Ok(json!({}))
            }
            "DeleteLogGroup" => {
                let g = group_name(&body)?.to_string();
                blocking(move || r.delete_log_group(&g)).await?;
                Ok(json!({}))
            }
            "CreateLogStream" => {
                let (g, s) = (
                    group_name(&body)?.to_string(),
                    stream_name(&body)?.to_string(),
                );
                blocking(move || r.create_log_stream(&g, &s)).await?;
                Ok(json!({}))
            }
            "PutRetentionPolicy" => {
                let g = group_name(&body)?.to_string();
                let days = int(&body, "retentionInDays")?
                    .ok_or_else(|| invalid("retentionInDays is required"))?;
                if !RETENTION_DAYS.contains(&days) {
                    return Err(invalid(format!(
                        "retentionInDays {days} is not one of {RETENTION_DAYS:?}"
                    )));
                }
                blocking(move || r.set_log_retention(&g, Some(days))).await?;
                Ok(json!({}))
            }
            "DeleteRetentionPolicy" => {
                let g = group_name(&body)?.to_string();
                blocking(move || r.set_log_retention(&g, None)).await?;
                Ok(json!({}))
            }
            "PutLogEvents" => self.put(&body).await,
            "GetLogEvents" => self.get(&body).await,
            "FilterLogEvents" => self.filter(&body).await,
            "DescribeLogGroups" => self.describe_groups(&body).await,
            "DescribeLogStreams" => self.describe_streams(&body).await,
            other => Err(LogsError {
                code: "UnknownOperationException",
                message: format!("the fleet does not serve CloudWatch Logs {other}"),
            }),
        }
    }

    async fn put(&self, body: &Map<String, Value>) -> LResult<Value> {
        let (g, s) = (
            group_name(body)?.to_string(),
            stream_name(body)?.to_string(),
        );
        let Some(Value::Array(list)) = body.get("logEvents") else {
            return Err(invalid(
                "logEvents is required: a list of {timestamp, message}",
            ));
        };
        if list.is_empty() || list.len() > MAX_EVENTS {
            return Err(invalid(format!(
                "logEvents has {} events; send 1 to {MAX_EVENTS}",
                list.len()
            )));
        }
        let mut events = Vec::with_capacity(list.len());
        let mut bytes = 0;
        for (i, e) in list.iter().enumerate() {
            let ts = e["timestamp"].as_i64().ok_or_else(|| {
                invalid(format!(
                    "logEvents[{i}].timestamp must be epoch milliseconds"
                ))
            })?;
            let msg = e["message"]
                .as_str()
                .ok_or_else(|| invalid(format!("logEvents[{i}].message must be a string")))?;
            if msg.is_empty() {
                return Err(invalid(format!("logEvents[{i}].message is empty")));
            }
            if let Some((prev, _)) = events.last()
                && *prev > ts
            {
                return Err(invalid(
                    "Log events in a single PutLogEvents request must be in chronological order.",
                ));
            }
            bytes += msg.len() + EVENT_OVERHEAD;
            events.push((ts, msg.to_string()));
        }
        if bytes > MAX_BATCH_BYTES {
            return Err(invalid(format!(
                "the batch is {bytes} bytes (26 per event counted); send at most {MAX_BATCH_BYTES}"
            )));
        }
        if events.last().map(|e| e.0) > events.first().map(|e| e.0 + 86_400_000) {
            return Err(invalid(
                "A batch of log events in a single request cannot span more than 24 hours.",
            ));
        }
        // As CloudWatch Logs: more than 2 h ahead is too new, over 14 days old too old.
        let now = now_ms();
        let too_new = events.iter().position(|e| e.0 > now + 2 * 3_600_000);
        let too_old = events.iter().rposition(|e| e.0 < now - 14 * 86_400_000);
        let keep: Vec<(i64, String)> = events
            .iter()
            .enumerate()
            .filter(|(i, _)| too_new.is_none_or(|n| *i < n) && too_old.is_none_or(|o| *i > o))
            .map(|(_, e)| e.clone())
            .collect();
        let r = self.registry.clone();
        if !keep.is_empty() {
            blocking(move || r.put_log_events(&g, &s, &keep)).await?;
        } else {
            // Nothing to store, but the stream must still exist.
            let (g2, s2) = (g.clone(), s.clone());
            blocking(move || r.get_log_events(&g2, &s2, None, None, None, None, 1)).await?;
        }
        let mut out = json!({});
        if too_new.is_some() || too_old.is_some() {
            let mut info = json!({});
            if let Some(n) = too_new {
                info["tooNewLogEventStartIndex"] = json!(n);
            }
            if let Some(o) = too_old {
                info["tooOldLogEventEndIndex"] = json!(o);
            }
            out["rejectedLogEventsInfo"] = info;
        }
        Ok(out)
    }

    async fn get(&self, body: &Map<String, Value>) -> LResult<Value> {
        let (g, s) = (
            group_name(body)?.to_string(),
            stream_name(body)?.to_string(),
        );
        let limit = int(body, "limit")?.unwrap_or(MAX_EVENTS as i64);
        if !(1..=MAX_EVENTS as i64).contains(&limit) {
            return Err(invalid(format!(
                "limit {limit} is out of range; use 1 to {MAX_EVENTS}"
            )));
        }
        let (start, end) = (int(body, "startTime")?, int(body, "endTime")?);
        let from_head = body
            .get("startFromHead")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let token = string(body, "nextToken")?;
        let parse = |t: &str, p: &str| {
            t.strip_prefix(p)
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| invalid(format!("nextToken {t:?} is not one this service returned")))
        };
        let (after, before) = match token {
            Some(t) if t.starts_with("f/") => (Some(parse(t, "f/")?), None),
            Some(t) if t.starts_with("b/") => (None, Some(parse(t, "b/")?)),
            Some(t) => {
                return Err(invalid(format!(
                    "nextToken {t:?} is not one this service returned"
                )));
            }
            None if from_head => (Some(0), None),
            None => (None, Some(i64::MAX)),
        };
        let r = self.registry.clone();
        let events =
            blocking(move || r.get_log_events(&g, &s, start, end, after, before, limit as usize))
                .await?;
        let forward = events
            .last()
            .map(|e| e.seq)
            .or(after)
            .unwrap_or_else(|| before.map_or(0, |b| b.saturating_sub(1)));
        let backward = events
            .first()
            .map(|e| e.seq)
            .or(before)
            .unwrap_or_else(|| after.map_or(0, |a| a + 1));
        Ok(json!({
            "events": events.iter().map(|e| json!({
                "timestamp": e.timestamp_ms,
                "message": e.message,
                "ingestionTime": e.ingestion_ms,
            })).collect::<Vec<_>>(),
            "nextForwardToken": format!("f/{forward}"),
            "nextBackwardToken": format!("b/{backward}"),
        }))
    }

    async fn filter(&self, body: &Map<String, Value>) -> LResult<Value> {
        let g = group_name(body)?.to_string();
        let limit = int(body, "limit")?.unwrap_or(MAX_EVENTS as i64);
        if !(1..=MAX_EVENTS as i64).contains(&limit) {
            return Err(invalid(format!(
                "limit {limit} is out of range; use 1 to {MAX_EVENTS}"
            )));
        }
        let streams: Vec<String> = match body.get("logStreamNames") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| invalid("logStreamNames must be a list of strings"))?,
            Some(_) => return Err(invalid("logStreamNames must be a list of strings")),
        };
        let prefix = string(body, "logStreamNamePrefix")?.map(str::to_owned);
        if prefix.is_some() && !streams.is_empty() {
            return Err(invalid(
                "give logStreamNames or logStreamNamePrefix, not both",
            ));
        }
        let pattern = Pattern::parse(string(body, "filterPattern")?.unwrap_or(""))?;
        let after = match string(body, "nextToken")? {
            None => None,
            Some(t) => {
                let raw = untoken(t)?;
                let mut parts = raw.splitn(3, '/');
                let ts = parts.next().and_then(|x| x.parse().ok());
                let seq = parts.next().and_then(|x| x.parse().ok());
                match (ts, seq, parts.next()) {
                    (Some(ts), Some(seq), Some(stream)) => Some((ts, stream.to_string(), seq)),
                    _ => {
                        return Err(invalid(format!(
                            "nextToken {t:?} is not one this service returned"
                        )));
                    }
                }
            }
        };
        let mut q = LogQuery {
            streams,
            stream_prefix: prefix,
            start_ms: int(body, "startTime")?,
            end_ms: int(body, "endTime")?,
            after,
        };
        let mut found = Vec::new();
        let mut scanned = 0;
        let mut more = false;
        const CHUNK: usize = 1000;
        loop {
            let r = self.registry.clone();
            let (g2, q2) = (g.clone(), q.clone());
            let chunk = blocking(move || r.scan_log_events(&g2, &q2, CHUNK)).await?;
            let n = chunk.len();
            for e in chunk {
                scanned += 1;
                q.after = Some((e.timestamp_ms, e.stream.clone(), e.seq));
                if pattern.matches(&e.message) {
                    found.push(e);
                    if found.len() == limit as usize {
                        break;
                    }
                }
            }
            if found.len() == limit as usize || scanned >= MAX_SCAN {
                more = true;
                break;
            }
            // A short chunk after stream filtering may still not be the end: the scan read
            // CHUNK rows only if it returned that many before filtering; we cannot tell, so
            // an empty chunk ends it.
            if n == 0 {
                break;
            }
        }
        let mut out = json!({
            "events": found.iter().map(|e| json!({
                "logStreamName": e.stream,
                "timestamp": e.timestamp_ms,
                "message": e.message,
                "ingestionTime": e.ingestion_ms,
                "eventId": format!("{}-{}-{}", e.timestamp_ms, e.seq, token_of(&e.stream)),
            })).collect::<Vec<_>>(),
            "searchedLogStreams": [],
        });
        if more && let Some((ts, stream, seq)) = &q.after {
            out["nextToken"] = json!(token_of(&format!("{ts}/{seq}/{stream}")));
        }
        Ok(out)
    }

    async fn describe_groups(&self, body: &Map<String, Value>) -> LResult<Value> {
        let prefix = string(body, "logGroupNamePrefix")?
            .unwrap_or("")
            .to_string();
        let limit = int(body, "limit")?.unwrap_or(50);
        if !(1..=50).contains(&limit) {
            return Err(invalid(format!(
                "limit {limit} is out of range; use 1 to 50"
            )));
        }
        let after = match string(body, "nextToken")? {
            Some(t) => untoken(t)?,
            None => String::new(),
        };
        let r = self.registry.clone();
        let mut groups =
            blocking(move || r.list_log_groups(&prefix, &after, limit as usize + 1)).await?;
        let more = groups.len() > limit as usize;
        groups.truncate(limit as usize);
        let mut out = json!({
            "logGroups": groups.iter().map(|g| {
                let arn = self.registry.log_group_arn(&g.name);
                let mut v = json!({
                    "logGroupName": g.name,
                    "creationTime": g.created_ms,
                    "metricFilterCount": 0,
                    "arn": format!("{arn}:*"),
                    "logGroupArn": arn,
                    "storedBytes": g.stored_bytes,
                    "logGroupClass": "STANDARD",
                });
                if let Some(d) = g.retention_days {
                    v["retentionInDays"] = json!(d);
                }
                v
            }).collect::<Vec<_>>(),
        });
        if more && let Some(last) = groups.last() {
            out["nextToken"] = json!(token_of(&last.name));
        }
        Ok(out)
    }

    async fn describe_streams(&self, body: &Map<String, Value>) -> LResult<Value> {
        let g = group_name(body)?.to_string();
        let prefix = string(body, "logStreamNamePrefix")?
            .unwrap_or("")
            .to_string();
        let by_time = match string(body, "orderBy")? {
            None | Some("LogStreamName") => false,
            Some("LastEventTime") => true,
            Some(o) => {
                return Err(invalid(format!(
                    "orderBy {o:?} is not LogStreamName or LastEventTime"
                )));
            }
        };
        if by_time && !prefix.is_empty() {
            return Err(invalid(
                "Cannot order by LastEventTime with a logStreamNamePrefix.",
            ));
        }
        let descending = body
            .get("descending")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let limit = int(body, "limit")?.unwrap_or(50);
        if !(1..=50).contains(&limit) {
            return Err(invalid(format!(
                "limit {limit} is out of range; use 1 to 50"
            )));
        }
        let offset: usize = match string(body, "nextToken")? {
            Some(t) => untoken(t)?.parse().map_err(|_| {
                invalid(format!("nextToken {t:?} is not one this service returned"))
            })?,
            None => 0,
        };
        let r = self.registry.clone();
        let g2 = g.clone();
        // Sorted here (any order, either direction); a group's streams are few enough.
        let mut streams = blocking(move || r.list_log_streams(&g2, &prefix, "", 100_000)).await?;
        if by_time {
            streams.sort_by_key(|s| (s.last_event_ms.unwrap_or(0), s.name.clone()));
        }
        if descending {
            streams.reverse();
        }
        let page: Vec<_> = streams.iter().skip(offset).take(limit as usize).collect();
        let arn = self.registry.log_group_arn(&g);
        let mut out = json!({
            "logStreams": page.iter().map(|s| {
                let mut v = json!({
                    "logStreamName": s.name,
                    "creationTime": s.created_ms,
                    "arn": format!("{arn}:log-stream:{}", s.name),
                    "storedBytes": s.stored_bytes,
                });
                for (k, x) in [
                    ("firstEventTimestamp", s.first_event_ms),
                    ("lastEventTimestamp", s.last_event_ms),
                    ("lastIngestionTime", s.last_ingestion_ms),
                ] {
                    if let Some(x) = x {
                        v[k] = json!(x);
                    }
                }
                v
            }).collect::<Vec<_>>(),
        });
        if offset + page.len() < streams.len() {
            out["nextToken"] = json!(token_of(&(offset + page.len()).to_string()));
        }
        Ok(out)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ServiceHandler for LogsService {
    fn handle(&self, call: Call) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            match self.dispatch(&call).await {
                Ok(v) => ok(v),
                Err(e) => e.into_response(),
            }
        })
    }
}
