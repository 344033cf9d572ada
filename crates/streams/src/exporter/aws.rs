//! AWS destinations over SigV4-signed HTTP: Kinesis `PutRecords` (JSON 1.1), IoT Analytics
//! `BatchPutMessage` and IoT SiteWise `BatchPutAssetPropertyValue` (REST JSON), and the
//! credential chain they share with S3.

use super::http::{self, Url};
use super::sigv4::{self, Credentials};
use super::{Delivered, Failure, Shared};
use crate::export::{ExportConfig, ExportKind};
use crate::store::Message;
use base64::Engine;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Finds credentials: static ones from the configuration, else the environment, else container
/// credentials (the Token Exchange Service), else the shared credentials file. Fetched
/// credentials are cached until five minutes before they expire.
pub(crate) struct CredentialProvider {
    fixed: Option<Credentials>,
    cached: Mutex<Option<(Credentials, Option<Instant>)>>,
}

impl CredentialProvider {
    pub(crate) fn new(fixed: Option<(String, String, Option<String>)>) -> Self {
        CredentialProvider {
            fixed: fixed.map(|(a, s, t)| Credentials {
                access_key_id: a,
                secret_access_key: s,
                session_token: t,
            }),
            cached: Mutex::new(None),
        }
    }

    pub(crate) async fn get(&self) -> Result<Credentials, Failure> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        if let (Ok(a), Ok(s)) = (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            return Ok(Credentials {
                access_key_id: a,
                secret_access_key: s,
                session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
            });
        }
        if let Some((c, until)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            && until.is_none_or(|t| Instant::now() < t)
        {
            return Ok(c);
        }
        let fetched = if let Ok(uri) = std::env::var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            container_credentials(&uri).await?
        } else {
            (file_credentials()?, None)
        };
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(fetched.clone());
        Ok(fetched.0)
    }
}

async fn container_credentials(uri: &str) -> Result<(Credentials, Option<Instant>), Failure> {
    let url = Url::parse(uri).map_err(Failure::new)?;
    let target = uri[uri.find("://").map(|i| i + 3).unwrap_or(0)..]
        .find('/')
        .map(|j| uri[uri.find("://").unwrap_or(0) + 3 + j..].to_string())
        .unwrap_or_else(|| "/".into());
    let mut headers = Vec::new();
    if let Ok(t) = std::env::var("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
        headers.push(("Authorization".to_string(), t));
    }
    let resp = http::send(http::Request {
        method: "GET",
        url: &url,
        target,
        headers,
        body: &[],
    })
    .await
    .map_err(|e| Failure::new(format!("container credentials from {uri}: {e}")))?;
    if resp.status != 200 {
        return Err(Failure::new(format!(
            "container credentials from {uri}: HTTP {}: {}",
            resp.status,
            resp.body_text()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|e| Failure::new(format!("container credentials from {uri}: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let (Some(a), Some(s)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
        return Err(Failure::new(format!(
            "container credentials from {uri}: AccessKeyId/SecretAccessKey missing"
        )));
    };
    let until = field("Expiration")
        .and_then(|e| {
            time::OffsetDateTime::parse(&e, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|exp| {
            let left = (exp - time::OffsetDateTime::now_utc()).whole_seconds() - 300;
            Instant::now() + Duration::from_secs(left.max(0) as u64)
        });
    Ok((
        Credentials {
            access_key_id: a,
            secret_access_key: s,
            session_token: field("Token"),
        },
        until,
    ))
}

fn file_credentials() -> Result<Credentials, Failure> {
    let path = std::env::var("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|_| {
        format!(
            "{}/.aws/credentials",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure::new(format!(
            "no AWS credentials: not configured (STREAM_MANAGER_EXPORTER_AWS_ACCESS_KEY_ID), not \
             in the environment, no container credentials, and {path}: {e}"
        ))
    })?;
    let mut in_profile = false;
    let (mut a, mut s, mut t) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
        } else if in_profile && let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_string());
            match k.trim() {
                "aws_access_key_id" => a = v,
                "aws_secret_access_key" => s = v,
                "aws_session_token" => t = v,
                _ => {}
            }
        }
    }
    match (a, s) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: t,
        }),
        _ => Err(Failure::new(format!(
            "no credentials for profile {profile:?} in {path}"
        ))),
    }
}

/// One signed request to an AWS service endpoint.
pub(crate) struct Signed<'a> {
    pub method: &'a str,
    pub endpoint: &'a Url,
    /// Encoded path as sent (and signed).
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
    pub service: &'a str,
    pub content_sha256_header: bool,
}

pub(crate) async fn send_signed(
    shared: &Shared,
    req: Signed<'_>,
) -> Result<http::Response, Failure> {
    let creds = shared.credentials.get().await?;
    let host = req.endpoint.host_header();
    let payload_hash = sigv4::hex_sha256(req.body);
    let amz_date = sigv4::amz_date_now();
    let lower: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let (query, added) = sigv4::sign(
        &sigv4::SignInput {
            method: req.method,
            host: &host,
            path: &req.path,
            query: &req.query,
            headers: &lower,
            payload_sha256: &payload_hash,
            region: &shared.settings.region,
            service: req.service,
            amz_date: &amz_date,
            content_sha256_header: req.content_sha256_header,
        },
        &creds,
    );
    let target = if query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{query}", req.path)
    };
    let mut headers = req.headers;
    headers.extend(added);
    http::send(http::Request {
        method: req.method,
        url: req.endpoint,
        target,
        headers,
        body: req.body,
    })
    .await
    .map_err(Failure::new)
}

/// Parses an endpoint override, or builds the AWS regional endpoint.
pub(crate) fn endpoint(custom: &Option<String>, default_host: String) -> Result<Url, Failure> {
    match custom {
        Some(u) => Url::parse(u).map_err(Failure::new),
        None => Url::parse(&format!("https://{default_host}")).map_err(Failure::new),
    }
}

pub(crate) struct AwsDestination {
    kind: ExportKind,
    /// Kinesis stream name or IoT Analytics channel.
    target: String,
    msg_id_prefix: String,
}

impl AwsDestination {
    pub(crate) fn new(config: &ExportConfig) -> Result<AwsDestination, String> {
        let s = |k: &str| {
            config
                .settings
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let target = match config.kind {
            ExportKind::Kinesis => s("kinesisStreamName").ok_or("kinesisStreamName missing")?,
            ExportKind::IotAnalytics => s("iotChannel").ok_or("iotChannel missing")?,
            _ => String::new(),
        };
        Ok(AwsDestination {
            kind: config.kind,
            target,
            msg_id_prefix: s("iotMsgIdPrefix").unwrap_or_default(),
        })
    }

    pub(crate) async fn send(
        &mut self,
        shared: &Shared,
        batch: &[Message],
    ) -> Result<Delivered, Failure> {
        match self.kind {
            ExportKind::Kinesis => self.kinesis(shared, batch).await,
            ExportKind::IotAnalytics => self.iot_analytics(shared, batch).await,
            _ => self.sitewise(shared, batch).await,
        }
    }

    async fn kinesis(&self, shared: &Shared, batch: &[Message]) -> Result<Delivered, Failure> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let url = endpoint(
            &shared.settings.kinesis_endpoint,
            format!("kinesis.{}.amazonaws.com", shared.settings.region),
        )?;
        // Records the service refused (throttling) are re-sent alone, so the stream does not
        // receive the accepted ones twice.
        let mut todo: Vec<&Message> = batch.iter().collect();
        let mut delay = Duration::from_millis(100);
        for attempt in 0..5 {
            let records: Vec<serde_json::Value> = todo
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "Data": b64.encode(&m.payload),
                        "PartitionKey": uuid::Uuid::new_v4().to_string(),
                    })
                })
                .collect();
            let (_, v) = post_json(
                shared,
                JsonPost {
                    endpoint: &url,
                    path: "/",
                    content_type: "application/x-amz-json-1.1",
                    amz_target: Some("Kinesis_20131202.PutRecords"),
                    service: "kinesis",
                    what: "Kinesis PutRecords",
                    target: &self.target,
                },
                &serde_json::json!({ "StreamName": self.target, "Records": records }),
            )
            .await?;
            let failed = v
                .get("FailedRecordCount")
                .and_then(|f| f.as_u64())
                .unwrap_or(0);
            if failed == 0 {
                return Ok(delivered(batch));
            }
            let results = v
                .get("Records")
                .and_then(|r| r.as_array())
                .cloned()
                .unwrap_or_default();
            let mut retry = Vec::new();
            let mut last_error = String::new();
            for (m, r) in todo.iter().zip(results.iter()) {
                if let Some(code) = r.get("ErrorCode").and_then(|c| c.as_str()) {
                    last_error = format!(
                        "{code}: {}",
                        r.get("ErrorMessage").and_then(|c| c.as_str()).unwrap_or("")
                    );
                    retry.push(*m);
                }
            }
            if retry.is_empty() || results.len() != todo.len() {
                return Err(Failure::new(format!(
                    "Kinesis PutRecords to {}: {failed} records failed without per-record errors",
                    self.target
                )));
            }
            if attempt == 4 {
                return Err(Failure::new(format!(
                    "Kinesis PutRecords to {}: {} records still failing: {last_error}",
                    self.target,
                    retry.len()
                )));
            }
            todo = retry;
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        unreachable!("the last attempt returns")
    }

    async fn iot_analytics(
        &self,
        shared: &Shared,
        batch: &[Message],
    ) -> Result<Delivered, Failure> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let url = endpoint(
            &shared.settings.iot_analytics_endpoint,
            format!("iotanalytics.{}.amazonaws.com", shared.settings.region),
        )?;
        // Ids are unique per batch as the API requires; prefix + sequence number keeps them
        // traceable to the stream.
        let messages: Vec<serde_json::Value> = batch
            .iter()
            .map(|m| {
                serde_json::json!({
                    "messageId": format!("{}{}", self.msg_id_prefix, m.sequence_number),
                    "payload": b64.encode(&m.payload),
                })
            })
            .collect();
        let (resp, v) = post_json(
            shared,
            JsonPost {
                endpoint: &url,
                path: "/messages/batch",
                content_type: "application/json",
                amz_target: None,
                service: "iotanalytics",
                what: "IoT Analytics BatchPutMessage",
                target: &self.target,
            },
            &serde_json::json!({ "channelName": self.target, "messages": messages }),
        )
        .await?;
        let errors = v
            .get("batchPutMessageErrorEntries")
            .and_then(|e| e.as_array())
            .map(|e| e.len())
            .unwrap_or(0);
        if errors > 0 {
            return Err(Failure::new(format!(
                "IoT Analytics BatchPutMessage to channel {}: {errors} messages refused: {}",
                self.target,
                resp.body_text()
            )));
        }
        Ok(delivered(batch))
    }

    async fn sitewise(&self, shared: &Shared, batch: &[Message]) -> Result<Delivered, Failure> {
        let url = endpoint(
            &shared.settings.iot_sitewise_endpoint,
            format!("data.iotsitewise.{}.amazonaws.com", shared.settings.region),
        )?;
        // Each record is one PutAssetPropertyValueEntry in the SDK's JSON; records that are not
        // are skipped for good (spec §1.7) and not counted as exported bytes.
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        for m in batch {
            match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                Ok(v) if v.get("entryId").is_some() && v.get("propertyValues").is_some() => {
                    bytes += m.payload.len() as u64;
                    entries.push(v);
                }
                _ => tracing::warn!(
                    seq = m.sequence_number,
                    "record is not a PutAssetPropertyValueEntry in JSON; skipped"
                ),
            }
        }
        if !entries.is_empty() {
            let (resp, v) = post_json(
                shared,
                JsonPost {
                    endpoint: &url,
                    path: "/properties",
                    content_type: "application/json",
                    amz_target: None,
                    service: "iotsitewise",
                    what: "IoT SiteWise BatchPutAssetPropertyValue",
                    target: "",
                },
                &serde_json::json!({ "entries": entries }),
            )
            .await?;
            let errors = v
                .get("errorEntries")
                .and_then(|e| e.as_array())
                .map(|e| e.len())
                .unwrap_or(0);
            if errors > 0 {
                return Err(Failure::new(format!(
                    "IoT SiteWise BatchPutAssetPropertyValue: {errors} entries refused: {}",
                    resp.body_text()
                )));
            }
        }
        Ok(Delivered {
            messages: batch.len() as u64,
            bytes,
        })
    }
}

fn delivered(batch: &[Message]) -> Delivered {
    Delivered {
        messages: batch.len() as u64,
        bytes: batch.iter().map(|m| m.payload.len() as u64).sum(),
    }
}

/// A JSON API call: where it goes and how failures name it.
struct JsonPost<'a> {
    endpoint: &'a Url,
    path: &'a str,
    content_type: &'a str,
    /// The `X-Amz-Target` header of the JSON 1.1 protocol (Kinesis), if the API uses it.
    amz_target: Option<&'a str>,
    service: &'a str,
    /// The operation and its target, for error messages.
    what: &'a str,
    target: &'a str,
}

/// POSTs `body` signed and returns the response with its JSON (an error for a non-2xx status).
async fn post_json(
    shared: &Shared,
    call: JsonPost<'_>,
    body: &serde_json::Value,
) -> Result<(http::Response, serde_json::Value), Failure> {
    let body = serde_json::to_vec(body).map_err(|e| Failure::new(e.to_string()))?;
    let mut headers = vec![("Content-Type".to_string(), call.content_type.to_string())];
    if let Some(target) = call.amz_target {
        headers.push(("X-Amz-Target".into(), target.into()));
    }
    let resp = send_signed(
        shared,
        Signed {
            method: "POST",
            endpoint: call.endpoint,
            path: call.path.into(),
            query: vec![],
            headers,
            body: &body,
            service: call.service,
            content_sha256_header: false,
        },
    )
    .await?;
    let v = json_ok(&resp, call.what, call.target)?;
    Ok((resp, v))
}

fn json_ok(resp: &http::Response, what: &str, target: &str) -> Result<serde_json::Value, Failure> {
    if !(200..300).contains(&resp.status) {
        return Err(Failure::new(format!(
            "{what} {target}: HTTP {}: {}",
            resp.status,
            resp.body_text()
        )));
    }
    if resp.body.is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_slice(&resp.body)
        .map_err(|e| Failure::new(format!("{what} {target}: unreadable response: {e}")))
}
