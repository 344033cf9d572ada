//! A small HTTP/1.1 client for the exporters: one connection per request (`Connection: close`),
//! `Content-Length` bodies, responses framed by length, chunks or end of stream. https goes
//! through rustls (feature `exporters-aws`) with the system's CA bundle.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on one whole request/response exchange; a stalled peer counts as a failed attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Responses larger than this are cut off (exporters only read small JSON/XML answers).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A parsed absolute URL (`http://host[:port]/path?query`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The path without the query, starting with `/`.
    pub path: String,
}

impl Url {
    pub(crate) fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{s:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
            Some(i) => (&rest[..i], "/"),
            None => (rest, "/"),
        };
        let path = path.split('?').next().unwrap_or("/").to_string();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: port {p:?} is not a number"))?,
            ),
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        Ok(Url {
            tls,
            host,
            port,
            path,
        })
    }

    /// The `Host` header value: the port only when it is not the scheme's default.
    pub(crate) fn host_header(&self) -> String {
        if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

pub(crate) struct Request<'a> {
    pub method: &'a str,
    pub url: &'a Url,
    /// Path and query as sent on the request line (already encoded).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

#[derive(Debug)]
#[cfg_attr(not(feature = "exporters-aws"), allow(dead_code))]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    #[cfg_attr(not(feature = "exporters-aws"), allow(dead_code))]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(500).collect()
    }
}

/// Sends one request and reads the whole response. Errors are transport failures (retryable);
/// HTTP error statuses come back as responses.
pub(crate) async fn send(req: Request<'_>) -> Result<Response, String> {
    let url = req.url;
    // Boxed: the exchange (TLS included) is a large future, and the core's worker threads have
    // small stacks (a debug build overflowed them while building it in place).
    match tokio::time::timeout(REQUEST_TIMEOUT, Box::pin(exchange(&req))).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{} {}:{}: no response within {}s",
            req.method,
            url.host,
            url.port,
            REQUEST_TIMEOUT.as_secs()
        )),
    }
}

async fn exchange(req: &Request<'_>) -> Result<Response, String> {
    let url = req.url;
    let where_ = format!("{}:{}", url.host, url.port);
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connect to {where_}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if url.tls {
        #[cfg(feature = "exporters-aws")]
        {
            let stream = tls::connect(&url.host, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {where_}: {e}"))?;
            return talk(stream, req)
                .await
                .map_err(|e| format!("{where_}: {e}"));
        }
        #[cfg(not(feature = "exporters-aws"))]
        return Err(format!(
            "{where_}: https needs the exporters-aws feature of lichen-streams"
        ));
    }
    talk(tcp, req).await.map_err(|e| format!("{where_}: {e}"))
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &Request<'_>,
) -> Result<Response, String> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        req.method,
        req.target,
        req.url.host_header(),
        req.body.len()
    );
    for (k, v) in &req.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("send request: {e}"))?;
    s.write_all(req.body)
        .await
        .map_err(|e| format!("send body: {e}"))?;
    s.flush().await.map_err(|e| format!("send body: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    // Read the head, then as much body as the framing asks for.
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = read_some(&mut s, &mut chunk).await?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = buf.split_off(head_end + 4);
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
    let no_body =
        req.method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    if !no_body {
        loop {
            if let Some(len) = length.filter(|_| !chunked)
                && body.len() >= len
            {
                body.truncate(len);
                break;
            }
            if chunked && let Some(decoded) = dechunk(&body)? {
                body = decoded;
                break;
            }
            let n = read_some(&mut s, &mut chunk).await?;
            if n == 0 {
                if chunked || length.is_some() {
                    return Err("connection closed inside the response body".into());
                }
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > MAX_RESPONSE_BYTES {
                return Err("response body too large".into());
            }
        }
    } else {
        body.clear();
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

async fn read_some<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<usize, String> {
    match s.read(buf).await {
        Ok(n) => Ok(n),
        // Servers that close without TLS close_notify after a complete body are common.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(format!("read response: {e}")),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body; None while more bytes are needed.
fn dechunk(data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&data[pos..pos + eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("malformed chunk size {size_text:?}"))?;
        pos += eol + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[pos..pos + size]);
        pos += size + 2;
    }
}

#[cfg(feature = "exporters-aws")]
mod tls {
    use std::sync::{Arc, OnceLock};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::rustls::{self, RootCertStore};

    /// CA bundles in the usual places; `SSL_CERT_FILE` wins.
    const CA_FILES: [&str; 4] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];

    fn connector() -> Result<TlsConnector, String> {
        static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
        CONFIG
            .get_or_init(|| {
                use rustls_pki_types::CertificateDer;
                use rustls_pki_types::pem::PemObject;
                let mut roots = RootCertStore::empty();
                let files: Vec<String> = std::env::var("SSL_CERT_FILE")
                    .ok()
                    .into_iter()
                    .chain(CA_FILES.iter().map(|s| s.to_string()))
                    .collect();
                for f in &files {
                    if let Ok(iter) = CertificateDer::pem_file_iter(f) {
                        for cert in iter.flatten() {
                            let _ = roots.add(cert);
                        }
                    }
                    if !roots.is_empty() {
                        break;
                    }
                }
                if roots.is_empty() {
                    return Err(format!(
                        "no CA certificates found (looked at {}); set SSL_CERT_FILE",
                        files.join(", ")
                    ));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Ok(Arc::new(config))
            })
            .clone()
            .map(TlsConnector::from)
    }

    pub(super) async fn connect(
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("server name {host:?}: {e}"))?;
        connector()?
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = Url::parse("http://127.0.0.1:9000/a/b?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 9000, "/a/b")
        );
        let u = Url::parse("https://kinesis.eu-west-1.amazonaws.com").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/"));
        assert_eq!(u.host_header(), "kinesis.eu-west-1.amazonaws.com");
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://h:port/").is_err());
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2").unwrap(), None);
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            Some(b"abcde".to_vec())
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
