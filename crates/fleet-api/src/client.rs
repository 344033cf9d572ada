//! A small HTTP/1.1 client (one connection per request) with SigV4 signing: what the fleet
//! needs to reach an external S3 store, and what `lichen fleet component …` uses to call the
//! fleet's API as its administrator.

use axum::body::Body;
use http_body_util::BodyExt;
use lichen_sigv4::{Credentials, SignInput};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0} is not an http:// URL")]
    Url(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr}: {message}")]
    Http { addr: String, message: String },
}

/// A received answer.
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: hyper::body::Incoming,
}

impl Answer {
    /// The whole body (for small answers: JSON, XML).
    pub async fn bytes(self) -> Result<Vec<u8>, ClientError> {
        self.body
            .collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .map_err(|e| ClientError::Http {
                addr: String::new(),
                message: e.to_string(),
            })
    }
}

/// What a signed request needs besides the body.
pub struct Signing<'a> {
    pub creds: &'a Credentials,
    pub region: &'a str,
    pub service: &'a str,
    /// Hex SHA-256 of the body, or `UNSIGNED-PAYLOAD` (S3 only).
    pub payload_sha256: &'a str,
}

/// `http://host:port` → (authority, base path).
fn split_url(url: &str) -> Result<(&str, &str), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url(url.into()))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    })
}

/// Sends `method endpoint+path?query` (path already URI-encoded; query pairs raw), signed when
/// `signing` is given, with `body`.
pub async fn send(
    method: &str,
    endpoint: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    body: Body,
    signing: Option<Signing<'_>>,
) -> Result<Answer, ClientError> {
    let (authority, base) = split_url(endpoint)?;
    let full_path = format!("{}{path}", base.trim_end_matches('/'));
    let mut all: Vec<(String, String)> = headers.to_vec();
    let query_string = match &signing {
        Some(s) => {
            // Every service but S3 signs the path URI-encoded once more.
            let canonical_path = if s.service == "s3" {
                full_path.clone()
            } else {
                lichen_sigv4::uri_encode(&full_path, true)
            };
            let (q, added) = lichen_sigv4::sign(
                &SignInput {
                    method,
                    host: authority,
                    path: &canonical_path,
                    query,
                    headers,
                    payload_sha256: s.payload_sha256,
                    region: s.region,
                    service: s.service,
                    amz_date: &lichen_sigv4::amz_date_now(),
                    content_sha256_header: s.service == "s3",
                },
                s.creds,
            );
            all.extend(added);
            q
        }
        None => query
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    lichen_sigv4::uri_encode(k, false),
                    lichen_sigv4::uri_encode(v, false)
                )
            })
            .collect::<Vec<_>>()
            .join("&"),
    };
    let uri = if query_string.is_empty() {
        full_path.clone()
    } else {
        format!("{full_path}?{query_string}")
    };
    let http = |message: String| ClientError::Http {
        addr: authority.to_string(),
        message,
    };
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", authority);
    for (k, v) in &all {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(body).map_err(|e| http(e.to_string()))?;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|source| ClientError::Connect {
            addr: authority.to_string(),
            source,
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| http(e.to_string()))?;
    let (parts, body) = resp.into_parts();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Uploads a file as `bucket/key` through an S3 API (PutObject, payload hash signed; the body
/// streams from the file). Returns the ETag.
pub async fn put_file(
    endpoint: &str,
    bucket: &str,
    key: &str,
    file: &std::path::Path,
    creds: &Credentials,
    region: &str,
) -> Result<String, ClientError> {
    let io = |source| ClientError::Connect {
        addr: file.display().to_string(),
        source,
    };
    let sha = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut f = std::fs::File::open(file).map_err(io)?;
        std::io::copy(&mut f, &mut h).map_err(io)?;
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let len = std::fs::metadata(file).map_err(io)?.len();
    let f = tokio::fs::File::open(file).await.map_err(io)?;
    let answer = send(
        "PUT",
        endpoint,
        &format!(
            "/{}/{}",
            lichen_sigv4::uri_encode(bucket, false),
            lichen_sigv4::uri_encode(key, true)
        ),
        &[],
        &[("content-length".into(), len.to_string())],
        Body::from_stream(tokio_util::io::ReaderStream::new(f)),
        Some(Signing {
            creds,
            region,
            service: "s3",
            payload_sha256: &sha,
        }),
    )
    .await?;
    let status = answer.status;
    let etag = answer
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if status != 200 {
        let body = answer.bytes().await.unwrap_or_default();
        return Err(ClientError::Http {
            addr: endpoint.into(),
            message: format!(
                "PUT {bucket}/{key} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        });
    }
    Ok(etag)
}

/// Base64 SHA-256 of a file (a Greengrass artifact `Digest`).
pub fn file_sha256_b64(path: &std::path::Path) -> std::io::Result<String> {
    use base64::Engine;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(h.finalize()))
}
