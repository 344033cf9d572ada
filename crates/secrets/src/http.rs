//! One HTTP/1.1 POST to the secretsmanager endpoint (`http://` or `https://` trusting the
//! device's root CA file), `Connection: close`, answer read by Content-Length or to the end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_ANSWER: usize = 1 << 20;

pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{url:?} must start with http:// or https://"));
        };
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(format!("{url:?} must not have a path"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            ),
            None => (hostport.to_string(), if https { 443 } else { 80 }),
        };
        Ok(Url { https, host, port })
    }

    /// The Host header (port only when not the scheme's default).
    pub fn host_header(&self) -> String {
        match (self.https, self.port) {
            (true, 443) | (false, 80) => self.host.clone(),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

pub async fn post(
    url: &Url,
    root_ca: Option<&Path>,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut req = format!("POST / HTTP/1.1\r\nHost: {}\r\n", url.host_header());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let run = async {
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| e.to_string())?;
        if url.https {
            let config = tls_config(root_ca)?;
            let name = rustls_pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| e.to_string())?;
            let mut s = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(&mut s, &bytes).await
        } else {
            let mut s = tcp;
            exchange(&mut s, &bytes).await
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
}

fn tls_config(root_ca: Option<&Path>) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let path = root_ca.ok_or("https needs system.rootCaPath")?;
    for c in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", path.display()))?;
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    s.write_all(request).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if let Some(len) = length
                && buf.len() >= end + 4 + len
            {
                return finish(&head, buf[end + 4..end + 4 + len].to_vec());
            }
        }
        if buf.len() > MAX_ANSWER {
            return Err("answer too long".into());
        }
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("connection closed before the answer")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    finish(&head, buf[end + 4..].to_vec())
}

fn finish(head: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    Ok((status, body))
}
