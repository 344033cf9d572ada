//! The Greengrass data plane client: HTTPS with the device certificate (mutual TLS) to
//! `greengrassDataPlaneEndpoint:greengrassDataPlanePort`, and downloads of presigned URLs that
//! resume where an interrupted one stopped.
//!
//! A download writes `<file>.partial` (its length is what was received, fsynced every MiB and
//! at the end); a retry asks for `Range: bytes=<len>-` and appends on `206`, starts over on
//! `200`. Only a complete body is renamed to `<file>`, so nothing is fetched twice and nothing
//! half-written is ever taken for the artifact.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;

use crate::{CloudError, Endpoint};

/// Bound on connecting and on waiting for response headers (a body may take longer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest JSON answer accepted from the data plane.
const MAX_JSON: usize = 16 * 1024 * 1024;
const SYNC_EVERY: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: {message}")]
    BadResponse { url: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] CloudError),
}

impl DataPlaneError {
    /// Worth another try later (network trouble, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            DataPlaneError::Network { .. } => true,
            DataPlaneError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// The data plane endpoint with the device identity.
#[derive(Clone)]
pub struct DataPlane {
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
}

/// A parsed `http(s)://host[:port]/path?query`.
struct Url<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
    path_and_query: &'a str,
}

fn parse_url(url: &str) -> Result<Url<'_>, DataPlaneError> {
    let bad = |m: &str| DataPlaneError::BadResponse {
        url: url.to_string(),
        message: m.to_string(),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("only http:// and https:// URLs can be downloaded"));
    };
    let (authority, path_and_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let end = stripped
            .find(']')
            .ok_or_else(|| bad("unclosed [ in host"))?;
        let host = &stripped[..end];
        let port = match stripped[end + 1..].strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None => default_port,
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Url {
        tls,
        host,
        port,
        path_and_query,
    })
}

/// Percent-encodes one path segment (ARNs carry `:` and `/`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl DataPlane {
    /// `endpoint` names the data plane host and port with the device's files.
    pub fn new(endpoint: &Endpoint) -> Result<DataPlane, CloudError> {
        let mut config = (*crate::tls::client_config(endpoint)?).clone();
        // HTTPS, not the MQTT-on-443 protocol the link asks for.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(DataPlane {
            host: endpoint.host.clone(),
            port: endpoint.port,
            tls: Arc::new(config),
        })
    }

    fn base(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }

    /// One JSON request to the data plane; non-2xx answers are errors carrying the body.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DataPlaneError> {
        let url = format!("{}{}", self.base(), path);
        let payload = body.map(|b| b.to_string().into_bytes());
        let response = self.send(&url, method, payload, &[]).await?;
        let status = response.status().as_u16();
        let bytes = collect(&url, response.into_body(), MAX_JSON).await?;
        if !(200..300).contains(&status) {
            return Err(DataPlaneError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| DataPlaneError::BadResponse {
            url,
            message: format!("answer is not JSON: {e}"),
        })
    }

    /// `POST /greengrass/v2/resolveComponentCandidates`.
    pub async fn resolve_component_candidates(
        &self,
        body: &Value,
    ) -> Result<Value, DataPlaneError> {
        self.json(
            "POST",
            "/greengrass/v2/resolveComponentCandidates",
            Some(body),
        )
        .await
    }

    /// GetComponentVersionArtifact ⇒ the presigned URL.
    pub async fn artifact_url(
        &self,
        version_arn: &str,
        artifact_name: &str,
    ) -> Result<String, DataPlaneError> {
        let path = format!(
            "/greengrass/v2/components/{}/artifacts/{}",
            encode_segment(version_arn),
            artifact_name
                .split('/')
                .map(encode_segment)
                .collect::<Vec<_>>()
                .join("/")
        );
        let answer = self.json("GET", &path, None).await?;
        presigned(&path, &answer)
    }

    /// ListThingGroupsForCoreDevice: every group name (all pages).
    pub async fn thing_groups(&self, thing: &str) -> Result<Vec<String>, DataPlaneError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!(
                "/greengrass/v2/coreDevices/{}/thingGroups",
                encode_segment(thing)
            );
            if let Some(t) = &token {
                path.push_str(&format!("?nextToken={}", encode_segment(t)));
            }
            let answer = self.json("GET", &path, None).await?;
            if let Some(Value::Array(groups)) = answer.get("thingGroups") {
                for g in groups {
                    if let Some(name) = g.get("thingGroupName").and_then(Value::as_str) {
                        out.push(name.to_string());
                    }
                }
            }
            token = answer
                .get("nextToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// GetDeploymentConfiguration ⇒ (presigned URL, base64 SHA-256 digest).
    pub async fn deployment_configuration(
        &self,
        deployment_id: &str,
        thing: &str,
    ) -> Result<(String, Option<String>), DataPlaneError> {
        let path = format!(
            "/greengrass/v2/deployments/{}/coreDevices/{}/configuration",
            encode_segment(deployment_id),
            encode_segment(thing)
        );
        let answer = self.json("GET", &path, None).await?;
        let url = presigned(&path, &answer)?;
        let digest = answer
            .get("integrityCheck")
            .and_then(|c| c.get("digest"))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok((url, digest))
    }

    /// One request to any `http(s)://` URL (the TLS client presents the device certificate and
    /// trusts the configured root CA) with the given headers; answers (status, body) bounded by
    /// `max` bytes, whatever the status.
    pub async fn request(
        &self,
        url: &str,
        method: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        max: usize,
    ) -> Result<(u16, Vec<u8>), DataPlaneError> {
        let response = self.send(url, method, body, headers).await?;
        let status = response.status().as_u16();
        let bytes = collect(url, response.into_body(), max).await?;
        Ok((status, bytes.to_vec()))
    }

    /// A plain GET of a (presigned) URL into memory, bounded by `max` bytes.
    pub async fn get_bytes(&self, url: &str, max: usize) -> Result<Vec<u8>, DataPlaneError> {
        let response = self.send(url, "GET", None, &[]).await?;
        let status = response.status().as_u16();
        let bytes = collect(url, response.into_body(), max).await?;
        if !(200..300).contains(&status) {
            return Err(DataPlaneError::Status {
                url: redact(url),
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        Ok(bytes.to_vec())
    }

    /// Downloads `url` to `dest`, resuming `<dest>.partial` if an earlier try left one.
    /// Returns the file's size. On error the partial file stays for the next try.
    pub async fn download(&self, url: &str, dest: &Path) -> Result<u64, DataPlaneError> {
        let partial = partial_path(dest);
        let io = |e: std::io::Error| DataPlaneError::Io {
            path: partial.clone(),
            source: e,
        };
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let range = format!("bytes={have}-");
        let headers: Vec<(&str, &str)> = if have > 0 {
            vec![("range", range.as_str())]
        } else {
            Vec::new()
        };
        let response = self.send(url, "GET", None, &headers).await?;
        let status = response.status().as_u16();
        let mut file = match status {
            206 => std::fs::OpenOptions::new()
                .append(true)
                .open(&partial)
                .map_err(io)?,
            200 => std::fs::File::create(&partial).map_err(io)?,
            // Everything is already here.
            416 if have > 0 => return finish(&partial, dest, have),
            _ => {
                let body = collect(url, response.into_body(), 4096)
                    .await
                    .unwrap_or_default();
                return Err(DataPlaneError::Status {
                    url: redact(url),
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
        };
        let mut written = if status == 206 { have } else { 0 };
        if have > 0 {
            // Says whether an interrupted download went on where it stopped or started over.
            tracing::info!(file = %dest.display(), have, resumed_at = written, "download resumes a partial file");
        }
        let mut since_sync = 0u64;
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| DataPlaneError::Network {
                url: redact(url),
                message: format!("connection lost after {written} bytes: {e}"),
            })?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data).map_err(io)?;
                written += data.len() as u64;
                since_sync += data.len() as u64;
                if since_sync >= SYNC_EVERY {
                    file.sync_data().map_err(io)?;
                    since_sync = 0;
                }
            }
        }
        file.sync_all().map_err(io)?;
        finish(&partial, dest, written)
    }

    async fn send(
        &self,
        url: &str,
        method: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<Incoming>, DataPlaneError> {
        let parsed = parse_url(url)?;
        let net = |message: String| DataPlaneError::Network {
            url: redact(url),
            message,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((parsed.host, parsed.port)),
        )
        .await
        .map_err(|_| net("connect timed out".into()))?
        .map_err(|e| net(format!("cannot connect: {e}")))?;
        let host_header = if parsed.host.contains(':') {
            format!("[{}]:{}", parsed.host, parsed.port)
        } else {
            format!("{}:{}", parsed.host, parsed.port)
        };
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(parsed.path_and_query)
            .header("host", host_header)
            .header("user-agent", concat!("lichen/", env!("CARGO_PKG_VERSION")));
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header("content-type", "application/json");
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| net(format!("cannot build request: {e}")))?;
        let exchange = async {
            if parsed.tls {
                let name = ServerName::try_from(parsed.host.to_string())
                    .map_err(|e| net(format!("bad host name: {e}")))?;
                let stream = TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| net(format!("TLS: {e}")))?;
                round_trip(TokioIo::new(stream), request).await
            } else {
                round_trip(TokioIo::new(tcp), request).await
            }
            .map_err(|e| net(e.to_string()))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, exchange)
            .await
            .map_err(|_| net("no answer in time".into()))?
    }
}

async fn round_trip<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await
}

async fn collect(url: &str, mut body: Incoming, max: usize) -> Result<Bytes, DataPlaneError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| DataPlaneError::Network {
            url: redact(url),
            message: format!("reading the answer: {e}"),
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(DataPlaneError::BadResponse {
                    url: redact(url),
                    message: format!("answer larger than {max} bytes"),
                });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

fn presigned(path: &str, answer: &Value) -> Result<String, DataPlaneError> {
    answer
        .get("preSignedUrl")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| DataPlaneError::BadResponse {
            url: path.to_string(),
            message: "answer has no preSignedUrl".into(),
        })
}

/// A presigned URL's query is a credential: keep it out of logs and errors.
fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// `<dest>.partial`.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn finish(partial: &Path, dest: &Path, size: u64) -> Result<u64, DataPlaneError> {
    std::fs::rename(partial, dest).map_err(|e| DataPlaneError::Io {
        path: dest.to_path_buf(),
        source: e,
    })?;
    if let Some(dir) = dest.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(size)
}

#[cfg(test)]
#[path = "dataplane_tests.rs"]
mod tests;
