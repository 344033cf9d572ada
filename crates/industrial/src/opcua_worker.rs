//! OPC UA sources in their own process: the core runs each source in the `lichen-opcua` worker
//! executable and reads its samples as JSON lines, so the OPC UA stack (most of it generated
//! encoders for every OPC UA type, and its own RSA) never weighs on the core's binary or memory,
//! and a fault in it never takes the core down.
//!
//! The worker reads the source's JSON on its first stdin line, then writes one
//! [`encode_line`] line per sample on stdout; it stops when its stdin closes (the core went
//! away) or on SIGTERM. A worker that dies is restarted with backoff, and every alias it had
//! reported gets a BAD sample first, so the outage shows in the stream.

use crate::modbus::now_ns;
use crate::sample::{Quality, Sample, SampleSender, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs one OPC UA source (the JSON object of `sources[i]`) until `token` is cancelled.
pub trait OpcUaRunner: Send + Sync + 'static {
    fn spawn(
        &self,
        source: serde_json::Value,
        pki_dir: PathBuf,
        out: SampleSender,
        token: CancellationToken,
    ) -> JoinHandle<()>;
}

/// Runs sources in the worker executable at `exe`.
pub struct OpcUaWorker {
    exe: PathBuf,
    identity: Arc<std::sync::RwLock<Option<WorkerIdentity>>>,
}

/// The user and group a worker runs as when the core is root: the worker parses what servers on
/// the network send, so it gets no more privilege than a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIdentity {
    pub uid: u32,
    pub gid: u32,
}

impl OpcUaWorker {
    pub fn new(exe: PathBuf) -> OpcUaWorker {
        OpcUaWorker {
            exe,
            identity: Default::default(),
        }
    }

    /// Workers started from now on run as `identity` (None: as the core). A source's PKI
    /// directory is handed to that user before its worker starts.
    pub fn set_identity(&self, identity: Option<WorkerIdentity>) {
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = identity;
    }
}

/// Makes `pki_dir` the worker's: created if missing, owned (with all it holds) by `identity`,
/// private to it, and reachable through its parent, which lets others traverse but not list.
fn hand_over(pki_dir: &std::path::Path, identity: WorkerIdentity) -> std::io::Result<()> {
    use std::os::unix::fs::{PermissionsExt, chown};
    std::fs::create_dir_all(pki_dir)?;
    if let Some(parent) = pki_dir.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))?;
        // The collector's work directory: add only the search bits it may lack.
        if let Some(work) = parent.parent() {
            let mode = std::fs::metadata(work)?.permissions().mode();
            if mode & 0o011 != 0o011 {
                std::fs::set_permissions(
                    work,
                    std::fs::Permissions::from_mode((mode | 0o011) & 0o7777),
                )?;
            }
        }
    }
    let mut stack = vec![pki_dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        // A link is never followed: it could point anywhere on the device.
        if meta.file_type().is_symlink() {
            continue;
        }
        chown(&path, Some(identity.uid), Some(identity.gid))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    std::fs::set_permissions(pki_dir, std::fs::Permissions::from_mode(0o700))
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that ran this long was healthy: its next restart is quick again.
const HEALTHY: Duration = Duration::from_secs(60);

impl OpcUaRunner for OpcUaWorker {
    fn spawn(
        &self,
        source: serde_json::Value,
        pki_dir: PathBuf,
        out: SampleSender,
        token: CancellationToken,
    ) -> JoinHandle<()> {
        let exe = self.exe.clone();
        let identity = self.identity.clone();
        tokio::spawn(async move {
            let name = source["name"].as_str().unwrap_or("?").to_string();
            let mut seen = BTreeSet::new();
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = Instant::now();
                let run_as = *identity.read().unwrap_or_else(|p| p.into_inner());
                match run_once(&exe, run_as, &source, &pki_dir, &out, &token, &mut seen).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(source = name, error = %e, "OPC UA worker stopped; restarting")
                    }
                }
                // The source's values stop with the worker: say so in the stream.
                let now = now_ns();
                for alias in &seen {
                    let bad = Sample {
                        alias: alias.clone(),
                        value: None,
                        quality: Quality::Bad,
                        timestamp_ns: now,
                    };
                    if out.send(bad).await.is_err() {
                        return;
                    }
                }
                if started.elapsed() >= HEALTHY {
                    backoff = FIRST_BACKOFF;
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

/// One worker's life: `Ok` when `token` stopped it, `Err` when it ended on its own.
async fn run_once(
    exe: &std::path::Path,
    run_as: Option<WorkerIdentity>,
    source: &serde_json::Value,
    pki_dir: &std::path::Path,
    out: &SampleSender,
    token: &CancellationToken,
    seen: &mut BTreeSet<String>,
) -> Result<(), String> {
    let mut command = tokio::process::Command::new(exe);
    command
        .arg(pki_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(identity) = run_as {
        hand_over(pki_dir, identity).map_err(|e| {
            format!(
                "cannot give {} to uid {} gid {}: {e}",
                pki_dir.display(),
                identity.uid,
                identity.gid
            )
        })?;
        // Dropping from root also drops the supplementary groups.
        command.uid(identity.uid).gid(identity.gid);
    }
    let mut child = command.spawn().map_err(|e| {
        let who = run_as.map_or(String::new(), |i| format!(" as uid {}", i.uid));
        format!(
            "cannot start the OPC UA worker {}{who}: {e} (install lichen-opcua beside lichen, \
             where the collector's user may run it)",
            exe.display()
        )
    })?;
    let stderr = child.stderr.take().expect("piped stderr");
    let name = source["name"].as_str().unwrap_or("?").to_string();
    // Ends by itself when the worker's stderr closes (it exited or was killed).
    tokio::spawn(relog_stderr(stderr, name));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut line = source.to_string();
    line.push('\n');
    stdin
        .write_all(line.as_bytes())
        .await
        .map_err(|e| format!("cannot give the OPC UA worker its source: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                // Closing its stdin asks the worker to stop; it is killed if it does not.
                drop(stdin);
                if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                return Ok(());
            }
            next = lines.next_line() => match next {
                Ok(Some(text)) => match decode_line(&text) {
                    Ok(sample) => {
                        if !seen.contains(&sample.alias) {
                            seen.insert(sample.alias.clone());
                        }
                        if out.send(sample).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "an OPC UA worker line that is not a sample"),
                },
                Ok(None) | Err(_) => {
                    let status = child.wait().await.map_err(|e| e.to_string())?;
                    return Err(format!("the OPC UA worker exited ({status})"));
                }
            }
        }
    }
}

/// The worker's stderr, a line at a time, into the core's log at the level the line starts
/// with (the worker's own usage and start-up errors have none: they are errors).
async fn relog_stderr(stderr: tokio::process::ChildStderr, source: String) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let text = line.trim();
        let (level, rest) = split_level(text);
        match level {
            Some(tracing::Level::ERROR) | None => tracing::error!(source, "{rest}"),
            Some(tracing::Level::WARN) => tracing::warn!(source, "{rest}"),
            Some(tracing::Level::INFO) => tracing::info!(source, "{rest}"),
            Some(tracing::Level::DEBUG) => tracing::debug!(source, "{rest}"),
            Some(_) => tracing::trace!(source, "{rest}"),
        }
    }
}

/// `"WARN x: y"` → `(Some(WARN), "x: y")`; a line without a leading level is returned whole.
fn split_level(line: &str) -> (Option<tracing::Level>, &str) {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word.parse::<tracing::Level>() {
        Ok(level) if word.chars().all(|c| c.is_ascii_uppercase()) => {
            (Some(level), rest.trim_start())
        }
        _ => (None, line),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireSample {
    alias: String,
    quality: Quality,
    value: Option<Value>,
    #[serde(rename = "timestampNs")]
    timestamp_ns: i64,
}

/// One sample as the worker writes it: `{"alias", "quality", "value", "timestampNs"}`.
pub fn encode_line(s: &Sample) -> String {
    serde_json::json!({
        "alias": s.alias, "quality": s.quality, "value": s.value, "timestampNs": s.timestamp_ns,
    })
    .to_string()
}

/// The sample on one line the worker wrote.
pub fn decode_line(line: &str) -> Result<Sample, String> {
    let w: WireSample = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    Ok(Sample {
        alias: w.alias,
        value: w.value,
        quality: w.quality,
        timestamp_ns: w.timestamp_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_line_keeps_its_level() {
        assert_eq!(
            split_level(
                "ERROR opcua_client::session: Received a service fault of BadUserAccessDenied"
            ),
            (
                Some(tracing::Level::ERROR),
                "opcua_client::session: Received a service fault of BadUserAccessDenied"
            )
        );
        assert_eq!(
            split_level(" WARN x: y"),
            (None, " WARN x: y"),
            "trimmed by the caller"
        );
        assert_eq!(split_level("INFO x"), (Some(tracing::Level::INFO), "x"));
        assert_eq!(
            split_level("lichen-opcua: no source on stdin"),
            (None, "lichen-opcua: no source on stdin")
        );
        assert_eq!(
            split_level("Info is not a level word"),
            (None, "Info is not a level word")
        );
    }

    #[test]
    fn samples_survive_the_line_format() {
        for s in [
            Sample {
                alias: "/a/b".into(),
                value: Some(Value::Double(0.1 + 0.2)),
                quality: Quality::Good,
                timestamp_ns: 1_700_000_000_123_456_789,
            },
            Sample {
                alias: "/s".into(),
                value: Some(Value::String("x\ny".into())),
                quality: Quality::Uncertain,
                timestamp_ns: 1,
            },
            Sample {
                alias: "/gone".into(),
                value: None,
                quality: Quality::Bad,
                timestamp_ns: 2,
            },
        ] {
            let line = encode_line(&s);
            assert!(!line.contains('\n'));
            assert_eq!(decode_line(&line).unwrap(), s);
        }
        assert!(decode_line("{\"alias\": 1}").is_err());
    }

    #[tokio::test]
    async fn a_worker_that_dies_is_reported_bad_and_restarted() {
        // A stand-in worker: reads its source, reports one value, and dies.
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("worker.sh");
        let count = dir.path().join("starts");
        std::fs::write(
            &exe,
            format!(
                "#!/bin/sh\nread src\necho x >> {}\necho '{{\"alias\":\"/v\",\"quality\":\"GOOD\",\"value\":{{\"Integer\":7}},\"timestampNs\":5}}'\nexit 3\n",
                count.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let token = CancellationToken::new();
        let task = OpcUaWorker::new(exe).spawn(
            serde_json::json!({"name": "s"}),
            dir.path().to_path_buf(),
            tx,
            token.clone(),
        );
        let first = rx.recv().await.unwrap();
        assert_eq!(
            (first.value, first.quality),
            (Some(Value::Integer(7)), Quality::Good)
        );
        let gap = rx.recv().await.unwrap();
        assert_eq!(
            (gap.alias.as_str(), gap.value, gap.quality),
            ("/v", None, Quality::Bad)
        );
        let again = rx.recv().await.unwrap();
        assert_eq!(again.quality, Quality::Good);
        token.cancel();
        task.await.unwrap();
        assert!(std::fs::read_to_string(&count).unwrap().lines().count() >= 2);
    }
}
