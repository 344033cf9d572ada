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
            let (q, added) = lichen_sigv4::sign(
                &SignInput {
                    method,
                    host: authority,
                    path: &full_path,
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
