//! The S3 export task executor: each record is an `S3ExportTaskDefinition` in JSON naming a
//! local file; tasks run one at a time in append order, as a single PutObject up to the
//! configured threshold and as a multipart upload above it. Progress is reported as JSON
//! `StatusMessage` records on the export's status stream, filtered by its `statusLevel`.

use super::aws::{Signed, endpoint, send_signed};
use super::sigv4::uri_encode;
use super::{Delivered, Failure, MIN_PART_SIZE, Shared, now_ms};
use crate::export::ExportConfig;
use crate::file_access::{self, FileAccess};
use crate::store::Message;
use serde_json::{Value, json};
use std::fs::File;
use std::sync::Arc;

// StatusMessage enums as the SDK serializes them (integers).
const LEVEL_ERROR: u64 = 0;
const LEVEL_INFO: u64 = 2;
const STATUS_SUCCESS: u64 = 0;
const STATUS_FAILURE: u64 = 1;
const STATUS_IN_PROGRESS: u64 = 2;

pub(crate) struct S3Executor {
    identifier: String,
    threshold: u64,
    status_stream: Option<String>,
    status_level: u64,
}

/// How one task ended when it did not succeed.
enum TaskError {
    /// Worth retrying: transport failures, throttling, server errors.
    Retry(Failure),
    /// Never succeeds as given: reported as Failure, then skipped.
    Fatal(String),
}

impl S3Executor {
    pub(crate) fn new(config: &ExportConfig) -> S3Executor {
        let status = config.settings.get("statusConfig");
        S3Executor {
            identifier: config.identifier.clone(),
            threshold: config
                .settings
                .get("sizeThresholdForMultipartUploadBytes")
                .and_then(|v| v.as_u64())
                .unwrap_or(MIN_PART_SIZE),
            status_stream: status
                .and_then(|s| s.get("statusStreamName"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
            status_level: status
                .and_then(|s| s.get("statusLevel"))
                .and_then(|v| v.as_u64())
                .unwrap_or(LEVEL_INFO),
        }
    }

    pub(crate) async fn send(
        &mut self,
        shared: &Shared,
        stream: &str,
        batch: &[Message],
    ) -> Result<Delivered, Failure> {
        let mut bytes = 0;
        for m in batch {
            let task: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let ctx = json!({
                "s3ExportTaskDefinition": task,
                "exportIdentifier": self.identifier,
                "streamName": stream,
                "sequenceNumber": m.sequence_number,
            });
            self.status(shared, &ctx, LEVEL_INFO, STATUS_IN_PROGRESS, "task started")
                .await;
            let access = task_access(shared, stream, m.sequence_number);
            match self.run_task(shared, &task, access).await {
                Ok(size) => {
                    bytes += m.payload.len() as u64;
                    self.status(
                        shared,
                        &ctx,
                        LEVEL_INFO,
                        STATUS_SUCCESS,
                        &format!("uploaded {size} bytes"),
                    )
                    .await;
                }
                Err(TaskError::Fatal(msg)) => {
                    tracing::warn!(stream, seq = m.sequence_number, error = %msg, "S3 export task failed");
                    self.status(shared, &ctx, LEVEL_ERROR, STATUS_FAILURE, &msg)
                        .await;
                }
                Err(TaskError::Retry(f)) => return Err(f),
            }
        }
        Ok(Delivered {
            messages: batch.len() as u64,
            bytes,
        })
    }

    async fn status(&self, shared: &Shared, ctx: &Value, level: u64, status: u64, message: &str) {
        let Some(name) = &self.status_stream else {
            return;
        };
        if level > self.status_level {
            return;
        }
        let record = json!({
            "eventType": 0,
            "statusLevel": level,
            "status": status,
            "statusContext": ctx,
            "message": message,
            "timestampEpochMs": now_ms(),
        });
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        let store = shared.store.clone();
        let name = name.clone();
        let result = tokio::task::spawn_blocking(move || {
            let s = store.get(&name)?;
            let a = s.append(&payload)?;
            if a.needs_sync {
                s.wait_durable(a.sequence_number)?;
            }
            Ok::<_, crate::StoreError>(())
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(stream = %self.status_stream.as_deref().unwrap_or(""), error = %e, "cannot append an S3 export status");
        }
    }

    async fn run_task(
        &self,
        shared: &Shared,
        task: &Value,
        access: FileAccess,
    ) -> Result<u64, TaskError> {
        let field = |k: &str| task.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(input), Some(bucket), Some(key)) =
            (field("inputUrl"), field("bucket"), field("key"))
        else {
            return Err(TaskError::Fatal(
                "record is not an S3ExportTaskDefinition (inputUrl, bucket and key are required)"
                    .into(),
            ));
        };
        let path = file_path(&input)
            .ok_or_else(|| TaskError::Fatal(format!("inputUrl {input:?} is not a file:// URL")))?;
        let key = expand_key(&key, time::OffsetDateTime::now_utc());
        let mut meta = Vec::new();
        if let Some(Value::Object(m)) = task.get("userMetadata") {
            for (k, v) in m {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                meta.push((format!("x-amz-meta-{k}"), v));
            }
        }
        let input = open(&path, access).await?;
        let size = input
            .file
            .metadata()
            .map_err(|e| TaskError::Fatal(format!("input file {path}: {e}")))?
            .len();
        let upload = Upload {
            shared,
            bucket: &bucket,
            key: &key,
        };
        if size <= self.threshold {
            let data = input.read_range(0, size).await?;
            upload.put(&data, meta).await?;
        } else {
            let part_size = shared.settings.s3_min_part_size.max(MIN_PART_SIZE);
            upload.multipart(&input, size, part_size, meta).await?;
        }
        Ok(size)
    }
}

/// The privileges task `seq` of `stream` reads its file with: its appender's, else those of
/// an unknown appender (the core's default component user).
fn task_access(shared: &Shared, stream: &str, seq: u64) -> FileAccess {
    let recorded = shared
        .store
        .get(stream)
        .ok()
        .and_then(|s| s.appended_by(seq));
    match (recorded, &shared.file_access) {
        (Some(a), _) => (*a).clone(),
        (None, Some(resolve)) => resolve(None),
        (None, None) => FileAccess::Own,
    }
}

/// A task's input file, opened once with the task's privileges; every part is read from this
/// descriptor, so the path is never looked up again.
struct Input {
    path: String,
    file: Arc<File>,
}

async fn open(path: &str, access: FileAccess) -> Result<Input, TaskError> {
    let p = path.to_string();
    let who = access.to_string();
    let file = tokio::task::spawn_blocking(move || {
        file_access::open_input(std::path::Path::new(&p), &access)
    })
    .await
    .map_err(|e| TaskError::Retry(Failure::new(e.to_string())))?
    .map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                " (read as {who}, the user the appending component runs as; make the file \
                 readable to that user)"
            )
        } else {
            String::new()
        };
        TaskError::Fatal(format!("input file {path}: {e}{hint}"))
    })?;
    Ok(Input {
        path: path.to_string(),
        file: Arc::new(file),
    })
}

impl Input {
    async fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, TaskError> {
        let f = self.file.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, offset)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|e| TaskError::Retry(Failure::new(e.to_string())))?
        .map_err(|e| TaskError::Fatal(format!("input file {}: {e}", self.path)))
    }
}

struct Upload<'a> {
    shared: &'a Shared,
    bucket: &'a str,
    key: &'a str,
}

impl Upload<'_> {
    async fn request(
        &self,
        method: &str,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Result<super::http::Response, TaskError> {
        let settings = &self.shared.settings;
        let encoded_key = uri_encode(self.key, true);
        // A custom endpoint gets path-style addressing; AWS gets virtual-hosted style.
        let (url, path) = match &settings.s3_endpoint {
            Some(_) => (
                endpoint(&settings.s3_endpoint, String::new()).map_err(TaskError::Retry)?,
                format!("/{}/{encoded_key}", uri_encode(self.bucket, false)),
            ),
            None => (
                endpoint(
                    &None,
                    format!("{}.s3.{}.amazonaws.com", self.bucket, settings.region),
                )
                .map_err(TaskError::Retry)?,
                format!("/{encoded_key}"),
            ),
        };
        let resp = send_signed(
            self.shared,
            Signed {
                method,
                endpoint: &url,
                path,
                query,
                headers,
                body,
                service: "s3",
                content_sha256_header: true,
            },
        )
        .await
        .map_err(TaskError::Retry)?;
        match resp.status {
            200..=299 => Ok(resp),
            408 | 429 | 500..=599 => Err(TaskError::Retry(Failure::new(format!(
                "S3 {method} s3://{}/{}: HTTP {}: {}",
                self.bucket,
                self.key,
                resp.status,
                resp.body_text()
            )))),
            s => Err(TaskError::Fatal(format!(
                "S3 {method} s3://{}/{}: HTTP {s}: {}",
                self.bucket,
                self.key,
                resp.body_text()
            ))),
        }
    }

    async fn put(&self, data: &[u8], meta: Vec<(String, String)>) -> Result<(), TaskError> {
        self.request("PUT", vec![], meta, data).await.map(|_| ())
    }

    async fn multipart(
        &self,
        input: &Input,
        size: u64,
        part_size: u64,
        meta: Vec<(String, String)>,
    ) -> Result<(), TaskError> {
        let resp = self
            .request("POST", vec![("uploads".into(), String::new())], meta, &[])
            .await?;
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        let upload_id = xml_field(&body, "UploadId").ok_or_else(|| {
            TaskError::Retry(Failure::new(format!(
                "S3 CreateMultipartUpload s3://{}/{}: no UploadId in {body:?}",
                self.bucket, self.key
            )))
        })?;
        let result = self.parts(input, size, part_size, &upload_id).await;
        if result.is_err() {
            // Leave no parts behind to be billed; failing to abort is only worth a warning.
            let abort = self
                .request(
                    "DELETE",
                    vec![("uploadId".into(), upload_id.clone())],
                    vec![],
                    &[],
                )
                .await;
            if abort.is_err() {
                tracing::warn!(
                    bucket = self.bucket,
                    key = self.key,
                    "could not abort a failed multipart upload"
                );
            }
        }
        result
    }

    async fn parts(
        &self,
        input: &Input,
        size: u64,
        part_size: u64,
        upload_id: &str,
    ) -> Result<(), TaskError> {
        let mut etags = Vec::new();
        let mut offset = 0u64;
        let mut number = 1u32;
        while offset < size {
            let len = part_size.min(size - offset);
            let data = input.read_range(offset, len).await?;
            let resp = self
                .request(
                    "PUT",
                    vec![
                        ("partNumber".into(), number.to_string()),
                        ("uploadId".into(), upload_id.to_string()),
                    ],
                    vec![],
                    &data,
                )
                .await?;
            let etag = resp.header("ETag").unwrap_or_default().to_string();
            etags.push((number, etag));
            offset += len;
            number += 1;
        }
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in &etags {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                etag.replace('&', "&amp;").replace('<', "&lt;")
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let resp = self
            .request(
                "POST",
                vec![("uploadId".into(), upload_id.to_string())],
                vec![("Content-Type".into(), "application/xml".into())],
                xml.as_bytes(),
            )
            .await?;
        // S3 may answer 200 with an <Error> body when completion fails late.
        let body = String::from_utf8_lossy(&resp.body);
        if body.contains("<Error>") {
            return Err(TaskError::Retry(Failure::new(format!(
                "S3 CompleteMultipartUpload s3://{}/{}: {body}",
                self.bucket, self.key
            ))));
        }
        Ok(())
    }
}

fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].to_string())
}

/// `file:///abs/path` (percent escapes decoded) to a path.
fn file_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("file://")?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return None;
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&rest[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Expands `!{timestamp:<pattern>}` in an object key with the common Java DateTimeFormatter
/// letters (`yyyy uuuu yy MM dd HH mm ss SSS`, `'quoted'` text); other characters are kept.
fn expand_key(key: &str, now: time::OffsetDateTime) -> String {
    let mut out = String::new();
    let mut rest = key;
    while let Some(i) = rest.find("!{timestamp:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "!{timestamp:".len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        out.push_str(&format_java(&after[..end], now));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn format_java(pattern: &str, t: time::OffsetDateTime) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&x| x == '\'')
                .map(|p| i + 1 + p)
                .unwrap_or(chars.len());
            out.extend(&chars[i + 1..end]);
            i = end + 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        let text = match (c, n) {
            ('y' | 'u', 2) => format!("{:02}", t.year() % 100),
            ('y' | 'u', _) => format!("{:04}", t.year()),
            ('M', _) => format!("{:02}", t.month() as u8),
            ('d', _) => format!("{:02}", t.day()),
            ('H', _) => format!("{:02}", t.hour()),
            ('m', _) => format!("{:02}", t.minute()),
            ('s', _) => format!("{:02}", t.second()),
            ('S', _) => format!("{:03}", t.millisecond()),
            _ => chars[i..i + n].iter().collect(),
        };
        out.push_str(&text);
        i += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expand_timestamps() {
        let t = time::macros::datetime!(2024-03-07 05:06:07.089 UTC);
        assert_eq!(
            expand_key(
                "data/!{timestamp:yyyy/MM/dd}/f-!{timestamp:HHmmss.SSS}.bin",
                t
            ),
            "data/2024/03/07/f-050607.089.bin"
        );
        assert_eq!(expand_key("plain", t), "plain");
        assert_eq!(expand_key("x!{timestamp:'T'HH}", t), "xT05");
    }

    #[test]
    fn file_urls_decode() {
        assert_eq!(file_path("file:///tmp/a%20b").as_deref(), Some("/tmp/a b"));
        assert_eq!(file_path("http://x"), None);
        assert_eq!(
            xml_field("<a><UploadId>u1</UploadId></a>", "UploadId").as_deref(),
            Some("u1")
        );
    }
}
