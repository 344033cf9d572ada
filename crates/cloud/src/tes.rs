//! Token exchange: temporary AWS credentials for components, exchanged for the device
//! certificate at the IoT credentials provider and served on loopback in the container-credentials
//! format every AWS SDK reads (`AWS_CONTAINER_CREDENTIALS_FULL_URI` +
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`).
//!
//! * [`TokenExchange::credentials`] answers from the cache until `expiration − refresh margin`
//!   (5 min by default), else fetches once for all concurrent callers (single flight: the cache
//!   lock is held across the fetch). Upstream errors are remembered for a while (4xx 2 min, 5xx
//!   1 min, others 5 min) so a failing endpoint is not hammered.
//! * [`serve`] answers `GET /2016-11-01/credentialprovider/` with the caller's token checked by the
//!   core's closure; any other path is 400, any other method 405, a bad token 403.
//!
//! Invariant: credentials live only in memory, and only a caller whose token the core accepts
//! ever receives them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;

use crate::{CloudError, Endpoint};

/// The exact path Greengrass serves credentials on (SDKs take it from the full URI).
pub const CREDENTIALS_PATH: &str = "/2016-11-01/credentialprovider/";
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: usize = 64 * 1024;
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Where and how to exchange the certificate for credentials.
#[derive(Debug, Clone)]
pub struct TesConfig {
    /// `iotCredEndpoint` host and port (443 unless `host:port` is configured), with the device's
    /// certificate, key and root CA.
    pub endpoint: Endpoint,
    pub role_alias: String,
    pub thing_name: String,
    /// Credentials are refetched this long before they expire.
    pub refresh_margin: Duration,
}

/// One set of temporary credentials, as components receive them.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// ISO-8601 UTC, as the credentials provider wrote it.
    pub expiration: String,
    expires_at: time::OffsetDateTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or the token.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The container-credentials document (`AccessKeyId`, `SecretAccessKey`, `Token`,
    /// `Expiration`).
    pub fn container_json(&self) -> serde_json::Value {
        serde_json::json!({
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": self.expiration,
        })
    }
}

/// Why no credentials could be had: an HTTP status to pass on and a message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("credentials unavailable ({status}): {message}")]
pub struct TesError {
    pub status: u16,
    pub message: String,
}

enum Cached {
    Fresh {
        creds: Credentials,
        refresh_at: Instant,
    },
    Failed {
        error: TesError,
        until: Instant,
    },
}

/// The credentials cache in front of the credentials provider.
pub struct TokenExchange {
    config: TesConfig,
    tls: Arc<ClientConfig>,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl TokenExchange {
    /// Reads the certificate, key and root CA now, so a bad path is reported at configuration.
    pub fn new(config: TesConfig) -> Result<TokenExchange, CloudError> {
        let mut tls = (*crate::tls::client_config(&config.endpoint)?).clone();
        tls.alpn_protocols.clear(); // HTTPS, not MQTT on 443.
        Ok(TokenExchange {
            config,
            tls: Arc::new(tls),
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// Cached credentials, or fresh ones from the provider when the cache is due for refresh.
    pub async fn credentials(&self) -> Result<Credentials, TesError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        match &*cache {
            Some(Cached::Fresh { creds, refresh_at }) if now < *refresh_at => {
                return Ok(creds.clone());
            }
            Some(Cached::Failed { error, until }) if now < *until => return Err(error.clone()),
            _ => {}
        }
        match self.fetch_with_retries().await {
            Ok(creds) => {
                let left = creds.expires_at - time::OffsetDateTime::now_utc();
                let left = Duration::try_from(left).unwrap_or_default();
                let refresh_at = now + left.saturating_sub(self.config.refresh_margin);
                if left.is_zero() {
                    return Err(TesError {
                        status: 500,
                        message: format!(
                            "the credentials provider returned credentials that expired at {}; check the device clock",
                            creds.expiration
                        ),
                    });
                }
                tracing::info!(
                    role_alias = %self.config.role_alias,
                    expiration = %creds.expiration,
                    "token exchange: fetched credentials"
                );
                *cache = Some(Cached::Fresh {
                    creds: creds.clone(),
                    refresh_at,
                });
                Ok(creds)
            }
            Err(error) => {
                let hold = match error.status {
                    400..=499 => 120,
                    500..=599 => 60,
                    _ => 300,
                };
                tracing::warn!(status = error.status, message = %error.message, "token exchange: cannot fetch credentials");
                *cache = Some(Cached::Failed {
                    error: error.clone(),
                    until: now + Duration::from_secs(hold),
                });
                Err(error)
            }
        }
    }

    async fn fetch_with_retries(&self) -> Result<Credentials, TesError> {
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
                Ok(Ok(c)) => return Ok(c),
                // The provider answered: its verdict stands.
                Ok(Err(e)) if e.status != 0 => return Err(e),
                Ok(Err(e)) => last = Some(e.message),
                Err(_) => {
                    return Err(TesError {
                        status: 504,
                        message: format!(
                            "no answer from the credentials provider {}:{} within 30 s",
                            self.config.endpoint.host, self.config.endpoint.port
                        ),
                    });
                }
            }
        }
        Err(TesError {
            status: 500,
            message: last.unwrap_or_default(),
        })
    }

    /// One GET; status 0 means the request never got an HTTP answer.
    async fn fetch(&self) -> Result<Credentials, TesError> {
        let ep = &self.config.endpoint;
        let unreachable = |what: String| TesError {
            status: 0,
            message: format!(
                "credentials provider {}:{} (iotCredEndpoint): {what}",
                ep.host, ep.port
            ),
        };
        let name = ServerName::try_from(ep.host.clone())
            .map_err(|e| unreachable(format!("not a host name: {e}")))?;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let request = format!(
            "GET /role-aliases/{}/credentials HTTP/1.1\r\nHost: {}\r\nx-amzn-iot-thingname: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.config.role_alias, ep.host, self.config.thing_name
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (status, body) = read_response(&mut tls)
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        if status != 200 {
            return Err(TesError {
                status,
                message: format!(
                    "the credentials provider answered {status} for role alias {:?}: {}",
                    self.config.role_alias,
                    String::from_utf8_lossy(&body).trim()
                ),
            });
        }
        parse_credentials(&body).map_err(|m| TesError {
            status: 500,
            message: format!("the credentials provider's answer: {m}"),
        })
    }
}

fn parse_credentials(body: &[u8]) -> Result<Credentials, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let c = &v["credentials"];
    let field = |k: &str| {
        c[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no credentials.{k}"))
    };
    let expiration = field("expiration")?;
    let expires_at =
        time::OffsetDateTime::parse(&expiration, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("credentials.expiration {expiration:?}: {e}"))?;
    Ok(Credentials {
        access_key_id: field("accessKeyId")?,
        secret_access_key: field("secretAccessKey")?,
        session_token: field("sessionToken")?,
        expiration,
        expires_at,
    })
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or to end of stream).
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(bad("response head too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    let mut chunk = [0u8; 4096];
    if let Some(len) = length.filter(|_| !chunked) {
        if len > MAX_RESPONSE {
            return Err(bad("response body too long"));
        }
        while rest.len() < len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("connection closed inside the body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        return Ok((status, rest));
    }
    // Read to the end (a peer that skips close_notify ends with an EOF error once done).
    loop {
        if rest.len() > MAX_RESPONSE {
            return Err(bad("response body too long"));
        }
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        if chunked && find(&rest, b"\r\n0\r\n").is_some() || rest.starts_with(b"0\r\n") {
            break;
        }
    }
    if chunked {
        return dechunk(&rest)
            .map(|b| (status, b))
            .ok_or_else(|| bad("bad chunked body"));
    }
    Ok((status, rest))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decides whether the caller presenting an `Authorization` token may have credentials.
pub type Authorize = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The loopback credentials endpoint; dropping it stops it.
pub struct TesServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TesServer {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://localhost:<port>/2016-11-01/credentialprovider/`.
    pub fn full_uri(&self) -> String {
        format!("http://localhost:{}{CREDENTIALS_PATH}", self.port)
    }
}

impl Drop for TesServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on 127.0.0.1:`port` (0: any free port) and serves credentials from `tes`.
pub async fn serve(
    tes: Arc<TokenExchange>,
    port: u16,
    authorize: Authorize,
) -> std::io::Result<TesServer> {
    // A reconfigured service rebinds its old port, which the stopped server may hold a moment.
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port != 0 && tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => break r?,
        }
    };
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (tes, authorize) = (tes.clone(), authorize.clone());
            tokio::spawn(async move {
                let _ = answer(stream, &tes, &authorize).await;
            });
        }
    });
    Ok(TesServer { port, task })
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    tes: &TokenExchange,
    authorize: &Authorize,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let read_head = async {
        loop {
            if find(&buf, b"\r\n\r\n").is_some() {
                return Ok(true);
            }
            if buf.len() > MAX_REQUEST_HEAD {
                return Ok(false);
            }
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let complete: std::io::Result<bool> =
        match tokio::time::timeout(Duration::from_secs(10), read_head).await {
            Ok(r) => r,
            Err(_) => Ok(false),
        };
    if !complete? {
        return respond(&mut s, 400, "text/plain", "incomplete request").await;
    }
    let head = String::from_utf8_lossy(&buf[..find(&buf, b"\r\n\r\n").unwrap_or(0)]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    if path != CREDENTIALS_PATH {
        let msg = format!("credentials are served at {CREDENTIALS_PATH} only");
        return respond(&mut s, 400, "text/plain", &msg).await;
    }
    if method != "GET" {
        return respond(&mut s, 405, "text/plain", "use GET").await;
    }
    let token = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    if token.is_empty() || !authorize(&token) {
        let msg = "Authorization must be this component's AWS_CONTAINER_AUTHORIZATION_TOKEN, and the component must be allowed aws.greengrass.TokenExchangeService getCredentials";
        return respond(&mut s, 403, "text/plain", msg).await;
    }
    match tes.credentials().await {
        Ok(c) => {
            respond(
                &mut s,
                200,
                "application/json",
                &c.container_json().to_string(),
            )
            .await
        }
        Err(e) => respond(&mut s, e.status, "text/plain", &e.message).await,
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(text.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_answer_parses_and_never_prints_the_secret() {
        let body = br#"{"credentials":{"accessKeyId":"AKID","secretAccessKey":"SECRET","sessionToken":"TOKEN","expiration":"2030-01-18T09:18:06Z"}}"#;
        let c = parse_credentials(body).unwrap();
        assert_eq!(c.container_json()["Token"], "TOKEN");
        assert_eq!(c.container_json()["Expiration"], "2030-01-18T09:18:06Z");
        let shown = format!("{c:?}");
        assert!(!shown.contains("SECRET") && !shown.contains("TOKEN"));
        assert!(parse_credentials(br#"{"credentials":{"accessKeyId":"A"}}"#).is_err());
    }

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_none());
    }

    #[tokio::test]
    async fn responses_with_length_or_to_eof_are_read() {
        let mut a: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnopeXX";
        assert_eq!(
            read_response(&mut a).await.unwrap(),
            (403, b"nope".to_vec())
        );
        let mut b: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n{}";
        assert_eq!(read_response(&mut b).await.unwrap(), (200, b"{}".to_vec()));
    }
}
