//! `aws.greengrass.LogManager` (2.x) as a built-in service: uploads the core's log
//! (`logs/lichen.log`, the System group) and components' logs (`logs/<component>.log`) to
//! CloudWatch Logs — AWS, or `lichen fleet`'s `logs` API — every `periodicUploadIntervalSec`.
//!
//! Delivery is at least once: a source's progress (inode and offset of the last line the service
//! acknowledged) is written durably only after PutLogEvents succeeded, so an upload cut short by
//! a crash or an outage is sent again, and nothing acknowledged is lost. While the service cannot
//! be reached the lines stay in the log files (rotated files are deleted only once uploaded, when
//! `deleteLogFileAfterCloudUpload`, or when a source exceeds its `diskSpaceLimit`).
//!
//! Names as Greengrass: group `/aws/greengrass/{GreengrassSystemComponent|UserComponent}/<region>/
//! <component>` (`System` for the core), stream `/<yyyy/MM/dd>/thing/<thing>` (`:` → `+`), one
//! UTC day per batch. Credentials come from the AWS IoT credentials provider
//! (`iotCredEndpoint`, `iotRoleAlias`) with the device certificate. Lichen adds
//! `configuration.lichen.logsEndpoint` (a URL; default `https://logs.<region>.amazonaws.com`).

mod cloudwatch;
mod tail;

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use cloudwatch::{Client, LogsError};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tail::{Line, Progress, level_rank};

pub const NAME: &str = "aws.greengrass.LogManager";
const NUCLEUS: &str = "aws.greengrass.Nucleus";
/// CloudWatch Logs' PutLogEvents limits.
const MAX_BATCH_BYTES: usize = 1_048_576;
const EVENT_OVERHEAD: usize = 26;
const MAX_EVENTS: usize = 10_000;
const MAX_EVENT_BYTES: usize = 262_144 - EVENT_OVERHEAD;
/// How much of a source one read takes (a batch's worth, with room for overhead).
const READ_BYTES: usize = 900_000;

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    vec![Arc::new(LogManager {
        ctx: ctx.clone(),
        task: Mutex::new(None),
    })]
}

struct LogManager {
    ctx: ServiceContext,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// One log to upload.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    /// Component name (`System` for the core's own log).
    name: String,
    group: String,
    file: PathBuf,
    min_level: usize,
    delete_after_upload: bool,
    disk_limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    sources: Vec<Source>,
    interval: Duration,
    endpoint: String,
    region: String,
    thing: String,
    cred_endpoint: Option<String>,
    role_alias: Option<String>,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn flag(v: Option<&Value>) -> bool {
    text(v).is_some_and(|s| s.eq_ignore_ascii_case("true"))
}

fn disk_limit(c: &Value) -> Result<Option<u64>, String> {
    let Some(n) = text(c.get("diskSpaceLimit")) else {
        return Ok(None);
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("diskSpaceLimit {n:?} is not a whole number"))?;
    let unit = text(c.get("diskSpaceLimitUnit")).unwrap_or_else(|| "KB".into());
    let mult = match unit.to_ascii_uppercase().as_str() {
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        u => return Err(format!("diskSpaceLimitUnit {u:?} is not KB, MB or GB")),
    };
    Ok(Some(n * mult))
}

fn min_level(c: &Value, what: &str) -> Result<usize, String> {
    let l = text(c.get("minimumLogLevel")).unwrap_or_else(|| "INFO".into());
    level_rank(&l).ok_or_else(|| {
        format!("{what}.minimumLogLevel {l:?} is not TRACE, DEBUG, INFO, WARN or ERROR")
    })
}

impl LogManager {
    fn nucleus(&self, key: &str) -> Option<String> {
        text(
            self.ctx
                .config
                .get(&["services", NUCLEUS, "configuration", key])
                .as_ref(),
        )
    }

    fn settings(&self, conf: &Value) -> Result<Settings, String> {
        let region = self
            .nucleus("awsRegion")
            .unwrap_or_else(|| "us-east-1".into());
        let thing = text(self.ctx.config.get(&["system", "thingName"]).as_ref())
            .ok_or("system.thingName is not set: the log streams are named after the thing")?;
        let logs = self.ctx.root.join("logs");
        let up = conf
            .get("logsUploaderConfiguration")
            .cloned()
            .unwrap_or(json!({}));
        let mut sources = vec![];
        if let Some(sys) = up.get("systemLogsConfiguration")
            && flag(sys.get("uploadToCloudWatch"))
        {
            sources.push(Source {
                name: "System".into(),
                group: format!("/aws/greengrass/GreengrassSystemComponent/{region}/System"),
                file: logs.join("lichen.log"),
                min_level: min_level(sys, "systemLogsConfiguration")?,
                delete_after_upload: flag(sys.get("deleteLogFileAfterCloudUpload")),
                disk_limit_bytes: disk_limit(sys)?,
            });
        }
        let mut components: Vec<(String, Value)> = vec![];
        if let Some(Value::Object(map)) = up.get("componentLogsConfigurationMap") {
            components.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(Value::Array(list)) = up.get("componentLogsConfiguration") {
            for c in list {
                let name = text(c.get("componentName"))
                    .ok_or("componentLogsConfiguration entries need componentName")?;
                components.push((name, c.clone()));
            }
        }
        for (name, c) in components {
            let what = format!("componentLogsConfigurationMap.{name}");
            if text(c.get("logFileRegex")).is_some() {
                tracing::warn!(
                    component = name,
                    "logFileRegex is not supported; uploading {name}.log and its rotated files"
                );
            }
            let dir = text(c.get("logFileDirectoryPath"))
                .map(PathBuf::from)
                .unwrap_or_else(|| logs.clone());
            sources.push(Source {
                group: format!("/aws/greengrass/UserComponent/{region}/{name}"),
                file: dir.join(format!("{name}.log")),
                min_level: min_level(&c, &what)?,
                delete_after_upload: flag(c.get("deleteLogFileAfterCloudUpload")),
                disk_limit_bytes: disk_limit(&c)?,
                name,
            });
        }
        let interval = match text(conf.get("periodicUploadIntervalSec")) {
            None => 300,
            Some(s) => match s.parse::<f64>() {
                Ok(n) if n >= 1.0 => n as u64,
                _ => {
                    return Err(format!(
                        "periodicUploadIntervalSec {s:?}: use a number of seconds, at least 1"
                    ));
                }
            },
        };
        let endpoint = conf
            .get("lichen")
            .and_then(|l| text(l.get("logsEndpoint")))
            .unwrap_or_else(|| format!("https://logs.{region}.amazonaws.com"));
        Ok(Settings {
            sources,
            interval: Duration::from_secs(interval),
            endpoint,
            region,
            thing,
            cred_endpoint: self.nucleus("iotCredEndpoint"),
            role_alias: self.nucleus("iotRoleAlias"),
        })
    }

    fn client(&self, s: &Settings) -> Result<Client, String> {
        let path = |k: &str| {
            text(self.ctx.config.get(&["system", k]).as_ref())
                .map(PathBuf::from)
                .ok_or(format!(
                    "system.{k} is not set: the credentials provider needs the device certificate"
                ))
        };
        let (Some(cred), Some(alias)) = (&s.cred_endpoint, &s.role_alias) else {
            return Err("iotCredEndpoint and iotRoleAlias must be set (the Nucleus configuration) to get credentials for CloudWatch Logs".into());
        };
        let endpoint = lichen_cloud::Endpoint {
            host: cred.clone(),
            port: 443,
            root_ca: path("rootCaPath")?,
            certificate: path("certificateFilePath")?,
            private_key: path("privateKeyPath")?,
        };
        let http = lichen_cloud::dataplane::DataPlane::new(&endpoint)
            .map_err(|e| format!("loading the device certificate: {e}"))?;
        Ok(Client::new(
            http,
            &s.endpoint,
            &s.region,
            cred,
            alias,
            &s.thing,
        ))
    }
}

impl BuiltinService for LogManager {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> &'static str {
        "2.3.7"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
            let Some(conf) = configuration else {
                tracing::info!(service = NAME, "stopped");
                return;
            };
            let settings = match self.settings(&conf) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(service = NAME, "configuration refused: {e}");
                    return;
                }
            };
            if settings.sources.is_empty() {
                tracing::info!(service = NAME, "configured; no log is set to upload");
                return;
            }
            let client = match self.client(&settings) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(service = NAME, "cannot upload: {e}");
                    return;
                }
            };
            let progress = match Progress::open(&self.ctx.root.join("work").join(NAME)) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(service = NAME, "cannot open its progress file: {e}");
                    return;
                }
            };
            tracing::info!(
                service = NAME,
                endpoint = settings.endpoint,
                sources = settings.sources.len(),
                interval_s = settings.interval.as_secs(),
                "uploading logs"
            );
            let task = tokio::spawn(run(settings, client, progress));
            *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        })
    }
}

async fn run(s: Settings, client: Client, mut progress: Progress) {
    let client = Arc::new(client);
    let mut created = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for source in &s.sources {
            match upload(&s, source, &client, &mut progress, &mut created).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(service = NAME, source = source.name, events = n, "uploaded")
                }
                Err(e) => tracing::warn!(
                    service = NAME,
                    source = source.name,
                    "upload failed, will retry next interval: {e}"
                ),
            }
            tidy(source, progress.get(&source.name));
        }
    }
}

/// `/<yyyy/MM/dd>/thing/<thing>` for the UTC day of `ms`.
fn stream_name(ms: i64, thing: &str) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "/{:04}/{:02}/{:02}/thing/{}",
        t.year(),
        t.month() as u8,
        t.day(),
        thing.replace(':', "+")
    )
}

/// Uploads what `source` has after its progress mark; returns how many events went.
async fn upload(
    s: &Settings,
    source: &Source,
    client: &Client,
    progress: &mut Progress,
    created: &mut std::collections::BTreeSet<String>,
) -> Result<usize, String> {
    let mut sent = 0;
    loop {
        let from = progress.get(&source.name);
        let now = now_ms();
        let (lines, last) = tail::read_after(&source.file, from, source.min_level, READ_BYTES, now)
            .map_err(|e| format!("reading {}: {e}", source.file.display()))?;
        if lines.is_empty() {
            // Only filtered lines (or none): skip past them.
            if let Some(m) = last
                && Some(m) != from
            {
                progress
                    .set(&source.name, m)
                    .map_err(|e| format!("saving progress: {e}"))?;
            }
            return Ok(sent);
        }
        for batch in batches(&lines, &s.thing) {
            put(client, &source.group, &batch.0, &batch.1, created).await?;
            sent += batch.1.len();
            let mark = batch.1.last().expect("batches are not empty").mark;
            progress
                .set(&source.name, mark)
                .map_err(|e| format!("saving progress: {e}"))?;
        }
        if let Some(m) = last
            && progress.get(&source.name) != Some(m)
        {
            // Filtered lines after the last uploaded one.
            progress
                .set(&source.name, m)
                .map_err(|e| format!("saving progress: {e}"))?;
        }
    }
}

/// Splits lines into PutLogEvents batches: one stream (UTC day) each, within the limits.
fn batches(lines: &[Line], thing: &str) -> Vec<(String, Vec<Line>)> {
    let mut out: Vec<(String, Vec<Line>)> = vec![];
    let mut bytes = 0;
    for l in lines {
        let mut l = l.clone();
        if l.message.len() > MAX_EVENT_BYTES {
            let mut cut = MAX_EVENT_BYTES;
            while !l.message.is_char_boundary(cut) {
                cut -= 1;
            }
            l.message.truncate(cut);
        }
        let stream = stream_name(l.timestamp_ms, thing);
        let size = l.message.len() + EVENT_OVERHEAD;
        let fits = out.last().is_some_and(|(st, b)| {
            *st == stream && b.len() < MAX_EVENTS && bytes + size <= MAX_BATCH_BYTES
        });
        if !fits {
            out.push((stream, vec![]));
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("pushed above").1.push(l);
    }
    out
}

async fn put(
    client: &Client,
    group: &str,
    stream: &str,
    lines: &[Line],
    created: &mut std::collections::BTreeSet<String>,
) -> Result<(), String> {
    let body = json!({
        "logGroupName": group,
        "logStreamName": stream,
        "logEvents": lines.iter().map(|l| json!({"timestamp": l.timestamp_ms, "message": l.message})).collect::<Vec<_>>(),
    });
    let key = format!("{group}\n{stream}");
    if !created.contains(&key) {
        ensure(client, group, stream).await?;
        created.insert(key.clone());
    }
    match client.call("PutLogEvents", &body).await {
        Ok(_) => Ok(()),
        Err(LogsError::Service { code, .. }) if code == "ResourceNotFoundException" => {
            // Deleted since: create again once.
            ensure(client, group, stream).await?;
            client
                .call("PutLogEvents", &body)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Err(e) => {
            created.remove(&key);
            Err(e.to_string())
        }
    }
}

async fn ensure(client: &Client, group: &str, stream: &str) -> Result<(), String> {
    let exists = |r: Result<Value, LogsError>| match r {
        Ok(_) => Ok(()),
        Err(LogsError::Service { code, .. }) if code == "ResourceAlreadyExistsException" => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    exists(
        client
            .call("CreateLogGroup", &json!({"logGroupName": group}))
            .await,
    )?;
    exists(
        client
            .call(
                "CreateLogStream",
                &json!({"logGroupName": group, "logStreamName": stream}),
            )
            .await,
    )
}

/// Deletes rotated files that are fully uploaded (`deleteLogFileAfterCloudUpload`), then the
/// oldest rotated files while the source is over its `diskSpaceLimit`.
fn tidy(source: &Source, mark: Option<tail::Mark>) {
    use std::os::unix::fs::MetadataExt;
    let rotated: Vec<(PathBuf, u64, u64)> = (1..=64)
        .map_while(|n| {
            let p = PathBuf::from(format!("{}.{n}", source.file.display()));
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.ino(), m.len()))
        })
        .collect();
    // Rotated files are numbered newest first: those past the one being read are done.
    let reading = mark.and_then(|m| rotated.iter().position(|r| r.1 == m.inode));
    let live = std::fs::metadata(&source.file)
        .map(|m| (m.ino(), m.len()))
        .ok();
    let done_from = match (reading, live, mark) {
        (Some(i), _, _) => i + 1,
        (None, Some((ino, _)), Some(m)) if ino == m.inode => 0,
        _ => rotated.len(),
    };
    let mut kept: Vec<&(PathBuf, u64, u64)> = vec![];
    for (i, r) in rotated.iter().enumerate() {
        if source.delete_after_upload && i >= done_from {
            let _ = std::fs::remove_file(&r.0);
        } else {
            kept.push(r);
        }
    }
    if let Some(limit) = source.disk_limit_bytes {
        let mut total: u64 = kept.iter().map(|r| r.2).sum::<u64>() + live.map_or(0, |l| l.1);
        for r in kept.iter().rev() {
            if total <= limit {
                break;
            }
            tracing::warn!(service = NAME, file = %r.0.display(), "over diskSpaceLimit: deleting the oldest log file");
            let _ = std::fs::remove_file(&r.0);
            total -= r.2;
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
